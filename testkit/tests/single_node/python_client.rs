//! The Python client example (examples/python/baton_client.py) against a real single-node
//! cluster: stubs generated from baton.proto with grpcio-tools, the ridge sweep registered,
//! run, watched and its six scores printed. Needs the venv that
//! scripts/install-test-servers.sh creates at `$BATON_TOOLS/py`.

use baton_testkit::Cluster;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `$BATON_TOOLS/py/bin/python`, with grpcio and grpcio-tools.
fn venv_python() -> anyhow::Result<PathBuf> {
    let tools = match std::env::var_os("BATON_TOOLS") {
        Some(t) if !t.is_empty() => PathBuf::from(t),
        _ => {
            let home = std::env::var_os("HOME")
                .ok_or_else(|| anyhow::anyhow!("neither BATON_TOOLS nor HOME is set"))?;
            Path::new(&home).join(".cache").join("baton-tools")
        }
    };
    let python = tools.join("py").join("bin").join("python");
    if !python.is_file() {
        anyhow::bail!(
            "{} not found: run scripts/install-test-servers.sh (it creates the venv with \
             grpcio and grpcio-tools)",
            python.display()
        );
    }
    Ok(python)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_runs_the_ridge_sweep() -> anyhow::Result<()> {
    let python = venv_python()?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let protos = root.join("proto").join("proto");
    let stubs = tempfile::Builder::new().prefix("baton-py-").tempdir()?;

    let out = tokio::process::Command::new(&python)
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(&protos)
        .arg(format!("--python_out={}", stubs.path().display()))
        .arg(format!("--grpc_python_out={}", stubs.path().display()))
        .arg(protos.join("baton/v1/baton.proto"))
        .output()
        .await?;
    assert!(
        out.status.success(),
        "grpc_tools.protoc failed (is grpcio-tools installed? run \
         scripts/install-test-servers.sh): {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut cluster = Cluster::start(&[]).await?;
    cluster.add_worker("w-local", "local", 2)?;
    cluster.add_worker("w-trainer", "local,trainer", 2)?;
    let child = tokio::process::Command::new(&python)
        .arg(root.join("examples/python/baton_client.py"))
        .arg(format!("127.0.0.1:{}", cluster.port))
        .env("PYTHONPATH", stubs.path())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(180), child)
        .await
        .map_err(|_| anyhow::anyhow!("the Python client ran over 180 s\n{}", cluster.logs()))??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "baton_client.py exited {}\nstdout:\n{stdout}\nstderr:\n{stderr}\n{}",
        out.status,
        cluster.logs()
    );

    let scores: Vec<serde_json::Value> = serde_json::from_str(&stdout)
        .map_err(|e| anyhow::anyhow!("stdout is not a JSON list ({e}):\n{stdout}"))?;
    assert_eq!(scores.len(), 6, "six scores expected:\n{stdout}");
    let alphas = [1.0, 0.1, 0.01, 0.001, 0.0001, 0.00001];
    for (score, alpha) in scores.iter().zip(alphas) {
        assert_eq!(score["alpha"].as_f64(), Some(alpha), "{score}");
        let r2 = score["r2"].as_f64().expect("r2 is a number");
        assert!(r2 > 0.5, "alpha {alpha}: r2 {r2} is too low");
    }
    Ok(())
}

/// Runs examples/python/grpc_probe.py (what `grpcurl list` and a health probe do) against
/// `addr`; returns its exit code and stdout.
async fn probe(python: &Path, addr: &str, args: &[&str]) -> anyhow::Result<(i32, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = tokio::process::Command::new(python)
        .arg(root.join("examples/python/grpc_probe.py"))
        .arg(addr)
        .args(args)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out).await??;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        stderr.trim().is_empty() || out.status.success(),
        "grpc_probe.py {args:?}: {stderr}"
    );
    Ok((out.status.code().unwrap_or(-1), stdout))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_our_services_like_grpcurl_and_health_says_serving() -> anyhow::Result<()>
{
    let python = venv_python()?;
    let cluster = Cluster::start(&[]).await?;
    let addr = format!("127.0.0.1:{}", cluster.port);
    let (code, out) = probe(&python, &addr, &["list"]).await?;
    assert_eq!(code, 0, "{out}");
    let services: Vec<&str> = out.lines().collect();
    for s in [
        "baton.v1.FlowService",
        "baton.v1.WorkerService",
        "grpc.health.v1.Health",
    ] {
        assert!(services.contains(&s), "{s} not listed: {services:?}");
    }
    let (code, out) = probe(&python, &addr, &["list", "baton.v1.FlowService"]).await?;
    assert_eq!(code, 0, "{out}");
    for m in [
        "CreateRun",
        "SetSchedule",
        "ListConcurrencyLimits",
        "GetLogs",
    ] {
        assert!(
            out.lines()
                .any(|l| l == format!("baton.v1.FlowService.{m}")),
            "{m} not listed:\n{out}"
        );
    }
    let (code, out) = probe(&python, &addr, &["health"]).await?;
    assert_eq!((code, out.trim()), (0, "SERVING"));
    let (code, out) = probe(&python, &addr, &["health", "baton.v1.FlowService"]).await?;
    assert_eq!((code, out.trim()), (0, "SERVING"));
    Ok(())
}
