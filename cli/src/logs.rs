//! `baton logs RUN [TASK] [--follow]`: the lines a run's tasks wrote.

use baton_cli::client::format_entry;
use baton_cli::Client;
use std::io::Write;

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

/// Prints the lines, one per line, in order: by task, map index and attempt, then as
/// written; new lines follow when asked.
pub async fn execute(c: &Client, args: LogsArgs) -> anyhow::Result<i32> {
    let task = args.task.unwrap_or_default();
    let mut stream = c.logs(&args.run, &task, args.follow).await?;
    let mut out = std::io::stdout();
    while let Some(e) = stream.message().await? {
        writeln!(out, "{}", format_entry(&e))?;
        if args.follow {
            out.flush()?;
        }
    }
    out.flush()?;
    Ok(0)
}
