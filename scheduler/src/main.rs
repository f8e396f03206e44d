//! The `baton-scheduler` binary: parses its configuration and serves.

use clap::Parser;
use tokio_util::sync::CancellationToken;

/// baton's scheduler: single node with embedded state, or one replica of a cluster with
/// state in etcd (`--etcd`).
#[derive(Parser, Debug)]
#[command(name = "baton-scheduler", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "BATON_LISTEN", default_value = "127.0.0.1:7070")]
    listen: String,
    /// How log lines are written: `text`, or `json` (one object a line, for collectors).
    #[arg(long, env = "BATON_LOG_FORMAT", value_enum, default_value_t)]
    log_format: baton_common::telemetry::LogFormat,
    #[command(flatten)]
    config: baton_scheduler::SchedulerConfig,
}

fn main() -> anyhow::Result<()> {
    // Before any thread starts: memory of finished runs goes back to the system.
    baton_scheduler::alloc::tune();
    serve()
}

#[tokio::main]
async fn serve() -> anyhow::Result<()> {
    let a = Args::parse();
    let _traces = baton_common::telemetry::init_service("info", a.log_format, "baton-scheduler");
    // A file grown past the process's size limit is a write error to report (the state
    // store cuts its log back and stops taking work), not a signal that kills the process.
    // SAFETY: SIG_IGN installs no handler code; changing a disposition is process-wide
    // and safe from any thread.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    let config = baton_scheduler::SchedulerConfig {
        faults: baton_scheduler::config::Faults::from_env(),
        ..a.config
    };
    // A bad combination of values is reported like a bad value: naming the flag, exit 2.
    if let Err(e) = config.validate() {
        clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("{e}\n")).exit();
    }
    let listener = tokio::net::TcpListener::bind(&a.listen).await?;
    let shutdown = CancellationToken::new();
    // The second signal exits at once; the first lets the scheduler stop serving and
    // step down (its state is committed step by step, so there is nothing to flush).
    baton_common::shutdown::on_signals(shutdown.clone(), || {})?;
    match baton_scheduler::serve(config, listener, shutdown).await {
        // Settings that cannot serve here (e.g. no authentication beyond loopback): exit 2.
        Err(e @ baton_scheduler::Error::Config(_)) => {
            clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("{e}\n")).exit()
        }
        other => Ok(other?),
    }
}
