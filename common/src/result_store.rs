//! Result references and the [`ResultStore`] trait, with the local-folder implementation.
//! Objects are written once under keys that include the attempt, and never overwritten.

use crate::{Error, Result};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Component, Path, PathBuf};
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
    async fn put(&self, key: &str, data: Vec<u8>, content_type: &str) -> Result<ResultRef>;
    /// Reads the object at `uri`.
    async fn get(&self, uri: &str) -> Result<Vec<u8>>;
    /// Whether an object exists at `uri`.
    async fn exists(&self, uri: &str) -> Result<bool>;
    /// Deletes the object at `uri`; deleting a missing object is not an error.
    async fn delete(&self, uri: &str) -> Result<()>;
}

/// Opens the store named by a URI: `file:///dir` (or a plain path).
pub fn open_store(uri: &str) -> Result<Arc<dyn ResultStore>> {
    if let Some(rest) = uri.strip_prefix("file://") {
        return Ok(Arc::new(LocalStore::new(rest)?));
    }
    if uri.contains("://") {
        return Err(Error::InvalidArgument(format!(
            "unsupported result store `{uri}`: use file:///DIR"
        )));
    }
    Ok(Arc::new(LocalStore::new(uri)?))
}

/// A result store in a local folder.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    /// A store rooted at `root`, created if missing.
    pub fn new(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref();
        std::fs::create_dir_all(root).map_err(|source| Error::Io {
            location: root.display().to_string(),
            source,
        })?;
        let root = root.canonicalize().map_err(|source| Error::Io {
            location: root.display().to_string(),
            source,
        })?;
        Ok(LocalStore { root })
    }

    fn key_path(&self, key: &str) -> Result<PathBuf> {
        let rel = Path::new(key);
        if key.is_empty() || rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(Error::InvalidArgument(format!(
                "invalid object key `{key}`"
            )));
        }
        Ok(self.root.join(rel))
    }

    fn uri_path(&self, uri: &str) -> Result<PathBuf> {
        let path = uri.strip_prefix("file://").ok_or_else(|| {
            Error::InvalidArgument(format!(
                "`{uri}` is not a location in this store ({})",
                self.root_uri()
            ))
        })?;
        let rel = Path::new(path).strip_prefix(&self.root).map_err(|_| {
            Error::InvalidArgument(format!(
                "`{uri}` lies outside this store ({})",
                self.root_uri()
            ))
        })?;
        self.key_path(&rel.to_string_lossy())
    }

    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
        move |source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                Error::NotFound(format!("file://{}", path.display()))
            } else {
                Error::Io {
                    location: path.display().to_string(),
                    source,
                }
            }
        }
    }
}

#[async_trait]
impl ResultStore for LocalStore {
    fn root_uri(&self) -> String {
        format!("file://{}", self.root.display())
    }

    async fn put(&self, key: &str, data: Vec<u8>, content_type: &str) -> Result<ResultRef> {
        let path = self.key_path(key)?;
        let uri = format!("file://{}", path.display());
        let checksum = checksum(&data);
        let size = data.len() as u64;
        // One blocking call for the whole write: open (creating the folder only when it is
        // missing), write, close.
        let written = tokio::task::spawn_blocking(move || write_new(&path, &data))
            .await
            .map_err(|e| Error::Io {
                location: uri.clone(),
                source: std::io::Error::other(e),
            })?;
        match written {
            Ok(()) => Ok(ResultRef {
                uri,
                size,
                checksum,
                content_type: content_type.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(Error::AlreadyExists(uri))
            }
            Err(source) => Err(Error::Io {
                location: uri,
                source,
            }),
        }
    }

    async fn get(&self, uri: &str) -> Result<Vec<u8>> {
        let path = self.uri_path(uri)?;
        tokio::fs::read(&path).await.map_err(Self::io(&path))
    }

    async fn exists(&self, uri: &str) -> Result<bool> {
        let path = self.uri_path(uri)?;
        Ok(tokio::fs::try_exists(&path).await.unwrap_or(false))
    }

    async fn delete(&self, uri: &str) -> Result<()> {
        let path = self.uri_path(uri)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Self::io(&path)(e)),
        }
    }
}

/// Creates `path` (never overwriting) with `data`.
fn write_new(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let open = || {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
    };
    let mut f = match open() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            open()?
        }
        other => other?,
    };
    f.write_all(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_never_overwrites_and_refuses_escapes() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path()).unwrap();
        let r = store
            .put("a/b.json", b"1".to_vec(), "application/json")
            .await
            .unwrap();
        assert_eq!(store.get(&r.uri).await.unwrap(), b"1");
        assert!(matches!(
            store.put("a/b.json", b"2".to_vec(), "x").await,
            Err(Error::AlreadyExists(_))
        ));
        assert_eq!(store.get(&r.uri).await.unwrap(), b"1");
        assert!(store.get("file:///etc/passwd").await.is_err());
        let escape = format!("{}/../x", store.root_uri());
        assert!(store.get(&escape).await.is_err());
        store.delete(&r.uri).await.unwrap();
        assert!(!store.exists(&r.uri).await.unwrap());
        assert!(matches!(store.get(&r.uri).await, Err(Error::NotFound(_))));
    }
}
