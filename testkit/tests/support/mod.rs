//! Shared by the tests on HA clusters (the `cluster` binary and the cluster variants in
//! `single_node`; each binary declares this module once): the one-cluster-at-a-time lock,
//! flows, a client that finds the leader, and the invariants checked after every fault
//! (terminal runs with correct results, one committed result per task run whose object
//! exists, a committed pointer never changing).

#![allow(dead_code)]

use baton_client::Client;
use baton_common::result_store::ResultStore;
use baton_proto as pb;
use baton_testkit::ha::{HaCluster, HaConfig};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// HA clusters are heavy (etcd, S3, three replicas, workers) and their leases are
/// timing-sensitive: one at a time per test binary. The tests of a binary share one process,
/// so this static is shared by all of them, while single-node tests run alongside.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Holds the binary's cluster-test lock: every test that starts an HA cluster takes it
/// first.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// Starts the example ridge sweep (examples/ridge_sweep.yaml) with its default parameters.
pub async fn start_ridge(client: &Client) -> anyhow::Result<pb::FlowRun> {
    let source = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/ridge_sweep.yaml"
    ))?;
    client
        .run_source(source, BTreeMap::new(), String::new())
        .await?
        .run
        .ok_or_else(|| anyhow::anyhow!("CreateRun answered no run"))
}

/// A fan-out of `n` sleeping tasks of `ms` each, then their sum (n(n-1)/2).
pub fn fan_out(name: &str, n: usize, ms: u64) -> String {
    format!(
        r#"
name: {name}
labels: [local]
tasks:
  - name: items
    builtin: range
    inputs: {{n: {n}}}
  - name: work
    builtin: sleep
    inputs: {{ms: {ms}, value: {{result: items}}}}
    map: [value]
  - name: total
    builtin: sum
    inputs: {{values: {{result: work}}}}
"#
    )
}

/// The `evaluate` scores of a ridge sweep's task runs, by alpha.
pub fn ridge_scores(trs: &[pb::TaskRun]) -> anyhow::Result<BTreeMap<String, f64>> {
    let mut out = BTreeMap::new();
    for t in trs.iter().filter(|t| t.task == "evaluate") {
        let v: serde_json::Value = serde_json::from_str(&t.value)?;
        out.insert(v["alpha"].to_string(), v["r2"].as_f64().unwrap_or(f64::NAN));
    }
    Ok(out)
}

/// The sum the fan-out's `total` task must yield.
pub fn fan_out_total(n: usize) -> f64 {
    (n * n.saturating_sub(1) / 2) as f64
}

/// A client of whichever replica leads now (dialled directly).
pub async fn leader_client(c: &HaCluster, limit: Duration) -> anyhow::Result<Client> {
    let (i, _) = c.wait_leader(limit, None).await?;
    Ok(Client::connect_with(&[c.replicas[i].url()], Some(c.token()), c.client_tls()).await?)
}

