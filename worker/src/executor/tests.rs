//! Tests of the executors against a local-folder store and real `sh` processes.

use super::*;
use baton_common::result_store::LocalStore;
use proto::finished::Outcome;
use serde_json::json;
use std::time::Instant;

fn key() -> AttemptKey {
    AttemptKey {
        run: "r1".into(),
        task: "t".into(),
        map_index: -1,
        attempt: 1,
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<dyn ResultStore>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ResultStore> = Arc::new(LocalStore::new(dir.path()).unwrap());
    Fixture { _dir: dir, store }
}

fn sh(script: &str) -> Value {
    json!({"kind": "process", "command": "sh", "args": ["-c", script]})
}

fn assign(spec: Value, inputs: Value, timeout_ms: u64) -> proto::Assign {
    proto::Assign {
        key: Some((&key()).into()),
        task_spec: spec.to_string(),
        inputs: inputs.to_string(),
        timeout_ms,
        ..Default::default()
    }
}

/// Runs one assignment; returns its `Finished` and the log lines it wrote.
async fn run(
    f: &Fixture,
    spec: Value,
    inputs: Value,
    timeout_ms: u64,
    cancel: CancellationToken,
) -> (proto::Finished, Vec<TaskLog>) {
    let grant = crate::task::Grant {
        processes: true,
        ..Default::default()
    };
    run_with_gpus(f, spec, inputs, timeout_ms, cancel, grant).await
}

async fn run_with_gpus(
    f: &Fixture,
    spec: Value,
    inputs: Value,
    timeout_ms: u64,
    cancel: CancellationToken,
    gpus: crate::task::Grant,
) -> (proto::Finished, Vec<TaskLog>) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let fin = execute(
        key(),
        assign(spec, inputs, timeout_ms),
        gpus,
        f.store.clone(),
        cancel,
        tx,
    )
    .await;
    let mut logs = Vec::new();
    while let Ok(l) = rx.try_recv() {
        logs.push(l);
    }
    (fin, logs)
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

#[tokio::test]
async fn process_result_is_the_last_line_and_the_rest_are_logs() {
    let f = fixture();
    let script = r#"echo hello; echo warn >&2; echo '{"a": 1}'; echo"#;
    let (fin, logs) = run(&f, sh(script), json!({}), 0, CancellationToken::new()).await;
    let s = success(&fin);
    assert_eq!(s.inline_value, r#"{"a":1}"#);
    let r = s.result.as_ref().unwrap();
    assert_eq!(f.store.get(&r.uri).await.unwrap(), br#"{"a":1}"#);
    assert!(r.uri.starts_with(&f.store.root_uri()), "{}", r.uri);
    let lines: Vec<(&str, &str)> = logs.iter().map(|l| (l.stream, l.line.as_str())).collect();
    assert!(lines.contains(&("stdout", "hello")), "{lines:?}");
    assert!(lines.contains(&("stderr", "warn")), "{lines:?}");
    assert!(!lines.iter().any(|(_, l)| l.contains("\"a\"")), "{lines:?}");
}

#[tokio::test]
async fn process_nonzero_exit_fails_with_the_stderr_tail() {
    let f = fixture();
    let script = "for i in $(seq 1 50); do echo line$i >&2; done; exit 3";
    let (fin, _) = run(&f, sh(script), json!({}), 0, CancellationToken::new()).await;
    let e = failure(&fin);
    assert!(e.retryable);
    assert!(e.error.starts_with("exit status 3"), "{}", e.error);
    assert!(e.error.contains("line50"), "{}", e.error);
    assert!(!e.error.contains("line30\n"), "{}", e.error);
}

#[tokio::test]
async fn process_non_json_last_line_is_a_fatal_error() {
    let f = fixture();
    let (fin, _) = run(
        &f,
        sh("echo this is not json"),
        json!({}),
        0,
        CancellationToken::new(),
    )
    .await;
    let e = failure(&fin);
    assert!(!e.retryable);
    assert!(e.error.contains("not JSON"), "{}", e.error);
    assert!(e.error.contains("this is not json"), "{}", e.error);
}

#[tokio::test]
async fn a_process_is_refused_where_processes_are_not_allowed() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let script = sh(&format!("touch {}; echo 1", marker.display()));
    let (fin, _) = run_with_gpus(
        &f,
        script,
        json!({}),
        0,
        CancellationToken::new(),
        Default::default(),
    )
    .await;
    let e = failure(&fin);
    assert!(!e.retryable);
    assert!(e.error.contains("--allow process"), "{}", e.error);
    assert!(!marker.exists(), "the command ran");
}

#[tokio::test]
async fn process_gets_its_inputs_on_stdin_and_its_env() {
    let f = fixture();
    let inputs = json!({"x": [1, 2, 3], "name": "é"});
    let (fin, _) = run(&f, sh("cat"), inputs.clone(), 0, CancellationToken::new()).await;
    let got: Value = serde_json::from_str(&success(&fin).inline_value).unwrap();
    assert_eq!(got, inputs);

    let f = fixture();
    let script = r#"echo "\"$BATON_RUN_ID/$BATON_TASK/$BATON_MAP_INDEX/$BATON_ATTEMPT/$BATON_ARTIFACT_PREFIX\"""#;
    let (fin, _) = run(&f, sh(script), json!({}), 0, CancellationToken::new()).await;
    assert_eq!(
        success(&fin).inline_value,
        format!("\"r1/t/-1/1/{}\"", key().artifact_prefix())
    );
}

/// Whether `pid` is gone (or a zombie nobody reaps, as in containers without an init).
#[tokio::test]
async fn a_process_task_sees_exactly_its_pinned_gpus() {
    let f = fixture();
    let devices = crate::gpu::simulated("16000,16000,16000").unwrap();
    let script = sh(r#"printf '"%s|%s"\n' "${CUDA_VISIBLE_DEVICES-unset}" "${BATON_GPUS-unset}""#);
    let grant = crate::task::Grant {
        pinned: vec![devices[0].clone(), devices[2].clone()].into(),
        worker_has_gpus: true,
        processes: true,
        ..Default::default()
    };
    let (fin, _) = run_with_gpus(
        &f,
        script.clone(),
        json!({}),
        0,
        CancellationToken::new(),
        grant,
    )
    .await;
    let expected = format!("\"{},{}|0,2\"", devices[0].uuid, devices[2].uuid);
    assert_eq!(success(&fin).inline_value, expected);
    // A task without GPUs on a GPU worker sees none; on a worker without GPUs nothing is set.
    let none = crate::task::Grant {
        pinned: Vec::new().into(),
        worker_has_gpus: true,
        processes: true,
        ..Default::default()
    };
    let (fin, _) = run_with_gpus(
        &f,
        script.clone(),
        json!({}),
        0,
        CancellationToken::new(),
        none,
    )
    .await;
    assert_eq!(success(&fin).inline_value, "\"|\"");
    let (fin, _) = run(&f, script, json!({}), 0, CancellationToken::new()).await;
    assert_eq!(success(&fin).inline_value, "\"unset|unset\"");
}

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

#[tokio::test]
async fn process_timeout_kills_the_whole_group() {
    let f = fixture();
    let started = Instant::now();
    let script = "sleep 30 & echo $! >&2; sleep 30";
    let (fin, logs) = run(&f, sh(script), json!({}), 500, CancellationToken::new()).await;
    let e = failure(&fin);
    assert_eq!(e.error, "timed out after 500 ms");
    assert!(e.retryable);
    assert!(started.elapsed() < Duration::from_secs(10));
    let pid: i32 = logs
        .iter()
        .find(|l| l.stream == "stderr")
        .and_then(|l| l.line.trim().parse().ok())
        .expect("the background pid was logged");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !gone(pid) {
        assert!(Instant::now() < deadline, "background child {pid} survived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn cancelling_stops_a_process() {
    let f = fixture();
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        trigger.cancel();
    });
    let (fin, _) = run(&f, sh("sleep 30"), json!({}), 0, cancel).await;
    let e = failure(&fin);
    assert_eq!(e.error, CANCELLED);
    assert!(!e.retryable);
}

#[tokio::test]
async fn builtin_result_is_written_under_the_result_key() {
    let f = fixture();
    let spec = json!({"kind": "builtin", "function": "echo"});
    let inputs = json!({"value": {"k": [1, "two"]}});
    let (fin, _) = run(&f, spec, inputs, 0, CancellationToken::new()).await;
    let s = success(&fin);
    let r = s.result.as_ref().unwrap();
    assert!(r.uri.starts_with(&f.store.root_uri()), "{}", r.uri);
    let stored = f.store.get(&r.uri).await.unwrap();
    assert_eq!(stored, s.inline_value.as_bytes());
    assert_eq!(
        serde_json::from_slice::<Value>(&stored).unwrap(),
        json!({"k": [1, "two"]})
    );
    assert_eq!(r.size, stored.len() as u64);
    assert_eq!(r.content_type, "application/json");

    // A location is never overwritten: writing again yields a new location.
    let spec = json!({"kind": "builtin", "function": "noop"});
    let (fin, _) = run(&f, spec, json!({}), 0, CancellationToken::new()).await;
    let again = success(&fin).result.clone().unwrap();
    assert_ne!(again.uri, r.uri);
    assert_eq!(f.store.get(&r.uri).await.unwrap(), stored);
}

#[tokio::test]
async fn bad_specs_and_inputs_are_fatal() {
    let f = fixture();
    for (spec, inputs) in [
        (json!({"kind": "teleport"}), json!({})),
        (json!({"kind": "builtin", "function": "noop"}), json!([1])),
        (
            json!({"kind": "process", "command": "/nonexistent/baton-test"}),
            json!({}),
        ),
    ] {
        let (fin, _) = run(&f, spec, inputs, 0, CancellationToken::new()).await;
        assert!(!failure(&fin).retryable, "{fin:?}");
    }
    // A whole task spec with the kind nested is accepted too.
    let spec = json!({"name": "t", "kind": {"kind": "builtin", "function": "noop"}});
    let (fin, _) = run(&f, spec, json!({}), 0, CancellationToken::new()).await;
    assert_eq!(success(&fin).inline_value, "null");
}

#[tokio::test]
async fn oversized_results_ask_for_an_artifact() {
    let f = fixture();
    let big = Value::String("x".repeat(MAX_RESULT_BYTES + 1));
    let e = persist(f.store.as_ref(), &key(), &big).await.unwrap_err();
    assert!(!e.retryable);
    assert!(e.message.contains("artifact"), "{}", e.message);

    let medium = Value::String("y".repeat(MAX_INLINE_BYTES + 1));
    let s = persist(f.store.as_ref(), &key(), &medium).await.unwrap();
    assert!(s.inline_value.is_empty());
    assert!(s.result.unwrap().size > MAX_INLINE_BYTES as u64);
}

#[tokio::test]
async fn without_a_shim_a_setsid_child_holding_stdout_does_not_hold_the_task() {
    // This binary does not call shim::init: the command runs directly, and the pipe that a
    // setsid'ed child keeps open is read only for PIPE_GRACE after the command exits.
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let bg = dir.path().join("bg");
    let script = r#"
setsid sh -c 'echo $$ > "$0.tmp"; mv "$0.tmp" "$0"; exec sleep 30' "$BG" &
while [ ! -s "$BG" ]; do sleep 0.01; done
printf '{"done": true}'
"#;
    let spec = json!({
        "kind": "process", "command": "sh", "args": ["-c", script],
        "env": {"BG": bg.to_str().unwrap()},
    });
    let started = Instant::now();
    let (fin, _) = tokio::time::timeout(
        Duration::from_secs(30),
        run(&f, spec, json!({}), 0, CancellationToken::new()),
    )
    .await
    .expect("the task ended");
    assert_eq!(success(&fin).inline_value, r#"{"done":true}"#);
    let took = started.elapsed();
    assert!(
        took < process::PIPE_GRACE + Duration::from_secs(5),
        "{took:?}"
    );
    // Without a shim the setsid'ed child outlives the task (a documented limit): clean up.
    let pid: i32 = std::fs::read_to_string(&bg)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: kill has no memory effects; the pid is this test's leftover.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}

/// A task's `{secret: NAME}` input: its value is in the process's inputs and environment,
/// masked in its log lines and error, and a result holding it is refused; other secrets of
/// the worker stay out of the task's environment.
#[tokio::test]
async fn secrets_reach_the_task_and_nothing_that_leaves_the_worker() {
    let f = fixture();
    let secrets = crate::secrets::Secrets::new(
        std::collections::BTreeMap::from([
            ("API".to_string(), "s3cr3t-v4lue".to_string()),
            ("OTHER".to_string(), "not-asked-for".to_string()),
        ]),
        None,
    );
    let grant = crate::task::Grant {
        processes: true,
        secrets,
        ..Default::default()
    };
    let with_secret = |script: &str| json!({"kind": sh(script), "secrets": {"key": "API"}});
    let script = r#"read -r inputs; echo "env $BATON_SECRET_API other ${BATON_SECRET_OTHER-unset}"; echo "stdin $inputs" >&2; printf '"%s"\n' "${#BATON_SECRET_API}""#;
    let (fin, logs) = run_with_gpus(
        &f,
        with_secret(script),
        json!({"key": null}),
        0,
        CancellationToken::new(),
        grant.clone(),
    )
    .await;
    assert_eq!(success(&fin).inline_value, "\"12\"");
    let lines: Vec<&str> = logs.iter().map(|l| l.line.as_str()).collect();
    assert!(lines.contains(&"env *** other unset"), "{lines:?}");
    assert!(lines.contains(&"stdin {\"key\":\"***\"}"), "{lines:?}");
    // The error of a failed process quotes its stderr: masked too.
    let (fin, _) = run_with_gpus(
        &f,
        with_secret(r#"echo "bad key $BATON_SECRET_API" >&2; exit 3"#),
        json!({"key": null}),
        0,
        CancellationToken::new(),
        grant.clone(),
    )
    .await;
    let e = failure(&fin);
    assert!(e.error.contains("bad key ***"), "{}", e.error);
    assert!(!e.error.contains("s3cr3t"), "{}", e.error);
    // A result holding the value is refused, and nothing is stored.
    let (fin, _) = run_with_gpus(
        &f,
        with_secret(r#"printf '{"leak": "%s"}\n' "$BATON_SECRET_API""#),
        json!({"key": null}),
        0,
        CancellationToken::new(),
        grant.clone(),
    )
    .await;
    let e = failure(&fin);
    assert!(e.error.contains("secret `API`"), "{}", e.error);
    assert!(!e.retryable);
    assert!(f.store.get(&key().result_key()).await.is_err());
    // A secret the worker lacks fails the attempt, naming it.
    let (fin, _) = run_with_gpus(
        &f,
        json!({"kind": sh("echo 1"), "secrets": {"key": "MISSING"}}),
        json!({"key": null}),
        0,
        CancellationToken::new(),
        grant,
    )
    .await;
    assert!(failure(&fin).error.contains("`MISSING`"));
}

fn successor(task: &str, function: &str, fixed: Value, bound: Value) -> proto::Successor {
    proto::Successor {
        task: task.into(),
        task_spec: json!({"kind": "builtin", "function": function}).to_string(),
        fixed_inputs: fixed.to_string(),
        bound_inputs: bound.to_string(),
    }
}

#[tokio::test]
async fn a_chain_runs_ahead_until_a_task_that_is_not_instant() {
    let f = fixture();
    let chain = vec![
        successor("b", "echo", json!({}), json!({"value": {"result": "t"}})),
        successor(
            "c",
            "sum",
            json!({}),
            json!({"values": {"flatten": [{"result": "b"}, {"value": [0.25]}]}}),
        ),
        successor("d", "noop", json!({"k": 1}), json!({})),
        successor("e", "sleep", json!({"ms": 1}), json!({})),
        successor("f", "noop", json!({}), json!({})),
    ];
    let ran = run_ahead(&key(), "[1.5,2]", chain, f.store.as_ref()).await;
    let tasks: Vec<String> = ran
        .iter()
        .map(|r| {
            r.finished
                .as_ref()
                .unwrap()
                .key
                .as_ref()
                .unwrap()
                .task
                .clone()
        })
        .collect();
    assert_eq!(tasks, ["b", "c", "d"], "stops at sleep");
    let values: Vec<String> = ran
        .iter()
        .map(|r| success(r.finished.as_ref().unwrap()).inline_value.clone())
        .collect();
    assert_eq!(values, ["[1.5,2]", "3.75", "null"]);
    // Each after the one before, as attempt 1, with the digest of its inputs' text.
    let after: Vec<String> = ran
        .iter()
        .map(|r| r.after.as_ref().unwrap().task.clone())
        .collect();
    assert_eq!(after, ["t", "b", "c"]);
    assert_eq!(
        ran[0].inputs_digest,
        baton_common::flow::inputs_digest(r#"{"value":[1.5,2]}"#)
    );
    for r in &ran {
        let fin = r.finished.as_ref().unwrap();
        assert_eq!(fin.key.as_ref().unwrap().attempt, 1);
        assert!(r.ended_us >= r.started_us && r.started_us > 0);
        let s = success(fin);
        let uri = &s.result.as_ref().unwrap().uri;
        let stored = f.store.get(uri).await.unwrap();
        assert_eq!(stored, s.inline_value.as_bytes());
    }

    // Stored under a key of its own each time, never the attempt's.
    let b = AttemptKey {
        task: "b".into(),
        ..key()
    };
    let (one, two) = (b.ahead_result_key(), b.ahead_result_key());
    assert!(
        one != two && one != b.result_key() && one.starts_with("results/"),
        "{one}"
    );

    // A predecessor's result that a binding cannot take ends the chain at once.
    let chain = vec![successor(
        "b",
        "echo",
        json!({}),
        json!({"value": {"element": {"task": "t", "index": 3}}}),
    )];
    assert!(run_ahead(&key(), "[1]", chain, f.store.as_ref())
        .await
        .is_empty());
    // So does a function that is not instant, or a task that is not a built-in.
    let chain = vec![proto::Successor {
        task: "b".into(),
        task_spec: sh("echo 1").to_string(),
        fixed_inputs: "{}".into(),
        bound_inputs: "{}".into(),
    }];
    assert!(run_ahead(&key(), "1", chain, f.store.as_ref())
        .await
        .is_empty());
}
