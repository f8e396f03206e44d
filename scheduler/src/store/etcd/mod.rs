//! The [`StateStore`] on etcd: leadership through etcd's election API on a lease that our
//! own loop keeps alive, every write a transaction fenced by the election key's create
//! revision (the epoch), and a view of the leader and replicas for `GetLeader`.

mod compact;
mod election;
mod keys;
mod lease;
mod pipeline;
mod pool;
mod txn;

use super::{ClusterView, Epoch, Leadership, Op, StateStore, StoreError, Submitted};
use async_trait::async_trait;
use election::{CampaignError, Won};
use etcd_client::{ConnectOptions, GetOptions};
use keys::Keys;
use lease::Lease;
use pool::Pool;
use std::collections::HashSet;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Settings of the etcd store.
#[derive(Clone, Debug)]
pub struct EtcdConfig {
    /// etcd client URLs (`http://host:2379`).
    pub endpoints: Vec<String>,
    /// Everything of this cluster lives under `/<namespace>/`.
    pub namespace: String,
    /// This replica's id (listed by `baton leader`).
    pub replica_id: String,
    /// The address clients and workers dial to reach this replica.
    pub advertise: String,
    /// The leadership lease; about 10 s survives an etcd leader change.
    pub lease_ttl: Duration,
    /// TLS to `https://` endpoints: the files of etcd's CA and, for etcd's client
    /// certificate auth, this replica's certificate and key. They are read again when they
    /// change, so renewed certificates need no restart.
    pub tls: Option<baton_client::tls::TlsFiles>,
    /// How often the leader compacts etcd's history (see [`compact`]);
    /// [`DEFAULT_COMPACT_EVERY`] in production.
    pub compact_every: Duration,
}

/// How often the leader compacts etcd's history, and the least age of what it removes.
pub const DEFAULT_COMPACT_EVERY: Duration = Duration::from_secs(30);

/// Transactions of one batch in flight at once.
const PARALLEL_TXNS: usize = 8;
/// Keys read per page when loading.
const LOAD_PAGE: i64 = 5_000;

#[derive(Clone)]
struct Held {
    won: Won,
    lease: Arc<Lease>,
    /// The leader's committer (see [`pipeline`]).
    pipe: tokio::sync::mpsc::UnboundedSender<pipeline::Queued>,
}

/// State in etcd. See the module docs.
pub struct EtcdStore {
    pool: Arc<Pool>,
    keys: Keys,
    cfg: EtcdConfig,
    held: Mutex<Option<Held>>,
    view: Arc<RwLock<ClusterView>>,
    stop: CancellationToken,
}

