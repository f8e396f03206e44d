//! `baton show`: a run, its task runs, its parent and the tree of child runs its sub-flow
//! tasks started (fetched here, rendered by `format::tree_text`/`tree_json`).

use baton_cli::format::{self, ChildRun, RunTree};
use baton_cli::Client;
use futures::future::BoxFuture;

/// Levels of child runs fetched below the run shown.
pub const MAX_DEPTH: usize = 3;
/// Child runs fetched per run; the rest are counted.
pub const MAX_CHILDREN: usize = 100;
/// Child runs fetched in all, so that a wide tree stays a bounded number of calls.
pub const MAX_FETCHED: usize = 1000;

pub async fn execute(client: &Client, run_id: &str, json: bool) -> anyhow::Result<i32> {
    let run = client.get_run(run_id).await?;
    let trs = client.task_runs(run_id, true).await?;
    let mut tree = RunTree::new(run, trs);
    let mut budget = MAX_FETCHED;
    expand(client, &mut tree, 1, json, &mut budget).await;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&format::tree_json(&tree))?
        );
    } else {
        print!("{}", format::tree_text(&tree));
    }
    Ok(0)
}

/// Fetches the child runs of `node` (at `depth` below the run shown) and theirs, within the
/// limits; a child that cannot be read is kept with the reason.
fn expand<'a>(
    client: &'a Client,
    node: &'a mut RunTree,
    depth: usize,
    with_values: bool,
    budget: &'a mut usize,
) -> BoxFuture<'a, ()> {
    Box::pin(async move {
        let links = node.child_links();
        if depth > MAX_DEPTH {
            node.children_left_out = links.len();
            return;
        }
        for (i, (task, map_index, run_id)) in links.into_iter().enumerate() {
            if i >= MAX_CHILDREN || *budget == 0 {
                node.children_left_out += 1;
                continue;
            }
            *budget -= 1;
            let tree = match fetch(client, &run_id, with_values).await {
                Ok(mut child) => {
                    expand(client, &mut child, depth + 1, with_values, budget).await;
                    Ok(child)
                }
                Err(e) => Err(e.to_string()),
            };
            node.children.push(ChildRun {
                task,
                map_index,
                run_id,
                tree,
            });
        }
    })
}

async fn fetch(client: &Client, run_id: &str, with_values: bool) -> anyhow::Result<RunTree> {
    let run = client.get_run(run_id).await?;
    let trs = client.task_runs(run_id, with_values).await?;
    Ok(RunTree::new(run, trs))
}
