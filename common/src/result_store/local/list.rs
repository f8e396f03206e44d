//! Listing a local store's files, and which of its segments no writer holds any more.

use super::LocalStore;
use crate::result_store::{Listed, MAX_LISTED};
use crate::{Error, Result};
use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};

impl LocalStore {
    /// Every file whose key starts with `prefix` (temporary files of writes under way
    /// excepted).
    pub(super) async fn list_files(&self, prefix: &str) -> Result<Vec<Listed>> {
        // The folder to walk: the prefix up to its last `/`.
        let folder = prefix.rsplit_once('/').map_or("", |(f, _)| f);
        let start = if folder.is_empty() {
            self.root.clone()
        } else {
            self.key_path(folder)?
        };
        let (root, prefix) = (self.root.clone(), prefix.to_string());
        let location = start.display().to_string();
        tokio::task::spawn_blocking(move || walk(&root, &start, &prefix))
            .await
            .map_err(|e| Error::Io {
                location: location.clone(),
                source: std::io::Error::other(e),
            })?
            .map_err(|source| Error::Io { location, source })?
    }

    /// The segments that no writer holds open: each writer holds a shared lock on its
    /// segment from creating it until it closes it (or its process ends), so an exclusive
    /// lock that is granted at once proves that nothing will be appended to it again.
    pub(super) async fn closed_segments(&self) -> Result<Vec<Listed>> {
        let all = self.list_files("segments/").await?;
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || {
            all.into_iter()
                .filter(|l| {
                    let path = l.uri.strip_prefix("file://").map(Path::new);
                    path.is_some_and(|p| p.starts_with(&root) && unheld(p))
                })
                .collect()
        })
        .await
        .map_err(|e| Error::Io {
            location: self.root.join("segments").display().to_string(),
            source: std::io::Error::other(e),
        })
    }
}

/// Whether no one holds a lock on the file at `path`.
fn unheld(path: &Path) -> bool {
    match File::open(path).map(|f| f.try_lock()) {
        Ok(Ok(())) => true,
        Ok(Err(TryLockError::WouldBlock)) | Ok(Err(TryLockError::Error(_))) | Err(_) => false,
    }
}

fn walk(root: &Path, start: &Path, prefix: &str) -> std::io::Result<Result<Vec<Listed>>> {
    let mut out = Vec::new();
    let mut folders: Vec<PathBuf> = vec![start.to_path_buf()];
    while let Some(folder) = folders.pop() {
        let entries = match std::fs::read_dir(&folder) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let path = entry.path();
            // Links are never followed, temporary files never listed.
            let kind = entry.file_type()?;
            if entry.file_name().to_string_lossy().starts_with('.') || kind.is_symlink() {
                continue;
            }
            if kind.is_dir() {
                folders.push(path);
                continue;
            }
            let Ok(key) = path.strip_prefix(root) else {
                continue;
            };
            if !key.to_string_lossy().starts_with(prefix) {
                continue;
            }
            let meta = entry.metadata()?;
            out.push(Listed {
                uri: format!("file://{}", path.display()),
                size: meta.len(),
                modified: meta.modified()?,
                // A file's birth time is not kept by copies (a restore, rsync): unknown.
                created: None,
            });
            if out.len() > MAX_LISTED {
                return Ok(Err(Error::InvalidArgument(format!(
                    "more than {MAX_LISTED} objects under {}",
                    start.display()
                ))));
            }
        }
    }
    Ok(Ok(out))
}
