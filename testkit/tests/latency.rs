//! Dispatch latency on real processes: no task run waits for the network after its inputs
//! are ready. Accepted sockets without TCP_NODELAY held small assignment frames back until
//! the worker's delayed ACK (about 40 ms) whenever two went out back to back; the task
//! runs' microsecond timings show such a stall as a gap between ready and started.

use baton_cli::Client;
use baton_testkit::Cluster;
use std::collections::BTreeMap;

/// A dispatch that waits this long after its task run became ready is a stall.
const STALL_US: i64 = 25_000;

/// The dispatch waits (started - ready, µs) of every worker task run of `runs` ridge sweeps.
async fn dispatch_waits(client: &Client, source: &str, runs: usize) -> anyhow::Result<Vec<i64>> {
    let mut waits = Vec::new();
    for _ in 0..runs {
        let run = client
            .run_source(source.to_string(), BTreeMap::new(), String::new())
            .await?
            .run
            .ok_or_else(|| anyhow::anyhow!("no run"))?;
        let done = client.wait(&run.id).await?;
        anyhow::ensure!(
            done.state == baton_proto::RunState::Completed as i32,
            "{done:?}"
        );
        anyhow::ensure!(done.created_us > 0 && done.ended_us >= done.created_us);
        for t in client.task_runs(&run.id, false).await? {
            anyhow::ensure!(
                t.ready_us > 0 && t.assigned_us >= t.ready_us && t.ended_us >= t.assigned_us,
                "task run {}[{}] has incomplete timings: {t:?}",
                t.task,
                t.map_index
            );
            waits.push(t.started_us - t.ready_us);
        }
    }
    Ok(waits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_ready_task_run_waits_for_the_network() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(&[]).await?;
    cluster.add_worker("w-a", "local,trainer", 4)?;
    cluster.add_worker("w-b", "local,trainer", 4)?;
    let client = Client::connect(&cluster.url()).await?;
    let source = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/ridge_sweep.yaml"
    ))?;
    // Both workers connected, and everything warm, before measuring.
    baton_testkit::eventually(
        std::time::Duration::from_secs(20),
        "two workers",
        || async {
            let n = client.workers().await.map(|w| w.len()).unwrap_or(0);
            (n == 2).then_some(())
        },
    )
    .await?;
    dispatch_waits(&client, &source, 1).await?;
    // A machine busy with other tests can delay any one measurement; a stall that the
    // network adds is there every time. Up to three rounds of five sweeps.
    let mut last = Vec::new();
    for _ in 0..3 {
        let mut waits = dispatch_waits(&client, &source, 5).await?;
        waits.sort_unstable();
        let stalls = waits.iter().filter(|w| **w >= STALL_US).count();
        let median = waits[waits.len() / 2];
        eprintln!(
            "dispatch waits: {} task runs, median {median} µs, max {} µs, {stalls} over {STALL_US} µs",
            waits.len(),
            waits.last().copied().unwrap_or(0)
        );
        if stalls == 0 && median < 5_000 {
            return Ok(());
        }
        last = waits;
    }
    anyhow::bail!("ready task runs waited for dispatch (µs, sorted): {last:?}")
}
