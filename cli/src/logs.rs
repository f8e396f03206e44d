//! `baton logs RUN [TASK] [--follow]`: the lines a run's tasks wrote.

use baton_cli::client::format_entry;
use baton_cli::Client;
use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct LogsArgs {
    /// The run.
    pub run: String,
    /// Only this task's lines (every map index and attempt).
    pub task: Option<String>,
    /// Go on printing new lines as they come, until the run is over.
    #[arg(long, short = 'f')]
    pub follow: bool,
}

/// How long `--follow` keeps trying to reopen a broken stream (a leader failover).
const REOPEN_FOR: Duration = Duration::from_secs(60);

/// Prints the lines, one per line, in order: by task, map index and attempt, then as
/// written; new lines follow when asked. A followed stream that breaks (the leader changed)
/// is opened again on the new leader, skipping the lines already printed.
pub async fn execute(c: &Client, args: LogsArgs) -> anyhow::Result<i32> {
    let task = args.task.unwrap_or_default();
    let mut out = std::io::stdout();
    // Lines printed per (task, map index, attempt): a reopened stream replays from the start.
    let mut printed: HashMap<(String, i64, u32), usize> = HashMap::new();
    let mut broken_since: Option<Instant> = None;
    loop {
        let opened = c.logs(&args.run, &task, args.follow).await;
        let mut stream = match opened {
            Ok(s) => s,
            Err(e) if args.follow && broken_since.is_some_and(|t| t.elapsed() < REOPEN_FOR) => {
                tracing::debug!(error = %e, "reopening the log stream");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let mut seen: HashMap<(String, i64, u32), usize> = HashMap::new();
        let ended = loop {
            match stream.message().await {
                Ok(Some(e)) => {
                    broken_since = None;
                    let key = (e.task.clone(), e.map_index, e.attempt);
                    let n = seen.entry(key.clone()).or_default();
                    *n += 1;
                    let done = printed.entry(key).or_default();
                    if *n <= *done {
                        continue;
                    }
                    *done = *n;
                    writeln!(out, "{}", format_entry(&e))?;
                    if args.follow {
                        out.flush()?;
                    }
                }
                Ok(None) => break Ok(()),
                Err(status) => break Err(status),
            }
        };
        match ended {
            Ok(()) if args.follow => match run_over(c, &args.run).await {
                Ok(true) => break,
                // The stream ended but the run goes on (its leader went away), or the run
                // cannot be read yet (a new leader still loading): open the stream again,
                // for a bounded time.
                Ok(false) | Err(_) => {
                    let since = *broken_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= REOPEN_FOR {
                        anyhow::bail!(
                            "the log stream of run `{}` ended and could not be opened again for {} s",
                            args.run,
                            REOPEN_FOR.as_secs()
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            },
            Ok(()) => break,
            Err(status) if args.follow => {
                tracing::debug!(%status, "the log stream broke; reopening");
                broken_since.get_or_insert_with(Instant::now);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(status) => return Err(status.into()),
        }
    }
    out.flush()?;
    Ok(0)
}

/// Whether the run is over. An error (no leader yet, a leader still loading its state) is
/// not an answer: the caller tries again, for a bounded time.
async fn run_over(c: &Client, run: &str) -> Result<bool, baton_cli::client::ClientError> {
    use baton_proto::RunState;
    let r = c.get_run(run).await?;
    Ok(matches!(
        RunState::try_from(r.state),
        Ok(RunState::Completed | RunState::Failed | RunState::Cancelled)
    ))
}
