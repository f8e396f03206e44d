//! Workers and dispatch: label and resource matching, credit (free resources) per worker,
//! ready queues per class of requirement (by run priority), concurrency limits on tags,
//! worker sessions coming and going.

use super::model::{AttemptInfo, Runner, TrRef};
use super::registry::{Gpu, Gpus, WorkerSlot};
use super::{Engine, Outgoing, Timer};
use baton_common::flow::ResourceSpec;
use baton_common::ids::{AttemptKey, WorkerId};
use baton_common::state::{RunState, TaskState};
use baton_proto::{scheduler_message::Msg, SchedulerMessage};
use std::collections::HashMap;

/// What a worker says of itself when it connects.
#[derive(Clone, Debug)]
pub struct WorkerRegistration {
    pub id: WorkerId,
    pub labels: Vec<String>,
    pub resources: ResourceSpec,
    /// Attempts it is still running (or finished without an acknowledgement).
    pub running: Vec<AttemptKey>,
    pub address: String,
    /// Its GPUs (`resources.gpus` counts them; missing ones are known by index only).
    pub devices: Vec<Gpu>,
    /// The GPUs that attempts in `running` hold.
    pub gpus_held: HashMap<AttemptKey, Vec<u32>>,
}

impl Engine {
    /// Assigns ready task runs to workers with matching labels and free resources, higher
    /// priorities first across classes, within the concurrency limits of their tags.
    pub fn dispatch(&mut self, now: i64) {
        self.drop_ahead();
        let mut blocked = vec![false; self.registry.classes.len()];
        while let Some((c, floor)) = self.registry.next_class(&blocked) {
            if !self.dispatch_class(c, floor, now) {
                blocked[c] = true;
            }
        }
    }

    /// Dispatches class `c` while its head's priority is at least `floor`; false when it
    /// stopped for want of a worker or a tag slot.
    fn dispatch_class(&mut self, c: usize, floor: Option<i32>, now: i64) -> bool {
        loop {
            let Some(head) = self.registry.classes[c].queue.head_priority() else {
                return true;
            };
            if floor.is_some_and(|f| head < f) {
                return true;
            }
            if !self.tags_free(c) {
                return false;
            }
            let Some(worker) = self.registry.pick(c, None) else {
                return false;
            };
            let Some(t) = self.registry.classes[c].queue.pop() else {
                return true;
            };
            let ok = self
                .runs
                .get(t.run)
                .and_then(|r| r.tr(t.node, t.index))
                .is_some_and(|tr| tr.state == TaskState::Ready);
            if ok {
                self.assign(t, &worker, now);
                self.fault_duplicate(c, t, &worker, now);
            }
        }
    }

    /// Fault injection for tests: dispatches a named task's first attempt a second time,
    /// to another worker, as a new attempt while the first still runs.
    fn fault_duplicate(&mut self, c: usize, t: TrRef, first: &WorkerId, now: i64) {
        if !cfg!(feature = "faults") {
            return;
        }
        let Some(name) = self.cfg.fault_duplicate_dispatch.as_deref() else {
            return;
        };
        let run = &self.runs[t.run];
        if run.flow.spec.tasks[t.node as usize].name != name
            || run.tr(t.node, t.index).is_none_or(|tr| tr.attempt != 1)
        {
            return;
        }
        if !self.tags_free(c) {
            return;
        }
        if let Some(other) = self.registry.pick(c, Some(first)) {
            tracing::warn!(task = name, worker = %other, "fault injection: duplicate dispatch");
            self.assign(t, &other, now);
        }
    }

