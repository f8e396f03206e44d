//! The engine's in-memory model of runs, task nodes and task runs, and their durable records.

use super::held::HeldResult;
use baton_common::flow::{FlowSpec, ResolvedInputs, TaskSpec};
use baton_common::ids::RunId;
use baton_common::result_store::ResultRef;
use baton_common::state::{RunState, TaskState};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A task run's address inside the engine: (run slot, task index, map index or 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrRef {
    pub run: super::table::RunKey,
    pub node: u32,
    pub index: u32,
}

/// A flow spec prepared for execution.
#[derive(Debug)]
pub struct CompiledFlow {
    pub spec: FlowSpec,
    pub version: u32,
    /// Per task: indices of upstream tasks.
    pub upstream: Vec<Vec<usize>>,
    /// Per task: indices of downstream tasks.
    pub downstream: Vec<Vec<usize>>,
    /// Per task: the JSON of its kind, sent in assignments.
    pub kind_json: Vec<Arc<str>>,
    /// Per task: the labels it requires (the flow's and its own), sorted.
    pub labels: Vec<Vec<String>>,
    /// Per task: the successor its worker may run ahead (see [`super::ahead`]).
    pub ahead: Vec<Option<u32>>,
}

impl CompiledFlow {
    pub fn new(spec: FlowSpec, version: u32) -> Self {
        let n = spec.tasks.len();
        let mut upstream = vec![Vec::new(); n];
        let mut downstream = vec![Vec::new(); n];
        for (i, t) in spec.tasks.iter().enumerate() {
            for u in t.upstream() {
                if let Some(j) = spec.task_index(u) {
                    upstream[i].push(j);
                    downstream[j].push(i);
                }
            }
        }
        let kind_json = spec
            .tasks
            .iter()
            .map(|t| Arc::from(t.assignment_json()))
            .collect();
        let labels: Vec<Vec<String>> = spec
            .tasks
            .iter()
            .map(|t| {
                let mut l: Vec<String> = spec.labels.iter().chain(&t.labels).cloned().collect();
                if let Some(executor) = t.kind.executor() {
                    // Only workers started with `--allow process` (or `container`) run
                    // commands (or containers).
                    l.push(format!(
                        "{}{executor}",
                        baton_common::flow::EXECUTOR_LABEL_PREFIX
                    ));
                }
                l.sort();
                l.dedup();
                l
            })
            .collect();
        let ahead = super::ahead::successors(&spec, &upstream, &downstream, &labels);
        CompiledFlow {
            spec,
            version,
            upstream,
            downstream,
            kind_json,
            labels,
            ahead,
        }
    }

    pub fn task(&self, i: usize) -> &TaskSpec {
        &self.spec.tasks[i]
    }

    /// The nodes of a new run: every task waiting on its upstream tasks.
    pub fn fresh_nodes(&self) -> Vec<Node> {
        (0..self.spec.tasks.len())
            .map(|i| Node {
                state: NodeState::Waiting,
                mapped: self.task(i).is_mapped(),
                runs: Vec::new(),
                done: 0,
                waiting_on: self.upstream[i].len(),
                value: None,
                error: String::new(),
                class: 0,
            })
            .collect()
    }
}

/// A task run's current attempt in Unix microseconds (0: not yet), for dispatch latency.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Timings {
    /// When its inputs were known and it could be dispatched.
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub ready_us: i64,
    /// When the scheduler assigned it to a worker.
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub assigned_us: i64,
    /// When its worker started it (the worker's clock).
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub started_us: i64,
    /// When the scheduler recorded its end.
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub ended_us: i64,
}

impl Timings {
    pub fn is_empty(&self) -> bool {
        *self == Timings::default()
    }
}

fn is_zero_i64(v: &i64) -> bool {
    *v == 0
}

/// One attempt's history entry.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct AttemptInfo {
    pub number: u32,
    /// Shared with the worker's other attempts.
    pub worker: Arc<str>,
    pub started_ms: i64,
    pub ended_ms: i64,
    pub error: String,
}

/// Who ran a task run's current attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Runner {
    /// A worker, by id (shared with every task run it ran).
    Worker(Arc<str>),
    /// Completed from the cache, without an attempt.
    Cache,
    /// A sub-flow task run: the scheduler runs it as a child run.
    Subflow,
}

