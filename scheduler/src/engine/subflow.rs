//! Sub-flow tasks: the engine runs them itself. Each attempt of a sub-flow task run starts a
//! child run of a registered flow (its inputs are the child's parameters) under an
//! idempotency key naming the parent task run and attempt, so that a restart never starts a
//! second child. The child's end settles the attempt in the same engine step: its named
//! task's result becomes the task run's result; a failed child fails the attempt (retried as
//! the task's policy says), a cancelled one fails it for good. Cancelling a parent cancels
//! its children.

use super::model::{AttemptInfo, ParentLink, Runner, TrRef, Trigger};
use super::RunKey;
use super::{Engine, NewRun, Outcome};
use baton_common::flow::TaskKind;
use baton_common::result_store::ResultRef;
use baton_common::state::{RunState, TaskState};
use serde_json::Value;
use std::collections::BTreeMap;

/// The deepest chain of parent runs a child may have.
pub const MAX_SUBFLOW_DEPTH: usize = 16;

impl Engine {
    /// Starts a new attempt of sub-flow task run `t`: creates (or finds) its child run.
    pub(super) fn start_child(&mut self, t: TrRef, now: i64) {
        let run = &self.runs[t.run];
        let flow = run.flow.clone();
        let task = flow.task(t.node as usize);
        let TaskKind::Flow {
            project,
            flow: child_flow,
            version,
            ..
        } = &task.kind
        else {
            return;
        };
        let map_index = if run.nodes[t.node as usize].mapped {
            t.index as i64
        } else {
            -1
        };
        let parent_id = run.id.0.clone();
        let (scheduled, no_cache, priority) = (run.scheduled_start_ms, run.no_cache, run.priority);
        if run.state == RunState::Pending {
            let r = &mut self.runs[t.run];
            r.state = RunState::Running;
            r.started_ms = now;
            self.mark_run(t.run);
        }
        let tr = self.tr_mut(t);
        tr.attempt += 1;
        tr.state = TaskState::Running;
        tr.worker = None;
        tr.started_ms = now;
        tr.error.clear();
        // Exactly one more: a first push would reserve room for four (288 bytes a task run).
        let number = tr.attempt;
        tr.attempts.reserve_exact(1);
        tr.attempts.push(AttemptInfo {
            number,
            worker: std::sync::Arc::from(Runner::Subflow.name()),
            started_ms: now,
            ended_ms: 0,
            error: String::new(),
        });
        let attempt = tr.attempt;
        let params: BTreeMap<String, Value> =
            match tr.inputs.as_ref().map(|i| i.for_index(t.index as usize)) {
                Some(Value::Object(m)) => m.into_iter().collect(),
                _ => BTreeMap::new(),
            };
        if task.timeout_ms > 0 {
            tr.deadline_ms = now + task.timeout_ms as i64;
            self.timer(
                now + task.timeout_ms as i64,
                super::Timer::Timeout(t, attempt),
            );
        }
        self.mark_tr(t);
        if let Some(why) = self.recursion(t.run, project, child_flow) {
            self.fail_attempt(t, why, false, now);
            return;
        }
        let req = NewRun {
            project: project.clone(),
            flow: child_flow.clone(),
            version: *version,
            params,
            idempotency_key: format!("child/{parent_id}/{}/{map_index}/{attempt}", task.name),
            scheduled_start_ms: scheduled,
            no_cache,
            priority,
            parent: Some(ParentLink {
                run: parent_id,
                task: task.name.clone(),
                map_index,
            }),
            trigger: Trigger::Parent,
            traceparent: String::new(),
        };
        match self.create_run(req, now) {
            Ok((id, _)) => {
                self.children.link(t, &id.0);
                match self.runs.key_of(&id.0) {
                    // Found again after a restart, already finished: settle now.
                    Some(slot) if self.runs[slot].state.is_terminal() => {
                        self.notify_parent(slot, now)
                    }
                    Some(_) => {}
                    None => self.fail_attempt(
                        t,
                        format!("child run {id} is archived; starting another"),
                        true,
                        now,
                    ),
                }
            }
            Err(e) => self.fail_attempt(
                t,
                format!("cannot start sub-flow `{project}/{child_flow}`: {e}"),
                false,
                now,
            ),
        }
    }

    /// Why run `slot` may not start a child of `project/flow`: the flow is already one of
    /// its ancestors (or itself), or the chain of parents is too deep.
    fn recursion(&self, slot: RunKey, project: &str, flow: &str) -> Option<String> {
        let mut cur = Some(slot);
        let mut depth = 0;
        while let Some(s) = cur {
            let run = &self.runs[s];
            if run.flow.spec.project == project && run.flow.spec.name == flow {
                return Some(format!(
                    "sub-flow recursion: `{project}/{flow}` would start itself (run {} is already one)",
                    run.id
                ));
            }
            depth += 1;
            if depth >= MAX_SUBFLOW_DEPTH {
                return Some(format!(
                    "sub-flows nest deeper than {MAX_SUBFLOW_DEPTH} runs"
                ));
            }
            cur = run.parent.as_ref().and_then(|p| self.runs.key_of(&p.run));
        }
        None
    }

