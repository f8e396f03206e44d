//! Values on their way through baton on real processes: f64 numbers come back bit for bit
//! (random bit patterns, subnormals, extremes) as parameters, task inputs, stored results
//! and the inputs of downstream tasks; a mapped task's broadcast input is held once, not
//! once per element.

use baton_client::Client;
use baton_testkit::Cluster;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;

const FLOW: &str = r#"
name: floats
parameters:
  xs: {}
tasks:
  - name: whole
    builtin: echo
    inputs: {value: {param: xs}}
  - name: each
    builtin: echo
    inputs: {value: {param: xs}}
    map: [value]
  - name: again
    builtin: echo
    inputs: {value: {result: each}}
"#;

fn floats(n: usize) -> Vec<f64> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x0ba7_0f10);
    let mut xs = vec![
        0.9452706955539223,
        0.9718910351550599,
        5e-324,
        -5e-324,
        f64::MIN_POSITIVE,
        f64::MIN_POSITIVE / 3.0,
        f64::MAX,
        f64::MIN,
        f64::EPSILON,
        1e300,
        -1e-300,
        0.1 + 0.2,
        -0.0,
        0.0,
    ];
    while xs.len() < n {
        let x = f64::from_bits(rng.random::<u64>());
        if x.is_finite() {
            xs.push(x);
        }
    }
    xs
}

/// How many of `got` differ from `want`, with the first few, for a short failure message.
fn differences(got: &[u64], want: &[u64]) -> String {
    if got.len() != want.len() {
        return format!("{} values instead of {}", got.len(), want.len());
    }
    let diff: Vec<String> = got
        .iter()
        .zip(want)
        .filter(|(g, w)| g != w)
        .map(|(g, w)| format!("{} became {}", f64::from_bits(*w), f64::from_bits(*g)))
        .collect();
    let first: Vec<&String> = diff.iter().take(3).collect();
    format!("{} of {} differ, e.g. {first:?}", diff.len(), want.len())
}

/// The bits of every number in a JSON text of numbers and lists of numbers, parsed by the
/// standard library (exact), so that the check does not depend on serde_json's parser.
fn bits_of(text: &str) -> Vec<u64> {
    text.split(|c: char| matches!(c, '[' | ']' | ',') || c.is_whitespace())
        .filter(|t| !t.is_empty())
        .map(|t| t.parse::<f64>().map_or(u64::MAX, f64::to_bits))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floats_round_trip_bit_for_bit() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(&[]).await?;
    cluster.add_worker("w-1", "local", 4)?;
    let client = Client::connect(&cluster.url()).await?;
    let xs = floats(1000);
    let want: Vec<u64> = xs.iter().map(|x| x.to_bits()).collect();
    let params = BTreeMap::from([("xs".to_string(), serde_json::to_string(&xs)?)]);
    let run = client
        .run_source(FLOW.to_string(), params, String::new())
        .await?
        .run
        .ok_or_else(|| anyhow::anyhow!("no run"))?;
    let done = client.wait(&run.id).await?;
    cluster.assert_completed(&done);
    let trs = client.task_runs(&run.id, true).await?;
    let mut each = vec![u64::MAX; xs.len()];
    for t in &trs {
        // What the scheduler holds and what the result store holds.
        let uri = &t.result.as_ref().expect("a result").uri;
        let stored = String::from_utf8(client.get_result(uri).await?.data)?;
        let (held, stored) = (bits_of(&t.value), bits_of(&stored));
        assert!(
            held == stored,
            "{}[{}]: held vs stored: {}",
            t.task,
            t.map_index,
            differences(&held, &stored)
        );
        match t.task.as_str() {
            "whole" | "again" => assert!(held == want, "{}: {}", t.task, differences(&held, &want)),
            "each" => each[t.map_index as usize] = held[0],
            other => panic!("unexpected task {other}"),
        }
    }
    assert!(
        each == want,
        "mapped inputs and their results: {}",
        differences(&each, &want)
    );
    Ok(())
}

/// The peak resident memory of process `pid` in MiB (VmHWM).
fn peak_mib(pid: i32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmHWM in /proc/{pid}/status"))?;
    Ok(kib / 1024.0)
}

/// The documented bound: a 2,000-element map with a 500 KB broadcast input keeps the
/// scheduler under this peak (each task run holding its own copy took it past 1 GB).
const BROADCAST_PEAK_MIB: f64 = 300.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_input_is_held_once_per_task() -> anyhow::Result<()> {
    const N: usize = 2_000;
    let mut cluster = Cluster::start(&[]).await?;
    cluster.add_worker("w-1", "local", 8)?;
    cluster.add_worker("w-2", "local", 8)?;
    let client = Client::connect(&cluster.url()).await?;
    let flow = r#"
name: broadcast
parameters:
  blob: {}
  xs: {}
tasks:
  - name: each
    builtin: echo
    inputs:
      value: {param: xs}
      blob: {param: blob}
    map: [value]
"#;
    let blob = "b".repeat(500 * 1024);
    let xs: Vec<usize> = (0..N).collect();
    let params = BTreeMap::from([
        ("blob".to_string(), serde_json::to_string(&blob)?),
        ("xs".to_string(), serde_json::to_string(&xs)?),
    ]);
    let run = client
        .run_source(flow.to_string(), params, String::new())
        .await?
        .run
        .ok_or_else(|| anyhow::anyhow!("no run"))?;
    let done =
        tokio::time::timeout(std::time::Duration::from_secs(300), client.wait(&run.id)).await??;
    cluster.assert_completed(&done);
    assert_eq!(done.tasks_done as usize, N);
    let peak = peak_mib(cluster.scheduler.pid())?;
    eprintln!("scheduler peak memory: {peak:.1} MiB");
    assert!(
        peak < BROADCAST_PEAK_MIB,
        "the scheduler peaked at {peak:.1} MiB (bound {BROADCAST_PEAK_MIB} MiB)"
    );
    Ok(())
}
