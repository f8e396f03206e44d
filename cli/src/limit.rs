//! `baton limit set|rm|ls`: cluster-wide concurrency limits on task tags.

use baton_cli::{format, Client};
use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum LimitCmd {
    /// Create or change a limit: at most N attempts of tasks tagged TAG run at once.
    Set {
        /// The tag (`tags:` of a task).
        tag: String,
        /// How many attempts of its tasks may hold a slot at once.
        limit: u32,
    },
    /// Remove the limit on a tag (exit status 1 when there was none).
    Rm {
        /// The tag.
        tag: String,
    },
    /// List the limits with the attempts holding their slots now.
    Ls {
        /// Print the limits as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub async fn execute(client: &Client, cmd: LimitCmd) -> anyhow::Result<i32> {
    match cmd {
        LimitCmd::Set { tag, limit } => {
            let l = client.set_limit(&tag, limit).await?;
            println!("{}", format::limit_line(&l));
            Ok(0)
        }
        LimitCmd::Rm { tag } => {
            if client.delete_limit(&tag).await? {
                println!("{tag}: limit removed");
                Ok(0)
            } else {
                eprintln!("{tag}: no limit to remove");
                Ok(1)
            }
        }
        LimitCmd::Ls { json } => {
            let limits = client.list_limits().await?;
            if json {
                let rows: Vec<serde_json::Value> = limits.iter().map(format::limit_json).collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print!("{}", format::limits_table(&limits));
            }
            Ok(0)
        }
    }
}
