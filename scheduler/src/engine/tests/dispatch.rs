//! Dispatch: labels, resources, credit.

use super::*;

#[test]
fn labelled_tasks_go_only_to_workers_with_all_their_labels() {
    let mut c = VirtualCluster::new();
    c.register(
        r#"
name: labelled
labels: [local]
tasks:
  - name: prep
    builtin: echo
    inputs: {x: [1, 2, 3, 4]}
    map: [x]
  - name: train
    builtin: echo
    labels: [trainer]
    inputs: {x: [1, 2, 3, 4]}
    map: [x]
"#,
    );
    // The roomy workers lack one of the labels; only the small one has both.
    c.connect("local-only", &["local"], 8, 0);
    c.connect("trainer-only", &["trainer"], 8, 0);
    c.connect("both", &["trainer", "local"], 1, 0);
    let run = c.start("labelled", json!({}));

    let mut all = Vec::new();
    for _ in 0..100 {
        let new = c.step();
        all.extend(new);
        assert!(c.outstanding("both") <= 1);
        assert_eq!(c.outstanding("trainer-only"), 0);
        let next = c
            .workers
            .values()
            .flat_map(|w| w.running.iter())
            .min_by_key(|a| a.at)
            .cloned();
        match next {
            Some(a) => {
                c.succeed(&a);
            }
            None => break,
        }
    }
    assert_eq!(only(&all, "train").len(), 4);
    assert_eq!(only(&all, "prep").len(), 4);
    for a in only(&all, "train") {
        assert_eq!(a.worker, "both", "{:?}", names(&all));
    }
    for a in only(&all, "prep") {
        assert_ne!(
            a.worker, "trainer-only",
            "the flow's labels apply to every task"
        );
    }
    assert_eq!(run_state(&c.run(&run)), pb::RunState::Completed);
}

#[test]
fn a_worker_never_runs_more_attempts_than_its_slots() {
    let mut c = VirtualCluster::new();
    c.register(
        r#"
name: wide
tasks:
  - name: work
    builtin: echo
    inputs: {x: [1, 2, 3, 4, 5, 6, 7]}
    map: [x]
"#,
    );
    c.connect("w", &[], 2, 0);
    let run = c.start("wide", json!({}));

    let mut most = 0;
    let mut assigned = 0;
    for _ in 0..100 {
        assigned += c.step().len();
        let outstanding = c.outstanding("w");
        assert!(
            outstanding <= 2,
            "{outstanding} attempts on a 2-slot worker"
        );
        most = most.max(outstanding);
        let Some(a) = c.workers["w"].running.first().cloned() else {
            break;
        };
        c.succeed(&a);
    }
    assert_eq!(assigned, 7);
    assert_eq!(most, 2, "both slots are used");
    assert_eq!(run_state(&c.run(&run)), pb::RunState::Completed);
}

#[test]
fn a_task_needing_two_gpus_never_goes_to_a_one_gpu_worker() {
    let mut c = VirtualCluster::new();
    c.register(
        r#"
name: gpu-heavy
tasks:
  - name: fit
    builtin: echo
    inputs: {x: [1, 2, 3]}
    map: [x]
    resources: {gpus: 2}
"#,
    );
    c.connect("one-gpu", &[], 8, 1);
    c.connect("two-gpu", &[], 8, 2);
    let run = c.start("gpu-heavy", json!({}));

    let mut all = Vec::new();
    for _ in 0..100 {
        all.extend(c.step());
        assert_eq!(c.outstanding("one-gpu"), 0);
        assert!(
            c.outstanding("two-gpu") <= 1,
            "two gpus fit one task at a time"
        );
        let Some(a) = c.workers["two-gpu"].running.first().cloned() else {
            break;
        };
        c.succeed(&a);
    }
    assert_eq!(all.len(), 3);
    assert!(
        all.iter().all(|a| a.worker == "two-gpu"),
        "{:?}",
        names(&all)
    );
    assert_eq!(run_state(&c.run(&run)), pb::RunState::Completed);
}

#[test]
#[cfg(feature = "faults")]
fn a_duplicated_dispatch_commits_once_and_downstream_sees_one_value() {
    let mut c = VirtualCluster::with_config(EngineConfig {
        fault_duplicate_dispatch: Some("dup".into()),
        ..config()
    });
    c.register(
        r#"
name: twice
tasks:
  - name: dup
    builtin: echo
    inputs: {value: 7}
  - name: after
    builtin: echo
    inputs: {value: {result: dup}}
"#,
    );
    c.connect("a", &[], 1, 0);
    c.connect("b", &[], 1, 0);
    let run = c.start("twice", json!({}));
    let first = c.step();
    assert_eq!(attempts(&first), ["dup#1", "dup#2"], "two attempts at once");
    assert_ne!(first[0].worker, first[1].worker, "on two workers");
    // The older attempt's result is acknowledged but not committed.
    assert!(!c.succeed_with(&first[0], json!(1)));
    assert_ne!(
        task_state(&c.task(&run, "dup", -1)),
        pb::TaskState::Completed
    );
    assert!(c.succeed_with(&first[1], json!(2)));
    let dup = c.task(&run, "dup", -1);
    assert_eq!(dup.attempt, 2);
    assert!(dup
        .result
        .expect("committed")
        .uri
        .ends_with("attempt-2.json"));
    let next = c.step();
    assert_eq!(one(&next, "after").inputs, json!({"value": 2}));
}
