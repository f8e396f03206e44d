//! DAG progress: expanding a task into its task runs when its upstream tasks complete,
//! finishing tasks, propagating failure downstream and finishing runs.

use super::held::HeldResult;
use super::model::{NodeState, Runner, TaskRun, TrRef};
use super::tables;
use super::Engine;
use super::RunKey;
use baton_common::flow::resolve_inputs;
use baton_common::state::{RunState, TaskState};
use serde_json::Value;
use std::sync::Arc;

impl Engine {
    /// Expands node `i` of run `slot`: resolves its inputs and creates its task runs.
    pub(super) fn start_node(&mut self, slot: RunKey, i: usize, now: i64) {
        let run = &self.runs[slot];
        let flow = run.flow.clone();
        let task = flow.task(i);
        let context = run.context();
        let resolved = resolve_inputs(task, &run.params, &context, |name| {
            let j = flow.spec.task_index(name)?;
            run.nodes[j].value.as_deref()
        });
        let class = self
            .registry
            .class_for(&flow.labels[i], &task.resources, &task.tags);
        let run_id = self.runs[slot].id.0.clone();
        let resolved = match resolved {
            Ok(r) => r,
            Err(e) => {
                let node = &mut self.runs[slot].nodes[i];
                node.class = class;
                node.state = NodeState::Expanded;
                let mut tr = TaskRun::new(None);
                tr.state = TaskState::Failed;
                tr.error = e.to_string();
                tr.ended_ms = now;
                node.runs.push(tr);
                node.done = 1;
                let t = TrRef {
                    run: slot,
                    node: i as u32,
                    index: 0,
                };
                self.mark_tr(t);
                self.finish_node(slot, i, now);
                return;
            }
        };
        let width = resolved.width();
        let count = width.unwrap_or(1);
        let mut runs = Vec::with_capacity(count);
        let mut ready = Vec::with_capacity(count);
        let mut done = 0;
        let mut hits = Vec::new();
        let cached = task.cache.is_some() && !self.runs[slot].no_cache;
        let resolved = Arc::new(resolved);
        for index in 0..count {
            let mut tr = TaskRun::new(Some(resolved.clone()));
            tr.ready_since_ms = now;
            let map_index = if width.is_some() { index as i64 } else { -1 };
            let t = TrRef {
                run: slot,
                node: i as u32,
                index: index as u32,
            };
            if let Some(rec) =
                self.pending_records
                    .remove(&(run_id.clone(), task.name.clone(), map_index))
            {
                self.apply_record(&mut tr, t, rec, now);
            } else if let Some((result, value)) = cached
                .then(|| self.cache_hit(slot, i, &resolved.json_for(index), now))
                .flatten()
            {
                // Completed from the cache: no dispatch, no attempt.
                tracing::debug!(run = %run_id, task = %task.name, index, "cache hit");
                tr.state = TaskState::Completed;
                tr.result = Some(Box::new(result.into()));
                tr.value = Some(value);
                tr.worker = Some(Runner::Cache);
                tr.started_ms = now;
                tr.ended_ms = now;
                tr.inputs = None;
                hits.push((t, map_index));
            }
            if tr.state.is_terminal() {
                done += 1;
            } else if tr.state == TaskState::Ready {
                ready.push(t);
            }
            runs.push(tr);
        }
        let node = &mut self.runs[slot].nodes[i];
        node.class = class;
        node.state = NodeState::Expanded;
        node.runs = runs;
        node.done = done;
        for t in ready {
            self.make_ready(t, now);
        }
        for (t, map_index) in hits {
            // The cache hit's own committed pointer: the same result object (a mapped task
            // run's is in its batched record).
            if let Some(result) = self.tr_mut(t).result.as_deref().map(HeldResult::to_ref) {
                if map_index < 0 {
                    self.write(tables::results::create(
                        &run_id, &task.name, map_index, &result,
                    ));
                }
            }
            self.mark_tr(t);
        }
        if done == count {
            self.finish_node(slot, i, now);
        }
    }

