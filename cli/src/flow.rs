//! `baton flow register|ls|show`: registered flows and their versions.

use crate::run::read_flow;
use anyhow::Context;
use baton_cli::{format, Client};
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum FlowCmd {
    /// Register a flow file: a new version when the definition changed, else the same one.
    Register {
        /// The flow file (YAML or JSON).
        file: PathBuf,
        /// Switch the flow's schedule on (a new schedule is registered off otherwise).
        #[arg(long)]
        schedule_active: bool,
    },
    /// List registered flows with their latest versions and schedules.
    Ls {
        /// Only this project's flows.
        #[arg(long, default_value = "")]
        project: String,
        /// Print the flows as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one version of a flow (the latest by default) as JSON.
    Show {
        /// The flow, as NAME or PROJECT/NAME (project `default` when not given).
        name: String,
        #[arg(long, default_value_t = 0)]
        version: u32,
    },
}

/// Splits `PROJECT/NAME` (or `NAME`, in project `default`).
pub fn split_name(name: &str) -> (String, String) {
    match name.split_once('/') {
        Some((p, f)) => (p.to_string(), f.to_string()),
        None => ("default".to_string(), name.to_string()),
    }
}

pub async fn execute(client: &Client, cmd: FlowCmd) -> anyhow::Result<i32> {
    match cmd {
        FlowCmd::Register {
            file,
            schedule_active,
        } => {
            let source = read_flow(&file)?;
            let r = client
                .register_flow_with(source, schedule_active)
                .await
                .with_context(|| format!("registering {}", file.display()))?;
            let what = if r.created { "registered" } else { "unchanged" };
            println!("{}/{} v{} ({what})", r.project, r.flow, r.version);
            if let Some(s) = &r.schedule {
                println!("{}", format::schedule_line(s));
            }
            Ok(0)
        }
        FlowCmd::Ls { project, json } => {
            let flows = client.list_flows(&project).await?;
            if json {
                let rows: Vec<serde_json::Value> = flows
                    .iter()
                    .map(|f| {
                        serde_json::json!({
                            "project": f.project,
                            "flow": f.flow,
                            "latest_version": f.latest_version,
                            "description": f.description,
                            "schedule": f.schedule.as_ref().map(format::schedule_json),
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                let rows: Vec<Vec<String>> = flows
                    .iter()
                    .map(|f| {
                        vec![
                            f.project.clone(),
                            f.flow.clone(),
                            f.latest_version.to_string(),
                            format::schedule_cell(f.schedule.as_ref()),
                            f.description.clone(),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    format::table(
                        &["PROJECT", "FLOW", "VERSION", "SCHEDULE", "DESCRIPTION"],
                        &rows
                    )
                );
            }
            Ok(0)
        }
        FlowCmd::Show { name, version } => {
            let (project, flow) = split_name(&name);
            let f = client.get_flow(&project, &flow, version).await?;
            eprintln!(
                "{}/{} v{} (latest v{})",
                f.project, f.flow, f.version, f.latest_version
            );
            if let Some(s) = &f.schedule {
                eprintln!("{}", format::schedule_line(s));
            }
            println!("{}", f.definition_json);
            Ok(0)
        }
    }
}
