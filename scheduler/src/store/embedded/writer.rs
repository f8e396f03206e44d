//! The embedded store's writer thread: it owns the log file and applies requests in order,
//! grouping consecutive commits into one write and one fsync (group commit), so that the
//! actor never blocks on disk I/O and many commits share one fsync. It also runs
//! compaction: a helper thread writes a snapshot of the log's prefix while commits go on,
//! then the writer appends what was committed meanwhile and swaps the files.

use super::super::{Epoch, Op, StoreError};
use super::log;
use super::sizes::{KeyId, KeySizes};
use super::SyncMode;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender};
use tokio::sync::oneshot;

const EPOCH_KEY: &str = "meta/epoch";

/// The group-commit buffer keeps at most this much room between groups.
const BUF_KEEP: usize = 4 << 20;
/// Most requests taken into one group.
const MAX_GROUP: usize = 4096;

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// What the store asks of its writer.
pub(super) enum Request {
    Acquire(Reply<Epoch>),
    Load {
        prefix: String,
        reply: Reply<Vec<(String, Vec<u8>)>>,
    },
    Commit {
        epoch: Epoch,
        ops: Vec<Op>,
        reply: Reply<()>,
    },
    /// Tests: the next append writes only this many bytes, then fails.
    #[cfg(test)]
    FailNextWrite(usize),
    /// Tests: start a compaction now, whatever the log's size.
    #[cfg(test)]
    Compact(Reply<()>),
}

/// A snapshot written by the compaction helper.
pub(super) struct Snapshot {
    /// Log bytes it covers.
    upto: u64,
    /// Its length.
    len: u64,
}

/// What the writer starts from.
pub(super) struct Setup {
    pub dir: PathBuf,
    pub sync: SyncMode,
    pub log: File,
    pub log_bytes: u64,
    pub map: BTreeMap<String, Vec<u8>>,
    pub compact_min: u64,
}

struct Writer {
    dir: PathBuf,
    sync: SyncMode,
    log: File,
    log_bytes: u64,
    live_bytes: u64,
    /// Live keys and the sizes of their values.
    sizes: KeySizes,
    /// The replayed state, kept from opening until the first commit, for `load`.
    snapshot: Option<BTreeMap<String, Vec<u8>>>,
    epoch: Epoch,
    /// Set when a failed write could not be cut back: no more writes are taken.
    failed: Option<String>,
    /// An epoch one of whose commits failed: its later commits, queued behind the failed
    /// one (pipelined) and computed as if it had landed, are refused too.
    broken: Option<Epoch>,
    /// A running compaction's result, when it is done.
    compacting: Option<Receiver<Result<Snapshot, String>>>,
    compact_min: u64,
    /// The log must reach this before the next compaction (raised after a failed one).
    compact_floor: u64,
    buf: Vec<u8>,
    #[cfg(test)]
    fail_next_write: Option<usize>,
}

/// Starts the writer thread.
pub(super) fn spawn(
    setup: Setup,
) -> Result<(Sender<Request>, std::thread::JoinHandle<()>), StoreError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let epoch = setup
        .map
        .get(EPOCH_KEY)
        .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
        .unwrap_or(0);
    let live_bytes = setup
        .map
        .iter()
        .map(|(k, v)| (k.len() + v.len()) as u64)
        .sum();
    let mut sizes = KeySizes::new();
    for (k, v) in &setup.map {
        sizes.insert(sizes.id(k), v.len() as u32);
    }
    let writer = Writer {
        dir: setup.dir,
        sync: setup.sync,
        log: setup.log,
        log_bytes: setup.log_bytes,
        live_bytes,
        sizes,
        snapshot: Some(setup.map),
        epoch,
        failed: None,
        broken: None,
        compacting: None,
        compact_min: setup.compact_min,
        compact_floor: 0,
        buf: Vec::new(),
        #[cfg(test)]
        fail_next_write: None,
    };
    let thread = std::thread::Builder::new()
        .name("baton-state-writer".into())
        .spawn(move || writer.run(rx))?;
    Ok((tx, thread))
}

