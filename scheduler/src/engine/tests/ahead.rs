//! Running ahead: a worker offered the chain after its attempt runs it and reports it with
//! the attempt's result; what matches is taken as each task run's first attempt, anything
//! else is dispatched as usual.

use super::*;
use baton_common::flow::{inputs_digest, PartialInputs};

const CHAIN: &str = r#"
name: chain
parameters:
  x: {default: 5}
tasks:
  - name: a
    builtin: echo
    inputs:
      value: {param: x}
  - name: b
    builtin: echo
    inputs:
      value: {result: a}
  - name: c
    builtin: noop
    after: [b]
  - name: d
    builtin: echo
    inputs:
      value: {value: 7}
      k: {param: x}
    after: [c]
"#;

/// What a worker computes running `a`'s successors ahead after `a` returned `value`: the
/// first `n` of them, or `wrong_digest` for the first one's digest.
fn ahead_of(a: &Assignment, value: &Value, n: usize, wrong_digest: bool) -> Vec<pb::RanAhead> {
    let mut out = Vec::new();
    let mut after = a.key.clone();
    let mut value = value.clone();
    for s in a.successors.iter().take(n) {
        let partial = PartialInputs::from_json(&s.fixed_inputs, &s.bound_inputs).expect("inputs");
        let json = partial.complete(&after.task, &value).expect("complete");
        let inputs: Value = serde_json::from_str(&json).expect("JSON");
        let spec: Value = serde_json::from_str(&s.task_spec).expect("spec");
        let key = AttemptKey {
            run: a.key.run.clone(),
            task: s.task.clone(),
            map_index: -1,
            attempt: 1,
        };
        let result = match spec["function"].as_str() {
            Some("noop") => Value::Null,
            _ => inputs["value"].clone(),
        };
        let text = result.to_string();
        let digest = inputs_digest(&json) ^ u64::from(wrong_digest && out.is_empty());
        out.push(pb::RanAhead {
            finished: Some(pb::Finished {
                key: Some((&key).into()),
                at_ms: T0,
                outcome: Some(pb::finished::Outcome::Success(pb::TaskSuccess {
                    result: Some(pb::ResultRef {
                        uri: format!("mem://results/{}", key.ahead_result_key()),
                        size: text.len() as u64,
                        checksum: checksum(text.as_bytes()),
                        content_type: "application/json".into(),
                    }),
                    inline_value: text,
                })),
                ahead: Vec::new(),
            }),
            after: Some((&after).into()),
            inputs_digest: digest,
            started_us: T0 * 1000,
            ended_us: T0 * 1000 + 5,
        });
        after = key;
        value = result;
    }
    out
}

