//! Finished runs: written to the result store as one archive object, then dropped from
//! the live state and from the leader's memory.

use super::{Actor, Command};

/// An archive at least this large gives its freed memory back to the operating system
/// once its run has left memory (the allocator would otherwise keep it for reuse).
const TRIM_AFTER_BYTES: usize = 8 << 20;
/// Writes of one archive before the run is left in the live state.
const ARCHIVE_TRIES: u32 = 10;

impl Actor {
    /// Writes a finished run's archive to the result store, then has the engine drop the
    /// run from the live state. The archive is encoded here and moved to the writing task
    /// (a run of a million task runs makes an archive of hundreds of MB: it is never
    /// copied); a failed write comes back as [`Command::ArchiveFailed`] and is encoded again.
    pub(super) fn archive(&self, run: &baton_common::ids::RunId, tries: u32) {
        let bytes = match self.engine.archive_bytes(&run.0) {
            Ok(b) => b,
            Err(_) => return,
        };
        let store = self.results.clone();
        let tx = self.self_tx.clone();
        let id = run.0.clone();
        self.tasks.spawn(async move {
            let key = crate::engine::keys::archive(&id);
            let size = bytes.len();
            match store.put(&key, bytes, "application/x-protobuf").await {
                Ok(_) | Err(baton_common::Error::AlreadyExists(_)) => {
                    let _ = tx.send(Command::Archived(id, size)).await;
                }
                Err(e) if tries + 1 >= ARCHIVE_TRIES => {
                    tracing::error!(run = %id, error = %e, "giving up archiving a finished run; it stays in the live state");
                }
                Err(e) => {
                    tracing::warn!(run = %id, error = %e, "cannot archive a finished run; retrying");
                    let delay = std::time::Duration::from_millis(200 << tries.min(5));
                    tokio::time::sleep(delay.min(std::time::Duration::from_secs(5))).await;
                    let _ = tx.send(Command::ArchiveFailed(id, tries + 1)).await;
                }
            }
        });
    }

    /// A run's archive is written: the run leaves the live state and memory.
    pub(super) fn archived(&mut self, run: &str, size: usize) {
        self.engine.archived(run);
        if size >= TRIM_AFTER_BYTES {
            trim();
        }
    }
}

/// Returns the allocator's free memory to the operating system (glibc keeps freed memory
/// of a large run in its arenas otherwise, and the leader's resident memory never drops).
fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}
