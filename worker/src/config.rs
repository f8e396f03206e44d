//! The worker's typed configuration, its defaults and its validation.

use crate::error::{Error, Result};
use crate::gpu::Gpu;

/// Where a worker connects by default.
pub const DEFAULT_SCHEDULER: &str = "http://127.0.0.1:7070";
/// How long a worker keeps running its tasks without hearing from a leader, by default.
pub const DEFAULT_LEADER_LEASE_MS: u64 = 15_000;

/// Everything a worker daemon needs to know at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerConfig {
    /// The worker's id, unique in the cluster.
    pub id: String,
    /// Scheduler replicas as `http://host:port`, tried in turn.
    pub schedulers: Vec<String>,
    /// Labels tasks may require.
    pub labels: Vec<String>,
    /// Concurrent task slots.
    pub slots: u32,
    /// The GPUs offered to tasks (see [`crate::gpu`]); each attempt is pinned to its own.
    pub gpus: Vec<Gpu>,
    pub memory_mb: u64,
    /// When no leader has been heard from for longer than this (measured from the last
    /// message received from a leader), running tasks are cancelled.
    pub leader_lease_ms: u64,
    /// How long a draining worker waits for its running tasks before cancelling them.
    pub drain_timeout_ms: u64,
    /// The token shown to the scheduler, when it requires one (a `worker` token naming
    /// this worker's id).
    pub token: Option<baton_common::token::Token>,
    /// Whether process tasks may run here (built-ins always may): a worker on a sensitive
    /// host runs only the built-in library.
    pub allow_process: bool,
    /// Whether container tasks may run here, through the host's Docker engine.
    pub allow_container: bool,
    /// Where the values of tasks' `{secret: NAME}` inputs come from.
    pub secrets: crate::secrets::Secrets,
    /// TLS to `https://` schedulers: their CA and, for mutual TLS, this worker's certificate.
    pub tls: baton_client::tls::TlsFiles,
    /// A file touched while a leader is heard from (see [`crate::health`]).
    pub health_file: Option<std::path::PathBuf>,
    /// Where to serve Prometheus metrics (`/metrics`); off when `None`.
    pub metrics_addr: Option<String>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            id: default_id(),
            schedulers: vec![DEFAULT_SCHEDULER.to_string()],
            labels: vec!["local".to_string()],
            slots: default_slots(),
            gpus: Vec::new(),
            memory_mb: default_memory_mb(),
            leader_lease_ms: DEFAULT_LEADER_LEASE_MS,
            drain_timeout_ms: 30_000,
            token: None,
            allow_process: false,
            allow_container: false,
            secrets: Default::default(),
            tls: Default::default(),
            health_file: None,
            metrics_addr: None,
        }
    }
}

impl WorkerConfig {
    /// Checks every value; the error names the first bad key.
    pub fn validate(&self) -> Result<()> {
        if self.id.is_empty() || self.id.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Error::config(
                "id",
                format!("`{}` must be non-empty and contain no whitespace", self.id),
            ));
        }
        if self.schedulers.is_empty() {
            return Err(Error::config("scheduler", "at least one address is needed"));
        }
        for s in &self.schedulers {
            let host = s
                .strip_prefix("http://")
                .or_else(|| s.strip_prefix("https://"))
                .unwrap_or_default();
            if host.is_empty() || host.contains(char::is_whitespace) {
                return Err(Error::config(
                    "scheduler",
                    format!(
                        "`{s}` is not an address of the form http://host:port or https://host:port"
                    ),
                ));
            }
            if s.starts_with("https://") && self.tls.ca.is_none() {
                return Err(Error::config(
                    "tls-ca",
                    format!(
                        "`{s}` asks for TLS: give the CA that signs the scheduler's certificate"
                    ),
                ));
            }
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return Err(Error::config(
                "tls-cert",
                "--tls-cert and --tls-key go together",
            ));
        }
        for l in &self.labels {
            if l.is_empty() || l.contains(|c: char| c.is_whitespace() || c == ',') {
                return Err(Error::config(
                    "labels",
                    format!("`{l}` is not a label: labels are non-empty words"),
                ));
            }
        }
        if self.slots == 0 {
            return Err(Error::config("slots", "must be at least 1"));
        }
        if self.gpus.len() > baton_common::flow::MAX_GPUS as usize {
            return Err(Error::config(
                "gpus",
                format!("at most {} GPUs", baton_common::flow::MAX_GPUS),
            ));
        }
        if self.leader_lease_ms < 100 {
            return Err(Error::config(
                "leader-lease-ms",
                format!("must be at least 100, got {}", self.leader_lease_ms),
            ));
        }
        Ok(())
    }
}

