//! The DAG engine: pure, synchronous state machines for runs, task runs and workers.
//! It takes events (a run created, a worker connected, a task finished, time passing) with
//! the current time, and yields [`Effects`]: state-store operations to commit, then messages
//! for workers. It does no I/O, so it is tested with virtual workers and virtual time.

pub(crate) mod ahead;
mod cache;
mod children;
mod dag;
mod dispatch;
mod flows;
pub(crate) mod held;
mod lifecycle;
mod limits;
mod model;
pub mod query;
mod recover;
mod referenced;
mod registry;
mod schedule;
mod schedules;
mod seal;
mod stats;
mod subflow;
mod table;
pub mod tables;
#[cfg(test)]
mod tests;
mod view;

pub use dispatch::WorkerRegistration;
pub use model::{
    AttemptInfo, CacheEntry, ParentLink, RunRecord, Runner, TaskRunRecord, TrRef, Trigger,
    INLINE_VALUE_LIMIT,
};
pub use recover::Recovered;
pub use referenced::Referenced;
pub use registry::Gpu;
pub use schedules::ScheduleRecord;
pub use seal::Sealed;
pub use stats::StepStats;
pub use table::RunKey;

use crate::config::defaults;
use crate::store::Op;
use baton_common::flow::FlowSpec;
use baton_common::ids::{RunId, WorkerId};
use baton_common::result_store::ResultRef;
use baton_common::state::RunState;
use model::{CompiledFlow, NodeState, Run};
use serde_json::Value;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::Arc;

/// Settings of the engine.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Where workers write results (sent to them on connect).
    pub result_store: String,
    pub heartbeat_interval_ms: u64,
    /// A disconnected or silent worker's attempts are re-dispatched after this long.
    pub worker_lease_ms: u64,
    /// After a restart, how long to wait for workers to report their running attempts.
    pub adopt_grace_ms: u64,
    /// A task that no connected worker can run fails after this long.
    pub unrunnable_timeout_ms: u64,
    /// Attempts lost with their worker before the task run fails.
    pub max_lost_attempts: u32,
    /// Whether workers are offered the chains that follow their attempts (see [`ahead`]).
    pub run_ahead: bool,
    /// Fault injection (tests only): tasks of this name are dispatched twice.
    pub fault_duplicate_dispatch: Option<String>,
    /// Fault injection (tests only): the host aborts on a success of this task before
    /// committing it, once (while the marker file does not exist yet).
    pub fault_crash_before_commit: Option<(String, std::path::PathBuf)>,
    /// Fault injection (tests only): the engine stops on its own at a success of this task,
    /// once (while the marker file does not exist yet).
    pub fault_stop_engine: Option<(String, std::path::PathBuf)>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            result_store: String::new(),
            heartbeat_interval_ms: defaults::HEARTBEAT_MS,
            worker_lease_ms: defaults::WORKER_LEASE_MS,
            adopt_grace_ms: defaults::ADOPT_GRACE_MS,
            unrunnable_timeout_ms: defaults::UNRUNNABLE_TIMEOUT_MS,
            max_lost_attempts: defaults::MAX_LOST_ATTEMPTS,
            run_ahead: true,
            fault_duplicate_dispatch: None,
            fault_crash_before_commit: None,
            fault_stop_engine: None,
        }
    }
}

/// Finished runs whose summaries the state store keeps for listing after a failover.
pub const MAX_FINISHED_SUMMARIES: usize = 10_000;

/// Engine errors, each mapped to one gRPC status by the services.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EngineError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
}

/// A request to start a run.
#[derive(Clone, Debug, Default)]
pub struct NewRun {
    pub project: String,
    pub flow: String,
    /// 0 for the latest version.
    pub version: u32,
    pub params: BTreeMap<String, Value>,
    pub idempotency_key: String,
    /// 0 for "now".
    pub scheduled_start_ms: i64,
    /// Do not reuse cached results (results are still recorded).
    pub no_cache: bool,
    /// Higher first.
    pub priority: i32,
    /// Set for a child run started by a sub-flow task.
    pub parent: Option<ParentLink>,
    pub trigger: Trigger,
    /// The caller's W3C trace context: the run's span joins that trace (not stored).
    pub traceparent: String,
}

