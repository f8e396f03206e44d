//! Garbage collection of S3 packs on the cluster: a pack nothing references (as a crash
//! between upload and commit leaves it) is deleted; packs holding results of a finished
//! run (referenced by its archive) and of a live run (referenced by the leader's state)
//! are kept, and every result still reads back.

use crate::support::*;
use baton_common::result_store::{object_of, ResultStore};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_collection_deletes_only_packs_nothing_references() -> anyhow::Result<()> {
    let _one = serial().await;
    let c = cluster(Default::default(), &[("w1", "local", 4)]).await?;
    let ledger = Ledger::default();
    // A finished run: its results are referenced by its archive alone.
    let done = start_run(&c, &fan_out("gc_done", 30, 1), "gc-done").await?;
    let done_trs = check_fan_out(&c, &ledger, &done, 30).await?;
    let store = c.s3.store("cluster").await?;
    let archive = format!("{}/archive/runs/{done}.pb", c.result_store());
    baton_testkit::eventually(Duration::from_secs(30), "the run's archive", || async {
        store.exists(&archive).await.ok()?.then_some(())
    })
    .await?;
    // A result uploaded and never committed, as a crash between upload and commit leaves
    // it: a pack of its own (this store's packer holds nothing else).
    let stray = store
        .put(
            "results/gc-stray/work/0/attempt-1.json",
            bytes::Bytes::from_static(b"41"),
            "application/json",
        )
        .await?;
    let stray_pack = object_of(&stray.uri).to_string();
    assert!(stray_pack.ends_with(".pack"), "{}", stray.uri);
    // A live run, partly done.
    let live = start_run(&c, &fan_out("gc_live", 40, 200), "gc-live").await?;
    wait_completed(&c, &live, 8).await?;
    // Every object now looks two hours old.
    let aged = baton_testkit::age::backdate(&c.s3.data_dir(), Duration::from_secs(7200))?;
    assert!(aged >= 3, "{aged} files backdated");

    let client = leader_client(&c, Duration::from_secs(10)).await?;
    // A new leader first waits for its workers to report what they held.
    baton_testkit::eventually(Duration::from_secs(30), "the leader to settle", || async {
        match client.collect_garbage(3600, true).await {
            Err(e) if e.to_string().contains("elected moments ago") => None,
            other => Some(other),
        }
    })
    .await??;
    let err = client
        .collect_garbage(60, false)
        .await
        .expect_err("a grace period of a minute accepted");
    assert!(err.to_string().contains("at least 600"), "{err}");

    // A dry run names the stray pack and deletes nothing.
    let dry = client.collect_garbage(3600, true).await?;
    assert!(dry.dry_run && dry.deleted == 0, "{dry:?}");
    assert!(dry.unreferenced_uris.contains(&stray_pack), "{dry:?}");
    assert!(
        dry.referenced >= 2,
        "the two runs' packs are referenced: {dry:?}"
    );
    assert!(dry.archives_read >= 1, "{dry:?}");
    assert!(store.exists(&stray_pack).await?);

    // The pass deletes what nothing references, the stray pack among them.
    let gc = client.collect_garbage(3600, false).await?;
    assert_eq!(gc.deleted, gc.unreferenced, "{gc:?}");
    assert!(gc.unreferenced_uris.contains(&stray_pack), "{gc:?}");
    assert_eq!(gc.referenced, dry.referenced, "{gc:?} after {dry:?}");
    assert!(
        !store.exists(&stray_pack).await?,
        "{stray_pack} is still there"
    );

    // Every result of both runs still reads back: the finished run's (kept for its
    // archive) and the live run's, which completes.
    check_results(&c, &done_trs).await?;
    let live_trs = check_fan_out(&c, &ledger, &live, 40).await?;
    for t in done_trs.iter().chain(&live_trs) {
        if let Some(r) = &t.result {
            let bytes = store.get(&r.uri).await?;
            assert_eq!(
                baton_common::result_store::checksum(&bytes),
                r.checksum,
                "{}[{}] at {}",
                t.task,
                t.map_index,
                r.uri
            );
        }
    }
    // Nothing left to collect that is old enough.
    let again = client.collect_garbage(3600, false).await?;
    assert_eq!(again.unreferenced, 0, "{again:?}");
    Ok(())
}
