//! `baton dev`: one command starts a scheduler with a `local` and a `local,trainer` worker;
//! the ridge sweep runs on it; Ctrl-C stops it cleanly.

use baton_client::Client;
use baton_proto as pb;
use baton_testkit::{bin_path, eventually, free_port};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baton_dev_runs_the_ridge_sweep() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let mut dev = std::process::Command::new(bin_path("baton")?)
        .args(["dev", "--listen", &format!("127.0.0.1:{port}"), "--data"])
        .arg(dir.path().join("data"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let url = format!("http://127.0.0.1:{port}");
    let client = eventually(Duration::from_secs(30), "baton dev to serve", || {
        let url = url.clone();
        async move { Client::connect(&url).await.ok() }
    })
    .await?;
    let labels: Vec<String> = eventually(Duration::from_secs(30), "two workers", || {
        let c = client.clone();
        async move {
            let ws = c.workers().await.ok()?;
            (ws.len() == 2).then(|| {
                let mut l: Vec<String> = ws.iter().map(|w| w.labels.join(",")).collect();
                l.sort();
                l
            })
        }
    })
    .await?;
    // `baton dev`'s workers allow process tasks, which gives them the scheduler's label.
    assert_eq!(
        labels,
        ["baton:process,local", "baton:process,local,trainer"]
    );
    let run = crate::support::start_ridge(&client).await?;
    let done = tokio::time::timeout(Duration::from_secs(60), client.wait(&run.id)).await??;
    assert_eq!(done.state, pb::RunState::Completed as i32, "{}", done.error);
    let scores: Vec<f64> = client
        .task_runs(&run.id, true)
        .await?
        .iter()
        .filter(|t| t.task == "evaluate")
        .filter_map(|t| serde_json::from_str::<serde_json::Value>(&t.value).ok()?["r2"].as_f64())
        .collect();
    assert_eq!(scores.len(), 6);
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(dev.id() as i32, libc::SIGINT);
    }
    let status = tokio::task::spawn_blocking(move || dev.wait()).await??;
    assert!(status.success(), "baton dev exited with {status}");
    Ok(())
}
