//! Worker faults in a cluster: a worker killed mid-task, a worker paused (SIGSTOP) past its
//! lease whose late result must be refused, and a forced duplicate dispatch; each task run
//! must still commit exactly one result.

use crate::support::*;
use baton_common::result_store::ResultStore;
use baton_proto as pb;
use baton_testkit::eventually;
use baton_testkit::ha::{HaCluster, HaConfig};
use std::time::{Duration, Instant};

/// One task of `ms` that returns 42.
fn one_slow_task(name: &str, ms: u64) -> String {
    format!(
        r#"
name: {name}
labels: [local]
tasks:
  - name: slow
    builtin: sleep
    inputs: {{ms: {ms}, value: 42}}
"#
    )
}

/// The task run `task[index]` of `trs`.
fn find<'a>(trs: &'a [pb::TaskRun], task: &str, index: i64) -> &'a pb::TaskRun {
    trs.iter()
        .find(|t| t.task == task && t.map_index == index)
        .unwrap_or_else(|| panic!("no task run {task}[{index}] in {trs:#?}"))
}

/// (8) kill -9 of a worker in the middle of its tasks: once its lease lapses they run
/// again on the other worker as new attempts, and each commits once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_mid_task_its_tasks_rerun_elsewhere_once() -> anyhow::Result<()> {
    let _one = serial().await;
    let began = Instant::now();
    let mut c = HaCluster::start(HaConfig::default()).await?;
    let w1 = c.add_worker("w1", "local", 2)?;
    c.add_worker("w2", "local", 2)?;
    wait_workers(&c, 2).await?;
    let n = 4;
    let (run, ledger, poller) =
        watched_run(&c, &fan_out("kill_worker", n, 3_000), "kill-worker-1").await?;
    let busy = eventually(Duration::from_secs(30), "four running tasks", || async {
        let busy = busy_task_runs(&c, &run).await?;
        let running = busy
            .iter()
            .filter(|t| t.task == "work" && t.state == pb::TaskState::Running as i32)
            .count();
        (running == n).then_some(busy)
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", c.logs()))?;
    let on_w1: Vec<&pb::TaskRun> = busy.iter().filter(|t| t.worker == "w1").collect();
    assert!(
        !on_w1.is_empty(),
        "w1 runs nothing; running: {:?}",
        busy.iter()
            .map(|t| (t.map_index, t.worker.as_str()))
            .collect::<Vec<_>>()
    );
    c.workers[w1].kill9();
    let killed = Instant::now();

    let trs = check_fan_out(&c, &ledger, &run, n).await?;
    eprintln!("run over {:?} after the kill", killed.elapsed());
    for b in on_w1 {
        let t = find(&trs, &b.task, b.map_index);
        assert!(
            t.attempt >= 2 && t.attempt > b.attempt,
            "{}[{}] ran on the killed worker (attempt {}) and committed attempt {}: {:?}",
            t.task,
            t.map_index,
            b.attempt,
            t.attempt,
            t.attempts
        );
        assert_eq!(
            t.worker, "w2",
            "{}[{}] committed on {}: {:?}",
            t.task, t.map_index, t.worker, t.attempts
        );
        let first = t
            .attempts
            .iter()
            .find(|a| a.number == b.attempt)
            .expect("the killed attempt is listed");
        assert_eq!(first.worker, "w1");
        assert_ne!(first.worker, t.worker);
        let last = t.attempts.last().expect("attempts");
        assert_eq!(
            (last.number, last.worker.as_str()),
            (t.attempt, t.worker.as_str())
        );
    }
    // Nothing that ran on w2 only was run twice.
    for t in trs.iter().filter(|t| t.task == "work") {
        if !busy
            .iter()
            .any(|b| b.map_index == t.map_index && b.worker == "w1")
        {
            assert_eq!(
                t.attempt, 1,
                "{}[{}]: {:?}",
                t.task, t.map_index, t.attempts
            );
        }
    }
    poller.abort();
    eprintln!("took {:?}", began.elapsed());
    Ok(())
}

/// (9) A worker stopped (SIGSTOP) while running a task, past its lease: the task runs again
/// on the other worker and commits; the stopped worker, resumed, finishes and reports its
/// now stale attempt, which must be refused: the committed pointer never changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_paused_past_its_lease_its_late_result_is_refused() -> anyhow::Result<()> {
    let _one = serial().await;
    let began = Instant::now();
    let c = cluster(
        HaConfig::default(),
        &[("w1", "local", 1), ("w2", "local", 1)],
    )
    .await?;
    let (run, ledger, poller) =
        watched_run(&c, &one_slow_task("pause_worker", 3_000), "pause-worker-1").await?;
    let first = eventually(Duration::from_secs(30), "the task to run", || async {
        let busy = busy_task_runs(&c, &run).await?;
        busy.into_iter()
            .find(|t| t.state == pb::TaskState::Running as i32)
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", c.logs()))?;
    let stopped = match first.worker.as_str() {
        "w1" => 0,
        "w2" => 1,
        other => panic!("the task runs on unknown worker {other:?}"),
    };
    let other = if stopped == 0 { "w2" } else { "w1" };
    c.workers[stopped].pause();
    let paused = Instant::now();

    // Kept stopped until the retry on the other worker has committed.
    let committed = eventually(
        Duration::from_secs(60),
        "the retry to commit on the other worker",
        || async {
            let trs = task_runs(&c, &run).await.ok()?;
            let t = trs.into_iter().find(|t| t.task == "slow")?;
            (t.state == pb::TaskState::Completed as i32).then_some(t)
        },
    )
    .await;
    let committed = match committed {
        Ok(t) => t,
        Err(e) => {
            c.workers[stopped].resume();
            anyhow::bail!("{e}\n{}", c.logs());
        }
    };
    let paused_for = paused.elapsed();
    c.workers[stopped].resume();
    eprintln!(
        "{} was stopped for {paused_for:?}; attempt {} committed on {}",
        first.worker, committed.attempt, committed.worker
    );
    assert!(
        committed.attempt > first.attempt,
        "the stopped attempt {} was committed: {committed:?}",
        first.attempt
    );
    assert_eq!(committed.worker, other, "{committed:?}");
    assert_eq!(committed.value, "42");
    let uri = committed.result.as_ref().expect("a result").uri.clone();

    // The resumed worker finishes its stale attempt and offers the result: refused.
    assert_eq!(
        result_location(&c, &run, "slow", committed.attempt)?.as_deref(),
        Some(uri.as_str())
    );
    let stale = first.attempt;
    let lease = Duration::from_millis(c.cfg.worker_leader_lease_ms);
    let late = eventually(
        Duration::from_secs(15),
        "the stopped worker's late result",
        || async { result_location(&c, &run, "slow", stale).ok().flatten() },
    )
    .await;
    let stale_uri = format!("attempt {stale} of slow");
    match late {
        Ok(at) => eprintln!("the late result of {stale_uri} was uploaded at {at}"),
        // Stopped past its own leader lease, the worker rightly drops the attempt.
        Err(_) if paused_for + Duration::from_secs(2) >= lease => {
            eprintln!("no late result: stopped for {paused_for:?}, lease {lease:?}")
        }
        Err(e) => anyhow::bail!("{e}: {stale_uri}\n{}", c.logs()),
    }
    let settle = Instant::now() + Duration::from_secs(4);
    while Instant::now() < settle {
        let trs = task_runs(&c, &run).await?;
        ledger.record(&trs);
        let t = find(&trs, "slow", -1);
        assert_eq!(t.state, pb::TaskState::Completed as i32, "{t:?}");
        assert_eq!(
            t.result.as_ref().map(|r| r.uri.as_str()),
            Some(uri.as_str()),
            "the committed pointer changed after the stopped worker came back:\n{}",
            c.logs()
        );
        assert_eq!((t.attempt, t.value.as_str()), (committed.attempt, "42"));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let trs = check_run(&c, &ledger, &run, 1, Duration::from_secs(30)).await?;
    assert_eq!(find(&trs, "slow", -1).value, "42");
    poller.abort();
    eprintln!("took {:?}", began.elapsed());
    Ok(())
}

/// (10) Forced duplicate dispatch (`BATON_FAULT_DUPLICATE_DISPATCH`): the task's first
/// attempt goes to two workers as attempts 1 and 2; both upload a result, exactly one is
/// committed, and the downstream task sees that one value, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_dispatch_commits_one_result() -> anyhow::Result<()> {
    let _one = serial().await;
    let began = Instant::now();
    let c = cluster(
        HaConfig {
            extra_env: vec![(
                "BATON_FAULT_DUPLICATE_DISPATCH".to_string(),
                "dup".to_string(),
            )],
            ..HaConfig::default()
        },
        &[("w1", "local", 2), ("w2", "local", 2)],
    )
    .await?;
    // `fail` with `succeed_from_attempt: 1` returns its attempt number, so each attempt's
    // result says who produced it.
    let source = r#"
name: dup_dispatch
labels: [local]
tasks:
  - name: dup
    builtin: fail
    inputs: {succeed_from_attempt: 1}
  - name: copy
    builtin: echo
    inputs: {value: {result: dup}}
"#;
    let (run, ledger, poller) = watched_run(&c, source, "dup-dispatch-1").await?;
    let trs = check_run(&c, &ledger, &run, 2, Duration::from_secs(60)).await?;
    let dup = find(&trs, "dup", -1);
    let copy = find(&trs, "copy", -1);
    assert_eq!(
        dup.attempts.len(),
        2,
        "dispatched twice: {:?}\n{}",
        dup.attempts,
        c.logs()
    );
    assert_ne!(
        dup.attempts[0].worker, dup.attempts[1].worker,
        "to two workers: {:?}",
        dup.attempts
    );
    let uri = dup.result.as_ref().expect("a result").uri.clone();
    let value: u32 = dup.value.parse()?;
    assert_eq!(value, dup.attempt, "the committed value is its attempt's");
    assert_eq!(
        result_location(&c, &run, "dup", value)?.as_deref(),
        Some(uri.as_str()),
        "the committed location is its attempt's"
    );
    let other_attempt = if value == 1 { 2 } else { 1 };
    let store = c.s3.store("cluster").await?;
    let other = eventually(
        Duration::from_secs(15),
        "the other attempt's result object",
        || async {
            result_location(&c, &run, "dup", other_attempt)
                .ok()
                .flatten()
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", c.logs()))?;
    assert!(store.exists(&uri).await?, "{uri}");
    let other_value: u32 = serde_json::from_slice(&store.get(&other).await?)?;
    assert_eq!(other_value, other_attempt, "{other} holds its own attempt");

    // The downstream task ran once, on the committed value.
    assert_eq!(copy.value, dup.value, "{copy:?}");
    assert_eq!(
        (copy.attempt, copy.attempts.len()),
        (1, 1),
        "{:?}",
        copy.attempts
    );
    // The pointer stays put while both results have been offered.
    let settle = Instant::now() + Duration::from_secs(3);
    while Instant::now() < settle {
        ledger.record(&task_runs(&c, &run).await?);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let v = ledger.violations();
    assert!(v.is_empty(), "{v:#?}");
    c.assert_epochs_monotonic();
    let logged = std::fs::read_dir(c.dir.path())?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("scheduler-"))
        .any(|e| {
            std::fs::read_to_string(e.path())
                .is_ok_and(|l| l.contains("fault injection: duplicate dispatch"))
        });
    assert!(logged, "no duplicate dispatch logged:\n{}", c.logs());
    poller.abort();
    eprintln!("took {:?}", began.elapsed());
    Ok(())
}
