//! Tests of the built-ins through [`run_builtin`] with a local result store.

use super::*;
use crate::task::TaskContext;
use baton_common::ids::{AttemptKey, UNMAPPED};
use baton_common::result_store::{LocalStore, ResultStore};
use serde_json::{json, Value};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<LocalStore>,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(LocalStore::new(dir.path()).unwrap());
        Fixture { _dir: dir, store }
    }

    fn ctx(&self, task: &str, attempt: u32) -> TaskContext {
        let key = AttemptKey {
            run: "run1".into(),
            task: task.into(),
            map_index: UNMAPPED,
            attempt,
        };
        let (tx, _rx) = mpsc::unbounded_channel();
        TaskContext::new(key, self.store.clone(), 0, CancellationToken::new(), tx)
    }

    async fn run(&self, function: &str, inputs: Value) -> TaskResult {
        run_builtin(function, inputs, &self.ctx(function, 1)).await
    }
}

fn fatal_containing(r: TaskResult, parts: &[&str]) -> String {
    let e = r.expect_err("expected an error");
    assert!(!e.retryable, "expected a fatal error: {e:?}");
    for p in parts {
        assert!(e.message.contains(p), "`{}` lacks `{p}`", e.message);
    }
    e.message
}

#[tokio::test]
async fn basic_builtins() {
    let f = Fixture::new();
    assert_eq!(f.run("noop", json!({"x": 1})).await, Ok(Value::Null));
    assert_eq!(
        f.run("echo", json!({"value": [1, "a"]})).await,
        Ok(json!([1, "a"]))
    );
    assert_eq!(f.run("echo", json!({})).await, Ok(Value::Null));
    assert_eq!(
        f.run("range", json!({"n": 4})).await,
        Ok(json!([0, 1, 2, 3]))
    );
    assert_eq!(f.run("range", json!({"n": 2.0})).await, Ok(json!([0, 1])));
    assert_eq!(
        f.run("sum", json!({"values": [1, 2.5, -1]})).await,
        Ok(json!(2.5))
    );
    assert_eq!(f.run("sum", json!({"values": []})).await, Ok(json!(0.0)));
    assert_eq!(
        f.run("sleep", json!({"ms": 1, "value": "done"})).await,
        Ok(json!("done"))
    );
    fatal_containing(
        f.run("frobnicate", json!({})).await,
        &["unknown built-in function `frobnicate`"],
    );
    fatal_containing(
        f.run("range", json!({"n": -1})).await,
        &["range", "`n`", "non-negative"],
    );
    fatal_containing(f.run("range", json!({"n": 1.5})).await, &["range", "`n`"]);
    fatal_containing(
        f.run("range", json!({})).await,
        &["range", "`n`", "required"],
    );
    fatal_containing(
        f.run("sum", json!({"values": [1, "2"]})).await,
        &["sum", "`values`", "item 1 is a string"],
    );
    fatal_containing(
        f.run("sum", json!({"values": 3})).await,
        &["sum", "`values`", "a list"],
    );
    fatal_containing(
        f.run("echo", json!([1])).await,
        &["echo", "inputs must be an object"],
    );
    fatal_containing(
        f.run("sleep", json!({"ms": "5"})).await,
        &["sleep", "`ms`", "a number, got a string"],
    );
    fatal_containing(f.run("sleep", json!({"ms": -5})).await, &["sleep", "`ms`"]);
}

