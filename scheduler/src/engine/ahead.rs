//! Running ahead: with an attempt of a task, its worker is offered the chain that follows it
//! (each the only successor of the one before, which is its only upstream task; an instant
//! built-in, unmapped, with no cache or tags, needing what its predecessor needs). Once the
//! attempt succeeds the worker runs that chain on its own and reports it with the result, so
//! a chain of quick tasks costs one round trip and one commit per batch, not per task.
//!
//! What was run ahead is taken as the task run's first attempt, on that worker, only when it
//! is exactly what the scheduler would have dispatched: the task run has just become ready
//! from the very attempt it was run after (same worker), has never been dispatched, and its
//! inputs have the digest of those the scheduler resolved. Anything else is dropped at the
//! end of the step and the task run is dispatched as usual (its first attempt then writes its
//! own result; what was run ahead wrote under a key of its own).

use super::model::{AttemptInfo, Runner, TrRef};
use super::table::RunKey;
use super::{Engine, Outcome};
use baton_common::flow::{inputs_digest, partial_inputs, FlowSpec, TaskKind, INSTANT_BUILTINS};
use baton_common::ids::{AttemptKey, WorkerId};
use baton_common::result_store::ResultRef;
use baton_common::state::TaskState;
use baton_proto as pb;
use baton_proto::limits::{MAX_RUN_AHEAD, MAX_RUN_AHEAD_HINT_BYTES};
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Per task of a flow: the successor its worker may run ahead, if any.
pub(super) fn successors(
    spec: &FlowSpec,
    upstream: &[Vec<usize>],
    downstream: &[Vec<usize>],
    labels: &[Vec<String>],
) -> Vec<Option<u32>> {
    (0..spec.tasks.len())
        .map(|a| {
            let [b] = downstream[a][..] else {
                return None;
            };
            let (ta, tb) = (&spec.tasks[a], &spec.tasks[b]);
            let instant = matches!(&tb.kind, TaskKind::Builtin { function }
                if INSTANT_BUILTINS.contains(&function.as_str()));
            let ok = instant
                && upstream[b][..] == [a]
                && ta.map.is_empty()
                && tb.map.is_empty()
                && tb.cache.is_none()
                && tb.tags.is_empty()
                && labels[a] == labels[b]
                && ta.resources == tb.resources;
            ok.then_some(b as u32)
        })
        .collect()
}

/// One task run a worker reports it ran ahead.
#[derive(Debug)]
struct RanAhead {
    worker: Arc<str>,
    after: AttemptKey,
    digest: u64,
    started_us: i64,
    ended_us: i64,
    result: ResultRef,
    value: Value,
}

/// What workers ran ahead, reported this step, and the task runs found to match.
#[derive(Debug, Default)]
pub(super) struct Ahead {
    reported: HashMap<(RunKey, u32), RanAhead>,
    taken: VecDeque<(TrRef, RanAhead)>,
}

impl Engine {
    /// The chain offered with an attempt of task run `t` (empty for most tasks).
    pub(super) fn successors(&self, t: TrRef) -> Vec<pb::Successor> {
        let run = &self.runs[t.run];
        let flow = &run.flow;
        let Some(mut next) = flow.ahead[t.node as usize].filter(|_| self.cfg.run_ahead) else {
            return Vec::new();
        };
        let context = run.context();
        let mut prev = t.node as usize;
        let mut out = Vec::new();
        let mut bytes = 0;
        while out.len() < MAX_RUN_AHEAD {
            let b = next as usize;
            let task = flow.task(b);
            let Some(inputs) = partial_inputs(task, &run.params, &context, &flow.task(prev).name)
            else {
                break;
            };
            let Some((fixed_inputs, bound_inputs)) = inputs.to_json() else {
                break;
            };
            let spec = &flow.kind_json[b];
            bytes += fixed_inputs.len() + bound_inputs.len() + spec.len() + task.name.len();
            if bytes > MAX_RUN_AHEAD_HINT_BYTES {
                break;
            }
            out.push(pb::Successor {
                task: task.name.clone(),
                task_spec: spec.to_string(),
                fixed_inputs,
                bound_inputs,
            });
            prev = b;
            match flow.ahead[b] {
                Some(n) => next = n,
                None => break,
            }
        }
        out
    }

    /// A worker's report of task runs it ran ahead (with the result of the attempt they
    /// follow), kept until the end of this step's dispatch.
    pub fn ran_ahead(&mut self, worker: &WorkerId, session: u64, ahead: Vec<pb::RanAhead>) {
        let Some(name) = self
            .registry
            .workers
            .get(worker)
            .filter(|w| w.session == session)
            .map(|w| w.name.clone())
        else {
            return;
        };
        for r in ahead.into_iter().take(MAX_RUN_AHEAD) {
            let Some(parsed) = self.parse_ahead(&name, r) else {
                self.stats.ahead_dropped += 1;
                break;
            };
            self.ahead.reported.insert(parsed.0, parsed.1);
        }
    }

