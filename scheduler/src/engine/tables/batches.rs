//! `trb/RUN/SEQ`: the records of a run's mapped task runs that changed in one step, together
//! (JSON `[[task, map index, record], ...]`; SEQ counts up per run, 16 hex digits). A
//! fan-out of 100,000 task runs is then a few hundred keys of the state store, not 200,000
//! (a record at dispatch and one at completion, each its own key): etcd's work per task run
//! is what bounds a cluster's rate. A task run's latest record is the one of the highest
//! SEQ that holds it; a completed mapped task run's record holds its result pointer (there
//! is no `res/` key for it: a record is written whole, so it is never behind its pointer).

use super::{json, Table, TableError};
use crate::engine::TaskRunRecord;
use crate::store::Op;

pub struct Batches;

impl Table for Batches {
    const PREFIX: &'static str = "trb/";
    const WHAT: &'static str = "a batch of task run records";
    /// `(run, seq, [(task, map index, record)])`.
    type Row = (String, u64, Vec<(String, i64, TaskRunRecord)>);
    fn decode(rest: &str, value: &[u8]) -> Result<Self::Row, String> {
        let (run, seq) = rest
            .split_once('/')
            .ok_or_else(|| "expected RUN/SEQ".to_string())?;
        let seq =
            u64::from_str_radix(seq, 16).map_err(|_| "the sequence is not hex".to_string())?;
        let rows = serde_json::from_slice(value).map_err(|e| e.to_string())?;
        Ok((run.to_string(), seq, rows))
    }
}

/// A batch is closed once its records take this many bytes (well under a transaction's).
pub const MAX_BATCH_BYTES: usize = 256 * 1024;

pub fn key(run: &str, seq: u64) -> String {
    format!("{}{run}/{seq:016x}", Batches::PREFIX)
}

/// Encodes `records` of `run` as batches numbered from `*seq` on (which counts up).
pub fn put(
    run: &str,
    seq: &mut u64,
    records: &[(&str, i64, TaskRunRecord)],
) -> Result<Vec<Op>, TableError> {
    let mut ops = Vec::new();
    let mut value = Vec::with_capacity(4096);
    for (i, row) in records.iter().enumerate() {
        value.push(if value.is_empty() { b'[' } else { b',' });
        value.extend(json(Batches::WHAT, row)?);
        if value.len() >= MAX_BATCH_BYTES || i + 1 == records.len() {
            value.push(b']');
            ops.push(Op::Put {
                key: key(run, *seq),
                value: std::mem::take(&mut value),
            });
            *seq += 1;
        }
    }
    Ok(ops)
}

/// Deletes every batch of `run`; `seqs` (those below it) are the batches the engine wrote.
pub fn delete_run(run: &str, seqs: u64) -> Op {
    Op::DeletePrefix {
        prefix: format!("{}{run}/", Batches::PREFIX),
        keys: (0..seqs).map(|s| key(run, s)).collect(),
    }
}
