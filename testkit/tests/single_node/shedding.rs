//! Load shedding on a real scheduler: calls in flight per connection and per caller (watch
//! streams held open count until they end) and calls a second per caller are bounded and
//! refused with RESOURCE_EXHAUSTED, while other callers and the workers go on.

use baton_client::{Client, ClientError};
use baton_proto as pb;
use baton_scheduler::auth::{tokens, Role};
use baton_testkit::{eventually, Cluster};
use std::collections::BTreeMap;
use std::time::Duration;

fn exhausted(r: Result<impl Sized, ClientError>) -> String {
    match r {
        Err(ClientError::Status(s)) if s.code() == tonic::Code::ResourceExhausted => {
            s.message().to_string()
        }
        Err(e) => panic!("expected RESOURCE_EXHAUSTED, got {e}"),
        Ok(_) => panic!("expected RESOURCE_EXHAUSTED, the call was served"),
    }
}

async fn connect(url: &str, token: &str) -> anyhow::Result<Client> {
    Ok(Client::connect_with_token(&[url.to_string()], Some(token))
        .await?
        .with_retry_for(Duration::ZERO))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_client_is_shed_and_others_are_served() -> anyhow::Result<()> {
    let keys = tempfile::tempdir()?;
    let (alice, bob, worker) = (tokens::generate(), tokens::generate(), tokens::generate());
    let file = keys.path().join("tokens");
    std::fs::write(
        &file,
        [
            tokens::entry(Role::Client, "alice", &alice),
            tokens::entry(Role::Client, "bob", &bob),
            tokens::entry(Role::Worker, "w1", &worker),
        ]
        .join("\n"),
    )?;
    let mut cluster = Cluster::start(&[
        "--tokens-file",
        &file.display().to_string(),
        "--client-concurrency",
        "3",
        "--connection-concurrency",
        "2",
        "--client-rate",
        "10",
    ])
    .await?;
    cluster.add_worker_with("w1", "local", 2, &[], &[("BATON_TOKEN", &worker)])?;
    let url = cluster.url();
    let b = connect(&url, &bob).await?;
    let slow = "name: slow\ntasks:\n  - name: s\n    builtin: sleep\n    inputs: {ms: 60000}\n";
    let long = b
        .run_source(slow.into(), BTreeMap::new(), String::new())
        .await?
        .run
        .expect("a run");

    // Alice holds two watch streams on one connection: a third call there is refused.
    let a1 = connect(&url, &alice).await?;
    let w1 = a1.watch(&long.id, false).await?;
    let w2 = a1.watch(&long.id, false).await?;
    let m = exhausted(a1.get_run(&long.id).await);
    assert!(
        m.contains("on this connection") && m.contains("limit 2"),
        "{m}"
    );
    // On a second connection she has one more call in flight, then her own limit.
    let a2 = connect(&url, &alice).await?;
    let w3 = a2.watch(&long.id, false).await?;
    let m = exhausted(a2.get_run(&long.id).await);
    assert!(
        m.contains("from this caller") && m.contains("limit 3"),
        "{m}"
    );

    // Meanwhile Bob is served, and the worker runs his tasks.
    let quick = "name: quick\ntasks:\n  - name: e\n    builtin: echo\n    inputs: {value: 1}\n";
    let run = b
        .run_source(quick.into(), BTreeMap::new(), String::new())
        .await?
        .run
        .expect("a run");
    let done = tokio::time::timeout(Duration::from_secs(60), b.wait(&run.id)).await??;
    assert_eq!(done.state, pb::RunState::Completed as i32);

    // A stream that ends gives its place back.
    drop(w3);
    eventually(
        Duration::from_secs(10),
        "a place after a stream ended",
        || {
            let a2 = a2.clone();
            let id = long.id.clone();
            async move { a2.get_run(&id).await.ok() }
        },
    )
    .await?;
    drop((w1, w2));

    // Calls a second: a burst of twice the rate, then refused until the bucket refills.
    let mut refused = None;
    for _ in 0..60 {
        match a2.get_run(&long.id).await {
            Ok(_) => {}
            Err(e) => {
                refused = Some(exhausted(Err::<(), _>(e)));
                break;
            }
        }
    }
    let m = refused.expect("60 calls at once all served at 10 calls a second");
    assert!(m.contains("10 calls a second"), "{m}");
    b.get_run(&long.id).await?;
    eventually(Duration::from_secs(10), "the bucket to refill", || {
        let (a2, id) = (a2.clone(), long.id.clone());
        async move { a2.get_run(&id).await.ok() }
    })
    .await?;
    Ok(())
}
