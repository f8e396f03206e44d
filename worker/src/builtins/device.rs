//! Where a built-in computes: on the attempt's first pinned GPU when the worker is built with
//! `cuda` (one CUDA device per ordinal, opened once and shared), else on the CPU.

use crate::task::{TaskContext, TaskError};
use candle_core::Device;

/// The device for `ctx`'s attempt, and how to name it in logs and results (`cuda:N` by the
/// GPU's host index, or `cpu`).
pub fn for_attempt(function: &str, ctx: &TaskContext) -> Result<(Device, String), TaskError> {
    let Some(gpu) = ctx.grant.pinned.iter().find(|g| !g.simulated) else {
        return Ok((Device::Cpu, "cpu".into()));
    };
    open(function, gpu)
}

#[cfg(feature = "cuda")]
fn open(function: &str, gpu: &crate::gpu::Gpu) -> Result<(Device, String), TaskError> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static OPEN: OnceLock<Mutex<HashMap<u32, Device>>> = OnceLock::new();
    let mut open = OPEN
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let device = match open.get(&gpu.ordinal) {
        Some(d) => d.clone(),
        None => {
            let d = Device::new_cuda(gpu.ordinal as usize).map_err(|e| {
                TaskError::retryable(format!(
                    "{function}: cannot use GPU {} ({}): {e}",
                    gpu.index, gpu.uuid
                ))
            })?;
            open.insert(gpu.ordinal, d.clone());
            d
        }
    };
    Ok((device, format!("cuda:{}", gpu.index)))
}

#[cfg(not(feature = "cuda"))]
fn open(function: &str, gpu: &crate::gpu::Gpu) -> Result<(Device, String), TaskError> {
    use std::sync::Once;
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        tracing::warn!(
            function,
            gpu = gpu.index,
            "this worker was built without the `cuda` feature: built-ins run on the CPU"
        )
    });
    Ok((Device::Cpu, "cpu".into()))
}
