//! Authentication and roles on a real scheduler: a token file of hashes, workers and clients
//! with their own tokens, each role refused outside its methods, a worker token bound to its
//! worker id, and a scheduler that will not listen beyond loopback without authentication.

use baton_client::{Client, ClientError};
use baton_proto as pb;
use baton_scheduler::auth::{tokens, Role};
use baton_testkit::{bin_path, Cluster};
use std::collections::BTreeMap;
use std::time::Duration;

const FLOW: &str = r#"
name: authed
tasks:
  - name: a
    builtin: echo
    inputs: {value: 41}
"#;

fn code(e: &ClientError) -> tonic::Code {
    match e {
        ClientError::Status(s) => s.code(),
        _ => tonic::Code::Unknown,
    }
}

/// A worker stream's registration as `id`, showing `token`: the status it is refused with
/// (OK when the scheduler takes it).
async fn register_as(url: &str, token: Option<&str>, id: &str) -> anyhow::Result<tonic::Code> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())?
        .connect()
        .await?;
    let mut wc = pb::worker_service_client::WorkerServiceClient::new(channel);
    let register = pb::WorkerMessage {
        msg: Some(pb::worker_message::Msg::Register(pb::Register {
            worker_id: id.into(),
            labels: vec!["nothing-matches".into()],
            resources: Some(pb::Resources {
                slots: 1,
                ..Default::default()
            }),
            ..Default::default()
        })),
    };
    let mut request = tonic::Request::new(tokio_stream::iter(vec![register]));
    if let Some(t) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse()?);
    }
    Ok(match wc.connect(request).await {
        Ok(_) => tonic::Code::Ok,
        Err(s) => s.code(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_roles_guard_every_service() -> anyhow::Result<()> {
    let keys = tempfile::tempdir()?;
    let (admin, client, worker) = (tokens::generate(), tokens::generate(), tokens::generate());
    let file = keys.path().join("tokens");
    std::fs::write(
        &file,
        [
            tokens::entry(Role::Admin, "ops", &admin),
            tokens::entry(Role::Client, "alice", &client),
            tokens::entry(Role::Worker, "w1", &worker),
        ]
        .join("\n"),
    )?;
    // The file holds no token, only hashes.
    let stored = std::fs::read_to_string(&file)?;
    assert!(!stored.contains(&admin) && !stored.contains(&worker));

    let mut cluster = Cluster::start(&["--tokens-file", &file.display().to_string()]).await?;
    cluster.add_worker_with("w1", "local", 2, &[], &[("BATON_TOKEN", &worker)])?;
    let url = cluster.url();

    // No token, a wrong token: UNAUTHENTICATED, and the answer shows neither.
    let anonymous = Client::connect(&url).await?.with_retry_for(Duration::ZERO);
    let e = anonymous.list_runs(5).await.expect_err("no token");
    assert_eq!(code(&e), tonic::Code::Unauthenticated, "{e}");
    let forged = "baton_0000000000000000000000000000000000000000000000000000000000000000";
    let wrong = Client::connect_with_token(std::slice::from_ref(&url), Some(forged)).await?;
    let e = wrong
        .run_source(FLOW.into(), BTreeMap::new(), String::new())
        .await
        .expect_err("a forged token");
    assert_eq!(code(&e), tonic::Code::Unauthenticated, "{e}");
    assert!(!e.to_string().contains(forged), "{e}");

    // A client submits and reads; it may not register flows or cancel runs.
    let alice = Client::connect_with_token(std::slice::from_ref(&url), Some(&client)).await?;
    let run = alice
        .run_source(FLOW.into(), BTreeMap::new(), String::new())
        .await?
        .run
        .expect("a run");
    let done = tokio::time::timeout(Duration::from_secs(60), alice.wait(&run.id)).await??;
    assert_eq!(
        done.state,
        pb::RunState::Completed as i32,
        "{}",
        cluster.logs()
    );
    let e = alice
        .register_flow(FLOW.into())
        .await
        .expect_err("a client registers a flow");
    assert_eq!(code(&e), tonic::Code::PermissionDenied, "{e}");
    let e = alice
        .cancel_run(&run.id)
        .await
        .expect_err("a client cancels");
    assert_eq!(code(&e), tonic::Code::PermissionDenied, "{e}");
    let ops = Client::connect_with_token(std::slice::from_ref(&url), Some(&admin)).await?;
    ops.register_flow(FLOW.into()).await?;

    // A worker token reaches WorkerService only, and only as its own worker id; client and
    // admin tokens cannot connect as workers.
    let w = Client::connect_with_token(std::slice::from_ref(&url), Some(&worker))
        .await?
        .with_retry_for(Duration::ZERO);
    let e = w
        .list_runs(5)
        .await
        .expect_err("a worker token on FlowService");
    assert_eq!(code(&e), tonic::Code::PermissionDenied, "{e}");
    assert_eq!(
        register_as(&url, Some(&client), "w9").await?,
        tonic::Code::PermissionDenied
    );
    assert_eq!(
        register_as(&url, Some(&admin), "w9").await?,
        tonic::Code::PermissionDenied
    );
    assert_eq!(
        register_as(&url, None, "w9").await?,
        tonic::Code::Unauthenticated
    );
    assert_eq!(
        register_as(&url, Some(&worker), "w2").await?,
        tonic::Code::PermissionDenied,
        "the token of w1 registers as w2"
    );
    // The real w1 is still connected and serving.
    let workers = ops.workers().await?;
    assert_eq!(workers.len(), 1);
    assert_eq!(workers[0].id, "w1");

    // The CLI sends its token from the environment.
    let out = std::process::Command::new(bin_path("baton")?)
        .args(["--scheduler", &url, "runs"])
        .env("BATON_TOKEN", &client)
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&run.id));
    let out = std::process::Command::new(bin_path("baton")?)
        .args(["--scheduler", &url, "runs"])
        .env_remove("BATON_TOKEN")
        .output()?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("requires a token"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduler_beyond_loopback_needs_tokens_or_insecure() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let out = std::process::Command::new(bin_path("baton-scheduler")?)
        .args(["--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .env_remove("BATON_TOKENS")
        .env_remove("BATON_TOKENS_FILE")
        .env_remove("BATON_INSECURE")
        .output()?;
    assert_eq!(out.status.code(), Some(2), "refuses to start");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("authentication is required"), "{err}");
    assert!(
        err.contains("--tokens-file") && err.contains("--insecure"),
        "{err}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_is_never_spoken_as_plaintext() -> anyhow::Result<()> {
    let e = Client::connect("https://127.0.0.1:1")
        .await
        .err()
        .expect("https refused");
    assert!(matches!(e, ClientError::Tls(_)), "{e}");
    Ok(())
}

/// A process task reaches only a worker started with `--allow process`: on a worker that
/// runs built-ins only it waits, saying why, and runs once a worker that allows it comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_tasks_run_only_where_workers_allow_them() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(&[]).await?;
    cluster.add_worker_with("builtins-only", "local", 2, &["--allow="], &[])?;
    let c = Client::connect(&cluster.url()).await?;
    let flow = r#"
name: proc
tasks:
  - name: first
    builtin: echo
    inputs: {value: 1}
  - name: cmd
    process: {command: /bin/sh, args: ["-c", "cat >/dev/null; echo 7"]}
    after: [first]
"#;
    let run = c
        .run_source(flow.into(), BTreeMap::new(), String::new())
        .await?
        .run
        .expect("a run");
    let waiting =
        baton_testkit::eventually(Duration::from_secs(30), "the process task to wait", || {
            let c = c.clone();
            let id = run.id.clone();
            async move {
                let trs = c.task_runs(&id, false).await.ok()?;
                let first = trs.iter().find(|t| t.task == "first")?;
                let cmd = trs.iter().find(|t| t.task == "cmd")?;
                (first.state == pb::TaskState::Completed as i32 && !cmd.waiting_reason.is_empty())
                    .then(|| cmd.clone())
            }
        })
        .await?;
    assert!(
        waiting.waiting_reason.contains("baton:process"),
        "{}",
        waiting.waiting_reason
    );
    assert!(waiting.worker.is_empty(), "{waiting:?}");
    cluster.add_worker("allows", "local", 2)?;
    let done = tokio::time::timeout(Duration::from_secs(60), c.wait(&run.id)).await??;
    cluster.assert_completed(&done);
    let trs = c.task_runs(&run.id, true).await?;
    let cmd = trs.iter().find(|t| t.task == "cmd").expect("cmd");
    assert_eq!(cmd.worker, "allows");
    assert_eq!(cmd.value, "7");
    Ok(())
}

/// A worker's AWS credentials reach a process task only when the task asks for them
/// (`aws_credentials: true`); its baton token never does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_reach_process_tasks_only_when_asked_for() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(&[]).await?;
    let secret = "sekrit-aws-value";
    cluster.add_worker_with(
        "w",
        "local",
        2,
        &[],
        &[
            ("AWS_SECRET_ACCESS_KEY", secret),
            ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
            ("BATON_TOKEN", "a-worker-token"),
        ],
    )?;
    let c = Client::connect(&cluster.url()).await?;
    let show = r#"cat >/dev/null; printf '"%s/%s"' "${AWS_SECRET_ACCESS_KEY:-none}" "${BATON_TOKEN:-none}""#;
    let flow = format!(
        r#"
name: creds
tasks:
  - name: plain
    process: {{command: /bin/sh, args: ["-c", {show:?}]}}
  - name: asks
    process: {{command: /bin/sh, args: ["-c", {show:?}], aws_credentials: true}}
"#
    );
    let run = c
        .run_source(flow, BTreeMap::new(), String::new())
        .await?
        .run
        .expect("a run");
    let done = tokio::time::timeout(Duration::from_secs(60), c.wait(&run.id)).await??;
    cluster.assert_completed(&done);
    let trs = c.task_runs(&run.id, true).await?;
    let value = |task: &str| {
        trs.iter()
            .find(|t| t.task == task)
            .map(|t| t.value.clone())
            .unwrap_or_default()
    };
    assert_eq!(value("plain"), "\"none/none\"");
    assert_eq!(value("asks"), format!("\"{secret}/none\""));
    Ok(())
}
