//! The local-folder result store: small results are appended to segment files (one file
//! per writing process, see [`super::segment`]); other objects are files of their own.

mod list;

use super::segment::{parse_packed, read_packed, SegmentWriter, PACK_LIMIT};
use super::{checksum, Listed, ResultRef, ResultStore};
use crate::{Error, Result};
use async_trait::async_trait;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

/// A result store in a local folder.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
    segments: Arc<SegmentWriter>,
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
        let segments = Arc::new(SegmentWriter::new(root.join("segments")));
        Ok(LocalStore { root, segments })
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

    /// The file of a location, and the byte range when the object is packed in a segment.
    fn locate(&self, uri: &str) -> Result<(PathBuf, Option<(u64, u64)>)> {
        match uri.strip_prefix("file://").and_then(parse_packed) {
            Some((file, offset, len)) => {
                let path = self.uri_path(&format!("file://{file}"))?;
                Ok((path, Some((offset, len))))
            }
            None => Ok((self.uri_path(uri)?, None)),
        }
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
            } else if source.kind() == std::io::ErrorKind::PermissionDenied
                || source.raw_os_error() == Some(libc::ELOOP)
            {
                // A planted link (or a file the store may not read): said without the path.
                Error::InvalidArgument(
                    "the location is not a plain object in this store (a symbolic link?)".into(),
                )
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

    async fn put(&self, key: &str, data: bytes::Bytes, content_type: &str) -> Result<ResultRef> {
        let path = self.key_path(key)?;
        if data.len() <= PACK_LIMIT && key.starts_with("results/") {
            // A short append to the page cache: cheaper than a thread hop.
            let (segment, offset) =
                self.segments
                    .append(key, &data)
                    .map_err(|source| Error::Io {
                        location: self.root.join("segments").display().to_string(),
                        source,
                    })?;
            return Ok(ResultRef {
                uri: format!("file://{}#{}+{}", segment.display(), offset, data.len()),
                size: data.len() as u64,
                checksum: checksum(&data),
                content_type: content_type.to_string(),
            });
        }
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
        self.get_at_most(uri, u64::MAX).await
    }

    async fn get_at_most(&self, uri: &str, max: u64) -> Result<Vec<u8>> {
        let (path, range) = self.locate(uri)?;
        let (root, p) = (self.root.clone(), path.clone());
        let read = tokio::task::spawn_blocking(move || {
            let f = open_inside(&root, &p)?;
            let size = match range {
                None => f.metadata()?.len(),
                Some((_, len)) => len,
            };
            if size > max {
                return Ok(Err(Error::TooLarge { size, max }));
            }
            match range {
                None => {
                    let mut data = Vec::new();
                    std::io::Read::read_to_end(&mut std::io::Read::take(f, max), &mut data)?;
                    Ok(Ok(data))
                }
                Some((offset, len)) => read_packed(&f, offset, len).map(Ok),
            }
        })
        .await
        .map_err(|e| Self::io(&path)(std::io::Error::other(e)))?
        .map_err(Self::io(&path))?;
        read
    }

    async fn get_range(&self, uri: &str, offset: u64, len: u64) -> Result<(Vec<u8>, u64)> {
        let (path, range) = self.locate(uri)?;
        let (root, p) = (self.root.clone(), path.clone());
        tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt;
            let f = open_inside(&root, &p)?;
            let (base, size) = match range {
                None => (0, f.metadata()?.len()),
                Some(r) => r,
            };
            let start = offset.min(size);
            let n = len.min(size - start);
            let mut data = vec![0u8; usize::try_from(n).unwrap_or(usize::MAX)];
            f.read_exact_at(&mut data, base + start)?;
            Ok((data, size))
        })
        .await
        .map_err(|e| Self::io(&path)(std::io::Error::other(e)))?
        .map_err(Self::io(&path))
    }

    async fn exists(&self, uri: &str) -> Result<bool> {
        let (path, range) = self.locate(uri)?;
        match (tokio::fs::metadata(&path).await, range) {
            (Ok(_), None) => Ok(true),
            (Ok(m), Some((offset, len))) => {
                Ok(offset.checked_add(len).is_some_and(|end| m.len() >= end))
            }
            (Err(_), _) => Ok(false),
        }
    }

    /// Deletes a file; an object packed in a segment stays until its segment is reclaimed.
    async fn delete(&self, uri: &str) -> Result<()> {
        let (path, range) = self.locate(uri)?;
        if range.is_some() {
            return Ok(());
        }
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Self::io(&path)(e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Listed>> {
        self.list_files(prefix).await
    }

    async fn closed_packs(&self) -> Result<Vec<Listed>> {
        self.closed_segments().await
    }
}

/// Creates `path` (never overwriting) with `data`.
/// Writes a new file at `path`, all at once: the data goes to a temporary file beside it,
/// which is then linked into place (failing with `AlreadyExists` rather than overwrite).
/// A reader never sees a partly written object, and a failed write leaves nothing behind.
/// Opens `path` for reading only if it lies inside `root` once symbolic links are resolved,
/// and is not a link itself: a task that plants a link in a local store cannot make the
/// scheduler (or `baton result get`) read other files of its host.
fn open_inside(root: &Path, path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let real = path.canonicalize()?;
    if !real.starts_with(root) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "the location leads out of the store through a symbolic link",
        ));
    }
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&real)
}

