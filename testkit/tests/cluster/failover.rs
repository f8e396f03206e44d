//! Cluster mode end to end: three scheduler replicas on a three-member etcd cluster with
//! results in S3; the ridge sweep, and the leader killed, paused and restarted.

use crate::support::*;
use baton_common::result_store::ResultStore;
use baton_proto as pb;
use baton_testkit::ha::HaConfig;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ridge_sweep_runs_on_the_cluster_with_results_in_s3() -> anyhow::Result<()> {
    ridge_sweep_on(HaConfig::default()).await
}

/// The same with TLS and tokens between every process: workers, clients and the CLI to the
/// schedulers (mutual TLS), and the schedulers to etcd (with etcd's client certificate
/// auth).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ridge_sweep_runs_with_tls_between_every_process() -> anyhow::Result<()> {
    ridge_sweep_on(HaConfig {
        tls: true,
        ..HaConfig::default()
    })
    .await
}

/// A secret only the trainer worker holds (see [`secrets_stay_on_the_workers`]).
const SECRET: &str = "cluster-secret-7d3e91b2";

async fn ridge_sweep_on(cfg: HaConfig) -> anyhow::Result<()> {
    let _one = serial().await;
    let cfg = HaConfig {
        worker_env: vec![("BATON_SECRET_API_KEY".into(), SECRET.into())],
        // Every replica serves the web UI (on a port of its own, which it logs).
        scheduler_args: vec!["--http=127.0.0.1:0".into()],
        ..cfg
    };
    let c = cluster(
        cfg,
        &[("local-1", "local", 4), ("trainer-1", "local,trainer", 4)],
    )
    .await?;
    let source = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/ridge_sweep.yaml"
    ))?;
    let run = start_run(&c, &source, "ridge-1").await?;
    let done = wait_run(&c, &run, Duration::from_secs(120)).await?;
    assert_eq!(done.state, pb::RunState::Completed as i32, "{}", done.error);
    let client = leader_client(&c, Duration::from_secs(10)).await?;
    let trs = client.task_runs(&run, true).await?;
    // The flow definition is kept in the bucket, versioned, as flow storage.
    let store = c.s3.store("cluster").await?;
    let flow = store
        .get(&format!(
            "{}/flows/examples/ridge_sweep/1.json",
            c.result_store()
        ))
        .await?;
    let flow: serde_json::Value = serde_json::from_slice(&flow)?;
    assert_eq!(flow["name"], "ridge_sweep");
    let scores: Vec<&pb::TaskRun> = trs.iter().filter(|t| t.task == "evaluate").collect();
    assert_eq!(scores.len(), 6);
    for t in &scores {
        let uri = &t.result.as_ref().expect("result").uri;
        assert!(
            uri.starts_with("s3://baton/cluster/packs/") && uri.contains('#'),
            "{uri}"
        );
        // `baton result get s3://…` reads it back (straight from S3, with the local AWS
        // settings, as a user with credentials would).
        let out = std::process::Command::new(baton_testkit::bin_path("baton")?)
            .args(c.cli_tls_args())
            .args(["result", "get", uri])
            .envs(c.s3.env())
            .env("BATON_SCHEDULER", c.scheduler_list())
            .env("BATON_TOKEN", c.token())
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
    if c.client_tls().is_some() {
        // Nothing answers in plaintext, and etcd serves TLS only.
        for r in &c.replicas {
            let plain = r.url().replacen("https://", "http://", 1);
            assert!(baton_testkit::ha::leader_info(&plain).await.is_none());
        }
        assert!(c.etcd.endpoints().iter().all(|e| e.starts_with("https://")));
    }
    web_ui_on_every_replica(&c, &run)?;
    secrets_stay_on_the_workers(&c).await
}

/// The web UIs the replicas logged that they serve (`url=http://…/`).
fn web_uis(c: &baton_testkit::ha::HaCluster) -> anyhow::Result<Vec<u16>> {
    let mut ports = Vec::new();
    for entry in std::fs::read_dir(c.dir.path())? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "log") {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        for line in text.lines().filter(|l| l.contains("serving the web UI")) {
            let port = line
                .split("url=http://127.0.0.1:")
                .nth(1)
                .and_then(|rest| rest.split('/').next())
                .and_then(|p| p.parse::<u16>().ok());
            ports.extend(port);
        }
    }
    Ok(ports)
}

