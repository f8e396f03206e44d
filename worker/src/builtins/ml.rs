//! The machine-learning built-ins: `generate_dataset`, `train_test_split`, `train_ridge`,
//! `evaluate`, `cleanup` and `read_csv`, passing CSV and JSON artifacts through the result
//! store.

use super::inputs::Inputs;
use super::{blocking, dataset, device, ridge, store_error};
use crate::task::{TaskContext, TaskError, TaskResult};
use serde_json::{json, Value};

/// The most points `generate_dataset` makes.
const MAX_POINTS: usize = 10_000_000;
/// The most features `generate_dataset` makes.
const MAX_FEATURES: usize = 1_000;
/// The most numbers `generate_dataset` writes.
const MAX_VALUES: usize = 50_000_000;

/// Writes artifact `name` of this attempt and returns its URI.
async fn put_artifact(
    function: &str,
    ctx: &TaskContext,
    name: &str,
    data: Vec<u8>,
    content_type: &str,
) -> Result<String, TaskError> {
    let r = ctx
        .store
        .put(&ctx.artifact_key(name), data.into(), content_type)
        .await
        .map_err(|e| store_error(&format!("{function}: cannot write artifact `{name}`"), e))?;
    Ok(r.uri)
}

/// Reads the object at location input `name` as UTF-8 text.
async fn read_text(
    function: &str,
    ctx: &TaskContext,
    name: &str,
    uri: &str,
) -> Result<String, TaskError> {
    let bytes = ctx.store.get(uri).await.map_err(|e| {
        store_error(
            &format!("{function}: input `{name}`: cannot read `{uri}`"),
            e,
        )
    })?;
    String::from_utf8(bytes).map_err(|_| {
        TaskError::fatal(format!(
            "{function}: input `{name}`: `{uri}` is not UTF-8 text"
        ))
    })
}

/// Parses the CSV read from location input `name`.
fn parse_rows(
    function: &str,
    name: &str,
    uri: &str,
    text: &str,
) -> Result<Vec<Vec<f64>>, TaskError> {
    dataset::parse_csv(text).map_err(|e| {
        TaskError::fatal(format!(
            "{function}: input `{name}`: `{uri}` is not a numeric CSV: {e}"
        ))
    })
}

/// `generate_dataset`: writes `dataset.csv` of seeded points; returns its URI.
pub(super) async fn generate_dataset(inputs: Value, ctx: &TaskContext) -> TaskResult {
    const F: &str = "generate_dataset";
    let inputs = Inputs::new(F, inputs)?;
    let seed = inputs
        .opt_u64("seed")?
        .ok_or_else(|| inputs.error("seed", "is required (a non-negative integer)"))?;
    let n = inputs.opt_usize("n", MAX_POINTS)?.unwrap_or(100);
    let features = inputs.opt_usize("features", MAX_FEATURES)?.unwrap_or(1);
    if features == 0 {
        return Err(inputs.error("features", "must be at least 1, got 0"));
    }
    if n * (features + 1) > MAX_VALUES {
        return Err(inputs.error(
            "n",
            format!("times (`features` + 1) must be at most {MAX_VALUES}"),
        ));
    }
    let csv = blocking(F, move || {
        Ok(dataset::to_csv(&dataset::generate_points(seed, n, features)).into_bytes())
    })
    .await?;
    let uri = put_artifact(F, ctx, "dataset.csv", csv, "text/csv").await?;
    ctx.log(
        "log",
        format!("generated {n} points with {features} feature(s) from seed {seed}"),
    );
    Ok(Value::String(uri))
}

/// `train_test_split`: writes `train.csv` and `test.csv`; returns `[train_uri, test_uri]`.
pub(super) async fn train_test_split(inputs: Value, ctx: &TaskContext) -> TaskResult {
    const F: &str = "train_test_split";
    let inputs = Inputs::new(F, inputs)?;
    let uri = inputs.location("dataset")?;
    let fraction = inputs.opt_f64("test_fraction")?.unwrap_or(0.25);
    if !(0.0..=1.0).contains(&fraction) {
        return Err(inputs.error(
            "test_fraction",
            format!("must be between 0 and 1, got {fraction}"),
        ));
    }
    let seed = inputs.opt_u64("seed")?.unwrap_or(23);
    let text = read_text(F, ctx, "dataset", &uri).await?;
    let (train, test, counts) = blocking(F, move || {
        let rows = parse_rows(F, "dataset", &uri, &text)?;
        let (train, test) = dataset::split_rows(&rows, fraction, seed);
        let counts = (train.len(), test.len());
        Ok((
            dataset::to_csv(&train).into_bytes(),
            dataset::to_csv(&test).into_bytes(),
            counts,
        ))
    })
    .await?;
    // Both go up at once: one round trip to the store, not two.
    let (train_uri, test_uri) = futures::try_join!(
        put_artifact(F, ctx, "train.csv", train, "text/csv"),
        put_artifact(F, ctx, "test.csv", test, "text/csv"),
    )?;
    ctx.log(
        "log",
        format!("split into {} train and {} test rows", counts.0, counts.1),
    );
    Ok(json!([train_uri, test_uri]))
}

