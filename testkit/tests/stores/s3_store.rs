//! The S3 result store against a real S3-compatible server (s3s-fs): round trips with
//! checksums, no overwrites, multipart uploads, deletes, missing objects, retries across a
//! server restart, and `baton result get s3://…` reading straight from the bucket.

use baton_common::result_store::{ResultStore, S3Options, S3Store, PART_BYTES};
use baton_common::Error;
use baton_testkit::bin_path;
use baton_testkit::s3::S3Server;
use rand::RngCore;
use rand_chacha::rand_core::SeedableRng;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;

fn sha256(data: &[u8]) -> String {
    let hex: String = Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rand_chacha::ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut data);
    data
}

#[tokio::test]
async fn round_trip_with_checksum() -> anyhow::Result<()> {
    let s3 = S3Server::start().await?;
    let store = s3.store("runs/a").await?;
    assert_eq!(store.root_uri(), "s3://baton/runs/a");
    let data = br#"{"rmse": 0.25}"#.to_vec();
    let r = store
        .put(
            "artifacts/r1/fit/attempt-1.json",
            data.clone().into(),
            "application/json",
        )
        .await?;
    assert_eq!(r.uri, "s3://baton/runs/a/artifacts/r1/fit/attempt-1.json");
    assert_eq!(r.size, data.len() as u64);
    assert_eq!(r.checksum, sha256(&data));
    assert_eq!(r.content_type, "application/json");
    let back = store.get(&r.uri).await?;
    assert_eq!(back, data);
    assert_eq!(sha256(&back), r.checksum);
    // A reader with a smaller limit is refused before the body is read.
    assert_eq!(store.get_at_most(&r.uri, data.len() as u64).await?, data);
    let small = store.get_at_most(&r.uri, 4).await;
    assert!(
        matches!(small, Err(Error::TooLarge { size, max: 4 }) if size == data.len() as u64),
        "{small:?}"
    );
    // Parts of it, by byte range, with its size; none past its end.
    let size = data.len() as u64;
    assert_eq!(
        store.get_range(&r.uri, 0, 4).await?,
        (data[..4].to_vec(), size)
    );
    assert_eq!(
        store.get_range(&r.uri, 10, 100).await?,
        (data[10..].to_vec(), size)
    );
    assert_eq!(store.get_range(&r.uri, size, 8).await?, (Vec::new(), size));
    // It really is in the server's bucket, under the prefix.
    let on_disk = s3
        .data_dir()
        .join("baton/runs/a/artifacts/r1/fit/attempt-1.json");
    assert_eq!(std::fs::read(on_disk)?, data);
    Ok(())
}

#[tokio::test]
async fn put_never_overwrites() -> anyhow::Result<()> {
    let s3 = S3Server::start().await?;
    let store = s3.store("p").await?;
    // s3s-fs refuses a conditional write over an object: the store relies on that alone,
    // with no HEAD before its PUTs.
    assert!(store.honours_conditional_writes().await);
    let first = store
        .put("k/attempt-1.json", b"1".to_vec().into(), "x")
        .await?;
    let again = store
        .put("k/attempt-1.json", b"2".to_vec().into(), "x")
        .await;
    assert!(
        matches!(&again, Err(Error::AlreadyExists(uri)) if *uri == first.uri),
        "{again:?}"
    );
    // The same bytes again are refused as well: a key is written once.
    let same = store
        .put("k/attempt-1.json", b"1".to_vec().into(), "x")
        .await;
    assert!(matches!(same, Err(Error::AlreadyExists(_))), "{same:?}");
    assert_eq!(store.get(&first.uri).await?, b"1");
    // A large object is not overwritten either (the multipart path).
    let big = random_bytes(PART_BYTES + 1, 1);
    let err = store.put("k/attempt-1.json", big.into(), "x").await;
    assert!(matches!(err, Err(Error::AlreadyExists(_))), "{err:?}");
    assert_eq!(store.get(&first.uri).await?, b"1");
    Ok(())
}

