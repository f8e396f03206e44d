//! Fenced group commit: a batch of operations becomes etcd transactions of at most 128
//! operations and 1.5 MiB, each guarded by `create_revision(election key) == epoch` (and,
//! for a create, by the key not existing yet). A timeout or an unavailable etcd means
//! "maybe committed": the keys are read back before retrying. Keys are deterministic and
//! this leader is their only writer, so a retry is idempotent.

use super::keys::Keys;
use super::pool::Pool;
use crate::store::{Epoch, Op, StoreError};
use etcd_client::{Compare, CompareOp, DeleteOptions, GetOptions, Txn, TxnOp, TxnOpResponse};
use std::time::Duration;
use tokio::time::timeout;

/// Most operations in one transaction (etcd's default `--max-txn-ops`).
pub const MAX_TXN_OPS: usize = 128;
/// Most bytes in one transaction (etcd's default request limit is 1.5 MiB; keep headroom).
pub const MAX_TXN_BYTES: usize = 1_400_000;
/// Longest wait for one transaction; then it is "maybe committed" and read back through
/// the next endpoint.
const TXN_LIMIT: Duration = Duration::from_secs(2);

/// Splits `ops` into transaction-sized chunks, keeping order. etcd counts compares against
/// `--max-txn-ops` too: a chunk's compares are the epoch's plus one per create.
pub fn chunks(ops: Vec<Op>) -> Vec<Vec<Op>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut bytes = 0;
    let mut creates = 0;
    for op in ops {
        let size = op.size() + 16;
        let create = matches!(op, Op::Create { .. });
        if !cur.is_empty()
            && (cur.len() == MAX_TXN_OPS
                || (create && 1 + creates == MAX_TXN_OPS)
                || bytes + size > MAX_TXN_BYTES)
        {
            out.push(std::mem::take(&mut cur));
            bytes = 0;
            creates = 0;
        }
        bytes += size;
        creates += usize::from(create);
        cur.push(op);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The writer's identity for fencing.
pub struct Fence<'a> {
    pub pool: &'a Pool,
    pub keys: &'a Keys,
    pub election_key: &'a [u8],
    pub epoch: Epoch,
    /// Whether the writer's lease is still held on the local clock.
    pub alive: &'a (dyn Fn() -> bool + Sync),
    /// Cancelled when the lease is lost: a commit in flight gives up at once.
    pub lost: &'a tokio_util::sync::CancellationToken,
}

