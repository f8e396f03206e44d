//! The worker's GPUs: discovered through NVML at start (loaded at run time: no driver or
//! library means no GPUs), or simulated for tests (`BATON_SIMULATED_GPUS`); the subset that
//! `--gpus` offers; and what an attempt pinned to some of them is told.

use std::fmt;
use std::str::FromStr;

/// Replaces NVML with simulated devices: a comma-separated list of memory sizes in MB, one
/// per device (`24576,24576` is two devices of 24 GiB). For tests and demonstrations.
pub const SIMULATED_ENV: &str = "BATON_SIMULATED_GPUS";

/// One GPU this worker offers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gpu {
    /// NVML's index on this host (PCI bus order).
    pub index: u32,
    /// "GPU-...".
    pub uuid: String,
    pub name: String,
    pub memory_mb: u64,
    /// Its CUDA ordinal in this worker process (which `CUDA_VISIBLE_DEVICES` of the worker
    /// itself may renumber; the worker sets `CUDA_DEVICE_ORDER=PCI_BUS_ID` so that CUDA and
    /// NVML agree on the order).
    pub ordinal: u32,
    /// A simulated device: no CUDA work runs on it.
    pub simulated: bool,
}

impl Gpu {
    pub fn to_wire(&self) -> baton_proto::GpuDevice {
        baton_proto::GpuDevice {
            index: self.index,
            uuid: self.uuid.clone(),
            name: self.name.clone(),
            memory_mb: self.memory_mb,
        }
    }
}

/// Which GPUs a worker offers (`--gpus`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum GpuChoice {
    /// Every device found.
    #[default]
    Auto,
    /// None.
    None,
    /// These device indices (each must be found).
    Indices(Vec<u32>),
}

impl FromStr for GpuChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "auto" => Ok(GpuChoice::Auto),
            "none" | "" => Ok(GpuChoice::None),
            list => {
                let mut indices = Vec::new();
                for part in list.split(',') {
                    let i: u32 = part.trim().parse().map_err(|_| {
                        "expected `auto`, `none` or device indices such as `0,2`".to_string()
                    })?;
                    if !indices.contains(&i) {
                        indices.push(i);
                    }
                }
                Ok(GpuChoice::Indices(indices))
            }
        }
    }
}

impl fmt::Display for GpuChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GpuChoice::Auto => f.write_str("auto"),
            GpuChoice::None => f.write_str("none"),
            GpuChoice::Indices(v) => {
                let parts: Vec<String> = v.iter().map(u32::to_string).collect();
                f.write_str(&parts.join(","))
            }
        }
    }
}

/// Makes CUDA number devices in PCI bus order, as NVML does (unless already set). Call it at
/// the start of `main`, before any thread starts.
pub fn use_pci_bus_order() {
    if std::env::var_os("CUDA_DEVICE_ORDER").is_none() {
        // SAFETY: called at the start of main, before any other thread exists.
        unsafe { std::env::set_var("CUDA_DEVICE_ORDER", "PCI_BUS_ID") };
    }
}

/// The devices `choice` offers out of those found (`None` finds nothing).
pub fn offered(choice: &GpuChoice) -> Result<Vec<Gpu>, String> {
    if *choice == GpuChoice::None {
        return Ok(Vec::new());
    }
    select(discover()?, choice)
}

/// Picks the devices `choice` names out of `found`; an index not found is an error.
pub fn select(found: Vec<Gpu>, choice: &GpuChoice) -> Result<Vec<Gpu>, String> {
    match choice {
        GpuChoice::Auto => Ok(found),
        GpuChoice::None => Ok(Vec::new()),
        GpuChoice::Indices(want) => {
            let mut out = Vec::new();
            for i in want {
                match found.iter().find(|g| g.index == *i) {
                    Some(g) => out.push(g.clone()),
                    None => {
                        let have: Vec<String> = found.iter().map(|g| g.index.to_string()).collect();
                        return Err(format!(
                            "GPU {i} is not on this host (found: {})",
                            if have.is_empty() {
                                "none".to_string()
                            } else {
                                have.join(", ")
                            }
                        ));
                    }
                }
            }
            Ok(out)
        }
    }
}

/// Every device of this host: simulated ones when [`SIMULATED_ENV`] is set, else NVML's.
/// Without NVML (no driver or no library) there are none, logged once.
pub fn discover() -> Result<Vec<Gpu>, String> {
    let found = match std::env::var(SIMULATED_ENV) {
        Ok(spec) => simulated(&spec)?,
        Err(_) => nvml(),
    };
    Ok(visible(
        found,
        std::env::var("CUDA_VISIBLE_DEVICES").ok().as_deref(),
    ))
}

/// Parses [`SIMULATED_ENV`].
pub fn simulated(spec: &str) -> Result<Vec<Gpu>, String> {
    let spec = spec.trim();
    if spec.is_empty() {
        return Ok(Vec::new());
    }
    let sizes: Vec<&str> = spec.split(',').collect();
    if sizes.len() > baton_common::flow::MAX_GPUS as usize {
        return Err(format!(
            "{SIMULATED_ENV}: at most {} devices",
            baton_common::flow::MAX_GPUS
        ));
    }
    sizes
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let memory_mb = m.trim().parse::<u64>().map_err(|_| {
                format!("{SIMULATED_ENV}: expected memory sizes in MB such as `24576,24576`")
            })?;
            Ok(Gpu {
                index: i as u32,
                uuid: format!("GPU-00000000-0000-4000-8000-{i:012x}"),
                name: "Simulated GPU".into(),
                memory_mb,
                ordinal: i as u32,
                simulated: true,
            })
        })
        .collect()
}

