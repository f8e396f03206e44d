//! The log keeper: the lines that tasks write (process stdout and stderr, built-in log
//! lines), as workers send them. It holds the recent lines of each live attempt in memory,
//! bounded per attempt (the oldest are dropped, with a marker line, past [`MAX_LINES`] or
//! [`MAX_BYTES`]), and writes them to the result store in numbered chunks of JSON lines
//! (`{"at_ms":…,"stream":…,"line":…}`) under [`AttemptKey::log_key`]: when the attempt has
//! ended, and every few seconds while it runs. Objects are never overwritten.
//!
//! The keeper runs as its own task fed by a channel, so the engine's actor only hands lines
//! over (never waits, never does I/O); uploads run in tasks of their own. Readers
//! ([`read`]) get what is in memory from the keeper and the rest from the store, and may
//! follow new lines as they come.

pub mod read;
#[cfg(test)]
mod tests;

use baton_common::ids::AttemptKey;
use baton_common::result_store::ResultStore;
use baton_common::time::now_ms;
use baton_proto as pb;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Lines and bytes of one attempt held in memory before the oldest are dropped; bytes of one
/// attempt stored in all (then a marker line says later lines are not stored, so a task that
/// prints forever cannot fill the result store).
pub use baton_proto::limits::{
    MAX_LOG_BYTES_HELD as MAX_BYTES, MAX_LOG_BYTES_STORED as MAX_STORED_BYTES,
    MAX_LOG_LINES_HELD as MAX_LINES,
};
/// A running attempt's lines are written once the oldest has waited this long…
const FLUSH_AFTER_MS: i64 = 3_000;
/// …or once this many bytes wait.
const FLUSH_BYTES: usize = 1 << 20;
/// A written attempt that has sent nothing for this long leaves memory.
const IDLE_MS: i64 = 5 * 60_000;
/// Entries buffered for one following reader; a reader further behind is cut off.
pub const FOLLOW_BUFFER: usize = 16_384;
/// Messages waiting for the keeper; past this, lines are dropped rather than slow the actor.
const INBOX: usize = 8_192;

/// One log line as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    pub at_ms: i64,
    pub stream: String,
    pub line: String,
}

impl Line {
    fn bytes(&self) -> usize {
        self.line.len() + self.stream.len() + 16
    }
}

/// The wire form of one line of an attempt.
pub fn entry(key: &AttemptKey, l: &Line) -> pb::LogEntry {
    pb::LogEntry {
        task: key.task.clone(),
        map_index: key.map_index,
        attempt: key.attempt,
        at_ms: l.at_ms,
        stream: l.stream.clone(),
        line: l.line.clone(),
    }
}

/// A chunk's object: one JSON object per line.
pub fn encode(lines: &[Line]) -> Vec<u8> {
    let mut out = Vec::new();
    for l in lines {
        if serde_json::to_writer(&mut out, l).is_ok() {
            out.push(b'\n');
        }
    }
    out
}

/// The lines of a chunk's object; a damaged line is skipped.
pub fn decode(bytes: &[u8]) -> Vec<Line> {
    bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect()
}

/// Lines of one attempt to write as chunk `chunk`.
#[derive(Debug)]
pub struct Chunk {
    pub key: AttemptKey,
    pub chunk: u32,
    pub lines: Arc<Vec<Line>>,
}

/// What the keeper holds of one attempt.
#[derive(Default)]
struct Attempt {
    pending: VecDeque<Line>,
    pending_bytes: usize,
    /// Lines dropped from the front of `pending` since the last chunk.
    dropped: u64,
    /// When the oldest pending line arrived.
    pending_since: i64,
    /// The number the next chunk gets; chunks below it are written or being written.
    next_chunk: u32,
    /// Chunks being written, kept until they are in the store.
    inflight: BTreeMap<u32, Arc<Vec<Line>>>,
    ended: bool,
    last_ms: i64,
    /// Bytes of lines taken into chunks so far.
    stored_bytes: u64,
    /// Lines not stored because the attempt reached its stored limit.
    over_limit: u64,
    /// Whether the marker saying so has been stored.
    over_marked: bool,
}

