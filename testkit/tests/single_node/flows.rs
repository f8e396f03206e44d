//! Registered flows and their versions through the real CLI: register twice without a
//! change (one version) and with a change (two), list and show them, and quick-run a
//! registered version by name with parameter overrides; on the cluster, the registry
//! survives a leader failover.

use crate::support;
use baton_testkit::baton_cli as baton;
use baton_testkit::ha::HaConfig;
use baton_testkit::{eventually, Cluster};
use std::time::Duration;

const FLOW_V1: &str = "name: greet\nproject: demo\nparameters:\n  who: {default: world}\ntasks:\n  - {name: hello, builtin: echo, inputs: {value: {param: who}}}\n";
const FLOW_V2: &str = "name: greet\nproject: demo\nparameters:\n  who: {default: everyone}\ntasks:\n  - {name: hello, builtin: echo, inputs: {value: {param: who}}}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_are_registered_in_versions_listed_shown_and_run_by_name() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(&[]).await?;
    cluster.add_worker("flows-w", "local", 2)?;
    let url = cluster.url();
    let v1 = cluster.dir.path().join("v1.yaml");
    let v2 = cluster.dir.path().join("v2.yaml");
    std::fs::write(&v1, FLOW_V1)?;
    std::fs::write(&v2, FLOW_V2)?;
    let (v1, v2) = (v1.display().to_string(), v2.display().to_string());

    let (code, out, err) = baton(&url, &["flow", "register", &v1])?;
    assert_eq!(
        (code, out.trim()),
        (0, "demo/greet v1 (registered)"),
        "{err}"
    );
    let (_, out, _) = baton(&url, &["flow", "register", &v1])?;
    assert_eq!(
        out.trim(),
        "demo/greet v1 (unchanged)",
        "same definition, same version"
    );
    let (_, out, _) = baton(&url, &["flow", "register", &v2])?;
    assert_eq!(out.trim(), "demo/greet v2 (registered)");

    let (code, out, err) = baton(&url, &["flow", "ls", "--json"])?;
    assert_eq!(code, 0, "{err}");
    let rows: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(rows[0]["project"], "demo");
    assert_eq!(rows[0]["flow"], "greet");
    assert_eq!(rows[0]["latest_version"], 2);

    let (code, out, err) = baton(&url, &["flow", "show", "demo/greet", "--version", "1"])?;
    assert_eq!(code, 0, "{err}");
    let spec: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(spec["parameters"]["who"]["default"], "world");
    let (code, _, err) = baton(&url, &["flow", "show", "demo/greet", "--version", "9"])?;
    assert_eq!(code, 2);
    assert!(err.contains("no version 9"), "{err}");

    eventually(Duration::from_secs(20), "the worker", || async {
        let (code, out, _) = baton(&url, &["workers"]).ok()?;
        (code == 0 && out.contains("flows-w")).then_some(())
    })
    .await?;
    // A quick run of version 1 by name, with a parameter override.
    let (code, out, err) = baton(
        &url,
        &[
            "run",
            "--flow",
            "demo/greet",
            "--version",
            "1",
            "-p",
            "who=baton",
            "--json",
        ],
    )?;
    assert_eq!(code, 0, "{err}");
    let run: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(run["version"], 1, "the run names the version it ran: {run}");
    let hello = &run["task_runs"][0];
    assert_eq!(hello["value"], "baton");
    // The latest version by default.
    let (code, out, err) = baton(&url, &["run", "--flow", "demo/greet", "--json"])?;
    assert_eq!(code, 0, "{err}");
    let run: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(run["version"], 2);
    assert_eq!(run["task_runs"][0]["value"], "everyone");
    // An unknown flow is refused by name.
    let (code, _, err) = baton(&url, &["run", "--flow", "demo/nope"])?;
    assert_eq!(code, 2);
    assert!(err.contains("nope"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_flow_registry_survives_a_leader_failover() -> anyhow::Result<()> {
    let _one = support::serial().await;
    let c = support::cluster(HaConfig::default(), &[]).await?;
    let file = c.dir.path().join("v1.yaml");
    std::fs::write(&file, FLOW_V1)?;
    let list = c.scheduler_list();
    let (code, out, err) = baton(&list, &["flow", "register", &file.display().to_string()])?;
    assert_eq!(
        (code, out.trim()),
        (0, "demo/greet v1 (registered)"),
        "{err}"
    );
    let (old, _) = c.wait_leader(Duration::from_secs(10), None).await?;
    let mut c = c;
    c.kill9_scheduler(old);
    c.wait_leader(Duration::from_secs(30), Some(old)).await?;
    let (code, out, err) = baton(&list, &["flow", "ls", "--json"])?;
    assert_eq!(code, 0, "{err}");
    let rows: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(rows[0]["latest_version"], 1, "{rows}");
    // Registering the same definition again on the new leader keeps its version.
    let (_, out, _) = baton(&list, &["flow", "register", &file.display().to_string()])?;
    assert_eq!(out.trim(), "demo/greet v1 (unchanged)");
    Ok(())
}
