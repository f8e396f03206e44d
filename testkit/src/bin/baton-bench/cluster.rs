//! The benchmark's cluster: one `baton-scheduler` and two `baton-worker` processes started
//! from the binaries next to this one, killed when the [`Cluster`] is dropped.

use anyhow::{anyhow, bail, Context, Result};
use baton_client::Client;
use std::fs::File;
use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long the scheduler and the workers get to come up.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// One started process.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

/// The scheduler and worker processes, and the temporary folder holding the scheduler's
/// state and everyone's logs. Dropping it kills the processes; the folder is removed only
/// by [`Cluster::finish`], so that the logs stay after a failure.
pub struct Cluster {
    dir: PathBuf,
    url: String,
    scheduler_pid: u32,
    worker_ids: Vec<String>,
    procs: Mutex<Vec<Proc>>,
    finished: bool,
    /// Set on every process (the OTLP endpoint with `--otlp`).
    env: Vec<(String, String)>,
}

/// A free TCP port on 127.0.0.1 (bound, then released).
fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("cannot bind 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn unique_temp_dir() -> Result<PathBuf> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let dir = std::env::temp_dir().join(format!("baton-bench-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// The folder holding this executable, where cargo also puts the other binaries.
fn bin_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find this executable's path")?;
    exe.parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| anyhow!("{} has no parent folder", exe.display()))
}

fn binary(dir: &Path, name: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "{} not found: build the binaries first (`cargo build --bins`, or with --release)",
            path.display()
        );
    }
    Ok(path)
}