/// Checks the TLS files every second and rebuilds the clients when they change.
async fn reload_tls(pool: Arc<Pool>, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => pool.reload_if_changed().await,
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl EtcdStore {
    /// Connects to etcd and starts following who leads.
    pub async fn connect(cfg: EtcdConfig) -> Result<Self, StoreError> {
        if cfg.endpoints.is_empty() {
            return Err(unavailable("no etcd endpoints configured"));
        }
        let opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        let pool = Arc::new(
            Pool::connect(&cfg.endpoints, opts, cfg.tls.clone())
                .await
                .map_err(|e| unavailable(format!("etcd endpoints {:?}: {e}", cfg.endpoints)))?,
        );
        let keys = Keys::new(&cfg.namespace);
        let view = Arc::new(RwLock::new(ClusterView::default()));
        let stop = CancellationToken::new();
        if pool.watches_files() {
            tokio::spawn(reload_tls(pool.clone(), stop.clone()));
        }
        tokio::spawn(election::poll_view(
            pool.clone(),
            keys.clone(),
            view.clone(),
            Duration::from_millis(500),
            cfg.lease_ttl,
            stop.clone(),
        ));
        Ok(EtcdStore {
            pool,
            keys,
            cfg,
            held: Mutex::new(None),
            view,
            stop,
        })
    }

    fn held_now(&self) -> Option<Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn shared(&self) -> Shared {
        Shared {
            pool: self.pool.clone(),
            keys: self.keys.clone(),
        }
    }

    /// One campaign on a fresh lease; `Ok(None)` when it must be tried again.
    async fn try_campaign(&self) -> Result<Option<Leadership>, StoreError> {
        let lease = match Lease::grant(&self.pool, self.cfg.lease_ttl).await {
            Ok(l) => Arc::new(l),
            Err(e) => {
                tracing::warn!(error = %e, "cannot grant an etcd lease");
                return Ok(None);
            }
        };
        let picked = self.pool.pick();
        if let Err(e) = election::register_replica(
            &picked.client,
            &self.keys,
            &self.cfg.replica_id,
            &self.cfg.advertise,
            lease.id,
        )
        .await
        {
            tracing::warn!(error = %e, "cannot register the replica");
            self.pool.failed(&picked);
        }
        tracing::info!(lease = lease.id, "campaigning for leadership");
        let outcome = tokio::select! {
            r = election::campaign(&picked.client, &self.keys, &self.cfg.advertise, lease.id) => r,
            _ = lease.lost.cancelled() => Err(CampaignError::NotLeader),
            _ = self.stop.cancelled() => return Err(unavailable("store closed")),
        };
        match outcome {
            Ok(won) if lease.alive() => {
                let lost = lease.lost.clone();
                let epoch = won.epoch;
                // Once the lease is lost this replica must stop naming itself leader at
                // once, even while etcd cannot be read to learn who leads now.
                let (view, me, gone) =
                    (self.view.clone(), self.cfg.advertise.clone(), lost.clone());
                tokio::spawn(async move {
                    gone.cancelled().await;
                    let mut v = view.write().unwrap_or_else(|e| e.into_inner());
                    if v.leader.as_deref() == Some(me.as_str()) && v.epoch == epoch {
                        v.leader = None;
                    }
                });
                // The leader compacts etcd's history while it leads.
                tokio::spawn(compact::run(
                    self.pool.clone(),
                    won.key.clone(),
                    self.cfg.compact_every,
                    [lost.clone(), self.stop.clone()],
                ));
                let (pipe, queued) = tokio::sync::mpsc::unbounded_channel();
                tokio::spawn(pipeline::run(
                    self.shared(),
                    won.clone(),
                    lease.clone(),
                    epoch,
                    queued,
                ));
                *self.held.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(Held { won, lease, pipe });
                Ok(Some(Leadership { epoch, lost }))
            }
            Ok(_) | Err(CampaignError::NotLeader) => {
                tracing::warn!("campaign ended without leadership; campaigning again");
                lease.revoke().await;
                Ok(None)
            }
            Err(CampaignError::Etcd(e)) => {
                tracing::warn!(error = %e, "campaign failed; campaigning again");
                self.pool.failed(&picked);
                lease.revoke().await;
                // One delay of the campaign's policy: the caller campaigns again at once.
                let delay = baton_common::retry::CAMPAIGN.delays().next();
                tokio::time::sleep(delay.unwrap_or(baton_common::retry::CAMPAIGN.first)).await;
                Ok(None)
            }
        }
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[async_trait]
impl StateStore for EtcdStore {
    async fn acquire(&self) -> Result<Leadership, StoreError> {
        loop {
            if let Some(l) = self.try_campaign().await? {
                return Ok(l);
            }
        }
    }

    async fn resign(&self, epoch: Epoch) {
        let held = {
            let mut h = self.held.lock().unwrap_or_else(|e| e.into_inner());
            match h.as_ref() {
                Some(x) if x.won.epoch == epoch => h.take(),
                _ => None,
            }
        };
        if let Some(h) = held {
            tracing::info!(epoch, "resigning leadership");
            h.lease.revoke().await;
        }
    }

    fn view(&self) -> Option<ClusterView> {
        Some(self.view.read().unwrap_or_else(|e| e.into_inner()).clone())
    }

    async fn load(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        let start = self.keys.state(prefix);
        let end = prefix_end(start.as_bytes());
        let mut from = start.into_bytes();
        loop {
            let opts = GetOptions::new()
                .with_range(end.clone())
                .with_limit(LOAD_PAGE);
            let mut tries = 0;
            let resp = loop {
                let picked = self.pool.pick();
                let got = tokio::time::timeout(
                    Duration::from_secs(10),
                    picked
                        .client
                        .kv_client()
                        .get(from.clone(), Some(opts.clone())),
                )
                .await
                .map_err(|_| unavailable("loading state from etcd timed out"))
                .and_then(|r| r.map_err(unavailable));
                match got {
                    Ok(r) => break r,
                    Err(e) if tries + 1 >= self.cfg.endpoints.len().max(2) => return Err(e),
                    Err(e) => {
                        tracing::warn!(error = %e, "loading state failed; trying another endpoint");
                        self.pool.failed(&picked);
                        tries += 1;
                    }
                }
            };
            let kvs = resp.kvs();
            for kv in kvs {
                let key = String::from_utf8_lossy(kv.key());
                if let Some(k) = self.keys.strip(&key) {
                    out.push((k.to_string(), kv.value().to_vec()));
                }
            }
            match kvs.last() {
                Some(last) if resp.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => break,
            }
        }
        Ok(out)
    }

    async fn commit(&self, epoch: Epoch, ops: Vec<Op>) -> Result<(), StoreError> {
        let Some(held) = self.held_now() else {
            return Err(StoreError::Fenced {
                ours: epoch,
                current: 0,
            });
        };
        commit_ops(&self.shared(), &held.won, &held.lease, epoch, ops).await
    }

    /// Queued to the leader's committer (see [`pipeline`]).
    fn submit(&self, epoch: Epoch, ops: Vec<Op>) -> Submitted {
        let (done, answer) = tokio::sync::oneshot::channel();
        let sent = match self.held_now() {
            Some(h) if h.won.epoch == epoch => h
                .pipe
                .send(pipeline::Queued { ops, done })
                .map_err(|_| StoreError::Unavailable("the committer has stopped".into())),
            Some(h) => Err(StoreError::Fenced {
                ours: epoch,
                current: h.won.epoch,
            }),
            None => Err(StoreError::Fenced {
                ours: epoch,
                current: 0,
            }),
        };
        Submitted::Queued(Box::pin(async move {
            sent?;
            answer
                .await
                .map_err(|_| StoreError::Unavailable("the committer has stopped".into()))?
        }))
    }
}

/// What the store's committers share with it.
#[derive(Clone)]
pub(crate) struct Shared {
    pool: Arc<Pool>,
    keys: Keys,
}

/// Writes `ops` as leader `won` (on `lease`), in fenced transactions.
pub(crate) async fn commit_ops(
    shared: &Shared,
    won: &Won,
    lease: &Lease,
    epoch: Epoch,
    ops: Vec<Op>,
) -> Result<(), StoreError> {
    if ops.is_empty() {
        return Ok(());
    }
    if won.epoch != epoch || !lease.alive() {
        return Err(StoreError::Fenced {
            ours: epoch,
            current: won.epoch,
        });
    }
    let alive = || lease.alive();
    let fence = txn::Fence {
        pool: &shared.pool,
        keys: &shared.keys,
        election_key: &won.key,
        epoch,
        alive: &alive,
        lost: &lease.lost,
    };
    let distinct = distinct(&ops);
    let chunks = txn::chunks(ops);
    let result = if distinct {
        // Chunks touch distinct keys, so their order does not matter.
        commit_parallel(&fence, &chunks).await
    } else {
        let mut r = Ok(());
        for c in &chunks {
            r = fence.commit(c).await;
            if r.is_err() {
                break;
            }
        }
        r
    };
    if let Err(e) = &result {
        if e.deposes() {
            lease.lost.cancel();
        }
    }
    result
}

/// Whether no two of `ops` touch the same key (a prefix delete touches every key under its
/// prefix), so that their transactions may land in any order.
fn distinct(ops: &[Op]) -> bool {
    let mut seen = HashSet::with_capacity(ops.len());
    if !ops.iter().all(|op| seen.insert(op.key())) {
        return false;
    }
    let prefixes: Vec<&str> = ops
        .iter()
        .filter_map(|op| match op {
            Op::DeletePrefix { prefix, .. } => Some(prefix.as_str()),
            _ => None,
        })
        .collect();
    prefixes.is_empty()
        || ops.iter().all(|op| {
            prefixes
                .iter()
                .filter(|p| op.key().starts_with(**p))
                .count()
                <= usize::from(matches!(op, Op::DeletePrefix { .. }))
        })
}

/// Commits chunks with up to [`PARALLEL_TXNS`] transactions in flight.
async fn commit_parallel(fence: &txn::Fence<'_>, chunks: &[Vec<Op>]) -> Result<(), StoreError> {
    for group in chunks.chunks(PARALLEL_TXNS) {
        futures::future::try_join_all(group.iter().map(|c| fence.commit(c))).await?;
    }
    Ok(())
}

/// The smallest key greater than every key starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}