#[tokio::test]
async fn large_objects_go_up_in_parts() -> anyhow::Result<()> {
    let s3 = S3Server::start().await?;
    let store = s3.store("big").await?;
    let data = random_bytes(20 << 20, 7);
    let r = store
        .put(
            "artifacts/model.bin",
            data.clone().into(),
            "application/octet-stream",
        )
        .await?;
    assert_eq!(r.size, 20 << 20);
    assert_eq!(r.checksum, sha256(&data));
    let back = store.get(&r.uri).await?;
    assert!(back == data, "the object read back differs");
    // A multipart object's ETag ends with its number of parts: 8 + 8 + 4 MiB.
    let head = store
        .client()
        .await
        .head_object()
        .bucket("baton")
        .key("big/artifacts/model.bin")
        .send()
        .await?;
    let etag = head
        .e_tag()
        .unwrap_or_default()
        .trim_matches('"')
        .to_string();
    assert!(etag.ends_with("-3"), "not a multipart object: etag {etag}");
    Ok(())
}

#[tokio::test]
async fn exists_delete_and_missing_objects() -> anyhow::Result<()> {
    let s3 = S3Server::start().await?;
    let store = s3.store("x").await?;
    let r = store
        .put("a.json", b"[1]".to_vec().into(), "application/json")
        .await?;
    assert!(store.exists(&r.uri).await?);
    store.delete(&r.uri).await?;
    assert!(!store.exists(&r.uri).await?);
    store.delete(&r.uri).await?; // deleting a missing object is not an error
    let missing = store.get(&r.uri).await;
    assert!(
        matches!(&missing, Err(Error::NotFound(uri)) if *uri == r.uri),
        "{missing:?}"
    );
    let never = store.get("s3://baton/x/never/written.json").await;
    assert!(matches!(never, Err(Error::NotFound(_))), "{never:?}");
    assert!(!store.exists("s3://baton/elsewhere/none").await?);
    // Any s3:// location can be read, also in another bucket.
    s3.create_bucket("other")?;
    let other = S3Store::connect("s3://other/deep/prefix", s3.options()).await?;
    let o = other
        .put("o.txt", b"elsewhere".to_vec().into(), "text/plain")
        .await?;
    assert_eq!(o.uri, "s3://other/deep/prefix/o.txt");
    assert_eq!(store.get(&o.uri).await?, b"elsewhere");
    assert!(store.exists(&o.uri).await?);
    // Bad locations are refused before any request.
    for bad in ["s3://baton", "s3://baton/a/../b", "file:///etc/passwd"] {
        assert!(
            matches!(store.get(bad).await, Err(Error::InvalidArgument(_))),
            "{bad}"
        );
    }
    assert!(matches!(
        store.put("../escape", b"1".to_vec().into(), "x").await,
        Err(Error::InvalidArgument(_))
    ));
    Ok(())
}

#[tokio::test]
async fn puts_survive_a_server_restart() -> anyhow::Result<()> {
    let mut s3 = S3Server::start().await?;
    let store = Arc::new(s3.store("restart").await?);
    // The client holds pooled connections to the old process.
    store.put("warm.json", b"0".to_vec().into(), "x").await?;
    s3.kill9();
    let puts: Vec<_> = (0..4)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let data = format!("{{\"i\": {i}}}").into_bytes();
                let r = store
                    .put(&format!("r/{i}/attempt-1.json"), data.clone().into(), "x")
                    .await;
                (data, r)
            })
        })
        .collect();
    // Small results too: their pack goes up once the server is back.
    let packed: Vec<_> = (0..4)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let data = format!("{{\"packed\": {i}}}").into_bytes();
                let r = store
                    .put(
                        &format!("results/r/{i}.attempt-1.json"),
                        data.clone().into(),
                        "x",
                    )
                    .await;
                (data, r)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    s3.restart().await?;
    for p in puts.into_iter().chain(packed) {
        let (data, r) = p.await?;
        let r = r.map_err(|e| anyhow::anyhow!("{e}\n{}", s3.logs()))?;
        assert_eq!(store.get(&r.uri).await?, data);
    }
    Ok(())
}

