//! Attempt lifecycle: started, finished, failed with retries, timed out, lost with its
//! worker, cancelled; and the timers that drive retries, timeouts and worker leases.

use super::model::{NodeState, TrRef};
use super::tables;
use super::{Engine, EngineError, Outcome, Outgoing, Timer};
use baton_common::ids::{AttemptKey, WorkerId};
use baton_common::state::{RunState, TaskState};
use baton_proto::{scheduler_message::Msg, SchedulerMessage};
use std::cmp::Reverse;
use std::sync::Arc;

impl Engine {
    /// Finds the task run an attempt key names.
    pub(super) fn locate(&self, key: &AttemptKey) -> Option<TrRef> {
        let slot = self.runs.key_of(&key.run)?;
        let run = self.runs.get(slot)?;
        let node = run.flow.spec.task_index(&key.task)?;
        let n = &run.nodes[node];
        let index = match (n.mapped, key.map_index) {
            (false, -1) => 0,
            (true, i) if i >= 0 => i as u32,
            _ => return None,
        };
        n.runs.get(index as usize)?;
        Some(TrRef {
            run: slot,
            node: node as u32,
            index,
        })
    }

    pub(super) fn is_current_attempt(&self, t: TrRef, attempt: u32) -> bool {
        self.runs
            .get(t.run)
            .and_then(|r| r.tr(t.node, t.index))
            .is_some_and(|tr| {
                tr.attempt == attempt
                    && matches!(tr.state, TaskState::Assigned | TaskState::Running)
            })
    }

    /// Whether worker `id`, in `session`, was given attempt `key` and has not reported it
    /// ended: only then may it report on it (started, log lines).
    pub fn holds(&self, id: &WorkerId, session: u64, key: &AttemptKey) -> bool {
        let Some(t) = self.locate(key) else {
            return false;
        };
        self.registry
            .workers
            .get(id)
            .is_some_and(|w| w.session == session && w.attempts.contains_key(&(t, key.attempt)))
    }

    /// The worker started an attempt.
    pub fn task_started(&mut self, key: &AttemptKey, at_ms: i64, at_us: i64) {
        if let Some(t) = self.locate(key) {
            if self.is_current_attempt(t, key.attempt) {
                let tr = &mut self.runs[t.run].nodes[t.node as usize].runs[t.index as usize];
                if tr.state == TaskState::Assigned {
                    tr.state = TaskState::Running;
                    tr.us.started_us = if at_us > 0 { at_us } else { at_ms * 1000 };
                    if at_ms > 0 {
                        tr.started_ms = at_ms;
                        if let Some(a) = tr.attempts.last_mut() {
                            a.started_ms = at_ms;
                        }
                    }
                    // Not persisted (a restart re-learns it from the worker), only shown.
                    self.touched_trs.push(t);
                }
            }
        }
    }

    /// The worker finished an attempt. The first result of the current attempt is
    /// committed; anything else is acknowledged as not committed.
    pub fn task_finished(
        &mut self,
        worker: &WorkerId,
        session: u64,
        key: &AttemptKey,
        outcome: Outcome,
        now: i64,
    ) -> bool {
        // Only the worker an attempt was given to may report on it (a worker that reconnected
        // holds its attempts again); anyone else's report is acknowledged and ignored.
        let t = self.locate(key).filter(|&t| {
            let held = self
                .registry
                .workers
                .get_mut(worker)
                .is_some_and(|w| w.release((t, key.attempt)));
            if !held {
                tracing::warn!(attempt = %key, worker = %worker, "ignoring a result from a worker that was not given this attempt");
            }
            held
        });
        if let Some(t) = t {
            self.unhold((t, key.attempt));
        }
        let committed = match t {
            Some(t) if self.is_current_attempt(t, key.attempt) => {
                self.settle_attempt(t, outcome, now);
                // The chain its worker ran ahead, as far as it is taken.
                self.take_ahead(now);
                true
            }
            _ => {
                tracing::debug!(attempt = %key, "ignoring a stale or unknown result");
                false
            }
        };
        let epoch = self.epoch;
        self.outgoing.push(Outgoing {
            worker: worker.clone(),
            session,
            msg: SchedulerMessage {
                epoch,
                msg: Some(Msg::Ack(baton_proto::Ack {
                    key: Some(key.into()),
                    committed,
                })),
            },
        });
        committed
    }

