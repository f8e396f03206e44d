//! A replica's etcd lease, kept alive by our own loop: a keep-alive every TTL/3, a deadline
//! on the monotonic clock (the last successful keep-alive's send time plus the TTL, less a
//! margin), the stream reopened after errors until that deadline. The lease is lost when
//! etcd answers TTL 0 or the deadline passes; `lost` is then cancelled.

use super::pool::Pool;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;

/// Taken off the TTL so that we give up before etcd expires the lease: a tenth of it,
/// between 200 ms and 1.5 s.
fn margin(ttl: Duration) -> Duration {
    (ttl / 10).clamp(Duration::from_millis(200), Duration::from_millis(1500))
}
/// Longest wait for one lease request or keep-alive answer.
const CALL_LIMIT: Duration = Duration::from_secs(3);

/// A granted lease and its keep-alive loop.
pub struct Lease {
    pub id: i64,
    /// Cancelled once the lease is lost (or dropped).
    pub lost: CancellationToken,
    deadline: Arc<Mutex<Instant>>,
    pool: Arc<Pool>,
}

impl Lease {
    /// Grants a lease of `ttl` and starts keeping it alive.
    pub async fn grant(pool: &Arc<Pool>, ttl: Duration) -> Result<Lease, etcd_client::Error> {
        let sent = Instant::now();
        let ttl_s = ttl.as_secs().max(2) as i64;
        let picked = pool.pick();
        let granted = timeout(CALL_LIMIT, picked.client.lease_client().grant(ttl_s, None))
            .await
            .map_err(|_| etcd_client::Error::LeaseKeepAliveError("lease grant timed out".into()))
            .and_then(|r| r);
        let resp = granted.inspect_err(|_| pool.failed(&picked))?;
        let ttl = Duration::from_secs(resp.ttl().max(1) as u64);
        let deadline = Arc::new(Mutex::new(sent + ttl.saturating_sub(margin(ttl))));
        let lost = CancellationToken::new();
        let lease = Lease {
            id: resp.id(),
            lost: lost.clone(),
            deadline: deadline.clone(),
            pool: pool.clone(),
        };
        tokio::spawn(keep_alive(pool.clone(), resp.id(), ttl, deadline, lost));
        Ok(lease)
    }

    /// Whether the lease is certainly still held (on the local clock).
    pub fn alive(&self) -> bool {
        !self.lost.is_cancelled() && Instant::now() < self.deadline()
    }

    fn deadline(&self) -> Instant {
        *self.deadline.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Revokes the lease (best effort) and stops its keep-alive.
    pub async fn revoke(&self) {
        self.lost.cancel();
        let picked = self.pool.pick();
        let _ = timeout(CALL_LIMIT, picked.client.lease_client().revoke(self.id)).await;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.lost.cancel();
    }
}

async fn keep_alive(
    pool: Arc<Pool>,
    id: i64,
    ttl: Duration,
    deadline: Arc<Mutex<Instant>>,
    lost: CancellationToken,
) {
    let every = ttl / 3;
    // A keep-alive not answered within this goes to another endpoint.
    let limit = (ttl / 4).clamp(Duration::from_millis(500), CALL_LIMIT);
    let get = |d: &Arc<Mutex<Instant>>| *d.lock().unwrap_or_else(|e| e.into_inner());
    'reopen: loop {
        if lost.is_cancelled() || Instant::now() >= get(&deadline) {
            break;
        }
        let picked = pool.pick();
        let mut leases = picked.client.lease_client();
        let opened = tokio::select! {
            r = timeout(limit, leases.keep_alive(id)) => r,
            _ = tokio::time::sleep_until(get(&deadline)) => break,
            _ = lost.cancelled() => break,
        };
        let (mut keeper, mut stream) = match opened {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => {
                tracing::warn!(lease = id, error = %e, "cannot open the lease keep-alive stream");
                pool.failed(&picked);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(_) => {
                pool.failed(&picked);
                continue;
            }
        };
        loop {
            let sent = Instant::now();
            let answer = tokio::select! {
                r = async {
                    keeper.keep_alive().await?;
                    stream.message().await
                } => r,
                _ = tokio::time::sleep(limit) => {
                    tracing::warn!(lease = id, "lease keep-alive timed out; reopening");
                    pool.failed(&picked);
                    continue 'reopen;
                }
                _ = tokio::time::sleep_until(get(&deadline)) => break 'reopen,
                _ = lost.cancelled() => break 'reopen,
            };
            match answer {
                Ok(Some(r)) if r.ttl() > 0 => {
                    let ttl = Duration::from_secs(r.ttl() as u64);
                    *deadline.lock().unwrap_or_else(|e| e.into_inner()) =
                        sent + ttl.saturating_sub(margin(ttl));
                }
                Ok(Some(_)) => {
                    tracing::warn!(lease = id, "etcd says the lease has expired");
                    break 'reopen;
                }
                Ok(None) | Err(_) => {
                    tracing::warn!(lease = id, "lease keep-alive stream ended; reopening");
                    pool.failed(&picked);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue 'reopen;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = lost.cancelled() => break 'reopen,
            }
        }
    }
    if !lost.is_cancelled() {
        tracing::warn!(lease = id, "lease lost");
    }
    lost.cancel();
}
