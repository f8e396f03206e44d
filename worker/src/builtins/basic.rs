//! Small built-ins for flows and tests: `echo`, `sleep`, `fail`, `range` and `sum`.

use super::inputs::Inputs;
use crate::task::{TaskContext, TaskError, TaskResult};
use serde_json::Value;
use std::time::Duration;

/// The largest list `range` builds.
const MAX_RANGE: usize = 10_000_000;

/// `echo`: returns input `value` (null if absent).
pub(super) fn echo(inputs: Value) -> TaskResult {
    Ok(Inputs::new("echo", inputs)?.take("value"))
}

/// `sleep`: sleeps input `ms` milliseconds, cancellably, then returns input `value`.
pub(super) async fn sleep(inputs: Value, ctx: &TaskContext) -> TaskResult {
    let mut inputs = Inputs::new("sleep", inputs)?;
    let ms = inputs.f64("ms")?;
    if ms < 0.0 {
        return Err(inputs.error("ms", format!("must not be negative, got {ms}")));
    }
    let duration = Duration::try_from_secs_f64(ms / 1000.0)
        .map_err(|_| inputs.error("ms", format!("is too large: {ms}")))?;
    tokio::select! {
        biased;
        _ = ctx.cancel.cancelled() => Err(TaskError::fatal("cancelled")),
        _ = tokio::time::sleep(duration) => Ok(inputs.take("value")),
    }
}

/// `fail`: fails with input `message`, retryable unless `retryable` is false; succeeds with
/// the attempt number from attempt `succeed_from_attempt` on.
pub(super) fn fail(inputs: Value, ctx: &TaskContext) -> TaskResult {
    let inputs = Inputs::new("fail", inputs)?;
    let message = inputs.opt_str("message")?.unwrap_or("failed on purpose");
    let retryable = inputs.opt_bool("retryable")?.unwrap_or(true);
    if let Some(from) = inputs.opt_u64("succeed_from_attempt")? {
        if u64::from(ctx.key.attempt) >= from {
            return Ok(Value::from(ctx.key.attempt));
        }
    }
    Err(TaskError {
        message: message.to_string(),
        retryable,
    })
}

/// `range`: the list `[0, n)`.
pub(super) fn range(inputs: Value) -> TaskResult {
    let inputs = Inputs::new("range", inputs)?;
    let n = inputs.usize("n", MAX_RANGE)?;
    Ok(Value::Array((0..n as u64).map(Value::from).collect()))
}

/// `sum`: the sum of the numbers in input `values`, as a float.
pub(super) fn sum(inputs: Value) -> TaskResult {
    let inputs = Inputs::new("sum", inputs)?;
    let values = inputs
        .opt_list("values")?
        .ok_or_else(|| inputs.error("values", "is required (a list of numbers)"))?;
    let mut total = 0.0_f64;
    for (i, v) in values.iter().enumerate() {
        match v.as_f64() {
            Some(x) => total += x,
            None => {
                return Err(inputs.error(
                    "values",
                    format!(
                        "must be a list of numbers, but item {i} is {}",
                        super::inputs::kind_of(v)
                    ),
                ))
            }
        }
    }
    if !total.is_finite() {
        return Err(inputs.error("values", "sums to a number too large to represent"));
    }
    Ok(Value::from(total))
}
