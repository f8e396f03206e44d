//! Property tests of flow parsing, validation and input resolution on generated and mangled
//! flow files: nothing panics, and whatever parses is a valid DAG whose inputs resolve
//! without panicking for any parameters and upstream results. `PROPTEST_CASES` sets how many
//! cases run (256 by default; the README gives the longer command).

use super::{bind_parameters, parse_flow, resolve_inputs, RunContext};
use proptest::prelude::*;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashSet};

/// Names that mostly match the flow's tasks (`t0`…) and parameters (`p`, `q`), and
/// sometimes do not, or are not names at all.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        40 => prop::sample::select(vec!["t0", "t1", "t2", "t3", "t4", "p", "q"])
            .prop_map(str::to_string),
        1 => ".{0,12}",
        1 => Just(String::new()),
        1 => (0usize..300).prop_map(|n| "n".repeat(n)),
    ]
}

/// Text: mostly plain, sometimes anything.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![30 => "[a-z0-9 _.-]{0,12}", 1 => ".{0,12}"]
}

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(name(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A task input as written in a flow file, well-formed or not.
fn input() -> impl Strategy<Value = Value> {
    let simple = prop_oneof![
        4 => name().prop_map(|p| json!({"param": p})),
        4 => name().prop_map(|t| json!({"result": t})),
        2 => (name(), 0i64..4).prop_map(|(t, i)| json!({"result": t, "index": i})),
        1 => (name(), any::<i64>()).prop_map(|(t, i)| json!({"result": t, "index": i})),
        3 => json_value().prop_map(|v| json!({"value": v})),
        1 => prop::sample::select(vec!["run_id", "scheduled_start_ms", "nope", ""])
            .prop_map(|c| json!({"context": c})),
        1 => prop_oneof![9 => Just("API_KEY".to_string()), 1 => name()]
            .prop_map(|s| json!({"secret": s})),
        3 => json_value().prop_filter("a literal, not a mapping", |v| !v.is_object()),
        1 => json_value(),
    ];
    simple.prop_recursive(2, 12, 4, |inner| {
        prop::collection::vec(inner, 0..4).prop_map(|items| json!({"flatten": items}))
    })
}

fn kind() -> impl Strategy<Value = (String, Value)> {
    prop_oneof![
        8 => prop::sample::select(super::BUILTINS.to_vec())
            .prop_map(|b| ("builtin".to_string(), json!(b))),
        1 => Just(("builtin".to_string(), json!("no_such_builtin"))),
        3 => ("[a-z/]{1,8}", prop::collection::vec(text(), 0..3), any::<bool>()).prop_map(
            |(c, a, aws)| ("process".to_string(), json!({"command": c, "args": a, "aws_credentials": aws}))
        ),
        1 => (name(), 0u32..3).prop_map(|(f, v)| ("subflow".to_string(), json!({"flow": f, "version": v}))),
    ]
}

fn task() -> impl Strategy<Value = Value> {
    (
        kind(),
        prop::collection::btree_map(name(), input(), 0..4),
        prop_oneof![8 => Just(Vec::new()), 1 => prop::collection::vec(name(), 0..2)],
        prop_oneof![3 => Just(Vec::new()), 1 => prop::collection::vec(name(), 0..2)],
        prop::option::weighted(
            0.2,
            prop_oneof![8 => "[a-z0-9]{1,8}".prop_map(Value::String), 1 => json_value()],
        ),
        prop::option::weighted(0.3, (0u32..5, 0u32..3, any::<u64>())),
        prop::option::weighted(0.3, prop_oneof![8 => 0.001f64..1e6, 1 => any::<f64>()]),
    )
        .prop_map(
            |((kind_key, kind), inputs, mut map, after, cache, resources, timeout)| {
                // A mapped task maps its first input, mostly.
                if map.len() == 1 {
                    if let Some(first) = inputs.keys().next() {
                        map[0] = first.clone();
                    }
                }
                let mut t = Map::new();
                t.insert(kind_key, kind);
                t.insert("inputs".into(), json!(inputs));
                t.insert("map".into(), json!(map));
                t.insert("after".into(), json!(after));
                if let Some(version) = cache {
                    t.insert("cache".into(), json!({"version": version}));
                }
                if let Some((slots, gpus, memory_mb)) = resources {
                    t.insert(
                        "resources".into(),
                        json!({"slots": slots, "gpus": gpus, "memory_mb": memory_mb}),
                    );
                }
                if let Some(s) = timeout {
                    t.insert("timeout_s".into(), json!(s));
                }
                Value::Object(t)
            },
        )
}

/// A flow file: tasks named `t0`, `t1`… in order (sometimes renamed at random), referring
/// to each other, to parameters and to names that do not exist.
fn flow() -> impl Strategy<Value = String> {
    (
        prop_oneof![20 => Just("f".to_string()), 1 => name()],
        prop::collection::btree_map(
            prop_oneof![20 => prop::sample::select(vec!["p", "q"]).prop_map(str::to_string), 1 => name()],
            prop::option::of(json_value()),
            0..3,
        ),
        prop::collection::vec((task(), prop::option::weighted(0.05, name())), 1..6),
    )
        .prop_map(|(name, params, tasks)| {
            let parameters: Map<String, Value> = params
                .into_iter()
                .map(|(k, d)| (k, d.map_or(Value::Null, |d| json!({"default": d}))))
                .collect();
            let tasks: Vec<Value> = tasks
                .into_iter()
                .enumerate()
                .map(|(i, (mut t, renamed))| {
                    if let Value::Object(m) = &mut t {
                        m.insert("name".into(), json!(renamed.unwrap_or(format!("t{i}"))));
                    }
                    t
                })
                .collect();
            json!({"name": name, "parameters": parameters, "tasks": tasks}).to_string()
        })
}

/// A flow file mangled: cut short, or with a few bytes replaced.
fn mangled() -> impl Strategy<Value = String> {
    (flow(), any::<prop::sample::Index>(), ".{0,4}").prop_map(|(f, at, junk)| {
        let mut cut = at.index(f.len().max(1));
        while !f.is_char_boundary(cut) {
            cut -= 1;
        }
        format!(
            "{}{junk}{}",
            &f[..cut],
            &f[cut..].chars().skip(3).collect::<String>()
        )
    })
}

/// What a flow that parsed must be: unique task names, inputs and `after` naming earlier
/// tasks only (a topological order), mapped inputs among the inputs.
fn check_valid(spec: &super::FlowSpec) {
    let mut seen = HashSet::new();
    for t in &spec.tasks {
        for u in t.upstream() {
            assert!(
                seen.contains(u),
                "task `{}` runs before its upstream `{u}`",
                t.name
            );
        }
        assert!(seen.insert(t.name.as_str()), "duplicate task `{}`", t.name);
        for m in &t.map {
            assert!(t.inputs.contains_key(m));
        }
    }
}

proptest! {
    #[test]
    fn any_text_parses_or_is_refused(source in ".{0,400}") {
        if let Ok(spec) = parse_flow(&source) {
            check_valid(&spec);
        }
    }

    #[test]
    fn generated_flows_parse_to_valid_dags_whose_inputs_resolve(
        source in prop_oneof![3 => flow(), 1 => mangled()],
        given in prop::collection::btree_map(name(), json_value(), 0..3),
        results in prop::collection::btree_map(name(), json_value(), 0..5),
    ) {
        let Ok(spec) = parse_flow(&source) else {
            return Ok(());
        };
        check_valid(&spec);
        for t in &spec.tasks {
            let sent: Value = serde_json::from_str(&t.assignment_json()).expect("JSON");
            prop_assert!(sent.is_object());
        }
        let Ok(params) = bind_parameters(&spec, given) else {
            return Ok(());
        };
        let context = RunContext::default();
        for t in &spec.tasks {
            if let Ok(r) = resolve_inputs(t, &params, &context, |name| results.get(name)) {
                if let Some(width) = r.width() {
                    for i in 0..width.min(3) {
                        let one: Value = serde_json::from_str(&r.json_for(i)).expect("JSON");
                        prop_assert_eq!(one, r.for_index(i));
                    }
                }
            }
        }
    }

    #[test]
    fn parameter_values_of_any_json_bind_or_are_refused(
        text in prop_oneof![".{0,40}", json_value().prop_map(|v| v.to_string())],
    ) {
        let spec = parse_flow("name: f\nparameters: {p: {default: 1}}\ntasks:\n  - name: a\n    builtin: echo\n    inputs: {value: {param: p}}\n")
            .expect("a flow");
        let Ok(value) = serde_json::from_str::<Value>(&text) else {
            return Ok(());
        };
        let bound = bind_parameters(&spec, BTreeMap::from([("p".to_string(), value.clone())]))
            .expect("a declared parameter binds");
        prop_assert_eq!(&bound["p"], &value);
    }
}
