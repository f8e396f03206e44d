//! The `baton-scheduler` binary: parses its configuration and serves.

use baton_scheduler::config::defaults;
use clap::Parser;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

/// baton's scheduler: single node with embedded state, or one replica of a cluster with
/// state in etcd (`--etcd`).
#[derive(Parser, Debug)]
#[command(name = "baton-scheduler", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "BATON_LISTEN", default_value = "127.0.0.1:7070")]
    listen: String,
    /// Folder for state (and local results).
    #[arg(long, env = "BATON_DATA_DIR", default_value = ".baton")]
    data_dir: PathBuf,
    /// Result store URI (default: file://DATA_DIR/store).
    #[arg(long, env = "BATON_RESULT_STORE")]
    result_store: Option<String>,
    #[arg(long, env = "BATON_HEARTBEAT_MS", default_value_t = defaults::HEARTBEAT_MS)]
    heartbeat_ms: u64,
    #[arg(long, env = "BATON_WORKER_LEASE_MS", default_value_t = defaults::WORKER_LEASE_MS)]
    worker_lease_ms: u64,
    #[arg(long, env = "BATON_ADOPT_GRACE_MS", default_value_t = defaults::ADOPT_GRACE_MS)]
    adopt_grace_ms: u64,
    #[arg(
        long,
        env = "BATON_UNRUNNABLE_TIMEOUT_MS",
        default_value_t = defaults::UNRUNNABLE_TIMEOUT_MS
    )]
    unrunnable_timeout_ms: u64,
    /// Do not fsync the state log before acknowledging a commit: faster, and survives a
    /// crash of the process but not a power loss or an OS crash.
    #[arg(long, env = "BATON_NO_FSYNC")]
    no_fsync: bool,
    /// etcd endpoints (comma-separated); enables cluster mode with leader election.
    #[arg(long, env = "BATON_ETCD", value_delimiter = ',')]
    etcd: Vec<String>,
    /// The cluster's namespace in etcd.
    #[arg(long, env = "BATON_CLUSTER", default_value = "baton")]
    cluster: String,
    /// The address clients and workers dial to reach this replica (default: http://LISTEN).
    #[arg(long, env = "BATON_ADVERTISE")]
    advertise: Option<String>,
    /// This replica's id (default: its advertised address).
    #[arg(long, env = "BATON_REPLICA_ID")]
    replica_id: Option<String>,
    /// The leadership lease in etcd, in milliseconds.
    #[arg(long, env = "BATON_LEADER_LEASE_MS", default_value_t = defaults::LEADER_LEASE_MS)]
    leader_lease_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    baton_common::telemetry::init("info");
    // A file grown past the process's size limit is a write error to report (the state
    // store cuts its log back and stops taking work), not a signal that kills the process.
    // SAFETY: SIG_IGN installs no handler code; changing a disposition is process-wide
    // and safe from any thread.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    let a = Args::parse();
    let config = baton_scheduler::SchedulerConfig {
        data_dir: a.data_dir,
        result_store: a.result_store,
        heartbeat_interval_ms: a.heartbeat_ms,
        worker_lease_ms: a.worker_lease_ms,
        adopt_grace_ms: a.adopt_grace_ms,
        unrunnable_timeout_ms: a.unrunnable_timeout_ms,
        no_fsync: a.no_fsync,
        etcd: a.etcd,
        cluster: a.cluster,
        advertise: a.advertise,
        replica_id: a.replica_id,
        leader_lease_ms: a.leader_lease_ms,
        faults: baton_scheduler::config::Faults::from_env(),
    };
    let listener = tokio::net::TcpListener::bind(&a.listen).await?;
    let shutdown = CancellationToken::new();
    // The second signal exits at once; the first lets the scheduler stop serving and
    // step down (its state is committed step by step, so there is nothing to flush).
    baton_common::shutdown::on_signals(shutdown.clone(), || {})?;
    baton_scheduler::serve(config, listener, shutdown).await?;
    Ok(())
}