/// What a reader sees of one attempt in memory: chunks below `next_chunk` that are not in
/// `inflight` are in the store; `pending` follows them.
#[derive(Clone, Debug)]
pub struct Held {
    pub key: AttemptKey,
    pub next_chunk: u32,
    pub inflight: BTreeMap<u32, Arc<Vec<Line>>>,
    pub pending: Vec<Line>,
}

/// A reader following a run's (or one task's) new lines.
struct Follower {
    run: String,
    task: String,
    tx: mpsc::Sender<pb::LogEntry>,
}

fn wanted(run: &str, task: &str, key: &AttemptKey) -> bool {
    key.run == run && (task.is_empty() || key.task == task)
}

/// The keeper's state: plain data, no I/O.
pub struct Keeper {
    attempts: HashMap<AttemptKey, Attempt>,
    followers: Vec<Follower>,
    max_lines: usize,
    max_bytes: usize,
    max_stored: u64,
}

impl Keeper {
    pub fn new(max_lines: usize, max_bytes: usize) -> Self {
        Keeper {
            attempts: HashMap::new(),
            followers: Vec::new(),
            max_lines: max_lines.max(1),
            max_bytes,
            max_stored: MAX_STORED_BYTES,
        }
    }

    /// The same keeper storing at most `max` bytes of lines per attempt.
    pub fn with_stored_limit(mut self, max: u64) -> Self {
        self.max_stored = max;
        self
    }

    /// Takes one line of an attempt; passes it on to its followers.
    pub fn push(&mut self, key: AttemptKey, line: Line, now: i64) {
        if !self.followers.is_empty() {
            // A follower that is gone, or so far behind that its buffer is full, is cut
            // off: its reader ends with an error rather than miss lines silently.
            self.followers.retain(|f| {
                !wanted(&f.run, &f.task, &key) || f.tx.try_send(entry(&key, &line)).is_ok()
            });
        }
        let a = self.attempts.entry(key).or_default();
        if a.pending.is_empty() {
            a.pending_since = now;
        }
        a.last_ms = now;
        if a.over_limit > 0
            || a.stored_bytes + (a.pending_bytes + line.bytes()) as u64 > self.max_stored
        {
            a.over_limit += 1;
            crate::metrics::get().lines_dropped(1);
            return;
        }
        a.pending_bytes += line.bytes();
        a.pending.push_back(line);
        while a.pending.len() > self.max_lines || a.pending_bytes > self.max_bytes {
            let Some(old) = a.pending.pop_front() else {
                break;
            };
            a.pending_bytes -= old.bytes();
            a.dropped += 1;
            crate::metrics::get().lines_dropped(1);
        }
    }

    /// The attempt has finished: its lines are written at the next flush.
    pub fn ended(&mut self, key: &AttemptKey) {
        if let Some(a) = self.attempts.get_mut(key) {
            a.ended = true;
        }
    }

    /// Chunks to write now: of ended attempts, of attempts whose lines have waited long
    /// enough or are many, or of every attempt with `all`.
    pub fn take_due(&mut self, now: i64, all: bool) -> Vec<Chunk> {
        let mut out = Vec::new();
        for (key, a) in &mut self.attempts {
            let mark = a.over_limit > 0 && !a.over_marked;
            if (a.pending.is_empty() && !mark)
                || !(all
                    || a.ended
                    || now - a.pending_since >= FLUSH_AFTER_MS
                    || a.pending_bytes >= FLUSH_BYTES)
            {
                continue;
            }
            let mut lines = Vec::with_capacity(a.pending.len() + 1);
            if a.dropped > 0 {
                let at_ms = a.pending.front().map_or(now, |l| l.at_ms);
                lines.push(Line {
                    at_ms,
                    stream: "log".into(),
                    line: format!(
                        "[baton: {} earlier lines dropped; at most {} lines or {} bytes wait to be stored]",
                        a.dropped, self.max_lines, self.max_bytes
                    ),
                });
                a.dropped = 0;
            }
            lines.extend(a.pending.drain(..));
            if mark {
                lines.push(Line {
                    at_ms: now,
                    stream: "log".into(),
                    line: format!(
                        "[baton: this attempt's stored log reached its limit of {} bytes; later lines are not stored]",
                        self.max_stored
                    ),
                });
                a.over_marked = true;
            }
            a.stored_bytes += a.pending_bytes as u64;
            a.pending_bytes = 0;
            let lines = Arc::new(lines);
            let chunk = a.next_chunk;
            a.next_chunk += 1;
            a.inflight.insert(chunk, lines.clone());
            out.push(Chunk {
                key: key.clone(),
                chunk,
                lines,
            });
        }
        out
    }

