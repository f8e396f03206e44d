//! Tests of the embedded store: reopen, fencing, torn tails, corruption, failed writes,
//! group commit and compaction under concurrent commits.

use super::writer::Request;
use super::*;
use std::io::Write;
use std::sync::Arc;

fn put(k: &str, v: &str) -> Op {
    Op::Put {
        key: k.into(),
        value: v.as_bytes().to_vec(),
    }
}

async fn compact(s: &EmbeddedStore) {
    s.ask(Request::Compact).await.expect("compacted");
}

#[tokio::test]
async fn survives_reopen_fences_and_cuts_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = EmbeddedStore::open(dir.path(), SyncMode::Batch).unwrap();
        let e = s.acquire().await.unwrap().epoch;
        assert_eq!(e, 1);
        s.commit(e, vec![put("a/1", "x"), put("a/2", "y")])
            .await
            .unwrap();
        s.commit(e, vec![Op::Delete { key: "a/1".into() }])
            .await
            .unwrap();
        assert!(matches!(
            s.commit(e + 1, vec![put("a/3", "z")]).await,
            Err(StoreError::Fenced { .. })
        ));
        let create = Op::Create {
            key: "a/2".into(),
            value: b"w".to_vec(),
        };
        assert!(matches!(
            s.commit(e, vec![put("a/4", "q"), create]).await,
            Err(StoreError::Conflict(_))
        ));
        assert!(EmbeddedStore::open(dir.path(), SyncMode::Batch).is_err());
    }
    // A torn frame at the end is cut off.
    let mut f = OpenOptions::new()
        .append(true)
        .open(dir.path().join("state.log"))
        .unwrap();
    f.write_all(&[200, 0, 0, 0, 1, 2, 3]).unwrap();
    drop(f);
    let s = EmbeddedStore::open(dir.path(), SyncMode::Batch).unwrap();
    assert_eq!(s.acquire().await.unwrap().epoch, 2);
    let all = s.load("a/").await.unwrap();
    assert_eq!(all, vec![("a/2".to_string(), b"y".to_vec())]);
}

#[tokio::test]
async fn a_damaged_frame_in_the_middle_refuses_to_open_and_names_the_offset() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.log");
    let middle;
    {
        let s = EmbeddedStore::open(dir.path(), SyncMode::Batch).unwrap();
        let e = s.acquire().await.unwrap().epoch;
        s.commit(e, vec![put("a", "1")]).await.unwrap();
        middle = std::fs::metadata(&path).unwrap().len();
        s.commit(e, vec![put("b", &"2".repeat(100))]).await.unwrap();
        s.commit(e, vec![put("c", "3")]).await.unwrap();
    }
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[middle as usize + 40] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();
    let err = match EmbeddedStore::open(dir.path(), SyncMode::Batch) {
        Ok(_) => panic!("a corrupt log must not open"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(&format!("offset {middle}")), "{err}");
    // Nothing was cut: the log is as it was, for an operator to inspect.
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
}

#[tokio::test]
async fn a_failed_write_is_cut_back_and_later_commits_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = EmbeddedStore::open(dir.path(), SyncMode::Batch).unwrap();
        let e = s.acquire().await.unwrap().epoch;
        s.commit(e, vec![put("k/1", "one")]).await.unwrap();
        // The next write stops after 11 bytes (a full disk), leaving a torn frame.
        s.requests.send(Request::FailNextWrite(11)).unwrap();
        let failed = s
            .commit(e, vec![put("k/2", "two"), put("k/3", "three")])
            .await;
        assert!(matches!(failed, Err(StoreError::Io(_))), "{failed:?}");
        // Later commits of that epoch, computed as if it had landed, are refused.
        let later = s.commit(e, vec![put("k/5", "five")]).await;
        assert!(
            matches!(later, Err(StoreError::Unavailable(_))),
            "{later:?}"
        );
        // The store goes on under the next leader (as the scheduler steps down and leads
        // again): the next commit lands after the last good frame.
        let e = s.acquire().await.unwrap().epoch;
        s.commit(e, vec![put("k/4", "four")]).await.unwrap();
        let create = Op::Create {
            key: "k/2".into(),
            value: b"again".to_vec(),
        };
        // The failed commit's keys were forgotten: a create of one of them succeeds.
        s.commit(e, vec![create]).await.unwrap();
    }
    let s = EmbeddedStore::open(dir.path(), SyncMode::Batch).unwrap();
    let all = s.load("k/").await.unwrap();
    assert_eq!(
        all,
        vec![
            ("k/1".to_string(), b"one".to_vec()),
            ("k/2".to_string(), b"again".to_vec()),
            ("k/4".to_string(), b"four".to_vec()),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commits_share_group_commits_and_all_survive() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Arc::new(EmbeddedStore::open(dir.path(), SyncMode::Batch).unwrap());
        let e = s.acquire().await.unwrap().epoch;
        let mut tasks = Vec::new();
        for t in 0..16 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..50 {
                    s.commit(e, vec![put(&format!("g/{t:02}/{i:02}"), "v")])
                        .await
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    }
    let s = EmbeddedStore::open(dir.path(), SyncMode::Batch).unwrap();
    assert_eq!(s.load("g/").await.unwrap().len(), 16 * 50);
}

#[tokio::test]
async fn compaction_keeps_live_keys_and_commits_made_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.log");
    {
        let s = EmbeddedStore::open_with(dir.path(), SyncMode::Batch, 4096).unwrap();
        let e = s.acquire().await.unwrap().epoch;
        for round in 0..200 {
            s.commit(e, vec![put("k", &round.to_string()), put("j", "3")])
                .await
                .unwrap();
        }
        let before = std::fs::metadata(&path).unwrap().len();
        compact(&s).await;
        let after = std::fs::metadata(&path).unwrap().len();
        assert!(after < before / 10, "{before} -> {after}");
        s.commit(e, vec![put("i", "4")]).await.unwrap();
        // Growth past the threshold compacts on its own, while commits go on.
        for round in 0..4000 {
            s.commit(e, vec![put("h", &format!("{round:0100}"))])
                .await
                .unwrap();
        }
        assert!(std::fs::metadata(&path).unwrap().len() < 200 * 1024);
    }
    let s = EmbeddedStore::open(dir.path(), SyncMode::Batch).unwrap();
    let all = s.load("").await.unwrap();
    let keys: Vec<&str> = all.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["h", "i", "j", "k", "meta/epoch"]);
    assert_eq!(s.load("k").await.unwrap()[0].1, b"199");
    assert_eq!(
        s.load("h").await.unwrap()[0].1,
        format!("{:0100}", 3999).as_bytes()
    );
    assert!(!dir.path().join("state.log.tmp").exists());
}

