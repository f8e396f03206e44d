//! The `baton` command line against a real scheduler: run with --json, show, runs, workers,
//! result get, and the exit codes.

use baton_testkit::{bin_path, eventually, Cluster};
use std::process::Command;
use std::time::Duration;

fn baton(cluster: &Cluster, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
    let out = Command::new(bin_path("baton")?)
        .arg("--scheduler")
        .arg(cluster.url())
        .args(args)
        .output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_runs_shows_and_reads_results() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(&[]).await?;
    cluster.add_worker("cli-w", "local", 2)?;
    let flow = cluster.dir.path().join("sum.yaml");
    std::fs::write(
        &flow,
        "name: sums\nparameters:\n  xs: {default: [1, 2]}\ntasks:\n  - {name: double, builtin: echo, inputs: {value: {param: xs}}, map: [value]}\n  - {name: total, builtin: sum, inputs: {values: {result: double}}}\n",
    )?;
    let flow = flow.display().to_string();
    eventually(Duration::from_secs(20), "the worker", || async {
        let (code, out, _) = baton(&cluster, &["workers"]).ok()?;
        (code == 0 && out.contains("cli-w")).then_some(())
    })
    .await?;

    let (code, out, err) = baton(&cluster, &["run", &flow, "--param", "xs=[3,4,5]", "--json"])?;
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(v["state"], "COMPLETED");
    assert_eq!(v["parameters"]["xs"], serde_json::json!([3, 4, 5]));
    let trs = v["task_runs"].as_array().expect("task runs");
    assert_eq!(trs.len(), 4);
    let total = trs.iter().find(|t| t["task"] == "total").expect("total");
    assert_eq!(total["value"], serde_json::json!(12.0));
    let run_id = v["id"].as_str().expect("id").to_string();
    let location = total["result"]["uri"].as_str().expect("uri").to_string();

    let (code, out, _) = baton(&cluster, &["result", "get", &location])?;
    assert_eq!(code, 0);
    assert_eq!(out.trim(), "12.0");

    let (code, out, _) = baton(&cluster, &["show", &run_id])?;
    assert_eq!(code, 0);
    assert!(
        out.contains("COMPLETED") && out.contains("total") && out.contains("cli-w"),
        "{out}"
    );

    let (code, out, _) = baton(&cluster, &["runs"])?;
    assert_eq!(code, 0);
    assert!(out.contains(&run_id), "{out}");

    // The table names every task run; a failing run exits 1 with the error shown.
    let bad = cluster.dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "name: bad\ntasks:\n  - {name: boom, builtin: fail, inputs: {message: kaboom, retryable: false}}\n",
    )?;
    let (code, out, _) = baton(&cluster, &["run", &bad.display().to_string()])?;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAILED") && out.contains("kaboom"), "{out}");

    // A parse error exits 2 with the problem named.
    std::fs::write(&bad, "name: [unclosed\n")?;
    let (code, _, err) = baton(&cluster, &["run", &bad.display().to_string()])?;
    assert_eq!(code, 2);
    assert!(err.contains("invalid flow"), "{err}");
    Ok(())
}

/// `baton show RUN | head -1` ends quietly (no panic, no "Broken pipe" error); a server's
/// error is printed once; a parameter that starts like JSON but is not JSON is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_ends_quietly_on_a_closed_pipe_and_says_errors_once() -> anyhow::Result<()> {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    let mut cluster = Cluster::start(&[]).await?;
    cluster.add_worker("pipe-w", "local", 4)?;
    let flow = cluster.dir.path().join("wide.yaml");
    std::fs::write(
        &flow,
        "name: wide\ntasks:\n  - {name: items, builtin: range, inputs: {n: 3000}}\n  - {name: each, builtin: echo, inputs: {value: {result: items}}, map: [value]}\n",
    )?;
    let (code, out, err) = baton(&cluster, &["run", &flow.display().to_string(), "--json"])?;
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out)?;
    let run = v["id"].as_str().unwrap_or_default().to_string();

    // The table of 3,000 task runs is far more than a pipe holds: the reader leaves after
    // one byte.
    let mut child = Command::new(bin_path("baton")?)
        .args(["--scheduler", &cluster.url(), "show", &run])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let mut first = [0u8; 1];
    child
        .stdout
        .take()
        .expect("stdout")
        .read_exact(&mut first)?;
    let out = child.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() || out.status.signal() == Some(libc::SIGPIPE),
        "{:?}: {stderr}",
        out.status
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
        "{stderr}"
    );

    // One message for a server's error.
    let (code, _, err) = baton(&cluster, &["show", "no-such-run"])?;
    assert_ne!(code, 0);
    assert_eq!(err.matches("no-such-run").count(), 1, "{err}");
    assert!(!err.contains("message:"), "{err}");

    // A value that starts like JSON must be JSON; quoted, it is a string.
    let (code, _, err) = baton(
        &cluster,
        &["run", &flow.display().to_string(), "-p", "xs=[1,2"],
    )?;
    assert_eq!(code, 2);
    assert!(err.contains("`[1,2` is not valid JSON"), "{err}");

    // Logs written to files carry no colour codes.
    let logs = cluster.logs();
    assert!(logs.contains("INFO"), "{logs}");
    assert!(!logs.contains('\u{1b}'), "colour codes in a log file");
    Ok(())
}

