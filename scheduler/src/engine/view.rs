//! Read-only views of the engine's state as wire messages.

use super::model::{Node, NodeState, Run, TaskRun, TrRef};
use super::{Engine, EngineError};
use baton_common::state::TaskState;
use baton_proto as pb;

impl Engine {
    pub(super) fn run_view(&self, run: &Run) -> pb::FlowRun {
        let (total, done) = run.task_count();
        let waiting_reason = run
            .nodes
            .iter()
            .filter(|n| n.state == NodeState::Expanded && !self.class_reason(n.class).is_empty())
            .filter(|n| n.runs.iter().any(|t| t.state == TaskState::Ready))
            .map(|n| self.class_reason(n.class))
            .find(|reason| !reason.is_empty())
            .unwrap_or_default()
            .to_string();
        pb::FlowRun {
            id: run.id.0.clone(),
            project: run.flow.spec.project.clone(),
            flow: run.flow.spec.name.clone(),
            version: run.flow.version,
            state: pb::RunState::from(run.state) as i32,
            parameters: run
                .params
                .iter()
                .map(|(k, v)| (k.clone(), v.to_string()))
                .collect(),
            created_ms: run.created_ms,
            started_ms: run.started_ms,
            ended_ms: run.ended_ms,
            error: run.error.clone(),
            waiting_reason,
            tasks_total: total,
            tasks_done: done,
            priority: run.priority,
            scheduled_start_ms: run.scheduled_start_ms,
            parent_run_id: run.parent_run_id(),
            parent_task: run
                .parent
                .as_ref()
                .map(|p| p.task.clone())
                .unwrap_or_default(),
            parent_map_index: run.parent.as_ref().map(|p| p.map_index).unwrap_or(-1),
            trigger: run.trigger.name().to_string(),
            created_us: run.created_us,
            ended_us: run.ended_us,
        }
    }

    /// One run's summary.
    /// One run's summary.
    pub fn get_run(&self, id: &str) -> Result<pb::FlowRun, EngineError> {
        let slot = self.slot_of(id)?;
        Ok(self.run_view(&self.runs[slot]))
    }

    /// The most recent runs first (also those a previous leader finished and archived);
    /// `limit` 0 for all.
    pub fn list_runs(&self, limit: usize) -> Vec<pb::FlowRun> {
        let n = if limit == 0 {
            self.runs.len() + self.archived_runs.len()
        } else {
            limit
        };
        // Live runs are not in creation order in the table: take the newest `n` by creation.
        let mut live: Vec<&Run> = self.runs.iter().map(|(_, r)| r).collect();
        live.sort_by(|a, b| (b.created_ms, &b.id.0).cmp(&(a.created_ms, &a.id.0)));
        let mut out: Vec<pb::FlowRun> =
            live.into_iter().take(n).map(|r| self.run_view(r)).collect();
        out.extend(self.archived_runs.values().rev().take(n).cloned());
        out.sort_by(|a, b| (b.created_ms, &b.id).cmp(&(a.created_ms, &a.id)));
        out.truncate(n);
        out
    }

    pub(super) fn tr_view(
        &self,
        run: &Run,
        node: usize,
        index: usize,
        tr: &TaskRun,
        with_value: bool,
    ) -> pb::TaskRun {
        let n = &run.nodes[node];
        let task = run.flow.task(node);
        // Only a sub-flow task run has a child run.
        let child = match task.kind {
            baton_common::flow::TaskKind::Flow { .. } => {
                self.runs.key_of(&run.id.0).and_then(|key| {
                    self.children.of(TrRef {
                        run: key,
                        node: node as u32,
                        index: index as u32,
                    })
                })
            }
            _ => None,
        };
        let mut row = row(
            &run.id.0, &task.name, n.mapped, index, tr, with_value, child,
        );
        if tr.state == TaskState::Ready {
            row.waiting_reason = self.class_reason(n.class).to_string();
        }
        row
    }
    /// A run's task runs in task order; a task not yet expanded shows as one pending row.
    pub fn task_runs(&self, id: &str, with_values: bool) -> Result<Vec<pb::TaskRun>, EngineError> {
        self.task_runs_page(id, with_values, 0, usize::MAX)
            .map(|(rows, _)| rows)
    }

