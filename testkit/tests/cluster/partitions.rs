//! Network partitions of the leader: cut off from etcd only (it must step down at its own
//! lease deadline while another replica takes over) and cut off from the workers only (it
//! must keep leading and re-dispatch the silent workers' attempts once their lease lapses).

use crate::support::*;
use baton_proto as pb;
use baton_testkit::eventually;
use baton_testkit::ha::{leader_info, HaConfig};
use pb::flow_service_client::FlowServiceClient;
use std::time::{Duration, Instant};

/// Whether replica `url` serves a leader-only call (`ListWorkers`) now: `Some(true)` if it
/// answers, `Some(false)` if it refuses, `None` if it cannot be reached.
async fn serves_as_leader(url: &str, token: &str) -> Option<bool> {
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_string())
        .ok()?
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(1));
    let channel = endpoint.connect().await.ok()?;
    let mut request = tonic::Request::new(pb::ListWorkersRequest {});
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().ok()?);
    match FlowServiceClient::new(channel).list_workers(request).await {
        Ok(_) => Some(true),
        Err(s) if s.code() == tonic::Code::Unavailable => Some(false),
        Err(_) => None,
    }
}

/// (4) The leader loses etcd but still hears workers and clients: it must stop claiming
/// leadership by its own lease deadline, another replica must lead with a higher epoch, and
/// the run must complete with every result committed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_cut_from_etcd_steps_down_at_its_lease_deadline() -> anyhow::Result<()> {
    let _one = serial().await;
    let began = Instant::now();
    let c = cluster(
        HaConfig::default(),
        &[("w1", "local", 4), ("w2", "local", 4)],
    )
    .await?;
    let (old, epoch) = c.wait_leader(Duration::from_secs(10), None).await?;
    let n = 60;
    let (run, ledger, poller) = watched_run(&c, &fan_out("cut_etcd", n, 400), "cut-etcd-1").await?;
    wait_completed(&c, &run, 8).await?;

    let old_url = c.replicas[old].url();
    let old_front = c.replicas[old].front.url();
    let cut = Instant::now();
    c.cut_from_etcd(old);
    // It keeps answering (only etcd is cut) but stops claiming to lead, both in GetLeader
    // and in what it serves, by its lease deadline (plus a few seconds of slack).
    let lease = Duration::from_millis(c.cfg.leader_lease_ms);
    let limit = lease + Duration::from_secs(4);
    let token = c.token().to_string();
    let stepped = eventually(limit, "the cut leader to stop claiming leadership", || {
        let (old_url, old_front, token) = (old_url.clone(), old_front.clone(), token.clone());
        async move {
            let info = leader_info(&old_url).await?;
            if info.leader_address == old_front {
                return None;
            }
            (!serves_as_leader(&old_url, &token).await?).then_some(())
        }
    })
    .await;
    let stepped_after = cut.elapsed();
    if let Err(e) = stepped {
        let info = leader_info(&old_url).await;
        panic!(
            "{e}: replica {old} still claims to lead {stepped_after:?} after the cut \
             (lease {lease:?}); GetLeader says {info:?}\n{}",
            c.logs()
        );
    }
    eprintln!("the cut leader s{old} stopped claiming leadership {stepped_after:?} after the cut");
    let log = std::fs::read_to_string(c.dir.path().join(format!("scheduler-{old}.0.log")))?;
    // It notices either way: its lease keeper reports the lease lost (then it steps down),
    // or a commit is fenced first and its engine stops.
    assert!(
        log.contains("lease lost") || log.contains("leadership lost"),
        "the cut leader did not log losing leadership:\n{}",
        c.logs()
    );

    let (new, new_epoch) = c.wait_leader(Duration::from_secs(30), Some(old)).await?;
    assert_ne!(new, old);
    assert!(new_epoch > epoch, "epoch {new_epoch} after {epoch}");
    eprintln!(
        "s{new} leads with epoch {new_epoch} (was s{old}, epoch {epoch}) {:?} after the cut",
        cut.elapsed()
    );
    check_fan_out(&c, &ledger, &run, n).await?;

    // Healed, the old leader follows the new one.
    c.heal_from_etcd(old);
    let new_front = c.replicas[new].front.url();
    eventually(
        Duration::from_secs(20),
        "the healed replica to follow the new leader",
        || {
            let (old_url, new_front) = (old_url.clone(), new_front.clone());
            async move {
                let info = leader_info(&old_url).await?;
                (info.leader_address == new_front && info.epoch >= new_epoch).then_some(())
            }
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", c.logs()))?;
    c.assert_epochs_monotonic();
    poller.abort();
    eprintln!("took {:?}", began.elapsed());
    Ok(())
}

/// (5) The leader loses the workers but keeps etcd: it keeps leading (one epoch all along),
/// re-dispatches the attempts that were running at the cut only once the worker lease has
/// lapsed, commits each task once, and finishes the run when the workers come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_cut_from_workers_keeps_leading_and_redispatches_after_the_worker_lease(
) -> anyhow::Result<()> {
    let _one = serial().await;
    let began = Instant::now();
    let c = cluster(
        HaConfig::default(),
        &[("w1", "local", 2), ("w2", "local", 2)],
    )
    .await?;
    let (leader, epoch) = c.wait_leader(Duration::from_secs(10), None).await?;
    let n = 8;
    let (run, ledger, poller) =
        watched_run(&c, &fan_out("cut_workers", n, 3_000), "cut-workers-1").await?;
    // All four slots busy.
    let busy = eventually(Duration::from_secs(30), "four running tasks", || async {
        let busy = busy_task_runs(&c, &run).await?;
        let running = busy
            .iter()
            .filter(|t| t.state == pb::TaskState::Running as i32)
            .count();
        (running == 4).then_some(busy)
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", c.logs()))?;

    let cut_ms = baton_common::time::now_ms();
    let cut = Instant::now();
    c.cut_from_workers(leader);
    let lease_ms = c.cfg.worker_lease_ms as i64;
    // The leader never changes while the workers are cut off.
    let heal_at = cut + Duration::from_millis(2 * c.cfg.worker_lease_ms);
    while Instant::now() < heal_at {
        let now = c.leader().await;
        assert_eq!(
            now,
            Some((leader, epoch)),
            "the leader changed while cut from the workers only:\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Its workers' lease lapsed: it lists none.
    let listed = leader_client(&c, Duration::from_secs(5))
        .await?
        .workers()
        .await?;
    assert!(
        listed.is_empty(),
        "workers still listed two worker leases after the cut: {listed:?}"
    );
    c.heal_from_workers(leader);
    eprintln!("healed {:?} after the cut", cut.elapsed());

    let trs = check_fan_out(&c, &ledger, &run, n).await?;
    assert_eq!(
        c.leader().await,
        Some((leader, epoch)),
        "no failover:\n{}",
        c.logs()
    );
    let epochs = c.epochs.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert!(
        epochs.iter().all(|(_, e)| *e == epoch),
        "one epoch all along, saw {epochs:?}"
    );

    // The attempts running at the cut were re-dispatched, but not before the lease lapsed
    // (the lease runs from the last message heard, at most a heartbeat before the cut).
    let slack = (lease_ms / 4).max(100) + 500;
    let earliest = cut_ms + lease_ms - slack;
    for b in &busy {
        let t = trs
            .iter()
            .find(|t| t.task == b.task && t.map_index == b.map_index)
            .expect("the task run still exists");
        let later: Vec<&pb::Attempt> = t.attempts.iter().filter(|a| a.number > b.attempt).collect();
        assert!(
            !later.is_empty(),
            "{}[{}] was running at the cut (attempt {}) but never re-dispatched: {:?}",
            t.task,
            t.map_index,
            b.attempt,
            t.attempts
        );
        for a in later {
            assert!(
                a.started_ms >= earliest,
                "{}[{}] attempt {} started {} ms after the cut, before the worker lease \
                 ({lease_ms} ms) lapsed: {:?}",
                t.task,
                t.map_index,
                a.number,
                a.started_ms - cut_ms,
                t.attempts
            );
        }
        assert!(
            t.attempt > b.attempt,
            "{}[{}]: committed attempt {} is the one cut off",
            t.task,
            t.map_index,
            t.attempt
        );
    }
    let first_redispatch = trs
        .iter()
        .flat_map(|t| t.attempts.iter())
        .filter(|a| a.started_ms >= cut_ms)
        .map(|a| a.started_ms - cut_ms)
        .min();
    eprintln!("first attempt started after the cut: {first_redispatch:?} ms after it");
    // Nothing at all was dispatched while the leader could not reach a worker.
    for t in &trs {
        for a in &t.attempts {
            assert!(
                a.started_ms < cut_ms || a.started_ms >= earliest,
                "{}[{}] attempt {} dispatched {} ms after the cut: {:?}",
                t.task,
                t.map_index,
                a.number,
                a.started_ms - cut_ms,
                t.attempts
            );
        }
    }
    poller.abort();
    eprintln!("took {:?}", began.elapsed());
    Ok(())
}
