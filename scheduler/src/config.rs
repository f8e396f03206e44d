//! The scheduler's typed configuration.

use crate::auth::{Source, Tokens};
use crate::engine::EngineConfig;
use crate::store::embedded::SyncMode;
use crate::{Error, Result};
use std::path::PathBuf;
use std::sync::Arc;

/// The scheduler's defaults, stated once: the flags (and so [`SchedulerConfig::default`])
/// and [`EngineConfig::default`] take them from here.
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
    /// Client calls in flight per caller (streams included), per connection and from all
    /// clients together; client calls a second per caller (bursts to twice this).
    pub use baton_proto::limits::{
        DEFAULT_CLIENT_CONCURRENCY as CLIENT_CONCURRENCY, DEFAULT_CLIENT_RATE as CLIENT_RATE,
        DEFAULT_CLIENT_TOTAL_CONCURRENCY as CLIENT_TOTAL_CONCURRENCY,
        DEFAULT_CONNECTION_CONCURRENCY as CONNECTION_CONCURRENCY,
    };
}

/// Everything the scheduler needs to start, stated once: these are also its command-line
/// flags and `BATON_*` variables (the binary flattens this into its arguments), and
/// [`SchedulerConfig::validate`] names the flag of a bad value.
#[derive(Clone, Debug, clap::Args)]
pub struct SchedulerConfig {
    /// Folder for state (and local results).
    #[arg(long, env = "BATON_DATA_DIR", default_value = ".baton")]
    pub data_dir: PathBuf,
    /// Result store URI (default: file://DATA_DIR/store).
    #[arg(long, env = "BATON_RESULT_STORE")]
    pub result_store: Option<String>,
    /// How often workers send heartbeats, in milliseconds.
    #[arg(
        long = "heartbeat-ms",
        value_name = "MS",
        env = "BATON_HEARTBEAT_MS",
        default_value_t = defaults::HEARTBEAT_MS
    )]
    pub heartbeat_interval_ms: u64,
    /// A disconnected or silent worker's attempts are dispatched again after this long.
    #[arg(long, env = "BATON_WORKER_LEASE_MS", default_value_t = defaults::WORKER_LEASE_MS)]
    pub worker_lease_ms: u64,
    /// After a restart, how long to wait for workers to report their running attempts.
    #[arg(long, env = "BATON_ADOPT_GRACE_MS", default_value_t = defaults::ADOPT_GRACE_MS)]
    pub adopt_grace_ms: u64,
    /// A task that no connected worker can run fails after this long.
    #[arg(
        long,
        env = "BATON_UNRUNNABLE_TIMEOUT_MS",
        default_value_t = defaults::UNRUNNABLE_TIMEOUT_MS
    )]
    pub unrunnable_timeout_ms: u64,
    /// Serve the web UI at http://ADDR/ (e.g. 127.0.0.1:8080); off when unset. With
    /// authentication on, the UI asks for a token and acts with that token's role.
    #[arg(long, value_name = "ADDR", env = "BATON_HTTP")]
    pub http: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 0.0.0.0:9464); off when unset.
    #[arg(long, value_name = "ADDR", env = "BATON_METRICS_ADDR")]
    pub metrics_addr: Option<String>,
    /// Do not fsync the state log before acknowledging a commit: faster, and survives a
    /// crash of the process but not a power loss or an OS crash.
    #[arg(long, env = "BATON_NO_FSYNC")]
    pub no_fsync: bool,
    /// Do not offer workers the chains of instant built-ins that follow their attempts: every
    /// task run is then dispatched on its own (see "Chains run ahead" in the README).
    #[arg(long, env = "BATON_NO_RUN_AHEAD")]
    pub no_run_ahead: bool,
    /// etcd endpoints (comma-separated); enables cluster mode with leader election.
    #[arg(long, env = "BATON_ETCD", value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// The cluster's namespace in etcd (several clusters can share one etcd).
    #[arg(long, env = "BATON_CLUSTER", default_value = "baton")]
    pub cluster: String,
    /// The address clients and workers dial to reach this replica (default: from the
    /// listen address).
    #[arg(long, env = "BATON_ADVERTISE")]
    pub advertise: Option<String>,
    /// This replica's id (default: its advertised address).
    #[arg(long, env = "BATON_REPLICA_ID")]
    pub replica_id: Option<String>,
    /// The leadership lease in etcd, in milliseconds.
    #[arg(long, env = "BATON_LEADER_LEASE_MS", default_value_t = defaults::LEADER_LEASE_MS)]
    pub leader_lease_ms: u64,
    /// Who may call: token table entries `ROLE NAME sha256:HEX` (roles admin, client,
    /// worker), separated by `;` or newlines; `baton token new` makes them.
    #[arg(
        long,
        env = "BATON_TOKENS",
        hide_env_values = true,
        conflicts_with = "tokens_file"
    )]
    pub tokens: Option<String>,
    /// A file of token table entries, one per line; reloaded when it changes.
    #[arg(long, env = "BATON_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,
    /// Serve without authentication even beyond loopback or as a cluster, where it is
    /// otherwise required: anyone who reaches the port can then run commands on workers.
    #[arg(long, env = "BATON_INSECURE")]
    pub insecure: bool,
    /// TLS to etcd (`https://` endpoints): the CA that signs etcd's certificates (PEM).
    #[arg(long, env = "BATON_ETCD_CA")]
    pub etcd_ca: Option<PathBuf>,
    /// etcd client certificate auth: this replica's certificate chain (PEM), with
    /// --etcd-key.
    #[arg(long, env = "BATON_ETCD_CERT", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    /// The etcd client certificate's private key (PEM).
    #[arg(long, env = "BATON_ETCD_KEY", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// TLS on the gRPC port: this replica's certificate chain (PEM); with --tls-key. The
    /// files are reloaded when they change.
    #[arg(long, env = "BATON_SERVER_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, env = "BATON_SERVER_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Mutual TLS: every client and worker must show a certificate signed by this CA (PEM).
    #[arg(long, env = "BATON_SERVER_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Client calls in flight per caller (a token, or an IP address without
    /// authentication), watch and log streams included; more are refused with
    /// RESOURCE_EXHAUSTED. 0: no limit. Workers' streams are never limited.
    #[arg(long, env = "BATON_CLIENT_CONCURRENCY", default_value_t = defaults::CLIENT_CONCURRENCY)]
    pub client_concurrency: u32,
    /// Client calls in flight per connection. 0: no limit.
    #[arg(
        long,
        env = "BATON_CONNECTION_CONCURRENCY",
        default_value_t = defaults::CONNECTION_CONCURRENCY
    )]
    pub connection_concurrency: u32,
    /// Client calls in flight from all clients together. 0: no limit.
    #[arg(
        long,
        env = "BATON_CLIENT_TOTAL_CONCURRENCY",
        default_value_t = defaults::CLIENT_TOTAL_CONCURRENCY
    )]
    pub client_total_concurrency: u32,
    /// Client calls a second per caller, sustained (a caller may burst to twice this).
    /// 0: no limit.
    #[arg(long, env = "BATON_CLIENT_RATE", default_value_t = defaults::CLIENT_RATE)]
    pub client_rate: u32,
    /// Fault injection for tests: the binary reads it with [`Faults::from_env`] (never set
    /// in production).
    #[arg(skip)]
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
    /// `BATON_FAULT_STOP_ENGINE=TASK@MARKER`: the engine stops on its own at that task's
    /// first success, unless MARKER exists (it is created first); the replica must step
    /// down and campaign again, not crash.
    pub stop_engine: Option<(String, PathBuf)>,
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
                "BATON_FAULT_STOP_ENGINE",
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
            stop_engine: var("BATON_FAULT_STOP_ENGINE").and_then(|v| {
                v.split_once('@')
                    .map(|(t, m)| (t.to_string(), PathBuf::from(m)))
            }),
        }
    }
}

