//! The scheduler's typed configuration.

use crate::engine::EngineConfig;
use crate::store::embedded::SyncMode;
use crate::{Error, Result};
use std::path::PathBuf;

/// The scheduler's defaults, stated once: the flags, [`SchedulerConfig::default`] and
/// [`EngineConfig::default`] all take them from here.
pub mod defaults {
    pub const HEARTBEAT_MS: u64 = 1_000;
    pub const WORKER_LEASE_MS: u64 = 10_000;
    pub const ADOPT_GRACE_MS: u64 = 5_000;
    pub const UNRUNNABLE_TIMEOUT_MS: u64 = 300_000;
    pub const LEADER_LEASE_MS: u64 = 10_000;
    pub const MAX_LOST_ATTEMPTS: u32 = 5;
    /// On shutdown or loss of leadership, how long background work (archive and result
    /// writes, open connections) may take to finish before it is cut off.
    pub const DRAIN_MS: u64 = 5_000;
}

/// Everything the scheduler needs to start.
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// Folder of the embedded state store (and of local results by default).
    pub data_dir: PathBuf,
    /// Result store URI; default `file://<data_dir>/store`.
    pub result_store: Option<String>,
    pub heartbeat_interval_ms: u64,
    pub worker_lease_ms: u64,
    pub adopt_grace_ms: u64,
    pub unrunnable_timeout_ms: u64,
    /// Skip the fsync of the state log before a commit is acknowledged (by default every
    /// group commit is fsynced, so that acknowledged state survives a power loss).
    pub no_fsync: bool,
    /// etcd client URLs; empty for single-node mode (embedded state).
    pub etcd: Vec<String>,
    /// The cluster's namespace in etcd (several clusters can share one etcd).
    pub cluster: String,
    /// The address clients and workers dial to reach this replica (default: from the
    /// listen address).
    pub advertise: Option<String>,
    /// This replica's id (default: its advertised address).
    pub replica_id: Option<String>,
    /// The leadership lease in etcd.
    pub leader_lease_ms: u64,
    /// Fault injection for tests (from `BATON_FAULT_*` variables; never set in production).
    pub faults: Faults,
}

/// Faults a test can inject into a scheduler.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// `BATON_FAULT_DUPLICATE_DISPATCH=TASK`: dispatch that task's first attempt twice.
    pub duplicate_dispatch: Option<String>,
    /// `BATON_FAULT_CRASH_BEFORE_COMMIT=TASK@MARKER`: abort on that task's first success,
    /// before committing it, unless MARKER exists (it is created first).
    pub crash_before_commit: Option<(String, PathBuf)>,
}

impl Faults {
    /// Reads the `BATON_FAULT_*` variables (in a build with the `faults` feature; others
    /// ignore them, with a warning).
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        if !cfg!(feature = "faults") {
            for k in [
                "BATON_FAULT_DUPLICATE_DISPATCH",
                "BATON_FAULT_CRASH_BEFORE_COMMIT",
            ] {
                if var(k).is_some() {
                    tracing::warn!(
                        variable = k,
                        "fault injection is not built into this scheduler; ignored"
                    );
                }
            }
            return Faults::default();
        }
        Faults {
            duplicate_dispatch: var("BATON_FAULT_DUPLICATE_DISPATCH"),
            crash_before_commit: var("BATON_FAULT_CRASH_BEFORE_COMMIT").and_then(|v| {
                v.split_once('@')
                    .map(|(t, m)| (t.to_string(), PathBuf::from(m)))
            }),
        }
    }
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            data_dir: PathBuf::from(".baton"),
            result_store: None,
            heartbeat_interval_ms: defaults::HEARTBEAT_MS,
            worker_lease_ms: defaults::WORKER_LEASE_MS,
            adopt_grace_ms: defaults::ADOPT_GRACE_MS,
            unrunnable_timeout_ms: defaults::UNRUNNABLE_TIMEOUT_MS,
            no_fsync: false,
            etcd: Vec::new(),
            cluster: "baton".into(),
            advertise: None,
            replica_id: None,
            leader_lease_ms: defaults::LEADER_LEASE_MS,
            faults: Faults::default(),
        }
    }
}

impl SchedulerConfig {
    /// Checks the settings; the error names the bad key.
    pub fn validate(&self) -> Result<()> {
        if self.heartbeat_interval_ms == 0 {
            return Err(Error::Config("heartbeat_interval_ms must be > 0".into()));
        }
        if self.worker_lease_ms < 2 * self.heartbeat_interval_ms {
            return Err(Error::Config(
                "worker_lease_ms must be at least twice heartbeat_interval_ms".into(),
            ));
        }
        if !self.etcd.is_empty() {
            if self.result_store.is_none() {
                return Err(Error::Config(
                    "result_store is required with etcd (every replica and worker must reach it, e.g. s3://bucket/prefix)".into(),
                ));
            }
            if self.leader_lease_ms < 2_000 {
                return Err(Error::Config(
                    "leader_lease_ms must be at least 2000".into(),
                ));
            }
            if self.cluster.trim_matches('/').is_empty() {
                return Err(Error::Config("cluster must not be empty".into()));
            }
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(Error::Config("data_dir must not be empty".into()));
        }
        Ok(())
    }

    /// The result store URI in effect.
    pub fn result_store_uri(&self) -> String {
        self.result_store.clone().unwrap_or_else(|| {
            let dir = self.data_dir.join("store");
            let abs = std::path::absolute(&dir).unwrap_or(dir);
            format!("file://{}", abs.display())
        })
    }

    pub(crate) fn sync_mode(&self) -> SyncMode {
        if self.no_fsync {
            SyncMode::None
        } else {
            SyncMode::Batch
        }
    }

    pub(crate) fn engine(&self, result_store: String) -> EngineConfig {
        EngineConfig {
            result_store,
            heartbeat_interval_ms: self.heartbeat_interval_ms,
            worker_lease_ms: self.worker_lease_ms,
            adopt_grace_ms: self.adopt_grace_ms,
            unrunnable_timeout_ms: self.unrunnable_timeout_ms,
            max_lost_attempts: defaults::MAX_LOST_ATTEMPTS,
            fault_duplicate_dispatch: self.faults.duplicate_dispatch.clone(),
            fault_crash_before_commit: self.faults.crash_before_commit.clone(),
        }
    }
}
