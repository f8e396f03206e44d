//! Segment files: small objects appended to one file per writing process, so that a wide
//! fan-out does not create (and the file system does not allocate) a file per result. An
//! object in a segment is addressed as `file:///<root>/segments/<name>.seg#<offset>+<len>`.
//! Each record is `[key len u32][key][data len u32][data]`; offsets are never reused, so a
//! location always names the same bytes.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

/// Objects up to this size under `results/` are packed into segments.
pub const PACK_LIMIT: usize = 64 * 1024;
/// A segment is closed and a new one started past this size.
const SEGMENT_BYTES: u64 = 256 << 20;

struct Open {
    file: File,
    path: PathBuf,
    len: u64,
}

/// The appender of one process's segments.
pub struct SegmentWriter {
    dir: PathBuf,
    current: Mutex<Option<Open>>,
}

impl std::fmt::Debug for SegmentWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentWriter")
            .field("dir", &self.dir)
            .finish()
    }
}

impl SegmentWriter {
    pub fn new(dir: PathBuf) -> Self {
        SegmentWriter {
            dir,
            current: Mutex::new(None),
        }
    }

    fn open_new(&self) -> std::io::Result<Open> {
        std::fs::create_dir_all(&self.dir)?;
        let name = format!(
            "{}-{}.seg",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        );
        let path = self.dir.join(name);
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)?;
        // Held until the segment is closed (or the process ends): garbage collection
        // reclaims only segments no writer holds (see `LocalStore::closed_packs`).
        file.lock_shared()?;
        Ok(Open { file, path, len: 0 })
    }

    /// Appends an object; returns its segment's path and the object's offset.
    pub fn append(&self, key: &str, data: &[u8]) -> std::io::Result<(PathBuf, u64)> {
        let mut record = Vec::with_capacity(8 + key.len() + data.len());
        record.extend_from_slice(&(key.len() as u32).to_le_bytes());
        record.extend_from_slice(key.as_bytes());
        record.extend_from_slice(&(data.len() as u32).to_le_bytes());
        record.extend_from_slice(data);
        let mut guard = self
            .current
            .lock()
            .map_err(|_| std::io::Error::other("segment writer poisoned"))?;
        if guard.as_ref().is_none_or(|o| o.len >= SEGMENT_BYTES) {
            *guard = Some(self.open_new()?);
        }
        let open = guard
            .as_mut()
            .ok_or_else(|| std::io::Error::other("no open segment"))?;
        let start = open.len;
        if let Err(e) = open.file.write_all(&record) {
            // A partial record must not be followed by others at wrong offsets.
            *guard = None;
            return Err(e);
        }
        open.len += record.len() as u64;
        Ok((open.path.clone(), start + 8 + key.len() as u64))
    }
}

/// Splits `path#offset+len` into its parts.
pub fn parse_packed(path: &str) -> Option<(&str, u64, u64)> {
    let (file, range) = path.split_once('#')?;
    let (offset, len) = range.split_once('+')?;
    Some((file, offset.parse().ok()?, len.parse().ok()?))
}

/// Reads `len` bytes at `offset` of a segment file.
pub fn read_packed(f: &File, offset: u64, len: u64) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    if len > PACK_LIMIT as u64 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "packed object longer than the pack limit",
        ));
    }
    let mut buf = vec![0u8; len as usize];
    f.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}