/// How an attempt ended, as its worker reported it.
#[derive(Clone, Debug)]
pub enum Outcome {
    Success { result: ResultRef, value: Value },
    Failure { error: String, retryable: bool },
}

/// A message for one session of one worker.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub worker: WorkerId,
    pub session: u64,
    pub msg: baton_proto::SchedulerMessage,
}

/// What the engine asks of its host after a step: commit `ops` first, then send `outgoing`.
#[derive(Debug, Default)]
pub struct Effects {
    pub ops: Vec<Op>,
    pub outgoing: Vec<Outgoing>,
    /// Runs whose state or task runs changed.
    pub changed_runs: Vec<RunId>,
    /// Task runs that changed.
    pub changed_task_runs: Vec<TrRef>,
    /// Runs that finished: the host archives them, then calls [`Engine::archived`].
    pub finished_runs: Vec<RunId>,
    /// Records that could not be encoded: the host must not commit this step (it would
    /// store an incomplete state) and steps down instead.
    pub encode_errors: Vec<String>,
    /// What the step did, for metrics.
    pub stats: StepStats,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Retry(TrRef, u32),
    Timeout(TrRef, u32),
    WorkerLease(WorkerId, u64),
}

/// The engine. See the module docs.
pub struct Engine {
    cfg: EngineConfig,
    epoch: u64,
    flows: HashMap<(String, String), Vec<Arc<CompiledFlow>>>,
    /// Live runs: a run leaves once it is finished and archived.
    runs: table::Table<Run>,
    idempotency: HashMap<String, RunKey>,
    /// Idempotency keys of finished runs that live only in the archive: key → run id.
    archived_idempotency: HashMap<String, String>,
    /// Summaries of archived runs a previous leader finished, for listing: by (created, id).
    archived_runs: BTreeMap<(i64, String), baton_proto::FlowRun>,
    /// Keys of the summaries kept in the state store, oldest first (at most
    /// [`MAX_FINISHED_SUMMARIES`]).
    finished_keys: std::collections::VecDeque<String>,
    finished_set: std::collections::HashSet<String>,
    /// Workers and the classes of ready task runs.
    registry: registry::Registry,
    /// The child runs of sub-flow task runs.
    children: children::Children,
    timers: BinaryHeap<Reverse<(i64, Timer)>>,
    ops: Vec<Op>,
    outgoing: Vec<Outgoing>,
    dirty_runs: Vec<RunKey>,
    dirty_trs: Vec<TrRef>,
    /// Task runs whose change is shown to watchers but not persisted.
    touched_trs: Vec<TrRef>,
    pending_records: HashMap<(String, String, i64), TaskRunRecord>,
    /// Cache entries by key: the entry and its value.
    cache: cache::Cache,
    /// Schedules of registered flows.
    schedules: schedules::Schedules,
    /// Concurrency limits by tag, and the attempts holding their slots.
    limits: limits::Limits<(TrRef, u32)>,
    /// The host's clock in microseconds at this step (see [`Engine::set_clock_us`]).
    clock_us: i64,
    /// Records that could not be encoded this step: the step must not be committed.
    encode_errors: Vec<String>,
    /// Archived runs that leave memory once no worker holds one of their attempts.
    leaving: Vec<RunKey>,
    /// Sealed runs (out of memory) whose archives are being written.
    tombstones: HashMap<String, seal::Tombstone>,
    /// Sealed runs whose archives could not be written (left to the next leader).
    abandoned_archives: usize,
    /// Records and runs that could not be recovered (what they reference is unknown).
    unrecovered: usize,
    /// What this step did, for metrics.
    stats: StepStats,
    /// Task runs workers ran ahead, reported this step (see [`ahead`]).
    ahead: ahead::Ahead,
}