    /// A chunk's write is over: stored under number `stored_as`, or given up (`None`).
    pub fn stored(&mut self, key: &AttemptKey, chunk: u32, stored_as: Option<u32>) {
        if let Some(a) = self.attempts.get_mut(key) {
            a.inflight.remove(&chunk);
            if let Some(n) = stored_as {
                a.next_chunk = a.next_chunk.max(n + 1);
            }
        }
    }

    /// Drops written attempts that have ended or gone quiet, and readers that left.
    pub fn evict(&mut self, now: i64) {
        self.attempts.retain(|_, a| {
            !(a.pending.is_empty()
                && a.inflight.is_empty()
                && (a.ended || now - a.last_ms >= IDLE_MS))
        });
        self.followers.retain(|f| !f.tx.is_closed());
    }

    /// What is held of a run's (or one task's) attempts; with `follow`, that reader also
    /// gets every line that arrives from now on.
    pub fn held(
        &mut self,
        run: &str,
        task: &str,
        follow: Option<mpsc::Sender<pb::LogEntry>>,
    ) -> Vec<Held> {
        if let Some(tx) = follow {
            self.followers.push(Follower {
                run: run.to_string(),
                task: task.to_string(),
                tx,
            });
        }
        self.attempts
            .iter()
            .filter(|(k, _)| wanted(run, task, k))
            .map(|(k, a)| Held {
                key: k.clone(),
                next_chunk: a.next_chunk,
                inflight: a.inflight.clone(),
                pending: a.pending.iter().cloned().collect(),
            })
            .collect()
    }
}

enum Msg {
    Lines(Vec<pb::LogLine>),
    Ended(AttemptKey),
    Read {
        run: String,
        task: String,
        follow: Option<mpsc::Sender<pb::LogEntry>>,
        reply: oneshot::Sender<Vec<Held>>,
    },
    Barrier(oneshot::Sender<()>),
    Stored(AttemptKey, u32, Option<u32>),
}

/// A handle to the keeper's task; cheap to clone.
#[derive(Clone)]
pub struct Logs {
    tx: mpsc::Sender<Msg>,
}

/// Lines dropped because the keeper's inbox was full.
static DROPPED: AtomicU64 = AtomicU64::new(0);

impl Logs {
    /// Starts the keeper; it writes what it holds and stops when `shutdown` is cancelled.
    pub fn spawn(store: Arc<dyn ResultStore>, shutdown: CancellationToken) -> Logs {
        let (tx, rx) = mpsc::channel(INBOX);
        let keeper = Keeper::new(MAX_LINES, MAX_BYTES);
        tokio::spawn(run(keeper, store, rx, tx.clone(), shutdown));
        Logs { tx }
    }

    /// Hands over lines from a worker; never waits (drops them when the keeper is swamped).
    pub fn lines(&self, l: pb::LogLines) {
        let n = l.lines.len() as u64;
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(Msg::Lines(l.lines)) {
            crate::metrics::get().lines_dropped(n);
            let before = DROPPED.fetch_add(n, Ordering::Relaxed);
            if before / 10_000 != (before + n) / 10_000 || before == 0 {
                tracing::warn!(
                    dropped = before + n,
                    "log keeper is behind; dropping log lines"
                );
            }
        }
    }