impl Runner {
    /// The name stored in records and shown to users (`cache` and `subflow` are reserved:
    /// no worker may take them as its id, see [`Runner::is_reserved`]).
    pub fn name(&self) -> &str {
        match self {
            Runner::Worker(w) => w,
            Runner::Cache => "cache",
            Runner::Subflow => "subflow",
        }
    }

    /// From a stored record's `worker` field (empty: none).
    pub fn from_record(name: &str) -> Option<Runner> {
        match name {
            "" => None,
            "cache" => Some(Runner::Cache),
            "subflow" => Some(Runner::Subflow),
            w => Some(Runner::Worker(Arc::from(w))),
        }
    }

    /// Whether a worker id is one of the names that stand for no worker.
    pub fn is_reserved(id: &str) -> bool {
        matches!(id, "cache" | "subflow")
    }
}

/// One task run (one map index of one task of one run).
///
/// Compact until it first runs: a queued task run is its state, attempt number, shared
/// inputs and when it became ready (48 bytes); the rest ([`Live`]: who ran it, times, result,
/// error, attempts) is allocated when first written. Its fields read through `Deref` (a
/// queued task run reads as an empty `Live`, allocating nothing) and are written through
/// `DerefMut` (which allocates the `Live` part on the first write).
#[derive(Clone, Debug)]
pub struct TaskRun {
    pub state: TaskState,
    pub dirty: bool,
    /// The current (or last) attempt number; 0 before the first dispatch.
    pub attempt: u32,
    /// The inputs of its task, shared by all the task's runs (a mapped task's broadcast
    /// inputs are held once, not once per element); `None` once it cannot run again.
    pub inputs: Option<Arc<ResolvedInputs>>,
    /// When the task run became ready (for the unrunnable check).
    pub ready_since_ms: i64,
    /// When its inputs were known and it could be dispatched (µs).
    pub ready_us: i64,
    live: Option<Box<Live>>,
}

/// What a task run holds once it has run (or been settled without running).
#[derive(Clone, Debug, Default)]
pub struct Live {
    pub worker: Option<Runner>,
    pub started_ms: i64,
    pub ended_ms: i64,
    /// Boxed: a task run that failed or is running has none.
    pub result: Option<Box<HeldResult>>,
    pub value: Option<Arc<Value>>,
    pub error: String,
    /// Failures that count against the retry policy.
    pub failures: u32,
    /// Attempts lost with their worker (not counted against retries).
    pub lost: u32,
    pub attempts: Vec<AttemptInfo>,
    /// The current attempt's deadline (unix ms), 0 for none.
    pub deadline_ms: i64,
    /// Its current attempt's microsecond timings (when it became ready is the task run's
    /// own `ready_us`).
    pub us: AttemptTimings,
}

/// When the current attempt was assigned, started and ended, in Unix microseconds (0: not
/// yet).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttemptTimings {
    pub assigned_us: i64,
    pub started_us: i64,
    pub ended_us: i64,
}

/// What a task run that never ran reads as.
static NOT_RUN: Live = Live {
    worker: None,
    started_ms: 0,
    ended_ms: 0,
    result: None,
    value: None,
    error: String::new(),
    failures: 0,
    lost: 0,
    attempts: Vec::new(),
    deadline_ms: 0,
    us: AttemptTimings {
        assigned_us: 0,
        started_us: 0,
        ended_us: 0,
    },
};

impl std::ops::Deref for TaskRun {
    type Target = Live;

    fn deref(&self) -> &Live {
        self.live.as_deref().unwrap_or(&NOT_RUN)
    }
}

impl std::ops::DerefMut for TaskRun {
    fn deref_mut(&mut self) -> &mut Live {
        self.live.get_or_insert_with(Default::default)
    }
}

impl TaskRun {
    /// The name of who ran its current attempt ("" for no one yet).
    pub fn worker_name(&self) -> String {
        self.worker
            .as_ref()
            .map(|w| w.name().to_string())
            .unwrap_or_default()
    }

    pub fn new(inputs: Option<Arc<ResolvedInputs>>) -> Self {
        TaskRun {
            state: TaskState::Ready,
            dirty: false,
            attempt: 0,
            inputs,
            ready_since_ms: 0,
            ready_us: 0,
            live: None,
        }
    }

    /// Whether it holds only its queued part.
    pub fn is_compact(&self) -> bool {
        self.live.is_none()
    }

