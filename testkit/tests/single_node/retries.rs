//! Retries and timeouts of process tasks on real processes: a fatal exit code is not
//! retried, any other non-zero exit is retried with backoff, and a timed-out attempt's whole
//! process group is killed.

use baton_client::Client;
use baton_proto as pb;
use baton_testkit::{eventually, Cluster};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

fn alive(pid: i32) -> bool {
    // A zombie still answers kill(0); look at its state too.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let zombie = status
        .lines()
        .any(|l| l.starts_with("State:") && l.contains('Z'));
    // SAFETY: probing a pid with signal 0 sends nothing.
    unsafe { libc::kill(pid, 0) == 0 && !zombie }
}

/// A flow of one process task `fails` running `sh -c SCRIPT`, with extra task settings.
fn one_process(name: &str, script: &str, extra: &str) -> String {
    format!(
        "name: {name}\ntasks:\n  - name: fails\n    process:\n      command: sh\n      args: [\"-c\", \"{script}\"]\n      fatal_exit_codes: [3]\n{extra}"
    )
}

/// Runs `flow` on a fresh single-node cluster with one worker; the finished run, its one
/// task run (the `fails` task) and the cluster (for logs).
async fn run_one(flow: String) -> anyhow::Result<(Cluster, pb::FlowRun, pb::TaskRun)> {
    let mut cluster = Cluster::start(&[]).await?;
    cluster.add_worker("w", "local", 2)?;
    let c = Client::connect(&cluster.url()).await?;
    let run = c
        .run_source(flow, BTreeMap::new(), String::new())
        .await?
        .run
        .expect("run");
    let done = tokio::time::timeout(Duration::from_secs(40), c.wait(&run.id)).await??;
    let trs = c.task_runs(&run.id, false).await?;
    let tr = trs
        .into_iter()
        .find(|t| t.task == "fails")
        .expect("the task run");
    Ok((cluster, done, tr))
}

fn attempts_log(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("attempts.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_exit_code_is_not_retried() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let script = format!(
        "echo $BATON_ATTEMPT >> {}/attempts.log; echo bad input >&2; exit 3",
        dir.path().display()
    );
    let flow = one_process("fatal", &script, "    retries: {count: 3, delay_s: 0.2}\n");
    let (cluster, done, tr) = run_one(flow).await?;
    assert_eq!(
        done.state,
        pb::RunState::Failed as i32,
        "{done:?}\n{}",
        cluster.logs()
    );
    assert_eq!(tr.state, pb::TaskState::Failed as i32, "{tr:?}");
    assert_eq!(tr.attempt, 1, "{tr:?}");
    assert_eq!(tr.attempts.len(), 1, "{:?}", tr.attempts);
    assert!(tr.error.contains("exit status 3"), "{}", tr.error);
    assert!(tr.error.contains("not retried"), "{}", tr.error);
    assert!(tr.error.contains("bad input"), "stderr tail: {}", tr.error);
    assert!(
        tr.attempts[0].error.contains("exit status 3"),
        "{:?}",
        tr.attempts[0]
    );
    assert_eq!(attempts_log(dir.path()), vec!["1"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_exit_is_retried_with_backoff() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let script = format!(
        "echo $BATON_ATTEMPT >> {}/attempts.log; exit 1",
        dir.path().display()
    );
    let flow = one_process(
        "backoff",
        &script,
        "    retries: {count: 2, delay_s: 0.5, backoff: 2}\n",
    );
    let (cluster, done, tr) = run_one(flow).await?;
    assert_eq!(
        done.state,
        pb::RunState::Failed as i32,
        "{done:?}\n{}",
        cluster.logs()
    );
    assert_eq!(tr.state, pb::TaskState::Failed as i32, "{tr:?}");
    assert_eq!(tr.attempt, 3, "{tr:?}");
    assert_eq!(tr.attempts.len(), 3, "{:?}", tr.attempts);
    assert!(tr.error.contains("exit status 1"), "{}", tr.error);
    assert!(!tr.error.contains("not retried"), "{}", tr.error);
    for (i, a) in tr.attempts.iter().enumerate() {
        assert_eq!(a.number, i as u32 + 1, "{a:?}");
        assert_eq!(a.worker, "w", "{a:?}");
        assert!(a.error.contains("exit status 1"), "{a:?}");
        assert!(a.started_ms > 0 && a.ended_ms >= a.started_ms, "{a:?}");
    }
    let a = &tr.attempts;
    let (gap1, gap2) = (
        a[1].started_ms - a[0].started_ms,
        a[2].started_ms - a[1].started_ms,
    );
    // The delay is counted from the failed attempt's end: 0.5 s, then 0.5 * 2 = 1 s.
    let (wait1, wait2) = (
        a[1].started_ms - a[0].ended_ms,
        a[2].started_ms - a[1].ended_ms,
    );
    eprintln!("starts {gap1} ms and {gap2} ms apart; waits {wait1} ms and {wait2} ms");
    assert!(gap1 >= 500 && wait1 >= 500, "{:?}", a);
    assert!(gap2 >= 1000 && wait2 >= 1000, "{:?}", a);
    // And not much longer (no jitter was asked for).
    assert!(wait1 < 2_000 && wait2 < 3_000, "{:?}", a);
    assert_eq!(attempts_log(dir.path()), vec!["1", "2", "3"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_process_and_its_children_are_killed() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (shell_pidfile, child_pidfile) = (dir.path().join("sh.pid"), dir.path().join("child.pid"));
    let script = format!(
        "echo $$ > {}; sleep 300 & echo $! > {}; wait; echo 1",
        shell_pidfile.display(),
        child_pidfile.display()
    );
    let flow = one_process("timeout", &script, "    timeout_s: 1\n");
    let started = Instant::now();
    let mut cluster = Cluster::start(&[]).await?;
    cluster.add_worker("w", "local", 2)?;
    let c = Client::connect(&cluster.url()).await?;
    let run = c
        .run_source(flow, BTreeMap::new(), String::new())
        .await?
        .run
        .expect("run");
    let read_pid = |p: std::path::PathBuf| async move {
        std::fs::read_to_string(p).ok()?.trim().parse::<i32>().ok()
    };
    let sh = eventually(Duration::from_secs(20), "the shell to start", || {
        read_pid(shell_pidfile.clone())
    })
    .await?;
    let child = eventually(Duration::from_secs(20), "the child to start", || {
        read_pid(child_pidfile.clone())
    })
    .await?;
    let done = tokio::time::timeout(Duration::from_secs(30), c.wait(&run.id)).await??;
    assert_eq!(
        done.state,
        pb::RunState::Failed as i32,
        "{done:?}\n{}",
        cluster.logs()
    );
    let trs = c.task_runs(&run.id, false).await?;
    let tr = &trs[0];
    assert_eq!(tr.state, pb::TaskState::Failed as i32, "{tr:?}");
    assert_eq!(tr.attempts.len(), 1, "{:?}", tr.attempts);
    assert!(tr.error.contains("timed out"), "{}", tr.error);
    assert!(
        tr.attempts[0].error.contains("timed out"),
        "{:?}",
        tr.attempts[0]
    );
    // Both the shell and its background child go.
    let gone = eventually(
        Duration::from_secs(10),
        "the processes to be killed",
        || async move { (!alive(sh) && !alive(child)).then_some(()) },
    )
    .await;
    assert!(
        gone.is_ok(),
        "after the timeout: shell {sh} alive {}, child {child} alive {}\n{}",
        alive(sh),
        alive(child),
        cluster.logs()
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    Ok(())
}
