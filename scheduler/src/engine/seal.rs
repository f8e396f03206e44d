//! Sealing a finished run: it leaves memory at once, consumed into its archive (one task run
//! at a time, so that a run of a million task runs is never held twice), and a small
//! tombstone stays until the host has written the archive; then the run's live records are
//! deleted from the state store (see [`Engine::archived`]).

use super::model::Run;
use super::tables;
use super::view::{pending_row, row};
use super::{Engine, MAX_FINISHED_SUMMARIES};
use baton_proto as pb;
use std::collections::HashMap;
use std::sync::Arc;

/// What is left of a sealed run until its archive is written.
#[derive(Debug)]
pub(super) struct Tombstone {
    summary: pb::FlowRun,
    tasks: Vec<TaskCount>,
    /// Batches of its mapped task runs' records written.
    batches: u64,
}

/// A finished run out of memory, to be encoded as its archive.
pub struct Sealed {
    run: Run,
    summary: pb::FlowRun,
    children: HashMap<(u32, u32), Arc<str>>,
}

impl Sealed {
    /// The archive (an encoded `RunArchive`), consuming the run one task run at a time (so
    /// that a run of a million task runs is never held twice), calling `freed` after every
    /// `every` task runs.
    pub fn encode(self, every: usize, mut freed: impl FnMut()) -> Vec<u8> {
        let Sealed {
            mut run,
            summary,
            children,
        } = self;
        let id = run.id.0.clone();
        let mut buf = Vec::new();
        prost::encoding::message::encode(1, &summary, &mut buf);
        for (i, node) in std::mem::take(&mut run.nodes).into_iter().enumerate() {
            let task = &run.flow.task(i).name;
            if node.runs.is_empty() {
                prost::encoding::message::encode(2, &pending_row(&id, task, &node), &mut buf);
                continue;
            }
            // Each task run's heap is freed as soon as its row is written.
            for (j, tr) in node.runs.into_iter().enumerate() {
                let child = children.get(&(i as u32, j as u32)).map(|c| &**c);
                let r = row(&id, task, node.mapped, j, &tr, true, child);
                prost::encoding::message::encode(2, &r, &mut buf);
                if (j + 1) % every == 0 {
                    freed();
                }
            }
        }
        buf
    }
}

/// A task of a run, whether it is mapped, and how many task runs it has.
pub(super) type TaskCount = (String, bool, usize);

/// A run's tasks and their task-run counts: what its live records are.
pub(super) fn task_counts(run: &Run) -> Vec<TaskCount> {
    run.nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (run.flow.task(i).name.clone(), n.mapped, n.runs.len()))
        .collect()
}

impl Engine {
    /// Takes a finished run out of memory and returns its archive (an encoded `RunArchive`)
    /// for the host to write; the host then calls [`Engine::archived`]. `None` when the run
    /// is not a finished run in memory, or a worker still holds one of its attempts (a
    /// cancelled attempt keeps its resources until its worker gives it back): the run then
    /// stays, and is archived the slow way ([`Engine::archive_bytes`]).
    pub fn seal(&mut self, id: &str) -> Option<Vec<u8>> {
        self.seal_with(id, usize::MAX, || {})
    }

    /// [`Engine::seal`], calling `freed` after every `every` task runs consumed (the host
    /// gives the freed memory back to the system there, so that the archive's growth is
    /// not on top of all the task runs' memory).
    pub fn seal_with(&mut self, id: &str, every: usize, freed: impl FnMut()) -> Option<Vec<u8>> {
        Some(self.seal_out(id)?.encode(every, freed))
    }

