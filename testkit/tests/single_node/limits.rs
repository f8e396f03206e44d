//! Concurrency limits on task tags, on real processes: process tasks tagged `gpu-heavy`
//! record how many of them run at once (through marker files in a shared folder), and the
//! scheduler's own attempt times are checked too. Single node, a worker killed while its
//! tasks hold the slots, and the HA cluster with the leader killed mid-run.

use crate::support;
use baton_client::Client;
use baton_proto as pb;
use baton_testkit::baton_cli as baton;
use baton_testkit::ha::HaConfig;
use baton_testkit::{eventually, Cluster};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const TAG: &str = "gpu-heavy";

/// A folder the tasks share: `running/` holds one marker file per running task process;
/// `counts.log` gets one line per task start, `START_INDEX_ATTEMPT_PID_COUNT`.
fn shared_dir(root: &Path) -> anyhow::Result<PathBuf> {
    let d = root.join("shared");
    std::fs::create_dir_all(d.join("running"))?;
    Ok(d)
}

/// A flow of `n` mapped process tasks tagged [`TAG`]: each creates its marker file (with its
/// pid), counts the markers of live processes, logs the count, sleeps `sleep_s`, removes its
/// marker and prints its map index.
fn limited_flow(name: &str, n: usize, dir: &Path, sleep_s: f64) -> String {
    let d = dir.display();
    let script = format!(
        "d={d}; f=$d/running/$BATON_MAP_INDEX-$BATON_ATTEMPT; echo $$ > $f; \
         n=0; for m in $d/running/*; do kill -0 $(cat $m) 2>/dev/null && n=$((n+1)); done; \
         echo start $BATON_MAP_INDEX $BATON_ATTEMPT $$ $n >> $d/counts.log; \
         sleep {sleep_s}; rm -f $f; echo $BATON_MAP_INDEX"
    );
    format!(
        r#"
name: {name}
tasks:
  - name: items
    builtin: range
    inputs: {{n: {n}}}
  - name: work
    tags: [{TAG}]
    process:
      command: sh
      args: ["-c", "{script}"]
    inputs: {{i: {{result: items}}}}
    map: [i]
"#
    )
}

/// One start record of `counts.log`.
#[derive(Debug)]
struct Start {
    index: i64,
    attempt: u32,
    pid: i32,
    count: usize,
}

fn starts(dir: &Path) -> Vec<Start> {
    let text = std::fs::read_to_string(dir.join("counts.log")).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() != 5 || f[0] != "start" {
                return None;
            }
            Some(Start {
                index: f[1].parse().ok()?,
                attempt: f[2].parse().ok()?,
                pid: f[3].parse().ok()?,
                count: f[4].parse().ok()?,
            })
        })
        .collect()
}

fn alive(pid: i32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let zombie = status
        .lines()
        .any(|l| l.starts_with("State:") && l.contains('Z'));
    // SAFETY: probing a pid with signal 0 sends nothing.
    unsafe { libc::kill(pid, 0) == 0 && !zombie }
}

/// The most attempts of `task` whose [started, ended) intervals (the scheduler's record)
/// overlap at one instant. An attempt not ended counts as open.
fn max_overlap(trs: &[pb::TaskRun], task: &str) -> usize {
    let mut events: Vec<(i64, i32)> = Vec::new();
    for t in trs.iter().filter(|t| t.task == task) {
        for a in &t.attempts {
            let end = if a.ended_ms > 0 { a.ended_ms } else { i64::MAX };
            events.push((a.started_ms, 1));
            events.push((end, -1));
        }
    }
    // Ends before starts at the same millisecond: a slot freed and taken again.
    events.sort();
    let (mut now, mut max) = (0i32, 0i32);
    for (_, d) in events {
        now += d;
        max = max.max(now);
    }
    max as usize
}

fn attempts_table(trs: &[pb::TaskRun], task: &str) -> String {
    let mut out = String::new();
    for t in trs.iter().filter(|t| t.task == task) {
        for a in &t.attempts {
            out.push_str(&format!(
                "[{}] #{} {} {}..{} {}\n",
                t.map_index, a.number, a.worker, a.started_ms, a.ended_ms, a.error
            ));
        }
    }
    out
}