impl Writer {
    fn run(mut self, rx: Receiver<Request>) {
        // Ends when the store is dropped and nothing is pending.
        loop {
            let first = match &self.compacting {
                None => match rx.recv() {
                    Ok(r) => r,
                    Err(_) => break,
                },
                Some(done) => {
                    if let Ok(result) = done.try_recv() {
                        self.finish_compaction(result);
                        continue;
                    }
                    match rx.recv_timeout(std::time::Duration::from_millis(20)) {
                        Ok(r) => r,
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                }
            };
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(r) => group.push(r),
                    Err(_) => break,
                }
            }
            let mut commits = Vec::new();
            for req in group {
                match req {
                    Request::Commit { epoch, ops, reply } => commits.push((epoch, ops, reply)),
                    other => {
                        self.commit_group(std::mem::take(&mut commits));
                        self.other(other);
                    }
                }
            }
            self.commit_group(commits);
            if self.compacting.is_some() || self.failed.is_some() {
                continue;
            }
            if self.log_bytes > self.compact_min.max(self.compact_floor)
                && self.log_bytes > 4 * self.live_bytes
            {
                self.start_compaction();
            }
        }
        // A compaction still running is waited for and its snapshot removed, so that
        // nothing writes in the folder once the store is closed (a store opened there next
        // could otherwise take a half-written snapshot for its own).
        if let Some(done) = self.compacting.take() {
            let _ = done.recv();
            let _ = std::fs::remove_file(self.dir.join("state.log.tmp"));
        }
    }

    fn other(&mut self, req: Request) {
        match req {
            Request::Acquire(reply) => {
                let _ = reply.send(self.acquire());
            }
            Request::Load { prefix, reply } => {
                let _ = reply.send(self.load(&prefix));
            }
            Request::Commit { epoch, ops, reply } => self.commit_group(vec![(epoch, ops, reply)]),
            #[cfg(test)]
            Request::FailNextWrite(n) => self.fail_next_write = Some(n),
            #[cfg(test)]
            Request::Compact(reply) => {
                if self.compacting.is_none() {
                    self.start_compaction();
                }
                // Waits for it, so that tests see it done.
                if let Some(done) = self.compacting.take() {
                    if let Ok(result) = done.recv() {
                        self.finish_compaction(result);
                    }
                }
                let _ = reply.send(Ok(()));
            }
        }
    }

    fn acquire(&mut self) -> Result<Epoch, StoreError> {
        self.writable()?;
        let epoch = self.epoch + 1;
        let op = Op::Put {
            key: EPOCH_KEY.into(),
            value: epoch.to_string().into_bytes(),
        };
        self.buf.clear();
        log::encode_frame(std::slice::from_ref(&op), &mut self.buf);
        // Always durable: a new epoch must never be handed out twice.
        self.append(true)?;
        if let (Some(m), Op::Put { key, value }) = (self.snapshot.as_mut(), op) {
            m.insert(key, value);
        }
        self.epoch = epoch;
        Ok(epoch)
    }

    fn load(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let replayed;
        let map = match &self.snapshot {
            Some(m) => m,
            None => {
                let mut m = BTreeMap::new();
                log::replay(&self.dir.join("state.log"), Some(self.log_bytes), &mut m)?;
                replayed = m;
                &replayed
            }
        };
        Ok(map
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn writable(&self) -> Result<(), StoreError> {
        match &self.failed {
            Some(why) => Err(StoreError::Unavailable(format!(
                "the state log could not be repaired after a failed write ({why}); restart \
                 the scheduler"
            ))),
            None => Ok(()),
        }
    }

    /// Commits a group: each accepted commit is one frame; all frames are written at once
    /// and fsynced once; every commit is answered after that.
    fn commit_group(&mut self, commits: Vec<(Epoch, Vec<Op>, Reply<()>)>) {
        if commits.is_empty() {
            return;
        }
        if let Err(e) = self.writable() {
            for (_, _, reply) in commits {
                let _ = reply.send(Err(StoreError::Unavailable(e.to_string())));
            }
            return;
        }
        let live_before = self.live_bytes;
        let mut undo: Vec<(KeyId, Option<u32>)> = Vec::new();
        let mut accepted = Vec::with_capacity(commits.len());
        self.buf.clear();
        for (epoch, ops, reply) in commits {
            if self.broken == Some(epoch) {
                let _ = reply.send(Err(StoreError::Unavailable(format!(
                    "an earlier commit of epoch {epoch} failed"
                ))));
                continue;
            }
            if epoch != self.epoch {
                let _ = reply.send(Err(StoreError::Fenced {
                    ours: epoch,
                    current: self.epoch,
                }));
                continue;
            }
            let conflict = ops.iter().find_map(|op| match op {
                Op::Create { key, .. } if self.sizes.contains(key) => Some(key.clone()),
                _ => None,
            });
            if let Some(key) = conflict {
                self.broken = Some(epoch);
                let _ = reply.send(Err(StoreError::Conflict(key)));
                continue;
            }
            for op in &ops {
                self.apply_size(op, &mut undo);
            }
            self.buf.reserve(log::frame_len(&ops));
            log::encode_frame(&ops, &mut self.buf);
            accepted.push(reply);
        }
        if accepted.is_empty() {
            return;
        }
        self.snapshot = None;
        let result = self.append(self.sync == SyncMode::Batch);
        if result.is_err() {
            self.broken = Some(self.epoch);
            // Nothing of the group is in the log: forget its sizes too.
            for (id, old) in undo.into_iter().rev() {
                match old {
                    Some(size) => self.sizes.insert(id, size),
                    None => self.sizes.remove(id),
                };
            }
            self.live_bytes = live_before;
        }
        for reply in accepted {
            let _ = reply.send(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(StoreError::Io(std::io::Error::other(format!(
                    "cannot write the state log: {e}"
                )))),
            });
        }
    }

    fn apply_size(&mut self, op: &Op, undo: &mut Vec<(KeyId, Option<u32>)>) {
        match op {
            Op::Put { key, value } | Op::Create { key, value } => {
                self.live_bytes += (key.len() + value.len()) as u64;
                let id = self.sizes.id(key);
                let old = self.sizes.insert(id, value.len() as u32);
                if let Some(old) = old {
                    self.live_bytes -= (key.len() + old as usize) as u64;
                }
                undo.push((id, old));
            }
            Op::Delete { key } => self.delete_size(key, undo),
            Op::DeletePrefix { keys, .. } => keys.iter().for_each(|k| self.delete_size(k, undo)),
        }
    }

    fn delete_size(&mut self, key: &str, undo: &mut Vec<(KeyId, Option<u32>)>) {
        let id = self.sizes.id(key);
        if let Some(old) = self.sizes.remove(id) {
            self.live_bytes -= (key.len() + old as usize) as u64;
            undo.push((id, Some(old)));
        }
    }

    /// Appends `self.buf` to the log (fsynced if `sync`). On failure the log is cut back
    /// to its last good frame, so that later frames never follow a torn one.
    fn append(&mut self, sync: bool) -> Result<(), StoreError> {
        let written = self
            .write_buf()
            .and_then(|()| if sync { self.log.sync_data() } else { Ok(()) });
        let len = self.buf.len() as u64;
        if self.buf.capacity() > BUF_KEEP {
            // A step that wrote a whole fan-out: its buffer is given back, not kept.
            self.buf = Vec::new();
        }
        match written {
            Ok(()) => {
                self.log_bytes += len;
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, offset = self.log_bytes, "state log write failed; cutting the log back");
                if let Err(cut) = self
                    .log
                    .set_len(self.log_bytes)
                    .and_then(|()| self.log.sync_all())
                {
                    tracing::error!(error = %cut, "cannot cut the state log back; refusing further writes");
                    self.failed = Some(format!("{e}; then {cut}"));
                }
                Err(StoreError::Io(e))
            }
        }
    }

    fn write_buf(&mut self) -> std::io::Result<()> {
        #[cfg(test)]
        if let Some(n) = self.fail_next_write.take() {
            self.log.write_all(&self.buf[..n.min(self.buf.len())])?;
            return Err(std::io::Error::other("injected write failure"));
        }
        self.log.write_all(&self.buf)
    }

    fn start_compaction(&mut self) {
        let upto = self.log_bytes;
        let dir = self.dir.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("baton-state-compact".into())
            .spawn(move || {
                let done = write_snapshot(&dir, upto).map_err(|e| e.to_string());
                let _ = tx.send(done);
            });
        match spawned {
            Ok(_) => self.compacting = Some(rx),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start compaction");
                self.compact_floor = self.log_bytes.saturating_mul(2);
            }
        }
    }

    /// Puts a finished snapshot in place: the frames committed since it was taken are
    /// appended to it, then it replaces the log. Any failure keeps the old log.
    fn finish_compaction(&mut self, done: Result<Snapshot, String>) {
        self.compacting = None;
        let tmp = self.dir.join("state.log.tmp");
        let path = self.dir.join("state.log");
        let swapped = done.and_then(|snap| {
            let swap = || -> std::io::Result<u64> {
                let tail_len = self.log_bytes - snap.upto;
                let mut src = File::open(&path)?;
                src.seek(std::io::SeekFrom::Start(snap.upto))?;
                let mut f = OpenOptions::new().append(true).open(&tmp)?;
                let copied = std::io::copy(&mut src.take(tail_len), &mut f)?;
                if copied != tail_len {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the log is shorter than what was written to it",
                    ));
                }
                f.sync_all()?;
                std::fs::rename(&tmp, &path)?;
                File::open(&self.dir)?.sync_all()?;
                Ok(snap.len + tail_len)
            };
            swap().map_err(|e| e.to_string())
        });
        match swapped {
            Ok(len) => match OpenOptions::new().append(true).open(&path) {
                Ok(log) => {
                    self.log = log;
                    self.log_bytes = len;
                    tracing::info!(bytes = len, "compacted state log");
                }
                Err(e) => {
                    self.failed = Some(format!("cannot reopen the compacted log: {e}"));
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "compaction failed; keeping the log as it is");
                let _ = std::fs::remove_file(&tmp);
                self.compact_floor = self.log_bytes.saturating_mul(2);
            }
        }
    }
}