/// The last `n` lines of a log file (best effort).
pub fn log_tail(path: &Path, n: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(n);
            lines[start..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

impl Cluster {
    /// Starts the scheduler (with the extra `flags`) and two workers (labels `local` and
    /// `local,trainer`) with `slots` slots each, and waits until both workers are connected.
    pub async fn start(
        slots: u32,
        flags: &[&str],
        otlp: Option<&baton_testkit::otlp::Receiver>,
    ) -> Result<(Cluster, Client)> {
        let bins = bin_dir()?;
        let scheduler_bin = binary(&bins, "baton-scheduler")?;
        let worker_bin = binary(&bins, "baton-worker")?;
        let dir = unique_temp_dir()?;
        let port = free_port()?;
        let listen = format!("127.0.0.1:{port}");
        let url = format!("http://{listen}");
        let mut cluster = Cluster {
            dir: dir.clone(),
            url: url.clone(),
            scheduler_pid: 0,
            worker_ids: Vec::new(),
            procs: Mutex::new(Vec::new()),
            finished: false,
            env: otlp
                .map(|r| vec![("OTEL_EXPORTER_OTLP_ENDPOINT".to_string(), r.endpoint())])
                .unwrap_or_default(),
        };
        let data_dir = dir.join("scheduler-data");
        let mut cmd = Command::new(&scheduler_bin);
        cmd.arg("--listen")
            .arg(&listen)
            .arg("--data-dir")
            .arg(&data_dir);
        cmd.args(flags);
        cluster.scheduler_pid = cluster.spawn("scheduler", cmd)?;

        let nonce = std::process::id();
        for (i, labels) in ["local", "local,trainer"].iter().enumerate() {
            let id = format!("bench-{nonce}-w{}", i + 1);
            let mut cmd = Command::new(&worker_bin);
            cmd.arg("--id")
                .arg(&id)
                .arg("--scheduler")
                .arg(&url)
                .arg("--labels")
                .arg(labels)
                .arg("--slots")
                .arg(slots.to_string());
            cluster.spawn(&format!("worker {id}"), cmd)?;
            cluster.worker_ids.push(id);
        }

        let client = cluster.guarded(cluster.connect()).await?;
        cluster
            .guarded(wait_for_workers(&client, &cluster.worker_ids, &cluster.dir))
            .await?;
        Ok((cluster, client))
    }

    fn spawn(&self, name: &str, mut cmd: Command) -> Result<u32> {
        let log = self.dir.join(format!("{}.log", name.replace(' ', "-")));
        let file =
            File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let out = file.try_clone()?;
        cmd.env("NO_COLOR", "1")
            .envs(self.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(file);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start the {name} ({:?})", cmd.get_program()))?;
        let pid = child.id();
        let mut procs = self
            .procs
            .lock()
            .map_err(|_| anyhow!("process list lock poisoned"))?;
        procs.push(Proc {
            name: name.to_string(),
            child,
            log,
        });
        Ok(pid)
    }

    async fn connect(&self) -> Result<Client> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            match Client::connect(&self.url).await {
                Ok(c) => return Ok(c),
                Err(e) if Instant::now() >= deadline => {
                    return Err(anyhow!(e).context(format!(
                        "the scheduler did not accept connections within {}s",
                        STARTUP_TIMEOUT.as_secs()
                    )))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// The folder of logs and scheduler state.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn scheduler_pid(&self) -> u32 {
        self.scheduler_pid
    }

    /// An error naming the first process that has exited, with the end of its log.
    pub fn check_alive(&self) -> Result<()> {
        let mut procs = self
            .procs
            .lock()
            .map_err(|_| anyhow!("process list lock poisoned"))?;
        for p in procs.iter_mut() {
            if let Some(status) = p.child.try_wait()? {
                bail!(
                    "the {} (pid {}) exited unexpectedly: {status}\n--- last lines of {} ---\n{}",
                    p.name,
                    p.child.id(),
                    p.log.display(),
                    log_tail(&p.log, 30)
                );
            }
        }
        Ok(())
    }

    /// Runs `fut`, failing early if one of the processes dies meanwhile.
    pub async fn guarded<T>(&self, fut: impl Future<Output = Result<T>>) -> Result<T> {
        guarded(&|| self.check_alive(), fut).await
    }

    fn kill_all(&self) {
        let Ok(mut procs) = self.procs.lock() else {
            return;
        };
        // Workers first, so that they do not log the scheduler's disappearance.
        for p in procs.iter_mut().rev() {
            if let Ok(None) = p.child.try_wait() {
                let _ = p.child.kill();
            }
            let _ = p.child.wait();
        }
    }

    /// Kills the processes and removes the temporary folder unless `keep`.
    pub fn finish(mut self, keep: bool) -> Result<()> {
        self.kill_all();
        self.finished = true;
        if keep {
            eprintln!("baton-bench: logs and state kept in {}", self.dir.display());
        } else {
            let t0 = Instant::now();
            std::fs::remove_dir_all(&self.dir)
                .with_context(|| format!("cannot remove {}", self.dir.display()))?;
            eprintln!(
                "baton-bench: removed {} in {:.1} s",
                self.dir.display(),
                t0.elapsed().as_secs_f64()
            );
        }
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_all();
        if !self.finished {
            eprintln!(
                "baton-bench: processes stopped; logs kept in {}",
                self.dir.display()
            );
        }
    }
}

/// Runs `fut`, failing early if `check_alive` reports a dead process meanwhile.
pub async fn guarded<T>(
    check_alive: &(dyn Fn() -> Result<()> + Sync),
    fut: impl Future<Output = Result<T>>,
) -> Result<T> {
    let deaths = async {
        loop {
            if let Err(e) = check_alive() {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::select! {
        r = fut => {
            if r.is_err() {
                // A failed call is often the first sign of a dying process: give it a
                // moment to exit, and name it if it did.
                for _ in 0..10 {
                    check_alive()?;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            check_alive()?;
            r
        }
        e = deaths => Err(e),
    }
}

/// Waits until every worker of `ids` is listed as connected (logs in `dir`).
pub async fn wait_for_workers(client: &Client, ids: &[String], dir: &Path) -> Result<()> {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        let listed = client.workers().await?;
        let missing: Vec<&String> = ids
            .iter()
            .filter(|id| !listed.iter().any(|w| &w.id == *id))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "workers {missing:?} did not connect within {}s (logs in {})",
                STARTUP_TIMEOUT.as_secs(),
                dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A process's peak and current resident memory in MiB, from `/proc/PID/status`
/// (`VmHWM`, `VmRSS`); `None` where unavailable.
pub fn memory_mib(pid: u32) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |key: &str| -> Option<f64> {
        let line = status.lines().find(|l| l.starts_with(key))?;
        let kb: f64 = line[key.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kb / 1024.0)
    };
    Some((field("VmHWM:")?, field("VmRSS:")?))
}
