//! `ridge_benchmark`: a ridge fit large enough for a GPU to matter, on data generated on the
//! attempt's device (its first pinned GPU, else the CPU), timed. Inputs: `n` rows (default
//! 1,000,000), `features` (default 256), `alpha` (default 1.0), `dtype` (`f64`, the default,
//! or `f32` for the generated data; sums are taken in f64) and `device` (`auto`, the default,
//! or `cpu` to stay off the GPU). Returns the device, the shape, the seconds to generate and to
//! fit, and the largest error of a fitted weight against the true one.

use super::inputs::Inputs;
use super::{blocking, device, ridge};
use crate::task::{TaskContext, TaskError, TaskResult};
use candle_core::{DType, Device, Tensor};
use serde_json::json;
use std::time::Instant;

/// The most values (`n × (features + 1)`) the benchmark generates: 2 GiB of f64 (the fit
/// makes a few copies of it; the default 1,000,000 × 256 is just under).
const MAX_VALUES: usize = 1 << 28;
const MAX_FEATURES: usize = 4096;

pub(super) async fn ridge_benchmark(inputs: serde_json::Value, ctx: &TaskContext) -> TaskResult {
    const F: &str = "ridge_benchmark";
    let inputs = Inputs::new(F, inputs)?;
    let n = inputs.opt_usize("n", MAX_VALUES)?.unwrap_or(1_000_000);
    let k = inputs.opt_usize("features", MAX_FEATURES)?.unwrap_or(256);
    if n < 2 || k == 0 {
        return Err(inputs.error("n", "needs n >= 2 rows and features >= 1"));
    }
    if n.saturating_mul(k + 1) > MAX_VALUES {
        return Err(inputs.error(
            "n",
            format!("times (`features` + 1) must be at most {MAX_VALUES}"),
        ));
    }
    let alpha = inputs.opt_f64("alpha")?.unwrap_or(1.0);
    if !(alpha.is_finite() && alpha >= 0.0) {
        return Err(inputs.error("alpha", "must be a finite number >= 0"));
    }
    let dtype = match inputs.opt_str("dtype")? {
        None | Some("f64") => DType::F64,
        Some("f32") => DType::F32,
        Some(_) => return Err(inputs.error("dtype", "must be `f64` or `f32`")),
    };
    let (device, on) = match inputs.opt_str("device")? {
        None | Some("auto") => device::for_attempt(F, ctx)?,
        Some("cpu") => (Device::Cpu, "cpu".to_string()),
        Some(_) => return Err(inputs.error("device", "must be `auto` or `cpu`")),
    };
    let result = blocking(F, move || {
        run(n, k, alpha, dtype, &device)
            .map_err(|e| TaskError::retryable(format!("{F}: the computation on {on} failed: {e}")))
            .map(|(generate_s, fit_s, weight_error)| {
                json!({
                    "device": on,
                    "n": n,
                    "features": k,
                    "dtype": format!("{dtype:?}").to_lowercase(),
                    "generate_s": generate_s,
                    "fit_s": fit_s,
                    "max_weight_error": weight_error,
                })
            })
    })
    .await?;
    ctx.log("log", format!("ridge_benchmark: {result}"));
    Ok(result)
}

/// Generates `y = X·w + 3 + noise` with known weights, fits, and times both.
fn run(
    n: usize,
    k: usize,
    alpha: f64,
    dtype: DType,
    device: &Device,
) -> Result<(f64, f64, f64), String> {
    let t = Instant::now();
    let truth: Vec<f64> = (0..k).map(|j| ((j % 7) as f64 - 3.0) * 0.5).collect();
    let data = (|| -> candle_core::Result<Tensor> {
        let x = Tensor::randn(0f64, 1.0, (n, k), device)?.to_dtype(dtype)?;
        let w = Tensor::from_vec(truth.clone(), (k, 1), device)?.to_dtype(dtype)?;
        let noise = (Tensor::randn(0f64, 1.0, (n, 1), device)?.to_dtype(dtype)? * 0.1)?;
        let y = ((x.matmul(&w)? + noise)? + 3.0)?;
        let data = Tensor::cat(&[&x, &y], 1)?;
        device.synchronize()?;
        Ok(data)
    })()
    .map_err(|e| e.to_string())?;
    let generate_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let model = ridge::fit_tensor(&data, alpha)?;
    let fit_s = t.elapsed().as_secs_f64();
    let error = model
        .weights
        .iter()
        .zip(&truth)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    Ok((generate_s, fit_s, error))
}
