//! A randomized run: several flows on the cluster while a seeded sequence of faults hits
//! the leader, etcd, the workers and S3. Reproduce a failure with BATON_CHAOS_SEED=<seed>
//! (printed at the start and on failure).

use crate::support::*;
use baton_testkit::ha::{HaCluster, HaConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::Duration;

#[derive(Debug, Clone, Copy)]
enum Fault {
    KillLeader,
    PauseLeaderPastLease,
    PauseLeaderBriefly,
    CutLeaderFromEtcd,
    CutLeaderFromWorkers,
    KillEtcdMember,
    KillWorker,
    RestartS3,
}

const FAULTS: [Fault; 8] = [
    Fault::KillLeader,
    Fault::PauseLeaderPastLease,
    Fault::PauseLeaderBriefly,
    Fault::CutLeaderFromEtcd,
    Fault::CutLeaderFromWorkers,
    Fault::KillEtcdMember,
    Fault::KillWorker,
    Fault::RestartS3,
];

async fn inject(
    c: &mut HaCluster,
    f: Fault,
    rng: &mut ChaCha8Rng,
    workers: &mut usize,
) -> anyhow::Result<()> {
    let lease = Duration::from_millis(c.cfg.leader_lease_ms);
    let (leader, _) = c.wait_leader(Duration::from_secs(60), None).await?;
    match f {
        Fault::KillLeader => {
            c.kill9_scheduler(leader);
            c.wait_leader(Duration::from_secs(60), Some(leader)).await?;
            c.restart_scheduler(leader)?;
        }
        Fault::PauseLeaderPastLease => {
            c.pause_scheduler(leader);
            tokio::time::sleep(lease * 2).await;
            c.resume_scheduler(leader);
        }
        Fault::PauseLeaderBriefly => {
            c.pause_scheduler(leader);
            tokio::time::sleep(lease / 4).await;
            c.resume_scheduler(leader);
        }
        Fault::CutLeaderFromEtcd => {
            c.cut_from_etcd(leader);
            tokio::time::sleep(lease + Duration::from_secs(1)).await;
            c.heal_from_etcd(leader);
        }
        Fault::CutLeaderFromWorkers => {
            c.cut_from_workers(leader);
            tokio::time::sleep(Duration::from_millis(rng.random_range(1_000..5_000))).await;
            c.heal_from_workers(leader);
        }
        Fault::KillEtcdMember => {
            let i = rng.random_range(0..c.etcd.len());
            c.etcd.kill9(i);
            tokio::time::sleep(Duration::from_secs(2)).await;
            c.etcd.restart(i).await?;
        }
        Fault::KillWorker => {
            let i = rng.random_range(0..c.workers.len());
            c.workers[i].kill9();
            *workers += 1;
            c.add_worker(&format!("w{workers}"), "local", 8)?;
        }
        Fault::RestartS3 => {
            c.s3.kill9();
            tokio::time::sleep(Duration::from_millis(rng.random_range(200..2_000))).await;
            c.s3.restart().await?;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_faults_lose_nothing() -> anyhow::Result<()> {
    let _one = serial().await;
    let seed: u64 = std::env::var("BATON_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("chaos seed: {seed} (rerun with BATON_CHAOS_SEED={seed})");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut c = HaCluster::start(HaConfig::default()).await?;
    let mut workers = 2;
    c.add_worker("w1", "local", 8)?;
    c.add_worker("w2", "local", 8)?;
    wait_workers(&c, 2).await?;
    let sizes = [150, 300, 200];
    let mut runs = Vec::new();
    for (i, n) in sizes.iter().enumerate() {
        let id = start_run(
            &c,
            &fan_out(&format!("chaos_{i}"), *n, 40),
            &format!("chaos-{seed}-{i}"),
        )
        .await?;
        runs.push((id, *n));
    }
    let ledger = Ledger::default();
    let poller = ledger.watch(&c, runs.iter().map(|(r, _)| r.clone()).collect());
    let mut done = Vec::new();
    for _ in 0..5 {
        let f = FAULTS[rng.random_range(0..FAULTS.len())];
        eprintln!("chaos {seed}: {f:?}");
        done.push(f);
        if let Err(e) = inject(&mut c, f, &mut rng, &mut workers).await {
            panic!("seed {seed}: injecting {f:?} failed: {e:#}\n{}", c.logs());
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..1_500))).await;
    }
    for (run, n) in &runs {
        if let Err(e) = check_fan_out(&c, &ledger, run, *n).await {
            panic!("seed {seed}, faults {done:?}: {e:#}");
        }
    }
    poller.abort();
    Ok(())
}