/// Runs the `baton` binary with the server's environment.
fn baton(s3: &S3Server, args: &[&str]) -> anyhow::Result<(i32, Vec<u8>, String)> {
    let out = std::process::Command::new(bin_path("baton")?)
        .args(args)
        .envs(s3.env())
        .output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[tokio::test]
async fn cli_reads_results_straight_from_s3() -> anyhow::Result<()> {
    let s3 = S3Server::start().await?;
    let store = s3.store("cli").await?;
    let r = store
        .put(
            "results/r/t/attempt-1.json",
            b"[1, 2]".to_vec().into(),
            "application/json",
        )
        .await?;
    // --direct: no scheduler involved.
    let (code, out, err) = baton(&s3, &["result", "get", "--direct", &r.uri])?;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, b"[1, 2]\n");
    // No scheduler answers: an s3:// location is read directly.
    let nobody = format!("http://127.0.0.1:{}", baton_testkit::free_port()?);
    let (code, out, err) = baton(&s3, &["--scheduler", &nobody, "result", "get", &r.uri])?;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, b"[1, 2]\n");
    assert!(
        r.uri.contains("/packs/"),
        "a small result is packed: {}",
        r.uri
    );
    let missing = "s3://baton/cli/results/r/t/never.json";
    let (code, _, err) = baton(&s3, &["result", "get", "--direct", missing])?;
    assert_ne!(code, 0);
    assert!(err.contains("not found"), "{err}");
    Ok(())
}

/// An S3-compatible server behind TLS with a certificate from a private CA: the store
/// trusts it given the CA (`S3Options::ca_file`, `BATON_S3_CA_FILE`), and not without; a
/// renewed CA file is read again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_server_with_a_private_ca_is_trusted_given_the_ca() -> anyhow::Result<()> {
    let s3 = S3Server::start().await?;
    let dir = tempfile::tempdir()?;
    let ca = baton_testkit::certs::Ca::new("s3 test CA")?;
    let ca_file = ca.write(&dir.path().join("ca.pem"))?;
    let (cert, key) = ca.issue(&["127.0.0.1", "localhost"], dir.path(), "s3")?;
    let target: std::net::SocketAddr = s3.endpoint().trim_start_matches("http://").parse()?;
    let proxy = baton_testkit::tls_proxy::TlsProxy::start(target, &cert, &key).await?;
    let options = |ca: Option<std::path::PathBuf>| S3Options {
        endpoint: Some(proxy.url()),
        ca_file: ca,
        retry_for: std::time::Duration::from_secs(2),
        ..s3.options()
    };
    let store = S3Store::connect(&s3.uri("tls"), options(Some(ca_file))).await?;
    let r = store
        .put(
            "results/r/t/attempt-1",
            b"42".to_vec().into(),
            "application/json",
        )
        .await?;
    assert_eq!(store.get(&r.uri).await?, b"42");
    // Without the CA the server's certificate is not trusted.
    let untrusting = S3Store::connect(&s3.uri("tls"), options(None)).await?;
    assert!(untrusting.get(&r.uri).await.is_err());

    // A store given another CA's file is refused, until the file is renewed: then the new
    // CA is trusted without a new store (or a restart).
    let live = dir.path().join("live-ca.pem");
    baton_testkit::certs::Ca::new("another CA")?.write(&live)?;
    let renewed = S3Store::connect(&s3.uri("tls"), options(Some(live.clone()))).await?;
    assert!(renewed.get(&r.uri).await.is_err());
    let tmp = dir.path().join("live-ca.new");
    std::fs::copy(dir.path().join("ca.pem"), &tmp)?;
    std::fs::rename(&tmp, &live)?;
    let back = baton_testkit::eventually(Duration::from_secs(10), "the renewed CA", || {
        let (store, uri) = (&renewed, &r.uri);
        async move { store.get(uri).await.ok() }
    })
    .await?;
    assert_eq!(back, b"42");
    Ok(())
}