impl Default for SchedulerConfig {
    /// The flags' defaults, without reading the environment.
    fn default() -> Self {
        use clap::{Args, FromArgMatches};
        let command = SchedulerConfig::augment_args(clap::Command::new("defaults"));
        // Flags read their variables only when asked to: strip `env` so that a default
        // configuration does not depend on the process's environment.
        let command = command.mut_args(|a| a.env(None::<&'static str>));
        command
            .try_get_matches_from(["defaults"])
            .and_then(|m| SchedulerConfig::from_arg_matches(&m))
            .expect("the flags' defaults are a valid configuration")
    }
}

impl SchedulerConfig {
    /// Checks the settings; the error names the bad key.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| -> Result<()> { Err(Error::Config(m.into())) };
        if self.heartbeat_interval_ms == 0 {
            return bad("--heartbeat-ms must be > 0");
        }
        if self.worker_lease_ms < self.heartbeat_interval_ms.saturating_mul(2) {
            return bad("--worker-lease-ms must be at least twice --heartbeat-ms");
        }
        if self.unrunnable_timeout_ms == 0 {
            return bad("--unrunnable-timeout-ms must be > 0");
        }
        if !self.etcd.is_empty() {
            if self.result_store.is_none() {
                return bad("--result-store is required with --etcd (every replica and worker must reach it, e.g. s3://bucket/prefix)");
            }
            if self.leader_lease_ms < 2_000 {
                return bad("--leader-lease-ms must be at least 2000");
            }
            if self.cluster.trim_matches('/').is_empty() {
                return bad("--cluster must not be empty");
            }
        }
        if self.data_dir.as_os_str().is_empty() {
            return bad("--data-dir must not be empty");
        }
        Ok(())
    }

    /// The token table in force, or `None` when authentication is off: off is allowed only
    /// for a single node listening on loopback, or with `--insecure`.
    /// The files of TLS to etcd, checked by reading them once; an unreadable file is an
    /// error naming it.
    pub fn etcd_tls(&self) -> Result<Option<baton_client::tls::TlsFiles>> {
        if self.etcd_ca.is_none() {
            return Ok(None);
        }
        let files = baton_client::tls::TlsFiles {
            ca: self.etcd_ca.clone(),
            cert: self.etcd_cert.clone(),
            key: self.etcd_key.clone(),
        };
        files.config_for("--etcd").map_err(Error::Config)?;
        Ok(Some(files))
    }

    /// The TLS files, when TLS is on.
    pub fn tls_files(&self) -> Option<crate::tls::TlsFiles> {
        Some(crate::tls::TlsFiles {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            client_ca: self.tls_client_ca.clone(),
        })
    }

    /// The load-shedding limits of the client API.
    pub fn shed_limits(&self) -> crate::shed::ShedLimits {
        crate::shed::ShedLimits {
            per_caller: self.client_concurrency,
            per_connection: self.connection_concurrency,
            total: self.client_total_concurrency,
            rate: self.client_rate,
        }
    }

    pub fn auth(&self, listen: std::net::SocketAddr) -> Result<Option<Arc<Tokens>>> {
        let source = match (&self.tokens, &self.tokens_file) {
            (Some(t), _) => Some((Source::Inline(t.clone()), "--tokens")),
            (None, Some(f)) => Some((Source::File(f.clone()), "--tokens-file")),
            (None, None) => None,
        };
        if let Some((source, flag)) = source {
            return Tokens::load(source)
                .map(Some)
                .map_err(|e| Error::Config(format!("{flag}: {e}")));
        }
        let exposed = if !self.etcd.is_empty() {
            Some("runs as a cluster (--etcd)".to_string())
        } else if !listen.ip().is_loopback() {
            Some(format!("listens on {listen}, beyond loopback"))
        } else {
            None
        };
        match exposed {
            Some(why) if !self.insecure => Err(Error::Config(format!(
                "authentication is required: this scheduler {why}. Give --tokens-file (entries                  from `baton token new`), or --insecure to serve without authentication"
            ))),
            Some(why) => {
                tracing::warn!(
                    "INSECURE: this scheduler {why} without authentication (--insecure): anyone                      who reaches its port can submit flows, run commands on its workers, pose                      as a worker and read every result"
                );
                Ok(None)
            }
            None => Ok(None),
        }
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
            run_ahead: !self.no_run_ahead,
            fault_duplicate_dispatch: self.faults.duplicate_dispatch.clone(),
            fault_crash_before_commit: self.faults.crash_before_commit.clone(),
            fault_stop_engine: self.faults.stop_engine.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: SchedulerConfig,
    }

    fn parse(args: &[&str]) -> SchedulerConfig {
        Cli::try_parse_from(std::iter::once("baton-scheduler").chain(args.iter().copied()))
            .expect("flags")
            .config
    }

    #[test]
    fn tls_files_come_in_pairs() {
        let try_parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("baton-scheduler").chain(args.iter().copied()))
                .map(|c| c.config)
        };
        assert!(try_parse(&["--tls-cert", "c.pem"]).is_err());
        assert!(try_parse(&["--tls-client-ca", "ca.pem"]).is_err());
        let c = parse(&["--tls-cert", "c.pem", "--tls-key", "k.pem"]);
        let files = c.tls_files().expect("TLS on");
        assert_eq!(files.client_ca, None);
        assert!(parse(&[]).tls_files().is_none());
    }

    #[test]
    fn defaults_are_the_flags_defaults_and_stated_once() {
        let d = SchedulerConfig::default();
        assert_eq!(d.heartbeat_interval_ms, defaults::HEARTBEAT_MS);
        assert_eq!(d.worker_lease_ms, defaults::WORKER_LEASE_MS);
        assert_eq!(d.adopt_grace_ms, defaults::ADOPT_GRACE_MS);
        assert_eq!(d.unrunnable_timeout_ms, defaults::UNRUNNABLE_TIMEOUT_MS);
        assert_eq!(d.leader_lease_ms, defaults::LEADER_LEASE_MS);
        assert_eq!(d.data_dir, PathBuf::from(".baton"));
        assert_eq!(d.cluster, "baton");
        assert!(!d.no_fsync, "fsync is on by default");
        let e = EngineConfig::default();
        let from = d.engine(String::new());
        assert_eq!(from.adopt_grace_ms, e.adopt_grace_ms);
        assert_eq!(from.worker_lease_ms, e.worker_lease_ms);
        assert_eq!(from.heartbeat_interval_ms, e.heartbeat_interval_ms);
        assert_eq!(from.unrunnable_timeout_ms, e.unrunnable_timeout_ms);
        d.validate().expect("the defaults are valid");
    }

    #[test]
    fn flags_set_the_config_and_errors_name_the_flag() {
        let c = parse(&[
            "--heartbeat-ms",
            "500",
            "--etcd",
            "http://a:2379,http://b:2379",
        ]);
        assert_eq!(c.heartbeat_interval_ms, 500);
        assert_eq!(c.etcd.len(), 2);
        let e = c.validate().expect_err("etcd without a result store");
        assert!(e.to_string().contains("--result-store"), "{e}");
        let e = parse(&["--heartbeat-ms", "0"])
            .validate()
            .expect_err("zero");
        assert!(e.to_string().contains("--heartbeat-ms"), "{e}");
        let e = parse(&["--heartbeat-ms", "3000", "--worker-lease-ms", "4000"])
            .validate()
            .expect_err("a lease shorter than two heartbeats");
        assert!(e.to_string().contains("--worker-lease-ms"), "{e}");
        let e = parse(&["--tokens", "admin ops hunter2"])
            .auth(([127, 0, 0, 1], 7070).into())
            .err()
            .expect("a plain token");
        assert!(e.to_string().contains("--tokens: tokens, line 1"), "{e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let e = Cli::try_parse_from(["baton-scheduler", "--heartbeat-ms", "soon"])
            .err()
            .expect("not a number");
        assert!(e.to_string().contains("--heartbeat-ms"), "{e}");
    }

    #[test]
    fn authentication_is_required_beyond_loopback_and_in_a_cluster() {
        let loopback: std::net::SocketAddr = ([127, 0, 0, 1], 7070).into();
        let any: std::net::SocketAddr = ([0, 0, 0, 0], 7070).into();
        assert!(
            parse(&[]).auth(loopback).unwrap().is_none(),
            "dev stays open"
        );
        let e = parse(&[]).auth(any).err().expect("exposed");
        assert!(e.to_string().contains("--tokens-file"), "{e}");
        assert!(e.to_string().contains("--insecure"), "{e}");
        let cluster = ["--etcd", "http://e:2379", "--result-store", "s3://b/p"];
        let e = parse(&cluster).auth(loopback).err().expect("a cluster");
        assert!(e.to_string().contains("--etcd"), "{e}");
        assert!(parse(&["--insecure"]).auth(any).unwrap().is_none());
        let entry = crate::auth::tokens::entry(crate::auth::Role::Admin, "ops", "t");
        let tokens = parse(&["--tokens", &entry]).auth(any).unwrap().expect("on");
        assert!(tokens.identify("t").is_some());
    }
}
