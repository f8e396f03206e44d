//! `baton dev`: one command starts a scheduler with a `local` and a `local,trainer` worker,
//! and the web UI, whose URL it prints; the ridge sweep runs on it; Ctrl-C stops it cleanly.

use baton_client::Client;
use baton_proto as pb;
use baton_testkit::{bin_path, eventually, free_port};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baton_dev_runs_the_ridge_sweep() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (port, ui) = (free_port()?, free_port()?);
    let said = dir.path().join("dev.log");
    let mut dev = std::process::Command::new(bin_path("baton")?)
        .args(["dev", "--listen", &format!("127.0.0.1:{port}"), "--data"])
        .arg(dir.path().join("data"))
        .args(["--http", &format!("127.0.0.1:{ui}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&said)?)
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
    // The web UI, at the URL it printed, shows the workers.
    let printed = std::fs::read_to_string(&said)?;
    assert!(
        printed.contains(&format!("web UI at http://127.0.0.1:{ui}/")),
        "{printed}"
    );
    let page = tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", ui))?;
        s.write_all(b"GET /workers HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })
    .await??;
    assert!(page.contains("dev-local-1"), "{page}");
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
