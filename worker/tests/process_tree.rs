//! Process tasks under their shim (the `baton-worker` binary, as in production), with real
//! processes: a task ends when its command exits even if a `setsid`'ed child holds its stdout,
//! and cancellation, a timeout, the command's exit and the worker's death (a SIGKILLed process
//! running the task) kill every process it started, `setsid`'ed and double-forked ones too.

use baton_common::ids::AttemptKey;
use baton_common::result_store::{LocalStore, ResultStore};
use baton_proto as proto;
use baton_worker::executor::{execute, CANCELLED};
use proto::finished::Outcome;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The environment variable that makes `worker_death_helper` run its task.
const DEATH_DIR: &str = "BATON_TEST_WORKER_DEATH_DIR";

/// Starts a `setsid`'ed child (new session, stdout kept) and a double-forked `setsid`'ed one,
/// records their pids and its own under `$PIDS`, then sleeps.
const ESCAPING_SCRIPT: &str = r#"
setsid sh -c 'echo $$ > "$PIDS/setsid.tmp"; mv "$PIDS/setsid.tmp" "$PIDS/setsid"; exec sleep 30' &
(setsid sh -c 'echo $$ > "$PIDS/daemon.tmp"; mv "$PIDS/daemon.tmp" "$PIDS/daemon"; exec sleep 30' &)
echo $$ > "$PIDS/main.tmp"; mv "$PIDS/main.tmp" "$PIDS/main"
sleep 30
"#;
const ESCAPING_PIDS: [&str; 3] = ["main", "setsid", "daemon"];

fn use_the_worker_binary_as_shim() {
    baton_worker::shim::set_program(env!("CARGO_BIN_EXE_baton-worker"));
}

fn key() -> AttemptKey {
    AttemptKey {
        run: "r1".into(),
        task: "t".into(),
        map_index: -1,
        attempt: 1,
    }
}

fn sh(script: &str, pids: &Path) -> Value {
    json!({
        "kind": "process",
        "command": "sh",
        "args": ["-c", script],
        "env": {"PIDS": pids.to_str().expect("a UTF-8 temp path")},
    })
}

/// Runs one assignment with a store under `dir`.
async fn run(
    dir: &Path,
    spec: Value,
    inputs: Value,
    timeout_ms: u64,
    cancel: CancellationToken,
) -> proto::Finished {
    use_the_worker_binary_as_shim();
    let store: Arc<dyn ResultStore> = Arc::new(LocalStore::new(dir.join("store")).unwrap());
    let assign = proto::Assign {
        key: Some((&key()).into()),
        task_spec: spec.to_string(),
        inputs: inputs.to_string(),
        timeout_ms,
        ..Default::default()
    };
    let (tx, _rx) = mpsc::unbounded_channel();
    // A worker started with `--allow process`.
    let grant = baton_worker::task::Grant {
        processes: true,
        ..Default::default()
    };
    execute(key(), assign, grant, store, cancel, tx).await
}

/// Like [`run`], failing the test instead of hanging.
async fn run_bounded(
    dir: &Path,
    spec: Value,
    inputs: Value,
    timeout_ms: u64,
    cancel: CancellationToken,
) -> proto::Finished {
    tokio::time::timeout(
        Duration::from_secs(30),
        run(dir, spec, inputs, timeout_ms, cancel),
    )
    .await
    .expect("the task ended")
}

fn success(fin: &proto::Finished) -> &proto::TaskSuccess {
    match &fin.outcome {
        Some(Outcome::Success(s)) => s,
        other => panic!("expected success, got {other:?}"),
    }
}

fn failure(fin: &proto::Finished) -> &proto::TaskFailure {
    match &fin.outcome {
        Some(Outcome::Failure(e)) => e,
        other => panic!("expected failure, got {other:?}"),
    }
}

