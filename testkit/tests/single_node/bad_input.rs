//! Bad input gets a clear error with the right status; the server stays up and its stored
//! state stays intact.

use baton_client::Client;
use baton_proto as pb;
use baton_testkit::{bin_path, Cluster};
use rand::{RngCore, SeedableRng};
use std::collections::BTreeMap;

const GOOD: &str = r#"
name: good
tasks:
  - name: a
    builtin: echo
    inputs: {value: 41}
"#;

fn code(e: &baton_client::ClientError) -> tonic::Code {
    match e {
        baton_client::ClientError::Status(s) => s.code(),
        _ => tonic::Code::Unknown,
    }
}

async fn expect_invalid(c: &Client, source: &str, needle: &str) {
    let err = c
        .run_source(source.to_string(), BTreeMap::new(), String::new())
        .await
        .expect_err("bad flow accepted");
    assert_eq!(code(&err), tonic::Code::InvalidArgument, "{err}");
    assert!(
        err.to_string().contains(needle),
        "`{err}` does not mention `{needle}`"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_clearly() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(&["--unrunnable-timeout-ms", "60000"]).await?;
    cluster.add_worker("w", "local", 2)?;
    let c = Client::connect(&cluster.url()).await?;
    let good = c
        .run_source(GOOD.into(), BTreeMap::new(), String::new())
        .await?
        .run
        .expect("run");
    let good = c.wait(&good.id).await?;
    cluster.assert_completed(&good);
    let good_trs = c.task_runs(&good.id, true).await?;

    expect_invalid(
        &c,
        "name: cyc\ntasks:\n  - {name: a, builtin: noop, after: [b]}\n  - {name: b, builtin: noop, inputs: {x: {result: a}}}\n",
        "cycle",
    )
    .await;
    expect_invalid(
        &c,
        "name: unk\ntasks:\n  - {name: a, builtin: noop, inputs: {x: {result: nope}}}\n",
        "unknown task `nope`",
    )
    .await;
    expect_invalid(
        &c,
        "name: unkp\ntasks:\n  - {name: a, builtin: noop, inputs: {x: {param: nope}}}\n",
        "unknown parameter `nope`",
    )
    .await;
    expect_invalid(
        &c,
        "name: k\ntasks:\n  - {name: a, builtin: nosuch}\n",
        "unknown built-in",
    )
    .await;
    expect_invalid(
        &c,
        "name: k\ntasks:\n  - {name: a, builtin: noop}\n  - {name: a, builtin: noop}\n",
        "duplicate task name",
    )
    .await;
    expect_invalid(
        &c,
        "name: req\nparameters:\n  n: {}\ntasks:\n  - {name: a, builtin: echo, inputs: {value: {param: n}}}\n",
        "missing required parameter `n`",
    )
    .await;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut junk = vec![0u8; 4096];
    rng.fill_bytes(&mut junk);
    expect_invalid(&c, &String::from_utf8_lossy(&junk), "invalid flow").await;

    // A type error found at run time fails the task and the run, with a clear error.
    let typed = "name: typed\nparameters:\n  xs: {default: 5}\ntasks:\n  - {name: a, builtin: echo, inputs: {value: {param: xs}}, map: [value]}\n";
    let run = c
        .run_source(typed.into(), BTreeMap::new(), String::new())
        .await?
        .run
        .expect("run");
    let run = c.wait(&run.id).await?;
    assert_eq!(run.state, pb::RunState::Failed as i32);
    assert!(
        run.error.contains("mapped input must be a list"),
        "{}",
        run.error
    );

    // A 50 MB definition is refused by size, by the server and by the CLI.
    let big = format!("name: big\n# {}\ntasks: []\n", "x".repeat(50 * 1024 * 1024));
    let err = c
        .register_flow(big.clone())
        .await
        .expect_err("50 MB accepted");
    assert!(
        matches!(
            code(&err),
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted | tonic::Code::InvalidArgument
        ),
        "{err}"
    );
    let path = cluster.dir.path().join("big.yaml");
    std::fs::write(&path, &big)?;
    let out = std::process::Command::new(bin_path("baton")?)
        .args(["--scheduler", &cluster.url(), "run"])
        .arg(&path)
        .output()?;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("at most"));

    // Malformed requests.
    let err = c.get_run("").await.expect_err("empty id");
    assert_eq!(code(&err), tonic::Code::InvalidArgument);
    let err = c.get_run("no-such-run").await.expect_err("unknown id");
    assert_eq!(code(&err), tonic::Code::NotFound);
    let err = c
        .get_result("file:///etc/passwd")
        .await
        .expect_err("outside the store");
    assert_eq!(code(&err), tonic::Code::PermissionDenied);
    let mut params = BTreeMap::new();
    params.insert("nope".to_string(), "{not json".to_string());
    let err = c
        .run_source(GOOD.into(), params, String::new())
        .await
        .expect_err("bad param");
    assert_eq!(code(&err), tonic::Code::InvalidArgument);
    let err = c
        .create_run(pb::CreateRunRequest {
            flow: "missing".into(),
            ..Default::default()
        })
        .await
        .expect_err("unknown flow");
    assert_eq!(code(&err), tonic::Code::NotFound);

    // A worker stream that does not start with `register`.
    let channel = tonic::transport::Endpoint::from_shared(cluster.url())?
        .connect()
        .await?;
    let mut wc = pb::worker_service_client::WorkerServiceClient::new(channel);
    let first = pb::WorkerMessage {
        msg: Some(pb::worker_message::Msg::Heartbeat(pb::Heartbeat {
            at_ms: 1,
        })),
    };
    let err = wc
        .connect(tokio_stream::iter(vec![first]))
        .await
        .expect_err("no register");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let zero = pb::WorkerMessage {
        msg: Some(pb::worker_message::Msg::Register(pb::Register {
            worker_id: "z".into(),
            resources: Some(pb::Resources {
                slots: 0,
                ..Default::default()
            }),
            ..Default::default()
        })),
    };
    let err = wc
        .connect(tokio_stream::iter(vec![zero]))
        .await
        .expect_err("zero slots");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    // The server is still up and its stored state intact.
    assert!(cluster.scheduler.alive());
    let again = c.task_runs(&good.id, true).await?;
    assert_eq!(again, good_trs);
    let run = c
        .run_source(GOOD.into(), BTreeMap::new(), String::new())
        .await?
        .run
        .expect("run");
    assert_eq!(c.wait(&run.id).await?.state, pb::RunState::Completed as i32);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_keys_and_parameters_are_refused_at_the_edge() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(&[]).await?;
    cluster.add_worker("w", "local", 2)?;
    let c = Client::connect(&cluster.url()).await?;
    // A 2 MiB idempotency key (over etcd's default request size in a cluster).
    let key = "k".repeat(2 << 20);
    let err = c
        .run_source(GOOD.to_string(), BTreeMap::new(), key)
        .await
        .expect_err("a 2 MiB idempotency key accepted");
    assert_eq!(code(&err), tonic::Code::InvalidArgument, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("`idempotency_key`") && text.contains("512"),
        "{text}"
    );
    assert!(
        text.len() < 400,
        "the error echoes the key: {} bytes",
        text.len()
    );
    // 14 parameters of 120,000 characters each (1.7 MB together, over the 1 MiB limit).
    let params: BTreeMap<String, String> = (0..14)
        .map(|i| (format!("p{i}"), format!("\"{}\"", "v".repeat(120_000))))
        .collect();
    let err = c
        .run_source(GOOD.to_string(), params, String::new())
        .await
        .expect_err("1.7 MB of parameters accepted");
    assert_eq!(code(&err), tonic::Code::InvalidArgument, "{err}");
    assert!(err.to_string().contains("`parameters`"), "{err}");
    // The scheduler goes on serving: a normal run completes.
    let run = c
        .run_source(GOOD.to_string(), BTreeMap::new(), String::new())
        .await?
        .run
        .expect("a run");
    let done = tokio::time::timeout(std::time::Duration::from_secs(30), c.wait(&run.id)).await??;
    cluster.assert_completed(&done);
    Ok(())
}

/// A 200 KB flow nested 100,000 deep (it once stalled the scheduler for 16–19 s and cost
/// its workers their leader) is refused at once, while a run of another client completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deeply_nested_flow_is_refused_quickly() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(&[]).await?;
    cluster.add_worker("w", "local", 2)?;
    let c = Client::connect(&cluster.url()).await?;
    let deep = format!(
        "name: deep\ntasks:\n  - name: a\n    builtin: echo\n    inputs: {{value: {}1{}}}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    assert!(deep.len() > 200_000);
    let started = std::time::Instant::now();
    let other = {
        let c = c.clone();
        tokio::spawn(async move {
            let run = c
                .run_source(GOOD.into(), BTreeMap::new(), String::new())
                .await?
                .run
                .ok_or_else(|| anyhow::anyhow!("no run"))?;
            anyhow::Ok(c.wait(&run.id).await?)
        })
    };
    expect_invalid(&c, &deep, "more than 64 deep").await;
    let took = started.elapsed();
    let done = other.await??;
    cluster.assert_completed(&done);
    // A figure, not a timing assertion: the refusal is a linear scan.
    eprintln!("the nested flow was refused in {took:?}");
    assert!(cluster.scheduler.alive());
    Ok(())
}