/// Snapshot frames are cut at about this size.
const SNAPSHOT_FRAME_BYTES: usize = 4 << 20;

/// Replays the log's first `upto` bytes and writes the live state they hold to
/// `state.log.tmp`, in frames of a few MiB. Only the live keys and where their values lie
/// are held in memory; the values are copied from the log one frame's worth at a time.
fn write_snapshot(dir: &std::path::Path, upto: u64) -> Result<Snapshot, StoreError> {
    let path = dir.join("state.log");
    let mut live = log::Locations::new();
    log::replay(&path, Some(upto), &mut live)?;
    // Read back in log order (mostly sequential reads).
    let mut live: Vec<log::Location> = live.map.into_values().collect();
    live.sort_unstable_by_key(|l| l.key_at);
    let src = File::open(&path)?;
    let mut out =
        std::io::BufWriter::with_capacity(1 << 20, File::create(dir.join("state.log.tmp"))?);
    let mut ops = Vec::new();
    let mut size = 0usize;
    let mut frame = Vec::new();
    let mut len = 0u64;
    let mut flush =
        |ops: &mut Vec<Op>, out: &mut std::io::BufWriter<File>| -> std::io::Result<()> {
            frame.clear();
            log::encode_frame(ops, &mut frame);
            out.write_all(&frame)?;
            len += frame.len() as u64;
            ops.clear();
            Ok(())
        };
    let mut op = Vec::new();
    for l in live {
        op.resize(l.span(), 0);
        src.read_exact_at(&mut op, l.key_at)?;
        let key_len = l.key_len as usize;
        let key = String::from_utf8(op[..key_len].to_vec()).map_err(|_| {
            StoreError::Corrupt(format!(
                "a key at offset {} of the state log is not UTF-8",
                l.key_at
            ))
        })?;
        let value = op[key_len + 4..].to_vec();
        size += key.len() + value.len() + 9;
        ops.push(Op::Put { key, value });
        if size >= SNAPSHOT_FRAME_BYTES {
            flush(&mut ops, &mut out)?;
            size = 0;
        }
    }
    if !ops.is_empty() {
        flush(&mut ops, &mut out)?;
    }
    let f = out.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()?;
    Ok(Snapshot { upto, len })
}
