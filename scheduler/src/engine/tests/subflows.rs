//! Sub-flows: one child run per mapped element, on the child's own labels, yielding the
//! named task's result; failures and retries start new children; cancelling a parent
//! cancels its children; a restart never starts a second child.

use super::*;

/// The child: trains one "model" per alpha on `trainer` workers.
const CHILD: &str = r#"
name: train_one
labels: [trainer]
parameters:
  alpha: {}
  data: {}
tasks:
  - name: fit
    builtin: echo
    inputs:
      alpha: {param: alpha}
      data: {param: data}
      parent: {context: parent_run_id}
"#;

/// The parent, on `local` workers: a child run per alpha, then a summary of their fits.
const PARENT: &str = r#"
name: sweep
labels: [local]
parameters:
  alphas: {default: [1, 2, 3]}
tasks:
  - name: data
    builtin: echo
    inputs: {rows: 10}
  - name: train
    subflow: {flow: train_one, result: fit}
    inputs:
      alpha: {param: alphas}
      data: {result: data}
    map: [alpha]
  - name: summary
    builtin: echo
    inputs: {fits: {result: train}}
"#;

fn cluster() -> VirtualCluster {
    let mut c = VirtualCluster::new();
    c.register(CHILD);
    c.register(PARENT);
    c.connect("cpu", &["local"], 4, 0);
    c.connect("gpu", &["trainer"], 4, 0);
    c
}

fn children(c: &VirtualCluster, parent: &str) -> Vec<pb::FlowRun> {
    let mut v: Vec<pb::FlowRun> = c
        .engine
        .list_runs(0)
        .into_iter()
        .filter(|r| r.parent_run_id == parent)
        .collect();
    v.sort_by_key(|r| r.parent_map_index);
    v
}

#[test]
fn a_mapped_subflow_runs_one_child_per_element_and_yields_their_results() {
    let mut c = cluster();
    let run = c.start("sweep", Value::Null);
    let all = c.run_to_end();
    assert_eq!(run_state(&c.run(&run)), pb::RunState::Completed);
    let kids = children(&c, &run);
    assert_eq!(kids.len(), 3);
    for (i, k) in kids.iter().enumerate() {
        assert_eq!(k.flow, "train_one");
        assert_eq!(k.parent_task, "train");
        assert_eq!(k.parent_map_index, i as i64);
        assert_eq!(k.trigger, "parent");
        assert_eq!(run_state(k), pb::RunState::Completed);
        let t = c.task(&run, "train", i as i64);
        assert_eq!(t.child_run_id, k.id, "the task run names its child");
        assert_eq!(t.attempts[0].worker, "subflow");
    }
    // The children's tasks ran on the trainer worker, the parent's on the local one.
    for a in &all {
        let expected = if a.task() == "fit" { "gpu" } else { "cpu" };
        assert_eq!(a.worker, expected, "{}", a.task());
    }
    assert!(
        only(&all, "train").is_empty(),
        "a sub-flow task is never dispatched"
    );
    let summary = value_of(&c.task(&run, "summary", -1));
    let fits = summary["fits"].as_array().expect("a list").clone();
    assert_eq!(fits.len(), 3);
    for (i, f) in fits.iter().enumerate() {
        assert_eq!(f["alpha"], json!(i + 1));
        assert_eq!(f["data"], json!({"rows": 10}));
        assert_eq!(f["parent"], json!(run), "the child reads its parent's id");
    }
    // The task run's result is the child's `fit` result object.
    let t = c.task(&run, "train", 0);
    let fit = c.task(&kids[0].id, "fit", -1);
    assert_eq!(t.result, fit.result);
}

#[test]
fn cancelling_the_parent_cancels_its_children() {
    let mut c = cluster();
    let run = c.start("sweep", Value::Null);
    c.run_to_end_of("data");
    let fits = c.step();
    assert!(
        fits.is_empty(),
        "already assigned when the children started"
    );
    assert_eq!(c.outstanding("gpu"), 3);
    c.cancel(&run);
    assert_eq!(run_state(&c.run(&run)), pb::RunState::Cancelled);
    for k in children(&c, &run) {
        assert_eq!(run_state(&c.run(&k.id)), pb::RunState::Cancelled);
    }
    let cancels = c.cancels();
    assert_eq!(cancels.iter().filter(|x| x.key.task == "fit").count(), 3);
}

