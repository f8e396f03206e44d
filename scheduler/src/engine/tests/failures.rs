//! Failures: propagation, retries, timeouts, cancellation, unrunnable tasks.

use super::*;

#[test]
fn a_failure_skips_downstream_tasks_and_fails_the_run_while_other_branches_complete() {
    let mut c = VirtualCluster::new();
    c.register(
        r#"
name: branches
tasks:
  - name: a
    builtin: fail
  - name: b
    builtin: echo
    inputs: {v: {result: a}}
  - name: c
    builtin: echo
    inputs: {v: {result: b}}
  - name: x
    builtin: echo
    inputs: {n: 1}
  - name: y
    builtin: echo
    inputs: {v: {result: x}}
"#,
    );
    c.connect("w", &[], 8, 0);
    let run = c.start("branches", json!({}));

    let first = c.step();
    assert_eq!(first.len(), 2, "{:?}", names(&first));
    assert!(c.fail(one(&first, "a"), "boom", false));
    assert!(c.step().is_empty());
    assert_eq!(task_state(&c.task(&run, "b", -1)), pb::TaskState::Skipped);
    assert_eq!(task_state(&c.task(&run, "c", -1)), pb::TaskState::Skipped);
    assert!(c.task(&run, "b", -1).error.contains("`a`"));
    assert_eq!(
        run_state(&c.run(&run)),
        pb::RunState::Running,
        "the independent branch is still going"
    );

    c.succeed(one(&first, "x"));
    let y = c.step();
    assert_eq!(names(&y), ["y#1@w"]);
    assert_eq!(y[0].inputs, json!({"v": {"n": 1}}));
    c.succeed(&y[0]);

    assert_eq!(task_state(&c.task(&run, "y", -1)), pb::TaskState::Completed);
    let a = c.task(&run, "a", -1);
    assert_eq!(task_state(&a), pb::TaskState::Failed);
    assert_eq!(a.error, "boom");
    let r = c.run(&run);
    assert_eq!(run_state(&r), pb::RunState::Failed);
    assert!(
        r.error.contains("`a`") && r.error.contains("boom"),
        "{}",
        r.error
    );
    assert!(c.assigns.iter().all(|a| a.task() != "b" && a.task() != "c"));
}

#[test]
fn retries_wait_with_backoff_and_non_retryable_failures_are_final() {
    let mut c = VirtualCluster::new();
    c.register(
        r#"
name: flaky
tasks:
  - name: f
    builtin: noop
    retries: {count: 2, delay_s: 1, backoff: 2}
  - name: g
    builtin: noop
    retries: {count: 3, delay_s: 1}
"#,
    );
    c.connect("w", &[], 8, 0);
    let run = c.start("flaky", json!({}));
    let first = c.step();
    assert_eq!(first.len(), 2);

    // A non-retryable failure is final whatever the policy.
    assert!(c.fail(one(&first, "g"), "bad config", false));
    let g = c.task(&run, "g", -1);
    assert_eq!(task_state(&g), pb::TaskState::Failed);
    assert_eq!(g.attempt, 1);

    // Attempt 2: one second after the first failure.
    c.advance(100);
    let t1 = c.now;
    assert!(c.fail(one(&first, "f"), "flaky 1", true));
    assert_eq!(task_state(&c.task(&run, "f", -1)), pb::TaskState::Retrying);
    assert!(c.advance(999).is_empty(), "not before the delay");
    let second = c.advance(1);
    assert_eq!(names(&second), ["f#2@w"]);
    assert_eq!(second[0].at, t1 + 1000);

    // Attempt 3: two seconds (1 s × 2) after the second failure.
    c.advance(50);
    let t2 = c.now;
    assert!(c.fail(&second[0], "flaky 2", true));
    assert!(c.advance(1999).is_empty(), "the delay doubles");
    let third = c.advance(1);
    assert_eq!(names(&third), ["f#3@w"]);
    assert_eq!(third[0].at, t2 + 2000);

    // Retries exhausted.
    assert!(c.fail(&third[0], "flaky 3", true));
    assert!(c.advance(3_600_000).is_empty());
    let f = c.task(&run, "f", -1);
    assert_eq!(task_state(&f), pb::TaskState::Failed);
    assert_eq!(f.attempt, 3);
    assert_eq!(f.error, "flaky 3");
    let numbers: Vec<u32> = f.attempts.iter().map(|a| a.number).collect();
    assert_eq!(numbers, [1, 2, 3]);
    let errors: Vec<&str> = f.attempts.iter().map(|a| a.error.as_str()).collect();
    assert_eq!(errors, ["flaky 1", "flaky 2", "flaky 3"]);

    assert_eq!(only(&c.assigns, "g").len(), 1, "g is never retried");
    assert_eq!(run_state(&c.run(&run)), pb::RunState::Failed);
}