#[tokio::test]
async fn a_large_state_is_compacted_in_several_frames_with_every_value_intact() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.log");
    let value = |i: usize, round: usize| format!("{i}:{round}:{}", "v".repeat(700 + i % 300));
    {
        let s = EmbeddedStore::open_with(dir.path(), SyncMode::Batch, u64::MAX).unwrap();
        let e = s.acquire().await.unwrap().epoch;
        // 12,000 keys of about 1 KB (about 6 MB live after the deletes: two snapshot frames at least), each
        // written twice, and half of them deleted.
        for round in 0..2 {
            for chunk in (0..12_000).collect::<Vec<_>>().chunks(1000) {
                let ops = chunk
                    .iter()
                    .map(|&i| put(&format!("k/{i:05}"), &value(i, round)))
                    .collect();
                s.commit(e, ops).await.unwrap();
            }
        }
        let deletes = (0..12_000)
            .step_by(2)
            .map(|i| Op::Delete {
                key: format!("k/{i:05}"),
            })
            .collect();
        s.commit(e, deletes).await.unwrap();
        let before = std::fs::metadata(&path).unwrap().len();
        compact(&s).await;
        let after = std::fs::metadata(&path).unwrap().len();
        assert!(after < before / 3, "{before} -> {after}");
    }
    // Several frames, each intact: replay reads them one at a time.
    let mut frames = 0;
    let mut live = std::collections::BTreeMap::new();
    let data = std::fs::read(&path).unwrap();
    let mut pos = 0;
    while pos < data.len() {
        let len = u32::from_le_bytes(data[pos..pos + 4].try_into().unwrap()) as usize;
        frames += 1;
        pos += 8 + len;
    }
    assert!(frames >= 2, "{frames} frames");
    assert_eq!(log::replay_bytes(&data, &mut live).unwrap(), data.len());
    let s = EmbeddedStore::open(dir.path(), SyncMode::Batch).unwrap();
    let all = s.load("k/").await.unwrap();
    assert_eq!(all.len(), 6000);
    for (k, v) in all {
        let i: usize = k["k/".len()..].parse().unwrap();
        assert_eq!(i % 2, 1);
        assert_eq!(v, value(i, 1).as_bytes(), "{k}");
    }
}

#[tokio::test]
async fn pipelined_commits_land_in_order_and_a_failed_one_fails_the_rest_of_its_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let s = EmbeddedStore::open(dir.path(), SyncMode::Batch).unwrap();
    let e = s.acquire().await.unwrap().epoch;
    let create = |k: &str| Op::Create {
        key: k.into(),
        value: b"1".to_vec(),
    };
    let ticket = |sub: Submitted| match sub {
        Submitted::Queued(t) => t,
        Submitted::NotPipelined(_) => panic!("the embedded store pipelines"),
    };
    // Queued without waiting, answered in order.
    let a = ticket(s.submit(e, vec![create("a"), put("n", "1")]));
    let b = ticket(s.submit(e, vec![put("n", "2")]));
    a.await.unwrap();
    b.await.unwrap();
    // A conflict fails its commit and every later one of the epoch, which were computed
    // as if it had landed.
    let c = ticket(s.submit(e, vec![create("a")]));
    let d = ticket(s.submit(e, vec![put("n", "3")]));
    assert!(matches!(c.await, Err(StoreError::Conflict(k)) if k == "a"));
    let refused = d.await.unwrap_err().to_string();
    assert!(refused.contains("an earlier commit of epoch"), "{refused}");
    assert_eq!(s.load("n").await.unwrap()[0].1, b"2");
    // The next leader (a new epoch) writes again.
    let e2 = s.acquire().await.unwrap().epoch;
    ticket(s.submit(e2, vec![put("n", "4")])).await.unwrap();
    assert_eq!(s.load("n").await.unwrap()[0].1, b"4");
}