/// `<hostname>-<pid>`.
pub fn default_id() -> String {
    format!("{}-{}", hostname(), std::process::id())
}

/// The number of CPUs this process may use.
pub fn default_slots() -> u32 {
    std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
        .unwrap_or(1)
}

/// The host's memory in MiB (from `/proc/meminfo`), or 1024 when unknown.
pub fn default_memory_mb() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kb| kb / 1024)
        .unwrap_or(1024)
}

/// The host's name: `gethostname`, else `/etc/hostname`, else `worker`.
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for `buf.len()` bytes; gethostname writes at most that.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        let name = String::from_utf8_lossy(&buf[..end]).trim().to_string();
        if !name.is_empty() {
            return name;
        }
    }
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "worker".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_of(config: &WorkerConfig) -> &'static str {
        match config.validate() {
            Err(Error::Config { key, .. }) => key,
            other => panic!("expected a configuration error, got {other:?}"),
        }
    }

    #[test]
    fn https_needs_a_ca_and_a_certificate_needs_its_key() {
        let mut config = WorkerConfig {
            schedulers: vec!["https://s:7070".into()],
            ..WorkerConfig::default()
        };
        assert_eq!(key_of(&config), "tls-ca");
        config.tls.ca = Some("ca.pem".into());
        assert!(config.validate().is_ok());
        config.tls.cert = Some("w.pem".into());
        assert_eq!(key_of(&config), "tls-cert");
        config.tls.key = Some("w.key".into());
        assert!(config.validate().is_ok());
    }

    #[test]
    fn defaults_are_valid() {
        let config = WorkerConfig::default();
        config.validate().unwrap();
        assert!(config.id.ends_with(&format!("-{}", std::process::id())));
        assert!(config.slots >= 1);
    }

    #[test]
    fn errors_name_the_bad_key() {
        let ok = WorkerConfig::default();
        let cases: Vec<(WorkerConfig, &str)> = vec![
            (
                WorkerConfig {
                    id: String::new(),
                    ..ok.clone()
                },
                "id",
            ),
            (
                WorkerConfig {
                    id: "a b".into(),
                    ..ok.clone()
                },
                "id",
            ),
            (
                WorkerConfig {
                    schedulers: vec![],
                    ..ok.clone()
                },
                "scheduler",
            ),
            (
                WorkerConfig {
                    schedulers: vec!["127.0.0.1:7070".into()],
                    ..ok.clone()
                },
                "scheduler",
            ),
            (
                WorkerConfig {
                    labels: vec!["".into()],
                    ..ok.clone()
                },
                "labels",
            ),
            (
                WorkerConfig {
                    slots: 0,
                    ..ok.clone()
                },
                "slots",
            ),
            (
                WorkerConfig {
                    leader_lease_ms: 5,
                    ..ok.clone()
                },
                "leader-lease-ms",
            ),
        ];
        for (config, key) in cases {
            assert_eq!(key_of(&config), key, "{config:?}");
            let message = config.validate().unwrap_err().to_string();
            assert!(message.contains(&format!("`{key}`")), "{message}");
        }
    }
}