/// Small results go up together: a burst of puts lands in a few pack objects, each result
/// addressed by its pack and byte range and read back exactly (whole, in parts); larger
/// ones and other keys stay objects of their own; a pack holds its records as written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_results_are_packed_and_read_by_range() -> anyhow::Result<()> {
    let s3 = S3Server::start().await?;
    let store = Arc::new(s3.store("packed").await?);
    let n = 600;
    let puts: Vec<_> = (0..n)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let data =
                    format!("{{\"i\": {i}, \"pad\": \"{}\"}}", "x".repeat(i % 97)).into_bytes();
                let key = format!("results/run/work/{i}.attempt-1.json");
                let r = store
                    .put(&key, data.clone().into(), "application/json")
                    .await;
                (key, data, r)
            })
        })
        .collect();
    let mut written = Vec::new();
    for p in puts {
        let (key, data, r) = p.await?;
        written.push((key, data, r?));
    }
    let mut packs = std::collections::BTreeMap::<String, Vec<(u64, u64)>>::new();
    for (_, data, r) in &written {
        assert_eq!(r.checksum, sha256(data));
        assert_eq!(r.size, data.len() as u64);
        let (pack, range) = r.uri.split_once('#').expect("a packed location");
        assert!(pack.starts_with("s3://baton/packed/packs/"), "{}", r.uri);
        let (offset, len) = range.split_once('+').expect("offset+len");
        packs
            .entry(pack.to_string())
            .or_default()
            .push((offset.parse()?, len.parse()?));
    }
    assert!(
        packs.len() < n / 4,
        "{} packs for {n} results: not packed together",
        packs.len()
    );
    // No byte of a pack is addressed twice.
    for ranges in packs.values_mut() {
        ranges.sort();
        for pair in ranges.windows(2) {
            assert!(pair[0].0 + pair[0].1 <= pair[1].0, "overlap: {pair:?}");
        }
    }
    for (_, data, r) in written.iter().step_by(7) {
        assert_eq!(&store.get(&r.uri).await?, data);
        let size = data.len() as u64;
        assert_eq!(
            store.get_range(&r.uri, 2, 5).await?,
            (data[2..7].to_vec(), size)
        );
        assert!(store.exists(&r.uri).await?);
        let small = store.get_at_most(&r.uri, 3).await;
        assert!(matches!(small, Err(Error::TooLarge { .. })), "{small:?}");
    }
    // Deleting one leaves its pack (and its neighbours) as they are.
    let (_, first_data, first) = &written[0];
    store.delete(&first.uri).await?;
    assert_eq!(&store.get(&first.uri).await?, first_data);
    // A pack on the server's disk: the records as written, key and data.
    let (pack_uri, _) = first.uri.split_once('#').expect("packed");
    let path = s3.data_dir().join(pack_uri.trim_start_matches("s3://"));
    let bytes = std::fs::read(&path)?;
    let mut at = 0usize;
    let mut found = 0;
    while at < bytes.len() {
        let klen = u32::from_le_bytes(bytes[at..at + 4].try_into()?) as usize;
        let key = std::str::from_utf8(&bytes[at + 4..at + 4 + klen])?.to_string();
        at += 4 + klen;
        let dlen = u32::from_le_bytes(bytes[at..at + 4].try_into()?) as usize;
        let data = &bytes[at + 4..at + 4 + dlen];
        at += 4 + dlen;
        let (_, expected, _) = written
            .iter()
            .find(|(k, _, _)| key.ends_with(k.as_str()))
            .expect("a key that was written");
        assert_eq!(data, expected.as_slice());
        found += 1;
    }
    assert!(found >= 1);
    // Forged ranges are refused: too long for a packed object, or past the pack's end.
    let too_long = format!("{pack_uri}#0+{}", 1 << 20);
    assert!(matches!(
        store.get(&too_long).await,
        Err(Error::InvalidArgument(_))
    ));
    let past = format!("{pack_uri}#{}+10", bytes.len() + 100);
    assert!(store.get(&past).await.is_err());
    // A larger result, and a small object elsewhere, are objects of their own.
    let big = random_bytes(100 << 10, 3);
    let r = store
        .put("results/run/big.attempt-1.json", big.clone().into(), "x")
        .await?;
    assert_eq!(r.uri, "s3://baton/packed/results/run/big.attempt-1.json");
    assert_eq!(store.get(&r.uri).await?, big);
    let log = store
        .put("logs/run/t.0.log", b"line".to_vec().into(), "x")
        .await?;
    assert_eq!(log.uri, "s3://baton/packed/logs/run/t.0.log");
    Ok(())
}
