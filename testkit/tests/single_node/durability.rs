//! The single-node state store on real processes with default settings (fsync on): a
//! scheduler killed -9 in the middle of a 20,000-task fan-out loses nothing and completes
//! no task run twice; a damaged byte in the middle of the state log stops the scheduler
//! from starting, naming the offset; a write that fails (the log past the process's file
//! size limit, as on a full disk) stops the scheduler taking work, and after a restart
//! with room again every acknowledged commit is there.

use baton_client::Client;
use baton_proto as pb;
use baton_testkit::{eventually, Cluster};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

fn fan_out(n: usize) -> String {
    format!(
        r#"
name: fan
labels: [local]
tasks:
  - name: items
    builtin: range
    inputs: {{n: {n}}}
  - name: work
    builtin: noop
    inputs: {{x: {{result: items}}}}
    map: [x]
"#
    )
}

fn completed(t: &pb::TaskRun) -> bool {
    t.state == pb::TaskState::Completed as i32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_killed_mid_fan_out_completes_every_task_run_once() -> anyhow::Result<()> {
    const N: usize = 20_000;
    let mut cluster = Cluster::start(&[]).await?;
    cluster.add_worker("w1", "local", 16)?;
    cluster.add_worker("w2", "local", 16)?;
    let c = Client::connect(&cluster.url()).await?;
    let run = c
        .run_source(fan_out(N), BTreeMap::new(), "fan-1".into())
        .await?
        .run
        .ok_or_else(|| anyhow::anyhow!("no run"))?;
    // Completed task runs as a client saw them before the kill: (index) -> result.
    let before: HashMap<i64, String> = eventually(
        Duration::from_secs(120),
        "a quarter of the fan-out done",
        || {
            let (c, id) = (c.clone(), run.id.clone());
            async move {
                let r = c.get_run(&id).await.ok()?;
                if (r.tasks_done as usize) < N / 4 {
                    return None;
                }
                let trs = c.task_runs(&id, false).await.ok()?;
                Some(
                    trs.iter()
                        .filter(|t| t.task == "work" && completed(t))
                        .map(|t| (t.map_index, t.result.clone().unwrap_or_default().uri))
                        .collect(),
                )
            }
        },
    )
    .await?;
    assert!(
        before.len() >= N / 4 - 64,
        "{} seen completed",
        before.len()
    );
    cluster.restart_scheduler().await?;
    let c = Client::connect(&cluster.url()).await?;
    let done = tokio::time::timeout(Duration::from_secs(300), c.wait(&run.id)).await??;
    cluster.assert_completed(&done);
    let trs = c.task_runs(&run.id, false).await?;
    let work: Vec<&pb::TaskRun> = trs.iter().filter(|t| t.task == "work").collect();
    assert_eq!(work.len(), N);
    let mut uris = std::collections::HashSet::new();
    for t in &work {
        assert!(completed(t), "work[{}] is not completed", t.map_index);
        let uri = &t.result.as_ref().expect("a result").uri;
        assert!(uris.insert(uri.clone()), "result {uri} is shared");
        if let Some(seen) = before.get(&t.map_index) {
            assert_eq!(seen, uri, "work[{}] completed twice", t.map_index);
            assert_eq!(t.attempt, 1, "work[{}] ran again", t.map_index);
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_byte_in_the_middle_of_the_log_stops_the_start_naming_the_offset(
) -> anyhow::Result<()> {
    let mut cluster = Cluster::start(&[]).await?;
    cluster.add_worker("w1", "local", 8)?;
    let c = Client::connect(&cluster.url()).await?;
    for i in 0..3 {
        let run = c
            .run_source(fan_out(50), BTreeMap::new(), format!("small-{i}"))
            .await?
            .run
            .ok_or_else(|| anyhow::anyhow!("no run"))?;
        cluster.assert_completed(&c.wait(&run.id).await?);
    }
    cluster.scheduler.kill9();
    let log = cluster.data_dir().join("state").join("state.log");
    let mut bytes = std::fs::read(&log)?;
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5a;
    std::fs::write(&log, &bytes)?;
    cluster.respawn_scheduler()?;
    let status = eventually(Duration::from_secs(30), "the scheduler to exit", || {
        let s = cluster.scheduler.child.try_wait().ok().flatten();
        async move { s }
    })
    .await?;
    assert!(!status.success(), "a scheduler with a corrupt log started");
    let out = std::fs::read_to_string(&cluster.scheduler.log)?;
    assert!(out.contains("damaged frame at offset"), "{out}");
    // The offset named is that of the frame holding the damaged byte, at or before it.
    let offset: usize = out
        .split("damaged frame at offset ")
        .nth(1)
        .and_then(|s| s.split(|ch: char| !ch.is_ascii_digit()).next())
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no offset in: {out}"))?;
    assert!(
        offset <= middle && middle - offset < bytes.len() / 2,
        "{offset} vs {middle}"
    );
    // The log was left as it was, for an operator.
    assert_eq!(std::fs::read(&log)?, bytes);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_stops_the_scheduler_cleanly_and_loses_no_acknowledged_commit(
) -> anyhow::Result<()> {
    // The state log may not grow past 3 MB: a write that crosses it fails part-way.
    let mut cluster = Cluster::start_under(&["prlimit", "--fsize=3000000"], &[]).await?;
    cluster.add_worker("w1", "local", 16)?;
    let c = Client::connect(&cluster.url())
        .await?
        .with_retry_for(Duration::from_secs(2));
    // Runs one after another until the scheduler refuses: (run, finished state) of each
    // run whose creation was acknowledged; the state if its end was seen.
    let mut acked: Vec<(String, Option<pb::FlowRun>)> = Vec::new();
    for i in 0..400 {
        let created = c
            .run_source(fan_out(200), BTreeMap::new(), format!("k-{i}"))
            .await;
        let Ok(Some(run)) = created.map(|r| r.run) else {
            break;
        };
        let end = tokio::time::timeout(Duration::from_secs(20), c.wait(&run.id)).await;
        let end = end.ok().and_then(Result::ok);
        let stop = end.is_none();
        acked.push((run.id, end));
        if stop {
            break;
        }
    }
    assert!(
        acked.len() >= 3,
        "the limit was hit too early: {}",
        cluster.logs()
    );
    assert!(acked.len() < 400, "the file size limit was never reached");
    // It stopped cleanly: alive, refusing work, the write failure in its log.
    assert!(cluster.scheduler.alive(), "{}", cluster.logs());
    // It keeps trying to lead, and a write small enough for the room left would still
    // land ("until it can write again"); a run larger than any step written so far cannot.
    let padded = fan_out(5).replace("tasks:", "parameters:\n  pad:\n    default: \"\"\ntasks:");
    let big = BTreeMap::from([("pad".to_string(), format!("\"{}\"", "x".repeat(512 << 10)))]);
    let refused = c.run_source(padded, big, "after-the-failure".into()).await;
    assert!(
        matches!(&refused, Err(e) if !e.to_string().contains("parameter")),
        "refused for want of room, not for a bad flow: {refused:?}"
    );
    assert!(
        refused.is_err(),
        "a run was accepted after the failed write: {}",
        cluster.logs()
    );
    let log = std::fs::read_to_string(&cluster.scheduler.log)?;
    assert!(log.contains("state log write failed"), "{log}");
    // The engine stopped on its own: the replica stepped down without a panic and
    // campaigned again (a second election), still alive.
    let path = cluster.scheduler.log.clone();
    let log = eventually(Duration::from_secs(20), "a second election", || {
        let path = path.clone();
        async move {
            let log = std::fs::read_to_string(path).ok()?;
            (log.contains("engine stopped; stepping down")
                && log.matches("elected; loading state").count() >= 2)
                .then_some(log)
        }
    })
    .await?;
    assert!(!log.contains("panicked"), "{log}");
    assert!(cluster.scheduler.alive(), "{}", cluster.logs());

    // Room again: restart without the limit; every acknowledged run is there, every run
    // seen completed is still completed, and the others complete now.
    cluster.set_scheduler_prefix(&[]);
    cluster.restart_scheduler().await?;
    let c = Client::connect(&cluster.url()).await?;
    for (id, end) in &acked {
        let now = tokio::time::timeout(Duration::from_secs(60), c.wait(id)).await??;
        cluster.assert_completed(&now);
        if let Some(end) = end {
            assert_eq!(end.state, now.state, "run {id}");
            assert_eq!(end.tasks_done, now.tasks_done, "run {id}");
        }
    }
    Ok(())
}
