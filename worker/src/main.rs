//! The `baton-worker` binary: parses the configuration, installs tracing and the signal
//! handling, and runs [`baton_worker::run`]; started with a hidden argument, it is the
//! process shim of a task instead (see [`baton_worker::shim`]).

use baton_common::token::Token;
use baton_worker::config::{
    default_id, default_memory_mb, default_slots, DEFAULT_LEADER_LEASE_MS, DEFAULT_SCHEDULER,
};
use baton_worker::gpu::{self, GpuChoice};
use baton_worker::WorkerConfig;
use clap::Parser;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

/// baton's worker daemon: runs the tasks a scheduler assigns to it.
#[derive(Debug, Parser)]
#[command(name = "baton-worker", version, about)]
struct Args {
    /// The worker's id, unique in the cluster [default: <hostname>-<pid>].
    #[arg(long, env = "BATON_WORKER_ID")]
    id: Option<String>,
    /// Scheduler replica addresses (http://host:port), comma-separated: tried in turn, and
    /// the leader they name is dialled first.
    #[arg(long, env = "BATON_WORKER_SCHEDULER", value_delimiter = ',', default_value = DEFAULT_SCHEDULER)]
    scheduler: Vec<String>,
    /// Labels tasks may require, comma-separated.
    #[arg(
        long,
        env = "BATON_WORKER_LABELS",
        value_delimiter = ',',
        default_value = "local"
    )]
    labels: Vec<String>,
    /// Concurrent task slots [default: the number of CPUs].
    #[arg(long, env = "BATON_WORKER_SLOTS")]
    slots: Option<u32>,
    /// GPUs offered to tasks: `auto` (every NVIDIA GPU NVML finds; none without a driver),
    /// `none`, or device indices such as `0,2`. Each attempt is pinned to its own devices.
    #[arg(long, env = "BATON_WORKER_GPUS", default_value = "auto")]
    gpus: GpuChoice,
    /// Memory offered to tasks, in MiB [default: the host's memory].
    #[arg(long, env = "BATON_WORKER_MEMORY_MB")]
    memory_mb: Option<u64>,
    /// Running tasks are stopped when no leader has been heard from for this long.
    #[arg(
        long,
        alias = "lease-ms",
        env = "BATON_WORKER_LEADER_LEASE_MS",
        default_value_t = DEFAULT_LEADER_LEASE_MS
    )]
    leader_lease_ms: u64,
    /// On shutdown, how long running tasks may take before they are cancelled.
    #[arg(long, env = "BATON_WORKER_DRAIN_TIMEOUT_MS", default_value_t = 30_000)]
    drain_timeout_ms: u64,
    /// The token to show the scheduler when it requires one (a `worker` token from `baton
    /// token new` naming this worker's id); also read from BATON_TOKEN, which the worker
    /// then removes from its environment so that no task inherits it.
    #[arg(long)]
    token: Option<String>,
    /// A file holding the token (its first line).
    #[arg(long, env = "BATON_TOKEN_FILE", conflicts_with = "token")]
    token_file: Option<std::path::PathBuf>,
    /// Kinds of task to run besides built-ins, comma-separated: `process` lets flows run
    /// commands on this host, `container` in containers of its Docker engine. By default
    /// only the built-in library runs.
    #[arg(long, env = "BATON_WORKER_ALLOW", value_delimiter = ',')]
    allow: Vec<String>,
    /// Where tasks' `{secret: NAME}` inputs are found besides BATON_SECRET_<NAME> variables
    /// (which the worker takes out of its environment at start): a file of NAME=VALUE lines,
    /// or a folder with one file per secret (as Docker and Kubernetes mount secrets). Read
    /// when a task needs a secret, so a changed value needs no restart.
    #[arg(long, env = "BATON_WORKER_SECRETS")]
    secrets: Option<std::path::PathBuf>,
    /// TLS to `https://` schedulers: the CA that signs their certificates (PEM). Addresses
    /// without a scheme then mean https://.
    #[arg(long, env = "BATON_TLS_CA")]
    tls_ca: Option<std::path::PathBuf>,
    /// Mutual TLS: this worker's certificate chain (PEM), with --tls-key. Read at each
    /// connection, so renewed files need no restart.
    #[arg(long, env = "BATON_TLS_CERT")]
    tls_cert: Option<std::path::PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, env = "BATON_TLS_KEY")]
    tls_key: Option<std::path::PathBuf>,
    /// A file the worker touches (at most once a second) while it hears from a leader, for
    /// health checks.
    #[arg(long, env = "BATON_WORKER_HEALTH_FILE")]
    health_file: Option<std::path::PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 0.0.0.0:9465); off when unset.
    #[arg(long, value_name = "ADDR", env = "BATON_METRICS_ADDR")]
    metrics_addr: Option<String>,
    /// Checks the health file of a running worker (as a container health check does): exit
    /// 0 when it heard from a leader within --leader-lease-ms, 1 otherwise.
    #[arg(long, requires = "health_file")]
    check_health: bool,
    /// How log lines are written: `text`, or `json` (one object a line, for collectors;
    /// the fields include the attempt's run, task, map index and attempt).
    #[arg(long, env = "BATON_LOG_FORMAT", value_enum, default_value_t)]
    log_format: baton_common::telemetry::LogFormat,
}

