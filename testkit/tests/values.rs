//! Values on their way through baton on real processes: f64 numbers come back bit for bit
//! (random bit patterns, subnormals, extremes) as parameters, task inputs, stored results
//! and the inputs of downstream tasks.

use baton_cli::Client;
use baton_testkit::Cluster;
use rand::{Rng, SeedableRng};
use serde_json::Value;
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

fn bits(v: &Value) -> Vec<u64> {
    match v {
        Value::Array(a) => a.iter().flat_map(bits).collect(),
        other => vec![other.as_f64().map_or(u64::MAX, f64::to_bits)],
    }
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
        let held: Value = serde_json::from_str(&t.value)?;
        let uri = &t.result.as_ref().expect("a result").uri;
        let stored: Value = serde_json::from_slice(&client.get_result(uri).await?.data)?;
        assert_eq!(bits(&held), bits(&stored), "{}[{}]", t.task, t.map_index);
        match t.task.as_str() {
            "whole" | "again" => assert_eq!(bits(&held), want, "{}", t.task),
            "each" => each[t.map_index as usize] = bits(&held)[0],
            other => panic!("unexpected task {other}"),
        }
    }
    assert_eq!(each, want, "mapped inputs and their results");
    Ok(())
}