#[test]
fn a_chain_run_ahead_completes_with_its_head() {
    let mut c = VirtualCluster::new();
    c.register(CHAIN);
    c.connect("w", &[], 4, 0);
    let run = c.start("chain", json!({}));
    let first = c.step();
    assert_eq!(names(&first), ["a#1@w"]);
    let a = &first[0];
    let offered: Vec<&str> = a.successors.iter().map(|s| s.task.as_str()).collect();
    assert_eq!(offered, ["b", "c", "d"]);
    // What does not read the predecessor is resolved; what does is sent as bound.
    assert_eq!(a.successors[0].fixed_inputs, "{}");
    assert_eq!(a.successors[0].bound_inputs, r#"{"value":{"result":"a"}}"#);
    assert_eq!(a.successors[2].fixed_inputs, r#"{"k":5,"value":7}"#);

    let ahead = ahead_of(a, &json!(5), 3, false);
    assert!(c.succeed_ahead(a, json!(5), ahead));
    assert!(c.step().is_empty(), "nothing left to dispatch");
    assert_eq!(run_state(&c.run(&run)), pb::RunState::Completed);
    for (task, value) in [("b", json!(5)), ("c", Value::Null), ("d", json!(7))] {
        let t = c.task(&run, task, -1);
        assert_eq!(t.attempt, 1, "{task}");
        assert_eq!(t.worker, "w", "{task}");
        assert_eq!(value_of(&t), value, "{task}");
        assert!(t.result.as_ref().expect("a result").uri.contains(".ahead-"));
        let key = tables::results::key(&run, task, -1);
        assert!(
            c.store.contains_key(&key),
            "{task}'s result pointer is committed"
        );
    }
    assert_eq!(c.assigns.len(), 1, "one assignment for the whole chain");

    // A restart reads the chain back as completed.
    c.restart();
    c.connect("w2", &[], 4, 0);
    assert!(c.step().is_empty());
    assert_eq!(run_state(&c.run(&run)), pb::RunState::Completed);
    assert_eq!(c.task(&run, "d", -1).attempt, 1);
}

#[test]
fn part_of_a_chain_run_ahead_leaves_the_rest_to_dispatch() {
    let mut c = VirtualCluster::new();
    c.register(CHAIN);
    c.connect("w", &[], 4, 0);
    let run = c.start("chain", json!({"x": 2}));
    let a = c.step().remove(0);
    let ahead = ahead_of(&a, &json!(2), 1, false);
    assert!(c.succeed_ahead(&a, json!(2), ahead));
    let next = c.step();
    assert_eq!(names(&next), ["c#1@w"], "b was taken, c is dispatched");
    assert_eq!(c.task(&run, "b", -1).attempt, 1);
    let offered: Vec<&str> = next[0].successors.iter().map(|s| s.task.as_str()).collect();
    assert_eq!(offered, ["d"]);
    c.run_to_end();
    assert_eq!(run_state(&c.run(&run)), pb::RunState::Completed);
    assert_eq!(
        value_of(&c.task(&run, "d", -1)),
        json!({"k": 2, "value": 7})
    );
}

#[test]
fn what_does_not_match_is_dispatched_as_usual() {
    // Inputs other than those the scheduler resolved: b and what follows run again.
    let mut c = VirtualCluster::new();
    c.register(CHAIN);
    c.connect("w", &[], 4, 0);
    let run = c.start("chain", json!({}));
    let a = c.step().remove(0);
    let ahead = ahead_of(&a, &json!(5), 3, true);
    assert!(c.succeed_ahead(&a, json!(5), ahead));
    assert_eq!(names(&c.step()), ["b#1@w"]);
    c.run_to_end();
    assert_eq!(run_state(&c.run(&run)), pb::RunState::Completed);
    assert!(!c
        .task(&run, "b", -1)
        .result
        .unwrap()
        .uri
        .contains(".ahead-"));

    // Run ahead after another worker's attempt, or after an attempt that is not the one
    // committed: not taken.
    let mut c = VirtualCluster::new();
    c.register(CHAIN);
    c.connect("w", &[], 4, 0);
    c.connect("v", &[], 4, 0);
    let run = c.start("chain", json!({}));
    let a = c.step().remove(0);
    let mut ahead = ahead_of(&a, &json!(5), 3, false);
    let other = if a.worker == "w" { "v" } else { "w" };
    let session = c.workers[other].session;
    c.engine
        .ran_ahead(&WorkerId(other.into()), session, ahead.clone());
    assert!(c.succeed_with(&a, json!(5)));
    assert_eq!(names(&c.step()), [format!("b#1@{}", a.worker)]);
    // A late report of the same chain, once b is dispatched, changes nothing.
    ahead.truncate(1);
    c.engine.ran_ahead(
        &WorkerId(a.worker.clone()),
        c.workers[&a.worker].session,
        ahead,
    );
    assert!(c.step().is_empty());
    c.run_to_end();
    assert_eq!(run_state(&c.run(&run)), pb::RunState::Completed);
    assert!(
        c.assigns.len() >= 4,
        "every task dispatched: {:?}",
        names(&c.assigns)
    );
}

#[test]
fn only_plain_chains_of_instant_built_ins_are_offered() {
    let flows = [
        // Two successors.
        "name: f\ntasks:\n  - {name: a, builtin: noop}\n  - {name: b, builtin: noop, after: [a]}\n  - {name: c, builtin: noop, after: [a]}\n",
        // A successor with two upstream tasks.
        "name: f\ntasks:\n  - {name: a, builtin: noop}\n  - {name: z, builtin: noop}\n  - {name: b, builtin: noop, after: [a, z]}\n",
        // Not instant, tagged, cached, other labels.
        "name: f\ntasks:\n  - {name: a, builtin: noop}\n  - {name: b, builtin: sleep, after: [a]}\n",
        "name: f\ntasks:\n  - {name: a, builtin: noop}\n  - {name: b, builtin: noop, after: [a], tags: [t]}\n",
        "name: f\ntasks:\n  - {name: a, builtin: noop}\n  - {name: b, builtin: noop, after: [a], cache: {}}\n",
        "name: f\ntasks:\n  - {name: a, builtin: noop}\n  - {name: b, builtin: noop, after: [a], labels: [gpu]}\n",
    ];
    for flow in flows {
        let mut c = VirtualCluster::new();
        c.register(flow);
        c.connect("w", &["gpu"], 4, 0);
        c.start("f", json!({}));
        for a in c.step() {
            assert!(a.successors.is_empty(), "{flow}: {:?}", a.successors);
        }
    }
}