/// The devices NVML finds.
fn nvml() -> Vec<Gpu> {
    let nvml = match nvml_wrapper::Nvml::init() {
        Ok(n) => n,
        Err(e) => {
            tracing::info!("no NVIDIA GPUs: NVML is not available ({e})");
            return Vec::new();
        }
    };
    let count = match nvml.device_count() {
        Ok(n) => n.min(baton_common::flow::MAX_GPUS),
        Err(e) => {
            tracing::warn!("no NVIDIA GPUs: NVML cannot count them ({e})");
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for index in 0..count {
        let device = match nvml.device_by_index(index) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(index, "GPU skipped: {e}");
                continue;
            }
        };
        let memory_mb = device.memory_info().map_or(0, |m| m.total >> 20);
        out.push(Gpu {
            index,
            uuid: device.uuid().unwrap_or_default(),
            name: device.name().unwrap_or_default(),
            memory_mb,
            ordinal: index,
            simulated: false,
        });
    }
    out
}

/// The devices a `CUDA_VISIBLE_DEVICES` of the worker itself leaves (by index or UUID), with
/// their CUDA ordinals in this process; all of them when it is unset.
pub fn visible(found: Vec<Gpu>, cuda_visible: Option<&str>) -> Vec<Gpu> {
    let Some(list) = cuda_visible else {
        return found;
    };
    let mut out = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let hit = found.iter().find(|g| match item.parse::<u32>() {
            Ok(i) => g.index == i,
            Err(_) => !g.uuid.is_empty() && g.uuid.starts_with(item),
        });
        match hit {
            // CUDA stops at the first entry it cannot find.
            None => break,
            Some(g) if out.iter().any(|o: &Gpu| o.index == g.index) => break,
            Some(g) => out.push(Gpu {
                ordinal: out.len() as u32,
                ..g.clone()
            }),
        }
    }
    out
}

/// The environment a process task gets for its GPUs: `CUDA_VISIBLE_DEVICES` naming exactly
/// its devices (by UUID; by index for a device without one) and `BATON_GPUS` with their host
/// indices. A task with no GPUs on a worker with some gets an empty `CUDA_VISIBLE_DEVICES`,
/// so that it cannot use another attempt's device. None on a worker without GPUs.
pub fn task_env(pinned: &[Gpu], worker_has_gpus: bool) -> Vec<(&'static str, String)> {
    if pinned.is_empty() && !worker_has_gpus {
        return Vec::new();
    }
    let ids: Vec<String> = pinned
        .iter()
        .map(|g| {
            if g.uuid.is_empty() {
                g.index.to_string()
            } else {
                g.uuid.clone()
            }
        })
        .collect();
    let indices: Vec<String> = pinned.iter().map(|g| g.index.to_string()).collect();
    vec![
        ("CUDA_VISIBLE_DEVICES", ids.join(",")),
        ("NVIDIA_VISIBLE_DEVICES", ids.join(",")),
        ("CUDA_DEVICE_ORDER", "PCI_BUS_ID".to_string()),
        ("BATON_GPUS", indices.join(",")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse_and_show() {
        assert_eq!("auto".parse::<GpuChoice>(), Ok(GpuChoice::Auto));
        assert_eq!("none".parse::<GpuChoice>(), Ok(GpuChoice::None));
        assert_eq!(
            "0, 2,2".parse::<GpuChoice>(),
            Ok(GpuChoice::Indices(vec![0, 2]))
        );
        assert!("two".parse::<GpuChoice>().is_err());
        assert_eq!(GpuChoice::Indices(vec![0, 2]).to_string(), "0,2");
    }

    #[test]
    fn simulated_devices_and_a_subset_of_them() {
        let found = simulated("16000, 80000,40000").unwrap();
        assert_eq!(found.len(), 3);
        assert_eq!(found[1].memory_mb, 80_000);
        assert!(found[1].uuid.starts_with("GPU-"));
        assert_ne!(found[0].uuid, found[1].uuid);
        let some = select(found.clone(), &GpuChoice::Indices(vec![2, 0])).unwrap();
        assert_eq!(some.iter().map(|g| g.index).collect::<Vec<_>>(), vec![2, 0]);
        let e = select(found.clone(), &GpuChoice::Indices(vec![5])).unwrap_err();
        assert!(e.contains("GPU 5") && e.contains("0, 1, 2"), "{e}");
        assert!(select(found, &GpuChoice::None).unwrap().is_empty());
        assert!(simulated("lots").is_err());
        assert!(simulated("").unwrap().is_empty());
    }

    #[test]
    fn the_workers_own_cuda_visible_devices_renumbers_ordinals() {
        let found = simulated("1,1,1,1").unwrap();
        let uuid3 = found[3].uuid.clone();
        let v = visible(found.clone(), Some(&format!("2,{uuid3}")));
        assert_eq!(v.len(), 2);
        assert_eq!((v[0].index, v[0].ordinal), (2, 0));
        assert_eq!((v[1].index, v[1].ordinal), (3, 1));
        assert_eq!(visible(found.clone(), None).len(), 4);
        assert!(visible(found.clone(), Some("")).is_empty());
        // CUDA stops at an unknown entry.
        assert_eq!(visible(found, Some("1,9,2")).len(), 1);
    }

    #[test]
    fn a_task_sees_exactly_its_devices() {
        let found = simulated("1,1").unwrap();
        let env: std::collections::HashMap<_, _> =
            task_env(&found[1..], true).into_iter().collect();
        assert_eq!(env["CUDA_VISIBLE_DEVICES"], found[1].uuid);
        assert_eq!(env["BATON_GPUS"], "1");
        let none: std::collections::HashMap<_, _> = task_env(&[], true).into_iter().collect();
        assert_eq!(none["CUDA_VISIBLE_DEVICES"], "");
        assert!(task_env(&[], false).is_empty());
    }
}