    pub(super) fn settle_attempt(&mut self, t: TrRef, outcome: Outcome, now: i64) {
        match outcome {
            Outcome::Success { result, value } => {
                // The commit proper: the result pointer, created once (first wins). A
                // mapped task run's is in its batched record (see `tables::batches`).
                let run = &self.runs[t.run];
                if !run.nodes[t.node as usize].mapped {
                    let task = &run.flow.spec.tasks[t.node as usize].name;
                    let op = tables::results::create(&run.id.0, task, -1, &result);
                    self.write(op);
                }
                let ended_us = self.us(now);
                let tr = self.tr_mut(t);
                tr.state = TaskState::Completed;
                tr.result = Some(Box::new(result.into()));
                tr.value = Some(Arc::new(value));
                tr.ended_ms = now;
                tr.us.ended_us = ended_us;
                tr.deadline_ms = 0;
                if let Some(a) = tr.attempts.last_mut() {
                    a.ended_ms = now;
                }
                self.cache_record(t, now);
                self.finish_tr(t, now);
            }
            Outcome::Failure { error, retryable } => self.fail_attempt(t, error, retryable, now),
        }
    }

    /// Fails the current attempt: retried if the policy allows, else the task run fails.
    pub(super) fn fail_attempt(&mut self, t: TrRef, error: String, retryable: bool, now: i64) {
        let policy = self.runs[t.run].flow.task(t.node as usize).retries.clone();
        let seed = self.jitter_seed(t);
        let ended_us = self.us(now);
        let tr = self.tr_mut(t);
        tr.failures += 1;
        tr.ended_ms = now;
        tr.us.ended_us = ended_us;
        tr.deadline_ms = 0;
        if let Some(a) = tr.attempts.last_mut() {
            a.ended_ms = now;
            a.error = error.clone();
        }
        tr.error = error;
        if retryable && tr.failures <= policy.count {
            self.stats.retries += 1;
            let tr = self.tr_mut(t);
            tr.state = TaskState::Retrying;
            let attempt = tr.attempt;
            let delay = policy.delay_before(attempt + 1, seed) as i64;
            self.mark_tr(t);
            self.timer(now + delay, Timer::Retry(t, attempt));
        } else {
            tr.state = TaskState::Failed;
            self.finish_tr(t, now);
        }
    }

    /// The attempt's worker is gone: dispatch the task run again as a new attempt.
    pub(super) fn lose(&mut self, t: TrRef, attempt: u32, why: &str, now: i64) {
        if !self.is_current_attempt(t, attempt) {
            return;
        }
        let max_lost = self.cfg.max_lost_attempts;
        let tr = self.tr_mut(t);
        tr.lost += 1;
        if let Some(a) = tr.attempts.last_mut() {
            a.ended_ms = now;
            a.error = why.to_string();
        }
        tr.worker = None;
        tr.deadline_ms = 0;
        if tr.lost > max_lost {
            tr.state = TaskState::Failed;
            tr.error = format!("{why}; lost {} attempts", tr.lost);
            tr.ended_ms = now;
            self.finish_tr(t, now);
        } else {
            tr.state = TaskState::Ready;
            tr.ready_since_ms = now;
            self.mark_tr(t);
            self.make_ready(t, now);
        }
    }

    /// Task run `t` is ready: queued for a worker, or, for a sub-flow, its child started.
    pub(super) fn make_ready(&mut self, t: TrRef, now: i64) {
        let ready_us = self.us(now);
        self.tr_mut(t).ready_at(ready_us);
        let run = &self.runs[t.run];
        if run.flow.task(t.node as usize).is_subflow() {
            self.start_child(t, now);
            return;
        }
        if self.ready_ahead(t) {
            return;
        }
        let run = &self.runs[t.run];
        let class = run.nodes[t.node as usize].class;
        let priority = run.priority;
        self.registry.classes[class].queue.push(priority, t);
    }