impl Engine {
    pub fn new(cfg: EngineConfig, epoch: u64) -> Self {
        Engine {
            cfg,
            epoch,
            flows: HashMap::new(),
            runs: table::Table::default(),
            idempotency: HashMap::new(),
            archived_idempotency: HashMap::new(),
            archived_runs: BTreeMap::new(),
            finished_keys: std::collections::VecDeque::new(),
            finished_set: std::collections::HashSet::new(),
            registry: registry::Registry::default(),
            children: children::Children::default(),
            timers: BinaryHeap::new(),
            ops: Vec::new(),
            outgoing: Vec::new(),
            dirty_runs: Vec::new(),
            dirty_trs: Vec::new(),
            touched_trs: Vec::new(),
            pending_records: HashMap::new(),
            cache: cache::Cache::default(),
            schedules: schedules::Schedules::default(),
            limits: limits::Limits::default(),
            clock_us: 0,
            encode_errors: Vec::new(),
            leaving: Vec::new(),
            tombstones: HashMap::new(),
            abandoned_archives: 0,
            unrecovered: 0,
            stats: StepStats::default(),
            ahead: ahead::Ahead::default(),
        }
    }

    /// Tells the engine the host's clock in microseconds before a step, so that task-run
    /// timings have microsecond precision. Engine calls still take milliseconds; a call
    /// whose `now` differs from this clock (virtual time in tests) uses `now` instead.
    pub fn set_clock_us(&mut self, us: i64) {
        self.clock_us = us;
    }