impl Fence<'_> {
    /// Commits one chunk, retrying until it is known to be applied, refused, or the lease
    /// is gone.
    pub async fn commit(&self, ops: &[Op]) -> Result<(), StoreError> {
        tokio::select! {
            r = self.commit_until_known(ops) => r,
            _ = self.lost.cancelled() => Err(self.fenced(0)),
        }
    }

    async fn commit_until_known(&self, ops: &[Op]) -> Result<(), StoreError> {
        // The transaction's outcome is checked between tries, so the loop is written out;
        // its delays are the one retry policy's.
        let mut delays = baton_common::retry::ETCD.delays();
        loop {
            if !(self.alive)() {
                return Err(self.fenced(0));
            }
            let txn = self.txn(ops);
            let picked = self.pool.pick();
            match timeout(TXN_LIMIT, picked.client.kv_client().txn(txn)).await {
                Ok(Ok(r)) if r.succeeded() => return Ok(()),
                Ok(Ok(_)) => return self.explain_refusal(ops).await,
                Ok(Err(e)) if !retryable(&e) => return Err(StoreError::Unavailable(e.to_string())),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "etcd transaction failed; checking");
                    self.pool.failed(&picked);
                }
                Err(_) => {
                    tracing::warn!("etcd transaction timed out; checking");
                    self.pool.failed(&picked);
                }
            }
            // Maybe committed: read back (through the next endpoint) before retrying.
            let picked = self.pool.pick();
            match timeout(TXN_LIMIT, self.applied(&picked.client, ops)).await {
                Ok(Ok(true)) => return Ok(()),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot read back a transaction");
                    self.pool.failed(&picked);
                }
                Err(_) => {
                    tracing::warn!("reading back a transaction timed out");
                    self.pool.failed(&picked);
                }
            }
            let delay = delays.next().unwrap_or(baton_common::retry::ETCD.max);
            tokio::time::sleep(delay).await;
        }
    }

    fn txn(&self, ops: &[Op]) -> Txn {
        let mut when = vec![Compare::create_revision(
            self.election_key.to_vec(),
            CompareOp::Equal,
            self.epoch as i64,
        )];
        let mut then = Vec::with_capacity(ops.len());
        for op in ops {
            match op {
                Op::Put { key, value } => {
                    then.push(TxnOp::put(self.keys.state(key), value.clone(), None))
                }
                Op::Create { key, value } => {
                    let k = self.keys.state(key);
                    when.push(Compare::version(k.clone(), CompareOp::Equal, 0));
                    then.push(TxnOp::put(k, value.clone(), None));
                }
                Op::Delete { key } => then.push(TxnOp::delete(self.keys.state(key), None)),
                Op::DeletePrefix { prefix, .. } => then.push(TxnOp::delete(
                    self.keys.state(prefix),
                    Some(DeleteOptions::new().with_prefix()),
                )),
            }
        }
        Txn::new().when(when).and_then(then)
    }

    /// Whether every operation's effect is in place (our writes are the only writes).
    async fn applied(
        &self,
        client: &etcd_client::Client,
        ops: &[Op],
    ) -> Result<bool, etcd_client::Error> {
        let gets: Vec<TxnOp> = ops
            .iter()
            .map(|op| match op {
                Op::DeletePrefix { prefix, .. } => TxnOp::get(
                    self.keys.state(prefix),
                    Some(
                        GetOptions::new()
                            .with_prefix()
                            .with_limit(1)
                            .with_keys_only(),
                    ),
                ),
                op => TxnOp::get(self.keys.state(op.key()), None),
            })
            .collect();
        let resp = client.kv_client().txn(Txn::new().and_then(gets)).await?;
        for (op, r) in ops.iter().zip(resp.op_responses()) {
            let TxnOpResponse::Get(g) = r else {
                return Ok(false);
            };
            let found = g.kvs().first().map(|kv| kv.value());
            let ok = match op {
                Op::Put { value, .. } | Op::Create { value, .. } => found == Some(value.as_slice()),
                Op::Delete { .. } | Op::DeletePrefix { .. } => found.is_none(),
            };
            if !ok {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// A refused transaction: fenced, or a create found its key taken.
    async fn explain_refusal(&self, ops: &[Op]) -> Result<(), StoreError> {
        let current = self.current_epoch().await;
        if current != Some(self.epoch) {
            return Err(self.fenced(current.unwrap_or(0)));
        }
        // Still leader: a create conflicted. If every value is ours, an earlier try of this
        // very transaction committed (after a timeout), so it is done.
        let picked = self.pool.pick();
        if let Ok(Ok(true)) = timeout(TXN_LIMIT, self.applied(&picked.client, ops)).await {
            return Ok(());
        }
        let key = ops
            .iter()
            .find_map(|op| match op {
                Op::Create { key, .. } => Some(key.clone()),
                _ => None,
            })
            .unwrap_or_default();
        Err(StoreError::Conflict(key))
    }

    /// The election key's create revision, if it still exists (`None` if unknown).
    async fn current_epoch(&self) -> Option<Epoch> {
        let picked = self.pool.pick();
        let r = timeout(
            TXN_LIMIT,
            picked
                .client
                .kv_client()
                .get(self.election_key.to_vec(), None),
        )
        .await
        .ok()?
        .inspect_err(|_| self.pool.failed(&picked))
        .ok()?;
        Some(
            r.kvs()
                .first()
                .map(|kv| kv.create_revision() as u64)
                .unwrap_or(0),
        )
    }

    fn fenced(&self, current: Epoch) -> StoreError {
        StoreError::Fenced {
            ours: self.epoch,
            current,
        }
    }
}

/// Errors after which the transaction may or may not have been applied.
fn retryable(e: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    match e {
        E::GRpcStatus(s) => matches!(
            s.code(),
            tonic::Code::Unavailable
                | tonic::Code::DeadlineExceeded
                | tonic::Code::Unknown
                | tonic::Code::Aborted
                | tonic::Code::Cancelled
                | tonic::Code::Internal
                | tonic::Code::ResourceExhausted
        ),
        E::TransportError(_) | E::IoError(_) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(i: usize, len: usize) -> Op {
        Op::Put {
            key: format!("k{i}"),
            value: vec![0; len],
        }
    }

    #[test]
    fn chunks_respect_op_and_byte_limits_in_order() {
        let c = chunks((0..300).map(|i| put(i, 10)).collect());
        assert_eq!(
            c.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![128, 128, 44]
        );
        assert_eq!(c[1][0], put(128, 10));
        let c = chunks((0..4).map(|i| put(i, 600_000)).collect());
        assert_eq!(c.iter().map(Vec::len).collect::<Vec<_>>(), vec![2, 2]);
        // One op larger than the limit still goes alone (etcd will refuse it by size).
        let c = chunks(vec![put(0, 2_000_000), put(1, 1)]);
        assert_eq!(c.len(), 2);
        assert!(chunks(Vec::new()).is_empty());
    }

    #[test]
    fn chunks_keep_compares_within_the_op_limit() {
        let create = |i: usize| Op::Create {
            key: format!("c{i}"),
            value: vec![0; 10],
        };
        // The epoch's compare plus one per create: at most 127 creates a chunk.
        let c = chunks((0..300).map(create).collect());
        assert_eq!(
            c.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![127, 127, 46]
        );
        assert_eq!(c[1][0], create(127));
        // Puts add no compare.
        let mixed: Vec<Op> = (0..127).map(create).chain([put(0, 10)]).collect();
        assert_eq!(chunks(mixed).len(), 1);
    }
}
