//! The docker-compose cluster on the real Docker engine, as one test binary: the
//! repository's `docker-compose.yml` with the images `scripts/build-images.sh` builds (the
//! test command builds them first). The cluster comes up from a clean state, runs the ridge
//! sweep through its published ports with results in its S3 server, survives `docker kill`
//! of the leader's container and a worker cut off the network with runs in flight, and
//! keeps flows, runs and results across `docker-compose down` and `up`; its Prometheus
//! scrapes every scheduler and worker.

#[path = "../support/mod.rs"]
mod support;

use anyhow::Context;
use baton_client::Client;
use baton_common::result_store::{ResultStore, S3Options, S3Store, StaticCredentials};
use baton_proto as pb;
use baton_testkit::compose::ComposeCluster;
use baton_testkit::prometheus::Prometheus;
use std::collections::BTreeMap;
use std::time::Duration;
use support::{fan_out, fan_out_total, ridge_scores};

/// Who leads now, as the compose service name (`scheduler2`), and the epoch.
/// A GET of scheduler1's web UI with a cookie: (status, body).
fn ui_get(c: &ComposeCluster, path: &str, cookie: &str) -> anyhow::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", c.ui_port))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\n\r\n"
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, raw))
}

/// The web UI of the compose cluster: a sign-in without a token; with one, the dashboard,
/// which its replica read from the API over mutual TLS.
async fn web_ui(c: &ComposeCluster, token: &str) -> anyhow::Result<()> {
    let (status, page) =
        baton_testkit::eventually(Duration::from_secs(30), "the web UI", || async {
            ui_get(c, "/", "none=1").ok().filter(|(s, _)| *s != 0)
        })
        .await?;
    assert_eq!(status, 303, "{page}");
    assert!(page.contains("location: /login"), "{page}");
    let (status, page) = ui_get(c, "/", &format!("baton_token={token}"))?;
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("Dashboard") && page.contains("https://scheduler"),
        "{page}"
    );
    Ok(())
}

async fn leader(c: &ComposeCluster) -> Option<(String, u64)> {
    let tls = c.client_tls().ok()?;
    for url in c.urls() {
        if let Some(info) = baton_testkit::ha::leader_info_with(&url, Some(&tls)).await {
            let service = info
                .leader_address
                .trim_start_matches("https://")
                .split(':')
                .next()
                .unwrap_or_default()
                .to_string();
            if service.starts_with("scheduler") {
                return Some((service, info.epoch));
            }
        }
    }
    None
}

async fn wait_leader(c: &ComposeCluster, not: Option<&str>) -> anyhow::Result<(String, u64)> {
    baton_testkit::eventually(Duration::from_secs(60), "a leader", || async {
        leader(c).await.filter(|(s, _)| Some(s.as_str()) != not)
    })
    .await
}

/// Starts a run of the flow in `source`.
async fn start(client: &Client, source: String) -> anyhow::Result<pb::FlowRun> {
    let created = client
        .run_source(source, BTreeMap::new(), String::new())
        .await?;
    created.run.context("no run in the answer")
}

/// Waits for `run` to finish, through whichever replica leads.
async fn finished(client: &Client, run: &str, c: &ComposeCluster) -> anyhow::Result<pb::FlowRun> {
    let done = tokio::time::timeout(Duration::from_secs(120), client.wait(run))
        .await
        .map_err(|_| anyhow::anyhow!("run {run} did not finish:\n{}", c.logs()))??;
    anyhow::ensure!(
        done.state == pb::RunState::Completed as i32,
        "run {run}: {:?} {}\n{}",
        done.state,
        done.error,
        c.logs()
    );
    Ok(done)
}