    /// `now` (milliseconds) in microseconds, as precise as the host's clock allows.
    fn us(&self, now: i64) -> i64 {
        if self.clock_us.div_euclid(1000) == now {
            self.clock_us
        } else {
            now.saturating_mul(1000)
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Registers a flow definition; returns its version and whether it is new. A schedule
    /// in it is switched on with `schedule_active` (see [`schedule`]).
    pub fn register_flow(
        &mut self,
        spec: FlowSpec,
        schedule_active: bool,
        now: i64,
    ) -> (u32, bool) {
        let key = (spec.project.clone(), spec.name.clone());
        let versions = self.flows.entry(key.clone()).or_default();
        if let Some(last) = versions.last() {
            if last.spec == spec {
                let version = last.version;
                let schedule = spec.schedule.clone();
                self.schedule_registered(key, schedule, false, schedule_active, now);
                return (version, false);
            }
        }
        let schedule = spec.schedule.clone();
        let version = versions.len() as u32 + 1;
        versions.push(Arc::new(CompiledFlow::new(spec.clone(), version)));
        self.write(tables::flows::put(&spec, version));
        self.schedule_registered(key, schedule, true, schedule_active, now);
        (version, true)
    }

    fn flow(
        &self,
        project: &str,
        flow: &str,
        version: u32,
    ) -> Result<Arc<CompiledFlow>, EngineError> {
        let versions = self
            .flows
            .get(&(project.to_string(), flow.to_string()))
            .ok_or_else(|| {
                EngineError::NotFound(format!("no flow `{flow}` in project `{project}`"))
            })?;
        let found = if version == 0 {
            versions.last()
        } else {
            versions.get(version as usize - 1)
        };
        found.cloned().ok_or_else(|| {
            EngineError::NotFound(format!(
                "flow `{project}/{flow}` has no version {version} (latest is {})",
                versions.len()
            ))
        })
    }

    /// Starts a run; with a known idempotency key, returns the existing run instead.
    pub fn create_run(&mut self, req: NewRun, now: i64) -> Result<(RunId, bool), EngineError> {
        if !req.idempotency_key.is_empty() {
            if let Some(&slot) = self.idempotency.get(&req.idempotency_key) {
                if let Some(run) = self.runs.get(slot) {
                    return Ok((run.id.clone(), false));
                }
            }
            if let Some(run) = self.archived_idempotency.get(&req.idempotency_key) {
                // A finished run a previous leader archived: the host reads it back.
                return Ok((RunId(run.clone()), false));
            }
        }
        let flow = self.flow(&req.project, &req.flow, req.version)?;
        let params = baton_common::flow::bind_parameters(&flow.spec, req.params)
            .map_err(|e| EngineError::InvalidArgument(e.to_string()))?;
        let id = RunId::generate();
        let nodes = flow.fresh_nodes();
        let run = Run {
            id: id.clone(),
            params,
            state: RunState::Pending,
            created_ms: now,
            started_ms: 0,
            ended_ms: 0,
            created_us: self.us(now),
            ended_us: 0,
            error: String::new(),
            idempotency_key: req.idempotency_key.clone(),
            scheduled_start_ms: if req.scheduled_start_ms > 0 {
                req.scheduled_start_ms
            } else {
                now
            },
            no_cache: req.no_cache,
            priority: req.priority,
            parent: req.parent,
            trigger: req.trigger,
            open_nodes: flow.spec.tasks.len(),
            nodes,
            waiting_reason: String::new(),
            dirty: false,
            archiving: false,
            batch_seq: 0,
            flow,
        };
        let slot = self.runs.insert(id.0.clone(), run);
        if !req.idempotency_key.is_empty() {
            self.idempotency.insert(req.idempotency_key.clone(), slot);
            self.ops
                .push(tables::idempotency::put(&req.idempotency_key, &id.0));
        }
        self.mark_run(slot);
        self.stats.runs_created += 1;
        self.start_roots(slot, now);
        Ok((id, true))
    }

    fn start_roots(&mut self, slot: RunKey, now: i64) {
        let n = self.runs[slot].nodes.len();
        for i in 0..n {
            let r = &self.runs[slot];
            if r.nodes[i].state == NodeState::Waiting && r.nodes[i].waiting_on == 0 {
                self.start_node(slot, i, now);
            }
        }
    }

    fn slot_of(&self, run: &str) -> Result<RunKey, EngineError> {
        self.runs
            .key_of(run)
            .ok_or_else(|| EngineError::NotFound(format!("no run `{run}`")))
    }

    fn mark_run(&mut self, slot: RunKey) {
        let r = &mut self.runs[slot];
        if !r.dirty {
            r.dirty = true;
            self.dirty_runs.push(slot);
        }
    }

    fn mark_tr(&mut self, t: TrRef) {
        let tr = &mut self.runs[t.run].nodes[t.node as usize].runs[t.index as usize];
        if !tr.dirty {
            tr.dirty = true;
            self.dirty_trs.push(t);
        }
    }

    /// Takes what the host must do: commit the ops, then send the messages.
    pub fn take_effects(&mut self) -> Effects {
        let mut ops = std::mem::take(&mut self.ops);
        let mut changed_runs = Vec::with_capacity(self.dirty_runs.len());
        let mut finished_runs = Vec::new();
        for slot in std::mem::take(&mut self.dirty_runs) {
            let Some(run) = self.runs.get_mut(slot) else {
                continue;
            };
            run.dirty = false;
            if run.state.is_terminal() && !run.archiving {
                run.archiving = true;
                self.stats.runs_ended.push(run.state);
                finished_runs.push(run.id.clone());
            }
            let rec = RunRecord {
                id: run.id.0.clone(),
                project: run.flow.spec.project.clone(),
                flow: run.flow.spec.name.clone(),
                version: run.flow.version,
                params: run.params.clone(),
                state: run.state,
                created_ms: run.created_ms,
                started_ms: run.started_ms,
                ended_ms: run.ended_ms,
                error: run.error.clone(),
                idempotency_key: run.idempotency_key.clone(),
                scheduled_start_ms: run.scheduled_start_ms,
                no_cache: run.no_cache,
                priority: run.priority,
                parent: run.parent.clone(),
                trigger: run.trigger,
                created_us: run.created_us,
                ended_us: run.ended_us,
            };
            match tables::runs::put(&rec) {
                Ok(op) => ops.push(op),
                Err(e) => self.encode_errors.push(e.to_string()),
            }
            changed_runs.push(run.id.clone());
        }
        // Shown-only changes of task runs that are not also persisted in this step.
        let touched: Vec<TrRef> = std::mem::take(&mut self.touched_trs)
            .into_iter()
            .filter(|t| {
                self.runs
                    .get(t.run)
                    .and_then(|r| r.tr(t.node, t.index))
                    .is_some_and(|tr| !tr.dirty)
            })
            .collect();
        let mut changed_task_runs = std::mem::take(&mut self.dirty_trs);
        changed_task_runs.retain(|t| self.runs.get(t.run).is_some());
        // Mapped task runs' records go in batches, one set per run (in the order of the
        // dirty list, which keeps each run's task runs together in the common case).
        let mut batched: Vec<(RunKey, Vec<(TrRef, TaskRunRecord)>)> = Vec::new();
        for t in &changed_task_runs {
            let run = &mut self.runs[t.run];
            let task = &run.flow.spec.tasks[t.node as usize].name;
            let node = &mut run.nodes[t.node as usize];
            let mapped = node.mapped;
            let tr = &mut node.runs[t.index as usize];
            tr.dirty = false;
            let rec = TaskRunRecord::of(tr, self.children.of(*t));
            if mapped {
                match batched.iter_mut().find(|(k, _)| *k == t.run) {
                    Some((_, rows)) => rows.push((*t, rec)),
                    None => batched.push((t.run, vec![(*t, rec)])),
                }
            } else {
                match tables::task_runs::put(&run.id.0, task, -1, &rec) {
                    Ok(op) => ops.push(op),
                    Err(e) => self.encode_errors.push(e.to_string()),
                }
            }
            if !changed_runs.contains(&run.id) {
                changed_runs.push(run.id.clone());
            }
        }
        for (key, rows) in batched {
            let run = &mut self.runs[key];
            let rows: Vec<(&str, i64, TaskRunRecord)> = rows
                .into_iter()
                .map(|(t, rec)| {
                    let task = run.flow.spec.tasks[t.node as usize].name.as_str();
                    (task, t.index as i64, rec)
                })
                .collect();
            match tables::batches::put(&run.id.0, &mut run.batch_seq, &rows) {
                Ok(batch) => ops.extend(batch),
                Err(e) => self.encode_errors.push(e.to_string()),
            }
        }
        for t in touched {
            let id = &self.runs[t.run].id;
            if !changed_runs.contains(id) {
                changed_runs.push(id.clone());
            }
            changed_task_runs.push(t);
        }
        self.drop_archived();
        Effects {
            ops,
            outgoing: std::mem::take(&mut self.outgoing),
            changed_runs,
            changed_task_runs,
            finished_runs,
            encode_errors: std::mem::take(&mut self.encode_errors),
            stats: std::mem::take(&mut self.stats),
        }
    }

    /// A finished run is archived in the result store: remove it from the live state and
    /// from memory (queries about it read the archive), once no worker holds one of its
    /// attempts any more (a cancelled attempt holds its resources until its worker says
    /// it is gone).
    pub fn archived(&mut self, id: &str) {
        if self.archived_sealed(id) {
            return;
        }
        let Some(slot) = self.runs.key_of(id) else {
            return;
        };
        let summary = self.run_view(&self.runs[slot]);
        self.keep_summary(&summary);
        let tasks = seal::task_counts(&self.runs[slot]);
        let batches = self.runs[slot].batch_seq;
        self.delete_live_records(id, &tasks, batches);
        self.leaving.push(slot);
        self.drop_archived();
    }

    /// Keeps a finished run's summary in the state store for listing (the oldest beyond
    /// [`MAX_FINISHED_SUMMARIES`] go).
    fn keep_summary(&mut self, run: &baton_proto::FlowRun) {
        let summary = tables::finished::key(run.created_ms, &run.id);
        self.ops.push(tables::finished::put(summary.clone(), run));
        if self.finished_set.insert(summary.clone()) {
            self.finished_keys.push_back(summary);
        }
        while self.finished_keys.len() > MAX_FINISHED_SUMMARIES {
            if let Some(key) = self.finished_keys.pop_front() {
                self.finished_set.remove(&key);
                self.ops.push(Op::Delete { key });
            }
        }
    }

    /// Drops the archived runs whose attempts no worker holds any more.
    fn drop_archived(&mut self) {
        if self.leaving.is_empty() {
            return;
        }
        for slot in std::mem::take(&mut self.leaving) {
            if self.holds_attempts_of(slot) {
                self.leaving.push(slot);
            } else {
                self.take_out(slot);
            }
        }
    }

    /// Runs in memory (live, or finished and not yet archived).
    pub fn runs_in_memory(&self) -> usize {
        self.runs.len()
    }

    /// Slots of the run table (live and reusable): what history costs in memory.
    pub fn run_slots(&self) -> usize {
        self.runs.capacity()
    }

    /// The earliest pending timer or schedule tick, if any.
    pub fn next_deadline(&self) -> Option<i64> {
        let timer = self.timers.peek().map(|Reverse((t, _))| *t);
        match (timer, self.next_tick()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn timer(&mut self, at: i64, t: Timer) {
        self.timers.push(Reverse((at, t)));
    }
}
