//! Finished runs leave memory once archived, and nothing that still names them (timers,
//! ready queues, workers' attempts) can reach a run that came after them.

use super::*;

/// A task that fails once, retried after a long delay.
const SLOW_RETRY: &str = r#"
name: slow_retry
tasks:
  - name: a
    builtin: echo
    retries: {count: 3, delay_s: 60}
"#;

/// One task.
const ONE_TASK: &str = r#"
name: one
tasks:
  - name: a
    builtin: echo
"#;

#[test]
fn an_archived_run_leaves_memory_and_is_still_listed() {
    let mut c = VirtualCluster::new();
    c.register(SQUARES);
    c.connect("w", &[], 4, 0);
    for round in 0..50 {
        let id = c.start("squares", json!(null));
        c.run_to_end();
        assert_eq!(run_state(&c.run(&id)), pb::RunState::Completed);
        c.engine.archived(&id);
        c.drain();
        assert_eq!(c.engine.runs_in_memory(), 0, "round {round}");
        assert!(
            matches!(c.engine.get_run(&id), Err(EngineError::NotFound(_))),
            "an archived run is read from the archive, not from memory"
        );
        c.now += 1;
    }
    assert_eq!(c.engine.run_slots(), 1, "one slot, reused by every run");
    let listed = c.engine.list_runs(0);
    assert_eq!(
        listed.len(),
        50,
        "summaries of archived runs stay for listing"
    );
    assert!(listed
        .iter()
        .all(|r| run_state(r) == pb::RunState::Completed && r.tasks_done == r.tasks_total));
}

#[test]
fn a_cancelled_run_stays_until_its_worker_gives_back_the_attempt() {
    let mut c = VirtualCluster::new();
    c.register(ONE_TASK);
    c.connect("w", &[], 1, 0);
    let id = c.start("one", json!(null));
    let a = c.step().pop().expect("an assignment");
    c.cancel(&id);
    c.engine.archived(&id);
    c.drain();
    // The worker still runs the cancelled attempt: its slot and the run are held.
    assert_eq!(c.engine.runs_in_memory(), 1);
    let next = c.start("one", json!(null));
    assert!(c.step().is_empty(), "the only slot is still taken");
    // The worker reports the cancelled attempt's end: the slot is free, the run leaves.
    assert!(!c.fail(&a, "cancelled", false));
    assert_eq!(c.engine.runs_in_memory(), 1, "only the new run is left");
    let b = c.step().pop().expect("the new run is dispatched");
    assert_eq!(b.key.run, next);
}

#[test]
fn a_stale_timer_never_touches_the_run_that_took_its_slot() {
    let mut c = VirtualCluster::new();
    c.register(SLOW_RETRY);
    c.connect("w", &[], 1, 0);
    let first = c.start("slow_retry", json!(null));
    let a = c.step().pop().expect("an assignment");
    // Fails retryably: a retry timer is set 60 s ahead, then the run is cancelled.
    c.fail(&a, "flaky", true);
    c.cancel(&first);
    c.engine.archived(&first);
    c.drain();
    assert_eq!(c.engine.runs_in_memory(), 0);
    // A new run takes the slot; its task fails once too, so it waits in Retrying.
    let second = c.start("slow_retry", json!(null));
    assert_eq!(c.engine.run_slots(), 1);
    let b = c.step().pop().expect("an assignment");
    assert_eq!(b.key.run, second);
    c.now += 30_000;
    c.fail(&b, "flaky", true);
    // The first run's timer fires: it must not start the second run's retry early.
    assert!(c.advance(30_000).is_empty(), "the stale timer did nothing");
    assert_eq!(c.task(&second, "a", -1).attempt, 1);
    // The second run's own timer fires at its time.
    let retry = c.advance(30_000).pop().expect("the second run's retry");
    assert_eq!(
        (retry.key.run.as_str(), retry.attempt()),
        (second.as_str(), 2)
    );
}

#[test]
fn ready_task_runs_of_a_run_that_left_are_never_dispatched() {
    let mut c = VirtualCluster::new();
    c.register(SQUARES);
    // No worker: the mapped task runs stay queued; the run is cancelled and archived.
    let first = c.start("squares", json!(null));
    c.cancel(&first);
    c.engine.archived(&first);
    c.drain();
    let second = c.start("squares", json!(null));
    c.connect("w", &[], 4, 0);
    let all = c.run_to_end();
    assert!(all.iter().all(|a| a.key.run == second), "{all:?}");
    assert_eq!(run_state(&c.run(&second)), pb::RunState::Completed);
}