/// Runs `f` against the leader, re-resolving the leader after errors, until `limit`.
pub async fn with_leader<T, F, Fut>(c: &HaCluster, limit: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut(Client) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let err = match leader_client(c, left.max(Duration::from_millis(100))).await {
            Ok(client) => match f(client).await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            },
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(err.context("no leader answered in time"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Starts a run of an inline flow on the leader, with an idempotency key so that a retry
/// after a failover cannot start it twice.
pub async fn start_run(c: &HaCluster, source: &str, key: &str) -> anyhow::Result<String> {
    with_leader(c, Duration::from_secs(60), |client| {
        let source = source.to_string();
        let key = key.to_string();
        async move {
            let r = client.run_source(source, BTreeMap::new(), key).await?;
            Ok(r.run.map(|r| r.id).unwrap_or_default())
        }
    })
    .await
}

fn finished(run: &pb::FlowRun) -> bool {
    matches!(
        pb::RunState::try_from(run.state),
        Ok(pb::RunState::Completed | pb::RunState::Failed | pb::RunState::Cancelled)
    )
}

/// Starts a run (as [`start_run`]) and a [`Ledger`] watching its committed pointers.
pub async fn watched_run(
    c: &HaCluster,
    source: &str,
    key: &str,
) -> anyhow::Result<(String, Ledger, tokio::task::JoinHandle<()>)> {
    let run = start_run(c, source, key).await?;
    let ledger = Ledger::default();
    let poller = ledger.watch(c, vec![run.clone()]);
    Ok((run, ledger, poller))
}

/// Polls the run (through failovers) until it is over.
pub async fn wait_run(c: &HaCluster, run: &str, limit: Duration) -> anyhow::Result<pb::FlowRun> {
    let deadline = Instant::now() + limit;
    loop {
        let got = with_leader(c, Duration::from_secs(30), |client| {
            let run = run.to_string();
            async move { Ok(client.get_run(&run).await?) }
        })
        .await;
        if let Ok(r) = &got {
            if finished(r) {
                return got;
            }
        }
        if Instant::now() >= deadline {
            anyhow::bail!("run {run} not finished in {limit:?}: {got:?}\n{}", c.logs());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// (run, task, map index) of a task run.
type TaskRunKey = (String, String, i64);

/// Every committed result pointer seen, per task run; a pointer that changes is a task run
/// committed twice.
#[derive(Default, Clone)]
pub struct Ledger {
    seen: Arc<Mutex<HashMap<TaskRunKey, String>>>,
    violations: Arc<Mutex<Vec<String>>>,
}

impl Ledger {
    /// Records the pointers of `trs`.
    pub fn record(&self, trs: &[pb::TaskRun]) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        for t in trs {
            let Some(r) = &t.result else { continue };
            if r.uri.is_empty() {
                continue;
            }
            let key = (t.run_id.clone(), t.task.clone(), t.map_index);
            match seen.get(&key) {
                Some(prev) if *prev != r.uri => {
                    self.violations
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(format!(
                            "task run {key:?} committed twice: {prev} then {}",
                            r.uri
                        ));
                }
                Some(_) => {}
                None => {
                    seen.insert(key, r.uri.clone());
                }
            }
        }
    }

    /// Polls the runs' task runs in the background until the returned guard is dropped.
    pub fn watch(&self, c: &HaCluster, runs: Vec<String>) -> tokio::task::JoinHandle<()> {
        let urls = c.urls();
        let token = c.token().to_string();
        let ledger = self.clone();
        tokio::spawn(async move {
            loop {
                for url in &urls {
                    let Ok(client) =
                        Client::connect_with_token(std::slice::from_ref(url), Some(&token)).await
                    else {
                        continue;
                    };
                    let client = client.with_retry_for(Duration::from_secs(1));
                    for run in &runs {
                        if let Ok(trs) = client.task_runs(run, false).await {
                            ledger.record(&trs);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    }

    pub fn violations(&self) -> Vec<String> {
        self.violations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The checks after every fault: those of [`check_run`] for the fan-out's `n + 2` task
/// runs, and the sum is right.
pub async fn check_fan_out(
    c: &HaCluster,
    ledger: &Ledger,
    run: &str,
    n: usize,
) -> anyhow::Result<Vec<pb::TaskRun>> {
    let trs = check_run(c, ledger, run, n + 2, Duration::from_secs(180)).await?;
    let total = trs
        .iter()
        .find(|t| t.task == "total")
        .map(|t| t.value.clone())
        .unwrap_or_default();
    let total: f64 = serde_json::from_str(&total)?;
    assert_eq!(total, fan_out_total(n), "the sum of the fan-out");
    check_results(c, &trs).await?;
    Ok(trs)
}

/// The committed results of a run's task runs in the bucket: no byte of a pack is
/// referenced twice, and each result (a sample of them) reads back as the value committed.
pub async fn check_results(c: &HaCluster, trs: &[pb::TaskRun]) -> anyhow::Result<()> {
    let mut packs: BTreeMap<&str, Vec<(u64, u64, &str)>> = BTreeMap::new();
    for t in trs {
        let Some(r) = &t.result else { continue };
        if let Some((pack, range)) = r.uri.split_once('#') {
            let (offset, len) = range
                .split_once('+')
                .ok_or_else(|| anyhow::anyhow!("a malformed location {}", r.uri))?;
            packs
                .entry(pack)
                .or_default()
                .push((offset.parse()?, len.parse()?, &r.uri));
        }
    }
    for ranges in packs.values_mut() {
        ranges.sort();
        for pair in ranges.windows(2) {
            assert!(
                pair[0].0 + pair[0].1 <= pair[1].0,
                "two committed results share bytes: {} and {}",
                pair[0].2,
                pair[1].2
            );
        }
    }
    let store = c.s3.store("cluster").await?;
    let with_values: Vec<&pb::TaskRun> = trs
        .iter()
        .filter(|t| t.result.is_some() && !t.value.is_empty())
        .collect();
    let step = (with_values.len() / 100).max(1);
    for t in with_values.into_iter().step_by(step) {
        let uri = &t.result.as_ref().map(|r| r.uri.clone()).unwrap_or_default();
        let stored: serde_json::Value = serde_json::from_slice(&store.get(uri).await?)?;
        let committed: serde_json::Value = serde_json::from_str(&t.value)?;
        assert_eq!(stored, committed, "{}[{}] at {uri}", t.task, t.map_index);
    }
    Ok(())
}

/// Waits until at least `k` task runs of `run` completed (seen through any leader).
pub async fn wait_completed(c: &HaCluster, run: &str, k: usize) -> anyhow::Result<()> {
    baton_testkit::eventually(Duration::from_secs(60), "task runs to complete", || async {
        let client = leader_client(c, Duration::from_secs(5)).await.ok()?;
        let trs = client.task_runs(run, false).await.ok()?;
        let done = trs
            .iter()
            .filter(|t| t.state == pb::TaskState::Completed as i32)
            .count();
        (done >= k).then_some(())
    })
    .await
}

/// A run's task runs (with values) as the leader reports them, through failovers.
pub async fn task_runs(c: &HaCluster, run: &str) -> anyhow::Result<Vec<pb::TaskRun>> {
    with_leader(c, Duration::from_secs(30), |client| {
        let run = run.to_string();
        async move { Ok(client.task_runs(&run, true).await?) }
    })
    .await
}

/// The checks after a fault for any flow: the run completed within `limit`, it has
/// `expect` task runs, each completed with a committed result whose object exists in S3,
/// no pointer changed, epochs never fell.
pub async fn check_run(
    c: &HaCluster,
    ledger: &Ledger,
    run: &str,
    expect: usize,
    limit: Duration,
) -> anyhow::Result<Vec<pb::TaskRun>> {
    let done = wait_run(c, run, limit).await?;
    assert_eq!(
        done.state,
        pb::RunState::Completed as i32,
        "run {run} did not complete: {}\n{}",
        done.error,
        c.logs()
    );
    let trs = task_runs(c, run).await?;
    ledger.record(&trs);
    assert_eq!(trs.len(), expect, "task runs of {run}");
    let store = c.s3.store("cluster").await?;
    for t in &trs {
        assert_eq!(
            t.state,
            pb::TaskState::Completed as i32,
            "task run {}[{}] is not completed: {}",
            t.task,
            t.map_index,
            t.error
        );
        let r = t
            .result
            .as_ref()
            .expect("a completed task run has a result");
        assert!(r.uri.starts_with("s3://"), "result not in S3: {}", r.uri);
        assert!(
            store.exists(&r.uri).await?,
            "committed result object {} is missing",
            r.uri
        );
    }
    let v = ledger.violations();
    assert!(v.is_empty(), "{v:#?}");
    c.assert_epochs_monotonic();
    Ok(trs)
}

/// Task runs of `run` in state Running or Assigned, as the leader reports them now.
pub async fn busy_task_runs(c: &HaCluster, run: &str) -> Option<Vec<pb::TaskRun>> {
    let client = leader_client(c, Duration::from_secs(5)).await.ok()?;
    let trs = client.task_runs(run, false).await.ok()?;
    Some(
        trs.into_iter()
            .filter(|t| {
                t.state == pb::TaskState::Running as i32
                    || t.state == pb::TaskState::Assigned as i32
            })
            .collect(),
    )
}

/// Starts a cluster with workers (id, labels, slots) and waits until they are connected.
pub async fn cluster(cfg: HaConfig, workers: &[(&str, &str, u32)]) -> anyhow::Result<HaCluster> {
    let mut c = HaCluster::start(cfg).await?;
    for (id, labels, slots) in workers {
        c.add_worker(id, labels, *slots)?;
    }
    wait_workers(&c, workers.len()).await?;
    Ok(c)
}

/// Waits until `n` workers are connected to the leader.
pub async fn wait_workers(c: &HaCluster, n: usize) -> anyhow::Result<()> {
    baton_testkit::eventually(Duration::from_secs(30), "workers to connect", || async {
        let client = leader_client(c, Duration::from_secs(5)).await.ok()?;
        (client.workers().await.ok()?.len() >= n).then_some(())
    })
    .await
}

/// Where the result of attempt `attempt` of `run`'s unmapped task `task` lies in the
/// cluster's bucket, read from the S3 server's folder: its own object, or its record in a
/// pack (`…pack#offset+len`); `None` while it is not there.
pub fn result_location(
    c: &HaCluster,
    run: &str,
    task: &str,
    attempt: u32,
) -> anyhow::Result<Option<String>> {
    attempt_location(
        c,
        &baton_common::ids::AttemptKey {
            run: run.to_string(),
            task: task.to_string(),
            map_index: -1,
            attempt,
        },
    )
}

/// [`result_location`] of any attempt, mapped or not.
pub fn attempt_location(
    c: &HaCluster,
    attempt: &baton_common::ids::AttemptKey,
) -> anyhow::Result<Option<String>> {
    let key = attempt.result_key();
    let root = c.s3.data_dir().join("baton/cluster");
    if root.join(&key).is_file() {
        return Ok(Some(format!("s3://baton/cluster/{key}")));
    }
    let full = format!("cluster/{key}");
    let Ok(packs) = std::fs::read_dir(root.join("packs")) else {
        return Ok(None);
    };
    for entry in packs {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "pack") {
            continue;
        }
        let bytes = std::fs::read(&path)?;
        let field = |at: usize| -> Option<usize> {
            Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?) as usize)
        };
        let mut at = 0;
        while let Some(klen) = field(at) {
            let record_key = bytes.get(at + 4..at + 4 + klen);
            let Some(dlen) = field(at + 4 + klen) else {
                break;
            };
            let data_at = at + 8 + klen;
            if record_key == Some(full.as_bytes()) {
                let name = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default();
                return Ok(Some(format!(
                    "s3://baton/cluster/packs/{name}#{data_at}+{dlen}"
                )));
            }
            at = data_at + dlen;
        }
    }
    Ok(None)
}
