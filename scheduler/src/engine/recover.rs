//! Rebuilding the engine from the state store after a restart: flows, runs and task runs;
//! attempts that were running wait for their workers to report them.

use super::model::{
    CompiledFlow, NodeState, Run, RunRecord, Runner, TaskRun, TaskRunRecord, TrRef,
};
use super::registry::WorkerSlot;
use super::RunKey;
use super::{Engine, Timer};
use baton_common::flow::{FlowSpec, ResourceSpec};
use baton_common::ids::{RunId, WorkerId};
use baton_common::result_store::ResultRef;
use baton_common::state::TaskState;
use std::collections::HashMap;
use std::sync::Arc;

/// What was read back from the state store.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Registered flows with their versions.
    pub flows: Vec<(u32, FlowSpec)>,
    pub runs: Vec<RunRecord>,
    /// `(run, task, map index, record)`.
    pub task_runs: Vec<(String, String, i64, TaskRunRecord)>,
    /// `(idempotency key, run id)`, also of runs archived out of the live state.
    pub idempotency: Vec<(String, String)>,
    /// `(cache key, entry)`: the key without its `cache/` prefix.
    pub cache: Vec<(String, super::CacheEntry)>,
    /// `(project, flow, progress)` of flow schedules.
    pub schedules: Vec<(String, String, super::ScheduleRecord)>,
    /// `(tag, limit)` concurrency limits.
    pub limits: Vec<(String, u32)>,
    /// `(key, summary)` of archived runs, for listing.
    pub finished: Vec<(String, baton_proto::FlowRun)>,
    /// The next batch number of each run that has batched task run records.
    pub batch_seqs: HashMap<String, u64>,
    /// Records that could not be read (logged and skipped).
    pub skipped: usize,
}

impl Recovered {
    /// Makes the task run records agree with the committed result pointers, which are the
    /// truth about completion: a commit torn between transactions (see
    /// [`crate::store::StateStore::commit`]) can leave a pointer whose record lags it, or
    /// whose record is missing. Such a record becomes (or is made) a completed one with the
    /// pointer's result and no value, so that the caller reads the value back from the
    /// result store. `pointers` are keyed by `(run, task, map index)`.
    pub fn apply_pointers(&mut self, mut pointers: HashMap<(String, String, i64), ResultRef>) {
        for (run, task, index, r) in &mut self.task_runs {
            let Some(p) = pointers.remove(&(run.clone(), task.clone(), *index)) else {
                continue;
            };
            if r.result.as_ref() != Some(&p) {
                tracing::warn!(%run, %task, index, uri = %p.uri, "task run record behind its committed pointer");
                r.result = Some(p);
                r.value = None;
                r.state = TaskState::Completed;
                r.error.clear();
            }
        }
        let live: std::collections::HashSet<&str> =
            self.runs.iter().map(|r| r.id.as_str()).collect();
        let mut orphans: Vec<_> = pointers
            .into_iter()
            .filter(|((run, _, _), _)| live.contains(run.as_str()))
            .collect();
        orphans.sort_by(|a, b| a.0.cmp(&b.0));
        for ((run, task, index), p) in orphans {
            tracing::warn!(%run, %task, index, uri = %p.uri, "committed pointer without its task run record");
            self.task_runs.push((
                run,
                task,
                index,
                TaskRunRecord {
                    state: TaskState::Completed,
                    attempt: 1,
                    worker: String::new(),
                    started_ms: 0,
                    ended_ms: 0,
                    result: Some(p),
                    value: None,
                    error: String::new(),
                    failures: 0,
                    lost: 0,
                    attempts: Vec::new(),
                    child: None,
                    us: Default::default(),
                },
            ));
        }
    }
}