#[test]
fn a_sealed_run_leaves_memory_at_once_and_its_archive_holds_every_task_run() {
    let mut c = VirtualCluster::new();
    c.register(SQUARES);
    c.connect("w", &[], 4, 0);
    let id = c.start("squares", json!(null));
    assert!(c.engine.seal(&id).is_none(), "a live run is not sealed");
    c.run_to_end();
    let rows = c.engine.task_runs(&id, true).expect("the run");
    let bytes = c.engine.seal(&id).expect("a finished run is sealed");
    assert_eq!(c.engine.runs_in_memory(), 0);
    assert!(c.engine.is_sealed(&id));
    assert!(matches!(
        c.engine.get_run(&id),
        Err(EngineError::NotFound(_))
    ));
    assert_eq!(c.engine.list_runs(0).len(), 1, "still listed");
    let archive = <pb::RunArchive as prost::Message>::decode(bytes.as_slice()).expect("an archive");
    let run = archive.run.expect("the run");
    assert_eq!(
        (run.id.as_str(), run_state(&run)),
        (id.as_str(), pb::RunState::Completed)
    );
    assert_eq!(archive.task_runs, rows, "every task run, with its value");
    // Its live records stay in the state store until the archive is written.
    assert!(c.store.contains_key(&format!("run/{id}")));
    c.engine.archived(&id);
    c.drain();
    assert!(!c.engine.is_sealed(&id));
    let left: Vec<&String> = c.store.keys().filter(|k| k.contains(&id)).collect();
    assert_eq!(left.len(), 1, "only the summary for listing: {left:?}");
    assert!(left[0].starts_with("done/"));
}

#[test]
fn a_run_whose_attempt_a_worker_still_holds_is_not_sealed() {
    let mut c = VirtualCluster::new();
    c.register(ONE_TASK);
    c.connect("w", &[], 1, 0);
    let id = c.start("one", json!(null));
    let a = c.step().pop().expect("an assignment");
    c.cancel(&id);
    assert!(c.engine.seal(&id).is_none());
    assert_eq!(c.engine.runs_in_memory(), 1);
    c.fail(&a, "cancelled", false);
    assert!(
        c.engine.seal(&id).is_some(),
        "sealed once the worker gave it back"
    );
    assert_eq!(c.engine.runs_in_memory(), 0);
}

#[test]
fn a_sealed_run_whose_archive_was_given_up_is_recovered_by_the_next_leader() {
    let mut c = VirtualCluster::new();
    c.register(ONE_TASK);
    c.connect("w", &[], 1, 0);
    let id = c.start("one", json!(null));
    c.run_to_end();
    c.engine.seal(&id).expect("sealed");
    c.engine.abandon_sealed(&id);
    c.drain();
    assert!(!c.engine.is_sealed(&id));
    c.restart();
    assert_eq!(run_state(&c.run(&id)), pb::RunState::Completed);
}

#[test]
fn a_task_run_stays_small() {
    // A million-task fan-out holds a million of these: every field is paid for each of them
    // (sub-flow links, for one, live in the engine's `Children`, not in every task run; what
    // a task run holds once it has run is allocated then).
    let size = std::mem::size_of::<crate::engine::model::TaskRun>();
    assert!(size <= 48, "a TaskRun is {size} bytes");
}

#[test]
fn queued_task_runs_are_compact_until_they_run() {
    let mut c = VirtualCluster::new();
    c.register(
        r#"
name: wide
tasks:
  - name: items
    builtin: range
    inputs: {n: 500}
  - name: work
    builtin: echo
    inputs: {x: {result: items}}
    map: [x]
"#,
    );
    c.connect("w", &[], 4, 0);
    let run = c.start("wide", json!({}));
    // `items` runs; its 500 elements are then queued, four of them running.
    let items = c.step();
    c.succeed(&items[0]);
    let running = c.step();
    assert_eq!(running.len(), 4);
    let key = c.engine.runs.key_of(&run).expect("a live run");
    let work = &c.engine.runs[key].nodes[1];
    assert_eq!(work.runs.len(), 500);
    let compact = work.runs.iter().filter(|tr| tr.is_compact()).count();
    assert_eq!(compact, 496, "only the four dispatched task runs hold more");
    // The rows still read right: ready, with when they became ready.
    let rows = c.engine.task_runs(&run, false).expect("rows");
    let queued = rows
        .iter()
        .find(|r| r.task == "work" && r.map_index == 499)
        .expect("a row");
    assert_eq!(queued.state, pb::TaskState::Ready as i32);
    assert!(queued.ready_us > 0);
    assert_eq!(queued.attempt, 0);
    assert!(queued.attempts.is_empty());
    c.run_to_end();
    assert_eq!(run_state(&c.run(&run)), pb::RunState::Completed);
}

#[test]
fn a_task_run_that_ran_holds_little_more() {
    let live = std::mem::size_of::<crate::engine::model::Live>();
    // 40 + 144 bytes (and the allocator's header) where a task run was 176 inline before.
    assert!(live <= 144, "a task run's Live part is {live} bytes");
}
