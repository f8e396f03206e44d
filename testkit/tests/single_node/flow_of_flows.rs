//! The ridge sweep as a flow of flows (examples/flow_of_flows): the child flow and the
//! parent are registered and run through the real `baton` CLI. Single node: the parent
//! completes with six child runs of `examples/ridge_train`, linked to their parent task
//! runs, whose tasks ran on `trainer` workers (the child's labels, not the parent's); its
//! scores equal the single-flow sweep's; cleanup deleted the children's models; the schedule
//! is registered off. Cluster: the leader is killed -9 while the six children wait for
//! trainers; the new leader finishes the parent without starting any child twice.

use crate::support;
use baton_client::Client;
use baton_proto as pb;
use baton_testkit::baton_cli as baton;
use baton_testkit::ha::HaConfig;
use baton_testkit::{eventually, Cluster};
use serde_json::Value;
use std::time::{Duration, Instant};

const PARENT: &str = "examples/ridge_sweep_fof";
const ALPHAS: [f64; 6] = [1.0, 0.1, 0.01, 0.001, 0.0001, 0.00001];

fn example(path: &str) -> String {
    format!("{}/../examples/{path}", env!("CARGO_MANIFEST_DIR"))
}

/// Registers the child flow, then the parent, as a user would.
fn register_examples(scheduler: &str) -> anyhow::Result<()> {
    let (code, out, err) = baton(
        scheduler,
        &[
            "flow",
            "register",
            &example("flow_of_flows/train_model.yaml"),
        ],
    )?;
    assert_eq!(
        (code, out.trim()),
        (0, "examples/ridge_train v1 (registered)"),
        "{err}"
    );
    let (code, out, err) = baton(
        scheduler,
        &[
            "flow",
            "register",
            &example("flow_of_flows/ridge_sweep.yaml"),
        ],
    )?;
    assert_eq!(code, 0, "{err}");
    let mut lines = out.lines();
    assert_eq!(
        lines.next(),
        Some("examples/ridge_sweep_fof v1 (registered)")
    );
    let schedule = lines.next().unwrap_or_default();
    assert!(
        schedule.contains("*/1 * * * *") && schedule.contains(" off"),
        "a new schedule is registered off: {out}"
    );
    Ok(())
}

/// The (alpha, r2) of each `evaluate` task run, by map index, from task runs whose values
/// are JSON texts.
fn scores(trs: &[pb::TaskRun]) -> anyhow::Result<Vec<(f64, f64)>> {
    let mut evals: Vec<&pb::TaskRun> = trs.iter().filter(|t| t.task == "evaluate").collect();
    evals.sort_by_key(|t| t.map_index);
    let mut out = Vec::new();
    for (i, t) in evals.iter().enumerate() {
        assert_eq!(t.map_index, i as i64);
        let v: Value = serde_json::from_str(&t.value)?;
        out.push((
            v["alpha"].as_f64().expect("alpha"),
            v["r2"].as_f64().expect("r2"),
        ));
    }
    Ok(out)
}

/// The (alpha, r2) of each `evaluate` task run of `baton run --json`'s output.
fn json_scores(run: &Value) -> Vec<(f64, f64)> {
    let mut evals: Vec<&Value> = run["task_runs"]
        .as_array()
        .expect("task_runs")
        .iter()
        .filter(|t| t["task"] == "evaluate")
        .collect();
    evals.sort_by_key(|t| t["map_index"].as_i64());
    evals
        .iter()
        .map(|t| {
            (
                t["value"]["alpha"].as_f64().expect("alpha"),
                t["value"]["r2"].as_f64().expect("r2"),
            )
        })
        .collect()
}

fn assert_same_scores(got: &[(f64, f64)], expect: &[(f64, f64)]) {
    assert_eq!(got.len(), 6, "{got:?}");
    assert_eq!(expect.len(), 6, "{expect:?}");
    for (i, ((ga, gr), (ea, er))) in got.iter().zip(expect).enumerate() {
        assert_eq!(*ga, ALPHAS[i], "alpha of model {i}");
        assert_eq!(ga, ea, "alpha of model {i}");
        assert!(
            (gr - er).abs() < 1e-9,
            "model {i} (alpha {ga}): r2 {gr} of the flow of flows != {er} of the single flow"
        );
        assert!(*gr > 0.5, "model {i}: r2 {gr}");
    }
}

