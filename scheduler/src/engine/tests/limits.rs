//! Concurrency limits on tags and run priorities: a limit is never exceeded across
//! workers, its slots come back when attempts end in any way (finished, worker lost, after a
//! restart), and higher-priority runs are dispatched first.

use super::*;

/// Twelve `heavy` task runs, tagged `gpu-heavy`.
const HEAVY: &str = r#"
name: heavy
parameters:
  n: {default: 12}
tasks:
  - name: gen
    builtin: range
    inputs: {n: {param: n}}
  - name: heavy
    builtin: echo
    tags: [gpu-heavy]
    inputs: {x: {result: gen}}
    map: [x]
"#;

fn heavy_running(c: &VirtualCluster) -> usize {
    c.workers
        .values()
        .flat_map(|w| w.running.iter())
        .filter(|a| a.task() == "heavy")
        .count()
}

fn in_use(c: &VirtualCluster, tag: &str) -> u32 {
    c.engine
        .list_limits()
        .into_iter()
        .find(|l| l.tag == tag)
        .map(|l| l.in_use)
        .unwrap_or(0)
}

#[test]
fn a_limit_of_two_is_never_exceeded_across_workers() {
    let mut c = VirtualCluster::new();
    c.register(HEAVY);
    c.engine.set_limit("gpu-heavy", 2).expect("a limit");
    c.connect("a", &[], 8, 0);
    c.connect("b", &[], 8, 0);
    let run = c.start("heavy", Value::Null);
    let mut max = 0;
    for _ in 0..200 {
        c.step();
        max = max.max(heavy_running(&c));
        assert!(in_use(&c, "gpu-heavy") <= 2);
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
    assert_eq!(max, 2, "the limit is reached and never exceeded");
    assert_eq!(run_state(&c.run(&run)), pb::RunState::Completed);
    assert_eq!(in_use(&c, "gpu-heavy"), 0, "every slot is back");
    let waiting = c.run(&run);
    assert!(waiting.waiting_reason.is_empty());
}

#[test]
fn slots_come_back_when_the_worker_holding_them_is_lost() {
    let mut c = VirtualCluster::new();
    c.register(HEAVY);
    c.engine.set_limit("gpu-heavy", 2).expect("a limit");
    c.connect("a", &[], 8, 0);
    let run = c.start("heavy", Value::Null);
    c.run_to_end_of("gen");
    c.step();
    assert_eq!(heavy_running(&c), 2);
    let r = c.run(&run);
    assert!(
        r.waiting_reason.contains("gpu-heavy") && r.waiting_reason.contains("2 of 2"),
        "{}",
        r.waiting_reason
    );
    // `a` dies holding both slots; `b` gets them once `a`'s lease lapses.
    c.disconnect("a");
    c.connect("b", &[], 8, 0);
    let none = c.advance(1_000);
    assert!(none.is_empty(), "slots are held until the lease lapses");
    let again = c.advance(LEASE_MS);
    assert_eq!(only(&again, "heavy").len(), 2);
    assert!(again.iter().all(|a| a.worker == "b"));
    c.run_to_end();
    assert_eq!(run_state(&c.run(&run)), pb::RunState::Completed);
    assert_eq!(in_use(&c, "gpu-heavy"), 0);
}

#[test]
fn a_new_leader_counts_recovered_attempts_against_the_limit() {
    let mut c = VirtualCluster::new();
    c.register(HEAVY);
    c.engine.set_limit("gpu-heavy", 2).expect("a limit");
    c.connect("a", &[], 8, 0);
    let run = c.start("heavy", Value::Null);
    c.run_to_end_of("gen");
    c.step();
    assert_eq!(heavy_running(&c), 2);
    c.restart();
    assert_eq!(c.engine.list_limits().len(), 1, "the limit is recovered");
    assert_eq!(
        in_use(&c, "gpu-heavy"),
        2,
        "running attempts hold their slots"
    );
    // Another worker connects first: it gets no heavy task while the two may still run.
    c.connect("b", &[], 8, 0);
    let early = c.advance(100);
    assert!(only(&early, "heavy").is_empty());
    let running: Vec<AttemptKey> = c.workers["a"]
        .running
        .iter()
        .map(|a| a.key.clone())
        .collect();
    c.reconnect("a", &running);
    c.run_to_end();
    assert_eq!(run_state(&c.run(&run)), pb::RunState::Completed);
    let heavy: Vec<_> = c.engine.task_runs(&run, false).expect("a run");
    assert!(heavy.iter().all(|t| t.attempt <= 1), "adopted, not re-run");
}

#[test]
fn higher_priority_runs_are_dispatched_first() {
    let mut c = VirtualCluster::new();
    c.register("name: p\ntasks:\n  - name: gen\n    builtin: range\n    inputs: {n: 3}\n  - name: x\n    builtin: echo\n    inputs: {v: {result: gen}}\n    map: [v]\n");
    let mut low = new_run("p", Value::Null);
    low.priority = -5;
    let (low, _) = c.try_start(low).expect("a run");
    let mut high = new_run("p", Value::Null);
    high.priority = 10;
    let (high, _) = c.try_start(high).expect("a run");
    let (mid, _) = c.try_start(new_run("p", Value::Null)).expect("a run");
    // One slot: the order of dispatch is the order of priority.
    c.connect("w", &[], 1, 0);
    let order: Vec<String> = c.run_to_end().iter().map(|a| a.key.run.clone()).collect();
    let rank = |id: &str| {
        if id == high {
            0
        } else if id == mid {
            1
        } else {
            assert_eq!(id, low);
            2
        }
    };
    let ranks: Vec<i32> = order.iter().map(|r| rank(r)).collect();
    assert_eq!(ranks.len(), 12);
    assert!(
        ranks.windows(2).all(|w| w[0] <= w[1]),
        "every ready task run of a higher-priority run goes first: {ranks:?}"
    );
    assert_eq!(c.run(&high).priority, 10);
}

#[test]
fn priorities_hold_across_classes_of_requirement() {
    let mut c = VirtualCluster::new();
    let flow = |name: &str, tags: &str| {
        format!(
            "name: {name}\nparameters:\n  vs: {{default: [1]}}\ntasks:\n  - name: x\n    builtin: echo\n    tags: [{tags}]\n    inputs: {{v: {{param: vs}}}}\n    map: [v]\n"
        )
    };
    // Two classes (their tags differ; no limit on either): one holds priorities 10 and 0,
    // the other 5. With two slots, 10 and 5 go first, not 10 and 0.
    c.register(&flow("plain", "a"));
    c.register(&flow("other", "b"));
    let mut start = |flow: &str, priority: i32, vs: Value| {
        let mut r = new_run(flow, json!({ "vs": vs }));
        r.priority = priority;
        c.try_start(r).expect("a run").0
    };
    let top = start("plain", 10, json!([1]));
    let bottom = start("plain", 0, json!([1, 2]));
    let middle = start("other", 5, json!([1]));
    c.connect("w", &[], 2, 0);
    let first: Vec<String> = c.step().iter().map(|a| a.key.run.clone()).collect();
    assert_eq!(first.len(), 2);
    assert!(first.contains(&top) && first.contains(&middle), "{first:?}");
    assert!(!first.contains(&bottom));
}