/// Every replica's UI, leader or follower, shows the run with a token: each reads through
/// its own replica's API (over mutual TLS when the cluster's is), which follows the leader.
fn web_ui_on_every_replica(c: &baton_testkit::ha::HaCluster, run: &str) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let ports = web_uis(c)?;
    assert_eq!(ports.len(), c.replicas.len(), "{}", c.logs());
    for port in ports {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        write!(
            s,
            "GET /runs/{run} HTTP/1.0\r\nHost: 127.0.0.1\r\nCookie: baton_token={}\r\n\r\n",
            c.token()
        )?;
        let mut page = String::new();
        s.read_to_string(&mut page)?;
        assert!(page.starts_with("HTTP/1.0 200"), "UI on {port}: {page}");
        assert!(
            page.contains("COMPLETED") && page.contains("<svg class=\"dag\""),
            "UI on {port}: {page}"
        );
    }
    Ok(())
}

/// A flow using a secret runs on the cluster, and the secret's value is nowhere in etcd, the
/// bucket (results, task logs, archives), or any process's log; `baton logs` masks it.
async fn secrets_stay_on_the_workers(c: &baton_testkit::ha::HaCluster) -> anyhow::Result<()> {
    let flow = r#"
name: secret_digest
tasks:
  - name: use
    process: {command: /bin/sh, args: ["-c", "read -r inputs; echo \"key=$BATON_SECRET_API_KEY inputs=$inputs\"; printf '\"%s\"' \"$(printf %s \"$BATON_SECRET_API_KEY\" | sha256sum | cut -c1-64)\""]}
    inputs: {key: {secret: API_KEY}}
    labels: [trainer]
"#;
    let run = start_run(c, flow, "secret-1").await?;
    let done = wait_run(c, &run, Duration::from_secs(60)).await?;
    assert_eq!(done.state, pb::RunState::Completed as i32, "{}", done.error);
    let client = leader_client(c, Duration::from_secs(10)).await?;
    let trs = client.task_runs(&run, true).await?;
    let digest = {
        use sha2::Digest;
        format!("\"{:x}\"", sha2::Sha256::digest(SECRET))
    };
    assert_eq!(trs[0].value, digest);
    let mut stream = client.logs(&run, "", false).await?;
    let mut logs = String::new();
    while let Some(e) = stream.message().await? {
        logs.push_str(&baton_client::format_entry(&e));
        logs.push('\n');
    }
    assert!(logs.contains("key=***"), "{logs}");
    assert!(!logs.contains(SECRET), "{logs}");

    // Everything etcd holds.
    let mut etcd = c.etcd.client().await?;
    let all = etcd
        .get("", Some(etcd_client::GetOptions::new().with_all_keys()))
        .await?;
    // What etcd keeps of this flow and run whether or not the run was archived yet (its
    // task runs then moved to the bucket, scanned below): the flow and the run's summary.
    let keys: Vec<&str> = all
        .kvs()
        .iter()
        .filter_map(|kv| kv.key_str().ok())
        .collect();
    assert!(
        keys.iter().any(|k| k.contains("/secret_digest/")) && keys.iter().any(|k| k.contains(&run)),
        "etcd holds the flow and the run: {keys:?}"
    );
    for kv in all.kvs() {
        let holds = |b: &[u8]| b.windows(SECRET.len()).any(|w| w == SECRET.as_bytes());
        assert!(
            !holds(kv.key()) && !holds(kv.value()),
            "etcd key {:?}",
            kv.key_str()
        );
    }
    // Every object in the bucket, and every log and file of the cluster's processes.
    for dir in [c.s3.data_dir(), c.dir.path().to_path_buf()] {
        let found = baton_testkit::scan::files_holding(&dir, SECRET.as_bytes());
        assert!(found.is_empty(), "the secret is in {found:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_mid_dispatch_a_follower_takes_over() -> anyhow::Result<()> {
    let _one = serial().await;
    let mut c = cluster(
        HaConfig::default(),
        &[("w1", "local", 8), ("w2", "local", 8)],
    )
    .await?;
    let (old, epoch) = c.wait_leader(Duration::from_secs(10), None).await?;
    let n = 300;
    let (run, ledger, poller) =
        watched_run(&c, &fan_out("kill_leader", n, 40), "kill-leader-1").await?;
    wait_completed(&c, &run, 50).await?;
    c.kill9_scheduler(old);
    let (new, new_epoch) = c.wait_leader(Duration::from_secs(30), Some(old)).await?;
    assert_ne!(new, old);
    assert!(new_epoch > epoch, "epoch {new_epoch} after {epoch}");
    check_fan_out(&c, &ledger, &run, n).await?;
    poller.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_paused_past_its_lease_is_fenced_and_steps_down() -> anyhow::Result<()> {
    let _one = serial().await;
    let c = cluster(
        HaConfig::default(),
        &[("w1", "local", 8), ("w2", "local", 8)],
    )
    .await?;
    let (old, epoch) = c.wait_leader(Duration::from_secs(10), None).await?;
    let n = 300;
    let (run, ledger, poller) =
        watched_run(&c, &fan_out("pause_leader", n, 40), "pause-leader-1").await?;
    wait_completed(&c, &run, 30).await?;
    c.pause_scheduler(old);
    tokio::time::sleep(Duration::from_millis(2 * c.cfg.leader_lease_ms)).await;
    let (new, new_epoch) = c.wait_leader(Duration::from_secs(30), Some(old)).await?;
    assert!(new_epoch > epoch, "epoch {new_epoch} after {epoch}");
    c.resume_scheduler(old);
    // The old leader's next write is refused (or its own deadline passed): it steps down
    // and points at the new leader.
    let new_front = c.replicas[new].front.url();
    let old_url = c.replicas[old].url();
    baton_testkit::eventually(
        Duration::from_secs(20),
        "the old leader to step down",
        || {
            let (old_url, new_front) = (old_url.clone(), new_front.clone());
            async move {
                let info = baton_testkit::ha::leader_info(&old_url).await?;
                (info.leader_address == new_front).then_some(())
            }
        },
    )
    .await?;
    let log = std::fs::read_to_string(c.dir.path().join(format!("scheduler-{old}.0.log")))?;
    assert!(
        log.contains("leadership lost") || log.contains("stepping down"),
        "the old leader did not log stepping down:\n{log}"
    );
    check_fan_out(&c, &ledger, &run, n).await?;
    poller.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_paused_for_half_its_lease_keeps_leading_without_duplicates() -> anyhow::Result<()> {
    let _one = serial().await;
    let c = cluster(
        HaConfig {
            leader_lease_ms: 10_000,
            worker_lease_ms: 9_000,
            ..HaConfig::default()
        },
        &[("w1", "local", 8), ("w2", "local", 8)],
    )
    .await?;
    let (leader, epoch) = c.wait_leader(Duration::from_secs(10), None).await?;
    let n = 200;
    let (run, ledger, poller) =
        watched_run(&c, &fan_out("short_pause", n, 100), "short-pause-1").await?;
    wait_completed(&c, &run, 20).await?;
    c.pause_scheduler(leader);
    tokio::time::sleep(Duration::from_millis(c.cfg.leader_lease_ms / 2)).await;
    c.resume_scheduler(leader);
    let trs = check_fan_out(&c, &ledger, &run, n).await?;
    assert_eq!(
        c.leader().await,
        Some((leader, epoch)),
        "no failover:\n{}",
        c.logs()
    );
    let epochs: Vec<u64> = c.epochs.lock().unwrap().iter().map(|(_, e)| *e).collect();
    assert!(
        epochs.iter().all(|e| *e == epoch),
        "epochs seen: {epochs:?}"
    );
    let redone: Vec<String> = trs
        .iter()
        .filter(|t| t.attempt != 1)
        .map(|t| format!("{}[{}]#{}", t.task, t.map_index, t.attempt))
        .collect();
    assert!(redone.is_empty(), "work was duplicated: {redone:?}");
    poller.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_of_every_replica_during_10k_tasks_commits_each_once() -> anyhow::Result<()>
{
    let _one = serial().await;
    let mut c = cluster(
        HaConfig::default(),
        &[("w1", "local", 16), ("w2", "local", 16)],
    )
    .await?;
    let n = 10_000;
    let (run, ledger, poller) = watched_run(&c, &fan_out("rolling", n, 5), "rolling-1").await?;
    for i in 0..c.replicas.len() {
        // A graceful stop (SIGTERM: the leader resigns), then the same replica again.
        if let Some(mut node) = c.replicas[i].node.take() {
            node.terminate();
        }
        c.restart_scheduler(i)?;
        let url = c.replicas[i].url();
        baton_testkit::eventually(Duration::from_secs(30), "the replica to be back", || {
            let url = url.clone();
            async move { baton_testkit::ha::leader_info(&url).await.map(|_| ()) }
        })
        .await?;
        c.wait_leader(Duration::from_secs(30), None).await?;
    }
    let trs = check_fan_out(&c, &ledger, &run, n).await?;
    let committed = trs
        .iter()
        .filter(|t| t.task == "work" && t.result.is_some())
        .count();
    assert_eq!(committed, n, "exactly one committed result per task");
    poller.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_runs_leave_etcd_and_are_read_back_from_the_archive() -> anyhow::Result<()> {
    let _one = serial().await;
    let mut c = cluster(HaConfig::default(), &[("w1", "local", 4)]).await?;
    let n = 20;
    let run = start_run(&c, &fan_out("archived", n, 1), "archive-1").await?;
    let ledger = Ledger::default();
    check_fan_out(&c, &ledger, &run, n).await?;
    // etcd keeps only live state: the run's keys go once its archive is written.
    let etcd = c.etcd.client().await?;
    baton_testkit::eventually(Duration::from_secs(20), "the run to leave etcd", || {
        let mut kv = etcd.kv_client();
        let run = run.clone();
        async move {
            let opts = etcd_client::GetOptions::new()
                .with_prefix()
                .with_count_only();
            // Its record, task run records, batches of mapped ones, and result pointers.
            for prefix in [
                format!("run/{run}"),
                format!("tr/{run}/"),
                format!("trb/{run}/"),
                format!("res/{run}/"),
            ] {
                let found = kv
                    .get(format!("/baton/state/{prefix}"), Some(opts.clone()))
                    .await
                    .ok()?;
                if found.count() > 0 {
                    return None;
                }
            }
            Some(())
        }
    })
    .await?;
    let store = c.s3.store("cluster").await?;
    let archive = format!("{}/archive/runs/{run}.pb", c.result_store());
    assert!(store.exists(&archive).await?, "{archive} is missing");
    // A new leader, which never saw the run, serves it from the archive.
    let (old, _) = c.wait_leader(Duration::from_secs(10), None).await?;
    c.kill9_scheduler(old);
    c.wait_leader(Duration::from_secs(30), Some(old)).await?;
    let trs = check_fan_out(&c, &ledger, &run, n).await?;
    assert!(trs.iter().all(|t| t.attempt == 1));
    // ... and still lists it (`baton runs`), from the summary kept in etcd.
    let listed = with_leader(&c, Duration::from_secs(30), |client| async move {
        Ok(client.list_runs(0).await?)
    })
    .await?;
    let found = listed.iter().find(|r| r.id == run);
    assert_eq!(
        found.map(|r| r.state),
        Some(pb::RunState::Completed as i32),
        "the archived run is listed by the new leader: {listed:?}"
    );
    // The same idempotency key still names the same (archived) run on the new leader.
    let again = start_run(&c, &fan_out("archived", n, 1), "archive-1").await?;
    assert_eq!(
        again, run,
        "an idempotency key started a second run after the failover"
    );
    Ok(())
}

/// A fan-out crashed into: the cluster and run, the run's task runs once it completed after
/// the takeover (checked by `check_fan_out`), and the attempt the leader died on.
struct Crash {
    cluster: baton_testkit::ha::HaCluster,
    run: String,
    task_runs: Vec<pb::TaskRun>,
    /// `RUN/TASK#ATTEMPT` or `RUN/TASK[INDEX]#ATTEMPT`.
    crashed: String,
}

/// Runs a fan-out of `n` tasks of `ms` each (as `name`) on one worker with `slots` slots,
/// whose leader aborts when the first result of `task` arrives, after the worker uploaded
/// it and before its commit; waits for a new leader at a higher epoch and for the run to
/// complete with every task run committed once.
async fn crash_before_commit(
    task: &str,
    slots: u32,
    name: &str,
    n: usize,
    ms: u64,
) -> anyhow::Result<Crash> {
    let marker_dir = tempfile::tempdir()?;
    let marker = marker_dir.path().join("crashed");
    let c = cluster(
        HaConfig {
            extra_env: vec![(
                "BATON_FAULT_CRASH_BEFORE_COMMIT".into(),
                format!("{task}@{}", marker.display()),
            )],
            ..HaConfig::default()
        },
        &[("w1", "local", slots)],
    )
    .await?;
    let (old, epoch) = c.wait_leader(Duration::from_secs(10), None).await?;
    let (run, ledger, poller) =
        watched_run(&c, &fan_out(name, n, ms), &format!("{name}-1")).await?;
    baton_testkit::eventually(Duration::from_secs(60), "the leader to crash", || {
        let marker = marker.clone();
        async move { marker.exists().then_some(()) }
    })
    .await?;
    let (_, new_epoch) = c.wait_leader(Duration::from_secs(30), Some(old)).await?;
    assert!(new_epoch > epoch);
    let task_runs = check_fan_out(&c, &ledger, &run, n).await?;
    poller.abort();
    let crashed = std::fs::read_to_string(&marker)?;
    Ok(Crash {
        cluster: c,
        run,
        task_runs,
        crashed,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_between_upload_and_commit_commits_after_takeover() -> anyhow::Result<()> {
    let _one = serial().await;
    let crash = crash_before_commit("total", 4, "crash_commit", 20, 10).await?;
    let (c, trs) = (&crash.cluster, &crash.task_runs);
    let total = trs.iter().find(|t| t.task == "total").expect("total");
    let committed = total.result.as_ref().expect("committed").uri.clone();
    // The crashed attempt's object was written; it is either the one committed after the
    // takeover (the worker resent it) or a stray that nothing references.
    let store = c.s3.store("cluster").await?;
    let first = committed.replace(&format!("attempt-{}", total.attempt), "attempt-1");
    assert!(
        store.exists(&first).await?,
        "the uploaded object {first} is missing"
    );
    let referenced = trs
        .iter()
        .filter(|t| t.result.as_ref().is_some_and(|r| r.uri == first))
        .count();
    assert!(referenced <= 1);
    if total.attempt > 1 {
        assert_eq!(referenced, 0, "the stray object is referenced");
    }
    Ok(())
}

/// The leader dies between a worker's upload of a mapped task's result (into a pack, with
/// others) and its commit: after the takeover every map index is committed once, the
/// uploaded record is either the one committed (the worker resent it) or referenced by
/// nothing, and no byte of any pack is referenced twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_between_packing_and_commit_loses_and_doubles_nothing() -> anyhow::Result<()>
{
    let _one = serial().await;
    let crash = crash_before_commit("work", 8, "crash_pack", 40, 0).await?;
    let (c, trs, run, crashed) = (&crash.cluster, &crash.task_runs, &crash.run, &crash.crashed);
    // The attempt whose result arrived when the leader died: `RUN/work[INDEX]#ATTEMPT`.
    let (index, attempt) = crashed
        .split_once('[')
        .and_then(|(_, rest)| rest.split_once("]#"))
        .ok_or_else(|| anyhow::anyhow!("unexpected attempt `{crashed}`"))?;
    let key = baton_common::ids::AttemptKey {
        run: run.clone(),
        task: "work".into(),
        map_index: index.parse()?,
        attempt: attempt.trim().parse()?,
    };
    let uploaded = attempt_location(c, &key)?
        .ok_or_else(|| anyhow::anyhow!("the uploaded result of {crashed} is in no pack"))?;
    assert!(uploaded.contains(".pack#"), "{uploaded} is not packed");
    let t = trs
        .iter()
        .find(|t| t.task == "work" && t.map_index == key.map_index)
        .expect("the task run");
    let committed = t.result.as_ref().map(|r| r.uri.clone()).unwrap_or_default();
    if t.attempt == key.attempt {
        assert_eq!(committed, uploaded, "the resent result is the one uploaded");
    } else {
        let referenced = trs
            .iter()
            .filter(|t| t.result.as_ref().is_some_and(|r| r.uri == uploaded))
            .count();
        assert_eq!(referenced, 0, "the stray record {uploaded} is referenced");
    }
    Ok(())
}

/// Oversized requests on the 3-replica cluster (issue reproductions: a 2 MiB idempotency key
/// wedged the leader retrying an etcd transaction over etcd's request limit; 1.7 MB of
/// parameters forced a failover and left a phantom run): refused with INVALID_ARGUMENT, the
/// same leader at the same epoch, and other clients served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_are_refused_without_a_failover() -> anyhow::Result<()> {
    let _one = serial().await;
    let c = cluster(HaConfig::default(), &[("w1", "local", 4)]).await?;
    let (leader, epoch) = c.wait_leader(Duration::from_secs(30), None).await?;
    let client = leader_client(&c, Duration::from_secs(10)).await?;
    let status = |e: baton_client::ClientError| match e {
        baton_client::ClientError::Status(s) => s,
        other => tonic::Status::unknown(other.to_string()),
    };
    let flow = fan_out("edge", 3, 1);
    // Bounded: before the limits, this call hung while the leader retried forever.
    let limit = Duration::from_secs(30);
    let err = tokio::time::timeout(
        limit,
        client.run_source(flow.clone(), Default::default(), "k".repeat(2 << 20)),
    )
    .await?
    .map(|_| ())
    .map_err(status)
    .expect_err("a 2 MiB idempotency key accepted");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("`idempotency_key`"),
        "{}",
        err.message()
    );
    let params: std::collections::BTreeMap<String, String> = (0..14)
        .map(|i| (format!("p{i}"), format!("\"{}\"", "v".repeat(120_000))))
        .collect();
    let err = tokio::time::timeout(
        limit,
        client.run_source(flow.clone(), params, String::new()),
    )
    .await?
    .map(|_| ())
    .map_err(status)
    .expect_err("1.7 MB of parameters accepted");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    // Served meanwhile, by the same leader at the same epoch.
    let run = start_run(&c, &flow, "after-the-oversized").await?;
    check_fan_out(&c, &Ledger::default(), &run, 3).await?;
    assert_eq!(c.leader().await, Some((leader, epoch)), "{}", c.logs());
    Ok(())
}

/// The engine stops on its own (fault injection at the first success of a `work` task, as
/// after a failed write): its replica steps down without a panic, stays up, and the
/// cluster elects a leader at a higher epoch that finishes the run, each task once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_that_stops_on_its_own_steps_down_and_the_run_completes() -> anyhow::Result<()> {
    let _one = serial().await;
    let marker = tempfile::tempdir()?;
    let marker = marker.path().join("stopped");
    let cfg = HaConfig {
        extra_env: vec![(
            "BATON_FAULT_STOP_ENGINE".to_string(),
            format!("work@{}", marker.display()),
        )],
        ..HaConfig::default()
    };
    let mut c = cluster(cfg, &[("w1", "local", 4)]).await?;
    let (_, first_epoch) = c.wait_leader(Duration::from_secs(30), None).await?;
    let ledger = Ledger::default();
    let run = start_run(&c, &fan_out("stops", 5, 50), "stops-1").await?;
    check_fan_out(&c, &ledger, &run, 5).await?;
    assert!(marker.exists(), "the fault never fired");
    let logs = c.logs();
    assert!(logs.contains("engine stopped; stepping down"), "{logs}");
    assert!(!logs.contains("panicked"), "{logs}");
    let (_, epoch) = c.wait_leader(Duration::from_secs(30), None).await?;
    assert!(epoch > first_epoch, "epoch {epoch} after {first_epoch}");
    for r in &mut c.replicas {
        let node = r.node.as_mut().expect("a replica");
        assert!(node.alive(), "a replica exited");
    }
    assert!(ledger.violations().is_empty(), "{:?}", ledger.violations());
    c.assert_epochs_monotonic();
    Ok(())
}
