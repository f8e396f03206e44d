//! Stale results, lost workers and recovery after a restart.

use super::*;

const ONCE: &str = r#"
name: once
tasks:
  - name: t
    builtin: noop
  - name: d
    builtin: echo
    inputs: {v: {result: t}}
"#;

#[test]
fn a_stale_or_duplicate_finished_is_not_committed() {
    let mut c = VirtualCluster::new();
    c.register(ONCE);
    c.behave("t", |a| json!({"attempt": a.attempt(), "worker": a.worker}));
    c.connect("a", &[], 1, 0);
    let run = c.start("once", json!({}));
    let t1 = c.step();
    assert_eq!(names(&t1), ["t#1@a"]);
    c.connect("b", &[], 1, 0);

    // `a` drops off; after its lease, attempt 2 goes to `b`.
    c.disconnect("a");
    let t2 = c.advance(LEASE_MS);
    assert_eq!(names(&t2), ["t#2@b"]);

    // `a` comes back still holding attempt 1: the scheduler tells it to stop.
    let welcome = c.reconnect("a", std::slice::from_ref(&t1[0].key));
    let unknown: Vec<AttemptKey> = welcome.unknown.iter().map(AttemptKey::from).collect();
    assert_eq!(unknown, [t1[0].key.clone()]);
    // Its result arrives anyway: refused, and attempt 2 goes on.
    assert!(!c.succeed(&t1[0]));
    let t = c.task(&run, "t", -1);
    assert_eq!(task_state(&t), pb::TaskState::Assigned);
    assert_eq!((t.attempt, t.worker.as_str()), (2, "b"));
    assert!(t.result.is_none());
    assert!(c.step().is_empty());

    assert!(c.succeed(&t2[0]));
    let d = c.step();
    assert_eq!(attempts(&d), ["d#1"]);
    let committed = json!({"attempt": 2, "worker": "b"});
    assert_eq!(d[0].inputs, json!({"v": committed}));

    // A duplicate of the committed attempt, and the stale one again: both refused.
    assert!(!c.succeed_with(&t2[0], json!("a different value")));
    assert!(!c.succeed(&t1[0]));
    assert!(c.step().is_empty());

    let t = c.task(&run, "t", -1);
    assert_eq!(task_state(&t), pb::TaskState::Completed);
    assert_eq!(value_of(&t), committed);
    assert!(t.result.unwrap().uri.contains("attempt-2"));
    let key = super::super::tables::task_runs::key(&run, "t", -1);
    let completions = c
        .ops
        .iter()
        .filter(|op| match op {
            Op::Put { key: k, value } if *k == key => {
                let rec: super::super::TaskRunRecord = serde_json::from_slice(value).unwrap();
                rec.state == baton_common::state::TaskState::Completed
            }
            _ => false,
        })
        .count();
    assert_eq!(completions, 1, "exactly one Completed record");

    c.succeed(&d[0]);
    assert_eq!(run_state(&c.run(&run)), pb::RunState::Completed);
    assert_eq!(only(&c.assigns, "d").len(), 1);
}

#[test]
fn a_lost_workers_attempts_are_redispatched_only_after_its_lease() {
    let mut c = VirtualCluster::new();
    c.register(ONCE);
    c.connect("a", &[], 4, 0);
    let run = c.start("once", json!({}));
    let t1 = c.step();
    assert_eq!(names(&t1), ["t#1@a"]);
    c.connect("b", &[], 4, 0);

    c.advance(1_000);
    c.heartbeat("a");
    c.disconnect("a");
    let lost_at = c.now;
    assert!(
        c.advance(LEASE_MS - 1).is_empty(),
        "not before the lease lapses"
    );
    let t = c.task(&run, "t", -1);
    assert_eq!((t.attempt, t.worker.as_str()), (1, "a"));

    let t2 = c.advance(1);
    assert_eq!(names(&t2), ["t#2@b"]);
    assert_eq!(t2[0].at, lost_at + LEASE_MS);
    let t = c.task(&run, "t", -1);
    assert_eq!(t.attempts.len(), 2);
    assert!(t.attempts[0].error.contains("lost"), "{:?}", t.attempts[0]);
    assert_eq!(t.attempts[1].worker, "b");

    c.run_to_end();
    assert_eq!(run_state(&c.run(&run)), pb::RunState::Completed);
}