    /// Its microsecond timings.
    pub fn timings(&self) -> Timings {
        Timings {
            ready_us: self.ready_us,
            assigned_us: self.us.assigned_us,
            started_us: self.us.started_us,
            ended_us: self.us.ended_us,
        }
    }

    /// Sets its microsecond timings (allocating its `Live` part only when one is set past
    /// `ready_us`).
    pub fn set_timings(&mut self, t: Timings) {
        self.ready_us = t.ready_us;
        let rest = AttemptTimings {
            assigned_us: t.assigned_us,
            started_us: t.started_us,
            ended_us: t.ended_us,
        };
        if rest != AttemptTimings::default() || self.live.is_some() {
            self.us = rest;
        }
    }

    /// Became ready again at `ready_us`: its earlier attempt's timings are cleared.
    pub fn ready_at(&mut self, ready_us: i64) {
        self.ready_us = ready_us;
        if let Some(live) = self.live.as_mut() {
            live.us = AttemptTimings::default();
        }
    }
}

/// The state of one task of a run (all its map indices together).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeState {
    /// Waiting for upstream tasks.
    Waiting,
    /// Its task runs exist.
    Expanded,
    Completed,
    Failed,
    Skipped,
    Cancelled,
}

impl NodeState {
    pub fn is_terminal(self) -> bool {
        !matches!(self, NodeState::Waiting | NodeState::Expanded)
    }
}

/// One task of one run.
#[derive(Debug)]
pub struct Node {
    pub state: NodeState,
    pub mapped: bool,
    pub runs: Vec<TaskRun>,
    /// Task runs of this node that are terminal.
    pub done: usize,
    /// Upstream nodes not yet completed.
    pub waiting_on: usize,
    /// The node's result: the unmapped run's value, or the list of the mapped runs' values.
    pub value: Option<Arc<Value>>,
    pub error: String,
    /// The dispatch class (labels and resources) of its task runs.
    pub class: usize,
}

/// The sub-flow task run that started a child run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentLink {
    pub run: String,
    pub task: String,
    /// -1 for an unmapped task.
    pub map_index: i64,
}

/// What started a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    #[default]
    Api,
    Schedule,
    Parent,
}

impl Trigger {
    pub fn name(self) -> &'static str {
        match self {
            Trigger::Api => "api",
            Trigger::Schedule => "schedule",
            Trigger::Parent => "parent",
        }
    }
}

/// One flow run.
#[derive(Debug)]
pub struct Run {
    pub id: RunId,
    pub flow: Arc<CompiledFlow>,
    pub params: BTreeMap<String, Value>,
    pub state: RunState,
    pub created_ms: i64,
    pub started_ms: i64,
    pub ended_ms: i64,
    /// Creation and end in Unix microseconds.
    pub created_us: i64,
    pub ended_us: i64,
    pub error: String,
    pub idempotency_key: String,
    pub scheduled_start_ms: i64,
    /// Cached results are not reused (fresh results are still recorded).
    pub no_cache: bool,
    /// Higher first.
    pub priority: i32,
    pub parent: Option<ParentLink>,
    pub trigger: Trigger,
    pub nodes: Vec<Node>,
    /// Nodes not yet terminal.
    pub open_nodes: usize,
    pub waiting_reason: String,
    pub dirty: bool,
    /// Finished and handed to the host for archiving.
    pub archiving: bool,
    /// The number of its next batch of mapped task run records (see `tables::batches`).
    pub batch_seq: u64,
}

impl Run {
    /// The id of the run whose task started this one (empty for a top-level run).
    pub fn parent_run_id(&self) -> String {
        self.parent
            .as_ref()
            .map(|p| p.run.clone())
            .unwrap_or_default()
    }

    /// What `{context: NAME}` inputs of its tasks read.
    pub fn context(&self) -> baton_common::flow::RunContext {
        baton_common::flow::RunContext {
            run_id: self.id.0.clone(),
            flow_version: self.flow.version,
            scheduled_start_ms: self.scheduled_start_ms,
            parent_run_id: self.parent_run_id(),
        }
    }

    pub fn tr(&self, node: u32, index: u32) -> Option<&TaskRun> {
        self.nodes.get(node as usize)?.runs.get(index as usize)
    }