    /// Called when a task run reaches a terminal state.
    pub(super) fn finish_tr(&mut self, t: TrRef, now: i64) {
        self.mark_tr(t);
        let node = &mut self.runs[t.run].nodes[t.node as usize];
        let tr = &node.runs[t.index as usize];
        let latency = if tr.us.ended_us > 0 && tr.ready_us > 0 {
            (tr.us.ended_us - tr.ready_us).max(0)
        } else {
            0
        };
        self.stats.ended.push((tr.state, latency));
        // A finished task run is never dispatched again: its inputs are not needed.
        node.runs[t.index as usize].inputs = None;
        node.done += 1;
        if node.done == node.runs.len() && node.state == NodeState::Expanded {
            self.finish_node(t.run, t.node as usize, now);
        }
    }

    /// Settles node `i` once all its task runs are terminal, then moves downstream.
    fn finish_node(&mut self, slot: RunKey, i: usize, now: i64) {
        let run = &mut self.runs[slot];
        let node = &mut run.nodes[i];
        let failed = node.runs.iter().find(|t| t.state == TaskState::Failed);
        let state = if let Some(f) = failed {
            node.error = f.error.clone();
            NodeState::Failed
        } else if node.runs.iter().any(|t| t.state == TaskState::Cancelled) {
            NodeState::Cancelled
        } else if node.runs.iter().any(|t| t.state == TaskState::Skipped) {
            NodeState::Skipped
        } else if run.flow.downstream[i].is_empty() {
            // No task reads the node's value: a mapped node's list is not built (a
            // sub-flow's parent builds it from the task runs when it needs it).
            NodeState::Completed
        } else {
            let value = if node.mapped {
                Value::Array(
                    node.runs
                        .iter()
                        .map(|t| t.value.as_deref().cloned().unwrap_or(Value::Null))
                        .collect(),
                )
            } else {
                node.runs
                    .first()
                    .and_then(|t| t.value.as_deref().cloned())
                    .unwrap_or(Value::Null)
            };
            node.value = Some(Arc::new(value));
            NodeState::Completed
        };
        self.settle_node(slot, i, state, now);
    }

    /// Puts node `i` in terminal `state` and updates its downstream nodes and the run.
    fn settle_node(&mut self, slot: RunKey, i: usize, state: NodeState, now: i64) {
        let run = &mut self.runs[slot];
        if run.nodes[i].state.is_terminal() {
            return;
        }
        run.nodes[i].state = state;
        run.open_nodes -= 1;
        let flow = run.flow.clone();
        for &d in &flow.downstream[i] {
            let run = &mut self.runs[slot];
            let down = &mut run.nodes[d];
            if down.state != NodeState::Waiting {
                continue;
            }
            if state == NodeState::Completed {
                down.waiting_on -= 1;
                if down.waiting_on == 0 && run.state != RunState::Cancelled {
                    self.start_node(slot, d, now);
                }
            } else {
                down.error = format!(
                    "skipped: upstream task `{}` did not complete",
                    flow.task(i).name
                );
                let s = if state == NodeState::Cancelled {
                    NodeState::Cancelled
                } else {
                    NodeState::Skipped
                };
                self.settle_node(slot, d, s, now);
            }
        }
        self.maybe_finish_run(slot, now);
    }

    fn maybe_finish_run(&mut self, slot: RunKey, now: i64) {
        let ended_us = self.us(now);
        let run = &mut self.runs[slot];
        if run.open_nodes > 0 || run.state.is_terminal() {
            return;
        }
        let failed = run
            .nodes
            .iter()
            .enumerate()
            .find(|(_, n)| n.state == NodeState::Failed);
        if let Some((i, n)) = failed {
            run.state = RunState::Failed;
            run.error = format!("task `{}` failed: {}", run.flow.task(i).name, n.error);
        } else if run.nodes.iter().any(|n| n.state == NodeState::Cancelled) {
            run.state = RunState::Cancelled;
        } else if run.nodes.iter().any(|n| n.state == NodeState::Skipped) {
            run.state = RunState::Failed;
            run.error = "some tasks were skipped".into();
        } else {
            run.state = RunState::Completed;
        }
        if run.started_ms == 0 {
            run.started_ms = now;
        }
        run.ended_ms = now;
        run.ended_us = ended_us;
        run.waiting_reason.clear();
        tracing::info!(run = %run.id, state = run.state.name(), "run finished");
        self.mark_run(slot);
        self.notify_parent(slot, now);
    }
}