    /// Rows `offset..offset + limit` of [`Self::task_runs`], with the total number of rows.
    pub fn task_runs_page(
        &self,
        id: &str,
        with_values: bool,
        offset: usize,
        limit: usize,
    ) -> Result<(Vec<pb::TaskRun>, usize), EngineError> {
        let slot = self.slot_of(id)?;
        let run = &self.runs[slot];
        let mut out = Vec::new();
        let total = self.rows(run, with_values, offset, limit, |t| out.push(t));
        Ok((out, total))
    }

    /// A finished run's archive, an encoded `RunArchive` message: the run and every task
    /// run with its value. Encoded one task run at a time, so that a run of a million task
    /// runs is never held as a million messages.
    pub fn archive_bytes(&self, id: &str) -> Result<Vec<u8>, EngineError> {
        let slot = self.slot_of(id)?;
        let run = &self.runs[slot];
        let mut buf = Vec::new();
        prost::encoding::message::encode(1, &self.run_view(run), &mut buf);
        self.rows(run, true, 0, usize::MAX, |t| {
            prost::encoding::message::encode(2, &t, &mut buf)
        });
        Ok(buf)
    }

    /// Calls `f` with rows `offset..offset + limit` of a run's task runs; returns the
    /// number of rows.
    fn rows(
        &self,
        run: &Run,
        with_values: bool,
        offset: usize,
        limit: usize,
        mut f: impl FnMut(pb::TaskRun),
    ) -> usize {
        let total: usize = run.nodes.iter().map(|n| n.runs.len().max(1)).sum();
        let mut row = 0usize;
        let end = offset.saturating_add(limit);
        for (i, n) in run.nodes.iter().enumerate() {
            let rows = n.runs.len().max(1);
            if row + rows <= offset {
                row += rows;
                continue;
            }
            if row >= end {
                break;
            }
            if n.runs.is_empty() {
                f(pending_row(&run.id.0, &run.flow.task(i).name, n));
                row += 1;
                continue;
            }
            let skip = offset.saturating_sub(row);
            let take = end.saturating_sub(row.max(offset));
            for (j, tr) in n.runs.iter().enumerate().skip(skip).take(take) {
                f(self.tr_view(run, i, j, tr, with_values));
            }
            row += rows;
        }
        total
    }

    /// Views of some task runs (those a step changed).
    pub fn task_run_views(&self, refs: &[TrRef]) -> Vec<pb::TaskRun> {
        refs.iter()
            .filter_map(|t| {
                let run = self.runs.get(t.run)?;
                let tr = run.tr(t.node, t.index)?;
                Some(self.tr_view(run, t.node as usize, t.index as usize, tr, false))
            })
            .collect()
    }

    /// The run a task-run address belongs to.
    pub fn run_id_of(&self, t: TrRef) -> Option<&str> {
        self.runs.get(t.run).map(|r| r.id.0.as_str())
    }

    /// The wire key of attempt `attempt` of task run `t` (None: its run has left memory).
    pub(super) fn attempt_key(&self, t: TrRef, attempt: u32) -> Option<pb::AttemptKey> {
        let run = self.runs.get(t.run)?;
        let node = run.nodes.get(t.node as usize)?;
        Some(pb::AttemptKey {
            run_id: run.id.0.clone(),
            task: run.flow.task(t.node as usize).name.clone(),
            map_index: if node.mapped { t.index as i64 } else { -1 },
            attempt,
        })
    }

