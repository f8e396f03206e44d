//! Pipelined commits on etcd ([`crate::store::StateStore::submit`]): the leader's steps are
//! queued to one committer task, which writes them in order. The steps submitted while a
//! write is in flight go together as one batch, a key written by several of them written
//! once with its last value. Up to [`IN_FLIGHT`] batches are written at once when they
//! touch distinct keys (a batch that writes a key of one in flight waits for it), so that
//! a step's commit does not wait for the whole write before it; outcomes are answered in
//! order. So the engine never waits for etcd between steps, and etcd gets few large
//! batches (split into parallel transactions) rather than many small ones. A failed write
//! fails it and every step queued after it, written or not: a later step written without
//! an earlier one is what a leader that dies during a write leaves anyway (a batch's
//! transactions land in any order), and the next leader recovers from it.

use super::election::Won;
use super::lease::Lease;
use super::{commit_ops, Shared};
use crate::store::{Epoch, Op, StoreError};
use futures::stream::{FuturesOrdered, StreamExt};
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// One submitted step.
pub struct Queued {
    pub ops: Vec<Op>,
    pub done: Done,
}

/// Where a step's outcome is answered.
pub type Done = oneshot::Sender<Result<(), StoreError>>;

/// Most operations written in one batch (more wait for the next).
const MAX_BATCH_OPS: usize = 200_000;
/// Batches written at once, at most.
pub const IN_FLIGHT: usize = 2;

/// The keys a batch writes, as hashes (two keys with one hash only make two batches wait
/// for each other); `None` for a batch with a prefix delete, which waits for every other.
type Touched = Option<HashSet<u64>>;

/// Writes what is queued, in order, until leadership is lost or every sender has gone.
pub async fn run(
    shared: Shared,
    won: Won,
    lease: Arc<Lease>,
    epoch: Epoch,
    mut rx: mpsc::UnboundedReceiver<Queued>,
) {
    let hasher = RandomState::new();
    let mut failed: Option<StoreError> = None;
    // Merged batches not yet started, and those being written (oldest first).
    let mut waiting: VecDeque<(Touched, Vec<Op>, Vec<Done>)> = VecDeque::new();
    let mut writing: VecDeque<(Touched, Vec<Done>)> = VecDeque::new();
    let mut commits = FuturesOrdered::new();
    let mut open = true;
    loop {
        while writing.len() < IN_FLIGHT {
            let Some((touched, _, _)) = waiting.front() else {
                break;
            };
            if !writing.iter().all(|(t, _)| apart(t, touched)) {
                break;
            }
            let Some((touched, ops, dones)) = waiting.pop_front() else {
                break;
            };
            let (shared, won, lease) = (&shared, &won, &lease);
            let earlier = failed.as_ref().map(again);
            commits.push_back(async move {
                match earlier {
                    Some(e) => Err(e),
                    None => commit_ops(shared, won, lease, epoch, ops).await,
                }
            });
            writing.push_back((touched, dones));
        }
        if !open && writing.is_empty() && waiting.is_empty() {
            return;
        }
        tokio::select! {
            Some(result) = commits.next(), if !writing.is_empty() => {
                let Some((_, dones)) = writing.pop_front() else {
                    continue;
                };
                let result = match (&failed, result) {
                    (Some(e), _) => Err(again(e)),
                    (None, r) => r,
                };
                if let Err(e) = &result {
                    failed.get_or_insert_with(|| again(e));
                }
                for done in dones {
                    let _ = done.send(match &result {
                        Ok(()) => Ok(()),
                        Err(e) => Err(again(e)),
                    });
                }
            }
            got = rx.recv(), if open && waiting.is_empty() => {
                let Some(first) = got else {
                    open = false;
                    continue;
                };
                if let Some(e) = &failed {
                    let _ = first.done.send(Err(again(e)));
                    continue;
                }
                let mut steps = vec![first];
                let mut ops = steps[0].ops.len();
                while ops < MAX_BATCH_OPS {
                    match rx.try_recv() {
                        Ok(q) => {
                            ops += q.ops.len();
                            steps.push(q);
                        }
                        Err(_) => break,
                    }
                }
                waiting.extend(
                    merge(steps)
                        .into_iter()
                        .map(|(ops, dones)| (touched(&hasher, &ops), ops, dones)),
                );
            }
        }
    }
}

