//! `baton-bench`: starts a scheduler and two workers as separate processes (the binaries
//! next to this one) and measures fan-out throughput, chain latency, the ridge sweep's wall
//! time and the scheduler's peak memory. With `--cluster` the scheduler is testkit's
//! [`baton_testkit::ha::HaCluster`] instead (3 replicas, a 3-member etcd cluster, results in
//! S3), and the failover time is measured too. It reports figures; it asserts nothing about
//! speed, and exits non-zero only when a run fails or a process dies.

mod cluster;
mod ha;
mod report;

use anyhow::{anyhow, bail, Context, Result};
use baton_client::Client;
use baton_common::state::{run_state_name, task_state_name};
use baton_proto as pb;
use clap::Parser;
use cluster::{guarded, Cluster};
use ha::HaBench;
use report::{percentile, ClusterSettings, Figure, Report, Settings};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Benchmarks a local baton cluster: one scheduler and two worker processes, or with
/// --cluster three scheduler replicas on a three-member etcd cluster with results in S3.
///
/// The plain-text report goes to stdout; with --json it goes to stderr and a JSON object
/// goes to stdout instead.
#[derive(Parser, Debug)]
#[command(name = "baton-bench", version)]
struct Args {
    /// Cluster mode: 3 scheduler replicas, a 3-member etcd cluster and an S3 server for the
    /// results (etcd and s3s-fs as installed by scripts/install-test-servers.sh); also
    /// measures the failover after the leader is killed.
    #[arg(long)]
    cluster: bool,
    /// Cluster mode: the scheduler replicas' leader lease in ms [default: the scheduler's].
    #[arg(long, requires = "cluster")]
    leader_lease_ms: Option<u64>,
    /// Task slots of each of the two workers.
    #[arg(long, default_value_t = 64)]
    slots: u32,
    /// How many times each scenario runs; the report gives the median, min and max.
    #[arg(long)]
    repeat: Option<usize>,
    /// Small sizes for CI: fan-outs of 1,000 and 5,000, a chain of 100, repeat 1.
    #[arg(long)]
    quick: bool,
    /// The ridge sweep flow file [default: examples/ridge_sweep.yaml].
    #[arg(long)]
    ridge_file: Option<PathBuf>,
    /// Also print the report as a JSON object (on stdout; the text then goes to stderr).
    #[arg(long)]
    json: bool,
    /// A run not over after this many seconds counts as failed (a hang).
    #[arg(long, default_value_t = 1800)]
    run_timeout_s: u64,
    /// Single node: start the scheduler with --no-fsync (acknowledged state survives a
    /// crash of the process, not a power loss) instead of the durable default.
    #[arg(long, conflicts_with = "cluster")]
    no_fsync: bool,
    /// Single node: start the scheduler with --no-run-ahead (every chained task is
    /// dispatched on its own), to compare.
    #[arg(long, conflicts_with = "cluster")]
    no_run_ahead: bool,
    /// Keep the temporary folder with the processes' logs and the scheduler's state.
    #[arg(long)]
    keep: bool,
    /// Single node: export traces (OTLP/gRPC, the default sampling) from the scheduler and
    /// workers to a receiver in the benchmark's process, to measure what tracing costs.
    #[arg(long, conflicts_with = "cluster")]
    otlp: bool,
    /// Also measure memory over history: the scheduler's memory after each of 10 fan-outs
    /// of 100,000 tasks, then the peak through a fan-out of 1,000,000 (with --quick: 3 of
    /// 5,000, then 20,000). Runs first, on a fresh scheduler, so that the peak is its own.
    /// With --cluster: the leader's memory and etcd's database size after the 10 fan-outs.
    #[arg(long)]
    memory: bool,
}

/// The fan-out flow: `items` builds `[0, n)`, `work` runs one no-op per item.
const FANOUT_FLOW: &str = r#"
name: bench_fanout
project: bench
labels: [local]
parameters:
  n:
    default: 1000
    description: how many no-op tasks
tasks:
  - name: items
    builtin: range
    inputs:
      n: {param: n}
  - name: work
    builtin: noop
    inputs:
      x: {result: items}
    map: [x]
"#;

