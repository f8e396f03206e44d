//! The shutdown signal handler every baton binary shares: the first SIGINT or SIGTERM
//! cancels a token (the process drains: a scheduler stops serving, a worker finishes or
//! hands back its tasks); a second one runs a last action and exits at once with 130.

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// Starts watching for SIGINT and SIGTERM: the first cancels `shutdown`, a second calls
/// `last` and exits the process. Call it from within a tokio runtime.
pub fn on_signals(shutdown: CancellationToken, last: fn()) -> std::io::Result<()> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::spawn(async move {
        let mut received = 0;
        loop {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            received += 1;
            if received == 1 {
                tracing::info!("shutdown requested, draining (signal again to exit now)");
                shutdown.cancel();
            } else {
                tracing::warn!("second signal, exiting now");
                last();
                std::process::exit(130);
            }
        }
    });
    Ok(())
}
