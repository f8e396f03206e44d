//! A worker's GPUs and which attempt holds each: every attempt that asks for GPUs is pinned
//! to specific devices, never shared with another attempt until its worker reports it ended
//! (which a worker does only once the attempt's processes are gone).

use super::super::model::TrRef;

/// An attempt: a task run and its attempt number.
pub(in crate::engine) type AttemptRef = (TrRef, u32);

/// One GPU of a worker, as it registered it (memory 0: unknown, meeting no
/// `gpu_memory_mb` requirement).
pub use baton_proto::GpuDevice as Gpu;

/// A device known only by its index.
pub fn anonymous(index: u32) -> Gpu {
    Gpu {
        index,
        ..Default::default()
    }
}

/// Whether `d` has at least `memory_mb` (0: any device).
fn meets(d: &Gpu, memory_mb: u64) -> bool {
    memory_mb == 0 || d.memory_mb >= memory_mb
}

/// A worker's GPUs and their holders.
#[derive(Clone, Debug, Default)]
pub(in crate::engine) struct Gpus {
    devices: Vec<Gpu>,
    holders: Vec<Option<AttemptRef>>,
}

impl Gpus {
    /// The devices a worker registered, completed with anonymous ones up to `count` (a
    /// worker that gave a number of GPUs but not the devices).
    pub fn new(mut devices: Vec<Gpu>, count: u32) -> Self {
        let mut next = 0;
        while devices.len() < count as usize {
            while devices.iter().any(|d| d.index == next) {
                next += 1;
            }
            devices.push(anonymous(next));
        }
        devices.sort_by_key(|d| d.index);
        let holders = vec![None; devices.len()];
        Gpus { devices, holders }
    }

    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn devices(&self) -> &[Gpu] {
        &self.devices
    }

    /// The device with host index `index`.
    pub fn device(&self, index: u32) -> Option<&Gpu> {
        self.devices.iter().find(|d| d.index == index)
    }

    /// Devices with at least `memory_mb` (0: any), held or not.
    pub fn fitting(&self, memory_mb: u64) -> usize {
        self.devices.iter().filter(|d| meets(d, memory_mb)).count()
    }

    /// Devices with at least `memory_mb` (0: any) that no attempt holds.
    pub fn free_fitting(&self, memory_mb: u64) -> usize {
        self.devices
            .iter()
            .zip(&self.holders)
            .filter(|(d, h)| h.is_none() && meets(d, memory_mb))
            .count()
    }

    /// Devices no attempt holds.
    pub fn free(&self) -> impl Iterator<Item = &Gpu> {
        self.devices
            .iter()
            .zip(&self.holders)
            .filter(|(_, h)| h.is_none())
            .map(|(d, _)| d)
    }

    /// Pins `n` free devices with at least `memory_mb` each to `key`: the smallest that
    /// suffice (keeping large ones for tasks that need them), then the lowest indices.
    /// `prefer` are indices to take first when free and fitting (the devices an adopted
    /// attempt already holds). None, and nothing pinned, when there are not enough.
    pub fn pin(
        &mut self,
        key: AttemptRef,
        n: u32,
        memory_mb: u64,
        prefer: &[u32],
    ) -> Option<Vec<u32>> {
        let n = n as usize;
        if n == 0 {
            return Some(Vec::new());
        }
        let mut candidates: Vec<usize> = (0..self.devices.len())
            .filter(|&i| self.holders[i].is_none() && meets(&self.devices[i], memory_mb))
            .collect();
        if candidates.len() < n {
            return None;
        }
        candidates.sort_by_key(|&i| {
            let d = &self.devices[i];
            (!prefer.contains(&d.index), d.memory_mb, d.index)
        });
        let mut pinned: Vec<u32> = candidates[..n]
            .iter()
            .map(|&i| {
                self.holders[i] = Some(key);
                self.devices[i].index
            })
            .collect();
        pinned.sort_unstable();
        Some(pinned)
    }

    /// Frees the devices `key` holds.
    pub fn unpin(&mut self, key: AttemptRef) {
        for h in &mut self.holders {
            if *h == Some(key) {
                *h = None;
            }
        }
    }

    /// Every holding attempt with its devices, in device order of first device.
    pub fn holdings(&self) -> Vec<(AttemptRef, Vec<u32>)> {
        let mut out: Vec<(AttemptRef, Vec<u32>)> = Vec::new();
        for (d, h) in self.devices.iter().zip(&self.holders) {
            let Some(key) = h else { continue };
            match out.iter_mut().find(|(k, _)| k == key) {
                Some((_, v)) => v.push(d.index),
                None => out.push((*key, vec![d.index])),
            }
        }
        out
    }
}