/// How long the cluster is left alone before a latency scenario.
const SETTLE: Duration = Duration::from_secs(2);

/// A flow of `n` no-op tasks, each after the previous one.
fn chain_flow(n: usize) -> Result<String> {
    let width = n.saturating_sub(1).to_string().len();
    let name = |i: usize| format!("t{i:0width$}");
    let tasks: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            if i == 0 {
                json!({"name": name(i), "builtin": "noop"})
            } else {
                json!({"name": name(i), "builtin": "noop", "after": [name(i - 1)]})
            }
        })
        .collect();
    let flow = json!({
        "name": format!("bench_chain_{n}"),
        "project": "bench",
        "labels": ["local"],
        "tasks": tasks,
    });
    Ok(serde_json::to_string(&flow)?)
}

fn default_ridge_file() -> PathBuf {
    let local = PathBuf::from("examples/ridge_sweep.yaml");
    if local.is_file() {
        local
    } else {
        PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/ridge_sweep.yaml"
        ))
    }
}

/// The processes under test.
enum Nodes {
    Single(Cluster),
    Ha(Box<HaBench>),
}

impl Nodes {
    fn check_alive(&self) -> Result<()> {
        match self {
            Nodes::Single(c) => c.check_alive(),
            Nodes::Ha(h) => h.check_alive(),
        }
    }

    /// The (leading) scheduler's pid, and whether it led through every scenario.
    async fn scheduler_pid(&self) -> Result<(u32, bool)> {
        match self {
            Nodes::Single(c) => Ok((c.scheduler_pid(), true)),
            Nodes::Ha(h) => h.leader_pid().await,
        }
    }

    fn finish(self, keep: bool) -> Result<()> {
        match self {
            Nodes::Single(c) => c.finish(keep),
            Nodes::Ha(h) => h.finish(keep),
        }
    }

    /// Cluster mode: etcd's database size and the part of it in use, in MiB (the largest
    /// over the members).
    async fn etcd_db_mib(&self) -> Result<Option<(f64, f64)>> {
        match self {
            Nodes::Single(_) => Ok(None),
            Nodes::Ha(h) => h.etcd_db_mib().await.map(Some),
        }
    }
}

/// Fan-outs up to this size print their timeline (their task runs are listed in one call).
const TIMELINE_MAX: u64 = 20_000;

struct Bench<'a> {
    alive: &'a (dyn Fn() -> Result<()> + Sync),
    client: Client,
    run_timeout: Duration,
}

/// A finished run and the client-side time from CreateRun to its end.
struct Finished {
    run: pb::FlowRun,
    wall: Duration,
    /// Unix µs on this machine's clock (the scheduler's too): when CreateRun was called,
    /// and when the client saw the run's end.
    asked_us: i64,
    seen_us: i64,
}

impl Finished {
    /// The run's time from creation to end as the scheduler recorded them.
    fn recorded(&self) -> Duration {
        Duration::from_micros(u64::try_from(self.run.ended_us - self.run.created_us).unwrap_or(0))
    }
}

/// A chain run's figures.
struct Chain {
    /// Client-side, from CreateRun to the end.
    wall: Duration,
    /// From the CreateRun call to the run's creation, and from its end to the client seeing
    /// it (ms): what the wall time holds beyond the run itself.
    create_wait: f64,
    end_wait: f64,
    /// From creation to end as the scheduler recorded them.
    recorded: Duration,
    /// Each task's end after the previous task's end (ms).
    gaps: Vec<f64>,
    /// Each task's dispatch wait: assigned after ready (ms).
    waits: Vec<f64>,
    /// Each task's phases after it was assigned (ms): started after assigned (to the
    /// worker), ended after started (on the worker), and the next task's ready after this
    /// one's end (the report back and the commit).
    phases: [Vec<f64>; 3],
}