#[tokio::test]
async fn sleep_is_cancellable() {
    let f = Fixture::new();
    let ctx = f.ctx("sleep", 1);
    let cancel = ctx.cancel.clone();
    let started = std::time::Instant::now();
    let task = tokio::spawn(async move { run_builtin("sleep", json!({"ms": 60_000}), &ctx).await });
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    cancel.cancel();
    let r = task.await.unwrap();
    assert_eq!(r, Err(TaskError::fatal("cancelled")));
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

#[tokio::test]
async fn fail_and_succeed_from_attempt() {
    let f = Fixture::new();
    let e = f.run("fail", json!({})).await.unwrap_err();
    assert_eq!(e, TaskError::retryable("failed on purpose"));
    let e = f
        .run("fail", json!({"message": "boom", "retryable": false}))
        .await
        .unwrap_err();
    assert_eq!(e, TaskError::fatal("boom"));
    let inputs = json!({"succeed_from_attempt": 3});
    assert!(run_builtin("fail", inputs.clone(), &f.ctx("fail", 2))
        .await
        .is_err());
    assert_eq!(
        run_builtin("fail", inputs, &f.ctx("fail", 3)).await,
        Ok(json!(3))
    );
    fatal_containing(
        f.run("fail", json!({"retryable": "no"})).await,
        &["fail", "`retryable`", "a boolean"],
    );
    fatal_containing(
        f.run("fail", json!({"message": 5})).await,
        &["fail", "`message`", "a string"],
    );
}

#[tokio::test]
async fn full_ml_chain_through_a_local_store() {
    let f = Fixture::new();
    let ctx = |t| f.ctx(t, 1);
    let dataset = run_builtin(
        "generate_dataset",
        json!({"seed": 42.0, "n": 100, "features": 2}),
        &ctx("gen"),
    )
    .await
    .unwrap();
    let dataset_uri = dataset.as_str().unwrap().to_string();
    assert!(
        dataset_uri.ends_with("artifacts/run1/gen/attempt-1/dataset.csv"),
        "{dataset_uri}"
    );
    let text = String::from_utf8(f.store.get(&dataset_uri).await.unwrap()).unwrap();
    assert_eq!(parse_csv(&text).unwrap(), generate_points(42, 100, 2));

    let split = run_builtin(
        "train_test_split",
        json!({"dataset": dataset_uri}),
        &ctx("split"),
    )
    .await
    .unwrap();
    let [train_uri, test_uri] = [split[0].as_str().unwrap(), split[1].as_str().unwrap()];
    let read = |uri: String| {
        let store = f.store.clone();
        async move { parse_csv(&String::from_utf8(store.get(&uri).await.unwrap()).unwrap()).unwrap() }
    };
    let train = read(train_uri.to_string()).await;
    let test = read(test_uri.to_string()).await;
    assert_eq!((train.len(), test.len()), (75, 25));
    assert_eq!(
        (train.clone(), test.clone()),
        split_rows(&generate_points(42, 100, 2), 0.25, 23)
    );

    let model = run_builtin(
        "train_ridge",
        json!({"train": train_uri, "alpha": 0.5}),
        &ctx("train"),
    )
    .await
    .unwrap();
    let model_uri = model.as_str().unwrap().to_string();
    let stored: Model = serde_json::from_slice(&f.store.get(&model_uri).await.unwrap()).unwrap();
    assert_eq!(
        stored,
        fit_ridge(&train, 0.5, &candle_core::Device::Cpu).unwrap()
    );
    let raw: Value = serde_json::from_slice(&f.store.get(&model_uri).await.unwrap()).unwrap();
    for k in ["alpha", "weights", "intercept", "features"] {
        assert!(raw.get(k).is_some(), "model.json lacks {k}: {raw}");
    }
    assert_eq!(raw["features"], json!(2));

    let eval = run_builtin(
        "evaluate",
        json!({"model": model_uri, "test": test_uri}),
        &ctx("eval"),
    )
    .await
    .unwrap();
    assert_eq!(eval["alpha"], json!(0.5));
    assert!(eval.get("model").is_none());
    let score = eval["r2"].as_f64().unwrap();
    assert!((score - r2(&stored, &test)).abs() < 1e-12);
    assert!(score > 0.5 && score < 1.0, "{score}");

    let all = json!([dataset_uri, split, model_uri]);
    let deleted = run_builtin("cleanup", json!({"location": all}), &ctx("cleanup"))
        .await
        .unwrap();
    assert_eq!(deleted.as_array().unwrap().len(), 4);
    for uri in [&dataset_uri, train_uri, test_uri, &model_uri] {
        assert!(!f.store.exists(uri).await.unwrap(), "{uri} still exists");
    }
    let one = run_builtin("cleanup", json!({"location": dataset_uri}), &ctx("cleanup"))
        .await
        .unwrap();
    assert_eq!(one, json!([dataset_uri]));
}

#[tokio::test]
async fn ml_bad_inputs_are_fatal_and_name_the_input() {
    let f = Fixture::new();
    let dataset = f.run("generate_dataset", json!({"seed": 1})).await.unwrap();
    fatal_containing(
        f.run("train_ridge", json!({"train": dataset, "alpha": "1"}))
            .await,
        &["train_ridge: input `alpha` must be a number, got a string"],
    );
    fatal_containing(
        f.run("train_ridge", json!({"train": dataset})).await,
        &["train_ridge", "`alpha`", "required"],
    );
    fatal_containing(
        f.run("train_ridge", json!({"train": dataset, "alpha": -1}))
            .await,
        &["`alpha`", ">= 0"],
    );
    fatal_containing(
        f.run("train_ridge", json!({"train": 3, "alpha": 1})).await,
        &["train_ridge", "`train`", "location"],
    );
    fatal_containing(
        f.run("train_test_split", json!({})).await,
        &["train_test_split", "`dataset`", "required"],
    );
    let missing = format!("{}/nope.csv", f.store.root_uri());
    fatal_containing(
        f.run("train_test_split", json!({"dataset": missing})).await,
        &["train_test_split", "`dataset`", "not found"],
    );
    fatal_containing(
        f.run(
            "train_test_split",
            json!({"dataset": "file:///etc/hostname"}),
        )
        .await,
        &["train_test_split", "`dataset`", "outside this store"],
    );
    fatal_containing(
        f.run(
            "train_test_split",
            json!({"dataset": dataset, "test_fraction": 1.5}),
        )
        .await,
        &["`test_fraction`", "between 0 and 1"],
    );
    fatal_containing(
        f.run("generate_dataset", json!({})).await,
        &["generate_dataset", "`seed`", "required"],
    );
    fatal_containing(
        f.run("generate_dataset", json!({"seed": 1.5})).await,
        &["generate_dataset", "`seed`"],
    );
    fatal_containing(
        f.run("generate_dataset", json!({"seed": -3})).await,
        &["generate_dataset", "`seed`"],
    );
    fatal_containing(
        f.run("generate_dataset", json!({"seed": "1"})).await,
        &["`seed`", "got a string"],
    );
    fatal_containing(
        f.run("generate_dataset", json!({"seed": 1, "features": 0}))
            .await,
        &["`features`"],
    );
    fatal_containing(
        f.run("evaluate", json!({"model": dataset, "test": dataset}))
            .await,
        &["evaluate", "`model`", "not a model"],
    );
    fatal_containing(
        f.run("cleanup", json!({"location": [dataset, 5]})).await,
        &["cleanup", "`location`"],
    );
    fatal_containing(
        f.run("cleanup", json!({"location": "file:///etc/hostname"}))
            .await,
        &["cleanup", "`location`", "outside"],
    );
    fatal_containing(
        f.run("cleanup", json!({})).await,
        &["cleanup", "`location`", "required"],
    );
    // Nothing was deleted by the refused cleanup.
    assert!(f.store.exists(dataset.as_str().unwrap()).await.unwrap());

    // A model with the wrong width for the test set, and an unfittable training set.
    let one = run_builtin(
        "generate_dataset",
        json!({"seed": 2, "n": 10, "features": 2}),
        &f.ctx("gen2", 1),
    )
    .await;
    let ctx = f.ctx("train", 1);
    let model = run_builtin(
        "train_ridge",
        json!({"train": one.unwrap(), "alpha": 1}),
        &ctx,
    )
    .await
    .unwrap();
    fatal_containing(
        run_builtin(
            "evaluate",
            json!({"model": model, "test": dataset}),
            &f.ctx("eval", 1),
        )
        .await,
        &["evaluate", "`test`", "columns"],
    );
    let empty = f
        .store
        .put("empty.csv", Default::default(), "text/csv")
        .await
        .unwrap()
        .uri;
    fatal_containing(
        run_builtin(
            "train_ridge",
            json!({"train": empty, "alpha": 1}),
            &f.ctx("train", 2),
        )
        .await,
        &["train_ridge", "`train`", "no rows"],
    );
}

#[tokio::test]
async fn ridge_benchmark_fits_generated_data_and_reports_its_times() {
    let f = Fixture::new();
    for dtype in ["f64", "f32"] {
        let r = f
            .run(
                "ridge_benchmark",
                json!({"n": 4000, "features": 6, "alpha": 0.0, "dtype": dtype}),
            )
            .await
            .expect("the benchmark runs");
        assert_eq!(r["device"], "cpu");
        assert_eq!(r["n"], 4000);
        assert_eq!(r["features"], 6);
        assert_eq!(r["dtype"], dtype);
        assert!(r["generate_s"].as_f64().is_some_and(|s| s >= 0.0), "{r}");
        assert!(r["fit_s"].as_f64().is_some_and(|s| s >= 0.0), "{r}");
        // 4,000 rows with noise 0.1: the weights come back within a few hundredths.
        let error = r["max_weight_error"].as_f64().expect("a number");
        assert!(error < 0.02, "{r}");
    }
    fatal_containing(
        f.run("ridge_benchmark", json!({"n": 1 << 28, "features": 8}))
            .await,
        &["ridge_benchmark", "`n`", "at most"],
    );
    fatal_containing(
        f.run("ridge_benchmark", json!({"n": 10, "dtype": "f16"}))
            .await,
        &["`dtype`"],
    );
    fatal_containing(
        f.run("ridge_benchmark", json!({"n": 10, "device": "tpu"}))
            .await,
        &["`device`"],
    );
}

#[test]
fn the_tensor_score_used_on_gpus_matches_the_exact_one() {
    // The tensor path of `r2_on` (used on GPUs) computed on the CPU device agrees with `r2`.
    let rows = generate_points(9, 500, 3);
    let model = fit_ridge(&rows, 0.5, &candle_core::Device::Cpu).unwrap();
    let exact = r2(&model, &rows);
    let data: Vec<f64> = rows.iter().flatten().copied().collect();
    let tensor =
        candle_core::Tensor::from_vec(data, (rows.len(), 4), &candle_core::Device::Cpu).unwrap();
    let again = fit_tensor(&tensor, 0.5).unwrap();
    assert_eq!(
        again, model,
        "the same data as a tensor fits the same model"
    );
    assert_eq!(
        r2_on(&model, &rows, &candle_core::Device::Cpu).unwrap(),
        exact
    );
    let tensor_score = r2_tensor(&model, &rows, &candle_core::Device::Cpu).unwrap();
    assert!(
        (tensor_score - exact).abs() <= GPU_TOLERANCE * exact.abs(),
        "{tensor_score} vs {exact}"
    );
    assert!(exact > 0.0 && exact < 1.0, "{exact}");
}

#[test]
fn every_instant_built_in_runs_at_once() {
    for f in baton_common::flow::INSTANT_BUILTINS {
        assert!(baton_common::flow::BUILTINS.contains(f), "{f}");
        let inputs = serde_json::json!({"value": 1, "values": [1, 2]});
        let r = super::run_instant(f, inputs).unwrap_or_else(|| panic!("{f} is not run"));
        assert!(r.is_ok(), "{f}: {r:?}");
    }
    assert!(super::run_instant("sleep", serde_json::json!({})).is_none());
}
