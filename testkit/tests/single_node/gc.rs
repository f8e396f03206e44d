//! `baton gc` on a single node (local store): a segment whose writer has gone and that
//! nothing references is deleted; a segment a finished run references, and the segment a
//! live worker still appends to, are kept.

use baton_testkit::{baton_cli, eventually, Cluster};
use std::time::Duration;

fn baton(cluster: &Cluster, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
    baton_cli(&cluster.url(), args)
}

/// Runs the flow file `flow` to completion; the location of its `total` result.
fn run_total(cluster: &Cluster, flow: &str, xs: &str) -> anyhow::Result<String> {
    let (code, out, err) = baton(cluster, &["run", flow, "--param", xs, "--json"])?;
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(v["state"], "COMPLETED", "{out}");
    let trs = v["task_runs"].as_array().expect("task runs");
    let total = trs.iter().find(|t| t["task"] == "total").expect("total");
    Ok(total["result"]["uri"].as_str().expect("uri").to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_deletes_an_unreferenced_closed_segment_and_keeps_the_rest() -> anyhow::Result<()> {
    // Short worker leases: a new leader refuses a pass until its workers' lease and adopt
    // grace have passed.
    let mut cluster = Cluster::start(&[
        "--worker-lease-ms",
        "2000",
        "--heartbeat-ms",
        "500",
        "--adopt-grace-ms",
        "1000",
    ])
    .await?;
    let first = cluster.add_worker("gc-w1", "local", 2)?;
    let flow = cluster.dir.path().join("sum.yaml");
    std::fs::write(
        &flow,
        "name: sums\ntasks:\n  - {name: double, builtin: echo, inputs: {value: {param: xs}}, map: [value]}\n  - {name: total, builtin: sum, inputs: {values: {result: double}}}\nparameters:\n  xs: {default: [1]}\n",
    )?;
    let flow = flow.display().to_string();
    let done = run_total(&cluster, &flow, "xs=[3,4,5]")?;
    assert!(done.contains(".seg#"), "{done}");
    // Its worker goes: its segment is closed, and referenced by the finished run.
    cluster.workers[first].terminate();
    let segments = cluster.store_dir().join("segments");
    // A segment whose writer died before anything in it was committed.
    let stray = segments.join("4242-stray.seg");
    let key = b"results/gone/work/0/attempt-1.json";
    let mut record = (key.len() as u32).to_le_bytes().to_vec();
    record.extend_from_slice(key);
    record.extend_from_slice(&2u32.to_le_bytes());
    record.extend_from_slice(b"41");
    std::fs::write(&stray, &record)?;
    // Another worker, whose segment stays open.
    cluster.add_worker("gc-w2", "local", 2)?;
    let live = run_total(&cluster, &flow, "xs=[6,7]")?;
    let open = live
        .split_once('#')
        .map(|(s, _)| s.to_string())
        .expect("packed");
    assert!(!done.starts_with(&open), "the two workers share a segment");
    baton_testkit::age::backdate(&segments, Duration::from_secs(7200))?;

    eventually(
        Duration::from_secs(30),
        "the scheduler to settle",
        || async {
            let (code, _, err) = baton(&cluster, &["gc", "--dry-run"]).ok()?;
            (code == 0 || !err.contains("elected moments ago")).then_some(())
        },
    )
    .await?;
    let (code, _, err) = baton(&cluster, &["gc", "--older-than", "5m"])?;
    assert_ne!(code, 0);
    assert!(err.contains("at least 600"), "{err}");

    let (code, out, err) = baton(&cluster, &["gc", "--dry-run", "--json"])?;
    assert_eq!(code, 0, "{err}");
    let dry: serde_json::Value = serde_json::from_str(&out)?;
    let stray_uri = format!("file://{}", stray.canonicalize()?.display());
    // Listed: the first worker's segment and the stray one, not the open segment.
    assert_eq!(dry["packs"], 2, "{out}");
    assert_eq!(dry["referenced"], 1, "{out}");
    assert_eq!(
        dry["unreferenced_uris"],
        serde_json::json!([stray_uri]),
        "{out}"
    );
    assert_eq!(dry["deleted"], 0, "{out}");
    assert!(stray.exists());

    let (code, out, err) = baton(&cluster, &["gc", "--older-than", "30m"])?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("1 deleted"), "{out}");
    assert!(!stray.exists(), "the stray segment is still there");
    for location in [&done, &live] {
        let (code, out, err) = baton(&cluster, &["result", "get", location])?;
        assert_eq!(code, 0, "{location}: {err}");
        assert!(out.trim() == "12.0" || out.trim() == "13.0", "{out}");
    }
    // The live worker still writes to its segment.
    let again = run_total(&cluster, &flow, "xs=[1,2]")?;
    assert!(again.starts_with(&open), "{again} is not in {open}");
    eventually(
        Duration::from_secs(5),
        "the result to read back",
        || async {
            let (code, out, _) = baton(&cluster, &["result", "get", &again]).ok()?;
            (code == 0 && out.trim() == "3.0").then_some(())
        },
    )
    .await?;
    Ok(())
}
