//! Prometheus metrics on real processes: a real Prometheus server scrapes the scheduler
//! and two workers; after a fan-out, PromQL through its HTTP API counts every task run
//! completed, dispatched (with its dispatch latency observed) and run by the workers.

use crate::support::fan_out;
use baton_client::Client;
use baton_testkit::prometheus::Prometheus;
use baton_testkit::{eventually, free_port, Cluster};
use std::collections::BTreeMap;
use std::time::Duration;

const N: usize = 500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_counts_every_task_run_of_a_fan_out() -> anyhow::Result<()> {
    let at = |p: u16| format!("127.0.0.1:{p}");
    let (s, w1, w2) = (at(free_port()?), at(free_port()?), at(free_port()?));
    let mut cluster = Cluster::start(&["--metrics-addr", &s]).await?;
    cluster.add_worker_with("w1", "local", 16, &["--metrics-addr", &w1], &[])?;
    cluster.add_worker_with("w2", "local", 16, &["--metrics-addr", &w2], &[])?;
    let prom = Prometheus::start(&[s.clone(), w1.clone(), w2.clone()]).await?;
    let c = Client::connect(&cluster.url()).await?;
    let run = c
        .run_source(fan_out("fan", N, 0), BTreeMap::new(), String::new())
        .await?
        .run
        .ok_or_else(|| anyhow::anyhow!("no run"))?;
    cluster.assert_completed(&c.wait(&run.id).await?);

    // The range task, the N mapped ones and their sum.
    let task_runs = (N + 2) as f64;
    let wanted = [
        (
            "sum(baton_task_runs_ended_total{state=\"completed\"})",
            task_runs,
        ),
        ("sum(baton_task_runs_dispatched_total)", task_runs),
        ("sum(baton_dispatch_latency_seconds_count)", task_runs),
        ("sum(baton_task_run_latency_seconds_count)", task_runs),
        (
            "sum(baton_worker_attempts_ended_total{outcome=\"succeeded\"})",
            task_runs,
        ),
        (
            "sum(baton_worker_attempt_duration_seconds_count)",
            task_runs,
        ),
        ("sum(baton_runs_ended_total{state=\"completed\"})", 1.0),
        ("baton_leader", 1.0),
        ("baton_workers_connected", 2.0),
        ("sum(baton_worker_connected)", 2.0),
        ("baton_ready_task_runs", 0.0),
        ("sum(baton_worker_slots{state=\"total\"})", 32.0),
        ("count(up == 1)", 3.0),
    ];
    let seen = eventually(Duration::from_secs(30), "the fan-out in Prometheus", || {
        let got: Vec<(&str, Option<f64>)> = wanted
            .iter()
            .map(|(q, _)| (*q, prom.scalar(q).ok().flatten()))
            .collect();
        let all = wanted
            .iter()
            .zip(&got)
            .all(|((_, w), (_, g))| *g == Some(*w));
        async move { all.then_some(got) }
    })
    .await;
    let seen = match seen {
        Ok(seen) => seen,
        Err(e) => {
            let got: Vec<String> = wanted
                .iter()
                .map(|(q, w)| format!("{q} = {:?} (want {w})", prom.scalar(q)))
                .collect();
            anyhow::bail!("{e}:\n{}\ntargets: {:?}", got.join("\n"), prom.targets());
        }
    };
    assert_eq!(seen.len(), wanted.len());
    // Commits were measured, and the workers' result writes.
    let commits = prom
        .scalar("sum(baton_state_commit_latency_seconds_count)")?
        .unwrap_or(0.0);
    assert!(commits >= 2.0, "{commits} commits measured");
    let puts = prom
        .scalar("sum(baton_result_store_operation_seconds_count{op=\"put\"})")?
        .unwrap_or(0.0);
    assert!(puts >= task_runs, "{puts} result writes measured");
    // Bounded labels: no run id in any series.
    let series = prom.query("{__name__=~\"baton_.+\"}")?;
    assert!(series.len() > 20, "{} series", series.len());
    for (labels, _) in &series {
        assert!(
            labels.values().all(|v| !v.contains(&run.id)),
            "a run id in the labels: {labels:?}"
        );
    }
    Ok(())
}