/// Every task run of `run` completed with one result, and the fan-out's total is right.
async fn check_fan_out(client: &Client, run: &str, n: usize) -> anyhow::Result<()> {
    let trs = client.task_runs(run, true).await?;
    let work: Vec<&pb::TaskRun> = trs.iter().filter(|t| t.task == "work").collect();
    assert_eq!(work.len(), n);
    for t in &trs {
        assert_eq!(t.state, pb::TaskState::Completed as i32, "{t:?}");
        assert!(t.result.is_some(), "{t:?}");
    }
    let total = trs.iter().find(|t| t.task == "total").expect("total");
    assert_eq!(total.value.parse::<f64>()?, fan_out_total(n));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_cluster_runs_survives_faults_and_keeps_its_data() -> anyhow::Result<()> {
    let c = ComposeCluster::up("baton-compose")?;
    wait_leader(&c, None).await?;
    // Mutual TLS on the published ports: neither plaintext nor TLS without a client
    // certificate gets an answer.
    let url = c.urls()[0].clone();
    let plain = url.replacen("https://", "http://", 1);
    assert!(baton_testkit::ha::leader_info(&plain).await.is_none());
    let without_cert = baton_client::tls::TlsFiles {
        cert: None,
        key: None,
        ..c.client_tls()?
    };
    assert!(
        baton_testkit::ha::leader_info_with(&url, Some(&without_cert))
            .await
            .is_none()
    );
    let token = c.secret("admin.token")?;
    let client = Client::connect_with(&c.urls(), Some(&token), Some(c.client_tls()?)).await?;
    web_ui(&c, &token).await?;

    // The ridge sweep, through the published ports, with its results in the S3 server.
    let source = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/ridge_sweep.yaml"
    ))?;
    let run = start(&client, source).await?;
    finished(&client, &run.id, &c).await?;
    let trs = client.task_runs(&run.id, true).await?;
    let scores: Vec<&pb::TaskRun> = trs.iter().filter(|t| t.task == "evaluate").collect();
    assert_eq!(scores.len(), 6);
    let s3 = S3Store::connect(
        "s3://baton/cluster",
        S3Options {
            endpoint: Some(format!("http://127.0.0.1:{}", c.s3_port)),
            region: Some("us-east-1".into()),
            credentials: Some(StaticCredentials {
                access_key_id: c.secret("s3-access-key")?,
                secret_access_key: c.secret("s3-secret-key")?,
            }),
            ..S3Options::default()
        },
    )
    .await?;
    let uri = scores[0].result.as_ref().expect("a result").uri.clone();
    // A small result: in a pack of results, by byte range.
    assert!(
        uri.starts_with("s3://baton/cluster/packs/") && uri.contains('#'),
        "{uri}"
    );
    let stored: serde_json::Value = serde_json::from_slice(&s3.get(&uri).await?)?;
    assert!(stored["r2"].as_f64().is_some_and(|r2| r2 > 0.5), "{stored}");

    // The docker example: each child flow trains in a container that the `docker` worker
    // starts on the host's engine; the scores are the single-flow sweep's.
    let read = |path: &str| {
        std::fs::read_to_string(format!("{}/../examples/{path}", env!("CARGO_MANIFEST_DIR")))
    };
    client
        .register_flow(read("docker/train_model.yaml")?)
        .await?;
    let docker = start(&client, read("docker/ridge_sweep.yaml")?).await?;
    finished(&client, &docker.id, &c).await?;
    let in_containers = ridge_scores(&client.task_runs(&docker.id, true).await?)?;
    assert_eq!(in_containers.len(), 6);
    for (alpha, r2) in ridge_scores(&trs)? {
        assert!((in_containers[&alpha] - r2).abs() < 1e-9, "alpha {alpha}");
    }

    // Prometheus scrapes every scheduler and worker: one leader, and the task runs above.
    let prom = Prometheus::at(c.prometheus_port).await?;
    let value = |q: &str| prom.scalar(q).ok().flatten();
    let seen = baton_testkit::eventually(Duration::from_secs(60), "Prometheus", || {
        let ok = value("count(up{job=\"baton-scheduler\"} == 1)") == Some(3.0)
            && value("count(up{job=\"baton-worker\"} == 1)") == Some(3.0)
            && value("sum(baton_leader)") == Some(1.0)
            && value("sum(baton_workers_connected)") == Some(3.0)
            && value("sum(baton_task_runs_ended_total{state=\"completed\"})")
                .is_some_and(|n| n >= 23.0);
        async move { ok.then_some(()) }
    })
    .await;
    if let Err(e) = seen {
        anyhow::bail!("{e}: targets {:?}", prom.targets());
    }

    // `docker kill` of the leader's container with a run in flight: another replica takes
    // over at a higher epoch and the run completes, every task run with one result.
    let (old, epoch) = wait_leader(&c, None).await?;
    let n = 240;
    let run = start(&client, fan_out("compose_kill", n, 100)).await?;
    baton_testkit::eventually(Duration::from_secs(30), "some tasks done", || async {
        let trs = client.task_runs(&run.id, false).await.ok()?;
        let done = trs
            .iter()
            .filter(|t| t.state == pb::TaskState::Completed as i32)
            .count();
        (done >= 20).then_some(())
    })
    .await?;
    c.kill(&old)?;
    let (new, new_epoch) = wait_leader(&c, Some(&old)).await?;
    assert!(
        new_epoch > epoch,
        "{new} at epoch {new_epoch} after {epoch}"
    );
    finished(&client, &run.id, &c).await?;
    check_fan_out(&client, &run.id, n).await?;
    c.start()?; // the killed replica comes back (`restart` does not undo `docker kill`)

    // A worker cut off the network while it runs tasks: its attempts are re-dispatched to
    // the others and the run completes.
    let run = start(&client, fan_out("compose_cut", n, 100)).await?;
    baton_testkit::eventually(Duration::from_secs(30), "the local worker busy", || async {
        let workers = client.workers().await.ok()?;
        workers
            .iter()
            .any(|w| w.labels == ["local"] && w.running > 0)
            .then_some(())
    })
    .await?;
    c.disconnect("worker-local")?;
    finished(&client, &run.id, &c).await?;
    check_fan_out(&client, &run.id, n).await?;
    c.reconnect("worker-local")?;

    // `down` and `up`: flows, finished runs and results are still there.
    let runs_before = client.list_runs(0).await?.len();
    c.down()?;
    c.start()?;
    wait_leader(&c, None).await?;
    let client = Client::connect_with(&c.urls(), Some(&token), Some(c.client_tls()?)).await?;
    let runs = client.list_runs(0).await?;
    assert_eq!(runs.len(), runs_before);
    assert!(runs
        .iter()
        .all(|r| r.state == pb::RunState::Completed as i32));
    let flows = client.list_flows("").await?;
    assert!(flows.iter().any(|f| f.flow == "ridge_sweep"), "{flows:?}");
    let back = client.get_result(&uri).await?;
    let back: serde_json::Value = serde_json::from_slice(&back.data)?;
    assert_eq!(back, stored);
    Ok(())
}

/// The images run as the unprivileged user `baton`, and carry OCI labels and a health
/// check.
#[test]
fn the_images_run_unprivileged_with_labels_and_health_checks() -> anyhow::Result<()> {
    for image in baton_testkit::compose::IMAGES {
        let out = std::process::Command::new("docker")
            .args([
                "image",
                "inspect",
                "--format",
                r#"{{.Config.User}}|{{index .Config.Labels "org.opencontainers.image.title"}}|{{if .Config.Healthcheck}}{{index .Config.Healthcheck.Test 0}}{{end}}"#,
                image,
            ])
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "{image}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let fields: Vec<&str> = text.trim().split('|').collect();
        assert_eq!(fields[0], "baton", "{image} runs as {:?}", fields[0]);
        assert!(fields[1].starts_with("baton-"), "{image}: {text}");
        assert_eq!(fields[2], "CMD", "{image} has no health check: {text}");
    }
    Ok(())
}
