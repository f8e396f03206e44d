//! Cluster mode: testkit's [`HaCluster`] (a 3-member etcd cluster, an `s3s-fs` S3 server
//! holding the results, 3 scheduler replicas, each behind its own proxies) with the same two
//! workers as single-node mode, run with the scheduler's and the worker's default leases;
//! and the failover measurement (the leader killed with SIGKILL mid fan-out).

use crate::cluster::{guarded, log_tail, wait_for_workers};
use anyhow::{anyhow, bail, Context, Result};
use baton_client::Client;
use baton_proto as pb;
use baton_testkit::ha::{leader_info, HaCluster, HaConfig};
use baton_testkit::Node;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Scheduler replicas and etcd members of the benchmark's cluster.
pub const REPLICAS: usize = 3;
pub const ETCD_MEMBERS: usize = 3;

/// How long each task of the failover fan-out sleeps: short next to the failover itself,
/// so that slots are free again by the time a new leader can dispatch.
const FAILOVER_TASK_MS: u64 = 1_000;
/// Waves of tasks in the failover fan-out: the leader is killed during the first, the new
/// leader dispatches the others.
const FAILOVER_WAVES: u64 = 4;
/// How long the failover steps (a quiet moment to kill, a new leader, its first dispatch)
/// may each take before the benchmark gives up.
const FAILOVER_STEP_TIMEOUT: Duration = Duration::from_secs(120);

/// The failover fan-out: `items` builds `[0, n)`, `work` sleeps [`FAILOVER_TASK_MS`] per item.
fn failover_flow() -> String {
    format!(
        r#"
name: bench_failover
project: bench
labels: [local]
parameters:
  n:
    default: 100
tasks:
  - name: items
    builtin: range
    inputs:
      n: {{param: n}}
  - name: work
    builtin: sleep
    inputs:
      ms: {FAILOVER_TASK_MS}
      value: {{result: items}}
    map: [value]
"#
    )
}

/// The cluster's settings: production leases (the scheduler's and the worker's defaults),
/// except the leader lease, which is `leader_lease_ms`.
pub fn config(leader_lease_ms: u64) -> HaConfig {
    let sched = baton_scheduler::SchedulerConfig::default();
    HaConfig {
        schedulers: REPLICAS,
        etcd_members: ETCD_MEMBERS,
        leader_lease_ms,
        worker_lease_ms: sched.worker_lease_ms,
        adopt_grace_ms: sched.adopt_grace_ms,
        worker_leader_lease_ms: baton_worker::config::DEFAULT_LEADER_LEASE_MS,
        ..HaConfig::default()
    }
}

/// "10 s", "4.5 s".
pub fn lease_text(ms: u64) -> String {
    format!("{} s", ms as f64 / 1000.0)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// Whether process `pid` (a child of ours) has exited: gone, or a zombie not yet reaped.
fn exited(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
    }
}

/// One failover: from the SIGKILL to the new leader answering `GetLeader`, and to the first
/// task run started by the new leader (a worker's start time, in ms timestamps).
pub struct Failover {
    pub election: Duration,
    pub first_dispatch: Duration,
}

/// The running [`HaCluster`] and its workers. Dropping it stops every process; unless
/// [`HaBench::finish`] ran, the logs are copied to a folder that stays.
pub struct HaBench {
    pub cluster: HaCluster,
    worker_ids: Vec<String>,
    /// The leader when the scenarios started.
    first_leader: usize,
    finished: bool,
}

impl HaBench {
    /// Starts the cluster and two workers (labels `local` and `local,trainer`) with `slots`
    /// slots each, and waits until both are connected to the leader.
    pub async fn start(slots: u32, leader_lease_ms: u64) -> Result<(HaBench, Client)> {
        let mut cluster = HaCluster::start(config(leader_lease_ms))
            .await
            .context("cannot start the cluster (etcd, s3s-fs and the scheduler replicas)")?;
        let nonce = std::process::id();
        let mut worker_ids = Vec::new();
        for (i, labels) in ["local", "local,trainer"].iter().enumerate() {
            let id = format!("bench-{nonce}-w{}", i + 1);
            cluster.add_worker(&id, labels, slots)?;
            worker_ids.push(id);
        }
        let mut b = HaBench {
            cluster,
            worker_ids,
            first_leader: 0,
            finished: false,
        };
        // Calls are retried across a change of leader for longer than a failover takes.
        let client = Client::connect_with_token(&b.cluster.urls(), Some(b.cluster.token()))
            .await?
            .with_retry_for(FAILOVER_STEP_TIMEOUT);
        guarded(
            &|| b.check_alive(),
            wait_for_workers(&client, &b.worker_ids, b.cluster.dir.path()),
        )
        .await?;
        b.first_leader = b.leader().await?;
        Ok((b, client))
    }

