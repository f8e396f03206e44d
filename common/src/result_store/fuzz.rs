//! Property tests of the local result store on made-up keys and locations: nothing panics,
//! and no key or location reads, writes or deletes anything outside the store's folder
//! (`..`, absolute paths, packed ranges, encodings, a planted symbolic link).

use super::{LocalStore, ResultStore};
use proptest::prelude::*;
use std::path::Path;

/// Path pieces that try to leave the store.
fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "results", "r1", "..", ".", "", "outside", "link", "segments", "%2e%2e", "a b",
            "/", "//", "\0", "~",
        ])
        .prop_map(str::to_string),
        1 => ".{0,10}",
    ]
}

fn path() -> impl Strategy<Value = String> {
    prop::collection::vec(piece(), 0..6).prop_map(|p| p.join("/"))
}

/// A location: in the store, outside it, packed, or not a file location at all.
fn location(root: String) -> impl Strategy<Value = String> {
    let outside = Path::new(&root)
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    (
        prop::sample::select(vec![root, outside, String::new(), "/etc".to_string()]),
        path(),
        prop::option::of((any::<u64>(), prop_oneof![0u64..64, any::<u64>()])),
        prop::sample::select(vec!["file://", "s3://", "", "file:"]),
    )
        .prop_map(|(base, rest, packed, scheme)| {
            let mut uri = format!("{scheme}{base}/{rest}");
            if let Some((offset, len)) = packed {
                uri.push_str(&format!("#{offset}+{len}"));
            }
            uri
        })
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: LocalStore,
    root: String,
    secret: std::path::PathBuf,
}

const SECRET: &[u8] = b"outside-the-store";

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = dir.path().join("outside");
    std::fs::write(&secret, SECRET).expect("write");
    let store = LocalStore::new(dir.path().join("store")).expect("store");
    let root = store.root_uri().trim_start_matches("file://").to_string();
    // A planted link to the file outside.
    std::fs::create_dir_all(Path::new(&root).join("results")).expect("mkdir");
    std::os::unix::fs::symlink(&secret, Path::new(&root).join("results/link")).expect("link");
    std::os::unix::fs::symlink(dir.path(), Path::new(&root).join("link")).expect("link");
    Fixture {
        _dir: dir,
        store,
        root,
        secret,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

proptest! {
    #[test]
    fn no_location_reaches_outside_the_store(
        seed in any::<u64>(),
        keys in prop::collection::vec(path(), 1..4),
    ) {
        let f = fixture();
        let rt = runtime();
        let uris: Vec<String> = {
            let mut runner = proptest::test_runner::TestRunner::new_with_rng(
                Default::default(),
                proptest::test_runner::TestRng::from_seed(
                    proptest::test_runner::RngAlgorithm::ChaCha,
                    &[seed as u8; 32],
                ),
            );
            (0..8)
                .map(|_| {
                    location(f.root.clone())
                        .new_tree(&mut runner)
                        .map(|t| proptest::strategy::ValueTree::current(&t))
                        .unwrap_or_default()
                })
                .collect()
        };
        rt.block_on(async {
            for key in &keys {
                if let Ok(r) = f.store.put(key, bytes::Bytes::from_static(b"x"), "text/plain").await {
                    let written = r.uri.trim_start_matches("file://");
                    assert!(written.starts_with(&f.root), "{key:?} was written at {written}");
                }
            }
            for uri in &uris {
                if let Ok(data) = f.store.get(uri).await {
                    assert_ne!(data, SECRET, "{uri:?} read a file outside the store");
                }
                let _ = f.store.exists(uri).await;
                let _ = f.store.delete(uri).await;
            }
        });
        prop_assert_eq!(std::fs::read(&f.secret).expect("still there"), SECRET);
    }
}
