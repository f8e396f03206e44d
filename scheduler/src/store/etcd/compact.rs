//! The leader compacts etcd's history: every write keeps a revision until it is compacted,
//! so without this a cluster running 100,000-task runs fills etcd's 2 GiB quota (each task
//! run's records are written two or three times). Every period (30 s by default) the leader
//! compacts to the revision it saw one period before, so that history younger than one
//! period stays for anyone reading it; etcd then reuses the freed pages of its database.

use super::pool::Pool;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Compacts every `every` until either of `stop` is cancelled (leadership lost, store
/// closed).
pub async fn run(pool: Arc<Pool>, key: Vec<u8>, every: Duration, stop: [CancellationToken; 2]) {
    let mut seen: Option<i64> = None;
    let mut done = 0;
    loop {
        tokio::select! {
            () = stop[0].cancelled() => return,
            () = stop[1].cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let picked = pool.pick();
        let now = match picked.client.kv_client().get(key.clone(), None).await {
            Ok(r) => r.header().map(|h| h.revision()),
            Err(e) => {
                tracing::debug!(error = %e, "cannot read etcd's revision");
                pool.failed(&picked);
                continue;
            }
        };
        if let Some(target) = seen.filter(|&r| r > done) {
            match picked.client.kv_client().compact(target, None).await {
                Ok(_) => {
                    tracing::debug!(revision = target, "compacted etcd's history");
                    done = target;
                }
                // Compacted already (by another leader, or by etcd's own auto-compaction).
                Err(e) if e.to_string().contains("compacted") => done = target,
                Err(e) => tracing::warn!(error = %e, "cannot compact etcd's history"),
            }
        }
        seen = now;
    }
}