/// `--log-format json`: every line of the scheduler's and the worker's logs is a JSON
/// object, and a task's events carry the attempt's run, task, map index, attempt and worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_attempt_fields() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(&["--log-format", "json"]).await?;
    cluster.add_worker_with("json-w", "local,trainer", 2, &["--log-format", "json"], &[])?;
    let source = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/ridge_sweep.yaml"
    ))?;
    let c = baton_client::Client::connect(&cluster.url()).await?;
    let run = c
        .run_source(source, Default::default(), String::new())
        .await?
        .run
        .expect("a run");
    let done = tokio::time::timeout(Duration::from_secs(60), c.wait(&run.id)).await??;
    cluster.assert_completed(&done);
    let lines = |name: &str| -> anyhow::Result<Vec<serde_json::Value>> {
        let text = std::fs::read_to_string(cluster.dir.path().join(name))?;
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).map_err(|e| anyhow::anyhow!("{e}: {l}")))
            .collect()
    };
    let scheduler = lines("scheduler-0.log")?;
    assert!(
        scheduler
            .iter()
            .any(|l| l["fields"]["message"] == "serving"),
        "{scheduler:?}"
    );
    let worker = lines("worker-json-w.log")?;
    let scored = worker
        .iter()
        .find(|l| l["fields"]["message"] == "scored a ridge model")
        .ok_or_else(|| anyhow::anyhow!("no scoring event: {worker:?}"))?;
    let span = &scored["span"];
    assert_eq!(span["name"], "attempt");
    assert_eq!(span["run"], run.id.as_str());
    assert_eq!(span["task"], "evaluate");
    assert_eq!(span["worker"], "json-w");
    assert_eq!(span["attempt"], 1);
    assert!(span["map_index"].is_i64(), "{span}");
    Ok(())
}

const MAPPED: &str = "name: mapped\ntasks:\n  - {name: items, builtin: range, inputs: {n: 200}}\n  - {name: ok, builtin: echo, inputs: {value: {result: items}}, map: [value]}\n  - {name: few, builtin: range, inputs: {n: 12}}\n  - {name: bad, builtin: fail, inputs: {message: {result: few}, retryable: false}, map: [message]}\n";

/// `baton run` shows progress (summary lines in a pipe, bars on a terminal), never a line
/// per task run; its final table groups a mapped task's runs (`--all` lists each) and fits
/// the terminal; a run no worker can take says why it waits at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_shows_progress_groups_mapped_tasks_and_says_why_a_run_waits() -> anyhow::Result<()>
{
    let mut cluster = Cluster::start(&["--unrunnable-timeout-ms", "4000"]).await?;
    cluster.add_worker("cli-p", "local", 8)?;
    let flow = cluster.dir.path().join("mapped.yaml");
    std::fs::write(&flow, MAPPED)?;
    let flow = flow.display().to_string();
    eventually(Duration::from_secs(20), "the worker", || async {
        let (code, out, _) = baton(&cluster, &["workers"]).ok()?;
        (code == 0 && out.contains("cli-p")).then_some(())
    })
    .await?;

    // In a pipe: summary lines, and a grouped table.
    let (code, out, err) = baton(&cluster, &["run", &flow, "--watch"])?;
    assert_eq!(code, 1, "the `bad` task fails: {out}{err}");
    assert!(err.contains("progress: "), "{err}");
    assert!(err.contains("ok 200/200"), "{err}");
    assert!(err.lines().count() < 20, "a line per task run?\n{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("ok ") && l.contains("0..199") && l.contains("COMPLETED 200")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("bad ") && l.contains("FAILED 12")),
        "{out}"
    );
    assert!(out.contains("2 more failed"), "{out}");
    assert!(out.lines().count() < 30, "{out}");
    let (_, all, _) = baton(&cluster, &["run", &flow, "--all"])?;
    assert!(all.lines().count() > 212, "{all}");

    // On a terminal (a pseudo-terminal from `script`): bars, and a table that fits.
    let cmd = format!(
        "{} --scheduler {} run {flow}",
        bin_path("baton")?.display(),
        cluster.url()
    );
    let tty = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("COLUMNS", "100")
        .output()?;
    let text = String::from_utf8_lossy(&tty.stdout);
    assert!(text.contains("200/200"), "{text}");
    assert!(text.contains("[====="), "no bar: {text}");
    let row = text
        .lines()
        .find(|l| l.starts_with("ok ") && l.contains("0..199"))
        .unwrap_or_else(|| panic!("no row of `ok`: {text}"));
    assert!(row.trim_end().chars().count() <= 100, "{row}");

    // A run that no worker can take says why at once (and fails after the timeout).
    let nowhere = cluster.dir.path().join("nowhere.yaml");
    std::fs::write(
        &nowhere,
        "name: nowhere\nlabels: [gpu-a100]\ntasks:\n  - {name: t, builtin: noop}\n",
    )?;
    let (code, _, err) = baton(&cluster, &["run", &nowhere.display().to_string()])?;
    assert_eq!(code, 1, "{err}");
    let waiting = err
        .lines()
        .find(|l| l.starts_with("waiting: "))
        .unwrap_or_else(|| panic!("no waiting reason: {err}"));
    assert!(waiting.contains("gpu-a100"), "{waiting}");
    Ok(())
}

/// `baton result get` of a 20 MB artifact (past one message) streams it, byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn result_get_streams_an_artifact_larger_than_a_message() -> anyhow::Result<()> {
    let cluster = Cluster::start(&[]).await?;
    let dir = cluster.data_dir().join("store").join("artifacts");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("big.bin");
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let data: Vec<u8> = (0..20 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    std::fs::write(&path, &data)?;
    let location = format!("file://{}", path.canonicalize()?.display());
    let out = Command::new(bin_path("baton")?)
        .args(["--scheduler", &cluster.url(), "result", "get", &location])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // What was stored, and the line end the command adds to a result without one.
    assert_eq!(out.stdout.len(), data.len() + 1);
    assert!(out.stdout[..data.len()] == data[..], "the bytes differ");
    Ok(())
}