    fn assign(&mut self, t: TrRef, worker: &WorkerId, now: i64) {
        let successors = self.successors(t);
        let epoch = self.epoch;
        let assigned_us = self.us(now);
        let Some(w) = self.registry.workers.get_mut(worker) else {
            return;
        };
        let name = w.name.clone();
        let run = &mut self.runs[t.run];
        let flow = run.flow.clone();
        let task = flow.task(t.node as usize);
        let node = &mut run.nodes[t.node as usize];
        let map_index = if node.mapped { t.index as i64 } else { -1 };
        let tr = &mut node.runs[t.index as usize];
        tr.attempt += 1;
        tr.state = TaskState::Assigned;
        tr.worker = Some(Runner::Worker(name.clone()));
        tr.started_ms = now;
        tr.us.assigned_us = assigned_us;
        let waited_us = if tr.ready_us > 0 {
            assigned_us - tr.ready_us
        } else {
            0
        };
        tr.us.started_us = 0;
        tr.us.ended_us = 0;
        tr.error.clear();
        // Exactly one more: a first push would reserve room for four (288 bytes a task run).
        let number = tr.attempt;
        tr.attempts.reserve_exact(1);
        tr.attempts.push(AttemptInfo {
            number,
            worker: name,
            started_ms: now,
            ended_ms: 0,
            error: String::new(),
        });
        let attempt = tr.attempt;
        let inputs = tr
            .inputs
            .as_ref()
            .map_or_else(|| "{}".to_string(), |i| i.json_for(t.index as usize));
        if task.timeout_ms > 0 {
            tr.deadline_ms = now + task.timeout_ms as i64;
        }
        let pinned = w.reserve((t, attempt), &task.resources, &[]);
        let devices = pinned
            .iter()
            .filter_map(|&i| w.gpus.device(i).cloned())
            .collect();
        let session = w.session;
        let class = node.class;
        let msg = SchedulerMessage {
            epoch,
            msg: Some(Msg::Assign(baton_proto::Assign {
                key: Some(baton_proto::AttemptKey {
                    run_id: run.id.0.clone(),
                    task: task.name.clone(),
                    map_index,
                    attempt,
                }),
                task_spec: flow.kind_json[t.node as usize].to_string(),
                inputs,
                timeout_ms: task.timeout_ms,
                resources: Some(baton_proto::Resources {
                    slots: task.resources.slots,
                    gpus: task.resources.gpus,
                    memory_mb: task.resources.memory_mb,
                    devices,
                    gpu_memory_mb: task.resources.gpu_memory_mb,
                }),
                traceparent: String::new(),
                scheduled_start_ms: run.scheduled_start_ms,
                successors,
            })),
        };
        if run.state == RunState::Pending {
            run.state = RunState::Running;
            run.started_ms = now;
            self.mark_run(t.run);
        }
        if task.timeout_ms > 0 {
            self.timer(now + task.timeout_ms as i64, Timer::Timeout(t, attempt));
        }
        self.outgoing.push(Outgoing {
            worker: worker.clone(),
            session,
            msg,
        });
        self.hold(t, attempt, class);
        self.mark_tr(t);
        self.stats.dispatch_waits_us.push(waited_us.max(0));
    }

    /// A worker opened a session: adopt the attempts it reports, lose those it forgot.
    pub fn worker_connected(&mut self, reg: WorkerRegistration, session: u64, now: i64) {
        let mut labels = reg.labels.clone();
        labels.sort();
        labels.dedup();
        let old = self.registry.workers.remove(&reg.id);
        let name: std::sync::Arc<str> = std::sync::Arc::from(reg.id.0.as_str());
        let gpus = Gpus::new(reg.devices.clone(), reg.resources.gpus);
        let mut total = reg.resources.clone();
        total.gpus = gpus.len() as u32;
        let mut slot = WorkerSlot {
            id: reg.id.clone(),
            name: name.clone(),
            session,
            labels,
            free: total.clone(),
            total,
            gpus,
            attempts: HashMap::new(),
            connected: true,
            draining: false,
            last_seen_ms: now,
            connected_ms: now,
            address: reg.address.clone(),
        };
        let mut unknown = Vec::new();
        let mut adopted = Vec::new();
        for key in &reg.running {
            match self.locate(key) {
                Some(t) if self.is_current_attempt(t, key.attempt) => {
                    let r = self.runs[t.run]
                        .flow
                        .task(t.node as usize)
                        .resources
                        .clone();
                    let held = reg.gpus_held.get(key).map_or(&[][..], Vec::as_slice);
                    slot.reserve((t, key.attempt), &r, held);
                    let class = self.runs[t.run].nodes[t.node as usize].class;
                    self.hold(t, key.attempt, class);
                    adopted.push(t);
                }
                _ => unknown.push(baton_proto::AttemptKey::from(key)),
            }
        }
        for &t in &adopted {
            let tr = &mut self.runs[t.run].nodes[t.node as usize].runs[t.index as usize];
            tr.worker = Some(Runner::Worker(name.clone()));
            if tr.state == TaskState::Assigned {
                tr.state = TaskState::Running;
            }
        }
        if !adopted.is_empty() {
            tracing::info!(worker = %reg.id, adopted = adopted.len(), "adopted running attempts");
        }
        if let Some(old) = old {
            for (t, attempt) in old.attempts.keys().copied().collect::<Vec<_>>() {
                if !slot.attempts.contains_key(&(t, attempt)) {
                    self.unhold((t, attempt));
                    self.lose(
                        t,
                        attempt,
                        &format!("worker `{}` restarted without it", reg.id),
                        now,
                    );
                }
            }
        }
        let epoch = self.epoch;
        self.outgoing.push(Outgoing {
            worker: reg.id.clone(),
            session,
            msg: SchedulerMessage {
                epoch,
                msg: Some(Msg::Welcome(baton_proto::Welcome {
                    result_store: self.cfg.result_store.clone(),
                    heartbeat_interval_ms: self.cfg.heartbeat_interval_ms,
                    unknown,
                })),
            },
        });
        self.registry.workers.insert(reg.id, slot);
    }