    /// A stable seed for the retry jitter of task run `t` (its run, task and index).
    pub(super) fn jitter_seed(&self, t: TrRef) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.runs[t.run].id.0.hash(&mut h);
        t.node.hash(&mut h);
        t.index.hash(&mut h);
        h.finish()
    }

    pub(super) fn tr_mut(&mut self, t: TrRef) -> &mut super::model::TaskRun {
        &mut self.runs[t.run].nodes[t.node as usize].runs[t.index as usize]
    }

    fn send_cancel(&mut self, t: TrRef, reason: &str) {
        let run = &self.runs[t.run];
        let node = &run.nodes[t.node as usize];
        let tr = &node.runs[t.index as usize];
        let Some(super::model::Runner::Worker(name)) = &tr.worker else {
            return;
        };
        let worker = WorkerId(name.to_string());
        let Some(w) = self.registry.workers.get(&worker) else {
            return;
        };
        let key = self.attempt_key(t, tr.attempt);
        let msg = SchedulerMessage {
            epoch: self.epoch,
            msg: Some(Msg::Cancel(baton_proto::Cancel {
                key,
                reason: reason.to_string(),
            })),
        };
        let session = w.session;
        self.outgoing.push(Outgoing {
            worker,
            session,
            msg,
        });
    }

    /// Cancels a run: its running attempts are cancelled on their workers.
    pub fn cancel_run(&mut self, run: &str, now: i64) -> Result<(), EngineError> {
        let slot = self.slot_of(run)?;
        if self.runs[slot].state.is_terminal() {
            return Ok(());
        }
        let children = self.running_children(slot);
        let nodes = self.runs[slot].nodes.len();
        for n in 0..nodes {
            let count = self.runs[slot].nodes[n].runs.len();
            for i in 0..count {
                let t = TrRef {
                    run: slot,
                    node: n as u32,
                    index: i as u32,
                };
                let state = self.tr_mut(t).state;
                if state.is_terminal() {
                    continue;
                }
                if matches!(state, TaskState::Assigned | TaskState::Running) {
                    self.send_cancel(t, "run cancelled");
                }
                let ended_us = self.us(now);
                let tr = self.tr_mut(t);
                tr.state = TaskState::Cancelled;
                tr.ended_ms = now;
                tr.us.ended_us = ended_us;
                if let Some(a) = tr.attempts.last_mut() {
                    if a.ended_ms == 0 {
                        a.ended_ms = now;
                        a.error = "cancelled".into();
                    }
                }
                self.runs[slot].nodes[n].done += 1;
                self.mark_tr(t);
            }
            let node = &mut self.runs[slot].nodes[n];
            if !node.state.is_terminal() {
                node.state = NodeState::Cancelled;
            }
        }
        let ended_us = self.us(now);
        let r = &mut self.runs[slot];
        r.open_nodes = 0;
        r.state = RunState::Cancelled;
        r.ended_ms = now;
        r.ended_us = ended_us;
        if r.started_ms == 0 {
            r.started_ms = now;
        }
        self.mark_run(slot);
        self.cancel_children(children, now);
        self.notify_parent(slot, now);
        Ok(())
    }

    /// Fires due timers (retries, timeouts, worker leases) and checks for unrunnable tasks.
    pub fn tick(&mut self, now: i64) {
        while let Some(Reverse((at, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, timer))) = self.timers.pop() else {
                break;
            };
            match timer {
                Timer::Retry(t, attempt) => {
                    let due = self
                        .runs
                        .get(t.run)
                        .and_then(|r| r.tr(t.node, t.index))
                        .is_some_and(|tr| tr.state == TaskState::Retrying && tr.attempt == attempt);
                    if due {
                        let tr = self.tr_mut(t);
                        tr.state = TaskState::Ready;
                        tr.ready_since_ms = now;
                        self.mark_tr(t);
                        self.make_ready(t, now);
                    }
                }
                Timer::Timeout(t, attempt) => {
                    if self.is_current_attempt(t, attempt) {
                        let ms = self.runs[t.run].flow.task(t.node as usize).timeout_ms;
                        self.stats.timeouts += 1;
                        self.send_cancel(t, "timed out");
                        let child = self.children.of(t).map(str::to_string);
                        self.fail_attempt(t, format!("timed out after {ms} ms"), true, now);
                        if let Some(child) = child {
                            self.cancel_children(vec![child], now);
                        }
                    }
                }
                Timer::WorkerLease(id, session) => self.worker_lease_expired(&id, session, now),
            }
        }
        self.fire_schedules(now);
        self.check_unrunnable(now);
    }
}
