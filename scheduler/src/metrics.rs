//! The scheduler's Prometheus metrics (one set per process): runs and task runs by state,
//! dispatch and task latency, group commits, leadership, workers, ready queues, limits,
//! schedules, log lines and the result store. The actor feeds them from each step's
//! [`StepStats`] and refreshes the gauges from the engine at most once a second.

use crate::engine::{Engine, StepStats};
use baton_common::metrics::{latency_histogram, StoreMetrics};
use baton_common::state::{RunState, TaskState};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct State {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Labels {
    labels: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabel {
    worker: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Tag {
    tag: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

/// Every metric of the scheduler.
pub struct Metrics {
    registry: Arc<Registry>,
    task_runs: Family<State, Counter>,
    runs: Family<State, Counter>,
    runs_created: Counter,
    runs_live: Gauge,
    dispatched: Counter,
    retries: Counter,
    ran_ahead: Counter,
    ahead_dropped: Counter,
    timeouts: Counter,
    dispatch_latency: Histogram,
    task_latency: Histogram,
    commit_ops: Histogram,
    commit_latency: Histogram,
    commit_errors: Counter,
    leader: Gauge,
    epoch: Gauge,
    redirects: Counter,
    workers: Gauge,
    slots: Family<State, Gauge>,
    worker_running: Family<WorkerLabel, Gauge>,
    ready: Family<Labels, Gauge>,
    limit_in_use: Family<Tag, Gauge>,
    log_lines_dropped: Counter,
    schedule_ticks: Family<Outcome, Counter>,
    /// The result store's operations (the scheduler reads results and writes archives).
    pub store: StoreMetrics,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn get() -> &'static Metrics {
    &METRICS
}

/// How often the gauges are refreshed from the engine.
pub const GAUGE_EVERY: Duration = Duration::from_secs(1);

impl Metrics {
    fn new() -> Self {
        let mut r = Registry::default();
        let m = Metrics {
            registry: Arc::new(Registry::default()),
            task_runs: Family::default(),
            runs: Family::default(),
            runs_created: Counter::default(),
            runs_live: Gauge::default(),
            dispatched: Counter::default(),
            retries: Counter::default(),
            ran_ahead: Counter::default(),
            ahead_dropped: Counter::default(),
            timeouts: Counter::default(),
            dispatch_latency: latency_histogram(),
            task_latency: latency_histogram(),
            commit_ops: Histogram::new(exponential_buckets(1.0, 4.0, 10)),
            commit_latency: latency_histogram(),
            commit_errors: Counter::default(),
            leader: Gauge::default(),
            epoch: Gauge::default(),
            redirects: Counter::default(),
            workers: Gauge::default(),
            slots: Family::default(),
            worker_running: Family::default(),
            ready: Family::default(),
            limit_in_use: Family::default(),
            log_lines_dropped: Counter::default(),
            schedule_ticks: Family::default(),
            store: StoreMetrics::register(&mut r),
        };
        r.register(
            "baton_task_runs_ended",
            "Task runs that ended, by final state (completed, failed, cancelled, skipped)",
            m.task_runs.clone(),
        );
        r.register(
            "baton_task_runs_dispatched",
            "Attempts assigned to workers",
            m.dispatched.clone(),
        );
        r.register(
            "baton_task_run_retries",
            "Attempts that failed and are retried",
            m.retries.clone(),
        );
        r.register(
            "baton_task_runs_ran_ahead",
            "Task runs a worker ran ahead in a chain, taken as their first attempt",
            m.ran_ahead.clone(),
        );
        r.register(
            "baton_task_runs_ahead_dropped",
            "Task runs a worker ran ahead that were not taken (dispatched as usual)",
            m.ahead_dropped.clone(),
        );
        r.register(
            "baton_task_run_timeouts",
            "Attempts that ran past their timeout",
            m.timeouts.clone(),
        );
        r.register_with_unit(
            "baton_dispatch_latency",
            "Time from a task run being ready to its assignment to a worker",
            Unit::Seconds,
            m.dispatch_latency.clone(),
        );
        r.register_with_unit(
            "baton_task_run_latency",
            "Time from a task run being ready to its end (its last attempt)",
            Unit::Seconds,
            m.task_latency.clone(),
        );
        r.register(
            "baton_runs_created",
            "Flow runs created",
            m.runs_created.clone(),
        );
        r.register(
            "baton_runs_ended",
            "Flow runs that ended, by final state",
            m.runs.clone(),
        );
        r.register(
            "baton_runs_live",
            "Flow runs in the leader's memory (not yet archived)",
            m.runs_live.clone(),
        );
        r.register(
            "baton_state_commit_operations",
            "Operations in each group commit of the state store",
            m.commit_ops.clone(),
        );
        r.register_with_unit(
            "baton_state_commit_latency",
            "Time from a group commit's submission to its durability",
            Unit::Seconds,
            m.commit_latency.clone(),
        );
        r.register(
            "baton_state_commit_errors",
            "Group commits that failed (the leader steps down)",
            m.commit_errors.clone(),
        );
        r.register(
            "baton_leader",
            "1 while this replica leads, else 0",
            m.leader.clone(),
        );
        r.register(
            "baton_leader_epoch",
            "The epoch of this replica's latest leadership",
            m.epoch.clone(),
        );
        r.register(
            "baton_follower_redirects",
            "Calls refused by this replica as a follower, naming the leader",
            m.redirects.clone(),
        );
        r.register(
            "baton_workers_connected",
            "Workers connected to the leader",
            m.workers.clone(),
        );
        r.register(
            "baton_worker_slots",
            "Task slots of connected workers: total, and used",
            m.slots.clone(),
        );
        r.register(
            "baton_worker_running_attempts",
            "Attempts each connected worker holds",
            m.worker_running.clone(),
        );
        r.register(
            "baton_ready_task_runs",
            "Task runs waiting for a worker, by the worker labels they need",
            m.ready.clone(),
        );
        r.register(
            "baton_concurrency_limit_in_use",
            "Slots of each concurrency limit held by running attempts",
            m.limit_in_use.clone(),
        );
        r.register(
            "baton_log_lines_dropped",
            "Task log lines dropped by the leader (over a limit, or behind)",
            m.log_lines_dropped.clone(),
        );
        r.register(
            "baton_schedule_ticks",
            "Schedule ticks: fired (a run was created) or missed (skipped)",
            m.schedule_ticks.clone(),
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

    /// Counts what a step did.
    pub fn step(&self, s: &StepStats) {
        if s.is_empty() {
            return;
        }
        self.dispatched.inc_by(s.dispatch_waits_us.len() as u64);
        for &w in &s.dispatch_waits_us {
            self.dispatch_latency.observe(w as f64 / 1e6);
        }
        for &(state, latency_us) in &s.ended {
            self.task_runs
                .get_or_create(&State {
                    state: task_state(state),
                })
                .inc();
            if latency_us > 0 {
                self.task_latency.observe(latency_us as f64 / 1e6);
            }
        }
        self.retries.inc_by(s.retries);
        self.ran_ahead.inc_by(s.ran_ahead);
        self.ahead_dropped.inc_by(s.ahead_dropped);
        self.timeouts.inc_by(s.timeouts);
        self.runs_created.inc_by(s.runs_created);
        for state in &s.runs_ended {
            self.runs
                .get_or_create(&State {
                    state: run_state(*state),
                })
                .inc();
        }
        if s.schedule_fired > 0 {
            self.schedule_ticks
                .get_or_create(&Outcome { outcome: "fired" })
                .inc_by(s.schedule_fired);
        }
        if s.schedule_missed > 0 {
            self.schedule_ticks
                .get_or_create(&Outcome { outcome: "missed" })
                .inc_by(s.schedule_missed);
        }
    }

    /// A group commit of `ops` operations landed after `took`.
    pub fn committed(&self, ops: usize, took: Duration) {
        self.commit_ops.observe(ops as f64);
        self.commit_latency.observe(took.as_secs_f64());
    }

    /// A group commit failed.
    pub fn commit_failed(&self) {
        self.commit_errors.inc();
    }

    /// This replica leads at `epoch`, or (`None`) does not.
    pub fn leading(&self, epoch: Option<u64>) {
        self.leader.set(i64::from(epoch.is_some()));
        if let Some(e) = epoch {
            self.epoch.set(i64::try_from(e).unwrap_or(i64::MAX));
        }
    }

    /// A follower refused a call, naming the leader.
    pub fn redirected(&self) {
        self.redirects.inc();
    }

    /// Log lines dropped.
    pub fn lines_dropped(&self, n: u64) {
        self.log_lines_dropped.inc_by(n);
    }

    /// Refreshes the gauges from the engine.
    pub fn gauges(&self, engine: &Engine) {
        let workers = engine.workers();
        self.workers.set(workers.len() as i64);
        let (mut total, mut free) = (0i64, 0i64);
        self.worker_running.clear();
        for w in &workers {
            total += w.resources.as_ref().map_or(0, |r| i64::from(r.slots));
            free += w.free.as_ref().map_or(0, |r| i64::from(r.slots));
            self.worker_running
                .get_or_create(&WorkerLabel {
                    worker: w.id.clone(),
                })
                .set(i64::from(w.running));
        }
        self.slots
            .get_or_create(&State { state: "total" })
            .set(total);
        self.slots
            .get_or_create(&State { state: "used" })
            .set(total - free);
        self.ready.clear();
        for (labels, n) in engine.ready_by_labels() {
            self.ready.get_or_create(&Labels { labels }).set(n as i64);
        }
        self.limit_in_use.clear();
        for l in engine.list_limits() {
            self.limit_in_use
                .get_or_create(&Tag { tag: l.tag })
                .set(i64::from(l.in_use));
        }
        self.runs_live.set(engine.live_runs() as i64);
    }
}

/// A task run state as a label value (lower case, as Prometheus labels are).
fn task_state(s: TaskState) -> &'static str {
    match s {
        TaskState::Pending => "pending",
        TaskState::Ready => "ready",
        TaskState::Assigned => "assigned",
        TaskState::Running => "running",
        TaskState::Completed => "completed",
        TaskState::Failed => "failed",
        TaskState::Retrying => "retrying",
        TaskState::Cancelled => "cancelled",
        TaskState::Skipped => "skipped",
    }
}

/// A run state as a label value.
fn run_state(s: RunState) -> &'static str {
    match s {
        RunState::Scheduled => "scheduled",
        RunState::Pending => "pending",
        RunState::Running => "running",
        RunState::Completed => "completed",
        RunState::Failed => "failed",
        RunState::Cancelled => "cancelled",
    }
}