/// See [`Touched`].
fn touched(hasher: &RandomState, ops: &[Op]) -> Touched {
    ops.iter()
        .map(|op| match op {
            Op::DeletePrefix { .. } => None,
            op => Some(hasher.hash_one(op.key())),
        })
        .collect()
}

/// Whether two batches may be written at once.
fn apart(a: &Touched, b: &Touched) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.is_disjoint(b),
        _ => false,
    }
}

/// The same error again, for each step that shares it.
fn again(e: &StoreError) -> StoreError {
    match e {
        StoreError::Fenced { ours, current } => StoreError::Fenced {
            ours: *ours,
            current: *current,
        },
        StoreError::Conflict(k) => StoreError::Conflict(k.clone()),
        StoreError::Locked(s) => StoreError::Locked(s.clone()),
        StoreError::Corrupt(s) => StoreError::Corrupt(s.clone()),
        StoreError::Io(e) => StoreError::Unavailable(e.to_string()),
        StoreError::Unavailable(s) => StoreError::Unavailable(s.clone()),
    }
}

/// Merges consecutive steps into batches, in order: a key put or deleted again by a later
/// step keeps only its last write (a create followed by a put stays a create, with the
/// put's value). Where a later step's write cannot replace an earlier one (a delete after
/// a create, anything under a prefix deleted before, a prefix delete over a create), a new
/// batch starts, so that each batch touches each key once and its transactions may land in
/// any order.
pub fn merge(steps: Vec<Queued>) -> Vec<(Vec<Op>, Vec<Done>)> {
    let mut out = Vec::new();
    let mut batch = Batch::default();
    let mut dones = Vec::new();
    for step in steps {
        if !batch.takes(&step.ops) {
            if !dones.is_empty() {
                out.push((batch.finish(), std::mem::take(&mut dones)));
                batch = Batch::default();
            }
            if !batch.takes(&step.ops) {
                // A step that writes a key twice goes as it is (written in order).
                out.push((step.ops, vec![step.done]));
                continue;
            }
        }
        batch.add(step.ops);
        dones.push(step.done);
    }
    if !dones.is_empty() {
        out.push((batch.finish(), dones));
    }
    out
}

/// One batch being merged: its operations (`None` where a later one replaced it) and where
/// each key's operation is.
#[derive(Default)]
struct Batch {
    ops: Vec<Option<Op>>,
    at: HashMap<String, usize>,
    prefixes: Vec<String>,
}

impl Batch {
    /// Whether `ops` (one step) can join this batch: it touches each key once, and what it
    /// writes can replace what the batch holds.
    fn takes(&self, ops: &[Op]) -> bool {
        let mut seen = std::collections::HashSet::new();
        let own: Vec<&str> = ops
            .iter()
            .filter(|op| matches!(op, Op::DeletePrefix { .. }))
            .map(Op::key)
            .collect();
        ops.iter().all(|op| {
            let key = op.key();
            let under = |p: &str| key.starts_with(p) && key != p;
            if !seen.insert(key)
                || self.prefixes.iter().any(|p| key.starts_with(p.as_str()))
                || own.iter().any(|p| under(p))
            {
                return false;
            }
            match op {
                Op::DeletePrefix { prefix, .. } => !self.at.iter().any(|(k, &i)| {
                    k.starts_with(prefix.as_str())
                        && !matches!(self.ops[i], Some(Op::Put { .. } | Op::Delete { .. }))
                }),
                Op::Delete { .. } => !matches!(
                    self.at.get(key).map(|&i| &self.ops[i]),
                    Some(Some(Op::Create { .. }))
                ),
                // A create must check the key as it was before this batch.
                Op::Create { .. } => !self.at.contains_key(key),
                Op::Put { .. } => true,
            }
        })
    }

    fn add(&mut self, ops: Vec<Op>) {
        for op in ops {
            match op {
                Op::DeletePrefix { prefix, keys } => {
                    // Earlier puts and deletes under it are superseded.
                    let under: Vec<String> = self
                        .at
                        .keys()
                        .filter(|k| k.starts_with(prefix.as_str()))
                        .cloned()
                        .collect();
                    for k in under {
                        if let Some(i) = self.at.remove(&k) {
                            self.ops[i] = None;
                        }
                    }
                    self.prefixes.push(prefix.clone());
                    self.ops.push(Some(Op::DeletePrefix { prefix, keys }));
                }
                op => {
                    let key = op.key().to_string();
                    let merged = match (self.at.get(&key).map(|&i| self.ops[i].take()), op) {
                        (Some(Some(Op::Create { .. })), Op::Put { key, value }) => {
                            Op::Create { key, value }
                        }
                        (_, op) => op,
                    };
                    if let Some(&i) = self.at.get(&key) {
                        self.ops[i] = Some(merged);
                    } else {
                        self.at.insert(key, self.ops.len());
                        self.ops.push(Some(merged));
                    }
                }
            }
        }
    }

