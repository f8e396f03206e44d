//! The [`StateStore`] trait: fenced, batched key-value transactions holding the scheduler's
//! durable state, with the embedded (local disk) and etcd implementations.

pub mod embedded;
pub mod etcd;

pub use embedded::EmbeddedStore;
pub use etcd::{EtcdConfig, EtcdStore};

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

/// The leader's epoch: writes stamped with an older epoch are refused.
pub type Epoch = u64;

/// One operation of a transaction.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Writes `value` at `key`.
    Put { key: String, value: Vec<u8> },
    /// Writes `value` at `key` only if nothing is there yet; otherwise the whole batch fails.
    Create { key: String, value: Vec<u8> },
    /// Removes `key`.
    Delete { key: String },
    /// Removes every key under `prefix` (a run's task runs when it is archived): one range
    /// delete where the store has them. `keys` are those under `prefix` that the writer
    /// knows of; a store without range deletes removes those one by one.
    DeletePrefix { prefix: String, keys: Vec<String> },
}

impl Op {
    /// Bytes the operation carries (for batch limits).
    pub fn size(&self) -> usize {
        match self {
            Op::Put { key, value } | Op::Create { key, value } => key.len() + value.len(),
            Op::Delete { key } => key.len(),
            Op::DeletePrefix { prefix, .. } => prefix.len(),
        }
    }

    /// The key it writes, or the prefix it deletes.
    pub fn key(&self) -> &str {
        match self {
            Op::Put { key, .. } | Op::Create { key, .. } | Op::Delete { key } => key,
            Op::DeletePrefix { prefix, .. } => prefix,
        }
    }
}

/// Errors of a state store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The writer's epoch is no longer the leader's: it must stop and step down.
    #[error("fenced: epoch {ours} is not the current epoch {current}")]
    Fenced { ours: Epoch, current: Epoch },
    /// A `Create` found its key taken; nothing in the batch was applied.
    #[error("key `{0}` already exists")]
    Conflict(String),
    /// Another process holds the store.
    #[error("state store is locked by another process: {0}")]
    Locked(String),
    /// The store's data is damaged beyond the tail that a crash can leave.
    #[error("state store is corrupt: {0}")]
    Corrupt(String),
    #[error("state store i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The store could not be reached in time; the writer may no longer lead.
    #[error("state store unavailable: {0}")]
    Unavailable(String),
}

impl StoreError {
    /// Whether the writer must stop acting as leader.
    pub fn deposes(&self) -> bool {
        !matches!(self, StoreError::Conflict(_))
    }
}

/// Leadership won by [`StateStore::acquire`].
#[derive(Clone, Debug)]
pub struct Leadership {
    pub epoch: Epoch,
    /// Cancelled when leadership is lost (lease expired, fenced); the holder must step down.
    pub lost: CancellationToken,
}

/// Who leads, as a replica sees it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterView {
    /// The leader's address, if one is known.
    pub leader: Option<String>,
    pub epoch: Epoch,
    /// (replica id, address) of every live replica.
    pub replicas: Vec<(String, String)>,
}

/// Durable state with fenced, batched writes.
#[async_trait]
pub trait StateStore: Send + Sync + 'static {
    /// Becomes the writer (waiting while another leads); its epoch is higher than any before.
    async fn acquire(&self) -> Result<Leadership, StoreError>;
    /// Gives leadership up (best effort), so that another replica takes over at once.
    async fn resign(&self, _epoch: Epoch) {}
    /// The cluster as this replica sees it; `None` for a single-node store.
    fn view(&self) -> Option<ClusterView> {
        None
    }
    /// All keys and values under `prefix`, in key order.
    async fn load(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// Applies `ops` if `epoch` is still current, and returns once they are durable.
    ///
    /// What is atomic depends on the store, and callers must not assume more:
    /// - the embedded store writes a commit as one checksummed frame: all of it or none
    ///   survives a crash or a failed write;
    /// - the etcd store writes a large commit in several fenced transactions (at most 128
    ///   operations and ~1.4 MB each, some in parallel when their keys differ): after an
    ///   error, any subset of them may have been applied.
    ///
    /// Every transaction is fenced (a deposed writer changes nothing) and a `Create` is
    /// first-wins in every store. A failed commit makes the writer step down, so nothing is
    /// acknowledged from it. What recovery relies on under a torn commit: a task run's
    /// completion is its result pointer (`res/…`, created once), which wins over a task
    /// run record that lags it; records are whole values, never deltas, so any subset of
    /// a step's records is a state some earlier step could have left, except that a task
    /// run record may be missing for a task the run's record shows started (it is rebuilt
    /// from the flow and dispatched again: at least once, never committed twice).
    async fn commit(&self, epoch: Epoch, ops: Vec<Op>) -> Result<(), StoreError>;
    /// Queues `ops` for commit behind every commit queued before them, without waiting:
    /// the ticket resolves once they are durable, and tickets resolve in the order of their
    /// submission (a failed commit fails every later one). A store that cannot keep that
    /// order hands the operations back, and the caller commits them with [`Self::commit`].
    fn submit(&self, _epoch: Epoch, ops: Vec<Op>) -> Submitted {
        Submitted::NotPipelined(ops)
    }
}

/// A queued commit: resolves once its operations are durable.
pub type Ticket =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StoreError>> + Send>>;

/// What [`StateStore::submit`] did.
pub enum Submitted {
    /// Queued behind the commits before it.
    Queued(Ticket),
    /// This store does not pipeline commits: here are the operations back.
    NotPipelined(Vec<Op>),
}
