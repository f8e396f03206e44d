//! The worker's Prometheus metrics (one set per process): attempts running and ended,
//! their duration, the connection to the leader, log lines dropped and the result store.

use baton_common::metrics::{latency_histogram, StoreMetrics};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::sync::{Arc, LazyLock};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

/// Every metric of the worker.
pub struct Metrics {
    registry: Arc<Registry>,
    running: Gauge,
    ended: Family<Outcome, Counter>,
    duration: Histogram,
    connected: Gauge,
    sessions: Counter,
    log_lines_dropped: Counter,
    /// The result store's operations (results written, inputs read).
    pub store: StoreMetrics,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn get() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    fn new() -> Self {
        let mut r = Registry::default();
        let store = StoreMetrics::register(&mut r);
        let m = Metrics {
            registry: Arc::new(Registry::default()),
            running: Gauge::default(),
            ended: Family::default(),
            duration: latency_histogram(),
            connected: Gauge::default(),
            sessions: Counter::default(),
            log_lines_dropped: Counter::default(),
            store,
        };
        r.register(
            "baton_worker_attempts_running",
            "Attempts this worker is running",
            m.running.clone(),
        );
        r.register(
            "baton_worker_attempts_ended",
            "Attempts this worker ended, by outcome (succeeded, failed)",
            m.ended.clone(),
        );
        r.register_with_unit(
            "baton_worker_attempt_duration",
            "Time from an attempt's assignment on this worker to its end",
            Unit::Seconds,
            m.duration.clone(),
        );
        r.register(
            "baton_worker_connected",
            "1 while this worker has a session with the leader, else 0",
            m.connected.clone(),
        );
        r.register(
            "baton_worker_sessions",
            "Sessions opened with a leader (each reconnection counts)",
            m.sessions.clone(),
        );
        r.register(
            "baton_worker_log_lines_dropped",
            "Task log lines dropped because the stream to the scheduler was full",
            m.log_lines_dropped.clone(),
        );
        Metrics {
            registry: Arc::new(r),
            ..m
        }
    }

    /// The registry, to serve.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// Attempts running now.
    pub fn running(&self, n: usize) {
        self.running.set(n as i64);
    }

    /// An attempt ended after `took`.
    pub fn ended(&self, succeeded: bool, took: std::time::Duration) {
        let outcome = if succeeded { "succeeded" } else { "failed" };
        self.ended.get_or_create(&Outcome { outcome }).inc();
        self.duration.observe(took.as_secs_f64());
    }

    /// A session opened (`true`) or ended.
    pub fn connected(&self, up: bool) {
        self.connected.set(i64::from(up));
        if up {
            self.sessions.inc();
        }
    }

    /// Log lines dropped.
    pub fn lines_dropped(&self, n: usize) {
        self.log_lines_dropped.inc_by(n as u64);
    }
}
