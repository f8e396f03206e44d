//! Secrets on real binaries: a flow's `{secret: NAME}` inputs get their values on the worker
//! (from its BATON_SECRET_* variables and its secrets file), and the values appear nowhere
//! else: not in the scheduler's state, results or logs, the worker's log, or `baton logs`.

use baton_client::Client;
use baton_testkit::scan::files_holding;
use baton_testkit::{baton_cli, Cluster};
use sha2::Digest;
use std::collections::BTreeMap;
use std::time::Duration;

const FROM_ENV: &str = "env-secret-4f1d9a7c";
const FROM_FILE: &str = "file-secret-b82e6c05";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_reach_tasks_and_nothing_else() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(&[]).await?;
    let outside = tempfile::tempdir()?;
    let file = outside.path().join("secrets.env");
    std::fs::write(&file, format!("# the database\nDB_PASS={FROM_FILE}\n"))?;
    let file_arg = file.display().to_string();
    cluster.add_worker_with(
        "w",
        "local",
        2,
        &["--secrets", &file_arg],
        &[("BATON_SECRET_API_KEY", FROM_ENV)],
    )?;
    let c = Client::connect(&cluster.url()).await?;
    // Logs the values (masked on the way out), and returns a digest of them: the values
    // themselves must not be results.
    let script = r#"read -r inputs; echo "api=$BATON_SECRET_API_KEY db=$BATON_SECRET_DB_PASS"; echo "inputs $inputs" >&2; printf '"%s"\n' "$(printf '%s|%s' "$BATON_SECRET_API_KEY" "$BATON_SECRET_DB_PASS" | sha256sum | cut -c1-64)""#;
    let flow = format!(
        r#"
name: secrets
tasks:
  - name: use
    process: {{command: /bin/sh, args: ["-c", {script:?}]}}
    inputs: {{api: {{secret: API_KEY}}, db: {{secret: DB_PASS}}, n: 1}}
  - name: plain
    process: {{command: /bin/sh, args: ["-c", "cat >/dev/null; printf '\"%s\"' \"${{BATON_SECRET_API_KEY-unset}}\""]}}
"#
    );
    let run = c
        .run_source(flow, BTreeMap::new(), String::new())
        .await?
        .run
        .expect("a run");
    let done = tokio::time::timeout(Duration::from_secs(60), c.wait(&run.id)).await??;
    cluster.assert_completed(&done);
    let trs = c.task_runs(&run.id, true).await?;
    let value = |task: &str| {
        trs.iter()
            .find(|t| t.task == task)
            .map(|t| t.value.clone())
            .unwrap_or_default()
    };
    let digest = format!(
        "{:x}",
        sha2::Sha256::digest(format!("{FROM_ENV}|{FROM_FILE}"))
    );
    assert_eq!(value("use"), format!("\"{digest}\""), "{}", cluster.logs());
    // A task that does not take a secret does not get it.
    assert_eq!(value("plain"), "\"unset\"");

    // A task returning a secret's value fails, and the value is not stored.
    let leak = r#"
name: leak
tasks:
  - name: echo_it
    builtin: echo
    inputs: {value: {secret: API_KEY}}
"#;
    let run2 = c
        .run_source(leak.to_string(), BTreeMap::new(), String::new())
        .await?
        .run
        .expect("a run");
    let failed = tokio::time::timeout(Duration::from_secs(60), c.wait(&run2.id)).await??;
    assert_eq!(failed.state, baton_proto::RunState::Failed as i32);
    assert!(
        failed.error.contains("secret `API_KEY`"),
        "{}",
        failed.error
    );

    // `baton logs` shows the lines, masked.
    let (code, out, err) = baton_cli(&cluster.url(), &["logs", &run.id])?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("api=*** db=***"), "{out}");
    assert!(
        out.contains(r#"inputs {"api":"***","db":"***","n":1}"#),
        "{out}"
    );
    for secret in [FROM_ENV, FROM_FILE] {
        assert!(!out.contains(secret), "{out}");
    }
    // Nowhere under the cluster's folder: the scheduler's state, results and task logs, and
    // the scheduler's and the worker's own logs.
    let root = cluster.data_dir();
    let root = root.parent().expect("the cluster's folder");
    for secret in [FROM_ENV, FROM_FILE] {
        let found = files_holding(root, secret.as_bytes());
        assert!(found.is_empty(), "{secret} found in {found:?}");
    }
    assert!(!cluster.logs().contains(FROM_ENV));
    Ok(())
}