#[test]
fn a_timed_out_attempt_is_cancelled_on_its_worker_and_retried_then_failed() {
    let mut c = VirtualCluster::new();
    c.register(
        r#"
name: slow
tasks:
  - name: s
    builtin: sleep
    timeout_s: 1
    retries: {count: 1}
"#,
    );
    c.connect("w", &[], 2, 0);
    let run = c.start("slow", json!({}));
    let first = c.step();
    assert_eq!(names(&first), ["s#1@w"]);
    assert_eq!(first[0].timeout_ms, 1000);
    c.started(&first[0]);

    assert!(c.advance(999).is_empty());
    assert!(c.cancels().is_empty(), "not timed out yet");

    // At +1000 ms: attempt 1 is cancelled on its worker and retried at once (no delay).
    let second = c.advance(1);
    let cancels = c.cancels();
    assert_eq!(cancels.len(), 1);
    assert_eq!(cancels[0].worker, "w");
    assert_eq!(cancels[0].session, first[0].session);
    assert_eq!(cancels[0].key, first[0].key);
    assert!(cancels[0].reason.contains("timed out"));
    assert_eq!(names(&second), ["s#2@w"]);
    let s = c.task(&run, "s", -1);
    assert!(
        s.attempts[0].error.contains("timed out"),
        "{:?}",
        s.attempts
    );

    // The worker stops attempt 1 and reports it: too late to count.
    assert!(!c.fail(&first[0], "cancelled", false));
    assert_eq!(task_state(&c.task(&run, "s", -1)), pb::TaskState::Assigned);

    // Attempt 2 times out too, with no retry left.
    assert!(c.advance(1000).is_empty());
    let cancels = c.cancels();
    assert_eq!(cancels.len(), 2);
    assert_eq!(cancels[1].key, second[0].key);
    let s = c.task(&run, "s", -1);
    assert_eq!(task_state(&s), pb::TaskState::Failed);
    assert!(s.error.contains("timed out"), "{}", s.error);
    let r = c.run(&run);
    assert_eq!(run_state(&r), pb::RunState::Failed);
    assert!(r.error.contains("timed out"), "{}", r.error);
}

#[test]
fn cancelling_a_run_cancels_running_attempts_and_assigns_nothing_more() {
    let mut c = VirtualCluster::new();
    c.register(
        r#"
name: long
tasks:
  - name: a
    builtin: sleep
    inputs: {x: [1, 2, 3]}
    map: [x]
  - name: b
    builtin: echo
    inputs: {xs: {result: a}}
"#,
    );
    c.connect("w", &[], 2, 0);
    let run = c.start("long", json!({}));
    let running = c.step();
    assert_eq!(running.len(), 2, "a third waits for a slot");

    c.advance(10);
    c.cancel(&run);
    let cancels = c.cancels();
    let mut cancelled: Vec<AttemptKey> = cancels.iter().map(|x| x.key.clone()).collect();
    cancelled.sort_by_key(|k| k.map_index);
    let mut expected: Vec<AttemptKey> = running.iter().map(|a| a.key.clone()).collect();
    expected.sort_by_key(|k| k.map_index);
    assert_eq!(cancelled, expected, "each running attempt is cancelled");
    assert!(cancels
        .iter()
        .all(|x| x.worker == "w" && x.reason == "run cancelled"));
    assert_eq!(run_state(&c.run(&run)), pb::RunState::Cancelled);

    // Cancelling again changes nothing.
    c.cancel(&run);
    assert_eq!(c.cancels().len(), 2);

    // The attempts end late: not committed; the freed slots take nothing.
    assert!(!c.succeed(&running[0]));
    assert!(c.step().is_empty());
    assert!(!c.fail(&running[1], "cancelled", false));
    assert!(c.advance(3_600_000).is_empty());
    assert_eq!(c.assigns.len(), 2);

    for t in c.engine.task_runs(&run, false).unwrap() {
        assert_eq!(task_state(&t), pb::TaskState::Cancelled, "{}", t.task);
    }
    assert_eq!(run_state(&c.run(&run)), pb::RunState::Cancelled);
    let w = c.engine.workers();
    assert_eq!(
        w[0].free.as_ref().unwrap().slots,
        2,
        "the slots are released"
    );
}

