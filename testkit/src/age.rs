//! Making files look old: garbage collection considers only objects last written longer
//! ago than its grace period, and tests cannot wait an hour.

use std::path::Path;
use std::time::{Duration, SystemTime};

/// Sets the modification time of every file under `dir` (recursively; links are not
/// followed) to `ago` before now; returns how many files it changed. The S3 test server
/// keeps objects as files and gives their modification time as `LastModified`.
pub fn backdate(dir: &Path, ago: Duration) -> anyhow::Result<usize> {
    let when = SystemTime::now() - ago;
    let mut n = 0;
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                folders.push(entry.path());
            } else if kind.is_file() {
                std::fs::File::options()
                    .append(true)
                    .open(entry.path())?
                    .set_modified(when)?;
                n += 1;
            }
        }
    }
    Ok(n)
}