impl Bench<'_> {
    /// Starts a run of `source`, waits for it to end and fails unless it completed.
    async fn run(&self, source: &str, params: BTreeMap<String, String>) -> Result<Finished> {
        guarded(self.alive, async {
            let t0 = Instant::now();
            let asked_us = baton_common::time::now_us();
            let created = self
                .client
                .run_source(source.to_string(), params, String::new())
                .await
                .context("CreateRun failed")?;
            let run = created
                .run
                .ok_or_else(|| anyhow!("CreateRun answered without a run"))?;
            let run = tokio::time::timeout(self.run_timeout, self.client.wait(&run.id))
                .await
                .map_err(|_| {
                    anyhow!(
                        "run {} of {}/{} was not over after {}s (hang?)",
                        run.id,
                        run.project,
                        run.flow,
                        self.run_timeout.as_secs()
                    )
                })?
                .with_context(|| format!("watching run {} failed", run.id))?;
            let wall = t0.elapsed();
            if run.state != pb::RunState::Completed as i32 {
                bail!("{}", self.failure(&run).await);
            }
            Ok(Finished {
                run,
                wall,
                asked_us,
                seen_us: baton_common::time::now_us(),
            })
        })
        .await
    }

    /// Describes a run that did not complete, with its first unsuccessful task runs.
    async fn failure(&self, run: &pb::FlowRun) -> String {
        let mut msg = format!(
            "run {} of {}/{} ended {}: {} ({}/{} task runs done)",
            run.id,
            run.project,
            run.flow,
            run_state_name(run.state),
            if run.error.is_empty() {
                "no error given"
            } else {
                &run.error
            },
            run.tasks_done,
            run.tasks_total
        );
        if let Ok(trs) = self.client.task_runs(&run.id, false).await {
            let bad = trs
                .iter()
                .filter(|t| t.state != pb::TaskState::Completed as i32)
                .take(5);
            for t in bad {
                msg.push_str(&format!(
                    "\n  {}[{}]: {} {}",
                    t.task,
                    t.map_index,
                    task_state_name(t.state),
                    t.error
                ));
            }
        }
        msg
    }

    async fn fanout(&self, n: u64) -> Result<Finished> {
        let params = BTreeMap::from([("n".to_string(), n.to_string())]);
        let done = self.run(FANOUT_FLOW, params).await?;
        // `items` and one `work` task run per item, all done. (The run's counters, not
        // ListTaskRuns: that answer is over the scheduler's 16 MiB message limit at 100k.)
        let (total, finished) = (
            u64::from(done.run.tasks_total),
            u64::from(done.run.tasks_done),
        );
        if total != n + 1 || finished != total {
            bail!(
                "run {} completed with {finished}/{total} task runs done; expected {} (`items` and {n} `work`)",
                done.run.id,
                n + 1
            );
        }
        if n <= TIMELINE_MAX {
            self.timeline(&done).await?;
        }
        Ok(done)
    }

    /// Where a fan-out's time went, from its task runs' microsecond timings: `items`, the
    /// first and last `work` task, and a `work` task's time from assignment to start (the
    /// commit that made it, then the trip to the worker) and from start to its end as the
    /// scheduler recorded it (the worker, its result's upload, the report).
    async fn timeline(&self, done: &Finished) -> Result<()> {
        let trs = guarded(self.alive, async {
            Ok(self.client.task_runs(&done.run.id, false).await?)
        })
        .await?;
        let at = |us: i64| (us - done.run.created_us) as f64 / 1e3;
        let work: Vec<&pb::TaskRun> = trs.iter().filter(|t| t.task == "work").collect();
        let Some(items) = trs.iter().find(|t| t.task == "items") else {
            return Ok(());
        };
        let first = work.iter().map(|t| t.assigned_us).min().unwrap_or(0);
        let last = work.iter().map(|t| t.ended_us).max().unwrap_or(0);
        let to_start: Vec<f64> = work
            .iter()
            .map(|t| (t.started_us - t.assigned_us) as f64 / 1e3)
            .collect();
        let to_end: Vec<f64> = work
            .iter()
            .map(|t| (t.ended_us - t.started_us) as f64 / 1e3)
            .collect();
        progress(format!(
            "  timeline (ms after creation): items assigned {:.1}, ended {:.1}; first work assigned {:.1}; last work ended {:.1}; run ended {:.1}; work assigned -> started p50 {:.2} ms, started -> ended p50 {:.2} ms",
            at(items.assigned_us),
            at(items.ended_us),
            at(first),
            at(last),
            at(done.run.ended_us),
            percentile(&to_start, 50.0).unwrap_or(0.0),
            percentile(&to_end, 50.0).unwrap_or(0.0),
        ));
        Ok(())
    }

    /// The chain's wall time and, from the scheduler's microsecond timings, each task's
    /// latency (its end after the previous one's, in ms) and its dispatch wait (assigned
    /// after ready, in ms).
    async fn chain(&self, source: &str, n: usize) -> Result<Chain> {
        let done = self.run(source, BTreeMap::new()).await?;
        let trs = guarded(self.alive, async {
            Ok(self.client.task_runs(&done.run.id, false).await?)
        })
        .await?;
        let mut ends: Vec<Option<i64>> = vec![None; n];
        let mut readies: Vec<i64> = vec![0; n];
        let mut waits = Vec::with_capacity(n);
        let mut phases: [Vec<f64>; 3] = Default::default();
        for t in &trs {
            let i: usize = t
                .task
                .strip_prefix('t')
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| anyhow!("unexpected task run `{}` in the chain", t.task))?;
            let slot = ends
                .get_mut(i)
                .ok_or_else(|| anyhow!("unexpected task run `{}` in the chain", t.task))?;
            if t.state != pb::TaskState::Completed as i32 || t.ended_us <= 0 {
                bail!(
                    "run {} completed, but chain task {} is {} (ended_us {})",
                    done.run.id,
                    t.task,
                    task_state_name(t.state),
                    t.ended_us
                );
            }
            *slot = Some(t.ended_us);
            readies[i] = t.ready_us;
            waits.push((t.assigned_us - t.ready_us) as f64 / 1000.0);
            phases[0].push((t.started_us - t.assigned_us) as f64 / 1000.0);
            phases[1].push((t.ended_us - t.started_us) as f64 / 1000.0);
        }
        let ends: Vec<i64> = ends
            .into_iter()
            .enumerate()
            .map(|(i, e)| {
                e.ok_or_else(|| anyhow!("run {}: no task run for chain task {i}", done.run.id))
            })
            .collect::<Result<_>>()?;
        let gaps = ends
            .windows(2)
            .map(|w| (w[1] - w[0]) as f64 / 1000.0)
            .collect();
        phases[2] = ends
            .iter()
            .zip(readies.iter().skip(1))
            .map(|(end, ready)| (ready - end) as f64 / 1000.0)
            .collect();
        let recorded = Duration::from_micros(
            u64::try_from(done.run.ended_us - done.run.created_us).unwrap_or(0),
        );
        Ok(Chain {
            wall: done.wall,
            create_wait: (done.run.created_us - done.asked_us) as f64 / 1000.0,
            end_wait: (done.seen_us - done.run.ended_us) as f64 / 1000.0,
            recorded,
            gaps,
            waits,
            phases,
        })
    }
}

