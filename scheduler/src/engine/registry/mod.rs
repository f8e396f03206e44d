//! The worker registry: the workers the engine knows (their labels, resources and the
//! attempts holding them) and the classes of ready task runs (one ready queue per set of
//! labels, resources and tags). It decides which class goes next and which worker takes
//! it; the engine (dispatch.rs) does the assigning. No engine inside: tested on its own.

mod gpus;

pub use gpus::Gpu;
pub(super) use gpus::Gpus;

use super::model::TrRef;
use super::RunKey;
use baton_common::flow::ResourceSpec;
use baton_common::ids::WorkerId;
use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

/// Workers by id and the classes of ready task runs.
#[derive(Debug, Default)]
pub(super) struct Registry {
    pub workers: BTreeMap<WorkerId, WorkerSlot>,
    pub classes: Vec<Class>,
    class_index: HashMap<(Vec<String>, ResourceSpec, Vec<String>), usize>,
}

impl Registry {
    /// The class of task runs needing `labels` (sorted), `r` and `tags` (made once).
    pub fn class_for(&mut self, labels: &[String], r: &ResourceSpec, tags: &[String]) -> usize {
        let mut tags = tags.to_vec();
        tags.sort();
        tags.dedup();
        let key = (labels.to_vec(), r.clone(), tags);
        if let Some(&c) = self.class_index.get(&key) {
            return c;
        }
        let c = self.classes.len();
        self.classes.push(Class {
            labels: labels.to_vec(),
            resources: r.clone(),
            tags: key.2.clone().into(),
            queue: ReadyQueue::default(),
            unrunnable_since: 0,
            reason: String::new(),
        });
        self.class_index.insert(key, c);
        c
    }

    /// The class to dispatch next: the one whose head has the highest priority (the first
    /// such class on a tie), with the priority of the best other head, below which it must
    /// stop and let that one go. Blocked classes (no worker, no tag slot) and empty ones
    /// are passed over.
    pub fn next_class(&self, blocked: &[bool]) -> Option<(usize, Option<i32>)> {
        let mut best: Option<(i32, usize)> = None;
        let mut second: Option<i32> = None;
        for (c, class) in self.classes.iter().enumerate() {
            if blocked.get(c).copied().unwrap_or(false) {
                continue;
            }
            let Some(p) = class.queue.head_priority() else {
                continue;
            };
            match best {
                Some((bp, _)) if p <= bp => second = Some(second.map_or(p, |s| s.max(p))),
                _ => {
                    second = best.map(|(bp, _)| second.map_or(bp, |s| s.max(bp)));
                    best = Some((p, c));
                }
            }
        }
        best.map(|(_, c)| (c, second))
    }

    /// The worker to take class `c`'s next task run: connected, not draining, with its
    /// labels and room for its resources; the one with the most free slots (then the
    /// fewest attempts). `not` is a worker to pass over.
    pub fn pick(&self, c: usize, not: Option<&WorkerId>) -> Option<WorkerId> {
        let class = self.classes.get(c)?;
        self.workers
            .values()
            .filter(|w| {
                not != Some(&w.id)
                    && w.connected
                    && !w.draining
                    && w.has_labels(&class.labels)
                    && w.fits(&class.resources)
            })
            .max_by_key(|w| (w.free.slots, Reverse(w.attempts.len())))
            .map(|w| w.id.clone())
    }

    /// Whether a worker holds an attempt of run `key`.
    pub fn holds_run(&self, key: RunKey) -> bool {
        self.workers
            .values()
            .any(|w| w.attempts.keys().any(|(t, _)| t.run == key))
    }
}

/// A worker as the engine sees it.
#[derive(Debug)]
pub(super) struct WorkerSlot {
    pub id: WorkerId,
    /// Its id, shared by the task runs it runs.
    pub name: Arc<str>,
    pub session: u64,
    pub labels: Vec<String>,
    pub total: ResourceSpec,
    pub free: ResourceSpec,
    /// Attempts holding resources on this worker.
    pub attempts: HashMap<(TrRef, u32), ResourceSpec>,
    /// Its GPUs and the attempts pinned to them (`total.gpus` counts them).
    pub gpus: Gpus,
    pub connected: bool,
    pub draining: bool,
    pub last_seen_ms: i64,
    pub connected_ms: i64,
    pub address: String,
}

