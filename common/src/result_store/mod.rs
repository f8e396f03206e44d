//! Result references and the [`ResultStore`] trait, with its local-folder and S3
//! implementations. Objects are written once under keys that include the attempt, and
//! never overwritten.

#[cfg(test)]
mod fuzz;
mod local;
mod s3;
mod segment;

pub use local::LocalStore;
pub use s3::{S3Options, S3Store, StaticCredentials, PART_BYTES};

use crate::{Error, Result};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::SystemTime;

/// Where a result lies, with what is needed to check it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultRef {
    pub uri: String,
    pub size: u64,
    pub checksum: String,
    pub content_type: String,
}

impl From<ResultRef> for baton_proto::ResultRef {
    fn from(r: ResultRef) -> Self {
        baton_proto::ResultRef {
            uri: r.uri,
            size: r.size,
            checksum: r.checksum,
            content_type: r.content_type,
        }
    }
}

impl From<baton_proto::ResultRef> for ResultRef {
    fn from(r: baton_proto::ResultRef) -> Self {
        ResultRef {
            uri: r.uri,
            size: r.size,
            checksum: r.checksum,
            content_type: r.content_type,
        }
    }
}

/// An object as a store's listing names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    /// Its location, as `put` answers it (without a byte range).
    pub uri: String,
    pub size: u64,
    /// When it was last written to.
    pub modified: SystemTime,
    /// When its first byte was written, where the store knows (no byte in it is older).
    pub created: Option<SystemTime>,
}

/// `sha256:<hex>` of some bytes.
pub fn checksum(data: &[u8]) -> String {
    let digest = Sha256::digest(data);
    let mut s = String::with_capacity(7 + 64);
    s.push_str("sha256:");
    for b in digest {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// An object store for results and artifacts.
#[async_trait]
pub trait ResultStore: Send + Sync + 'static {
    /// The store's own location (`file:///dir` or `s3://bucket/prefix`).
    fn root_uri(&self) -> String;
    /// Writes a new object under `key`; fails with `AlreadyExists` rather than overwrite.
    /// `data` is shared, not copied: a caller that retries keeps a cheap clone.
    async fn put(&self, key: &str, data: bytes::Bytes, content_type: &str) -> Result<ResultRef>;
    /// Reads the object at `uri`.
    async fn get(&self, uri: &str) -> Result<Vec<u8>>;
    /// Reads the object at `uri` if it is at most `max` bytes; a larger one is refused
    /// (`TooLarge`) before it is read into memory.
    async fn get_at_most(&self, uri: &str, max: u64) -> Result<Vec<u8>>;
    /// Reads at most `len` bytes of the object at `uri` from byte `offset` (fewer at its
    /// end, none past it), with the object's whole size: large objects are read in parts.
    async fn get_range(&self, uri: &str, offset: u64, len: u64) -> Result<(Vec<u8>, u64)>;
    /// Whether an object exists at `uri`.
    async fn exists(&self, uri: &str) -> Result<bool>;
    /// Deletes the object at `uri`; deleting a missing object is not an error.
    async fn delete(&self, uri: &str) -> Result<()>;
    /// The objects whose keys start with `prefix` (a key prefix in this store, e.g.
    /// `archive/runs/`), at most [`MAX_LISTED`] of them.
    async fn list(&self, prefix: &str) -> Result<Vec<Listed>>;
    /// The packs of small results that no writer adds to any more: in S3 every pack (each
    /// is written whole, once), in a local folder the segments whose writer has closed
    /// them or has gone. These are what garbage collection may reclaim.
    async fn closed_packs(&self) -> Result<Vec<Listed>>;
}

/// Most objects one [`ResultStore::list`] returns: a larger listing is refused rather than
/// held in memory.
pub const MAX_LISTED: usize = 1_000_000;

/// The location of the whole object holding `uri`: a pack or segment for a packed result
/// (`…#OFFSET+LEN`), else `uri` itself.
pub fn object_of(uri: &str) -> &str {
    uri.split_once('#').map_or(uri, |(object, _)| object)
}

/// Opens the store named by a URI: `s3://bucket/prefix` (configured from the environment,
/// see [`S3Store`]), `file:///dir` or a plain path.
pub async fn open_store(uri: &str) -> Result<Arc<dyn ResultStore>> {
    if uri.starts_with("s3://") {
        return Ok(Arc::new(S3Store::open(uri).await?));
    }
    if let Some(rest) = uri.strip_prefix("file://") {
        return Ok(Arc::new(LocalStore::new(rest)?));
    }
    if uri.contains("://") {
        return Err(Error::InvalidArgument(format!(
            "unsupported result store `{uri}`: use s3://BUCKET/PREFIX or file:///DIR"
        )));
    }
    Ok(Arc::new(LocalStore::new(uri)?))
}