    /// Sub-flow task runs of live runs that wait for a child that is gone (it could not be
    /// recovered): their attempt fails (retryably) so that they do not wait forever.
    pub(super) fn fail_orphaned_waits(&mut self, now: i64) {
        let lost: Vec<(TrRef, String)> = self
            .children
            .iter()
            .filter(|(t, child)| {
                let waiting = self
                    .runs
                    .get(t.run)
                    .filter(|run| !run.state.is_terminal())
                    .and_then(|run| run.tr(t.node, t.index))
                    .is_some_and(|tr| matches!(tr.state, TaskState::Assigned | TaskState::Running));
                waiting && !self.runs.contains_id(child)
            })
            .map(|(t, child)| (t, child.to_string()))
            .collect();
        for (t, child) in lost {
            self.fail_attempt(t, format!("child run {child} was lost"), true, now);
        }
    }

    /// Run `slot` finished: settle the sub-flow task run that started it, if it still waits
    /// for this child.
    pub(super) fn notify_parent(&mut self, slot: RunKey, now: i64) {
        let child = &self.runs[slot];
        let Some(link) = child.parent.clone() else {
            return;
        };
        let child_id = child.id.0.clone();
        let Some(pslot) = self.runs.key_of(&link.run) else {
            return;
        };
        let parent = &self.runs[pslot];
        let Some(node) = parent.flow.spec.task_index(&link.task) else {
            return;
        };
        let t = TrRef {
            run: pslot,
            node: node as u32,
            index: link.map_index.max(0) as u32,
        };
        let waiting = self.children.of(t) == Some(child_id.as_str())
            && parent
                .tr(t.node, t.index)
                .is_some_and(|tr| matches!(tr.state, TaskState::Assigned | TaskState::Running));
        if !waiting {
            return;
        }
        let result_task = match &parent.flow.task(node).kind {
            TaskKind::Flow { result, .. } => result.clone(),
            _ => return,
        };
        let child = &self.runs[slot];
        match child.state {
            RunState::Completed => match self.child_result(slot, &result_task) {
                Ok((result, value)) => {
                    self.settle_attempt(t, Outcome::Success { result, value }, now)
                }
                Err(e) => self.fail_attempt(t, e, false, now),
            },
            RunState::Cancelled => {
                self.fail_attempt(t, format!("child run {child_id} was cancelled"), false, now)
            }
            _ => {
                let error = format!("child run {child_id} failed: {}", child.error);
                self.fail_attempt(t, error, true, now)
            }
        }
    }

    /// The result of task `task` of finished run `slot` (its id when `task` is empty).
    fn child_result(&self, slot: RunKey, task: &str) -> Result<(ResultRef, Value), String> {
        let run = &self.runs[slot];
        if task.is_empty() {
            let value = Value::String(run.id.0.clone());
            return Ok((inline_ref(&run.id.0, "", &value), value));
        }
        let Some(i) = run.flow.spec.task_index(task) else {
            return Err(format!(
                "flow `{}/{}` has no task `{task}` to take the result of",
                run.flow.spec.project, run.flow.spec.name
            ));
        };
        let node = &run.nodes[i];
        if !node.mapped {
            if let Some(tr) = node.runs.first() {
                if let (Some(r), Some(v)) = (&tr.result, &tr.value) {
                    return Ok((r.to_ref(), (**v).clone()));
                }
            }
        }
        let value = match (&node.value, node.mapped) {
            (Some(v), _) => (**v).clone(),
            (None, true) => Value::Array(
                node.runs
                    .iter()
                    .map(|t| t.value.as_deref().cloned().unwrap_or(Value::Null))
                    .collect(),
            ),
            (None, false) => node
                .runs
                .first()
                .and_then(|t| t.value.as_deref().cloned())
                .unwrap_or(Value::Null),
        };
        Ok((inline_ref(&run.id.0, task, &value), value))
    }

    /// The child runs of run `slot`'s sub-flow task runs that are still running.
    pub(super) fn running_children(&self, slot: RunKey) -> Vec<String> {
        let run = &self.runs[slot];
        self.children
            .of_run(slot)
            .filter(|(t, _)| {
                run.tr(t.node, t.index)
                    .is_some_and(|tr| !tr.state.is_terminal())
            })
            .map(|(_, child)| child.to_string())
            .collect()
    }

    /// Cancels child runs (after their parent task runs were cancelled).
    pub(super) fn cancel_children(&mut self, children: Vec<String>, now: i64) {
        for child in children {
            if let Err(e) = self.cancel_run(&child, now) {
                tracing::debug!(run = %child, error = %e, "cannot cancel a child run");
            }
        }
    }
}

/// A reference for a child's result that has no object of its own (a mapped task's list,
/// or the child's id): the value travels inline.
fn inline_ref(run: &str, task: &str, value: &Value) -> ResultRef {
    ResultRef {
        uri: format!("baton://runs/{run}/{task}"),
        size: value.to_string().len() as u64,
        checksum: String::new(),
        content_type: "application/json".into(),
    }
}
