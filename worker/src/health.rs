//! The worker's health as a file, for container health checks: while the worker hears from
//! a leader it touches the file (at most once a second), and `baton-worker --check-health`
//! says healthy when the file was touched within the leader lease.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// How often the file is touched at most.
const TOUCH_EVERY: Duration = Duration::from_secs(1);

/// The file a running worker touches.
#[derive(Debug)]
pub struct HealthFile {
    path: PathBuf,
    touched: Option<Instant>,
}

impl HealthFile {
    pub fn new(path: PathBuf) -> HealthFile {
        HealthFile {
            path,
            touched: None,
        }
    }

    /// The worker heard from a leader at `now`.
    pub fn heard(&mut self, now: Instant) {
        if self
            .touched
            .is_some_and(|t| now.saturating_duration_since(t) < TOUCH_EVERY)
        {
            return;
        }
        self.touched = Some(now);
        if let Err(e) = std::fs::write(&self.path, b"ok\n") {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot write the health file");
        }
    }
}

/// Whether the worker that touches `path` heard from a leader within `lease`: `Ok` with a
/// line to print, or `Err` saying why not.
pub fn check(path: &Path, lease: Duration) -> Result<String, String> {
    let modified = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .map_err(|e| format!("no health file {}: {e}", path.display()))?;
    let age = SystemTime::now()
        .duration_since(modified)
        .unwrap_or(Duration::ZERO);
    if age <= lease {
        Ok(format!(
            "healthy: heard from a leader {} ms ago",
            age.as_millis()
        ))
    } else {
        Err(format!(
            "unhealthy: no leader heard from for {} s (lease {} s)",
            age.as_secs(),
            lease.as_secs()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recent_touch_is_healthy_and_a_missing_file_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("health");
        assert!(check(&path, Duration::from_secs(15)).is_err());
        let mut h = HealthFile::new(path.clone());
        h.heard(Instant::now());
        assert!(check(&path, Duration::from_secs(15)).is_ok());
        let old = SystemTime::now() - Duration::from_secs(60);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let e = check(&path, Duration::from_secs(15)).unwrap_err();
        assert!(e.contains("unhealthy"), "{e}");
    }
}