#[test]
fn a_task_no_worker_can_run_waits_with_a_reason_then_fails() {
    let mut c = VirtualCluster::new();
    c.register(
        r#"
name: accel
tasks:
  - name: prep1
    builtin: noop
  - name: prep2
    builtin: noop
  - name: fit
    builtin: noop
    labels: [gpu]
  - name: convert
    builtin: noop
    labels: [tpu]
"#,
    );
    c.connect("cpu", &[], 1, 0);
    let run = c.start("accel", json!({}));
    let first = c.step();
    assert_eq!(
        names(&first),
        ["prep1#1@cpu"],
        "prep2 waits for the busy worker"
    );

    let r = c.run(&run);
    assert!(
        r.waiting_reason.contains("gpu"),
        "the run says why it waits: {:?}",
        r.waiting_reason
    );
    let fit = c.task(&run, "fit", -1);
    assert_eq!(task_state(&fit), pb::TaskState::Ready);
    assert!(
        fit.waiting_reason.contains("gpu"),
        "{:?}",
        fit.waiting_reason
    );
    assert!(c.task(&run, "convert", -1).waiting_reason.contains("tpu"));
    assert_eq!(c.task(&run, "prep2", -1).waiting_reason, "");

    // A worker that can run `convert` comes later: it gets it.
    c.advance(5_000);
    c.connect("tpu-box", &["tpu"], 2, 0);
    let new = c.step();
    let convert = one(&new, "convert").clone();
    assert_eq!(convert.worker, "tpu-box");
    assert_eq!(c.task(&run, "convert", -1).waiting_reason, "");
    c.succeed(&convert);

    // `fit` fails once it has waited the unrunnable timeout.
    c.now = T0 + UNRUNNABLE_MS - 1;
    c.step();
    assert_eq!(task_state(&c.task(&run, "fit", -1)), pb::TaskState::Ready);
    c.advance(1);
    let fit = c.task(&run, "fit", -1);
    assert_eq!(task_state(&fit), pb::TaskState::Failed);
    assert!(
        fit.error.contains("unrunnable") && fit.error.contains("gpu"),
        "{}",
        fit.error
    );

    c.run_to_end();
    let r = c.run(&run);
    assert_eq!(run_state(&r), pb::RunState::Failed);
    assert!(
        r.error.contains("`fit`") && r.error.contains("gpu"),
        "{}",
        r.error
    );
    assert!(c.assigns.iter().all(|a| a.task() != "fit"));
    assert_eq!(
        task_state(&c.task(&run, "convert", -1)),
        pb::TaskState::Completed
    );
}

#[test]
fn the_unrunnable_timeout_counts_from_when_each_task_became_ready() {
    let mut c = VirtualCluster::new();
    c.register(
        r#"
name: late-gpu
tasks:
  - name: early
    builtin: noop
    labels: [gpu]
  - name: pre
    builtin: noop
  - name: late
    builtin: noop
    labels: [gpu]
    after: [pre]
"#,
    );
    c.connect("cpu", &[], 1, 0);
    let run = c.start("late-gpu", json!({}));
    let pre = c.step();
    assert_eq!(names(&pre), ["pre#1@cpu"]);
    c.advance(15_000);
    c.succeed(&pre[0]);
    c.step();
    assert_eq!(task_state(&c.task(&run, "late", -1)), pb::TaskState::Ready);

    // `early` has waited long enough; `late` (ready 15 s later) has not.
    c.now = T0 + UNRUNNABLE_MS;
    c.step();
    assert_eq!(
        task_state(&c.task(&run, "early", -1)),
        pb::TaskState::Failed
    );
    assert_eq!(task_state(&c.task(&run, "late", -1)), pb::TaskState::Ready);

    c.now = T0 + 15_000 + UNRUNNABLE_MS - 1;
    c.step();
    assert_eq!(task_state(&c.task(&run, "late", -1)), pb::TaskState::Ready);
    c.advance(1);
    let late = c.task(&run, "late", -1);
    assert_eq!(task_state(&late), pb::TaskState::Failed);
    assert!(late.error.contains("gpu"), "{}", late.error);
    assert_eq!(run_state(&c.run(&run)), pb::RunState::Failed);
}

#[test]
fn retry_jitter_spreads_delays_within_the_bound_and_is_stable() {
    let mut c = VirtualCluster::new();
    c.register(
        r#"
name: herd
tasks:
  - name: items
    builtin: range
    inputs: {n: 20}
  - name: f
    builtin: noop
    inputs: {value: {result: items}}
    map: [value]
    retries: {count: 1, delay_s: 1, jitter: 0.5}
"#,
    );
    c.connect("w", &[], 64, 0);
    let run = c.start("herd", json!({}));
    let items = c.step();
    c.succeed(one(&items, "items"));
    let first = c.step();
    assert_eq!(first.len(), 20);
    let failed_at = c.now;
    for a in &first {
        assert!(c.fail(a, "flaky", true));
    }
    // Every retry comes between 1 s and 1.5 s after the failure, and not all at once.
    let mut at = Vec::new();
    for _ in 0..1500 {
        for a in c.advance(1) {
            at.push(a.at - failed_at);
        }
    }
    assert_eq!(at.len(), 20, "every task run retried");
    assert!(at.iter().all(|d| (1000..=1500).contains(d)), "{at:?}");
    let distinct: std::collections::BTreeSet<_> = at.iter().collect();
    assert!(distinct.len() >= 10, "jitter spreads retries: {at:?}");
    // The same task run and attempt always get the same delay.
    let policy = baton_common::flow::RetryPolicy {
        count: 1,
        delay_ms: 1000,
        backoff: 1.0,
        jitter: 0.5,
    };
    assert_eq!(policy.delay_before(2, 42), policy.delay_before(2, 42));
    assert_ne!(policy.delay_before(2, 42), policy.delay_before(2, 43));
    let _ = run;
}
