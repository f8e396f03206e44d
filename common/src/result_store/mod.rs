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
