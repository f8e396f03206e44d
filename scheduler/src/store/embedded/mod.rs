//! The embedded state store: an append-only log on local disk (see [`log`] for its format),
//! written by a dedicated writer thread in group commits, fsynced before a commit is
//! acknowledged (unless [`SyncMode::None`] is chosen), and compacted into a snapshot in the
//! background when it grows. Memory holds only each live key's value size (for `Create`
//! checks and compaction); values are read back by replaying the log, at start-up.
//!
//! Failures: a write that fails part-way is cut back to the last good frame before anything
//! else is written (if even that fails, the store refuses every later write); the failed
//! commits are reported as not done. A damaged frame in the middle of the log makes `open`
//! fail with its offset; a torn tail (a crash mid-append) is cut off.

mod log;
mod sizes;
mod writer;

use super::{Epoch, Leadership, Op, StateStore, StoreError, Submitted};
use async_trait::async_trait;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use writer::Request;

/// When the log is fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// fsync after each group commit, before it is acknowledged: survives power loss.
    Batch,
    /// Leave flushing to the OS: survives a process crash, not power loss.
    None,
}

/// The log grows at least this much before it is compacted.
const COMPACT_MIN_BYTES: u64 = 64 << 20;

/// A [`StateStore`] in a local folder, held by one process at a time.
pub struct EmbeddedStore {
    requests: std::sync::mpsc::Sender<Request>,
    /// The writer thread, joined on drop before the folder's lock is let go.
    writer: Option<std::thread::JoinHandle<()>>,
    _lock: File,
}

impl Drop for EmbeddedStore {
    /// Closes the store: the writer finishes what was asked of it (and waits for a
    /// compaction in flight), then the folder's lock goes, so that the next store opened
    /// there finds nobody writing in it.
    fn drop(&mut self) {
        let (closed, _) = std::sync::mpsc::channel();
        drop(std::mem::replace(&mut self.requests, closed));
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir`, replaying its log. Fails on a damaged frame
    /// in the middle of the log, naming its offset.
    pub fn open(dir: &Path, sync: SyncMode) -> Result<Self, StoreError> {
        Self::open_with(dir, sync, COMPACT_MIN_BYTES)
    }

    fn open_with(dir: &Path, sync: SyncMode, compact_min: u64) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("LOCK"))?;
        // SAFETY: flock on a file descriptor this function owns.
        let rc = unsafe {
            libc::flock(
                std::os::fd::AsRawFd::as_raw_fd(&lock),
                libc::LOCK_EX | libc::LOCK_NB,
            )
        };
        if rc != 0 {
            return Err(StoreError::Locked(
                "the state folder is held by another scheduler".into(),
            ));
        }
        let path = dir.join("state.log");
        // A compaction that did not finish leaves its snapshot behind: never the truth.
        let _ = std::fs::remove_file(dir.join("state.log.tmp"));
        let mut map = std::collections::BTreeMap::new();
        let found = if path.exists() {
            log::replay(&path, None, &mut map)?
        } else {
            log::Replayed::default()
        };
        let log = OpenOptions::new().create(true).append(true).open(&path)?;
        if found.len > found.valid {
            tracing::warn!(
                offset = found.valid,
                bytes = found.len - found.valid,
                "cutting off a torn log tail"
            );
            log.set_len(found.valid)?;
            log.sync_all()?;
        }
        let (requests, writer) = writer::spawn(writer::Setup {
            dir: PathBuf::from(dir),
            sync,
            log,
            log_bytes: found.valid,
            map,
            compact_min,
        })?;
        Ok(EmbeddedStore {
            requests,
            writer: Some(writer),
            _lock: lock,
        })
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Request,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(make(tx))
            .map_err(|_| StoreError::Unavailable("the state writer has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("the state writer has stopped".into()))?
    }
}

#[async_trait]
impl StateStore for EmbeddedStore {
    async fn acquire(&self) -> Result<Leadership, StoreError> {
        let epoch = self.ask(Request::Acquire).await?;
        Ok(Leadership {
            epoch,
            lost: CancellationToken::new(),
        })
    }

    async fn load(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let prefix = prefix.to_string();
        self.ask(|reply| Request::Load { prefix, reply }).await
    }

    async fn commit(&self, epoch: Epoch, ops: Vec<Op>) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        self.ask(|reply| Request::Commit { epoch, ops, reply })
            .await
    }

    /// The writer thread applies requests in the order they are sent, so commits pipeline:
    /// the request is sent now, and the ticket waits for its answer.
    fn submit(&self, epoch: Epoch, ops: Vec<Op>) -> Submitted {
        if ops.is_empty() {
            return Submitted::Queued(Box::pin(std::future::ready(Ok(()))));
        }
        let (reply, rx) = oneshot::channel();
        let sent = self.requests.send(Request::Commit { epoch, ops, reply });
        Submitted::Queued(Box::pin(async move {
            let stopped = || StoreError::Unavailable("the state writer has stopped".into());
            sent.map_err(|_| stopped())?;
            rx.await.map_err(|_| stopped())?
        }))
    }
}

#[cfg(test)]
mod tests;
