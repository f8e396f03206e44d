//! Result caching: a cache hit completes a task run without dispatching it; expiry, a new
//! cache version, other inputs and `no_cache` dispatch again; entries survive a restart.

use super::*;

/// `work` is cached (for 60 s) and feeds `after`, which is not.
const CACHED: &str = r#"
name: cached
parameters:
  x: {}
tasks:
  - name: work
    builtin: echo
    inputs: {x: {param: x}}
    cache: {version: "v1", expire_s: 60}
  - name: after
    builtin: echo
    inputs: {v: {result: work}}
"#;

fn cluster() -> VirtualCluster {
    let mut c = VirtualCluster::new();
    c.register(CACHED);
    c.connect("w", &[], 4, 0);
    c
}

fn start_with(c: &mut VirtualCluster, x: i64, no_cache: bool) -> String {
    let mut req = new_run("cached", json!({ "x": x }));
    req.no_cache = no_cache;
    let (id, created) = c.try_start(req).expect("the run is created");
    assert!(created);
    id
}

#[test]
fn a_second_run_with_the_same_inputs_reuses_the_result_without_dispatching() {
    let mut c = cluster();
    let first = c.start("cached", json!({"x": 7}));
    let a = c.run_to_end();
    assert_eq!(attempts(&a), ["work#1", "after#1"]);
    assert_eq!(run_state(&c.run(&first)), pb::RunState::Completed);
    let computed = c.task(&first, "work", -1);
    assert!(c.store.keys().any(|k| k.starts_with("cache/")));

    let before = c.assigns.len();
    let second = c.start("cached", json!({"x": 7}));
    let b = c.run_to_end();
    assert_eq!(
        attempts(&b),
        ["after#1"],
        "only the uncached task is dispatched"
    );
    assert_eq!(c.assigns.len(), before + 1);
    let hit = c.task(&second, "work", -1);
    assert_eq!(task_state(&hit), pb::TaskState::Completed);
    assert_eq!(hit.worker, "cache");
    assert_eq!(hit.attempt, 0);
    assert!(hit.attempts.is_empty());
    assert_eq!(hit.result, computed.result, "the same result object");
    assert_eq!(value_of(&hit), value_of(&computed));
    assert_eq!(value_of(&hit), json!({"x": 7}));
    assert_eq!(
        b[0].inputs,
        json!({"v": {"x": 7}}),
        "downstream gets the cached value"
    );
    assert_eq!(run_state(&c.run(&second)), pb::RunState::Completed);
    // The hit has its own committed pointer, to the same object.
    let pointer: ResultRef =
        serde_json::from_slice(&c.store[&format!("res/{second}/work/-1")]).expect("a pointer");
    assert_eq!(Some(pb::ResultRef::from(pointer)), computed.result);
}

#[test]
fn a_fully_cached_run_completes_without_any_dispatch() {
    let mut c = VirtualCluster::new();
    c.register(
        r#"
name: alone
tasks:
  - name: work
    builtin: echo
    inputs: {n: 1}
    cache: {}
"#,
    );
    c.connect("w", &[], 4, 0);
    c.start("alone", json!({}));
    assert_eq!(c.run_to_end().len(), 1);
    let run = c.start("alone", json!({}));
    assert_eq!(run_state(&c.run(&run)), pb::RunState::Completed);
    assert!(c.run_to_end().is_empty());
    // Without an expiry the entry is reused much later too.
    c.advance(365 * 24 * 3600 * 1000);
    let later = c.start("alone", json!({}));
    assert!(c.run_to_end().is_empty());
    assert_eq!(c.task(&later, "work", -1).worker, "cache");
}

#[test]
fn other_inputs_or_another_cache_version_dispatch() {
    let mut c = cluster();
    c.start("cached", json!({"x": 1}));
    assert_eq!(attempts(&c.run_to_end()), ["work#1", "after#1"]);
    c.start("cached", json!({"x": 2}));
    assert_eq!(attempts(&c.run_to_end()), ["work#1", "after#1"]);

    // A new version of the flow with another cache version: a miss.
    let (version, new) = c.register(&CACHED.replace("\"v1\"", "\"v2\""));
    assert!(new && version == 2);
    c.start("cached", json!({"x": 1}));
    assert_eq!(attempts(&c.run_to_end()), ["work#1", "after#1"]);
    // Its result is cached under the new version.
    let run = c.start("cached", json!({"x": 1}));
    assert_eq!(attempts(&c.run_to_end()), ["after#1"]);
    assert_eq!(c.task(&run, "work", -1).worker, "cache");
}