fn write_new(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(std::io::Error::other(
            "an object path needs a folder and a name",
        ));
    };
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        uuid::Uuid::new_v4().simple()
    ));
    let open = || {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
    };
    let mut f = match open() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir)?;
            open()?
        }
        other => other?,
    };
    let written = f
        .write_all(data)
        .and_then(|()| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_planted_symbolic_link_is_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("secret");
        std::fs::write(&outside, "host file").unwrap();
        let store = LocalStore::new(dir.path().join("store")).unwrap();
        let root = store.root.clone();
        std::fs::create_dir_all(root.join("results/r")).unwrap();
        // A link as the object, and a link as one of its folders.
        std::os::unix::fs::symlink(&outside, root.join("results/r/a.json")).unwrap();
        std::os::unix::fs::symlink(dir.path(), root.join("results/d")).unwrap();
        for uri in [
            format!("file://{}/results/r/a.json", root.display()),
            format!("file://{}/results/d/secret", root.display()),
            format!("file://{}/results/r/a.json#0+4", root.display()),
        ] {
            let e = store.get(&uri).await.expect_err("followed a link");
            assert!(matches!(e, Error::InvalidArgument(_)), "{uri}: {e}");
            assert!(!e.to_string().contains("host file"));
        }
        let put = store
            .put("results/r/b.json", bytes::Bytes::from_static(b"ok"), "x")
            .await
            .unwrap();
        assert_eq!(store.get(&put.uri).await.unwrap(), b"ok");
    }

    #[tokio::test]
    async fn a_reader_with_a_limit_is_refused_larger_objects() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path()).unwrap();
        // A file, and an object packed in a segment.
        let big = bytes::Bytes::from(vec![b'1'; 100 << 10]);
        let small = bytes::Bytes::from_static(b"12345678");
        for r in [
            store.put("logs/a.json", big.clone(), "x").await.unwrap(),
            store
                .put("results/b.json", small.clone(), "x")
                .await
                .unwrap(),
        ] {
            let size = r.size;
            assert_eq!(
                store.get_at_most(&r.uri, size).await.unwrap().len() as u64,
                size
            );
            let e = store.get_at_most(&r.uri, size - 1).await.unwrap_err();
            assert!(matches!(e, Error::TooLarge { .. }), "{e}");
            assert!(e.to_string().contains("over the limit"), "{e}");
            // Parts by byte range (a packed object's within its own bytes only).
            let whole = store.get(&r.uri).await.unwrap();
            let (part, total) = store.get_range(&r.uri, 2, 3).await.unwrap();
            assert_eq!((part.as_slice(), total), (&whole[2..5], size));
            let (tail, _) = store.get_range(&r.uri, size - 2, 100).await.unwrap();
            assert_eq!(tail, whole[whole.len() - 2..]);
            assert!(store.get_range(&r.uri, size, 1).await.unwrap().0.is_empty());
        }
    }

    #[tokio::test]
    async fn put_never_overwrites_and_refuses_escapes() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path()).unwrap();
        let r = store
            .put(
                "a/b.json",
                bytes::Bytes::from_static(b"1"),
                "application/json",
            )
            .await
            .unwrap();
        assert_eq!(store.get(&r.uri).await.unwrap(), b"1");
        assert!(matches!(
            store
                .put("a/b.json", bytes::Bytes::from_static(b"2"), "x")
                .await,
            Err(Error::AlreadyExists(_))
        ));
        assert_eq!(store.get(&r.uri).await.unwrap(), b"1");
        assert!(store.get("file:///etc/passwd").await.is_err());
        let escape = format!("{}/../x", store.root_uri());
        assert!(store.get(&escape).await.is_err());
        store.delete(&r.uri).await.unwrap();
        assert!(!store.exists(&r.uri).await.unwrap());
        // Small results are packed into a segment, and read back by their range.
        let a = store
            .put(
                "results/r/t/attempt-1.json",
                bytes::Bytes::from_static(b"[1,2]"),
                "application/json",
            )
            .await
            .unwrap();
        let b = store
            .put(
                "results/r/t/0.attempt-1.json",
                bytes::Bytes::from_static(b"\"x\""),
                "application/json",
            )
            .await
            .unwrap();
        assert!(
            a.uri.contains("/segments/") && a.uri.contains('#'),
            "{}",
            a.uri
        );
        assert_eq!(store.get(&a.uri).await.unwrap(), b"[1,2]");
        assert_eq!(store.get(&b.uri).await.unwrap(), b"\"x\"");
        assert!(store.exists(&b.uri).await.unwrap());
        let beyond = a.uri.replace("+5", "+500000");
        assert!(store.get(&beyond).await.is_err());
        let outside = "file:///etc/passwd#0+4";
        assert!(store.get(outside).await.is_err());
        assert!(matches!(store.get(&r.uri).await, Err(Error::NotFound(_))));
    }
}

#[cfg(test)]
mod atomic {
    use super::*;

    #[tokio::test]
    async fn an_object_appears_whole_or_not_at_all_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(LocalStore::new(dir.path()).unwrap());
        let big = bytes::Bytes::from(vec![7u8; 8 << 20]);
        let uri = format!("{}/archive/runs/r.pb", store.root_uri());
        let reader = {
            let (store, uri) = (store.clone(), uri.clone());
            tokio::spawn(async move {
                for _ in 0..2000 {
                    match store.get(&uri).await {
                        Ok(b) => return Some(b.len()),
                        Err(Error::NotFound(_)) => tokio::task::yield_now().await,
                        Err(e) => panic!("{e}"),
                    }
                }
                None
            })
        };
        store
            .put("archive/runs/r.pb", big.clone(), "application/x-protobuf")
            .await
            .unwrap();
        if let Some(len) = reader.await.unwrap() {
            assert_eq!(len, big.len(), "a reader saw a partly written object");
        }
        assert!(matches!(
            store.put("archive/runs/r.pb", big, "x").await,
            Err(Error::AlreadyExists(_))
        ));
        let names: Vec<String> = std::fs::read_dir(dir.path().join("archive/runs"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["r.pb"]);
    }
}
