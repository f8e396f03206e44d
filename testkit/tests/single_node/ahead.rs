//! Chains run ahead on real processes: a chain of `echo` tasks, broken by a `sleep` every
//! 50 tasks, completes with every value passed on exactly, each task run on its worker as
//! attempt 1, and most of the chain taken as run ahead (the scheduler's metrics count them)
//! rather than dispatched one task at a time.

use baton_client::Client;
use baton_testkit::{free_port, Cluster};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{Read, Write};

const N: usize = 150;

fn chain() -> String {
    let name = |i: usize| format!("t{i:03}");
    let tasks: Vec<Value> = (0..N)
        .map(|i| {
            let value = if i == 0 {
                json!({"param": "xs"})
            } else {
                json!({"result": name(i - 1)})
            };
            if i % 50 == 25 {
                json!({"name": name(i), "builtin": "sleep", "inputs": {"ms": 1, "value": value}})
            } else {
                json!({"name": name(i), "builtin": "echo", "inputs": {"value": value}})
            }
        })
        .collect();
    json!({
        "name": "ahead_chain",
        "labels": ["local"],
        "parameters": {"xs": {}},
        "tasks": tasks,
    })
    .to_string()
}

/// The value of counter `name` on the Prometheus page at `addr`.
fn counter(addr: &str, name: &str) -> anyhow::Result<f64> {
    let mut s = std::net::TcpStream::connect(addr)?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")?;
    let mut page = String::new();
    s.read_to_string(&mut page)?;
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no {name} in {page}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_of_instant_tasks_runs_ahead_on_its_worker() -> anyhow::Result<()> {
    let metrics = format!("127.0.0.1:{}", free_port()?);
    let mut cluster = Cluster::start(&["--metrics-addr", &metrics]).await?;
    cluster.add_worker("ahead-w", "local", 4)?;
    let client = Client::connect(&cluster.url()).await?;
    let xs = json!([
        0.1,
        5e-324,
        1.7976931348623157e308,
        -0.0,
        0.9452706955539223,
        "é"
    ]);
    let params = BTreeMap::from([("xs".to_string(), xs.to_string())]);
    let run = client
        .run_source(chain(), params, String::new())
        .await?
        .run
        .ok_or_else(|| anyhow::anyhow!("no run"))?;
    let done = client.wait(&run.id).await?;
    cluster.assert_completed(&done);

    let trs = client.task_runs(&run.id, true).await?;
    assert_eq!(trs.len(), N);
    let mut prev_start = 0;
    let mut sorted = trs.clone();
    sorted.sort_by(|a, b| a.task.cmp(&b.task));
    for t in &sorted {
        assert_eq!(t.attempt, 1, "{}", t.task);
        assert_eq!(t.worker, "ahead-w", "{}", t.task);
        let value: Value = serde_json::from_str(&t.value)?;
        assert_eq!(value, xs, "{} passes the value on exactly", t.task);
        // Each starts after the one before it started (the times of a task run ahead are
        // its worker's; the one that headed its batch ends when the scheduler recorded it).
        assert!(
            t.ended_us >= t.started_us && t.started_us >= prev_start,
            "{t:?}"
        );
        prev_start = t.started_us;
    }
    // The last one's stored result reads back as the same value.
    let last = sorted.last().expect("task runs");
    let uri = &last.result.as_ref().expect("a result").uri;
    let stored: Value = serde_json::from_slice(&client.get_result(uri).await?.data)?;
    assert_eq!(stored, xs);

    // Of 150 tasks, the 3 sleeps and the few that head a batch are dispatched; the rest is
    // run ahead (a busy machine may cut a batch short at its 2 ms budget).
    let ahead = counter(&metrics, "baton_task_runs_ran_ahead_total")?;
    let dispatched = counter(&metrics, "baton_task_runs_dispatched_total")?;
    eprintln!("{ahead} of {N} task runs ran ahead; {dispatched} dispatched in all");
    assert!(ahead >= 75.0, "{ahead} ran ahead");
    assert_eq!(dispatched, N as f64, "run ahead counts as dispatched");
    assert_eq!(
        counter(&metrics, "baton_task_runs_ahead_dropped_total")?,
        0.0
    );
    Ok(())
}