/// The runs whose parent is `parent`, sorted by map index; each is linked to one map
/// index 0..5 of its `train` task and runs `examples/ridge_train` v1.
fn assert_children(parent: &str, runs: &[pb::FlowRun]) -> Vec<pb::FlowRun> {
    let mut children: Vec<pb::FlowRun> = runs
        .iter()
        .filter(|r| r.parent_run_id == parent)
        .cloned()
        .collect();
    children.sort_by_key(|r| r.parent_map_index);
    let indexes: Vec<i64> = children.iter().map(|r| r.parent_map_index).collect();
    assert_eq!(
        indexes,
        vec![0, 1, 2, 3, 4, 5],
        "exactly one child run per alpha: {children:#?}"
    );
    for c in &children {
        assert_eq!(
            (c.project.as_str(), c.flow.as_str(), c.version),
            ("examples", "ridge_train", 1)
        );
        assert_eq!(c.parent_task, "train");
        assert_eq!(c.trigger, "parent");
        assert_eq!(
            c.state,
            pb::RunState::Completed as i32,
            "child {}: {}",
            c.id,
            c.error
        );
        let alpha: f64 = serde_json::from_str(&c.parameters["alpha"]).expect("alpha is a number");
        assert_eq!(alpha, ALPHAS[c.parent_map_index as usize]);
    }
    children
}

/// The parent's `train` task runs each name their own child (the one listed with that map
/// index), in one attempt, and yield its `train` result: a model location.
fn assert_train_links(trs: &[pb::TaskRun], children: &[pb::FlowRun]) -> Vec<String> {
    let mut train: Vec<&pb::TaskRun> = trs.iter().filter(|t| t.task == "train").collect();
    train.sort_by_key(|t| t.map_index);
    assert_eq!(train.len(), 6);
    let mut models = Vec::new();
    for (t, c) in train.iter().zip(children) {
        assert_eq!(t.child_run_id, c.id, "train[{}]", t.map_index);
        assert_eq!(t.state, pb::TaskState::Completed as i32, "{}", t.error);
        assert_eq!(t.attempt, 1, "train[{}] was attempted again", t.map_index);
        let v: Value = serde_json::from_str(&t.value).expect("a JSON value");
        let model = v.as_str().expect("a model location").to_string();
        assert!(
            model.contains(&c.id) && model.ends_with("/train/attempt-1/model.json"),
            "train[{}] yields its child's model: {model}",
            t.map_index
        );
        models.push(model);
    }
    models
}

