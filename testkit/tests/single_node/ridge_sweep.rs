//! The ridge sweep on real scheduler and worker processes: every R² equals an independent
//! f64 closed-form computation on the same generated data; results exist; cleanup removed
//! the artifacts.

use baton_client::Client;
use baton_proto as pb;
use baton_testkit::Cluster;
use baton_worker::builtins::{generate_points, split_rows};
use std::collections::BTreeMap;

fn ridge_r2_f64(train: &[Vec<f64>], test: &[Vec<f64>], alpha: f64) -> f64 {
    let n = train.len() as f64;
    let mx = train.iter().map(|r| r[0]).sum::<f64>() / n;
    let my = train.iter().map(|r| r[1]).sum::<f64>() / n;
    let sxx: f64 = train.iter().map(|r| (r[0] - mx).powi(2)).sum();
    let sxy: f64 = train.iter().map(|r| (r[0] - mx) * (r[1] - my)).sum();
    let w = sxy / (sxx + alpha);
    let b = my - w * mx;
    let ty = test.iter().map(|r| r[1]).sum::<f64>() / test.len() as f64;
    let ss_res: f64 = test.iter().map(|r| (r[1] - (w * r[0] + b)).powi(2)).sum();
    let ss_tot: f64 = test.iter().map(|r| (r[1] - ty).powi(2)).sum();
    1.0 - ss_res / ss_tot
}

/// The file of a location (a small result is a range of a segment file: `path#offset+len`).
fn uri_path(uri: &str) -> std::path::PathBuf {
    let path = uri.trim_start_matches("file://");
    std::path::PathBuf::from(path.split_once('#').map_or(path, |(p, _)| p))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ridge_sweep_matches_closed_form() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(&[]).await?;
    cluster.add_worker("w-local", "local", 2)?;
    cluster.add_worker("w-trainer", "local,trainer", 2)?;
    let client = Client::connect(&cluster.url()).await?;
    let source = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/ridge_sweep.yaml"
    ))?;
    let seed = 20211005u64;
    let params = BTreeMap::from([("seed".to_string(), seed.to_string())]);
    let run = client
        .run_source(source, params, String::new())
        .await?
        .run
        .expect("run");

    // While the run lives, every completed task's result object exists.
    let mut stream = client.watch(&run.id, true).await?;
    let mut seen = 0;
    while let Some(ev) = stream.message().await? {
        for t in &ev.task_runs {
            if let Some(r) = &t.result {
                assert!(
                    uri_path(&r.uri).exists(),
                    "result {} missing while the run lives",
                    r.uri
                );
                seen += 1;
            }
        }
        if ev.run.as_ref().is_some_and(baton_client::is_finished) {
            break;
        }
    }
    assert!(seen > 0, "no completed task runs were observed");
    let done = client.get_run(&run.id).await?;
    cluster.assert_completed(&done);
    let trs = client.task_runs(&run.id, true).await?;

    let rows = generate_points(seed, 100, 1);
    let (train, test) = split_rows(&rows, 0.25, 23);
    let alphas = [1.0, 0.1, 0.01, 0.001, 0.0001, 0.00001];
    let evals: Vec<&pb::TaskRun> = trs.iter().filter(|t| t.task == "evaluate").collect();
    assert_eq!(evals.len(), 6);
    for (i, t) in evals.iter().enumerate() {
        assert_eq!(t.map_index, i as i64);
        let v: serde_json::Value = serde_json::from_str(&t.value)?;
        let r2 = v["r2"].as_f64().expect("r2 is a number");
        let expect = ridge_r2_f64(&train, &test, alphas[i]);
        assert!(
            (r2 - expect).abs() < 1e-6,
            "alpha {}: r2 {r2} != {expect}",
            alphas[i]
        );
        assert_eq!(v["alpha"].as_f64(), Some(alphas[i]));
    }
    // Train tasks ran on the trainer worker only.
    for t in trs.iter().filter(|t| t.task == "train") {
        assert_eq!(t.worker, "w-trainer");
    }
    // Every task run completed once with its result object present.
    for t in &trs {
        assert_eq!(t.state, pb::TaskState::Completed as i32, "{t:?}");
        assert_eq!(t.attempt, 1);
        let r = t.result.as_ref().expect("result ref");
        assert!(uri_path(&r.uri).exists(), "{} missing", r.uri);
        let data = client.get_result(&r.uri).await?;
        assert_eq!(data.data.len() as u64, r.size);
    }
    // Cleanup removed the dataset, the splits and the models.
    let cleaned: Vec<&pb::TaskRun> = trs.iter().filter(|t| t.task == "cleanup").collect();
    assert_eq!(cleaned.len(), 1 + 2 + 6);
    let mut artifacts = Vec::new();
    for name in ["dataset", "split", "train"] {
        for t in trs.iter().filter(|t| t.task == name) {
            let v: serde_json::Value = serde_json::from_str(&t.value)?;
            match v {
                serde_json::Value::String(s) => artifacts.push(s),
                serde_json::Value::Array(a) => {
                    artifacts.extend(a.into_iter().filter_map(|x| x.as_str().map(String::from)))
                }
                other => panic!("unexpected artifact value {other}"),
            }
        }
    }
    assert_eq!(artifacts.len(), 9);
    for a in &artifacts {
        assert!(!uri_path(a).exists(), "artifact {a} was not cleaned up");
    }
    // Cleanup ran only after every evaluation.
    let last_eval = evals.iter().map(|t| t.ended_ms).max().unwrap_or(0);
    for t in &cleaned {
        assert!(
            t.started_ms >= last_eval,
            "cleanup started before evaluation ended"
        );
    }
    drop(cluster.workers.drain(..));
    Ok(())
}