impl Engine {
    /// Loads recovered state; live runs go on, running attempts await their workers.
    pub fn recover(&mut self, rec: Recovered, now: i64) {
        self.unrecovered += rec.skipped;
        let mut flows = rec.flows;
        flows.sort_by(|a, b| (&a.1.project, &a.1.name, a.0).cmp(&(&b.1.project, &b.1.name, b.0)));
        for (version, spec) in flows {
            let versions = self
                .flows
                .entry((spec.project.clone(), spec.name.clone()))
                .or_default();
            if version as usize == versions.len() + 1 {
                versions.push(Arc::new(CompiledFlow::new(spec, version)));
            }
        }
        self.recover_schedules(rec.schedules);
        self.limits.recover(rec.limits);
        self.cache.recover(rec.cache);
        let mut by_run: HashMap<String, Vec<(String, i64, TaskRunRecord)>> = HashMap::new();
        for (run, task, index, r) in rec.task_runs {
            by_run.entry(run).or_default().push((task, index, r));
        }
        let mut runs = rec.runs;
        runs.sort_by_key(|r| r.created_ms);
        let mut live = 0;
        for r in runs {
            let trs = by_run.remove(&r.id).unwrap_or_default();
            let flow = match self.flow(&r.project, &r.flow, r.version) {
                Ok(f) => f,
                Err(e) => {
                    tracing::error!(run = %r.id, error = %e, "cannot recover run");
                    self.unrecovered += 1;
                    continue;
                }
            };
            let terminal = r.state.is_terminal();
            let nodes = flow.fresh_nodes();
            let idempotency_key = r.idempotency_key.clone();
            let slot = self.runs.insert(
                r.id.clone(),
                Run {
                    id: RunId(r.id.clone()),
                    open_nodes: if terminal { 0 } else { flow.spec.tasks.len() },
                    flow: flow.clone(),
                    params: r.params,
                    state: r.state,
                    created_ms: r.created_ms,
                    started_ms: r.started_ms,
                    ended_ms: r.ended_ms,
                    created_us: r.created_us,
                    ended_us: r.ended_us,
                    error: r.error,
                    idempotency_key: r.idempotency_key,
                    scheduled_start_ms: r.scheduled_start_ms,
                    no_cache: r.no_cache,
                    priority: r.priority,
                    parent: r.parent,
                    trigger: r.trigger,
                    nodes,
                    waiting_reason: String::new(),
                    dirty: false,
                    archiving: false,
                    batch_seq: rec.batch_seqs.get(&r.id).copied().unwrap_or(0),
                },
            );
            if !idempotency_key.is_empty() {
                self.idempotency.insert(idempotency_key, slot);
            }
            if terminal {
                self.rebuild_finished(slot, trs);
                // Finished but still in the live state: archive it (again; idempotent).
                self.mark_run(slot);
            } else {
                live += 1;
                for (task, index, rec) in trs {
                    self.pending_records
                        .insert((r.id.clone(), task, index), rec);
                }
                self.start_roots(slot, now);
            }
        }
        self.pending_records.clear();
        // Children that finished before their parent task run heard of it (a step's
        // operations can span several transactions): settle those task runs now.
        let finished_children: Vec<RunKey> = self
            .runs
            .iter()
            .filter(|(_, r)| r.parent.is_some() && r.state.is_terminal())
            .map(|(k, _)| k)
            .collect();
        for slot in finished_children {
            self.notify_parent(slot, now);
        }
        self.fail_orphaned_waits(now);
        let mut finished = rec.finished;
        finished.sort_by(|a, b| a.0.cmp(&b.0));
        for (key, run) in finished {
            if !self.runs.contains_id(&run.id) {
                self.archived_runs
                    .insert((run.created_ms, run.id.clone()), run);
            }
            if self.finished_set.insert(key.clone()) {
                self.finished_keys.push_back(key);
            }
        }
        for (key, run) in rec.idempotency {
            if !self.idempotency.contains_key(&key) {
                self.archived_idempotency.insert(key, run);
            }
        }
        tracing::info!(runs = self.runs.len(), live, "recovered state");
    }

    /// A finished run is rebuilt for display only.
    fn rebuild_finished(&mut self, slot: RunKey, mut trs: Vec<(String, i64, TaskRunRecord)>) {
        trs.sort_by_key(|(_, i, _)| *i);
        let run = &mut self.runs[slot];
        let flow = run.flow.clone();
        for (task, _index, rec) in trs {
            let Some(i) = flow.spec.task_index(&task) else {
                continue;
            };
            let mut tr = TaskRun::new(None);
            tr.state = rec.state;
            tr.attempt = rec.attempt;
            tr.worker = Runner::from_record(&rec.worker);
            tr.started_ms = rec.started_ms;
            tr.ended_ms = rec.ended_ms;
            tr.result = rec.result.map(|r| Box::new(r.into()));
            tr.value = rec.value.map(Arc::new);
            tr.error = rec.error;
            tr.attempts = rec.attempts;
            tr.set_timings(rec.us);
            if let Some(child) = &rec.child {
                let t = TrRef {
                    run: slot,
                    node: i as u32,
                    index: run.nodes[i].runs.len() as u32,
                };
                self.children.link(t, child);
            }
            run.nodes[i].runs.push(tr);
        }
        let cancelled = run.state == baton_common::state::RunState::Cancelled;
        for node in &mut run.nodes {
            node.done = node.runs.len();
            node.state = if node.runs.is_empty() {
                if cancelled {
                    NodeState::Cancelled
                } else {
                    NodeState::Skipped
                }
            } else if node.runs.iter().all(|t| t.state == TaskState::Completed) {
                NodeState::Completed
            } else {
                NodeState::Failed
            };
        }
    }

