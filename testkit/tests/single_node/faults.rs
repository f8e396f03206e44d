//! Faults on real processes: a worker killed mid-task, the scheduler killed mid-run.

use baton_client::Client;
use baton_proto as pb;
use baton_testkit::{eventually, Cluster};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

const SLOW_TRAIN: &str = r#"
name: slow_train
labels: [local]
parameters:
  items: {default: [1, 2, 3, 4]}
tasks:
  - name: train
    builtin: sleep
    labels: [trainer]
    inputs:
      ms: 4000
      value: {param: items}
    map: [value]
"#;

async fn task_runs(c: &Client, run: &str) -> Vec<pb::TaskRun> {
    c.task_runs(run, false).await.unwrap_or_default()
}

fn state(t: &pb::TaskRun) -> pb::TaskState {
    pb::TaskState::try_from(t.state).unwrap_or(pb::TaskState::Unspecified)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_trainer_worker_tasks_rerun_on_the_other() -> anyhow::Result<()> {
    let mut cluster =
        Cluster::start(&["--worker-lease-ms", "2000", "--heartbeat-ms", "500"]).await?;
    cluster.add_worker("trainer-a", "local,trainer", 2)?;
    cluster.add_worker("trainer-b", "local,trainer", 2)?;
    let c = Client::connect(&cluster.url()).await?;
    eventually(Duration::from_secs(20), "two workers", || {
        let c = c.clone();
        async move { (c.workers().await.ok()?.len() == 2).then_some(()) }
    })
    .await?;
    let run = c
        .run_source(SLOW_TRAIN.into(), BTreeMap::new(), String::new())
        .await?
        .run
        .expect("run");
    let on_a: Vec<i64> = eventually(
        Duration::from_secs(20),
        "all four train tasks running",
        || {
            let c = c.clone();
            let id = run.id.clone();
            async move {
                let trs = task_runs(&c, &id).await;
                let running = trs
                    .iter()
                    .filter(|t| state(t) == pb::TaskState::Running)
                    .count();
                (running == 4).then(|| {
                    trs.iter()
                        .filter(|t| t.worker == "trainer-a")
                        .map(|t| t.map_index)
                        .collect()
                })
            }
        },
    )
    .await?;
    assert!(!on_a.is_empty(), "no task went to trainer-a");
    cluster.workers[0].kill9();
    let done = tokio::time::timeout(Duration::from_secs(60), c.wait(&run.id)).await??;
    cluster.assert_completed(&done);
    let trs = c.task_runs(&run.id, true).await?;
    assert_eq!(trs.len(), 4);
    for t in &trs {
        assert_eq!(state(t), pb::TaskState::Completed);
        let uri = &t.result.as_ref().expect("one committed result").uri;
        if on_a.contains(&t.map_index) {
            assert_eq!(t.attempt, 2, "{t:?}");
            assert_eq!(t.worker, "trainer-b");
            assert_eq!(t.attempts.len(), 2);
            assert!(
                t.attempts[0].error.contains("trainer-a"),
                "{:?}",
                t.attempts[0]
            );
        } else {
            assert_eq!(t.attempt, 1, "{t:?}");
            assert_eq!(t.worker, "trainer-b");
        }
        assert_eq!(t.value, format!("{}", t.map_index + 1));
        // The committed location holds that value.
        let stored = c.get_result(uri).await?;
        assert_eq!(String::from_utf8_lossy(&stored.data), t.value);
    }
    Ok(())
}

const FAN: &str = r#"
name: fan_sleep
labels: [local]
parameters:
  items: {default: [1, 2, 3, 4, 5, 6, 7, 8]}
tasks:
  - name: first
    builtin: sleep
    inputs: {ms: 200, value: 0}
  - name: fan
    builtin: sleep
    inputs:
      ms: 700
      value: {param: items}
      after_first: {result: first}
    map: [value]
  - name: last
    builtin: sum
    inputs:
      values: {result: fan}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_scheduler_restarts_without_rerunning_completed_tasks() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(&[
        "--worker-lease-ms",
        "3000",
        "--heartbeat-ms",
        "500",
        "--adopt-grace-ms",
        "4000",
    ])
    .await?;
    cluster.add_worker("w1", "local", 1)?;
    cluster.add_worker("w2", "local", 1)?;
    let c = Client::connect(&cluster.url()).await?;
    let run = c
        .run_source(FAN.into(), BTreeMap::new(), String::new())
        .await?
        .run
        .expect("run");
    let before: HashMap<(String, i64), (u32, String)> =
        eventually(Duration::from_secs(30), "some fan tasks completed", || {
            let c = c.clone();
            let id = run.id.clone();
            async move {
                let trs = task_runs(&c, &id).await;
                let fan_done = trs
                    .iter()
                    .filter(|t| t.task == "fan" && state(t) == pb::TaskState::Completed)
                    .count();
                (fan_done >= 2).then(|| {
                    trs.iter()
                        .filter(|t| state(t) == pb::TaskState::Completed)
                        .map(|t| {
                            let uri = t.result.as_ref().map(|r| r.uri.clone()).unwrap_or_default();
                            ((t.task.clone(), t.map_index), (t.attempt, uri))
                        })
                        .collect()
                })
            }
        })
        .await?;
    cluster.restart_scheduler().await?;
    let c = Client::connect(&cluster.url()).await?;
    let done = tokio::time::timeout(Duration::from_secs(60), c.wait(&run.id)).await??;
    cluster.assert_completed(&done);
    let trs = c.task_runs(&run.id, true).await?;
    for t in &trs {
        if let Some((attempt, uri)) = before.get(&(t.task.clone(), t.map_index)) {
            assert_eq!(t.attempt, *attempt, "completed task {} ran again", t.task);
            assert_eq!(&t.result.as_ref().expect("result").uri, uri);
        }
    }
    let last = trs.iter().find(|t| t.task == "last").expect("last");
    assert_eq!(last.value, "36.0");
    Ok(())
}
