//! Property tests of what a worker decodes from an assignment (its task spec and inputs,
//! well-formed or not) and of resolving its secrets: never a panic, always a task error.

use super::Job;
use baton_common::ids::AttemptKey;
use baton_proto as proto;
use proptest::prelude::*;
use serde_json::{json, Value};

fn key() -> AttemptKey {
    AttemptKey {
        run: "r".into(),
        task: "t".into(),
        map_index: -1,
        attempt: 1,
    }
}

fn spec() -> impl Strategy<Value = String> {
    let kinds = prop_oneof![
        Just(json!({"kind": "builtin", "function": "echo"})),
        Just(json!({"kind": "process", "command": "sh", "args": ["-c", "true"]})),
        Just(json!({"kind": "flow", "project": "p", "flow": "f"})),
        ".{0,12}".prop_map(Value::String),
    ];
    prop_oneof![
        kinds.clone().prop_map(|k| k.to_string()),
        (
            kinds,
            prop::collection::btree_map(".{0,6}", ".{0,10}", 0..3)
        )
            .prop_map(|(k, s)| json!({"kind": k, "secrets": s}).to_string()),
        (any::<u32>(), ".{0,6}")
            .prop_map(|(n, s)| json!({"kind": {"kind": "builtin"}, "secrets": [n, s]}).to_string()),
        ".{0,64}",
    ]
}

proptest! {
    #[test]
    fn any_assignment_decodes_or_fails_the_task(
        task_spec in spec(),
        inputs in prop_oneof![Just(String::new()), Just("{\"v\": null}".to_string()), ".{0,40}", Just("[1]".to_string())],
    ) {
        let assign = proto::Assign {
            task_spec,
            inputs,
            ..Default::default()
        };
        if let Ok(mut job) = Job::decode(key(), &assign) {
            prop_assert!(job.inputs.is_object());
            let secrets = crate::secrets::Secrets::default();
            let resolved = secrets.resolve(&job.secrets, &mut job.inputs);
            prop_assert_eq!(resolved.is_ok(), job.secrets.is_empty());
        }
    }
}
