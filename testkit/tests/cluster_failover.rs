//! Cluster mode end to end: three scheduler replicas on a three-member etcd cluster with
//! results in S3; the ridge sweep, and the leader killed, paused and restarted.

mod support;

use baton_proto as pb;
use baton_testkit::ha::{HaCluster, HaConfig};
use std::time::Duration;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ridge_sweep_runs_on_the_cluster_with_results_in_s3() -> anyhow::Result<()> {
    let mut c = HaCluster::start(HaConfig::default()).await?;
    c.add_worker("local-1", "local", 4)?;
    c.add_worker("trainer-1", "local,trainer", 4)?;
    wait_workers(&c, 2).await?;
    let source = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/ridge_sweep.yaml"
    ))?;
    let run = start_run(&c, &source, "ridge-1").await?;
    let done = wait_run(&c, &run, Duration::from_secs(120)).await?;
    assert_eq!(done.state, pb::RunState::Completed as i32, "{}", done.error);
    let client = leader_client(&c, Duration::from_secs(10)).await?;
    let trs = client.task_runs(&run, true).await?;
    let scores: Vec<&pb::TaskRun> = trs.iter().filter(|t| t.task == "evaluate").collect();
    assert_eq!(scores.len(), 6);
    for t in &scores {
        let uri = &t.result.as_ref().expect("result").uri;
        assert!(uri.starts_with("s3://baton/results/"), "{uri}");
        // `baton result get s3://…` reads it back (straight from S3, with the local AWS
        // settings, as a user with credentials would).
        let out = std::process::Command::new(baton_testkit::bin_path("baton")?)
            .args(["result", "get", uri])
            .envs(c.s3.env())
            .env("BATON_SCHEDULER", c.scheduler_list())
            .output()?;
        assert!(
            out.status.success(),
            "baton result get failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let printed: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let value: serde_json::Value = serde_json::from_str(&t.value)?;
        assert_eq!(printed, value);
        assert!(
            printed["r2"].as_f64().is_some_and(|r2| r2 > 0.5),
            "{printed}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_mid_dispatch_a_follower_takes_over() -> anyhow::Result<()> {
    let mut c = HaCluster::start(HaConfig::default()).await?;
    c.add_worker("w1", "local", 8)?;
    c.add_worker("w2", "local", 8)?;
    wait_workers(&c, 2).await?;
    let (old, epoch) = c.wait_leader(Duration::from_secs(10), None).await?;
    let n = 300;
    let run = start_run(&c, &fan_out("kill_leader", n, 40), "kill-leader-1").await?;
    let ledger = Ledger::default();
    let poller = ledger.watch(&c, vec![run.clone()]);
    wait_completed(&c, &run, 50).await?;
    c.kill9_scheduler(old);
    let (new, new_epoch) = c.wait_leader(Duration::from_secs(30), Some(old)).await?;
    assert_ne!(new, old);
    assert!(new_epoch > epoch, "epoch {new_epoch} after {epoch}");
    check_fan_out(&c, &ledger, &run, n).await?;
    poller.abort();
    Ok(())
}
