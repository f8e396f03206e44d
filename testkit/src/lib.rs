//! baton's test harness: starts the project's real scheduler and worker binaries on free
//! loopback ports with per-node logs, kills (-9), pauses, resumes and restarts them, and
//! waits for conditions with [`eventually`]. For cluster fault tests: a real etcd cluster
//! ([`etcd::EtcdCluster`]) and a TCP proxy that cuts traffic like a partition ([`proxy::Proxy`]).

pub mod age;
pub mod certs;
pub mod compose;
pub mod etcd;
pub mod ha;
pub mod otlp;
mod process;
pub mod prometheus;
pub mod proxy;
pub mod s3;
pub mod scan;
pub mod tls_proxy;

pub use process::{baton_cli, bin_path, free_port, Node};

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

/// Waits until `check` returns `Some`, polling every 50 ms, for at most `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A single-node cluster of real processes: one scheduler, some workers.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub scheduler: Node,
    pub workers: Vec<Node>,
    scheduler_args: Vec<String>,
    /// A command the scheduler runs under (e.g. `prlimit --fsize=N`), empty for none.
    scheduler_prefix: Vec<String>,
}

impl Cluster {
    /// Starts a scheduler with extra `args` (e.g. `--worker-lease-ms 2000`).
    pub async fn start(args: &[&str]) -> anyhow::Result<Self> {
        Self::start_under(&[], args).await
    }

    /// Starts the scheduler under a command `prefix` (e.g. `["prlimit", "--fsize=4000000"]`)
    /// with extra `args`.
    pub async fn start_under(prefix: &[&str], args: &[&str]) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("baton-test-").tempdir()?;
        let port = free_port()?;
        let scheduler_args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let scheduler_prefix: Vec<String> = prefix.iter().map(|s| s.to_string()).collect();
        let scheduler =
            Self::spawn_scheduler(dir.path(), port, &scheduler_prefix, &scheduler_args, 0)?;
        let c = Cluster {
            dir,
            port,
            scheduler,
            workers: Vec::new(),
            scheduler_args,
            scheduler_prefix,
        };
        c.wait_scheduler().await?;
        Ok(c)
    }

    fn spawn_scheduler(
        dir: &std::path::Path,
        port: u16,
        prefix: &[String],
        extra: &[String],
        n: usize,
    ) -> anyhow::Result<Node> {
        let mut args = vec![
            "--listen".to_string(),
            format!("127.0.0.1:{port}"),
            "--data-dir".to_string(),
            dir.join("data").display().to_string(),
        ];
        args.extend(extra.iter().cloned());
        let log = dir.join(format!("scheduler-{n}.log"));
        match prefix.split_first() {
            None => Node::spawn("baton-scheduler", &args, log),
            Some((program, rest)) => {
                let mut all: Vec<String> = rest.to_vec();
                all.push(bin_path("baton-scheduler")?.display().to_string());
                all.extend(args);
                Node::spawn_program(std::path::Path::new(program), "baton-scheduler", &all, log)
            }
        }
    }

    /// The scheduler's data folder (its state is in `state/`).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Sets the command prefix of later scheduler starts (empty: none).
    pub fn set_scheduler_prefix(&mut self, prefix: &[&str]) {
        self.scheduler_prefix = prefix.iter().map(|s| s.to_string()).collect();
    }

    /// Kills the scheduler with SIGKILL and starts it again on the same port and state,
    /// without waiting for it to listen (it may refuse to start).
    pub fn respawn_scheduler(&mut self) -> anyhow::Result<()> {
        self.scheduler.kill9();
        let n = self.scheduler.generation + 1;
        let mut s = Self::spawn_scheduler(
            self.dir.path(),
            self.port,
            &self.scheduler_prefix,
            &self.scheduler_args,
            n,
        )?;
        s.generation = n;
        self.scheduler = s;
        Ok(())
    }

    /// The scheduler's URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The result store's folder.
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("data").join("store")
    }

    async fn wait_scheduler(&self) -> anyhow::Result<()> {
        let addr = format!("127.0.0.1:{}", self.port);
        eventually(Duration::from_secs(30), "the scheduler to listen", || {
            let addr = addr.clone();
            async move { tokio::net::TcpStream::connect(addr).await.ok().map(|_| ()) }
        })
        .await
    }

    /// Starts a worker with an id, labels (comma-separated) and slots.
    pub fn add_worker(&mut self, id: &str, labels: &str, slots: u32) -> anyhow::Result<usize> {
        self.add_worker_with(id, labels, slots, &[], &[])
    }

    /// Starts a worker with an id, labels (comma-separated), slots, extra args and extra
    /// environment variables.
    pub fn add_worker_with(
        &mut self,
        id: &str,
        labels: &str,
        slots: u32,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<usize> {
        let mut args = vec!["--id".to_string(), id.to_string()];
        // A test may point the worker elsewhere (an https:// address, say).
        if !extra.contains(&"--scheduler") {
            args.extend(["--scheduler".to_string(), self.url()]);
        }
        args.extend([
            "--labels".to_string(),
            labels.to_string(),
            "--slots".to_string(),
            slots.to_string(),
        ]);
        // Tests run process tasks: workers allow them unless a test says otherwise.
        if !extra.iter().any(|a| a.starts_with("--allow")) {
            args.extend(["--allow".to_string(), "process".to_string()]);
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let node = Node::spawn_env(
            "baton-worker",
            &args,
            &env,
            self.dir.path().join(format!("worker-{id}.log")),
        )?;
        self.workers.push(node);
        Ok(self.workers.len() - 1)
    }

    /// Kills the scheduler with SIGKILL and starts it again on the same port and state.
    pub async fn restart_scheduler(&mut self) -> anyhow::Result<()> {
        self.respawn_scheduler()?;
        self.wait_scheduler().await
    }

    /// Asserts that a finished run completed; otherwise fails with its error and the logs.
    pub fn assert_completed(&self, run: &baton_proto::FlowRun) {
        assert_eq!(
            run.state,
            baton_proto::RunState::Completed as i32,
            "run {} did not complete: {}\n{}",
            run.id,
            run.error,
            self.logs()
        );
    }

    /// All logs, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        if let Ok(entries) = std::fs::read_dir(self.dir.path()) {
            let mut paths: Vec<PathBuf> =
                entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
            paths.sort();
            for p in paths
                .into_iter()
                .filter(|p| p.extension().is_some_and(|e| e == "log"))
            {
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(60).collect();
                out.push_str(&format!("==== {} (last lines)\n", p.display()));
                for l in tail.into_iter().rev() {
                    out.push_str(l);
                    out.push('\n');
                }
            }
        }
        out
    }
}