    /// Ready task runs by the worker labels they need (comma-joined, sorted; "" for
    /// none), for metrics.
    pub fn ready_by_labels(&self) -> Vec<(String, usize)> {
        let mut by: std::collections::BTreeMap<String, usize> = Default::default();
        for c in &self.registry.classes {
            *by.entry(c.labels.join(",")).or_default() += c.queue.len();
        }
        by.into_iter().collect()
    }

    /// Runs in memory (live, not yet archived).
    pub fn live_runs(&self) -> usize {
        self.runs.len()
    }

    /// Connected (and recently lost) workers.
    pub fn workers(&self) -> Vec<pb::WorkerInfo> {
        self.registry
            .workers
            .values()
            .filter(|w| w.session != 0)
            .map(|w| pb::WorkerInfo {
                id: w.id.0.clone(),
                labels: w.labels.clone(),
                resources: Some(pb::Resources {
                    slots: w.total.slots,
                    gpus: w.total.gpus,
                    memory_mb: w.total.memory_mb,
                    devices: w.gpus.devices().to_vec(),
                    gpu_memory_mb: 0,
                }),
                free: Some(pb::Resources {
                    slots: w.free.slots,
                    gpus: w.free.gpus,
                    memory_mb: w.free.memory_mb,
                    devices: w.gpus.free().cloned().collect(),
                    gpu_memory_mb: 0,
                }),
                running: w.attempts.len() as u32,
                connected_ms: w.connected_ms,
                last_seen_ms: w.last_seen_ms,
                address: w.address.clone(),
                gpus_held: w
                    .gpus
                    .holdings()
                    .into_iter()
                    .filter_map(|((t, attempt), gpus)| {
                        Some(pb::AttemptGpus {
                            key: Some(self.attempt_key(t, attempt)?),
                            gpus,
                        })
                    })
                    .collect(),
            })
            .collect()
    }
}

/// A task run's row as the wire shows it (without a waiting reason).
pub(super) fn row(
    run_id: &str,
    task: &str,
    mapped: bool,
    index: usize,
    tr: &TaskRun,
    with_value: bool,
    child: Option<&str>,
) -> pb::TaskRun {
    pb::TaskRun {
        run_id: run_id.to_string(),
        task: task.to_string(),
        map_index: if mapped { index as i64 } else { -1 },
        state: pb::TaskState::from(tr.state) as i32,
        attempt: tr.attempt,
        worker: tr.worker_name(),
        started_ms: tr.started_ms,
        ended_ms: tr.ended_ms,
        result: tr.result.as_deref().map(|r| r.to_ref().into()),
        error: tr.error.clone(),
        value: match (&tr.value, with_value) {
            (Some(v), true) => v.to_string(),
            _ => String::new(),
        },
        waiting_reason: String::new(),
        attempts: tr
            .attempts
            .iter()
            .map(|a| pb::Attempt {
                number: a.number,
                worker: a.worker.to_string(),
                started_ms: a.started_ms,
                ended_ms: a.ended_ms,
                error: a.error.clone(),
            })
            .collect(),
        child_run_id: child.unwrap_or_default().to_string(),
        ready_us: tr.ready_us,
        assigned_us: tr.us.assigned_us,
        started_us: tr.us.started_us,
        ended_us: tr.us.ended_us,
    }
}

/// The one row of a task that has no task runs (not expanded, or settled without any).
pub(super) fn pending_row(run_id: &str, task: &str, n: &Node) -> pb::TaskRun {
    let state = match n.state {
        NodeState::Waiting | NodeState::Expanded => TaskState::Pending,
        NodeState::Completed => TaskState::Completed,
        NodeState::Failed => TaskState::Failed,
        NodeState::Skipped => TaskState::Skipped,
        NodeState::Cancelled => TaskState::Cancelled,
    };
    pb::TaskRun {
        run_id: run_id.to_string(),
        task: task.to_string(),
        map_index: -1,
        state: pb::TaskState::from(state) as i32,
        error: n.error.clone(),
        ..Default::default()
    }
}
