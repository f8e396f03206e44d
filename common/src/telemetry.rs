//! Tracing set-up shared by the binaries.

use tracing_subscriber::EnvFilter;

/// Installs a `fmt` subscriber filtered by `RUST_LOG` (default `info`), writing to stderr.
/// Safe to call more than once.
pub fn init(default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