    /// An attempt finished.
    pub fn ended(&self, key: AttemptKey) {
        let _ = self.tx.try_send(Msg::Ended(key));
    }

    /// What is held in memory of a run's (or one task's) attempts, registering `follow`.
    pub async fn held(
        &self,
        run: &str,
        task: &str,
        follow: Option<mpsc::Sender<pb::LogEntry>>,
    ) -> Result<Vec<Held>, crate::Error> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Read {
                run: run.to_string(),
                task: task.to_string(),
                follow,
                reply,
            })
            .await
            .map_err(|_| crate::Error::ShuttingDown)?;
        rx.await.map_err(|_| crate::Error::ShuttingDown)
    }

    /// Returns once everything handed over before this call has been taken in.
    pub async fn barrier(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Msg::Barrier(reply)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

async fn run(
    mut keeper: Keeper,
    store: Arc<dyn ResultStore>,
    mut rx: mpsc::Receiver<Msg>,
    tx: mpsc::Sender<Msg>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            m = rx.recv() => match m {
                None => break,
                Some(Msg::Lines(lines)) => {
                    let now = now_ms();
                    for l in lines {
                        let Some(key) = l.key.as_ref().map(AttemptKey::from) else {
                            continue;
                        };
                        keeper.push(key, Line { at_ms: l.at_ms, stream: l.stream, line: l.line }, now);
                    }
                }
                Some(Msg::Ended(key)) => keeper.ended(&key),
                Some(Msg::Read { run, task, follow, reply }) => {
                    let _ = reply.send(keeper.held(&run, &task, follow));
                }
                Some(Msg::Barrier(reply)) => {
                    let _ = reply.send(());
                }
                Some(Msg::Stored(key, chunk, stored_as)) => keeper.stored(&key, chunk, stored_as),
            },
            _ = tick.tick() => {
                let now = now_ms();
                for c in keeper.take_due(now, false) {
                    let (store, tx) = (store.clone(), tx.clone());
                    tokio::spawn(async move {
                        let stored_as = upload(store.as_ref(), &c).await;
                        let _ = tx.send(Msg::Stored(c.key, c.chunk, stored_as)).await;
                    });
                }
                keeper.evict(now);
            }
            _ = shutdown.cancelled() => break,
        }
    }
    // Write what is left, for a bounded time.
    let chunks = keeper.take_due(now_ms(), true);
    let all = futures::future::join_all(chunks.iter().map(|c| upload(store.as_ref(), c)));
    if tokio::time::timeout(Duration::from_secs(5), all)
        .await
        .is_err()
    {
        tracing::warn!("stopped before every log line was written");
    }
}

/// Chunk numbers tried past the one asked for, when earlier leaders used them.
const CHUNK_NUMBERS_TRIED: u32 = 12;

/// Writes a chunk; returns the number it was stored under (the next free one when an
/// earlier leader used the number), or `None` after a failure (the result store retries
/// transient failures itself, see `baton_common::retry`).
async fn upload(store: &dyn ResultStore, c: &Chunk) -> Option<u32> {
    let body = bytes::Bytes::from(encode(&c.lines));
    for chunk in c.chunk..c.chunk.saturating_add(CHUNK_NUMBERS_TRIED) {
        let key = c.key.log_key(chunk);
        match store.put(&key, body.clone(), "application/x-ndjson").await {
            Ok(_) => return Some(chunk),
            Err(baton_common::Error::AlreadyExists(_)) => {
                // Our own earlier write, or an earlier leader's under this number.
                let uri = format!("{}/{}", store.root_uri(), key);
                if store.get(&uri).await.is_ok_and(|b| b == body) {
                    return Some(chunk);
                }
            }
            Err(e) => {
                tracing::error!(%key, error = %e, lines = c.lines.len(), "cannot store log lines");
                return None;
            }
        }
    }
    tracing::error!(attempt = %c.key, chunk = c.chunk, lines = c.lines.len(), "no free chunk number for log lines");
    None
}
