//! An embedded single-node cluster: the scheduler and workers in this process, talking
//! gRPC over loopback exactly as separate processes would.

use baton_scheduler::SchedulerConfig;
use baton_worker::gpu::GpuChoice;
use baton_worker::WorkerConfig;
use std::net::SocketAddr;
use std::path::PathBuf;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A worker to start: its labels, slots and GPUs.
#[derive(Clone, Debug)]
pub struct WorkerSpec {
    pub labels: Vec<String>,
    pub slots: u32,
    /// Which of the host's GPUs it offers (give each GPU to one worker only).
    pub gpus: GpuChoice,
}

impl WorkerSpec {
    /// Parses `LABEL[,LABEL...][:SLOTS[:GPUS]]`, GPUS being `auto`, `none` (the default) or
    /// device indices such as `0,1`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut parts = s.splitn(3, ':');
        let labels = parts.next().unwrap_or_default();
        let slots = match parts.next() {
            Some(n) => n
                .parse()
                .map_err(|_| format!("worker `{s}`: slots `{n}` is not a number"))?,
            None => default_slots(),
        };
        let gpus = match parts.next() {
            Some(g) => g
                .parse()
                .map_err(|e| format!("worker `{s}`: gpus `{g}`: {e}"))?,
            None => GpuChoice::None,
        };
        let labels: Vec<String> = labels
            .split(',')
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        if slots == 0 {
            return Err(format!("worker `{s}`: slots must be at least 1"));
        }
        Ok(WorkerSpec {
            labels,
            slots,
            gpus,
        })
    }
}

fn default_slots() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(2)
}

/// The default workers of `baton dev`: one `local`, one `local,trainer` with the host's GPUs
/// (if it has any).
pub fn default_workers() -> Vec<WorkerSpec> {
    vec![
        WorkerSpec {
            labels: vec!["local".into()],
            slots: default_slots(),
            gpus: GpuChoice::None,
        },
        WorkerSpec {
            labels: vec!["local".into(), "trainer".into()],
            slots: default_slots(),
            gpus: GpuChoice::Auto,
        },
    ]
}

/// Why an embedded cluster could not start.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error("cannot listen: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid worker configuration: {0}")]
    Worker(String),
}

/// A running embedded cluster.
pub struct EmbeddedCluster {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl EmbeddedCluster {
    /// Starts a scheduler on `listen` with state in `data_dir`, and the given workers.
    pub async fn start(
        listen: &str,
        data_dir: PathBuf,
        workers: &[WorkerSpec],
    ) -> Result<Self, EmbeddedError> {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let config = SchedulerConfig {
            data_dir,
            ..SchedulerConfig::default()
        };
        let mut tasks = Vec::new();
        let token = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = baton_scheduler::serve(config, listener, token.clone()).await {
                tracing::error!(error = %e, "embedded scheduler stopped");
                token.cancel();
            }
        }));
        for (i, w) in workers.iter().enumerate() {
            let gpus = baton_worker::gpu::offered(&w.gpus)
                .map_err(|e| EmbeddedError::Worker(format!("gpus `{}`: {e}", w.gpus)))?;
            let config = WorkerConfig {
                id: format!("dev-{}-{}", w.labels.join("-"), i + 1),
                schedulers: vec![format!("http://{addr}")],
                labels: w.labels.clone(),
                slots: w.slots,
                gpus,
                // A local cluster of one's own: its flows' commands run as oneself.
                allow_process: true,
                secrets: baton_worker::secrets::Secrets::from_env(None),
                ..WorkerConfig::default()
            };
            config
                .validate()
                .map_err(|e| EmbeddedError::Worker(e.to_string()))?;
            let token = shutdown.child_token();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = baton_worker::run(config, token).await {
                    tracing::error!(error = %e, "embedded worker stopped");
                }
            }));
        }
        Ok(EmbeddedCluster {
            addr,
            shutdown,
            tasks,
        })
    }

    /// Serves the web UI on `addr` for this cluster; the address it is at.
    pub async fn serve_ui(&self, addr: &str) -> std::io::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        baton_scheduler::web::spawn(listener, self.url(), false, None, self.shutdown.clone()).await
    }

    /// The scheduler's address as a URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Waits until the cluster stops (it stops on [`Self::stop`] or a fatal error).
    pub async fn wait(&self) {
        self.shutdown.cancelled().await;
    }

    /// Stops the workers and the scheduler.
    pub async fn stop(self) {
        self.shutdown.cancel();
        for t in self.tasks {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), t).await;
        }
    }
}
