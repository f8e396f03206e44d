//! The worker's built-in task library: [`run_builtin`] dispatches a built-in function by name.
//!
//! The names are those of [`baton_common::flow::BUILTINS`]. Inputs are a JSON object of named
//! inputs; a type error in them is a fatal [`TaskError`] naming the function and the input.
//! The data generation, split and ridge fit are also plain functions here, for tests elsewhere.

mod basic;
mod bench;
mod dataset;
mod device;
mod inputs;
mod ml;
mod ridge;
#[cfg(test)]
mod tests;

pub use dataset::{generate_points, parse_csv, split_rows, test_count, to_csv};
pub use ridge::{fit_ridge, fit_tensor, r2, r2_on, r2_tensor, Model, GPU_TOLERANCE};

use crate::task::{TaskContext, TaskError, TaskResult};
use baton_common::Error as StoreError;

/// Runs the built-in `function` on `inputs` (a JSON object of named inputs).
pub async fn run_builtin(
    function: &str,
    inputs: serde_json::Value,
    ctx: &TaskContext,
) -> TaskResult {
    match function {
        // Kept first and allocation-free: benchmarks run very many of them.
        "noop" => Ok(serde_json::Value::Null),
        "echo" => basic::echo(inputs),
        "sleep" => basic::sleep(inputs, ctx).await,
        "fail" => basic::fail(inputs, ctx),
        "range" => basic::range(inputs),
        "sum" => basic::sum(inputs),
        "generate_dataset" => ml::generate_dataset(inputs, ctx).await,
        "train_test_split" => ml::train_test_split(inputs, ctx).await,
        "train_ridge" => ml::train_ridge(inputs, ctx).await,
        "evaluate" => ml::evaluate(inputs, ctx).await,
        "cleanup" => ml::cleanup(inputs, ctx).await,
        "read_csv" => ml::read_csv(inputs, ctx).await,
        "ridge_benchmark" => bench::ridge_benchmark(inputs, ctx).await,
        other => Err(TaskError::fatal(format!(
            "unknown built-in function `{other}`"
        ))),
    }
}

/// Runs an instant built-in ([`baton_common::flow::INSTANT_BUILTINS`]) at once; `None` for
/// any other function.
pub fn run_instant(function: &str, inputs: serde_json::Value) -> Option<TaskResult> {
    match function {
        "noop" => Some(Ok(serde_json::Value::Null)),
        "echo" => Some(basic::echo(inputs)),
        "sum" => Some(basic::sum(inputs)),
        _ => None,
    }
}

/// Maps a store error to a task error: a bad or missing location is fatal, I/O may be retried.
fn store_error(what: &str, e: StoreError) -> TaskError {
    let message = format!("{what}: {e}");
    match e {
        StoreError::InvalidArgument(_)
        | StoreError::NotFound(_)
        | StoreError::InvalidFlow(_)
        | StoreError::TooLarge { .. } => TaskError::fatal(message),
        StoreError::AlreadyExists(_) | StoreError::Io { .. } => TaskError::retryable(message),
    }
}

/// Runs CPU-heavy work on the blocking pool; a panic there is a retryable failure.
async fn blocking<T, F>(function: &str, work: F) -> Result<T, TaskError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, TaskError> + Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(r) => r,
        Err(e) => Err(TaskError::retryable(format!(
            "{function}: the computation did not finish: {e}"
        ))),
    }
}