    /// (task runs, terminal task runs); a task not yet expanded counts as one.
    pub fn task_count(&self) -> (u32, u32) {
        let mut total = 0;
        let mut done = 0;
        for n in &self.nodes {
            if n.runs.is_empty() {
                total += 1;
                done += u32::from(n.state.is_terminal());
            } else {
                total += n.runs.len() as u32;
                done += n.done as u32;
            }
        }
        (total, done)
    }
}

/// The durable record of a run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RunRecord {
    pub id: String,
    pub project: String,
    pub flow: String,
    pub version: u32,
    pub params: BTreeMap<String, Value>,
    pub state: RunState,
    pub created_ms: i64,
    pub started_ms: i64,
    pub ended_ms: i64,
    #[serde(default)]
    pub error: String,
    #[serde(default)]
    pub idempotency_key: String,
    #[serde(default)]
    pub scheduled_start_ms: i64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_cache: bool,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentLink>,
    #[serde(default)]
    pub trigger: Trigger,
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub created_us: i64,
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub ended_us: i64,
}

fn is_zero(v: &i32) -> bool {
    *v == 0
}

/// A committed result that later task runs with the same cache key reuse.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CacheEntry {
    pub result: ResultRef,
    /// The value when small; a larger one is read back from `result` after a restart.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present_value"
    )]
    pub value: Option<Value>,
    /// When the entry stops being reused (unix ms); 0: never.
    #[serde(default)]
    pub expires_ms: i64,
    /// The run and task that computed it.
    #[serde(default)]
    pub run: String,
    #[serde(default)]
    pub task: String,
}

/// The durable record of a task run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TaskRunRecord {
    pub state: TaskState,
    pub attempt: u32,
    #[serde(default)]
    pub worker: String,
    #[serde(default)]
    pub started_ms: i64,
    #[serde(default)]
    pub ended_ms: i64,
    #[serde(default)]
    pub result: Option<ResultRef>,
    /// The value when small; otherwise it is read back from `result`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present_value"
    )]
    pub value: Option<Value>,
    #[serde(default)]
    pub error: String,
    #[serde(default)]
    pub failures: u32,
    #[serde(default)]
    pub lost: u32,
    #[serde(default)]
    pub attempts: Vec<AttemptInfo>,
    /// A sub-flow task run: the child run of its current attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child: Option<String>,
    #[serde(default, skip_serializing_if = "Timings::is_empty")]
    pub us: Timings,
}

/// Values at most this long (as JSON) are kept in the state store.
pub const INLINE_VALUE_LIMIT: usize = 64 * 1024;

impl TaskRunRecord {
    /// The record of `tr`; `child` is the child run of a sub-flow task run's attempt.
    pub fn of(tr: &TaskRun, child: Option<&str>) -> Self {
        let value = tr.value.as_ref().and_then(|v| {
            let small = tr
                .result
                .as_ref()
                .is_none_or(|r| r.size() as usize <= INLINE_VALUE_LIMIT);
            small.then(|| (**v).clone())
        });
        TaskRunRecord {
            state: tr.state,
            attempt: tr.attempt,
            worker: tr.worker_name(),
            started_ms: tr.started_ms,
            ended_ms: tr.ended_ms,
            result: tr.result.as_deref().map(HeldResult::to_ref),
            value,
            error: tr.error.clone(),
            failures: tr.failures,
            lost: tr.lost,
            attempts: tr.attempts.clone(),
            child: child.map(str::to_string),
            us: tr.timings(),
        }
    }
}

/// A value that is present, even when it is JSON null (a missing one is `None`).
fn present_value<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    <Value as serde::Deserialize>::deserialize(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::TaskRunRecord;
    use baton_common::state::TaskState;
    use serde_json::Value;

    fn record(value: Option<Value>) -> TaskRunRecord {
        TaskRunRecord {
            state: TaskState::Completed,
            attempt: 1,
            worker: String::new(),
            started_ms: 0,
            ended_ms: 0,
            result: None,
            value,
            error: String::new(),
            failures: 0,
            lost: 0,
            attempts: Vec::new(),
            child: None,
            us: Default::default(),
        }
    }

    #[test]
    fn a_null_value_is_kept_apart_from_a_missing_one() {
        for v in [None, Some(Value::Null), Some(serde_json::json!({"a": 1}))] {
            let bytes = serde_json::to_vec(&record(v.clone())).expect("JSON");
            let back: TaskRunRecord = serde_json::from_slice(&bytes).expect("a record");
            assert_eq!(back.value, v);
        }
    }
}
