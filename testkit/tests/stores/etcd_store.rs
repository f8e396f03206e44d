//! The etcd state store against a real etcd cluster: one leader at a time, a deposed
//! leader's writes fenced, first-wins creates, leases lost when etcd is out of reach, and
//! batches beyond one transaction's limits.

use baton_scheduler::store::{EtcdConfig, EtcdStore, Op, StateStore, StoreError};
use baton_testkit::etcd::EtcdCluster;
use baton_testkit::proxy::Proxy;
use std::time::Duration;

fn config(endpoints: Vec<String>, id: &str, ns: &str) -> EtcdConfig {
    EtcdConfig {
        endpoints,
        namespace: ns.to_string(),
        replica_id: id.to_string(),
        advertise: format!("http://{id}:7070"),
        lease_ttl: Duration::from_secs(3),
        tls: None,
        compact_every: baton_scheduler::store::etcd::DEFAULT_COMPACT_EVERY,
    }
}

fn put(key: &str, value: &str) -> Op {
    Op::Put {
        key: key.into(),
        value: value.as_bytes().to_vec(),
    }
}

async fn value(store: &EtcdStore, key: &str) -> Option<String> {
    store
        .load(key)
        .await
        .ok()?
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| String::from_utf8_lossy(&v).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_at_a_time_and_a_deposed_leader_is_fenced() -> anyhow::Result<()> {
    let etcd = EtcdCluster::start(3).await?;
    let a = EtcdStore::connect(config(etcd.endpoints(), "a", "fence")).await?;
    let b = std::sync::Arc::new(EtcdStore::connect(config(etcd.endpoints(), "b", "fence")).await?);
    let la = a.acquire().await?;
    let waiting = {
        let b = b.clone();
        tokio::spawn(async move { b.acquire().await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "b must wait while a leads");
    a.commit(la.epoch, vec![put("k", "from-a")]).await?;
    // An operator revokes a's lease behind its back: its election key goes, b is elected,
    // and a still believes it leads until its keep-alive hears of it; its writes must fail
    // on etcd's side, by the epoch compare.
    let mut raw = etcd.client().await?;
    let keys = raw
        .get(
            "/fence/election/",
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await?;
    let lease = keys
        .kvs()
        .iter()
        .find(|kv| kv.create_revision() as u64 == la.epoch)
        .map(|kv| kv.lease())
        .expect("a's election key");
    raw.lease_revoke(lease).await?;
    let lb = tokio::time::timeout(Duration::from_secs(10), waiting).await???;
    assert!(lb.epoch > la.epoch, "epoch {} after {}", lb.epoch, la.epoch);
    b.commit(lb.epoch, vec![put("k", "from-b")]).await?;
    match a.commit(la.epoch, vec![put("k", "stale")]).await {
        Err(StoreError::Fenced { ours, .. }) => assert_eq!(ours, la.epoch),
        other => panic!("a deposed leader's write must be fenced, got {other:?}"),
    }
    assert_eq!(value(&b, "k").await.as_deref(), Some("from-b"));
    // The view names b as leader with its epoch.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let view = a.view().expect("a cluster view");
    assert_eq!(view.leader.as_deref(), Some("http://b:7070"));
    assert_eq!(view.epoch, lb.epoch);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_are_first_wins_and_batches_span_transactions() -> anyhow::Result<()> {
    let etcd = EtcdCluster::start(1).await?;
    let s = EtcdStore::connect(config(etcd.endpoints(), "a", "first")).await?;
    let l = s.acquire().await?;
    let create = |v: &str| Op::Create {
        key: "res/r/t/-1".into(),
        value: v.as_bytes().to_vec(),
    };
    s.commit(l.epoch, vec![put("tr/r/t/-1", "done"), create("one")])
        .await?;
    match s.commit(l.epoch, vec![create("two")]).await {
        Err(StoreError::Conflict(k)) => assert_eq!(k, "res/r/t/-1"),
        other => panic!("a second pointer must conflict, got {other:?}"),
    }
    assert_eq!(value(&s, "res/r/t/-1").await.as_deref(), Some("one"));
    // Retrying the very batch that committed (after a lost answer) is not an error.
    s.commit(l.epoch, vec![put("tr/r/t/-1", "done"), create("one")])
        .await?;
    // 1,000 operations and 3 MiB: several transactions, all applied.
    let big = "x".repeat(3_000);
    let ops: Vec<Op> = (0..1000)
        .map(|i| put(&format!("bulk/{i:04}"), &big))
        .collect();
    s.commit(l.epoch, ops).await?;
    let loaded = s.load("bulk/").await?;
    assert_eq!(loaded.len(), 1000);
    assert_eq!(loaded[0].0, "bulk/0000");
    assert_eq!(loaded[999].0, "bulk/0999");
    assert!(loaded.iter().all(|(_, v)| v.len() == 3_000));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_etcd_loses_its_lease_and_another_leads() -> anyhow::Result<()> {
    let etcd = EtcdCluster::start(1).await?;
    let proxy = Proxy::start(etcd.member(0).client_addr())?;
    let a = EtcdStore::connect(config(vec![proxy.url()], "a", "cut")).await?;
    let b = EtcdStore::connect(config(etcd.endpoints(), "b", "cut")).await?;
    let la = a.acquire().await?;
    proxy.cut();
    let cut_at = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(6), la.lost.cancelled()).await?;
    let lost_after = cut_at.elapsed();
    assert!(
        lost_after <= Duration::from_secs(3),
        "the lease deadline (TTL 3 s less a margin) passed late: {lost_after:?}"
    );
    match a.commit(la.epoch, vec![put("k", "late")]).await {
        Err(StoreError::Fenced { .. }) => {}
        other => panic!("a leader without its lease must not write, got {other:?}"),
    }
    let lb = tokio::time::timeout(Duration::from_secs(10), b.acquire()).await??;
    assert!(lb.epoch > la.epoch);
    b.commit(lb.epoch, vec![put("k", "b")]).await?;
    proxy.heal();
    assert_eq!(value(&b, "k").await.as_deref(), Some("b"));
    Ok(())
}

/// The state store over TLS to an etcd that requires client certificates: with etcd's CA
/// and a certificate it leads and commits; with a certificate etcd does not trust, without
/// one, or without TLS, it gets nowhere; renewed certificate files are used without a
/// restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_speaks_tls_to_etcd_with_a_client_certificate() -> anyhow::Result<()> {
    use baton_testkit::certs::Ca;
    let dir = tempfile::tempdir()?;
    let ca = Ca::new("etcd test CA")?;
    let ca_file = ca.write(&dir.path().join("ca.pem"))?;
    let (server_cert, server_key) = ca.issue(&["127.0.0.1", "localhost"], dir.path(), "etcd")?;
    let (cert, key) = ca.issue(&["replica-a"], dir.path(), "replica")?;
    let files = |with_cert: bool| baton_client::tls::TlsFiles {
        ca: Some(ca_file.clone()),
        cert: with_cert.then(|| cert.clone()),
        key: with_cert.then(|| key.clone()),
    };
    let tls = |with_cert: bool| files(with_cert).config().expect("the test's TLS files");
    let etcd = EtcdCluster::start_with(
        1,
        Some(baton_testkit::etcd::EtcdTls {
            cert: server_cert,
            key: server_key,
            ca: ca_file.clone(),
            client: tls(true),
        }),
    )
    .await?;
    let endpoint = etcd.endpoints().remove(0);
    assert!(endpoint.starts_with("https://"), "{endpoint}");
    // The replica starts with a certificate etcd does not trust (from another CA) in its
    // files: it gets nowhere. Renewed files are taken up without a restart.
    let live = dir.path().join("live");
    std::fs::create_dir_all(&live)?;
    let (wrong_cert, wrong_key) = Ca::new("another CA")?.issue(&["replica-a"], &live, "wrong")?;
    let (live_cert, live_key) = (live.join("replica.pem"), live.join("replica.key"));
    std::fs::copy(&wrong_cert, &live_cert)?;
    std::fs::copy(&wrong_key, &live_key)?;
    let store = EtcdStore::connect(EtcdConfig {
        tls: Some(baton_client::tls::TlsFiles {
            ca: Some(ca_file.clone()),
            cert: Some(live_cert.clone()),
            key: Some(live_key.clone()),
        }),
        ..config(vec![endpoint.clone()], "a", "tls")
    })
    .await?;
    let early = tokio::time::timeout(Duration::from_secs(4), store.acquire()).await;
    assert!(
        !matches!(early, Ok(Ok(_))),
        "led with a certificate etcd does not trust"
    );
    // Written as a renewal tool would: to a temporary file, then renamed into place.
    for (from, to) in [(&cert, &live_cert), (&key, &live_key)] {
        let tmp = to.with_extension("new");
        std::fs::copy(from, &tmp)?;
        std::fs::rename(&tmp, to)?;
    }
    let lead = tokio::time::timeout(Duration::from_secs(20), store.acquire())
        .await
        .map_err(|_| anyhow::anyhow!("no leadership after the renewal: {}", etcd.logs()))??;
    store.commit(lead.epoch, vec![put("k", "over-tls")]).await?;
    assert_eq!(value(&store, "k").await.as_deref(), Some("over-tls"));

    // Without a client certificate, and in plaintext: nothing is read or led.
    let plain_endpoint = endpoint.replace("https://", "http://");
    for (what, cfg) in [
        (
            "no client certificate",
            EtcdConfig {
                tls: Some(files(false)),
                ..config(vec![endpoint.clone()], "b", "tls")
            },
        ),
        ("plaintext", config(vec![plain_endpoint], "c", "tls")),
    ] {
        let got = tokio::time::timeout(Duration::from_secs(5), async {
            let s = EtcdStore::connect(cfg).await.ok()?;
            s.load("k").await.ok()
        })
        .await;
        assert!(!matches!(got, Ok(Some(_))), "{what}: read etcd");
    }

    // The scheduler binary, given the files as flags, leads through the TLS etcd.
    let port = baton_testkit::free_port()?;
    let path = |p: &std::path::Path| p.display().to_string();
    let _scheduler = baton_testkit::Node::spawn(
        "baton-scheduler",
        &[
            "--listen".to_string(),
            format!("127.0.0.1:{port}"),
            "--data-dir".to_string(),
            path(&dir.path().join("data")),
            "--result-store".to_string(),
            format!("file://{}", dir.path().join("store").display()),
            "--etcd".to_string(),
            endpoint.clone(),
            "--etcd-ca".to_string(),
            path(&ca_file),
            "--etcd-cert".to_string(),
            path(&cert),
            "--etcd-key".to_string(),
            path(&key),
            "--cluster".to_string(),
            "tls-cluster".to_string(),
            "--insecure".to_string(),
        ],
        dir.path().join("scheduler.log"),
    )?;
    let url = format!("http://127.0.0.1:{port}");
    let leads = baton_testkit::eventually(Duration::from_secs(30), "a leader over TLS", || {
        let url = url.clone();
        async move {
            let info = baton_testkit::ha::leader_info(&url).await?;
            info.replicas.iter().any(|r| r.leader).then_some(())
        }
    })
    .await;
    assert!(
        leads.is_ok(),
        "{}",
        std::fs::read_to_string(dir.path().join("scheduler.log")).unwrap_or_default()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_is_deleted_by_prefix_and_the_leader_compacts_history() -> anyhow::Result<()> {
    let etcd = EtcdCluster::start(1).await?;
    let s = EtcdStore::connect(EtcdConfig {
        compact_every: Duration::from_millis(300),
        ..config(etcd.endpoints(), "a", "prefix")
    })
    .await?;
    let l = s.acquire().await?;
    // 20,000 task runs of run `r1`, a neighbour `r10` whose ids share its first characters,
    // and a key of `r1` that the writer does not list.
    let mut ops: Vec<Op> = (0..20_000)
        .map(|i| put(&format!("tr/r1/t/{i}"), "record"))
        .collect();
    ops.push(put("tr/r10/t/0", "neighbour"));
    ops.push(put("tr/r1/u/-1", "unlisted"));
    s.commit(l.epoch, ops).await?;
    assert_eq!(s.load("tr/").await?.len(), 20_002);
    let mut raw = etcd.client().await?;
    let before = raw.get("/prefix/", None).await?;
    let rev_before = before.header().map(|h| h.revision()).unwrap_or_default();
    s.commit(
        l.epoch,
        vec![
            put("done", "yes"),
            Op::DeletePrefix {
                prefix: "tr/r1/".into(),
                keys: (0..20_000).map(|i| format!("tr/r1/t/{i}")).collect(),
            },
        ],
    )
    .await?;
    let left = s.load("tr/").await?;
    assert_eq!(
        left,
        vec![("tr/r10/t/0".to_string(), b"neighbour".to_vec())],
        "everything under the prefix went, and nothing else"
    );
    // One transaction: the revision moved by one.
    let after = raw.get("/prefix/", None).await?;
    let rev_after = after.header().map(|h| h.revision()).unwrap_or_default();
    assert_eq!(rev_after, rev_before + 1, "the batch was one transaction");
    // The same batch again (a retry after a lost answer) is no error.
    s.commit(
        l.epoch,
        vec![Op::DeletePrefix {
            prefix: "tr/r1/".into(),
            keys: Vec::new(),
        }],
    )
    .await?;

    // Within a few periods, the history before the deletes is compacted away.
    baton_testkit::eventually(
        Duration::from_secs(20),
        "the leader to compact etcd's history",
        || {
            let mut raw = raw.clone();
            async move {
                let old = etcd_client::GetOptions::new().with_revision(rev_before);
                match raw.get("/prefix/state/tr/r1/t/0", Some(old)).await {
                    Err(e) if e.to_string().contains("compacted") => Some(()),
                    _ => None,
                }
            }
        },
    )
    .await?;
    Ok(())
}