#[test]
fn a_failed_child_fails_the_attempt_and_a_retry_starts_a_new_child() {
    let mut c = cluster();
    c.register(&PARENT.replace(
        "    map: [alpha]\n",
        "    map: [alpha]\n    retries: {count: 1, delay_s: 2}\n",
    ));
    let run = c.start("sweep", json!({"alphas": [7]}));
    c.run_to_end_of("data");
    c.step();
    let fit = c.workers["gpu"].running[0].clone();
    c.fail(&fit, "diverged", false);
    let t = c.task(&run, "train", 0);
    assert_eq!(task_state(&t), pb::TaskState::Retrying);
    assert!(
        t.error.contains("failed") && t.error.contains("diverged"),
        "{}",
        t.error
    );
    c.advance(2_000);
    let t = c.task(&run, "train", 0);
    assert_eq!(t.attempt, 2);
    let kids = children(&c, &run);
    assert_eq!(kids.len(), 2, "a new child for the retry");
    assert_ne!(t.child_run_id, t.attempts[0].worker);
    let fit = c.workers["gpu"].running[0].clone();
    c.fail(&fit, "diverged again", false);
    c.step();
    let r = c.run(&run);
    assert_eq!(run_state(&r), pb::RunState::Failed);
    assert!(r.error.contains("diverged again"), "{}", r.error);
}

#[test]
fn an_unknown_child_flow_fails_the_task_without_retries() {
    let mut c = cluster();
    c.register(&PARENT.replace("train_one", "nope").replace(
        "    map: [alpha]\n",
        "    map: [alpha]\n    retries: {count: 3}\n",
    ));
    let run = c.start("sweep", Value::Null);
    c.run_to_end();
    let t = c.task(&run, "train", 0);
    assert_eq!(task_state(&t), pb::TaskState::Failed);
    assert_eq!(t.attempt, 1);
    assert!(t.error.contains("nope"), "{}", t.error);
}

#[test]
fn a_restart_while_children_run_starts_no_second_child() {
    let mut c = cluster();
    let run = c.start("sweep", Value::Null);
    c.run_to_end_of("data");
    c.step();
    assert_eq!(children(&c, &run).len(), 3);
    // One child finishes; then the leader dies.
    let first = c.workers["gpu"].running[0].clone();
    c.succeed(&first);
    c.restart();
    let running: Vec<AttemptKey> = c.workers["gpu"]
        .running
        .iter()
        .map(|a| a.key.clone())
        .collect();
    c.reconnect("gpu", &running);
    c.reconnect("cpu", &[]);
    c.run_to_end();
    assert_eq!(run_state(&c.run(&run)), pb::RunState::Completed);
    assert_eq!(children(&c, &run).len(), 3, "no child started twice");
    for i in 0..3 {
        assert_eq!(c.task(&run, "train", i).attempt, 1);
    }
    let fits = value_of(&c.task(&run, "summary", -1));
    assert_eq!(fits["fits"].as_array().map(Vec::len), Some(3));
}

#[test]
fn a_flow_that_starts_itself_fails_instead_of_recursing() {
    let mut c = cluster();
    c.register(
        "name: ouroboros\nparameters:\n  n: {default: 1}\ntasks:\n  - name: again\n    subflow: {flow: ouroboros}\n    inputs: {n: {param: n}}\n",
    );
    let run = c.start("ouroboros", Value::Null);
    c.run_to_end();
    let r = c.run(&run);
    assert_eq!(run_state(&r), pb::RunState::Failed);
    assert!(r.error.contains("recursion"), "{}", r.error);
    assert_eq!(c.engine.list_runs(0).len(), 1, "no child was started");
}

#[test]
fn a_child_lost_at_recovery_fails_its_parent_task_instead_of_waiting_forever() {
    let mut c = cluster();
    let run = c.start("sweep", json!({"alphas": [1]}));
    c.run_to_end_of("data");
    c.step();
    let child = children(&c, &run)[0].id.clone();
    // The child's records are gone (say its flow version could not be read back).
    c.store.retain(|k, _| {
        !k.starts_with(&format!("run/{child}")) && !k.starts_with(&format!("tr/{child}/"))
    });
    c.restart();
    c.reconnect("cpu", &[]);
    c.reconnect("gpu", &[]);
    c.run_to_end();
    let t = c.task(&run, "train", 0);
    assert_eq!(task_state(&t), pb::TaskState::Failed);
    assert!(t.error.contains("was lost"), "{}", t.error);
    assert_eq!(run_state(&c.run(&run)), pb::RunState::Failed);
}
