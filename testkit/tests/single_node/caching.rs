//! Task caching through the real CLI and processes: a second run with the same inputs is
//! served from the cache (no worker runs it), `--no-cache` runs it again.

use baton_testkit::baton_cli as baton;
use baton_testkit::{eventually, Cluster};
use std::time::Duration;

/// The `slow` task run of a `baton run --json` output: (worker, attempt, result location).
fn slow(out: &str) -> anyhow::Result<(String, u64, String)> {
    let run: serde_json::Value = serde_json::from_str(out)?;
    let t = run["task_runs"]
        .as_array()
        .and_then(|a| a.iter().find(|t| t["task"] == "slow"))
        .ok_or_else(|| anyhow::anyhow!("no slow task run in {run}"))?;
    Ok((
        t["worker"].as_str().unwrap_or_default().to_string(),
        t["attempt"].as_u64().unwrap_or_default(),
        t["result"]["uri"].as_str().unwrap_or_default().to_string(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_task_is_not_run_again_unless_no_cache() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(&[]).await?;
    cluster.add_worker("cache-w", "local", 2)?;
    let url = cluster.url();
    let flow = cluster.dir.path().join("cached.yaml");
    std::fs::write(
        &flow,
        "name: cached\ntasks:\n  - name: slow\n    builtin: sleep\n    inputs: {ms: 300, value: 7}\n    cache: {version: v1, expire_s: 3600}\n",
    )?;
    let flow = flow.display().to_string();
    eventually(Duration::from_secs(20), "the worker", || async {
        let (code, out, _) = baton(&url, &["workers"]).ok()?;
        (code == 0 && out.contains("cache-w")).then_some(())
    })
    .await?;
    let (code, out, err) = baton(&url, &["run", &flow, "--json"])?;
    assert_eq!(code, 0, "{err}");
    let (worker, attempt, first) = slow(&out)?;
    assert_eq!((worker.as_str(), attempt), ("cache-w", 1));
    assert!(!first.is_empty(), "a result location: {out}");

    let (code, out, err) = baton(&url, &["run", &flow, "--json"])?;
    assert_eq!(code, 0, "{err}");
    let (worker, attempt, again) = slow(&out)?;
    assert_eq!(worker, "cache", "served from the cache, not by a worker");
    assert_eq!(attempt, 0);
    assert_eq!(again, first, "the cache hit points at the same result");

    let (code, out, err) = baton(&url, &["run", &flow, "--json", "--no-cache"])?;
    assert_eq!(code, 0, "{err}");
    let (worker, attempt, fresh) = slow(&out)?;
    assert_eq!(
        (worker.as_str(), attempt),
        ("cache-w", 1),
        "--no-cache runs it"
    );
    assert_ne!(fresh, first);
    Ok(())
}

/// The task run `task` of a `baton run --json` output.
fn task_run(out: &str, task: &str) -> anyhow::Result<serde_json::Value> {
    let run: serde_json::Value = serde_json::from_str(out)?;
    run["task_runs"]
        .as_array()
        .and_then(|a| a.iter().find(|t| t["task"] == task))
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no {task} task run in {run}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_cached_value_is_reused_after_a_scheduler_restart() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(&[]).await?;
    cluster.add_worker("cache-big", "local", 2)?;
    let url = cluster.url();
    let flow = cluster.dir.path().join("big.yaml");
    // 20,000 numbers: about 110 KB of JSON, too large to sit in the cache entry itself.
    std::fs::write(
        &flow,
        "name: big\ntasks:\n  - name: big\n    builtin: range\n    inputs: {n: 20000}\n    cache: {version: v1}\n  - name: total\n    builtin: sum\n    inputs: {values: {result: big}}\n",
    )?;
    let flow = flow.display().to_string();
    eventually(Duration::from_secs(20), "the worker", || async {
        let (code, out, _) = baton(&url, &["workers"]).ok()?;
        (code == 0 && out.contains("cache-big")).then_some(())
    })
    .await?;
    let (code, out, err) = baton(&url, &["run", &flow, "--json"])?;
    assert_eq!(code, 0, "{err}");
    assert_eq!(task_run(&out, "big")?["worker"], "cache-big");
    let first = task_run(&out, "big")?["result"]["uri"].clone();

    cluster.restart_scheduler().await?;
    let (code, out, err) = eventually(Duration::from_secs(30), "a run after the restart", || {
        let (url, flow) = (url.clone(), flow.clone());
        async move {
            let r = baton(&url, &["run", &flow, "--json"]).ok()?;
            (r.0 != 2).then_some(r)
        }
    })
    .await?;
    assert_eq!(code, 0, "{err}\n{}", cluster.logs());
    let big = task_run(&out, "big")?;
    assert_eq!(
        big["worker"], "cache",
        "served from the cache after the restart"
    );
    assert_eq!(big["result"]["uri"], first);
    let total = task_run(&out, "total")?;
    assert_eq!(total["value"].as_f64(), Some(199_990_000.0), "{total}");
    Ok(())
}
