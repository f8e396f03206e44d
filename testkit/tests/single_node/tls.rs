//! Mutual TLS on real binaries: a scheduler serving TLS and requiring client certificates
//! signed by its CA; a worker without one cannot connect, one with one runs the ridge sweep;
//! the client and the CLI over TLS; plaintext refused; the server's certificate replaced on
//! disk is served without a restart.

use baton_client::tls::TlsFiles;
use baton_client::Client;
use baton_proto as pb;
use baton_testkit::certs::Ca;
use baton_testkit::{bin_path, eventually, Cluster};
use std::path::Path;
use std::time::Duration;

fn arg(p: &Path) -> String {
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_between_every_process() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let ca1 = Ca::new("baton test CA")?;
    let ca_file = d.join("ca.pem");
    std::fs::write(&ca_file, &ca1.pem)?;
    let (server_cert, server_key) = ca1.issue(&["127.0.0.1", "localhost"], d, "server")?;
    let (worker_cert, worker_key) = ca1.issue(&["w-trainer"], d, "worker")?;
    let (client_cert, client_key) = ca1.issue(&["alice"], d, "client")?;

    let mut cluster = Cluster::start(&[
        "--tls-cert",
        &arg(&server_cert),
        "--tls-key",
        &arg(&server_key),
        "--tls-client-ca",
        &arg(&ca_file),
    ])
    .await?;
    let https = cluster.url().replace("http://", "https://");
    let with_cert = TlsFiles {
        ca: Some(ca_file.clone()),
        cert: Some(client_cert.clone()),
        key: Some(client_key.clone()),
    };

    // A worker with the CA but no certificate of its own is refused at the handshake.
    cluster.add_worker_with(
        "w-nocert",
        "local",
        2,
        &["--scheduler", &https, "--tls-ca", &arg(&ca_file)],
        &[],
    )?;
    // Workers with certificates run the ridge sweep.
    for (id, labels) in [("w-local", "local"), ("w-trainer", "local,trainer")] {
        cluster.add_worker_with(
            id,
            labels,
            2,
            &[
                "--scheduler",
                &https,
                "--tls-ca",
                &arg(&ca_file),
                "--tls-cert",
                &arg(&worker_cert),
                "--tls-key",
                &arg(&worker_key),
            ],
            &[],
        )?;
    }
    let client =
        Client::connect_with(std::slice::from_ref(&https), None, Some(with_cert.clone())).await?;
    eventually(Duration::from_secs(30), "two workers", || {
        let client = client.clone();
        async move { (client.workers().await.ok()?.len() == 2).then_some(()) }
    })
    .await?;
    let run = crate::support::start_ridge(&client).await?;
    let done = tokio::time::timeout(Duration::from_secs(120), client.wait(&run.id)).await??;
    cluster.assert_completed(&done);
    let workers: Vec<String> = client.workers().await?.into_iter().map(|w| w.id).collect();
    assert!(!workers.contains(&"w-nocert".to_string()), "{workers:?}");
    let root = cluster.data_dir();
    let nocert =
        std::fs::read_to_string(root.parent().expect("folder").join("worker-w-nocert.log"))?;
    // Refused at the handshake (the worker sees the alert naming the missing certificate, or
    // a closed connection when the close comes first) and never connected.
    assert!(nocert.contains("no connection to the leader"), "{nocert}");

    // Plaintext to the TLS port fails; TLS without a client certificate fails.
    let plain = Client::connect(&cluster.url()).await;
    assert!(plain.is_err(), "plaintext was served");
    let no_cert = TlsFiles {
        ca: Some(ca_file.clone()),
        ..Default::default()
    };
    let refused =
        match Client::connect_with(std::slice::from_ref(&https), None, Some(no_cert)).await {
            Ok(c) => c.with_retry_for(Duration::ZERO).list_runs(1).await.is_err(),
            Err(_) => true,
        };
    assert!(refused, "a client without a certificate was served");

    // The CLI over TLS, its files from flags.
    let out = std::process::Command::new(bin_path("baton")?)
        .args([
            "--scheduler",
            &https,
            "--tls-ca",
            &arg(&ca_file),
            "--tls-cert",
            &arg(&client_cert),
            "--tls-key",
            &arg(&client_key),
            "runs",
        ])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&run.id));

    // A new server certificate from another CA, written over the old files: served
    // without a restart (clients that trust only the new CA get in; the old CA's do not).
    let ca2 = Ca::new("baton test CA 2")?;
    let ca2_file = d.join("ca2.pem");
    std::fs::write(&ca2_file, &ca2.pem)?;
    ca2.issue(&["127.0.0.1", "localhost"], d, "server")?;
    let trusts_ca2 = TlsFiles {
        ca: Some(ca2_file),
        ..with_cert.clone()
    };
    eventually(Duration::from_secs(20), "the new certificate", || {
        let (url, tls) = (https.clone(), trusts_ca2.clone());
        async move {
            let c = Client::connect_with(&[url], None, Some(tls)).await.ok()?;
            c.with_retry_for(Duration::ZERO).list_runs(1).await.ok()
        }
    })
    .await?;
    let old = match Client::connect_with(std::slice::from_ref(&https), None, Some(with_cert)).await
    {
        Ok(c) => c.with_retry_for(Duration::ZERO).list_runs(1).await.is_err(),
        Err(_) => true,
    };
    assert!(old, "the old certificate is still served");
    assert_eq!(
        done.state,
        pb::RunState::Completed as i32,
        "{}",
        cluster.logs()
    );
    Ok(())
}
