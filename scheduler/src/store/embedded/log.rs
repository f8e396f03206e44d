//! The embedded store's log format: frames `[len u32][crc32 u32][payload]`, each payload one
//! committed batch of ops (`tag u8, key len u32, key, value len u32, value`), and its replay.
//!
//! Replay tells a torn tail from corruption: a damaged frame with no intact frame anywhere
//! after it (it runs to the end of the file, or only zero bytes follow, as when a crash
//! hit while the file grew) is a torn tail that a crash can leave, and is cut off; a
//! damaged frame followed by an intact one is corruption (a flipped bit, a bad sector, a
//! damaged length), and the store refuses to open, naming the damaged frame's offset.

use super::super::{Op, StoreError};
use super::sizes::{KeyHasher, KeyId};
use std::collections::BTreeMap;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

const TAG_PUT: u8 = 1;
const TAG_DELETE: u8 = 2;
/// The largest frame replay accepts.
pub(super) const MAX_FRAME: usize = 1 << 30;
const HEADER: usize = 8;

/// Encodes one batch as one frame.
pub(super) fn encode_frame(ops: &[Op], out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER]);
    for op in ops {
        match op {
            Op::Put { key, value } | Op::Create { key, value } => {
                out.push(TAG_PUT);
                out.extend_from_slice(&(key.len() as u32).to_le_bytes());
                out.extend_from_slice(key.as_bytes());
                out.extend_from_slice(&(value.len() as u32).to_le_bytes());
                out.extend_from_slice(value);
            }
            Op::Delete { key } => delete(key, out),
            // No range deletes here: the keys the writer knows of, one by one.
            Op::DeletePrefix { keys, .. } => keys.iter().for_each(|k| delete(k, out)),
        }
    }
    let len = (out.len() - start - HEADER) as u32;
    let crc = crc32fast::hash(&out[start + HEADER..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn delete(key: &str, out: &mut Vec<u8>) {
    out.push(TAG_DELETE);
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
}

/// Bytes a frame of `ops` takes.
pub(super) fn frame_len(ops: &[Op]) -> usize {
    let op_len = |o: &Op| match o {
        Op::DeletePrefix { keys, .. } => keys.iter().map(|k| 9 + k.len()).sum(),
        o => 9 + o.size(),
    };
    HEADER + ops.iter().map(op_len).sum::<usize>()
}

/// What replay found.
#[derive(Debug, Default)]
pub(super) struct Replayed {
    /// The length of the log's good prefix (where a torn tail, if any, starts).
    pub valid: u64,
    /// The file's length.
    pub len: u64,
}

/// What replay does with each op of an intact frame.
pub(super) trait Sink {
    /// `value` lies at byte `at` of the log.
    fn put(&mut self, key: String, value: &[u8], at: u64);
    fn delete(&mut self, key: &str);
}

/// The state itself: keys and their values.
impl Sink for BTreeMap<String, Vec<u8>> {
    fn put(&mut self, key: String, value: &[u8], _at: u64) {
        self.insert(key, value.to_vec());
    }
    fn delete(&mut self, key: &str) {
        self.remove(key);
    }
}

/// Where each live op lies in the log: what compaction needs, without holding the keys or
/// the values (about 37 bytes a live key).
pub(super) struct Locations {
    ids: KeyHasher,
    pub map: std::collections::HashMap<KeyId, Location>,
}

/// A live put op in the log: its key at `key_at`, then the value's length and the value.
#[derive(Clone, Copy, Debug)]
pub(super) struct Location {
    pub key_at: u64,
    pub key_len: u32,
    pub value_len: u32,
}

impl Location {
    /// The bytes from its key to the end of its value.
    pub fn span(&self) -> usize {
        self.key_len as usize + 4 + self.value_len as usize
    }
}

impl Locations {
    pub fn new() -> Self {
        Locations {
            ids: KeyHasher::new(),
            map: std::collections::HashMap::new(),
        }
    }
}

impl Sink for Locations {
    fn put(&mut self, key: String, value: &[u8], at: u64) {
        let key_len = key.len() as u32;
        let loc = Location {
            key_at: at - 4 - u64::from(key_len),
            key_len,
            value_len: value.len() as u32,
        };
        self.map.insert(self.ids.id(&key), loc);
    }
    fn delete(&mut self, key: &str) {
        self.map.remove(&self.ids.id(key));
    }
}

/// Replays the log at `path` (up to `upto` bytes, or all of it) into `sink`, reading one
/// frame at a time (the log is never held in memory whole).
pub(super) fn replay(
    path: &Path,
    upto: Option<u64>,
    sink: &mut impl Sink,
) -> Result<Replayed, StoreError> {
    let file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let limit = upto.map_or(len, |u| u.min(len));
    let valid = replay_from(file, limit, sink)?;
    Ok(Replayed { valid, len: limit })
}

/// Replays frames from `data`; returns the length of the good prefix.
#[cfg(test)]
pub(super) fn replay_bytes(
    data: &[u8],
    map: &mut BTreeMap<String, Vec<u8>>,
) -> Result<usize, StoreError> {
    replay_from(std::io::Cursor::new(data), data.len() as u64, map).map(|v| v as usize)
}

/// Replays the first `limit` bytes of `src`; returns the length of the good prefix.
fn replay_from<R: Read + Seek>(
    mut src: R,
    limit: u64,
    sink: &mut impl Sink,
) -> Result<u64, StoreError> {
    src.seek(SeekFrom::Start(0))?;
    let mut r = BufReader::with_capacity(1 << 20, src);
    let mut pos = 0u64;
    let mut payload = Vec::new();
    while pos < limit {
        match read_frame(&mut r, limit - pos, &mut payload)? {
            Some(len) => {
                apply_payload(&payload, pos + HEADER as u64, sink).map_err(|e| {
                    StoreError::Corrupt(format!("frame at offset {pos} of the state log: {e}"))
                })?;
                pos += (HEADER + len) as u64;
            }
            None => {
                // A damaged frame: the rest of the log tells a torn tail from corruption.
                let mut src = r.into_inner();
                src.seek(SeekFrom::Start(pos))?;
                let mut rest = Vec::new();
                src.take(limit - pos).read_to_end(&mut rest)?;
                if is_torn_tail(&rest) {
                    return Ok(pos);
                }
                return Err(StoreError::Corrupt(format!(
                    "damaged frame at offset {pos} of the state log, with {} bytes of log \
                     after it (not a torn tail); restore the state folder from a backup or \
                     move the log aside",
                    rest.len()
                )));
            }
        }
    }
    Ok(pos)
}

/// Reads the frame at the reader's position into `payload`; its payload length when it is
/// whole and intact, None when it is damaged or cut short (`left`: bytes of log left).
fn read_frame(
    r: &mut impl Read,
    left: u64,
    payload: &mut Vec<u8>,
) -> std::io::Result<Option<usize>> {
    if left < HEADER as u64 {
        return Ok(None);
    }
    let mut header = [0u8; HEADER];
    r.read_exact(&mut header)?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len > MAX_FRAME || (HEADER + len) as u64 > left {
        return Ok(None);
    }
    payload.clear();
    payload.resize(len, 0);
    r.read_exact(payload)?;
    Ok((crc32fast::hash(payload) == crc).then_some(len))
}

/// The payload length of a whole, intact frame at the start of `rest`.
fn check_frame(rest: &[u8]) -> Option<usize> {
    let header = rest.get(..HEADER)?;
    let len = u32::from_le_bytes(header[0..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
    if len > MAX_FRAME {
        return None;
    }
    let payload = rest.get(HEADER..HEADER + len)?;
    (crc32fast::hash(payload) == crc).then_some(len)
}

/// Whether a damaged frame at the start of `rest` is what a crash mid-append leaves: no
/// intact, non-empty frame starts anywhere after its first byte. (Its own length field may
/// be the damaged part, so the search does not trust it.) The search stops, judging the
/// log corrupt, after checksumming 1 GiB of candidates.
fn is_torn_tail(rest: &[u8]) -> bool {
    let mut budget: usize = 1 << 30;
    for pos in 1..rest.len().saturating_sub(HEADER - 1) {
        let len =
            u32::from_le_bytes([rest[pos], rest[pos + 1], rest[pos + 2], rest[pos + 3]]) as usize;
        if len == 0 || len > MAX_FRAME || HEADER + len > rest.len() - pos {
            continue;
        }
        if budget < len {
            return false;
        }
        budget -= len;
        if check_frame(&rest[pos..]).is_some() {
            return false;
        }
    }
    true
}

/// Applies one intact frame's payload (at byte `base` of the log): all its ops, or none
/// when one is malformed.
fn apply_payload(payload: &[u8], base: u64, sink: &mut impl Sink) -> Result<(), String> {
    let mut ops = Vec::new();
    let mut p = payload;
    while let Some((&tag, rest)) = p.split_first() {
        let (key, rest) = take(rest).ok_or("an op runs past its frame")?;
        let (value, rest) = take(rest).ok_or("an op runs past its frame")?;
        let at = (payload.len() - rest.len() - value.len()) as u64;
        p = rest;
        let key = String::from_utf8(key.to_vec()).map_err(|_| "a key is not UTF-8")?;
        match tag {
            TAG_PUT | TAG_DELETE => ops.push((tag, key, value, at)),
            _ => return Err(format!("unknown op tag {tag}")),
        }
    }
    for (tag, key, value, at) in ops {
        if tag == TAG_PUT {
            sink.put(key, value, base + at);
        } else {
            sink.delete(&key);
        }
    }
    Ok(())
}

fn take(p: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u32::from_le_bytes(p.get(..4)?.try_into().ok()?) as usize;
    let rest = &p[4..];
    Some((rest.get(..len)?, rest.get(len..)?))
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

    fn log_of(batches: &[&[Op]]) -> (Vec<u8>, Vec<usize>) {
        let mut out = Vec::new();
        let mut starts = Vec::new();
        for b in batches {
            starts.push(out.len());
            encode_frame(b, &mut out);
            assert_eq!(
                out.len() - starts.last().copied().unwrap_or(0),
                frame_len(b)
            );
        }
        (out, starts)
    }

    #[test]
    fn a_torn_tail_is_cut_and_a_damaged_middle_refused_with_its_offset() {
        let (log, starts) = log_of(&[&[put("a", "1")], &[put("b", "2")], &[put("c", "3")]]);
        let mut map = BTreeMap::new();
        assert_eq!(replay_bytes(&log, &mut map).expect("intact"), log.len());
        assert_eq!(map.len(), 3);

        // The last frame cut short: a torn tail.
        let mut map = BTreeMap::new();
        let cut = &log[..log.len() - 2];
        assert_eq!(replay_bytes(cut, &mut map).expect("torn"), starts[2]);
        assert_eq!(map.keys().collect::<Vec<_>>(), ["a", "b"]);

        // The last frame damaged in place, or followed by zeros: still a torn tail.
        let mut zeros = log.clone();
        let last = zeros.len() - 1;
        zeros[last] ^= 0xff;
        zeros.extend_from_slice(&[0; 64]);
        assert_eq!(
            replay_bytes(&zeros, &mut BTreeMap::new()).expect("torn"),
            starts[2]
        );

        // One byte flipped in the middle frame, in its payload or in its length: corruption,
        // named by its offset.
        for at in [starts[1] + 10, starts[1] + 2, starts[1]] {
            let mut bad = log.clone();
            bad[at] ^= 0x41;
            let err = replay_bytes(&bad, &mut BTreeMap::new()).expect_err("corrupt");
            let msg = err.to_string();
            assert!(
                msg.contains(&format!("offset {}", starts[1])),
                "the error names the offset: {msg}"
            );
        }
    }
}