    /// A worker's session ended; its attempts are lost when its lease lapses.
    pub fn worker_disconnected(&mut self, id: &WorkerId, session: u64, now: i64) {
        let lease = self.cfg.worker_lease_ms as i64;
        let Some(w) = self.registry.workers.get_mut(id) else {
            return;
        };
        if w.session != session {
            return;
        }
        w.connected = false;
        if w.attempts.is_empty() {
            self.registry.workers.remove(id);
            return;
        }
        let at = (w.last_seen_ms + lease).max(now);
        self.timer(at, Timer::WorkerLease(id.clone(), session));
    }

    /// A message arrived from a worker's session.
    pub fn worker_seen(&mut self, id: &WorkerId, session: u64, now: i64) {
        if let Some(w) = self.registry.workers.get_mut(id) {
            if w.session == session {
                w.last_seen_ms = now;
            }
        }
    }

    /// A worker takes no more tasks.
    pub fn worker_draining(&mut self, id: &WorkerId, session: u64) {
        if let Some(w) = self.registry.workers.get_mut(id) {
            if w.session == session {
                w.draining = true;
            }
        }
    }

    pub(super) fn worker_lease_expired(&mut self, id: &WorkerId, session: u64, now: i64) {
        let expired = self
            .registry
            .workers
            .get(id)
            .is_some_and(|w| w.session == session && !w.connected);
        if !expired {
            return;
        }
        if let Some(w) = self.registry.workers.remove(id) {
            tracing::warn!(worker = %id, attempts = w.attempts.len(), "worker lease lapsed");
            for (t, attempt) in w.attempts.keys().copied() {
                self.unhold((t, attempt));
                self.lose(t, attempt, &format!("worker `{id}` was lost"), now);
            }
        }
    }

    /// Fails the task runs that no connected worker could ever run, after the timeout.
    pub(super) fn check_unrunnable(&mut self, now: i64) {
        for c in 0..self.registry.classes.len() {
            let class = &self.registry.classes[c];
            if class.queue.is_empty() {
                self.registry.classes[c].unrunnable_since = 0;
                continue;
            }
            let runnable = self.registry.workers.values().any(|w| {
                w.connected
                    && !w.draining
                    && w.has_labels(&class.labels)
                    && w.could_ever_fit(&class.resources)
            });
            let class = &mut self.registry.classes[c];
            if runnable {
                class.unrunnable_since = 0;
                class.reason.clear();
                continue;
            }
            if class.unrunnable_since == 0 {
                class.unrunnable_since = now;
                let r = &class.resources;
                let gpus = match (r.gpus, r.gpu_memory_mb) {
                    (0, _) => String::new(),
                    (n, 0) => format!(", {n} GPU(s)"),
                    (n, m) => format!(", {n} GPU(s) of at least {m} MB each"),
                };
                class.reason = format!(
                    "no connected worker has labels [{}] and resources of {} slot(s){gpus}, {} MB",
                    class.labels.join(", "),
                    r.slots,
                    r.memory_mb
                );
                tracing::warn!(reason = %class.reason, "tasks cannot be placed");
            }
            let timeout = self.cfg.unrunnable_timeout_ms as i64;
            if now - class.unrunnable_since >= timeout {
                let error = format!(
                    "unrunnable: {} (waited {} ms)",
                    class.reason, self.cfg.unrunnable_timeout_ms
                );
                let since = class.unrunnable_since;
                let queued = class.queue.drain();
                for (priority, t) in queued {
                    // A queued task run of a run that has left memory is simply dropped.
                    let Some(tr) = self
                        .runs
                        .get_mut(t.run)
                        .and_then(|r| r.nodes.get_mut(t.node as usize))
                        .and_then(|n| n.runs.get_mut(t.index as usize))
                    else {
                        continue;
                    };
                    if tr.state != TaskState::Ready {
                        continue;
                    }
                    // Each task run waits the whole timeout from when it became ready.
                    if now - tr.ready_since_ms.max(since) < timeout {
                        self.registry.classes[c].queue.push(priority, t);
                        continue;
                    }
                    tr.state = TaskState::Failed;
                    tr.error = error.clone();
                    tr.ended_ms = now;
                    self.finish_tr(t, now);
                }
            }
        }
    }

    /// Why a ready task run of `class` waits, if it is stuck.
    pub(super) fn class_reason(&self, class: usize) -> String {
        let Some(c) = self.registry.classes.get(class) else {
            return String::new();
        };
        if !c.reason.is_empty() {
            return c.reason.clone();
        }
        self.limit_reason(class)
    }
}