/// `train_ridge`: fits ridge regression on `train`; writes `model.json`, returns its URI.
pub(super) async fn train_ridge(inputs: Value, ctx: &TaskContext) -> TaskResult {
    const F: &str = "train_ridge";
    let inputs = Inputs::new(F, inputs)?;
    let uri = inputs.location("train")?;
    let alpha = inputs.f64("alpha")?;
    if alpha < 0.0 {
        return Err(inputs.error("alpha", format!("must be >= 0, got {alpha}")));
    }
    let text = read_text(F, ctx, "train", &uri).await?;
    let (device, on) = device::for_attempt(F, ctx)?;
    let bytes = blocking(F, move || {
        let rows = parse_rows(F, "train", &uri, &text)?;
        let model = ridge::fit_ridge(&rows, alpha, &device).map_err(|e| {
            TaskError::fatal(format!("{F}: cannot fit input `train` (`{uri}`): {e}"))
        })?;
        if !model.intercept.is_finite() || model.weights.iter().any(|w| !w.is_finite()) {
            return Err(TaskError::fatal(format!(
                "{F}: the fit on input `train` (`{uri}`) is not finite"
            )));
        }
        serde_json::to_vec(&model)
            .map_err(|e| TaskError::fatal(format!("{F}: cannot encode the model: {e}")))
    })
    .await?;
    let model_uri = put_artifact(F, ctx, "model.json", bytes, "application/json").await?;
    tracing::info!(alpha, model = %model_uri, device = %on, "trained a ridge model");
    Ok(Value::String(model_uri))
}

/// `read_csv`: the rows of the numeric CSV at `location` (a dataset or a split), as lists of
/// numbers, for tasks that take their data inline (a container that reads no store).
pub(super) async fn read_csv(inputs: Value, ctx: &TaskContext) -> TaskResult {
    const F: &str = "read_csv";
    let inputs = Inputs::new(F, inputs)?;
    let uri = inputs.location("location")?;
    let text = read_text(F, ctx, "location", &uri).await?;
    let rows = blocking(F, move || parse_rows(F, "location", &uri, &text)).await?;
    Ok(json!(rows))
}

/// `evaluate`: R² of `model` on `test`; returns `{"alpha", "r2"}`.
pub(super) async fn evaluate(inputs: Value, ctx: &TaskContext) -> TaskResult {
    const F: &str = "evaluate";
    let inputs = Inputs::new(F, inputs)?;
    let model_uri = inputs.location("model")?;
    let test_uri = inputs.location("test")?;
    let model_text = read_text(F, ctx, "model", &model_uri).await?;
    let test_text = read_text(F, ctx, "test", &test_uri).await?;
    let (device, on) = device::for_attempt(F, ctx)?;
    let logged = on.clone();
    let uri = model_uri;
    let (alpha, score) = blocking(F, move || {
        let model: ridge::Model = serde_json::from_str(&model_text).map_err(|e| {
            TaskError::fatal(format!("{F}: input `model`: `{uri}` is not a model: {e}"))
        })?;
        if model.weights.len() != model.features {
            return Err(TaskError::fatal(format!(
                "{F}: input `model`: `{uri}` has {} weights for {} features",
                model.weights.len(),
                model.features
            )));
        }
        let rows = parse_rows(F, "test", &test_uri, &test_text)?;
        if rows.is_empty() {
            return Err(TaskError::fatal(format!(
                "{F}: input `test`: `{test_uri}` has no rows"
            )));
        }
        let width = model.features + 1;
        if let Some(row) = rows.iter().find(|r| r.len() != width) {
            return Err(TaskError::fatal(format!(
                "{F}: input `test`: `{test_uri}` has {} columns, but the model needs {width}",
                row.len()
            )));
        }
        let score = ridge::r2_on(&model, &rows, &device)
            .map_err(|e| TaskError::retryable(format!("{F}: cannot score on {on}: {e}")))?;
        Ok((model.alpha, score))
    })
    .await?;
    tracing::info!(alpha, r2 = score, device = %logged, "scored a ridge model");
    Ok(json!({ "alpha": alpha, "r2": score }))
}

/// `cleanup`: deletes input `location` (a URI or a list of them); returns the deleted list.
pub(super) async fn cleanup(inputs: Value, ctx: &TaskContext) -> TaskResult {
    const F: &str = "cleanup";
    let inputs = Inputs::new(F, inputs)?;
    let Some(value) = inputs.get("location") else {
        return Err(inputs.error(
            "location",
            "is required (a location string or a list of them)",
        ));
    };
    let mut locations = Vec::new();
    collect_locations(&inputs, value, &mut locations)?;
    for uri in &locations {
        ctx.store.delete(uri).await.map_err(|e| {
            store_error(&format!("{F}: input `location`: cannot delete `{uri}`"), e)
        })?;
    }
    Ok(Value::Array(
        locations.into_iter().map(Value::String).collect(),
    ))
}

/// Flattens a location or a (nested) list of locations.
fn collect_locations(inputs: &Inputs, v: &Value, out: &mut Vec<String>) -> Result<(), TaskError> {
    match v {
        Value::Array(items) => {
            for item in items {
                collect_locations(inputs, item, out)?;
            }
            Ok(())
        }
        Value::Null => Ok(()),
        other => {
            out.push(inputs.location_value("location", other)?);
            Ok(())
        }
    }
}