#[test]
fn an_expired_entry_or_a_no_cache_run_dispatches_again() {
    let mut c = cluster();
    let first = start_with(&mut c, 3, false);
    assert_eq!(attempts(&c.run_to_end()), ["work#1", "after#1"]);

    // no_cache: the task runs although a fresh entry exists.
    let bypass = start_with(&mut c, 3, true);
    assert_eq!(attempts(&c.run_to_end()), ["work#1", "after#1"]);
    assert_ne!(c.task(&bypass, "work", -1).worker, "cache");

    // Within the expiry (counted from the latest result): a hit.
    c.advance(59_000);
    start_with(&mut c, 3, false);
    assert_eq!(attempts(&c.run_to_end()), ["after#1"]);

    // After it: dispatched again, and the fresh result is cached again.
    c.advance(1_000);
    let expired = start_with(&mut c, 3, false);
    assert_eq!(attempts(&c.run_to_end()), ["work#1", "after#1"]);
    assert_ne!(
        c.task(&expired, "work", -1).result,
        c.task(&first, "work", -1).result
    );
    let again = start_with(&mut c, 3, false);
    assert_eq!(attempts(&c.run_to_end()), ["after#1"]);
    assert_eq!(
        c.task(&again, "work", -1).result,
        c.task(&expired, "work", -1).result
    );
}

#[test]
fn failures_are_not_cached_and_mapped_task_runs_are_cached_one_by_one() {
    let mut c = VirtualCluster::new();
    c.register(
        r#"
name: fan
parameters:
  xs: {}
tasks:
  - name: sq
    builtin: echo
    inputs: {x: {param: xs}}
    map: [x]
    cache: {version: 1}
"#,
    );
    c.connect("w", &[], 4, 0);
    c.start("fan", json!({"xs": [1, 2]}));
    let a = c.step();
    assert_eq!(a.len(), 2);
    c.fail(
        a.iter().find(|a| a.index() == 1).expect("sq[1]"),
        "boom",
        false,
    );
    c.run_to_end();

    let run = c.start("fan", json!({"xs": [1, 2, 3]}));
    let b = c.run_to_end();
    assert_eq!(attempts(&b), ["sq[1]#1", "sq[2]#1"]);
    assert_eq!(c.task(&run, "sq", 0).worker, "cache");
    assert_eq!(
        run_state(&c.run(&run)),
        pb::RunState::Completed,
        "a partly cached mapped task completes"
    );
}

#[test]
fn cache_entries_survive_a_restart() {
    let mut c = cluster();
    let first = start_with(&mut c, 5, false);
    c.run_to_end();
    c.restart();
    c.reconnect("w", &[]);
    let second = start_with(&mut c, 5, false);
    assert_eq!(attempts(&c.run_to_end()), ["after#1"]);
    let hit = c.task(&second, "work", -1);
    assert_eq!(hit.worker, "cache");
    assert_eq!(hit.result, c.task(&first, "work", -1).result);
    assert_eq!(value_of(&hit), json!({"x": 5}));

    // The expiry still applies after a restart.
    c.advance(61_000);
    c.restart();
    c.reconnect("w", &[]);
    start_with(&mut c, 5, false);
    assert_eq!(attempts(&c.run_to_end()), ["work#1", "after#1"]);
}

#[test]
fn the_cache_field_is_parsed_and_checked() {
    let spec = parse_flow(CACHED).expect("valid");
    let cache = spec.tasks[0].cache.clone().expect("a cache spec");
    assert_eq!((cache.version.as_str(), cache.expire_ms), ("v1", 60_000));
    assert!(spec.tasks[1].cache.is_none());
    for (bad, field) in [
        ("cache: {expire_s: 0}", "cache.expire_s"),
        ("cache: {expire_s: -1}", "cache.expire_s"),
        ("cache: {version: [1]}", "cache.version"),
        ("cache: {versio: a}", "versio"),
    ] {
        let yaml = format!("name: f\ntasks:\n  - name: t\n    builtin: noop\n    {bad}\n");
        let err = parse_flow(&yaml).expect_err(bad).to_string();
        assert!(
            err.contains("task `t`") && err.contains(field),
            "{bad}: {err}"
        );
    }
    // A stored spec from before caching still loads.
    let mut old = serde_json::to_value(&spec).expect("JSON");
    old["tasks"][0]
        .as_object_mut()
        .expect("a task")
        .remove("cache");
    let back: baton_common::flow::FlowSpec = serde_json::from_value(old).expect("an old spec");
    assert!(back.tasks[0].cache.is_none());
}