#[test]
fn a_restarted_engine_resumes_runs_adopts_running_attempts_and_redispatches_orphans() {
    let mut c = VirtualCluster::new();
    c.register(
        r#"
name: resumable
tasks:
  - name: gen
    builtin: range
    inputs: {n: 3}
  - name: sq
    builtin: echo
    inputs: {x: {result: gen}}
    map: [x]
  - name: total
    builtin: sum
    inputs: {xs: {result: sq}}
  - name: side
    builtin: sleep
    labels: [special]
"#,
    );
    c.behave("sq", |a| json!(a.inputs["x"].as_i64().unwrap().pow(2)));
    c.connect("w", &[], 4, 0);
    let run = c.start("resumable", json!({}));
    let gen = c.step();
    assert_eq!(names(&gen), ["gen#1@w"]);
    c.succeed(&gen[0]);
    let mut sq = c.step();
    sq.sort_by_key(|a| a.index());
    assert_eq!(names(&sq), ["sq[0]#1@w", "sq[1]#1@w", "sq[2]#1@w"]);
    c.connect("w2", &["special"], 4, 0);
    let side = c.step();
    assert_eq!(names(&side), ["side#1@w2"]);
    c.succeed(&sq[0]);
    c.succeed(&sq[1]);
    c.started(&sq[2]);
    assert!(c.step().is_empty());

    // The scheduler restarts.
    c.advance(100);
    c.restart();
    let before = c.assigns.len();
    assert_eq!(run_state(&c.run(&run)), pb::RunState::Running);
    assert_eq!(
        task_state(&c.task(&run, "gen", -1)),
        pb::TaskState::Completed
    );
    assert_eq!(task_state(&c.task(&run, "sq", 1)), pb::TaskState::Completed);
    assert!(c.step().is_empty());

    // A fresh worker able to run `side` must not get it while `w2` may still come back.
    c.connect("w3", &["special"], 4, 0);
    assert!(c.step().is_empty());

    // `w` comes back with its attempt: adopted, not assigned again.
    let welcome = c.reconnect("w", std::slice::from_ref(&sq[2].key));
    assert!(welcome.unknown.is_empty());
    assert!(c.step().is_empty());
    let sq2 = c.task(&run, "sq", 2);
    assert_eq!(task_state(&sq2), pb::TaskState::Running);
    assert_eq!((sq2.attempt, sq2.worker.as_str()), (1, "w"));

    // `w2` does not come back: after the grace period `side` runs again, as attempt 2.
    c.now = T0 + 100 + GRACE_MS - 1;
    assert!(c.step().is_empty());
    let side2 = c.advance(1);
    assert_eq!(names(&side2), ["side#2@w3"]);
    assert_eq!(side2[0].epoch, 2);

    // The adopted attempt's result is committed and the run finishes with the old results.
    assert!(c.succeed(&sq[2]));
    let total = c.step();
    assert_eq!(attempts(&total), ["total#1"]);
    assert_eq!(total[0].inputs, json!({"xs": [1, 4, 9]}));
    c.succeed(&total[0]);
    c.succeed(&side2[0]);
    assert_eq!(run_state(&c.run(&run)), pb::RunState::Completed);
    assert_eq!(value_of(&c.task(&run, "total", -1)), json!(14));

    let after = attempts(&c.assigns[before..]);
    assert_eq!(after, ["side#2", "total#1"], "nothing completed ran again");
}

#[test]
fn an_attempt_running_across_a_restart_still_times_out() {
    let mut c = VirtualCluster::new();
    c.register(
        r#"
name: slow-resume
tasks:
  - name: s
    builtin: sleep
    timeout_s: 2
"#,
    );
    c.connect("w", &[], 2, 0);
    let run = c.start("slow-resume", json!({}));
    let s1 = c.step();
    assert_eq!(names(&s1), ["s#1@w"]);
    c.started(&s1[0]);

    c.advance(500);
    c.restart();
    let welcome = c.reconnect("w", std::slice::from_ref(&s1[0].key));
    assert!(welcome.unknown.is_empty(), "the attempt is adopted");
    let session = c.workers["w"].session;

    // The deadline is still two seconds after the attempt started.
    c.now = T0 + 1_999;
    assert!(c.step().is_empty());
    assert!(c.cancels().is_empty());
    c.advance(1);
    let cancels = c.cancels();
    assert_eq!(cancels.len(), 1, "the adopted attempt times out");
    assert_eq!(cancels[0].key, s1[0].key);
    assert_eq!(
        (cancels[0].worker.as_str(), cancels[0].session),
        ("w", session)
    );
    let s = c.task(&run, "s", -1);
    assert_eq!(task_state(&s), pb::TaskState::Failed);
    assert!(s.error.contains("timed out"), "{}", s.error);
    assert!(!c.fail(&s1[0], "cancelled", false));
    assert_eq!(run_state(&c.run(&run)), pb::RunState::Failed);
}