/// The file of a location (a small result is a range of a segment file: `path#offset+len`).
fn uri_path(uri: &str) -> std::path::PathBuf {
    let path = uri.trim_start_matches("file://");
    std::path::PathBuf::from(path.split_once('#').map_or(path, |(p, _)| p))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flow_of_flows_runs_one_child_per_alpha_on_trainers() -> anyhow::Result<()> {
    let t0 = Instant::now();
    let mut cluster = Cluster::start(&[]).await?;
    // `local` for the parent's tasks; trainer-only workers, so that the children can only
    // run by the child flow's own labels.
    cluster.add_worker("fof-local", "local", 2)?;
    cluster.add_worker("fof-trainer-1", "trainer", 2)?;
    cluster.add_worker("fof-trainer-2", "trainer", 2)?;
    let url = cluster.url();
    let client = Client::connect(&url).await?;
    eventually(Duration::from_secs(20), "three workers", || async {
        (client.workers().await.ok()?.len() >= 3).then_some(())
    })
    .await?;
    register_examples(&url)?;

    let (code, out, err) = baton(
        &url,
        &["run", "--flow", PARENT, "-p", "seed=20211005", "--json"],
    )?;
    assert_eq!(code, 0, "{err}\n{out}\n{}", cluster.logs());
    let run: Value = serde_json::from_str(&out)?;
    let parent = run["id"].as_str().expect("run id").to_string();
    assert_eq!(run["state"], "COMPLETED", "{run}\n{}", cluster.logs());
    assert_eq!(run["flow"], "ridge_sweep_fof");
    // 1 + 1 + 6 + 6 + 9 task runs, every one completed once.
    let parent_trs = client.task_runs(&parent, true).await?;
    assert_eq!(parent_trs.len(), 23);
    for t in &parent_trs {
        assert_eq!(
            (t.state, t.attempt),
            (pb::TaskState::Completed as i32, 1),
            "{}[{}]: {}",
            t.task,
            t.map_index,
            t.error
        );
    }

    // Six children, linked to the parent's train task runs.
    let runs = client.list_runs(0).await?;
    let children = assert_children(&parent, &runs);
    let models = assert_train_links(&parent_trs, &children);
    let trainers = ["fof-trainer-1", "fof-trainer-2"];
    for c in &children {
        let trs = client.task_runs(&c.id, true).await?;
        assert_eq!(trs.len(), 1, "child {}: {trs:?}", c.id);
        let t = &trs[0];
        assert_eq!((t.task.as_str(), t.map_index), ("train", -1));
        assert!(
            trainers.contains(&t.worker.as_str()),
            "child {} trained on {}",
            c.id,
            t.worker
        );
        assert_eq!(t.attempt, 1);
    }

    // `baton show --json` shows the same tree.
    let (code, out, err) = baton(&url, &["show", &parent, "--json"])?;
    assert_eq!(code, 0, "{err}");
    let tree: Value = serde_json::from_str(&out)?;
    let shown = tree["children"].as_array().expect("children");
    assert_eq!(shown.len(), 6, "{tree}");
    for (i, c) in shown.iter().enumerate() {
        assert_eq!(c["id"], children[i].id.as_str());
        assert_eq!(c["flow"], "ridge_train");
        assert_eq!(c["trigger"], "parent");
        assert_eq!(c["parent"]["run_id"], parent.as_str());
        assert_eq!(c["parent"]["task"], "train");
        assert_eq!(c["parent"]["map_index"], i as i64);
        assert_eq!(c["task_runs"][0]["value"], models[i].as_str());
    }
    // The text form lists them under `children:`.
    let (_, text, _) = baton(&url, &["show", &parent])?;
    assert!(text.contains("children:"), "{text}");
    assert_eq!(
        text.matches("of examples/ridge_train v1: COMPLETED")
            .count(),
        6,
        "{text}"
    );

    // Cleanup deleted the dataset, the splits and the six models the children wrote.
    let cleanup = parent_trs.iter().filter(|t| t.task == "cleanup").count();
    assert_eq!(cleanup, 1 + 6 + 2);
    for m in &models {
        assert!(!uri_path(m).exists(), "model {m} was not cleaned up");
    }

    // The same scores as the single-flow sweep with the same seed, in the same cluster (its
    // train task needs a worker with both labels).
    cluster.add_worker("fof-both", "local,trainer", 2)?;
    let (code, out, err) = baton(
        &url,
        &[
            "run",
            &example("ridge_sweep.yaml"),
            "-p",
            "seed=20211005",
            "--json",
        ],
    )?;
    assert_eq!(code, 0, "{err}\n{out}");
    let single: Value = serde_json::from_str(&out)?;
    assert_eq!(single["state"], "COMPLETED", "{single}");
    let got = scores(&parent_trs)?;
    assert_eq!(
        got,
        json_scores(&run),
        "`baton run --json` prints the scores"
    );
    assert_same_scores(&got, &json_scores(&single));

    // The parent's schedule is registered, and off; the child has none.
    let (code, out, err) = baton(&url, &["flow", "ls", "--json"])?;
    assert_eq!(code, 0, "{err}");
    let rows: Vec<Value> = serde_json::from_str(&out)?;
    let row = |name: &str| {
        rows.iter()
            .find(|r| r["project"] == "examples" && r["flow"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} in {out}"))
    };
    let fof = row("ridge_sweep_fof");
    assert_eq!(fof["schedule"]["cron"], "*/1 * * * *", "{fof}");
    assert_eq!(fof["schedule"]["active"], false, "{fof}");
    assert!(row("ridge_train")["schedule"].is_null());
    // Switched off, no scheduled run was made: the only runs are the two above and the six
    // children.
    let runs = client.list_runs(0).await?;
    assert_eq!(runs.len(), 2 + 6, "{runs:#?}");
    assert!(runs.iter().all(|r| r.trigger != "schedule"));
    eprintln!("single-node flow of flows: {:?}", t0.elapsed());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flow_of_flows_survives_a_leader_killed_while_children_run() -> anyhow::Result<()> {
    let _one = support::serial().await;
    let t0 = Instant::now();
    // Only the `local` worker at first: the six children are started and then wait for a
    // trainer while the leader is killed.
    let mut c = support::cluster(HaConfig::default(), &[("fof-local", "local", 4)]).await?;
    let list = c.scheduler_list();
    register_examples(&list)?;
    let (code, out, err) = baton(
        &list,
        &[
            "run",
            "--flow",
            PARENT,
            "--detach",
            "--idempotency-key",
            "fof-failover-1",
        ],
    )?;
    assert_eq!(code, 0, "{err}");
    let parent = out
        .split_whitespace()
        .last()
        .expect("the run id")
        .to_string();

    let (old, epoch) = c.wait_leader(Duration::from_secs(10), None).await?;
    let old_client = Client::connect_with_token(&[c.replicas[old].url()], Some(c.token())).await?;
    let p = parent.clone();
    let waiting = eventually(Duration::from_secs(30), "six child runs", || {
        let (client, p) = (&old_client, p.clone());
        async move {
            let runs = client.list_runs(0).await.ok()?;
            let children: Vec<pb::FlowRun> =
                runs.into_iter().filter(|r| r.parent_run_id == p).collect();
            (children.len() == 6).then_some(children)
        }
    })
    .await?;
    assert!(
        waiting.iter().all(|r| !baton_client::is_finished(r)),
        "children finished without a trainer: {waiting:#?}"
    );
    // The parent's six train task runs are running, each waiting for its child.
    let trs = old_client.task_runs(&parent, false).await?;
    let train: Vec<&pb::TaskRun> = trs.iter().filter(|t| t.task == "train").collect();
    assert_eq!(train.len(), 6, "{trs:#?}");
    for t in &train {
        assert_eq!(t.state, pb::TaskState::Running as i32, "{t:?}");
        assert!(waiting.iter().any(|r| r.id == t.child_run_id), "{t:?}");
    }
    c.kill9_scheduler(old);
    c.add_worker("fof-trainer-1", "trainer", 2)?;
    c.add_worker("fof-trainer-2", "local,trainer", 2)?;
    let (new, new_epoch) = c.wait_leader(Duration::from_secs(30), Some(old)).await?;
    assert_ne!(new, old);
    assert!(new_epoch > epoch, "epoch {new_epoch} after {epoch}");

    let done = support::wait_run(&c, &parent, Duration::from_secs(90)).await?;
    assert_eq!(
        done.state,
        pb::RunState::Completed as i32,
        "{}\n{}",
        done.error,
        c.logs()
    );
    let parent_trs = support::task_runs(&c, &parent).await?;
    assert_eq!(parent_trs.len(), 23);
    let runs = support::with_leader(&c, Duration::from_secs(30), |client| async move {
        Ok(client.list_runs(0).await?)
    })
    .await?;
    // No child started twice: the same six runs as before the failover.
    let children = assert_children(&parent, &runs);
    let before: Vec<&str> = {
        let mut w: Vec<&pb::FlowRun> = waiting.iter().collect();
        w.sort_by_key(|r| r.parent_map_index);
        w.iter().map(|r| r.id.as_str()).collect()
    };
    let after: Vec<&str> = children.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(before, after, "the children were started again");
    assert_train_links(&parent_trs, &children);
    for ch in &children {
        let trs = support::task_runs(&c, &ch.id).await?;
        assert_eq!(trs.len(), 1);
        assert!(
            ["fof-trainer-1", "fof-trainer-2"].contains(&trs[0].worker.as_str()),
            "child {} trained on {}",
            ch.id,
            trs[0].worker
        );
    }

    // The scores equal the single-flow sweep's with the same (default) seed.
    let source = std::fs::read_to_string(example("ridge_sweep.yaml"))?;
    let single = support::start_run(&c, &source, "fof-single-1").await?;
    let single_done = support::wait_run(&c, &single, Duration::from_secs(60)).await?;
    assert_eq!(
        single_done.state,
        pb::RunState::Completed as i32,
        "{}",
        single_done.error
    );
    let single_trs = support::task_runs(&c, &single).await?;
    assert_same_scores(&scores(&parent_trs)?, &scores(&single_trs)?);
    c.assert_epochs_monotonic();
    eprintln!("cluster flow of flows: {:?}", t0.elapsed());
    Ok(())
}
