//! Leader election with etcd's election API, verified after campaign, and the replica
//! registry: each replica's address under a key bound to its lease, and a poller that
//! keeps every replica's view of who leads.

use super::keys::Keys;
use super::pool::Pool;
use crate::store::ClusterView;
use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

/// What a won campaign yields: the election key and its create revision (the epoch).
#[derive(Clone, Debug)]
pub struct Won {
    pub key: Vec<u8>,
    pub epoch: u64,
}

/// Why a campaign did not yield leadership.
#[derive(Debug, thiserror::Error)]
pub enum CampaignError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("campaign returned without leadership (the lease expired while waiting)")]
    NotLeader,
}

/// Campaigns on `lease` until elected, then checks with a transaction that the election key
/// still exists with the returned create revision (etcd 3.4 can return from campaign
/// without leadership when the lease expired while waiting).
pub async fn campaign(
    client: &Client,
    keys: &Keys,
    address: &str,
    lease: i64,
) -> Result<Won, CampaignError> {
    let resp = client
        .election_client()
        .campaign(keys.election(), address, lease)
        .await?;
    let leader = resp.leader().ok_or(CampaignError::NotLeader)?;
    let won = Won {
        key: leader.key().to_vec(),
        epoch: leader.rev() as u64,
    };
    let check = Txn::new().when([Compare::create_revision(
        won.key.clone(),
        CompareOp::Equal,
        won.epoch as i64,
    )]);
    let verified = timeout(Duration::from_secs(5), client.kv_client().txn(check))
        .await
        .map_err(|_| CampaignError::NotLeader)??;
    if !verified.succeeded() {
        return Err(CampaignError::NotLeader);
    }
    Ok(won)
}

/// Writes this replica's address under its lease, so that `GetLeader` lists it.
pub async fn register_replica(
    client: &Client,
    keys: &Keys,
    id: &str,
    address: &str,
    lease: i64,
) -> Result<(), etcd_client::Error> {
    let value = serde_json::json!({ "id": id, "address": address }).to_string();
    let put = TxnOp::put(
        keys.replica(id),
        value,
        Some(etcd_client::PutOptions::new().with_lease(lease)),
    );
    timeout(
        Duration::from_secs(5),
        client.kv_client().txn(Txn::new().and_then([put])),
    )
    .await
    .map_err(|_| etcd_client::Error::ElectError("registering the replica timed out".into()))??;
    Ok(())
}

/// Keeps `view` up to date (every `every`) until `stop`. A view that could not be read back
/// for `stale_after` (a leadership lease) forgets its leader: that leader may have lost its
/// lease since, so naming it would send clients and workers to a deposed replica (or make a
/// deposed leader cut off from etcd go on naming itself).
pub async fn poll_view(
    pool: Arc<Pool>,
    keys: Keys,
    view: Arc<RwLock<ClusterView>>,
    every: Duration,
    stale_after: Duration,
    stop: CancellationToken,
) {
    let mut read_at = tokio::time::Instant::now();
    loop {
        let started = tokio::time::Instant::now();
        let picked = pool.pick();
        let failed = match timeout(Duration::from_secs(2), read_view(&picked.client, &keys)).await {
            Ok(Ok(v)) => {
                read_at = started;
                let mut cur = view.write().unwrap_or_else(|e| e.into_inner());
                if *cur != v {
                    tracing::debug!(leader = ?v.leader, epoch = v.epoch, "cluster view changed");
                    *cur = v;
                }
                false
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "cannot read the cluster view");
                true
            }
            Err(_) => {
                tracing::debug!("reading the cluster view timed out");
                true
            }
        };
        if failed {
            pool.failed(&picked);
        }
        if failed && read_at.elapsed() >= stale_after {
            let mut cur = view.write().unwrap_or_else(|e| e.into_inner());
            if let Some(leader) = cur.leader.take() {
                tracing::warn!(
                    %leader,
                    epoch = cur.epoch,
                    stale_ms = read_at.elapsed().as_millis() as u64,
                    "cannot read who leads from etcd; forgetting the leader"
                );
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
    }
}

async fn read_view(client: &Client, keys: &Keys) -> Result<ClusterView, etcd_client::Error> {
    let mut kv = client.kv_client();
    // The leader is the owner of the election key with the lowest create revision.
    let leaders = kv
        .get(
            keys.election_prefix(),
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_sort(
                        etcd_client::SortTarget::Create,
                        etcd_client::SortOrder::Ascend,
                    )
                    .with_limit(1),
            ),
        )
        .await?;
    let (leader, epoch) = match leaders.kvs().first() {
        Some(kv) => (
            Some(String::from_utf8_lossy(kv.value()).into_owned()),
            kv.create_revision() as u64,
        ),
        None => (None, 0),
    };
    let replicas = kv
        .get(keys.replicas(), Some(GetOptions::new().with_prefix()))
        .await?;
    let mut list = Vec::new();
    for kv in replicas.kvs() {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(kv.value()) {
            let id = v["id"].as_str().unwrap_or_default().to_string();
            let address = v["address"].as_str().unwrap_or_default().to_string();
            list.push((id, address));
        }
    }
    Ok(ClusterView {
        leader,
        epoch,
        replicas: list,
    })
}
