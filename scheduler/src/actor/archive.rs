//! Finished runs: written to the result store as one archive object, then dropped from
//! the live state and from the leader's memory.

use super::{Actor, Command, Deferred};

/// An archive at least this large gives its freed memory back to the operating system
/// once its run has left memory (the allocator would otherwise keep it for reuse).
const TRIM_AFTER_BYTES: usize = 512 << 10;
/// While a large run is sealed, its freed memory is given back after this many task runs.
const TRIM_EVERY_TASK_RUNS: usize = 100_000;

impl Actor {
    /// Writes a finished run's archive to the result store, then has the engine drop the
    /// run from the live state. The run is sealed (out of memory at once) unless a worker
    /// still holds one of its attempts; then it stays in memory until the worker gives it
    /// back, and its archive is encoded from memory. Called once the step that finished
    /// the run is durable.
    pub(super) fn archive(&mut self, run: &baton_common::ids::RunId, out: &mut Vec<Deferred>) {
        let store = self.results.clone();
        let tx = self.self_tx.clone();
        let id = run.0.clone();
        if let Some(sealed) = self.engine.seal_out(&run.0) {
            // Encoded off the actor's thread: a run of 100,000 task runs takes ~0.1 s.
            out.push(Box::new(move |a: &mut Actor| {
                a.tasks.spawn(async move {
                    match tokio::task::spawn_blocking(move || encode(sealed)).await {
                        Ok(bytes) => write(store, tx, id, bytes).await,
                        Err(e) => {
                            tracing::error!(run = %id, error = %e, "cannot encode a finished run's archive");
                            let _ = tx.send(Command::ArchiveAbandoned(id)).await;
                        }
                    }
                });
            }));
            return;
        }
        let Ok(bytes) = self.engine.archive_bytes(&run.0) else {
            return;
        };
        out.push(Box::new(move |a: &mut Actor| {
            a.tasks.spawn(write(store, tx, id, bytes));
        }));
    }
}

/// A sealed run's archive; the memory its task runs held goes back to the system.
fn encode(sealed: crate::engine::Sealed) -> Vec<u8> {
    let bytes = sealed.encode(TRIM_EVERY_TASK_RUNS, trim);
    if bytes.len() >= TRIM_AFTER_BYTES {
        trim();
    }
    bytes
}

/// Writes an archive, then tells the actor how that went.
async fn write(
    store: std::sync::Arc<dyn baton_common::result_store::ResultStore>,
    tx: tokio::sync::mpsc::Sender<Command>,
    id: String,
    bytes: Vec<u8>,
) {
    let size = bytes.len();
    let key = crate::engine::tables::finished::archive(&id);
    // Shared with the store's retries, never copied.
    let bytes = bytes::Bytes::from(bytes);
    // One write: the result store retries transient failures itself (see
    // `baton_common::retry`).
    match store.put(&key, bytes, "application/x-protobuf").await {
        Ok(_) | Err(baton_common::Error::AlreadyExists(_)) => {
            let _ = tx.send(Command::Archived(id, size)).await;
            return;
        }
        Err(e) => {
            tracing::error!(run = %id, error = %e, "cannot archive a finished run");
        }
    }
    let _ = tx.send(Command::ArchiveAbandoned(id)).await;
}

impl Actor {
    /// A run's archive is written: the run leaves the live state and memory, and readers
    /// waiting for the archive read it.
    pub(super) fn archived(&mut self, run: &str, size: usize) {
        self.engine.archived(run);
        if size >= TRIM_AFTER_BYTES {
            trim();
        }
        for reply in self.awaiting.remove(run).unwrap_or_default() {
            let _ = reply.send(Ok(true));
        }
    }

    /// A run's archive could not be written: a sealed run is left to the next leader (its
    /// records are still in the state store), any other stays in the live state.
    pub(super) fn archive_abandoned(&mut self, run: &str) {
        if !self.engine.abandon_sealed(run) {
            tracing::error!(run = %run, "giving up archiving a finished run; it stays in the live state");
        }
        for reply in self.awaiting.remove(run).unwrap_or_default() {
            let _ = reply.send(Ok(false));
        }
    }

    /// Answers once a run's archive is in the result store: at once (`false`) unless the
    /// run was sealed and its archive is being written.
    pub(super) fn await_archive(&mut self, run: String, reply: super::Reply<bool>) {
        if self.engine.is_sealed(&run) {
            self.awaiting.entry(run).or_default().push(reply);
        } else {
            let _ = reply.send(Ok(false));
        }
    }
}

use crate::alloc::trim;
