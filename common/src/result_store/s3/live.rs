//! The SDK client of a store, rebuilt when its private CA file changes (checked at most
//! once a second, on use), so that a renewed CA is trusted without a restart.

use super::options::{self, S3Options};
use aws_sdk_s3::Client;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

/// How often the CA file is looked at.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// See the module docs.
#[derive(Clone)]
pub(super) struct LiveClient {
    inner: Arc<Inner>,
}

struct Inner {
    options: S3Options,
    client: RwLock<Client>,
    /// The CA file's modification time and length when the client was built, and when it
    /// was last looked at.
    seen: Mutex<(Option<(SystemTime, u64)>, Instant)>,
}

impl std::fmt::Debug for LiveClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveClient")
            .field("ca_file", &self.inner.options.ca_file)
            .finish()
    }
}

impl LiveClient {
    pub(super) async fn new(options: S3Options) -> crate::Result<LiveClient> {
        let stamp = stamp(&options);
        let client = options::sdk_client(&options).await?;
        Ok(LiveClient {
            inner: Arc::new(Inner {
                options,
                client: RwLock::new(client),
                seen: Mutex::new((stamp, Instant::now())),
            }),
        })
    }

    /// The client to use now.
    pub(super) async fn get(&self) -> Client {
        if self.inner.options.ca_file.is_some() && self.changed() {
            match options::sdk_client(&self.inner.options).await {
                Ok(client) => {
                    tracing::info!("the S3 CA file changed; trusting the new one");
                    *self.inner.client.write().unwrap_or_else(|e| e.into_inner()) = client;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the S3 CA file changed but does not load; keeping the one in use")
                }
            }
        }
        self.inner
            .client
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether the CA file changed since it was last looked at (at most once a second).
    fn changed(&self) -> bool {
        let mut seen = self.inner.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.1.elapsed() < CHECK_EVERY {
            return false;
        }
        let now = stamp(&self.inner.options);
        let changed = now != seen.0;
        *seen = (now, Instant::now());
        changed
    }
}

fn stamp(options: &S3Options) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(options.ca_file.as_ref()?).ok()?;
    Some((m.modified().ok()?, m.len()))
}