    /// Where the nodes' logs are written.
    pub fn dir(&self) -> &Path {
        self.cluster.dir.path()
    }

    /// Every process that should run, with a name for messages.
    fn nodes(&self) -> Vec<(String, &Node)> {
        let c = &self.cluster;
        let mut out: Vec<(String, &Node)> = Vec::new();
        for (i, r) in c.replicas.iter().enumerate() {
            if let Some(n) = &r.node {
                out.push((format!("scheduler replica s{i}"), n));
            }
        }
        for (i, n) in c.workers.iter().enumerate() {
            let id = self.worker_ids.get(i).map(String::as_str).unwrap_or("?");
            out.push((format!("worker {id}"), n));
        }
        for i in 0..c.etcd.len() {
            let m = c.etcd.member(i);
            if let Some(n) = m.node() {
                out.push((format!("etcd member {}", m.name), n));
            }
        }
        out
    }

    /// An error naming the first process that has exited, with the end of its log.
    pub fn check_alive(&self) -> Result<()> {
        for (name, node) in self.nodes() {
            if exited(node.pid()) {
                bail!(
                    "the {name} (pid {}) exited unexpectedly\n--- last lines of {} ---\n{}",
                    node.pid(),
                    node.log.display(),
                    log_tail(&node.log, 30)
                );
            }
        }
        Ok(())
    }

    /// The replica that leads now.
    pub async fn leader(&self) -> Result<usize> {
        Ok(self
            .cluster
            .wait_leader(Duration::from_secs(60), None)
            .await?
            .0)
    }

    /// The leader's pid, and whether it is still the replica that led at the start.
    pub async fn leader_pid(&self) -> Result<(u32, bool)> {
        let i = self.leader().await?;
        let node = self.cluster.replicas[i]
            .node
            .as_ref()
            .ok_or_else(|| anyhow!("the leader s{i} has no process"))?;
        Ok((node.pid() as u32, i == self.first_leader))
    }

