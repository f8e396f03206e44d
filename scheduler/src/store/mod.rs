//! The [`StateStore`] trait: fenced, batched key-value transactions holding the scheduler's
//! durable state, with the embedded (local disk) implementation.

pub mod embedded;

pub use embedded::EmbeddedStore;

use async_trait::async_trait;

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
}

impl Op {
    /// Bytes the operation carries (for batch limits).
    pub fn size(&self) -> usize {
        match self {
            Op::Put { key, value } | Op::Create { key, value } => key.len() + value.len(),
            Op::Delete { key } => key.len(),
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
}

/// Durable state with fenced, batched writes.
#[async_trait]
pub trait StateStore: Send + Sync + 'static {
    /// Becomes the writer; returns an epoch higher than any before.
    async fn acquire(&self) -> Result<Epoch, StoreError>;
    /// All keys and values under `prefix`, in key order.
    async fn load(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// Applies `ops` atomically if `epoch` is still current.
    async fn commit(&self, epoch: Epoch, ops: Vec<Op>) -> Result<(), StoreError>;
}
