//! What a step did, counted for the scheduler's metrics: dispatches and their waits, task
//! runs that ended (with their state and latency), retries, timeouts and runs that ended.
//! The engine only records; its host turns these into Prometheus metrics.

use baton_common::state::{RunState, TaskState};

/// Counts and samples of one step.
#[derive(Debug, Default)]
pub struct StepStats {
    /// Microseconds each dispatched attempt waited from ready to assigned.
    pub dispatch_waits_us: Vec<i64>,
    /// Task runs that ended: their state, and microseconds from first ready to end (0 when
    /// unknown, as for a task run that never ran).
    pub ended: Vec<(TaskState, i64)>,
    /// Attempts that failed and will be retried.
    pub retries: u64,
    /// Task runs taken as run ahead by a worker (see `engine::ahead`), and those offered
    /// but dispatched as usual.
    pub ran_ahead: u64,
    pub ahead_dropped: u64,
    /// Attempts that ran past their timeout.
    pub timeouts: u64,
    /// Runs created.
    pub runs_created: u64,
    /// Runs that ended, by state.
    pub runs_ended: Vec<RunState>,
    /// Schedule ticks that created a run, and ticks skipped (missed while no leader ran,
    /// or refused).
    pub schedule_fired: u64,
    pub schedule_missed: u64,
}

impl StepStats {
    /// Whether anything was counted.
    pub fn is_empty(&self) -> bool {
        self.dispatch_waits_us.is_empty()
            && self.ended.is_empty()
            && self.retries == 0
            && self.ran_ahead == 0
            && self.ahead_dropped == 0
            && self.timeouts == 0
            && self.runs_created == 0
            && self.runs_ended.is_empty()
            && self.schedule_fired == 0
            && self.schedule_missed == 0
    }
}