    /// Applies a stored record to a task run being rebuilt.
    pub(super) fn apply_record(
        &mut self,
        tr: &mut TaskRun,
        t: TrRef,
        rec: TaskRunRecord,
        now: i64,
    ) {
        tr.attempt = rec.attempt;
        tr.failures = rec.failures;
        tr.lost = rec.lost;
        tr.attempts = rec.attempts;
        tr.error = rec.error;
        tr.started_ms = rec.started_ms;
        tr.ended_ms = rec.ended_ms;
        tr.result = rec.result.map(|r| Box::new(r.into()));
        tr.value = rec.value.map(Arc::new);
        if let Some(child) = &rec.child {
            self.children.link(t, child);
        }
        tr.set_timings(rec.us);
        if let Some(Runner::Cache) = Runner::from_record(&rec.worker) {
            tr.worker = Some(Runner::Cache);
        }
        tr.state = match rec.state {
            TaskState::Completed
            | TaskState::Failed
            | TaskState::Cancelled
            | TaskState::Skipped => rec.state,
            TaskState::Retrying => {
                // Keep the backoff: the retry is due a delay after the failed attempt ended.
                let seed = self.jitter_seed(t);
                let policy = &self.runs[t.run].flow.task(t.node as usize).retries;
                let due = rec.ended_ms + policy.delay_before(rec.attempt + 1, seed) as i64;
                self.timer(due.max(now), Timer::Retry(t, rec.attempt));
                TaskState::Retrying
            }
            TaskState::Assigned | TaskState::Running => {
                let task = self.runs[t.run].flow.task(t.node as usize);
                let (timeout, subflow) = (task.timeout_ms, task.is_subflow());
                // The attempt keeps the deadline it was given when it was assigned.
                if timeout > 0 {
                    tr.deadline_ms = rec.started_ms + timeout as i64;
                    self.timer(tr.deadline_ms.max(now), Timer::Timeout(t, rec.attempt));
                }
                if subflow {
                    // A sub-flow attempt waits for its child run (recovered on its own).
                    TaskState::Running
                } else {
                    let worker = WorkerId(rec.worker.clone());
                    tr.worker = Some(Runner::Worker(Arc::from(rec.worker.as_str())));
                    self.await_worker(worker, t, rec.attempt, now);
                    TaskState::Assigned
                }
            }
            TaskState::Ready | TaskState::Pending => TaskState::Ready,
        };
    }

    /// Holds an attempt for a worker that has not reconnected yet, for the grace period.
    fn await_worker(&mut self, worker: WorkerId, t: TrRef, attempt: u32, now: i64) {
        let grace = self.cfg.adopt_grace_ms as i64;
        // It may still run: it holds its tags' slots until its worker says otherwise.
        let tags = self.runs[t.run].flow.task(t.node as usize).tags.clone();
        if !tags.is_empty() {
            let labels = self.runs[t.run].flow.labels[t.node as usize].clone();
            let resources = self.runs[t.run]
                .flow
                .task(t.node as usize)
                .resources
                .clone();
            let class = self.registry.class_for(&labels, &resources, &tags);
            self.hold(t, attempt, class);
        }
        let slot = self
            .registry
            .workers
            .entry(worker.clone())
            .or_insert_with(|| WorkerSlot {
                id: worker.clone(),
                name: Arc::from(worker.0.as_str()),
                session: 0,
                labels: Vec::new(),
                total: ResourceSpec {
                    slots: 0,
                    gpus: 0,
                    memory_mb: 0,
                    gpu_memory_mb: 0,
                },
                free: ResourceSpec {
                    slots: 0,
                    gpus: 0,
                    memory_mb: 0,
                    gpu_memory_mb: 0,
                },
                gpus: Default::default(),
                attempts: HashMap::new(),
                connected: false,
                draining: false,
                last_seen_ms: now,
                connected_ms: 0,
                address: String::new(),
            });
        let fresh = slot.attempts.is_empty();
        slot.attempts.insert((t, attempt), ResourceSpec::default());
        if fresh && slot.session == 0 {
            self.timer(now + grace, Timer::WorkerLease(worker, 0));
        }
    }
}
