//! A replica's etcd lease, kept alive by our own loop: a keep-alive every TTL/3, a deadline
//! on the monotonic clock (the last successful keep-alive's send time plus the TTL, less a
//! margin), the stream reopened after errors until that deadline. The lease is lost when
//! etcd answers TTL 0 or the deadline passes; `lost` is then cancelled.

use etcd_client::Client;
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
    client: Client,
}

impl Lease {
    /// Grants a lease of `ttl` and starts keeping it alive.
    pub async fn grant(client: &Client, ttl: Duration) -> Result<Lease, etcd_client::Error> {
        let sent = Instant::now();
        let ttl_s = ttl.as_secs().max(2) as i64;
        let resp = timeout(CALL_LIMIT, client.lease_client().grant(ttl_s, None))
            .await
            .map_err(|_| {
                etcd_client::Error::LeaseKeepAliveError("lease grant timed out".into())
            })??;
        let ttl = Duration::from_secs(resp.ttl().max(1) as u64);
        let deadline = Arc::new(Mutex::new(sent + ttl.saturating_sub(margin(ttl))));
        let lost = CancellationToken::new();
        let lease = Lease {
            id: resp.id(),
            lost: lost.clone(),
            deadline: deadline.clone(),
            client: client.clone(),
        };
        tokio::spawn(keep_alive(client.clone(), resp.id(), ttl, deadline, lost));
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
        let _ = timeout(CALL_LIMIT, self.client.lease_client().revoke(self.id)).await;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.lost.cancel();
    }
}

async fn keep_alive(
    client: Client,
    id: i64,
    ttl: Duration,
    deadline: Arc<Mutex<Instant>>,
    lost: CancellationToken,
) {
    let every = ttl / 3;
    let get = |d: &Arc<Mutex<Instant>>| *d.lock().unwrap_or_else(|e| e.into_inner());
    'reopen: loop {
        if lost.is_cancelled() || Instant::now() >= get(&deadline) {
            break;
        }
        let mut leases = client.lease_client();
        let opened = tokio::select! {
            r = timeout(CALL_LIMIT, leases.keep_alive(id)) => r,
            _ = tokio::time::sleep_until(get(&deadline)) => break,
            _ = lost.cancelled() => break,
        };
        let (mut keeper, mut stream) = match opened {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => {
                tracing::warn!(lease = id, error = %e, "cannot open the lease keep-alive stream");
                tokio::time::sleep(Duration::from_millis(300)).await;
                continue;
            }
            Err(_) => continue,
        };
        loop {
            let sent = Instant::now();
            let answer = tokio::select! {
                r = async {
                    keeper.keep_alive().await?;
                    stream.message().await
                } => r,
                _ = tokio::time::sleep(CALL_LIMIT) => {
                    tracing::warn!(lease = id, "lease keep-alive timed out; reopening");
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