    fn parse_ahead(&self, worker: &Arc<str>, r: pb::RanAhead) -> Option<((RunKey, u32), RanAhead)> {
        let f = r.finished?;
        let key = AttemptKey::from(f.key.as_ref()?);
        let after = AttemptKey::from(r.after.as_ref()?);
        if key.attempt != 1 || key.map_index != -1 || after.run != key.run {
            return None;
        }
        let Some(pb::finished::Outcome::Success(s)) = f.outcome else {
            return None;
        };
        let result = ResultRef::from(s.result?);
        let value = serde_json::from_str(&s.inline_value).ok()?;
        let slot = self.runs.key_of(&key.run)?;
        let node = self.runs.get(slot)?.flow.spec.task_index(&key.task)?;
        Some((
            (slot, node as u32),
            RanAhead {
                worker: worker.clone(),
                after,
                digest: r.inputs_digest,
                started_us: r.started_us,
                ended_us: r.ended_us,
                result,
                value,
            },
        ))
    }

    /// Task run `t` just became ready: true when a worker ran it ahead and that is taken (it
    /// is then settled by [`Engine::take_ahead`] instead of being queued).
    pub(super) fn ready_ahead(&mut self, t: TrRef) -> bool {
        if self.ahead.reported.is_empty() {
            return false;
        }
        let Some(r) = self.ahead.reported.remove(&(t.run, t.node)) else {
            return false;
        };
        if self.matches_ahead(t, &r) {
            self.ahead.taken.push_back((t, r));
            true
        } else {
            self.stats.ahead_dropped += 1;
            false
        }
    }

    /// Whether `r` is what the scheduler would have dispatched for `t` now.
    fn matches_ahead(&self, t: TrRef, r: &RanAhead) -> bool {
        let Some(run) = self.runs.get(t.run) else {
            return false;
        };
        let flow = &run.flow;
        let b = t.node as usize;
        let [a] = flow.upstream[b][..] else {
            return false;
        };
        if flow.ahead[a] != Some(t.node) || t.index != 0 || run.state.is_terminal() {
            return false;
        }
        let (Some(pred), Some(tr)) = (run.tr(a as u32, 0), run.tr(t.node, 0)) else {
            return false;
        };
        let same_worker = matches!(&pred.worker, Some(Runner::Worker(w)) if *w == r.worker);
        if pred.state != TaskState::Completed
            || pred.attempt != r.after.attempt
            || r.after.task != flow.task(a).name
            || r.after.map_index != -1
            || !same_worker
            || tr.state != TaskState::Ready
            || tr.attempt != 0
        {
            return false;
        }
        tr.inputs
            .as_ref()
            .is_some_and(|i| inputs_digest(&i.json_for(0)) == r.digest)
    }

    /// Settles the task runs taken as run ahead (each may make the next one ready, and
    /// taken).
    pub(super) fn take_ahead(&mut self, now: i64) {
        while let Some((t, r)) = self.ahead.taken.pop_front() {
            let still = self.runs.get(t.run).is_some_and(|run| {
                !run.state.is_terminal()
                    && run
                        .tr(t.node, t.index)
                        .is_some_and(|tr| tr.state == TaskState::Ready && tr.attempt == 0)
            });
            if !still {
                self.stats.ahead_dropped += 1;
                continue;
            }
            let now_us = self.us(now);
            let started_us = r.started_us.clamp(0, now_us);
            let ended_us = r.ended_us.clamp(started_us, now_us);
            let tr = self.tr_mut(t);
            tr.attempt = 1;
            tr.state = TaskState::Running;
            tr.worker = Some(Runner::Worker(r.worker.clone()));
            tr.started_ms = started_us.div_euclid(1000);
            // It was ready, assigned and started on its worker at once.
            tr.ready_us = started_us;
            tr.us.assigned_us = started_us;
            tr.us.started_us = started_us;
            tr.us.ended_us = 0;
            tr.error.clear();
            tr.attempts.reserve_exact(1);
            tr.attempts.push(AttemptInfo {
                number: 1,
                worker: r.worker,
                started_ms: started_us.div_euclid(1000),
                ended_ms: 0,
                error: String::new(),
            });
            self.stats.ran_ahead += 1;
            self.stats.dispatch_waits_us.push(0);
            let outcome = Outcome::Success {
                result: r.result,
                value: r.value,
            };
            self.settle_attempt(t, outcome, now);
            let tr = self.tr_mut(t);
            tr.ended_ms = ended_us.div_euclid(1000);
            tr.us.ended_us = ended_us;
            if let Some(a) = tr.attempts.last_mut() {
                a.ended_ms = ended_us.div_euclid(1000);
            }
        }
    }

    /// Drops what was reported run ahead and not taken this step: those task runs are
    /// dispatched as usual.
    pub(super) fn drop_ahead(&mut self) {
        if !self.ahead.reported.is_empty() {
            self.stats.ahead_dropped += self.ahead.reported.len() as u64;
            self.ahead.reported.clear();
        }
    }
}
