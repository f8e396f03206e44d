//! The embedded state store: an append-only log on local disk, written in batches (group
//! commit) and compacted into a snapshot when it grows. Memory holds only each live key's
//! value size (for `Create` checks and compaction); values are read back by replaying the
//! log, which happens at start-up.
//!
//! Log format: a sequence of frames `[len u32][crc32 u32][payload]`, each payload one batch of
//! ops (`tag u8, key len u32, key, value len u32, value`). A torn or damaged last frame (a crash
//! mid-write) is cut off at open.

use super::{Epoch, Leadership, Op, StateStore, StoreError};
use async_trait::async_trait;
use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tokio_util::sync::CancellationToken;

const EPOCH_KEY: &str = "meta/epoch";
const TAG_PUT: u8 = 1;
const TAG_DELETE: u8 = 2;
const MAX_FRAME: usize = 1 << 30;

/// When the log is fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// fsync after each batch: survives power loss.
    Batch,
    /// Leave flushing to the OS: survives a process crash, not power loss.
    None,
}

struct Inner {
    /// Live keys and the sizes of their values.
    sizes: HashMap<String, u32>,
    /// The replayed state, kept from opening until the first commit for `load`.
    snapshot: Option<BTreeMap<String, Vec<u8>>>,
    log: File,
    log_bytes: u64,
    live_bytes: u64,
    epoch: Epoch,
}