fn limit_of(limits: &[pb::ConcurrencyLimit], tag: &str) -> Option<pb::ConcurrencyLimit> {
    limits.iter().find(|l| l.tag == tag).cloned()
}

async fn wait_workers(c: &Client, n: usize) -> anyhow::Result<()> {
    eventually(Duration::from_secs(20), "workers to connect", || {
        let c = c.clone();
        async move { (c.workers().await.ok()?.len() >= n).then_some(()) }
    })
    .await
}

/// Checks every `work` task run completed with its map index as value.
fn assert_work_done(trs: &[pb::TaskRun], n: usize) {
    let work: Vec<&pb::TaskRun> = trs.iter().filter(|t| t.task == "work").collect();
    assert_eq!(work.len(), n, "work task runs");
    for t in work {
        assert_eq!(
            t.state,
            pb::TaskState::Completed as i32,
            "work[{}]: {}",
            t.map_index,
            t.error
        );
        assert_eq!(t.value, t.map_index.to_string(), "work[{}]", t.map_index);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_two_tagged_tasks_run_at_once() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(&[]).await?;
    cluster.add_worker("w1", "local", 8)?;
    cluster.add_worker("w2", "local", 8)?;
    let url = cluster.url();
    let c = Client::connect(&url).await?;
    wait_workers(&c, 2).await?;

    let (code, out, err) = baton(&url, &["limit", "set", TAG, "2"])?;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.trim(), "gpu-heavy: limit 2 (0 in use)");

    let n = 50;
    let dir = shared_dir(cluster.dir.path())?;
    let started = Instant::now();
    let run = c
        .run_source(
            limited_flow("limited", n, &dir, 0.25),
            BTreeMap::new(),
            String::new(),
        )
        .await?
        .run
        .expect("run");
    // While it runs, the limit is full, and the other task runs say why they wait.
    let (in_use, reason) = eventually(
        Duration::from_secs(20),
        "tagged tasks waiting for the limit",
        || {
            let c = c.clone();
            let id = run.id.clone();
            async move {
                let l = limit_of(&c.list_limits().await.ok()?, TAG)?;
                let trs = c.task_runs(&id, false).await.ok()?;
                let reason = trs
                    .iter()
                    .find(|t| t.waiting_reason.contains("concurrency limit"))?
                    .waiting_reason
                    .clone();
                Some((l.in_use, reason))
            }
        },
    )
    .await?;
    assert!(in_use <= 2, "in_use {in_use}");
    assert!(reason.contains("`gpu-heavy`"), "{reason}");

    let done = tokio::time::timeout(Duration::from_secs(60), c.wait(&run.id)).await??;
    cluster.assert_completed(&done);
    let took = started.elapsed();
    let trs = c.task_runs(&run.id, true).await?;
    assert_work_done(&trs, n);

    let log = starts(&dir);
    assert_eq!(log.len(), n, "one start per task: {log:?}");
    let max = log.iter().map(|s| s.count).max().unwrap_or(0);
    assert_eq!(max, 2, "most tagged processes seen at once: {log:?}");
    let overlap = max_overlap(&trs, "work");
    assert!(
        overlap <= 2,
        "{overlap} attempts overlapped:\n{}",
        attempts_table(&trs, "work")
    );
    // Both workers took part (the limit is cluster-wide, not per worker).
    let workers: std::collections::BTreeSet<&str> = trs
        .iter()
        .filter(|t| t.task == "work")
        .map(|t| t.worker.as_str())
        .collect();
    assert_eq!(workers.len(), 2, "{workers:?}");
    // 50 tasks of 0.25 s two at a time: at least 6.25 s.
    assert!(took >= Duration::from_millis(6_000), "took {took:?}");

    // No slot stays held.
    let (code, out, err) = baton(&url, &["limit", "ls", "--json"])?;
    assert_eq!(code, 0, "{out}{err}");
    let rows: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(
        rows,
        serde_json::json!([{"tag": "gpu-heavy", "limit": 2, "in_use": 0}])
    );
    let (code, out, _) = baton(&url, &["limit", "ls"])?;
    assert_eq!(code, 0);
    assert_eq!(out, "TAG        LIMIT  IN_USE\ngpu-heavy  2      0\n");
    let (code, _, _) = baton(&url, &["limit", "rm", TAG])?;
    assert_eq!(code, 0);
    let (code, _, err) = baton(&url, &["limit", "rm", TAG])?;
    assert_eq!(code, 1, "{err}");
    assert!(c.list_limits().await?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_of_a_killed_worker_come_back_after_its_lease() -> anyhow::Result<()> {
    // The tasks sleep 1.5 s, well under the lease (3 s): the processes the killed worker
    // leaves behind are gone before its slots are given to others.
    let mut cluster =
        Cluster::start(&["--worker-lease-ms", "3000", "--heartbeat-ms", "500"]).await?;
    cluster.add_worker("a", "local", 8)?;
    let url = cluster.url();
    let c = Client::connect(&url).await?;
    wait_workers(&c, 1).await?;
    c.set_limit(TAG, 2).await?;

    let n = 10;
    let dir = shared_dir(cluster.dir.path())?;
    let run = c
        .run_source(
            limited_flow("limited_kill", n, &dir, 1.5),
            BTreeMap::new(),
            String::new(),
        )
        .await?
        .run
        .expect("run");
    // Two run on `a` (the only worker), and their processes have started.
    let on_a: Vec<i64> = eventually(Duration::from_secs(20), "two tasks running on a", || {
        let c = c.clone();
        let id = run.id.clone();
        let dir = dir.clone();
        async move {
            let trs = c.task_runs(&id, false).await.ok()?;
            let running: Vec<i64> = trs
                .iter()
                .filter(|t| {
                    t.task == "work" && t.state == pb::TaskState::Running as i32 && t.worker == "a"
                })
                .map(|t| t.map_index)
                .collect();
            (running.len() == 2 && starts(&dir).len() == 2).then_some(running)
        }
    })
    .await?;
    let orphans: Vec<i32> = starts(&dir).iter().map(|s| s.pid).collect();
    let mut first: Vec<i64> = starts(&dir).iter().map(|s| s.index).collect();
    first.sort();
    let mut expect = on_a.clone();
    expect.sort();
    assert_eq!(
        first, expect,
        "the processes started are those of a's task runs"
    );
    assert!(starts(&dir).iter().all(|s| s.attempt == 1));
    let killed_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    cluster.workers[0].kill9();
    // The killed worker's processes die with it (its watchdogs kill their groups).
    eventually(
        Duration::from_secs(10),
        "the killed worker's processes to die",
        || {
            let orphans = orphans.clone();
            async move { orphans.iter().all(|&p| !alive(p)).then_some(()) }
        },
    )
    .await?;
    // Until its lease lapses the lost worker's attempts hold both slots.
    let l = limit_of(&c.list_limits().await?, TAG).expect("the limit");
    assert_eq!(l.in_use, 2, "{l:?}");
    cluster.add_worker("b", "local", 8)?;

    let done = tokio::time::timeout(Duration::from_secs(60), c.wait(&run.id)).await??;
    cluster.assert_completed(&done);
    let trs = c.task_runs(&run.id, true).await?;
    assert_work_done(&trs, n);
    for t in trs.iter().filter(|t| t.task == "work") {
        assert_eq!(
            t.worker, "b",
            "work[{}] committed on {}",
            t.map_index, t.worker
        );
        if on_a.contains(&t.map_index) {
            assert_eq!(t.attempts.len(), 2, "{t:?}");
            assert_eq!(t.attempts[0].worker, "a");
            assert!(
                t.attempts[0].error.contains("worker `a` was lost"),
                "{:?}",
                t.attempts[0]
            );
            // Its slot came back only when the lease lapsed: the retry started well after
            // the kill.
            assert!(t.attempts[1].started_ms >= t.attempts[0].ended_ms);
        } else {
            assert_eq!(t.attempts.len(), 1, "{t:?}");
        }
    }
    // Nothing ran on `b` before a's lease lapsed (the limit was full): the first attempt
    // on `b` started at least ~lease - heartbeat after the kill.
    let first_b = trs
        .iter()
        .flat_map(|t| &t.attempts)
        .filter(|a| a.worker == "b")
        .map(|a| a.started_ms)
        .min()
        .expect("attempts on b");
    let lost_at = trs
        .iter()
        .flat_map(|t| &t.attempts)
        .filter(|a| a.worker == "a")
        .map(|a| a.ended_ms)
        .max()
        .expect("attempts on a");
    assert!(
        first_b >= lost_at,
        "b started work at {first_b} before a's slots were freed at {lost_at}:\n{}",
        attempts_table(&trs, "work")
    );
    eprintln!("a's lease lapsed {} ms after the kill", lost_at - killed_ms);

    let log = starts(&dir);
    assert_eq!(log.len(), n + 2, "{log:?}");
    let max = log.iter().map(|s| s.count).max().unwrap_or(0);
    assert_eq!(max, 2, "most tagged processes seen at once: {log:?}");
    let overlap = max_overlap(&trs, "work");
    assert!(
        overlap <= 2,
        "{overlap} attempts overlapped:\n{}",
        attempts_table(&trs, "work")
    );
    let l = limit_of(&c.list_limits().await?, TAG).expect("the limit");
    assert_eq!(l.in_use, 0, "{l:?}");
    for pid in orphans {
        assert!(!alive(pid), "process {pid} of the killed worker still runs");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_keeps_the_limit() -> anyhow::Result<()> {
    let _one = support::serial().await;
    let mut c = support::cluster(
        HaConfig::default(),
        &[("w1", "local", 8), ("w2", "local", 8)],
    )
    .await?;
    support::with_leader(&c, Duration::from_secs(30), |client| async move {
        Ok(client.set_limit(TAG, 2).await?)
    })
    .await?;
    let (old, epoch) = c.wait_leader(Duration::from_secs(10), None).await?;
    let n = 20;
    let dir = shared_dir(c.dir.path())?;
    let run =
        support::start_run(&c, &limited_flow("limited_ha", n, &dir, 0.6), "limits-ha-1").await?;
    support::wait_completed(&c, &run, 4).await?;
    let killed_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    c.kill9_scheduler(old);
    let (new, new_epoch) = c.wait_leader(Duration::from_secs(30), Some(old)).await?;
    assert_ne!(new, old);
    assert!(new_epoch > epoch);
    // The new leader knows the limit, and never shows more than 2 in use.
    let done = loop {
        let client = support::leader_client(&c, Duration::from_secs(30)).await?;
        if let Ok(limits) = client.list_limits().await {
            let l = limit_of(&limits, TAG).expect("the limit survives the failover");
            assert_eq!(l.limit, 2);
            assert!(l.in_use <= 2, "{l:?}");
        }
        if let Ok(r) = client.get_run(&run).await {
            if baton_client::is_finished(&r) {
                break r;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        done.state,
        pb::RunState::Completed as i32,
        "{}\n{}",
        done.error,
        c.logs()
    );
    let trs = support::task_runs(&c, &run).await?;
    assert_work_done(&trs, n);
    // The kill was mid-run: the new leader dispatched part of the work.
    let after = trs
        .iter()
        .filter(|t| t.task == "work")
        .filter(|t| t.attempts.first().is_some_and(|a| a.started_ms > killed_ms))
        .count();
    eprintln!("{after} of {n} tagged task runs started after the leader was killed");
    assert!(
        after >= 4,
        "only {after} task runs started after the kill:\n{}",
        attempts_table(&trs, "work")
    );
    let log = starts(&dir);
    assert!(log.len() >= n, "{log:?}");
    let max = log.iter().map(|s| s.count).max().unwrap_or(0);
    assert_eq!(max, 2, "most tagged processes seen at once: {log:?}");
    let overlap = max_overlap(&trs, "work");
    assert!(
        overlap <= 2,
        "{overlap} attempts overlapped:\n{}",
        attempts_table(&trs, "work")
    );
    let client = support::leader_client(&c, Duration::from_secs(30)).await?;
    let l = limit_of(&client.list_limits().await?, TAG).expect("the limit");
    assert_eq!((l.limit, l.in_use), (2, 0), "{l:?}");
    Ok(())
}
