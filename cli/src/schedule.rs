//! `baton schedule on|off|ls`: switching registered flows' cron schedules and listing them.

use crate::flow::split_name;
use anyhow::Context;
use baton_cli::{format, Client};
use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum ScheduleCmd {
    /// Switch a flow's schedule on: runs are created at its ticks from now on.
    On {
        /// The flow, as NAME or PROJECT/NAME (project `default` when not given).
        flow: String,
    },
    /// Switch a flow's schedule off.
    Off {
        /// The flow, as NAME or PROJECT/NAME (project `default` when not given).
        flow: String,
    },
    /// List the flows that have a schedule: cron, time zone, on/off, catch-up, ticks.
    Ls {
        /// Only this project's flows.
        #[arg(long, default_value = "")]
        project: String,
        /// Print the schedules as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub async fn execute(client: &Client, cmd: ScheduleCmd) -> anyhow::Result<i32> {
    match cmd {
        ScheduleCmd::On { flow } => set(client, &flow, true).await,
        ScheduleCmd::Off { flow } => set(client, &flow, false).await,
        ScheduleCmd::Ls { project, json } => {
            let flows = client.list_flows(&project).await?;
            if json {
                let rows = format::schedules_json(&flows);
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print!("{}", format::schedules_table(&flows));
            }
            Ok(0)
        }
    }
}

/// Switches the schedule and prints `PROJECT/FLOW schedule: ...`.
async fn set(client: &Client, name: &str, active: bool) -> anyhow::Result<i32> {
    let (project, flow) = split_name(name);
    let r = client
        .set_schedule(&project, &flow, active)
        .await
        .with_context(|| format!("switching the schedule of {project}/{flow}"))?;
    let s = r
        .schedule
        .with_context(|| format!("{}/{} has no schedule", r.project, r.flow))?;
    println!("{}/{} {}", r.project, r.flow, format::schedule_line(&s));
    Ok(0)
}
