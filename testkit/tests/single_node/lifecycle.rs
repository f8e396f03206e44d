//! Run and worker lifecycle on real processes: cancelling a run stops its process tasks;
//! a worker killed with SIGKILL takes its process tasks (and their children) with it; a
//! worker drains on SIGTERM, finishing what it runs.

use baton_client::Client;
use baton_proto as pb;
use baton_testkit::{eventually, Cluster};
use std::collections::BTreeMap;
use std::time::Duration;

fn alive(pid: i32) -> bool {
    // A zombie still answers kill(0); look at its state too.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let zombie = status
        .lines()
        .any(|l| l.starts_with("State:") && l.contains('Z'));
    // SAFETY: probing a pid with signal 0 sends nothing.
    unsafe { libc::kill(pid, 0) == 0 && !zombie }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_run_kills_its_process_tasks() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(&[]).await?;
    cluster.add_worker("w", "local", 2)?;
    let c = Client::connect(&cluster.url()).await?;
    let pidfile = cluster.dir.path().join("pid");
    let flow = format!(
        "name: long\ntasks:\n  - name: sleepy\n    process:\n      command: sh\n      args: [\"-c\", \"echo $$ > {}; sleep 60; echo 1\"]\n  - name: after\n    builtin: noop\n    after: [sleepy]\n",
        pidfile.display()
    );
    let run = c
        .run_source(flow, BTreeMap::new(), String::new())
        .await?
        .run
        .expect("run");
    let pid: i32 = eventually(Duration::from_secs(20), "the process to start", || {
        let p = pidfile.clone();
        async move { std::fs::read_to_string(p).ok()?.trim().parse().ok() }
    })
    .await?;
    assert!(alive(pid));
    let out = std::process::Command::new(baton_testkit::bin_path("baton")?)
        .args(["--scheduler", &cluster.url(), "cancel", &run.id])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(
        Duration::from_secs(10),
        "the process to be killed",
        || async move { (!alive(pid)).then_some(()) },
    )
    .await?;
    let done = c.get_run(&run.id).await?;
    assert_eq!(done.state, pb::RunState::Cancelled as i32);
    let trs = c.task_runs(&run.id, false).await?;
    assert!(
        trs.iter()
            .all(|t| t.state == pb::TaskState::Cancelled as i32),
        "{trs:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_process_tasks_die_with_it() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(&[]).await?;
    let w = cluster.add_worker("doomed", "local", 2)?;
    let c = Client::connect(&cluster.url()).await?;
    let pidfile = cluster.dir.path().join("pids");
    // The shell and a child of its own, both recorded.
    let flow = format!(
        "name: orphan\ntasks:\n  - name: sleepy\n    process:\n      command: sh\n      args: [\"-c\", \"sleep 300 & echo $! >> {0}; echo $$ >> {0}; wait; echo 1\"]\n",
        pidfile.display()
    );
    c.run_source(flow, BTreeMap::new(), String::new()).await?;
    let pids: Vec<i32> = eventually(Duration::from_secs(20), "the processes to start", || {
        let p = pidfile.clone();
        async move {
            let pids: Vec<i32> = std::fs::read_to_string(p)
                .ok()?
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect();
            (pids.len() == 2).then_some(pids)
        }
    })
    .await?;
    assert!(pids.iter().all(|&p| alive(p)));
    cluster.workers[w].kill9();
    eventually(
        Duration::from_secs(10),
        "the task's processes to die with their worker",
        || {
            let pids = pids.clone();
            async move { pids.iter().all(|&p| !alive(p)).then_some(()) }
        },
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_drains_on_sigterm() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(&[]).await?;
    cluster.add_worker("w", "local", 2)?;
    let c = Client::connect(&cluster.url()).await?;
    let flow = "name: drain\ntasks:\n  - {name: s, builtin: sleep, inputs: {ms: 1500, value: 7}}\n  - {name: t, builtin: echo, inputs: {value: {result: s}}}\n";
    let run = c
        .run_source(flow.into(), BTreeMap::new(), String::new())
        .await?
        .run
        .expect("run");
    eventually(Duration::from_secs(20), "the sleep to run", || {
        let c = c.clone();
        let id = run.id.clone();
        async move {
            let trs = c.task_runs(&id, false).await.ok()?;
            (trs[0].state == pb::TaskState::Running as i32).then_some(())
        }
    })
    .await?;
    let status = cluster.workers[0].terminate().expect("exit status");
    assert!(status.success(), "worker exited with {status}");
    // The attempt it was running finished and was committed before it left.
    let trs = c.task_runs(&run.id, true).await?;
    assert_eq!(
        trs[0].state,
        pb::TaskState::Completed as i32,
        "{:?}\n{}",
        trs[0],
        cluster.logs()
    );
    assert_eq!(trs[0].value, "7");
    // The rest runs on a new worker.
    cluster.add_worker("w2", "local", 2)?;
    let done = tokio::time::timeout(Duration::from_secs(30), c.wait(&run.id)).await??;
    assert_eq!(done.state, pb::RunState::Completed as i32);
    let trs = c.task_runs(&run.id, true).await?;
    assert_eq!(trs[1].worker, "w2");
    assert_eq!(trs[1].value, "7");
    Ok(())
}
