//! Faults of the servers the schedulers depend on: etcd's own raft leader killed, every etcd
//! member restarted in turn, and the S3 server restarted, each in the middle of a run.

use crate::support::*;
use baton_testkit::ha::HaConfig;
use std::time::{Duration, Instant};

/// (6) kill -9 of the etcd member that leads etcd's raft group: etcd elects another within
/// about a second, well inside a 10 s leadership lease, so the scheduler keeps its leader
/// and epoch, and the run neither hangs nor loses anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_leader_killed_no_scheduler_failover_and_no_hang() -> anyhow::Result<()> {
    let _one = serial().await;
    let began = Instant::now();
    let mut c = cluster(
        HaConfig {
            leader_lease_ms: 10_000,
            ..HaConfig::default()
        },
        &[("w1", "local", 4), ("w2", "local", 4)],
    )
    .await?;
    let (leader, epoch) = c.wait_leader(Duration::from_secs(10), None).await?;
    let n = 80;
    let (run, ledger, poller) =
        watched_run(&c, &fan_out("etcd_leader", n, 300), "etcd-leader-1").await?;
    wait_completed(&c, &run, 10).await?;

    let victim = baton_testkit::eventually(Duration::from_secs(10), "an etcd leader", || {
        c.etcd.leader_index()
    })
    .await?;
    let killed = Instant::now();
    c.etcd.kill9(victim);
    let next = baton_testkit::eventually(Duration::from_secs(15), "a new etcd leader", || async {
        c.etcd.leader_index().await.filter(|l| *l != victim)
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", c.logs()))?;
    eprintln!(
        "etcd member {victim} (raft leader) killed; member {next} leads etcd {:?} later",
        killed.elapsed()
    );

    // No hang: the rest of the run (about 3 s of work on 8 slots) finishes promptly.
    let done = wait_run(&c, &run, Duration::from_secs(60)).await?;
    eprintln!("run over {:?} after the kill", killed.elapsed());
    assert_eq!(
        done.state,
        baton_proto::RunState::Completed as i32,
        "{}\n{}",
        done.error,
        c.logs()
    );
    check_fan_out(&c, &ledger, &run, n).await?;
    assert_eq!(
        c.leader().await,
        Some((leader, epoch)),
        "the scheduler failed over:\n{}",
        c.logs()
    );
    let epochs = c.epochs.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert!(
        epochs.iter().all(|(_, e)| *e == epoch),
        "one epoch all along, saw {epochs:?}"
    );
    poller.abort();
    eprintln!("took {:?}", began.elapsed());
    Ok(())
}

/// (7) Every etcd member killed and restarted in turn while a run goes on: the cluster
/// always keeps a quorum, the schedulers ride it out (failing over if they must), and
/// nothing is lost or committed twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_of_every_etcd_member_loses_nothing() -> anyhow::Result<()> {
    let _one = serial().await;
    let began = Instant::now();
    let mut c = cluster(
        HaConfig::default(),
        &[("w1", "local", 4), ("w2", "local", 4)],
    )
    .await?;
    let n = 240;
    let (run, ledger, poller) =
        watched_run(&c, &fan_out("etcd_rolling", n, 400), "etcd-rolling-1").await?;
    wait_completed(&c, &run, 10).await?;
    for i in 0..c.etcd.len() {
        let t = Instant::now();
        c.etcd.kill9(i);
        tokio::time::sleep(Duration::from_secs(1)).await;
        c.etcd
            .restart(i)
            .await
            .map_err(|e| anyhow::anyhow!("restarting etcd member {i}: {e}\n{}", c.logs()))?;
        eprintln!(
            "etcd member {i} restarted, healthy {:?} after its kill",
            t.elapsed()
        );
    }
    let done = wait_run(&c, &run, Duration::from_secs(120)).await?;
    eprintln!("run over {:?} after the start", began.elapsed());
    assert_eq!(
        done.state,
        baton_proto::RunState::Completed as i32,
        "{}\n{}",
        done.error,
        c.logs()
    );
    let trs = check_fan_out(&c, &ledger, &run, n).await?;
    let committed = trs
        .iter()
        .filter(|t| t.task == "work" && t.result.is_some())
        .count();
    assert_eq!(committed, n, "one committed result per task");
    poller.abort();
    let epochs = c.epochs.lock().unwrap_or_else(|e| e.into_inner()).clone();
    eprintln!("epochs seen: {epochs:?}; took {:?}", began.elapsed());
    Ok(())
}

/// (12) The S3 server killed and started again mid-run: uploads (and the scheduler's own
/// writes) retry until it is back, and the run completes with every result in S3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_restarted_mid_run_uploads_retry_and_the_run_completes() -> anyhow::Result<()> {
    let _one = serial().await;
    let began = Instant::now();
    let mut c = cluster(
        HaConfig::default(),
        &[("w1", "local", 4), ("w2", "local", 4)],
    )
    .await?;
    let n = 120;
    let (run, ledger, poller) =
        watched_run(&c, &fan_out("s3_restart", n, 300), "s3-restart-1").await?;
    wait_completed(&c, &run, 10).await?;
    let before = task_runs(&c, &run)
        .await?
        .iter()
        .filter(|t| t.state == baton_proto::TaskState::Completed as i32)
        .count();
    c.s3.kill9();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    // While S3 is down, nothing can be committed for long: results are uploaded before
    // they are reported.
    let during = task_runs(&c, &run)
        .await?
        .iter()
        .filter(|t| t.state == baton_proto::TaskState::Completed as i32)
        .count();
    c.s3.restart()
        .await
        .map_err(|e| anyhow::anyhow!("restarting S3: {e}\n{}", c.logs()))?;
    eprintln!("S3 down for about 1.5 s; {before} then {during} task runs completed meanwhile");
    assert!(
        during < n + 2,
        "the whole run completed while S3 was down ({during} task runs)"
    );
    check_fan_out(&c, &ledger, &run, n).await?;
    poller.abort();
    eprintln!("took {:?}", began.elapsed());
    Ok(())
}