    /// Runs a fan-out of `FAILOVER_WAVES` x `total_slots` sleeping tasks, kills the leader
    /// with SIGKILL while the first wave runs (at a moment when no dispatch is under way, so
    /// that anything started after the kill was dispatched by the new leader), measures
    /// the failover, waits for the run to complete, and starts the killed replica again
    /// (as a follower) so that the next round has every replica.
    pub async fn failover(
        &mut self,
        client: &Client,
        total_slots: u64,
        round: usize,
        run_timeout: Duration,
    ) -> Result<Failover> {
        let n = FAILOVER_WAVES * total_slots;
        let old = self.leader().await?;
        let key = format!("bench-failover-{}-{round}", std::process::id());
        let params = BTreeMap::from([("n".to_string(), n.to_string())]);
        let created = guarded(&|| self.check_alive(), async {
            Ok(client.run_source(failover_flow(), params, key).await?)
        })
        .await
        .context("CreateRun of the failover fan-out failed")?;
        let run = created
            .run
            .ok_or_else(|| anyhow!("CreateRun answered without a run"))?;

        // A quiet moment: every slot busy, nothing started for 100 ms, and the earliest of
        // the running tasks at least 300 ms from its end.
        let deadline = Instant::now() + FAILOVER_STEP_TIMEOUT;
        loop {
            let trs = guarded(&|| self.check_alive(), async {
                Ok(client.task_runs(&run.id, false).await?)
            })
            .await?;
            let running: Vec<i64> = trs
                .iter()
                .filter(|t| {
                    t.task == "work"
                        && matches!(
                            pb::TaskState::try_from(t.state),
                            Ok(pb::TaskState::Assigned | pb::TaskState::Running)
                        )
                })
                .map(|t| t.started_ms)
                .collect();
            let now = now_ms();
            if running.len() as u64 == total_slots
                && running.iter().all(|&s| s > 0 && s <= now - 100)
                && running
                    .iter()
                    .all(|&s| s + FAILOVER_TASK_MS as i64 >= now + 300)
            {
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "no quiet moment to kill the leader within {}s ({} of {total_slots} slots busy)",
                    FAILOVER_STEP_TIMEOUT.as_secs(),
                    running.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        let kill_ms = now_ms();
        let killed = Instant::now();
        self.cluster.kill9_scheduler(old);
        let (new, _) = self
            .cluster
            .wait_leader(FAILOVER_STEP_TIMEOUT, Some(old))
            .await?;
        let election = killed.elapsed();

        let deadline = Instant::now() + FAILOVER_STEP_TIMEOUT;
        let first_ms = loop {
            let trs = guarded(&|| self.check_alive(), async {
                Ok(client.task_runs(&run.id, false).await?)
            })
            .await?;
            let first = trs
                .iter()
                .flat_map(|t| {
                    let own = (t.started_ms > 0).then_some(t.started_ms);
                    t.attempts.iter().map(|a| a.started_ms).chain(own)
                })
                .filter(|&s| s >= kill_ms)
                .min();
            if let Some(first) = first {
                break first;
            }
            if Instant::now() >= deadline {
                bail!(
                    "the new leader s{new} started no task within {}s of the old one's death",
                    FAILOVER_STEP_TIMEOUT.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let first_dispatch = Duration::from_millis((first_ms - kill_ms).max(0) as u64);

        let done = guarded(&|| self.check_alive(), async {
            tokio::time::timeout(run_timeout, client.wait(&run.id))
                .await
                .map_err(|_| {
                    anyhow!(
                        "the failover run {} was not over after {}s (hang?)",
                        run.id,
                        run_timeout.as_secs()
                    )
                })?
                .with_context(|| format!("watching run {} failed", run.id))
        })
        .await?;
        if done.state != pb::RunState::Completed as i32 || u64::from(done.tasks_done) != n + 1 {
            bail!(
                "the failover run {} ended {} with {}/{} task runs done: {}",
                done.id,
                baton_common::state::run_state_name(done.state),
                done.tasks_done,
                done.tasks_total,
                done.error
            );
        }

        self.cluster.restart_scheduler(old)?;
        let url = self.cluster.replicas[old].url();
        baton_testkit::eventually(
            Duration::from_secs(60),
            "the killed replica to answer again",
            || {
                let url = url.clone();
                async move { leader_info(&url).await.map(|_| ()) }
            },
        )
        .await?;
        Ok(Failover {
            election,
            first_dispatch,
        })
    }

    /// etcd's database size and the part of it in use, in MiB, the largest of the members.
    pub async fn etcd_db_mib(&self) -> Result<(f64, f64)> {
        let mut most = (0.0f64, 0.0f64);
        for i in 0..self.cluster.etcd.len() {
            let mut c = self.cluster.etcd.member_client(i).await?;
            let s = c.status().await?;
            let mib = |b: i64| b as f64 / (1024.0 * 1024.0);
            most = (
                most.0.max(mib(s.db_size())),
                most.1.max(mib(s.raft_used_db_size())),
            );
        }
        Ok(most)
    }

    /// Copies every node's log into a new folder that stays, and returns it.
    fn keep_logs(&self) -> Result<PathBuf> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let kept = std::env::temp_dir().join(format!(
            "baton-bench-cluster-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&kept)
            .with_context(|| format!("cannot create {}", kept.display()))?;
        let mut logs: Vec<PathBuf> = std::fs::read_dir(self.dir())?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        for i in 0..self.cluster.etcd.len() {
            logs.push(self.cluster.etcd.member(i).log.clone());
        }
        for log in logs {
            if let Some(name) = log.file_name() {
                let _ = std::fs::copy(&log, kept.join(name));
            }
        }
        std::fs::write(kept.join("s3s-fs.log"), self.cluster.s3.logs())?;
        Ok(kept)
    }

    /// Stops the cluster; with `keep`, its logs are copied to a folder that stays first.
    pub fn finish(mut self, keep: bool) -> Result<()> {
        self.finished = true;
        if keep {
            let kept = self.keep_logs()?;
            eprintln!("baton-bench: logs kept in {}", kept.display());
        }
        Ok(())
    }
}

impl Drop for HaBench {
    fn drop(&mut self) {
        if !self.finished {
            match self.keep_logs() {
                Ok(kept) => eprintln!(
                    "baton-bench: processes stopped; logs kept in {}",
                    kept.display()
                ),
                Err(e) => eprintln!("baton-bench: processes stopped; cannot keep the logs: {e:#}"),
            }
        }
    }
}