    /// Takes a finished run out of memory, leaving its tombstone, for the host to encode
    /// ([`Sealed::encode`], off the engine's thread: a large run takes a while) and write;
    /// `None` as for [`Engine::seal`].
    pub fn seal_out(&mut self, id: &str) -> Option<Sealed> {
        let key = self.runs.key_of(id)?;
        if !self.runs[key].state.is_terminal() || self.holds_attempts_of(key) {
            return None;
        }
        let (run, summary, children) = self.take_out(key)?;
        self.tombstones.insert(
            id.to_string(),
            Tombstone {
                summary: summary.clone(),
                tasks: task_counts(&run),
                batches: run.batch_seq,
            },
        );
        Some(Sealed {
            run,
            summary,
            children,
        })
    }

    /// Whether a run's archive is being written after [`Engine::seal`].
    pub fn is_sealed(&self, id: &str) -> bool {
        self.tombstones.contains_key(id)
    }

    /// The archive of a sealed run was written: delete its live records.
    pub(super) fn archived_sealed(&mut self, id: &str) -> bool {
        let Some(t) = self.tombstones.remove(id) else {
            return false;
        };
        self.keep_summary(&t.summary);
        self.delete_live_records(id, &t.tasks, t.batches);
        true
    }

    /// Deletes a finished run's live records (its record, its task runs' records, batches
    /// and result pointers) once its archive holds them: range deletes where the store has
    /// them (so that archiving a 100,000-task run costs etcd one transaction, not 1,600).
    /// `batches` is how many batches of records it has; a run without any has its mapped
    /// task runs' records under keys of their own (written before batches were).
    pub(super) fn delete_live_records(&mut self, id: &str, tasks: &[TaskCount], batches: u64) {
        self.ops.push(tables::runs::delete(id));
        let keys = |key: fn(&str, &str, i64) -> String| {
            let mut keys = Vec::new();
            for (task, mapped, count) in tasks {
                if *mapped && batches > 0 {
                    continue;
                }
                for index in 0..*count {
                    let map_index = if *mapped { index as i64 } else { -1 };
                    keys.push(key(id, task, map_index));
                }
            }
            keys
        };
        self.ops.push(tables::task_runs::delete_run(
            id,
            keys(tables::task_runs::key),
        ));
        self.ops
            .push(tables::results::delete_run(id, keys(tables::results::key)));
        self.ops.push(tables::batches::delete_run(id, batches));
    }

    /// Takes run `key` out of memory: its idempotency key names an archived run from now
    /// on, and its summary stays for listing (with those a previous leader archived).
    /// Returns the run, its summary and the child runs of its sub-flow task runs by (node,
    /// index).
    #[allow(clippy::type_complexity)]
    pub(super) fn take_out(
        &mut self,
        key: super::RunKey,
    ) -> Option<(Run, pb::FlowRun, HashMap<(u32, u32), Arc<str>>)> {
        let summary = self.run_view(self.runs.get(key)?);
        let mut run = self.runs.remove(key)?;
        let children = self.children.take_run(key);
        if !run.idempotency_key.is_empty() {
            self.idempotency.remove(&run.idempotency_key);
            self.archived_idempotency
                .insert(std::mem::take(&mut run.idempotency_key), run.id.0.clone());
        }
        self.archived_runs
            .insert((summary.created_ms, run.id.0.clone()), summary.clone());
        while self.archived_runs.len() > MAX_FINISHED_SUMMARIES {
            self.archived_runs.pop_first();
        }
        Some((run, summary, children))
    }

    /// The archive of a sealed run could not be written: forget it here (its records stay
    /// in the state store, so that the next leader recovers and archives it). False when
    /// the run was not sealed.
    pub fn abandon_sealed(&mut self, id: &str) -> bool {
        let sealed = self.tombstones.remove(id).is_some();
        if sealed {
            self.abandoned_archives += 1;
            tracing::error!(run = %id, "a finished run's archive could not be written; it is left to the next leader");
        }
        sealed
    }

    /// Whether a worker holds an attempt of run `key` (or its tag slots).
    pub(super) fn holds_attempts_of(&self, key: super::RunKey) -> bool {
        self.registry.holds_run(key) || self.limits.holders().any(|(t, _)| t.run == key)
    }
}