/// A [`StateStore`] in a local folder, held by one process at a time.
pub struct EmbeddedStore {
    dir: PathBuf,
    sync: SyncMode,
    inner: Mutex<Inner>,
    _lock: File,
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir`, replaying its log.
    pub fn open(dir: &Path, sync: SyncMode) -> Result<Self, StoreError> {
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
            return Err(StoreError::Locked(dir.display().to_string()));
        }
        let path = dir.join("state.log");
        let mut map = BTreeMap::new();
        let valid = if path.exists() {
            replay(&path, &mut map)?
        } else {
            0
        };
        let log = OpenOptions::new().create(true).append(true).open(&path)?;
        if log.metadata()?.len() > valid {
            tracing::warn!(path = %path.display(), valid, "cutting off a torn log tail");
            log.set_len(valid)?;
        }
        let epoch = map
            .get(EPOCH_KEY)
            .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
            .unwrap_or(0);
        let live_bytes = map.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
        let sizes = map
            .iter()
            .map(|(k, v)| (k.clone(), v.len() as u32))
            .collect();
        let store = EmbeddedStore {
            dir: dir.to_path_buf(),
            sync,
            inner: Mutex::new(Inner {
                sizes,
                snapshot: Some(map),
                log,
                log_bytes: valid,
                live_bytes,
                epoch,
            }),
            _lock: lock,
        };
        Ok(store)
    }

    fn write_batch(&self, inner: &mut Inner, ops: &[Op]) -> Result<(), StoreError> {
        let frame = encode_frame(ops);
        inner.log.write_all(&frame)?;
        if self.sync == SyncMode::Batch {
            inner.log.sync_data()?;
        }
        inner.log_bytes += frame.len() as u64;
        for op in ops {
            match op {
                Op::Put { key, value } | Op::Create { key, value } => {
                    inner.live_bytes += (key.len() + value.len()) as u64;
                    if let Some(old) = inner.sizes.insert(key.clone(), value.len() as u32) {
                        inner.live_bytes -= (key.len() + old as usize) as u64;
                    }
                }
                Op::Delete { key } => {
                    if let Some(old) = inner.sizes.remove(key) {
                        inner.live_bytes -= (key.len() + old as usize) as u64;
                    }
                }
            }
        }
        if inner.log_bytes > 64 << 20 && inner.log_bytes > 4 * inner.live_bytes {
            self.compact(inner)?;
        }
        Ok(())
    }

    /// Rewrites the log as one snapshot frame of the live keys.
    fn compact(&self, inner: &mut Inner) -> Result<(), StoreError> {
        let tmp = self.dir.join("state.log.tmp");
        let mut map = BTreeMap::new();
        replay(&self.dir.join("state.log"), &mut map)?;
        let ops: Vec<Op> = map
            .into_iter()
            .map(|(key, value)| Op::Put { key, value })
            .collect();
        let frame = encode_frame(&ops);
        {
            let mut f = File::create(&tmp)?;
            f.write_all(&frame)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, self.dir.join("state.log"))?;
        inner.log = OpenOptions::new()
            .append(true)
            .open(self.dir.join("state.log"))?;
        inner.log_bytes = frame.len() as u64;
        tracing::info!(bytes = inner.log_bytes, "compacted state log");
        Ok(())
    }
}

fn encode_frame(ops: &[Op]) -> Vec<u8> {
    let payload_len: usize = ops.iter().map(|o| 9 + o.size()).sum();
    let mut buf = Vec::with_capacity(8 + payload_len);
    buf.extend_from_slice(&[0; 8]);
    for op in ops {
        match op {
            Op::Put { key, value } | Op::Create { key, value } => {
                buf.push(TAG_PUT);
                buf.extend_from_slice(&(key.len() as u32).to_le_bytes());
                buf.extend_from_slice(key.as_bytes());
                buf.extend_from_slice(&(value.len() as u32).to_le_bytes());
                buf.extend_from_slice(value);
            }
            Op::Delete { key } => {
                buf.push(TAG_DELETE);
                buf.extend_from_slice(&(key.len() as u32).to_le_bytes());
                buf.extend_from_slice(key.as_bytes());
                buf.extend_from_slice(&0u32.to_le_bytes());
            }
        }
    }
    let len = (buf.len() - 8) as u32;
    let crc = crc32(&buf[8..]);
    buf[0..4].copy_from_slice(&len.to_le_bytes());
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
    buf
}

/// Replays the log into `map`; returns the length of its valid prefix.
fn replay(path: &Path, map: &mut BTreeMap<String, Vec<u8>>) -> Result<u64, StoreError> {
    let mut data = Vec::new();
    File::open(path)?.read_to_end(&mut data)?;
    let mut pos = 0usize;
    while pos + 8 <= data.len() {
        let len =
            u32::from_le_bytes([data[pos], data[pos + 1], data[pos + 2], data[pos + 3]]) as usize;
        let crc = u32::from_le_bytes([data[pos + 4], data[pos + 5], data[pos + 6], data[pos + 7]]);
        if len > MAX_FRAME || pos + 8 + len > data.len() {
            break;
        }
        let payload = &data[pos + 8..pos + 8 + len];
        if crc32(payload) != crc {
            break;
        }
        apply_payload(payload, map)?;
        pos += 8 + len;
    }
    Ok(pos as u64)
}

fn apply_payload(mut p: &[u8], map: &mut BTreeMap<String, Vec<u8>>) -> Result<(), StoreError> {
    let corrupt = || StoreError::Corrupt("bad op in a checksummed frame".into());
    let mut ops = Vec::new();
    while !p.is_empty() {
        let tag = p[0];
        p = &p[1..];
        let (key, rest) = take(p).ok_or_else(corrupt)?;
        let (value, rest) = take(rest).ok_or_else(corrupt)?;
        p = rest;
        let key = String::from_utf8(key.to_vec()).map_err(|_| corrupt())?;
        ops.push((tag, key, value.to_vec()));
    }
    for (tag, key, value) in ops {
        match tag {
            TAG_PUT => {
                map.insert(key, value);
            }
            TAG_DELETE => {
                map.remove(&key);
            }
            _ => return Err(corrupt()),
        }
    }
    Ok(())
}

fn take(p: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u32::from_le_bytes(p.get(..4)?.try_into().ok()?) as usize;
    let rest = &p[4..];
    Some((rest.get(..len)?, rest.get(len..)?))
}

fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

#[async_trait]
impl StateStore for EmbeddedStore {
    async fn acquire(&self) -> Result<Leadership, StoreError> {
        let mut inner = self.inner.lock().map_err(|_| poisoned())?;
        let epoch = inner.epoch + 1;
        let op = Op::Put {
            key: EPOCH_KEY.into(),
            value: epoch.to_string().into_bytes(),
        };
        if let (Some(m), Op::Put { key, value }) = (inner.snapshot.as_mut(), &op) {
            m.insert(key.clone(), value.clone());
        }
        self.write_batch(&mut inner, &[op])?;
        if self.sync == SyncMode::None {
            inner.log.sync_data()?;
        }
        inner.epoch = epoch;
        Ok(Leadership {
            epoch,
            lost: CancellationToken::new(),
        })
    }

    async fn load(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let inner = self.inner.lock().map_err(|_| poisoned())?;
        let replayed;
        let map = match &inner.snapshot {
            Some(m) => m,
            None => {
                let mut m = BTreeMap::new();
                replay(&self.dir.join("state.log"), &mut m)?;
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

    async fn commit(&self, epoch: Epoch, ops: Vec<Op>) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        let mut inner = self.inner.lock().map_err(|_| poisoned())?;
        if epoch != inner.epoch {
            return Err(StoreError::Fenced {
                ours: epoch,
                current: inner.epoch,
            });
        }
        for op in &ops {
            if let Op::Create { key, .. } = op {
                if inner.sizes.contains_key(key) {
                    return Err(StoreError::Conflict(key.clone()));
                }
            }
        }
        inner.snapshot = None;
        self.write_batch(&mut inner, &ops)
    }
}

fn poisoned() -> StoreError {
    StoreError::Corrupt("state store lock poisoned by a panic".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str, v: &str) -> Op {
        Op::Put {
            key: k.into(),
            value: v.as_bytes().to_vec(),
        }
    }

    #[tokio::test]
    async fn survives_reopen_fences_and_cuts_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = EmbeddedStore::open(dir.path(), SyncMode::None).unwrap();
            let e = s.acquire().await.unwrap().epoch;
            assert_eq!(e, 1);
            s.commit(e, vec![put("a/1", "x"), put("a/2", "y")])
                .await
                .unwrap();
            s.commit(e, vec![Op::Delete { key: "a/1".into() }])
                .await
                .unwrap();
            assert!(matches!(
                s.commit(e + 1, vec![put("a/3", "z")]).await,
                Err(StoreError::Fenced { .. })
            ));
            let create = Op::Create {
                key: "a/2".into(),
                value: b"w".to_vec(),
            };
            assert!(matches!(
                s.commit(e, vec![put("a/4", "q"), create]).await,
                Err(StoreError::Conflict(_))
            ));
            assert!(EmbeddedStore::open(dir.path(), SyncMode::None).is_err());
        }
        // A torn frame at the end is ignored.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join("state.log"))
            .unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2, 3]).unwrap();
        drop(f);
        let s = EmbeddedStore::open(dir.path(), SyncMode::None).unwrap();
        assert_eq!(s.acquire().await.unwrap().epoch, 2);
        let all = s.load("a/").await.unwrap();
        assert_eq!(all, vec![("a/2".to_string(), b"y".to_vec())]);
    }

    #[tokio::test]
    async fn compaction_keeps_live_keys() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(dir.path(), SyncMode::None).unwrap();
        let e = s.acquire().await.unwrap().epoch;
        {
            let mut inner = s.inner.lock().unwrap();
            s.write_batch(&mut inner, &[put("k", "1")]).unwrap();
            s.write_batch(&mut inner, &[put("k", "2"), put("j", "3")])
                .unwrap();
            s.compact(&mut inner).unwrap();
        }
        s.commit(e, vec![put("i", "4")]).await.unwrap();
        drop(s);
        let s = EmbeddedStore::open(dir.path(), SyncMode::None).unwrap();
        let all = s.load("").await.unwrap();
        assert_eq!(all.len(), 4);
        assert_eq!(s.load("k").await.unwrap()[0].1, b"2");
    }
}