    fn finish(self) -> Vec<Op> {
        self.ops.into_iter().flatten().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str, v: &str) -> Op {
        Op::Put {
            key: k.into(),
            value: v.into(),
        }
    }
    fn create(k: &str, v: &str) -> Op {
        Op::Create {
            key: k.into(),
            value: v.into(),
        }
    }
    fn del(k: &str) -> Op {
        Op::Delete { key: k.into() }
    }
    fn prefix(p: &str) -> Op {
        Op::DeletePrefix {
            prefix: p.into(),
            keys: Vec::new(),
        }
    }
    fn merged(steps: Vec<Vec<Op>>) -> Vec<(Vec<Op>, usize)> {
        let queued = steps
            .into_iter()
            .map(|ops| Queued {
                ops,
                done: oneshot::channel().0,
            })
            .collect();
        merge(queued)
            .into_iter()
            .map(|(ops, dones)| (ops, dones.len()))
            .collect()
    }

    #[test]
    fn later_writes_replace_earlier_ones_in_one_batch() {
        let got = merged(vec![
            vec![put("tr/r/t/0", "running"), put("tr/r/t/1", "running")],
            vec![put("tr/r/t/0", "done"), create("res/r/t/0", "p")],
            vec![put("runs/r", "x"), del("tr/r/t/1")],
            vec![put("res/r/t/0", "p2")],
        ]);
        assert_eq!(
            got,
            vec![(
                vec![
                    put("tr/r/t/0", "done"),
                    del("tr/r/t/1"),
                    create("res/r/t/0", "p2"),
                    put("runs/r", "x"),
                ],
                4
            )]
        );
    }

    #[test]
    fn only_batches_of_distinct_keys_are_written_at_once() {
        let h = RandomState::new();
        let a = touched(&h, &[put("trb/r/01", "x"), put("tr/r/t", "y")]);
        let b = touched(&h, &[put("trb/r/02", "x"), create("res/r/u", "p")]);
        let c = touched(&h, &[put("tr/r/t", "z")]);
        let d = touched(&h, &[put("trb/q/01", "x"), prefix("tr/q/")]);
        assert!(apart(&a, &b) && apart(&b, &a));
        assert!(!apart(&a, &c), "both write tr/r/t");
        assert!(apart(&b, &c));
        assert!(d.is_none(), "a prefix delete waits for every other batch");
        assert!(!apart(&b, &d) && !apart(&d, &b));
    }

    #[test]
    fn writes_that_cannot_be_merged_start_a_new_batch_in_order() {
        // A delete after a create: the create's check must run, then the delete.
        let got = merged(vec![vec![create("res/r/t/0", "p")], vec![del("res/r/t/0")]]);
        assert_eq!(
            got,
            vec![
                (vec![create("res/r/t/0", "p")], 1),
                (vec![del("res/r/t/0")], 1)
            ]
        );
        // A prefix delete supersedes puts under it, but not a create; a write under a
        // prefix deleted before waits for it.
        let got = merged(vec![
            vec![put("tr/r/t/0", "a"), put("tr/q/t/0", "b")],
            vec![prefix("tr/r/")],
            vec![put("tr/r/t/0", "again")],
        ]);
        assert_eq!(
            got,
            vec![
                (vec![put("tr/q/t/0", "b"), prefix("tr/r/")], 2),
                (vec![put("tr/r/t/0", "again")], 1)
            ]
        );
        let got = merged(vec![vec![create("res/r/t/0", "p")], vec![prefix("res/r/")]]);
        assert_eq!(got.len(), 2);
        // A create after a write of its key must conflict on its own.
        for first in [create("k", "1"), put("k", "1"), del("k")] {
            let got = merged(vec![vec![first], vec![create("k", "2")]]);
            assert_eq!(got.len(), 2);
        }
    }
}