#[test]
fn finished_runs_and_idempotency_keys_survive_a_restart() {
    let mut c = VirtualCluster::new();
    c.register(SQUARES);
    c.connect("w", &[], 8, 0);
    c.behave("gen", |_| json!([1, 2]));
    let mut req = new_run("squares", json!({}));
    req.idempotency_key = "nightly".into();
    let (run, created) = c.try_start(req.clone()).unwrap();
    assert!(created);
    c.run_to_end();
    assert_eq!(run_state(&c.run(&run)), pb::RunState::Completed);
    let before: Vec<(String, i64, i32, String)> = c
        .engine
        .task_runs(&run, true)
        .unwrap()
        .into_iter()
        .map(|t| (t.task, t.map_index, t.state, t.value))
        .collect();

    c.advance(1_000);
    c.restart();
    let r = c.run(&run);
    assert_eq!(run_state(&r), pb::RunState::Completed);
    assert_eq!((r.tasks_total, r.tasks_done), (4, 4));
    let after: Vec<(String, i64, i32, String)> = c
        .engine
        .task_runs(&run, true)
        .unwrap()
        .into_iter()
        .map(|t| (t.task, t.map_index, t.state, t.value))
        .collect();
    assert_eq!(after, before);

    let (again, created) = c.try_start(req).unwrap();
    assert_eq!((again.as_str(), created), (run.as_str(), false));
    c.reconnect("w", &[]);
    assert!(c.advance(60_000).is_empty(), "a finished run runs nothing");
}

#[test]
fn runs_archived_by_a_previous_leader_are_still_listed() {
    let mut c = VirtualCluster::new();
    c.register(SQUARES);
    c.connect("w", &[], 4, 0);
    let first = c.start("squares", json!(null));
    c.run_to_end();
    // The host archived it: its live records go, a summary stays.
    c.engine.archived(&first);
    c.drain();
    assert!(!c.store.contains_key(&format!("run/{first}")));
    c.now += 10;
    let second = c.start("squares", json!(null));
    c.restart();
    let listed: Vec<(String, pb::RunState)> = c
        .engine
        .list_runs(0)
        .iter()
        .map(|r| (r.id.clone(), run_state(r)))
        .collect();
    assert_eq!(
        listed,
        vec![
            (second.clone(), pb::RunState::Pending),
            (first.clone(), pb::RunState::Completed)
        ],
        "newest first, the archived one included"
    );
    assert_eq!(c.engine.list_runs(1).len(), 1);
}

#[test]
fn only_the_worker_given_an_attempt_may_report_on_it() {
    let mut c = VirtualCluster::new();
    c.register(
        r#"
name: one
tasks:
  - name: a
    builtin: echo
    inputs: {value: 1}
"#,
    );
    c.connect("given", &[], 1, 0);
    let run = c.start("one", json!({}));
    let a = c.step()[0].clone();
    assert_eq!(a.worker, "given");
    // Another worker (connected later, so not given the attempt) forges its result.
    c.connect("forger", &[], 1, 0);
    let mut forged = a.clone();
    forged.worker = "forger".into();
    forged.session = c.workers["forger"].session;
    assert!(
        !c.succeed_with(&forged, json!("forged")),
        "a result from a worker that was not given the attempt is not committed"
    );
    assert_eq!(
        task_state(&c.task(&run, "a", -1)),
        pb::TaskState::Assigned,
        "the attempt still runs on its worker"
    );
    // The forger's report released nothing: `given` still holds its one slot.
    assert!(c.step().is_empty());
    assert!(c.succeed(&a), "the real result is committed");
    let tr = c.task(&run, "a", -1);
    assert_eq!(task_state(&tr), pb::TaskState::Completed);
    assert_eq!(
        value_of(&tr),
        json!({"value": 1}),
        "the real value, not the forged one"
    );
}