/// Whether `pid` is gone (or a zombie nobody reaps, as in containers without an init).
fn gone(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    if unsafe { libc::kill(pid, 0) } != 0 {
        return true;
    }
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// Waits (bounded) until every pid is gone; kills the survivors and fails if one is not.
async fn assert_all_gone(pids: &[(&str, i32)]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let alive: Vec<_> = pids.iter().filter(|(_, pid)| !gone(*pid)).collect();
        if alive.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            for (_, pid) in &alive {
                // SAFETY: kill has no memory effects; these are the test's own leftovers.
                unsafe {
                    libc::kill(*pid, libc::SIGKILL);
                }
            }
            panic!("processes survived their task: {alive:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (bounded) for the pid files `names` under `dir`.
async fn wait_for_pids<'a>(dir: &Path, names: &[&'a str]) -> Vec<(&'a str, i32)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let read: Option<Vec<_>> = names
            .iter()
            .map(|&name| {
                let text = std::fs::read_to_string(dir.join(name)).ok()?;
                Some((name, text.trim().parse::<i32>().ok()?))
            })
            .collect();
        if let Some(pids) = read {
            return pids;
        }
        assert!(Instant::now() < deadline, "the task never wrote its pids");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_setsid_child_holding_stdout_neither_holds_nor_outlives_the_task() {
    let dir = tempfile::tempdir().unwrap();
    let script = r#"
setsid sh -c 'echo $$ > "$PIDS/bg.tmp"; mv "$PIDS/bg.tmp" "$PIDS/bg"; exec sleep 30' &
while [ ! -s "$PIDS/bg" ]; do sleep 0.01; done
echo '{"done": true}'
"#;
    let started = Instant::now();
    let fin = run_bounded(
        dir.path(),
        sh(script, dir.path()),
        json!({}),
        0,
        CancellationToken::new(),
    )
    .await;
    assert_eq!(success(&fin).inline_value, r#"{"done":true}"#);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    let pids = wait_for_pids(dir.path(), &["bg"]).await;
    assert_all_gone(&pids).await;
}

#[tokio::test]
async fn cancelling_kills_setsid_and_double_forked_children() {
    let dir = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();
    let (path, token) = (dir.path().to_path_buf(), cancel.clone());
    let spec = sh(ESCAPING_SCRIPT, &path);
    let task = tokio::spawn(async move { run_bounded(&path, spec, json!({}), 0, token).await });
    let pids = wait_for_pids(dir.path(), &ESCAPING_PIDS).await;
    assert!(pids.iter().all(|(_, pid)| !gone(*pid)), "{pids:?}");
    cancel.cancel();
    let fin = task.await.unwrap();
    assert_eq!(failure(&fin).error, CANCELLED);
    assert_all_gone(&pids).await;
}

#[tokio::test]
async fn a_timeout_kills_setsid_and_double_forked_children() {
    let dir = tempfile::tempdir().unwrap();
    let fin = run_bounded(
        dir.path(),
        sh(ESCAPING_SCRIPT, dir.path()),
        json!({}),
        3000,
        CancellationToken::new(),
    )
    .await;
    let e = failure(&fin);
    assert_eq!(e.error, "timed out after 3000 ms");
    assert!(e.retryable);
    let pids = wait_for_pids(dir.path(), &ESCAPING_PIDS).await;
    assert_all_gone(&pids).await;
}

/// Runs the escaping script as a task until this process is killed (by
/// `worker_death_kills_every_process_of_its_tasks`, which stands for a SIGKILLed worker).
#[tokio::test]
#[ignore = "run in a child process by worker_death_kills_every_process_of_its_tasks"]
async fn worker_death_helper() {
    let Some(dir) = std::env::var_os(DEATH_DIR) else {
        return;
    };
    let dir = Path::new(&dir);
    run(
        dir,
        sh(ESCAPING_SCRIPT, dir),
        json!({}),
        0,
        CancellationToken::new(),
    )
    .await;
}

#[tokio::test]
async fn worker_death_kills_every_process_of_its_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let mut worker = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "worker_death_helper",
            "--exact",
            "--ignored",
            "--test-threads=1",
        ])
        .env(DEATH_DIR, dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pids = wait_for_pids(dir.path(), &ESCAPING_PIDS).await;
    assert!(pids.iter().all(|(_, pid)| !gone(*pid)), "{pids:?}");
    // The worker's end of the shim's socket closes with it: no chance to clean up itself.
    worker.kill().unwrap();
    worker.wait().unwrap();
    assert_all_gone(&pids).await;
}

#[tokio::test]
async fn the_process_contract_holds_under_the_shim() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let process = |script: &str| sh(script, d);
    let none = CancellationToken::new;

    // Inputs on stdin, the last line is the result, the rest are logs.
    let inputs = json!({"x": [1, 2, 3], "name": "é"});
    let fin = run_bounded(d, process("echo log; cat"), inputs.clone(), 0, none()).await;
    let got: Value = serde_json::from_str(&success(&fin).inline_value).unwrap();
    assert_eq!(got, inputs);

    // The task's environment, on top of the worker's.
    let script = r#"echo "\"$BATON_TASK/$BATON_ATTEMPT/$PIDS/${PATH:+path}\"""#;
    let fin = run_bounded(d, process(script), json!({}), 0, none()).await;
    let expected = format!("\"t/1/{}/path\"", d.display());
    assert_eq!(success(&fin).inline_value, expected);

    // The command starts with no blocked signal (the shim blocks some).
    let script = r#"echo "\"$(grep '^SigBlk' /proc/self/status | tr -d ' \t\n')\"""#;
    let fin = run_bounded(d, process(script), json!({}), 0, none()).await;
    assert_eq!(success(&fin).inline_value, "\"SigBlk:0000000000000000\"");

    // Exit codes, the stderr tail, fatal exit codes and signals.
    let fin = run_bounded(d, process("echo oops >&2; exit 3"), json!({}), 0, none()).await;
    let e = failure(&fin);
    assert!(e.retryable);
    assert_eq!(e.error, "exit status 3; stderr:\noops");
    let mut spec = process("exit 4");
    spec["fatal_exit_codes"] = json!([4]);
    let fin = run_bounded(d, spec, json!({}), 0, none()).await;
    let e = failure(&fin);
    assert!(!e.retryable);
    assert!(e.error.contains("fatal exit code"), "{}", e.error);
    let fin = run_bounded(d, process("kill -9 $$"), json!({}), 0, none()).await;
    assert_eq!(failure(&fin).error, "killed by signal 9");

    // A command that cannot be found is a fatal error.
    let spec = json!({"kind": "process", "command": "/nonexistent/baton-test"});
    let fin = run_bounded(d, spec, json!({}), 0, none()).await;
    let e = failure(&fin);
    assert!(!e.retryable);
    assert!(
        e.error
            .starts_with("cannot start `/nonexistent/baton-test`: "),
        "{}",
        e.error
    );

    // A result without a final newline, from a process whose leftover holds stdout.
    let script = "setsid sleep 30 & printf '[1, 2]'";
    let fin = run_bounded(d, process(script), json!({}), 0, none()).await;
    assert_eq!(success(&fin).inline_value, "[1,2]");
}
