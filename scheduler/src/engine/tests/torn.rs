//! Steps whose commit is torn: the etcd store writes a large step in several transactions,
//! and after a failure any prefix of them may have landed (the embedded store writes a
//! step whole). Whatever prefix landed, a new leader completes the run with the right
//! values, commits no result twice, and re-runs nothing whose result was committed.

use super::*;

const FLOW: &str = r#"
name: torn
tasks:
  - name: gen
    builtin: range
    inputs: {n: 3000}
  - name: sq
    builtin: echo
    inputs: {x: {result: gen}}
    map: [x]
  - name: total
    builtin: sum
    inputs: {xs: {result: sq}}
"#;

/// Reports `a` finished with x² without letting the host commit (no drain).
fn finish_quietly(c: &mut VirtualCluster, a: &Assignment) {
    let x = a.inputs["x"].as_i64().expect("x");
    let value = json!(x * x);
    let bytes = serde_json::to_vec(&value).expect("JSON");
    let result = ResultRef {
        uri: format!("mem://results/{}", a.key.result_key()),
        size: bytes.len() as u64,
        checksum: checksum(&bytes),
        content_type: "application/json".into(),
    };
    c.values.insert(result.uri.clone(), value.clone());
    let w = c.workers.get_mut(&a.worker).expect("a known worker");
    w.running.retain(|r| r.key != a.key);
    let (id, session) = (WorkerId(a.worker.clone()), w.session);
    c.engine.task_finished(
        &id,
        session,
        &a.key,
        Outcome::Success { result, value },
        c.now,
    );
}

/// Runs the scenario with the big step torn after `keep` operations (of how many).
fn torn_after(keep: &dyn Fn(usize) -> usize) -> (usize, usize) {
    let mut c = VirtualCluster::new();
    c.register(FLOW);
    c.behave("sq", |a| json!(a.inputs["x"].as_i64().unwrap_or(0).pow(2)));
    c.connect("w", &[], 4000, 0);
    let run = c.start("torn", json!({}));
    let gen = c.step();
    assert!(c.succeed(&gen[0]));
    let sq = c.step();
    assert_eq!(sq.len(), 3000);
    // A few complete normally; then 2,000 finish within one step, whose commit is torn
    // (their records take several batches).
    for a in &sq[..10] {
        assert!(c.succeed(a));
    }
    let batch: Vec<Assignment> = sq[10..2010].to_vec();
    for a in &batch {
        finish_quietly(&mut c, a);
    }
    c.engine.tick(c.now);
    c.engine.dispatch(c.now);
    let total_ops = c.drain_torn(keep);
    let landed = completed_in_store(&c, "sq");

    // A new leader; the worker comes back with every attempt it has not heard committed.
    c.advance(100);
    c.restart();
    let pending: Vec<AttemptKey> = sq[10..].iter().map(|a| a.key.clone()).collect();
    c.reconnect("w", &pending);
    c.step();
    for a in &batch {
        c.succeed(a);
    }
    let rest = c.run_to_end();
    assert!(
        rest.iter().all(|a| a.task() != "sq"),
        "a sq task run was dispatched again: {:?}",
        names(&rest)
    );
    assert_eq!(run_state(&c.run(&run)), pb::RunState::Completed);
    let want: i64 = (1..=3000i64).map(|x| x * x).sum();
    assert_eq!(value_of(&c.task(&run, "total", -1)), json!(want));
    for i in 0..3000 {
        let t = c.task(&run, "sq", i);
        assert_eq!(t.attempt, 1, "sq[{i}] ran again");
        assert_eq!(value_of(&t), json!((i + 1) * (i + 1)), "sq[{i}]");
    }
    (total_ops, landed)
}

#[test]
fn any_prefix_of_a_torn_step_recovers_to_the_same_results() {
    let mut sizes = Vec::new();
    // Nothing landed, the first op, half, all but the last op.
    let keeps: [&dyn Fn(usize) -> usize; 4] =
        [&|_| 0, &|_| 1, &|n| n / 2, &|n| n.saturating_sub(1)];
    for keep in keeps {
        sizes.push(torn_after(keep));
    }
    // The step's records took several operations (batches), and the prefixes differed.
    assert!(sizes[0].0 >= 3, "{sizes:?}");
    let landed: Vec<usize> = sizes.iter().map(|s| s.1).collect();
    assert!(landed.windows(2).all(|w| w[0] <= w[1]), "{landed:?}");
    assert!(landed[0] < landed[3], "{landed:?}");
}

/// How many task runs of `task` the store holds as completed.
fn completed_in_store(c: &VirtualCluster, task: &str) -> usize {
    let mut rows = tables::Rows::default();
    for (k, v) in &c.store {
        rows.add(k, v).expect("a readable state store");
    }
    rows.finish()
        .task_runs
        .iter()
        .filter(|(_, t, _, r)| t == task && r.state == baton_common::state::TaskState::Completed)
        .count()
}
