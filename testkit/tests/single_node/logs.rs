//! Task logs on real processes: a process task's stdout and stderr lines and a built-in
//! task's tracing events reach the scheduler, are stored per attempt in the result store,
//! and `baton logs` prints them, in order, after the run or (`--follow`) as they come.

use crate::support;
use baton_client::Client;
use baton_testkit::ha::HaConfig;
use baton_testkit::{bin_path, eventually, Cluster};
use std::collections::BTreeMap;
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn baton_logs(cluster: &Cluster, args: &[&str]) -> anyhow::Result<std::process::Output> {
    Ok(Command::new(bin_path("baton")?)
        .args(["--scheduler", &cluster.url(), "logs"])
        .args(args)
        .output()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baton_logs_prints_a_process_tasks_lines_in_order() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(&[]).await?;
    cluster.add_worker("w", "local", 2)?;
    let c = Client::connect(&cluster.url()).await?;
    let flow = "name: talk\ntasks:\n  - name: talk\n    process:\n      command: sh\n      args: [\"-c\", \"for i in $(seq 1 200); do echo line-$i; done; echo oops >&2; echo 0\"]\n";
    let run = c
        .run_source(flow.into(), BTreeMap::new(), uuid_key())
        .await?
        .run
        .expect("run");
    let done = c.wait(&run.id).await?;
    cluster.assert_completed(&done);

    let out = baton_logs(&cluster, &[&run.id])?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("talk#1 stdout: "))
        .collect();
    let want: Vec<String> = (1..=200).map(|i| format!("line-{i}")).collect();
    assert_eq!(stdout, want, "{text}");
    assert!(text.lines().any(|l| l == "talk#1 stderr: oops"), "{text}");

    // One task's lines only; an unknown run is an error.
    let out = baton_logs(&cluster, &[&run.id, "nosuch"])?;
    assert!(out.status.success() && out.stdout.is_empty());
    let out = baton_logs(&cluster, &["no-such-run"])?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("NotFound")
            || String::from_utf8_lossy(&out.stderr).contains("not found"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The lines are in the result store, per attempt, as JSON lines.
    let object = cluster
        .store_dir()
        .join("logs")
        .join(&run.id)
        .join("talk")
        .join("attempt-1.0.log");
    let stored = eventually(Duration::from_secs(10), "the stored log object", || {
        let object = object.clone();
        async move { std::fs::read_to_string(object).ok() }
    })
    .await?;
    let first: serde_json::Value = serde_json::from_str(stored.lines().next().unwrap_or(""))?;
    assert_eq!(first["stream"], "stdout");
    assert_eq!(first["line"], "line-1");
    assert!(first["at_ms"].as_i64().unwrap_or(0) > 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_builtin_tasks_tracing_events_are_its_log_lines() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(&[]).await?;
    cluster.add_worker("w", "local,trainer", 2)?;
    let c = Client::connect(&cluster.url()).await?;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let flow = std::fs::read_to_string(root.join("examples/ridge_sweep.yaml"))?;
    let params = BTreeMap::from([("alphas".to_string(), "[0.5]".to_string())]);
    let run = c
        .run_source(flow, params, uuid_key())
        .await?
        .run
        .expect("run");
    let done = c.wait(&run.id).await?;
    cluster.assert_completed(&done);
    let out = baton_logs(&cluster, &[&run.id, "train"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().any(
            |l| l.starts_with("train[0]#1 log: INFO trained a ridge model")
                && l.contains("alpha=0.5")
        ),
        "{text}\n{}",
        cluster.logs()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baton_logs_follow_prints_lines_as_they_come_and_ends_with_the_run() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(&[]).await?;
    cluster.add_worker("w", "local", 2)?;
    let c = Client::connect(&cluster.url()).await?;
    let flow = "name: ticks\ntasks:\n  - name: tick\n    process:\n      command: sh\n      args: [\"-c\", \"for i in $(seq 1 20); do echo tick-$i; sleep 0.1; done; echo 0\"]\n";
    let run = c
        .run_source(flow.into(), BTreeMap::new(), uuid_key())
        .await?
        .run
        .expect("run");
    let mut child = Command::new(bin_path("baton")?)
        .args(["--scheduler", &cluster.url(), "logs", &run.id, "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .map(|l| (Instant::now(), l))
            .collect::<Vec<_>>()
    });
    let done = c.wait(&run.id).await?;
    cluster.assert_completed(&done);
    let ended = Instant::now();
    let status = eventually(
        Duration::from_secs(10),
        "`baton logs --follow` to exit",
        || {
            let s = child.try_wait().ok().flatten();
            async move { s }
        },
    )
    .await;
    let Ok(status) = status else {
        let _ = child.kill();
        anyhow::bail!("`baton logs --follow` did not exit after the run ended");
    };
    assert!(status.success());
    let lines = reader.join().expect("reader");
    let texts: Vec<&str> = lines.iter().map(|(_, l)| l.as_str()).collect();
    let want: Vec<String> = (1..=20)
        .map(|i| format!("tick#1 stdout: tick-{i}"))
        .collect();
    assert_eq!(texts, want);
    // Printed as they came: the first well before the run ended.
    let first = lines[0].0;
    assert!(
        ended.duration_since(first) >= Duration::from_millis(800),
        "the first line came only {:?} before the run ended",
        ended.duration_since(first)
    );
    Ok(())
}

/// An idempotency key, so that creating the run is retried while the scheduler is still
/// being elected.
fn uuid_key() -> String {
    format!("logs-test-{}-{:?}", std::process::id(), Instant::now())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baton_logs_follow_goes_on_through_a_leader_failover() -> anyhow::Result<()> {
    let _serial = support::serial().await;
    let mut c = support::cluster(HaConfig::default(), &[("logs-hw", "local", 2)]).await?;
    // 20 s of lines: under a loaded machine the failover can take most of 10 s, and lines
    // written while no leader runs may be lost; the test needs lines written after it.
    let flow = "name: chatty\ntasks:\n  - name: talk\n    process:\n      command: sh\n      args: [\"-c\", \"for i in $(seq 1 200); do echo line-$i; sleep 0.1; done; echo 0\"]\n";
    let run = support::start_run(&c, flow, &uuid_key()).await?;
    let all = c.urls().join(",");
    let mut follow = Command::new(bin_path("baton")?)
        .args(["--scheduler", &all, "logs", &run, "--follow"])
        .env("BATON_TOKEN", c.token())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = follow
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let reader = std::thread::spawn(move || {
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<String>>()
    });
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (old, _) = c.wait_leader(Duration::from_secs(10), None).await?;
    c.kill9_scheduler(old);
    c.wait_leader(Duration::from_secs(30), Some(old)).await?;
    let done = support::wait_run(&c, &run, Duration::from_secs(60)).await?;
    assert_eq!(
        done.state,
        baton_proto::RunState::Completed as i32,
        "{done:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = follow.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = follow.kill();
            anyhow::bail!(
                "`baton logs --follow` did not end with the run\n{}",
                c.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let lines = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the reader panicked"))?;
    assert!(status.success(), "{status}: {lines:?}");
    // (attempt, line number) in the order printed; the task may have been re-run as
    // attempt 2 if its worker was not back within the new leader's adoption grace.
    let seen: Vec<(u32, u32)> = lines
        .iter()
        .filter_map(|l| {
            let rest = l.strip_prefix("talk#")?;
            let (attempt, n) = rest.split_once(" stdout: line-")?;
            Some((attempt.parse().ok()?, n.parse().ok()?))
        })
        .collect();
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), seen.len(), "no line printed twice: {seen:?}");
    let last_attempt = seen.iter().map(|(a, _)| *a).max().unwrap_or(0);
    for a in 1..=last_attempt {
        let nums: Vec<u32> = seen
            .iter()
            .filter(|(x, _)| *x == a)
            .map(|(_, n)| *n)
            .collect();
        assert!(
            nums.windows(2).all(|w| w[0] < w[1]),
            "attempt {a}'s lines in order: {nums:?}"
        );
    }
    let last: Vec<u32> = seen
        .iter()
        .filter(|(a, _)| *a == last_attempt)
        .map(|(_, n)| *n)
        .collect();
    assert_eq!(
        last.last(),
        Some(&200),
        "the lines written after the failover are followed: {seen:?}"
    );
    Ok(())
}