/// BATON_TOKEN, taken out of the environment before any thread starts.
static TOKEN_ENV: std::sync::OnceLock<Option<Token>> = std::sync::OnceLock::new();

impl Args {
    fn into_config(self) -> Result<WorkerConfig, String> {
        let trimmed = |v: Vec<String>| -> Vec<String> {
            v.into_iter()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        };
        let gpus = gpu::offered(&self.gpus).map_err(|e| format!("--gpus {}: {e}", self.gpus))?;
        let (mut allow_process, mut allow_container) = (false, false);
        for kind in self
            .allow
            .iter()
            .map(|k| k.trim())
            .filter(|k| !k.is_empty())
        {
            match kind {
                baton_common::flow::PROCESS_EXECUTOR => allow_process = true,
                baton_common::flow::CONTAINER_EXECUTOR => allow_container = true,
                other => {
                    return Err(format!(
                        "--allow: `{other}` is not a kind of task this worker can run (process, container)"
                    ))
                }
            }
        }
        let token = match (self.token, &self.token_file) {
            (Some(t), _) => Some(Token::new(t)),
            (None, Some(f)) => Some(Token::new(
                baton_common::token::read_file(f).map_err(|e| format!("--token-file: {e}"))?,
            )),
            (None, None) => TOKEN_ENV.get().cloned().flatten(),
        };
        Ok(WorkerConfig {
            id: self.id.unwrap_or_else(default_id),
            schedulers: trimmed(self.scheduler)
                .into_iter()
                .map(|s| match (s.contains("://"), self.tls_ca.is_some()) {
                    (true, _) => s,
                    (false, true) => format!("https://{s}"),
                    (false, false) => format!("http://{s}"),
                })
                .collect(),
            labels: trimmed(self.labels),
            slots: self.slots.unwrap_or_else(default_slots),
            gpus,
            memory_mb: self.memory_mb.unwrap_or_else(default_memory_mb),
            leader_lease_ms: self.leader_lease_ms,
            drain_timeout_ms: self.drain_timeout_ms,
            token,
            allow_process,
            allow_container,
            secrets: baton_worker::secrets::Secrets::from_env(self.secrets),
            tls: baton_client::tls::TlsFiles {
                ca: self.tls_ca,
                cert: self.tls_cert,
                key: self.tls_key,
            },
            health_file: self.health_file,
            metrics_addr: self.metrics_addr,
        })
    }
}

fn main() -> ExitCode {
    // A process shim of a task, started by a worker, runs here and exits.
    baton_worker::shim::init();
    // Before any thread starts: CUDA numbers devices as NVML does.
    gpu::use_pci_bus_order();
    let _ = TOKEN_ENV.set(baton_common::token::take_env("BATON_TOKEN"));
    baton_worker::secrets::take_env();
    worker_main()
}

// One thread: the session, the stream and the attempts' async parts wake each other without
// a cross-thread hop (a chain of no-op tasks: about 25% less latency on 2 cores); CPU-heavy
// built-ins run on the blocking pool, processes are children waited on asynchronously.
#[tokio::main(flavor = "current_thread")]
async fn worker_main() -> ExitCode {
    let args = Args::parse();
    if let (true, Some(path)) = (args.check_health, &args.health_file) {
        let lease = std::time::Duration::from_millis(args.leader_lease_ms);
        return match baton_worker::health::check(path, lease) {
            Ok(line) => {
                println!("{line}");
                ExitCode::SUCCESS
            }
            Err(line) => {
                eprintln!("{line}");
                ExitCode::FAILURE
            }
        };
    }
    let _traces = baton_common::telemetry::init_service("info", args.log_format, "baton-worker");
    let config = match args.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("baton-worker: {e}");
            return ExitCode::from(2);
        }
    };
    match serve(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("baton-worker: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: WorkerConfig) -> anyhow::Result<()> {
    config.validate()?;
    let shutdown = CancellationToken::new();
    baton_common::shutdown::on_signals(shutdown.clone(), baton_worker::executor::kill_all_groups)?;
    baton_worker::run(config, shutdown).await?;
    Ok(())
}