impl WorkerSlot {
    pub fn has_labels(&self, labels: &[String]) -> bool {
        labels.iter().all(|l| self.labels.binary_search(l).is_ok())
    }

    pub fn fits(&self, r: &ResourceSpec) -> bool {
        self.free.slots >= r.slots
            && self.free.memory_mb >= r.memory_mb
            && (r.gpus == 0 || self.gpus.free_fitting(r.gpu_memory_mb) >= r.gpus as usize)
    }

    pub fn could_ever_fit(&self, r: &ResourceSpec) -> bool {
        self.total.slots >= r.slots
            && self.total.memory_mb >= r.memory_mb
            && (r.gpus == 0 || self.gpus.fitting(r.gpu_memory_mb) >= r.gpus as usize)
    }

    /// Takes `r` for attempt `key` and pins its GPUs (the devices in `prefer` first, when
    /// free); returns the pinned device indices. The caller has checked [`Self::fits`].
    pub fn reserve(&mut self, key: (TrRef, u32), r: &ResourceSpec, prefer: &[u32]) -> Vec<u32> {
        let pinned = self
            .gpus
            .pin(key, r.gpus, r.gpu_memory_mb, prefer)
            .unwrap_or_default();
        self.free.slots = self.free.slots.saturating_sub(r.slots);
        self.free.gpus = self.gpus.free().count() as u32;
        self.free.memory_mb = self.free.memory_mb.saturating_sub(r.memory_mb);
        self.attempts.insert(key, r.clone());
        pinned
    }

    /// Gives back what attempt `key` holds; false when it holds nothing here.
    pub fn release(&mut self, key: (TrRef, u32)) -> bool {
        let Some(r) = self.attempts.remove(&key) else {
            return false;
        };
        self.gpus.unpin(key);
        self.free.slots = (self.free.slots + r.slots).min(self.total.slots);
        self.free.gpus = self.gpus.free().count() as u32;
        self.free.memory_mb = (self.free.memory_mb + r.memory_mb).min(self.total.memory_mb);
        true
    }
}

/// Ready task runs of one class: first in, first out within a priority, higher priorities
/// first.
#[derive(Debug, Default)]
pub(super) struct ReadyQueue {
    by_priority: BTreeMap<Reverse<i32>, VecDeque<TrRef>>,
    len: usize,
}

impl ReadyQueue {
    pub fn push(&mut self, priority: i32, t: TrRef) {
        self.by_priority
            .entry(Reverse(priority))
            .or_default()
            .push_back(t);
        self.len += 1;
    }

    pub fn pop(&mut self) -> Option<TrRef> {
        let mut entry = self.by_priority.first_entry()?;
        let t = entry.get_mut().pop_front();
        if entry.get().is_empty() {
            entry.remove();
        }
        if t.is_some() {
            self.len -= 1;
        }
        t
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// The priority of the task run `pop` would return.
    pub fn head_priority(&self) -> Option<i32> {
        self.by_priority.keys().next().map(|p| p.0)
    }

    /// Takes every queued task run with its priority, in queue order.
    pub fn drain(&mut self) -> Vec<(i32, TrRef)> {
        self.len = 0;
        std::mem::take(&mut self.by_priority)
            .into_iter()
            .flat_map(|(p, q)| q.into_iter().map(move |t| (p.0, t)))
            .collect()
    }
}

/// Task runs that need the same labels, resources and tags, waiting in order.
#[derive(Debug)]
pub(super) struct Class {
    pub labels: Vec<String>,
    pub resources: ResourceSpec,
    /// Tags, sorted: concurrency limits on them bound the class's attempts.
    pub tags: Arc<[String]>,
    pub queue: ReadyQueue,
    /// When the class was found to have no worker able to run it (0: it has one).
    pub unrunnable_since: i64,
    pub reason: String,
}

#[cfg(test)]
mod tests;