/// Where a run's time went, task by task in the order they became ready: the latest of
/// each task's runs, in ms since the run's creation: ready, assigned, started and ended.
fn stages(trs: &[pb::TaskRun], created_us: i64) -> String {
    let mut by_task: BTreeMap<&str, [i64; 4]> = BTreeMap::new();
    for t in trs {
        let at = [t.ready_us, t.assigned_us, t.started_us, t.ended_us];
        let e = by_task.entry(t.task.as_str()).or_insert([0; 4]);
        for (m, v) in e.iter_mut().zip(at) {
            *m = (*m).max(v);
        }
    }
    let mut rows: Vec<(&str, [i64; 4])> = by_task.into_iter().collect();
    rows.sort_by_key(|(_, at)| at[0]);
    rows.iter()
        .map(|(task, at)| {
            let ms = at.map(|v| (v - created_us) as f64 / 1000.0);
            format!("{task} {:.1}/{:.1}/{:.1}/{:.1}", ms[0], ms[1], ms[2], ms[3])
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Memory over history: the scheduler's resident memory after each of several equal
/// fan-outs (a leader whose memory grows with the runs it finished shows it here), then its
/// peak through one very large fan-out.
async fn memory(b: &Bench<'_>, nodes: &Nodes, pid: u32, quick: bool) -> Result<Vec<Figure>> {
    let (rounds, n, big) = if quick {
        (3, 5_000, 20_000)
    } else {
        (10, 100_000, 1_000_000)
    };
    let rss = || {
        cluster::memory_mib(pid)
            .ok_or_else(|| anyhow!("cannot read /proc/{pid}/status for the scheduler's memory"))
    };
    let mut first = Figure::new(
        "memory_after_first_fanout_mib",
        &format!("scheduler memory (VmRSS, settled) after the first of {rounds} fan-outs of {n}"),
        "MiB",
        1,
    );
    let mut last = Figure::new(
        "memory_after_last_fanout_mib",
        &format!("scheduler memory (VmRSS, settled) after the last of {rounds} fan-outs of {n}"),
        "MiB",
        1,
    );
    let mut ratio = Figure::new(
        "memory_growth_ratio",
        &format!("scheduler memory after {rounds} fan-outs of {n} / after the first"),
        "x",
        2,
    );
    // The finished run leaves memory once it is archived, just after it ends, and the state
    // log's compaction comes and goes: the settled figure is the least over two seconds.
    let settled = |samples: usize| async move {
        let mut least = f64::MAX;
        for _ in 0..samples {
            tokio::time::sleep(Duration::from_millis(100)).await;
            least = least.min(rss()?.1);
        }
        Ok::<f64, anyhow::Error>(least)
    };
    let mut samples = Vec::with_capacity(rounds);
    for r in 1..=rounds {
        let d = b.fanout(n).await?.wall;
        let now = settled(20).await?;
        progress(format!(
            "memory: fan-out {n} #{r}: {:.3} s, scheduler at {now:.1} MiB",
            d.as_secs_f64()
        ));
        samples.push(now);
    }
    if let (Some(&a), Some(&z)) = (samples.first(), samples.last()) {
        first.samples.push(a);
        last.samples.push(z);
        ratio.samples.push(z / a.max(1.0));
    }
    if let Some((size, used)) = nodes.etcd_db_mib().await? {
        // Cluster mode: what the runs left in etcd (its default quota is 2 GiB), and no
        // fan-out of a million (its records would be the figure, not the scheduler).
        progress(format!(
            "memory: etcd's database after {rounds} fan-outs of {n}: {size:.1} MiB, {used:.1} MiB in use"
        ));
        let mut db = Figure::new(
            "etcd_db_size_mib",
            &format!("etcd database size after {rounds} fan-outs of {n} (quota 2,048 MiB)"),
            "MiB",
            1,
        );
        let mut in_use = Figure::new(
            "etcd_db_in_use_mib",
            &format!("etcd database in use after {rounds} fan-outs of {n}"),
            "MiB",
            1,
        );
        db.samples.push(size);
        in_use.samples.push(used);
        return Ok(vec![first, last, ratio, db, in_use]);
    }
    let mut big_rate = Figure::new(
        &format!("fanout_{big}_tasks_per_s"),
        &format!("fan-out of {big} no-op tasks: throughput"),
        "tasks/s",
        0,
    );
    let mut big_peak = Figure::new(
        &format!("fanout_{big}_peak_rss_mib"),
        &format!("scheduler peak memory (VmHWM) through a fan-out of {big}"),
        "MiB",
        1,
    );
    let mut after = Figure::new(
        &format!("fanout_{big}_rss_after_mib"),
        &format!("scheduler memory (VmRSS, least over 10 s) after the fan-out of {big}"),
        "MiB",
        1,
    );
    let d = b.fanout(big).await?.wall;
    // A million task runs take seconds to archive before they leave memory.
    let now = settled(100).await?;
    let (hwm, _) = rss()?;
    progress(format!(
        "memory: fan-out {big}: {:.3} s, {:.0} tasks/s, scheduler peak {hwm:.1} MiB, now {now:.1} MiB",
        d.as_secs_f64(),
        big as f64 / d.as_secs_f64()
    ));
    big_rate.samples.push(big as f64 / d.as_secs_f64());
    big_peak.samples.push(hwm);
    after.samples.push(now);
    Ok(vec![first, last, ratio, big_rate, big_peak, after])
}

fn progress(msg: String) {
    eprintln!("baton-bench: {msg}");
}

async fn bench(args: &Args) -> Result<Report> {
    let repeat = args.repeat.unwrap_or(if args.quick { 1 } else { 3 });
    if repeat == 0 {
        bail!("--repeat must be at least 1");
    }
    if args.slots == 0 {
        bail!("--slots must be at least 1");
    }
    let (fanouts, chain_len): (Vec<u64>, usize) = if args.quick {
        (vec![1_000, 5_000], 100)
    } else {
        (vec![10_000, 100_000], 1_000)
    };
    let ridge_file = args.ridge_file.clone().unwrap_or_else(default_ridge_file);
    let ridge_source = std::fs::read_to_string(&ridge_file)
        .with_context(|| format!("cannot read the ridge sweep flow {}", ridge_file.display()))?;
    let chain_source = chain_flow(chain_len)?;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);

    let leader_lease_ms = args
        .leader_lease_ms
        .unwrap_or(baton_scheduler::SchedulerConfig::default().leader_lease_ms);
    let receiver = if args.otlp {
        Some(baton_testkit::otlp::Receiver::start().await?)
    } else {
        None
    };
    let (mut nodes, client) = if args.cluster {
        progress(format!(
            "starting {} etcd members, s3s-fs, {} scheduler replicas (leader lease {}) and 2 workers ({} slots each)",
            ha::ETCD_MEMBERS,
            ha::REPLICAS,
            ha::lease_text(leader_lease_ms),
            args.slots
        ));
        let (h, client) = HaBench::start(args.slots, leader_lease_ms).await?;
        progress(format!("cluster up; logs in {}", h.dir().display()));
        (Nodes::Ha(Box::new(h)), client)
    } else {
        progress(format!(
            "starting a scheduler ({}) and 2 workers ({} slots each)",
            if args.no_fsync {
                "--no-fsync"
            } else {
                "fsync on"
            },
            args.slots
        ));
        let mut flags = Vec::new();
        if args.no_fsync {
            flags.push("--no-fsync");
        }
        if args.no_run_ahead {
            flags.push("--no-run-ahead");
        }
        let (cluster, client) = Cluster::start(args.slots, &flags, receiver.as_ref()).await?;
        progress(format!("cluster up; logs in {}", cluster.dir().display()));
        (Nodes::Single(cluster), client)
    };
    let run_timeout = Duration::from_secs(args.run_timeout_s);
    let alive = || nodes.check_alive();
    let b = Bench {
        alive: &alive,
        client: client.clone(),
        run_timeout,
    };

    let mut figures = Vec::new();
    if args.memory {
        let (pid, _) = nodes.scheduler_pid().await?;
        figures.extend(memory(&b, &nodes, pid, args.quick).await?);
    }
    for &n in &fanouts {
        let mut rate = Figure::new(
            &format!("fanout_{n}_tasks_per_s"),
            &format!("fan-out of {n} no-op tasks: throughput"),
            "tasks/s",
            0,
        );
        let mut wall = Figure::new(
            &format!("fanout_{n}_wall_s"),
            &format!("fan-out of {n} no-op tasks: wall time"),
            "s",
            3,
        );
        for r in 1..=repeat {
            let done = b.fanout(n).await?;
            let d = done.wall.as_secs_f64();
            progress(format!(
                "fan-out {n} #{r}: {d:.3} s, {:.0} tasks/s (CreateRun called -> created {:.1} ms, created -> ended {:.3} s, ended -> client saw it {:.1} ms)",
                n as f64 / d,
                (done.run.created_us - done.asked_us) as f64 / 1e3,
                done.recorded().as_secs_f64(),
                (done.seen_us - done.run.ended_us) as f64 / 1e3,
            ));
            rate.samples.push(n as f64 / d);
            wall.samples.push(d);
        }
        figures.push(rate);
        figures.push(wall);
    }

    let mut p50 = Figure::new(
        &format!("chain_{chain_len}_latency_p50_ms"),
        &format!("chain of {chain_len} no-op tasks: per-task latency p50 (end to end)"),
        "ms",
        3,
    );
    let mut p99 = Figure::new(
        &format!("chain_{chain_len}_latency_p99_ms"),
        &format!("chain of {chain_len} no-op tasks: per-task latency p99 (end to end)"),
        "ms",
        3,
    );
    let mut per_task = Figure::new(
        &format!("chain_{chain_len}_per_task_us"),
        &format!("chain of {chain_len} no-op tasks: scheduler-recorded run time / tasks"),
        "µs",
        0,
    );
    let mut wait50 = Figure::new(
        &format!("chain_{chain_len}_dispatch_wait_p50_ms"),
        &format!("chain of {chain_len} no-op tasks: dispatch wait p50 (ready -> assigned)"),
        "ms",
        3,
    );
    let mut wait99 = Figure::new(
        &format!("chain_{chain_len}_dispatch_wait_p99_ms"),
        &format!("chain of {chain_len} no-op tasks: dispatch wait p99 (ready -> assigned)"),
        "ms",
        3,
    );
    let mut phases = [
        ("to_worker", "to the worker p50 (assigned -> started)"),
        ("on_worker", "on the worker p50 (started -> ended)"),
        ("back", "back to the next task p50 (ended -> next ready)"),
    ]
    .map(|(id, what)| {
        Figure::new(
            &format!("chain_{chain_len}_{id}_p50_ms"),
            &format!("chain of {chain_len} no-op tasks: {what}"),
            "ms",
            3,
        )
    });
    let mut create_wait = Figure::new(
        &format!("chain_{chain_len}_create_wait_ms"),
        &format!("chain of {chain_len} no-op tasks: CreateRun called -> run created"),
        "ms",
        3,
    );
    let mut end_wait = Figure::new(
        &format!("chain_{chain_len}_end_wait_ms"),
        &format!("chain of {chain_len} no-op tasks: run ended -> client saw it"),
        "ms",
        3,
    );
    let mut chain_wall = Figure::new(
        &format!("chain_{chain_len}_wall_s"),
        &format!("chain of {chain_len} no-op tasks: wall time"),
        "s",
        3,
    );
    let mut mean = Figure::new(
        &format!("chain_{chain_len}_latency_mean_ms"),
        &format!("chain of {chain_len} no-op tasks: per-task latency mean (wall / tasks)"),
        "ms",
        3,
    );
    tokio::time::sleep(SETTLE).await;
    for r in 1..=repeat {
        let c = b.chain(&chain_source, chain_len).await?;
        let wall = c.wall;
        mean.samples
            .push(wall.as_secs_f64() * 1000.0 / chain_len.max(1) as f64);
        let (q50, q99) = (
            percentile(&c.gaps, 50.0).unwrap_or(0.0),
            percentile(&c.gaps, 99.0).unwrap_or(0.0),
        );
        let us = c.recorded.as_secs_f64() * 1e6 / chain_len.max(1) as f64;
        progress(format!(
            "chain {chain_len} #{r}: {:.3} s, {us:.0} µs a task as recorded, p50 {q50:.3} ms, p99 {q99:.3} ms",
            wall.as_secs_f64()
        ));
        p50.samples.push(q50);
        p99.samples.push(q99);
        per_task.samples.push(us);
        wait50
            .samples
            .push(percentile(&c.waits, 50.0).unwrap_or(0.0));
        wait99
            .samples
            .push(percentile(&c.waits, 99.0).unwrap_or(0.0));
        chain_wall.samples.push(wall.as_secs_f64());
        create_wait.samples.push(c.create_wait);
        end_wait.samples.push(c.end_wait);
        for (figure, values) in phases.iter_mut().zip(&c.phases) {
            figure.samples.push(percentile(values, 50.0).unwrap_or(0.0));
        }
    }
    figures.extend([p50, p99, per_task, wait50, wait99]);
    figures.extend(phases);
    figures.extend([mean, chain_wall, create_wait, end_wait]);

    let mut ridge = Figure::new("ridge_sweep_wall_s", "ridge sweep: wall time", "s", 3);
    let mut ridge_recorded = Figure::new(
        "ridge_sweep_warm_ms",
        "ridge sweep, warm: creation to end as the scheduler records them",
        "ms",
        2,
    );
    // What the runs before left to do in the background (archiving a thousand-task run,
    // compacting the state log) is over before the sweeps; the first sweep warms up
    // (workers' first dataset, page cache); the rest are measured.
    tokio::time::sleep(SETTLE).await;
    b.run(&ridge_source, BTreeMap::new()).await?;
    for r in 1..=repeat {
        let done = b.run(&ridge_source, BTreeMap::new()).await?;
        progress(format!(
            "ridge sweep #{r}: {:.3} s, {:.2} ms as recorded ({} task runs)",
            done.wall.as_secs_f64(),
            done.recorded().as_secs_f64() * 1000.0,
            done.run.tasks_total
        ));
        ridge.samples.push(done.wall.as_secs_f64());
        ridge_recorded
            .samples
            .push(done.recorded().as_secs_f64() * 1000.0);
        let trs = guarded(b.alive, async {
            Ok(b.client.task_runs(&done.run.id, false).await?)
        })
        .await?;
        progress(format!(
            "ridge sweep #{r} by task: {}",
            stages(&trs, done.run.created_us)
        ));
    }
    figures.extend([ridge, ridge_recorded]);

    drop(b);
    nodes.check_alive()?;
    let which = if args.cluster {
        "leading scheduler"
    } else {
        "scheduler"
    };
    let mut peak = Figure::new(
        "scheduler_peak_rss_mib",
        &format!("{which} peak memory (VmHWM)"),
        "MiB",
        1,
    );
    let mut rss = Figure::new(
        "scheduler_rss_mib",
        &format!("{which} memory at the end (VmRSS)"),
        "MiB",
        1,
    );
    let (pid, led_throughout) = nodes.scheduler_pid().await?;
    if !led_throughout {
        progress(
            "the leader changed during the scenarios: its memory covers only part of them".into(),
        );
    }
    match cluster::memory_mib(pid) {
        Some((hwm, now)) => {
            peak.samples.push(hwm);
            rss.samples.push(now);
        }
        None => progress(format!(
            "cannot read /proc/{pid}/status; memory not reported"
        )),
    }
    figures.extend([peak, rss]);

    if let Nodes::Ha(h) = &mut nodes {
        let lease = ha::lease_text(leader_lease_ms);
        let mut election = Figure::new(
            "failover_election_s",
            &format!("failover (leader lease {lease}): kill -9 -> new leader answers GetLeader"),
            "s",
            2,
        );
        let mut dispatch = Figure::new(
            "failover_first_dispatch_s",
            &format!(
                "failover (leader lease {lease}): kill -9 -> first task started by new leader"
            ),
            "s",
            2,
        );
        let total_slots = 2 * u64::from(args.slots);
        for r in 1..=repeat {
            let f = h.failover(&client, total_slots, r, run_timeout).await?;
            progress(format!(
                "failover #{r}: new leader after {:.2} s, first task started {:.2} s after the kill",
                f.election.as_secs_f64(),
                f.first_dispatch.as_secs_f64()
            ));
            election.samples.push(f.election.as_secs_f64());
            dispatch.samples.push(f.first_dispatch.as_secs_f64());
        }
        figures.extend([election, dispatch]);
    }

    nodes.finish(args.keep)?;
    Ok(Report {
        settings: Settings {
            mode: if args.quick { "quick" } else { "full" },
            build: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
            slots: args.slots,
            workers: 2,
            repeat,
            cores,
            fanouts,
            chain: chain_len,
            ridge_file: ridge_file.display().to_string(),
            fsync: args.cluster || !args.no_fsync,
            run_ahead: !args.no_run_ahead,
            spans: receiver.as_ref().map(|r| r.spans().len()),
            cluster: args.cluster.then_some(ClusterSettings {
                replicas: ha::REPLICAS,
                etcd_members: ha::ETCD_MEMBERS,
                leader_lease_ms,
            }),
        },
        figures,
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match bench(&args)
        .await
        .and_then(|report| print_report(&args, &report))
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("baton-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn print_report(args: &Args, report: &Report) -> Result<()> {
    if args.json {
        eprint!("{}", report.text());
        println!("{}", serde_json::to_string_pretty(&report.json())?);
    } else {
        print!("{}", report.text());
    }
    Ok(())
}
