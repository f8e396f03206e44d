//! Typed state tables: one module per kind of record in the state store, owning its key
//! layout, its encoding and its decoding. The engine writes through them; recovery reads
//! every table back through [`Rows`], so that writer and reader cannot disagree.

pub mod batches;
pub mod cache;
pub mod finished;
pub mod flows;
pub mod idempotency;
pub mod limits;
pub mod results;
pub mod runs;
pub mod schedules;
pub mod task_runs;
#[cfg(test)]
mod tests;

use super::recover::Recovered;
use crate::store::Op;
use baton_common::result_store::ResultRef;
use std::collections::HashMap;

/// A record that cannot be encoded or a row that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// Encoding failed: the step that wrote it must not be committed.
    #[error("cannot encode {what}: {reason}")]
    Encode { what: &'static str, reason: String },
    /// A stored row is unreadable (its key is shortened to a bounded length).
    #[error("unreadable {what} at `{key}`: {reason}")]
    Decode {
        what: &'static str,
        key: String,
        reason: String,
    },
    /// A key under no table's prefix.
    #[error("a key of no table: `{0}`")]
    UnknownKey(String),
}

/// One table: its prefix, what one of its records is called, and how a row is read.
pub trait Table {
    /// Every key of the table starts with this.
    const PREFIX: &'static str;
    /// What one record is called in errors ("a run record").
    const WHAT: &'static str;
    /// A row as recovery uses it.
    type Row;
    /// Reads a row from its key (without the prefix) and value.
    fn decode(rest: &str, value: &[u8]) -> Result<Self::Row, String>;
}

/// The prefixes of every table, for a host that loads the state store table by table.
pub const PREFIXES: [&str; 10] = [
    flows::Flows::PREFIX,
    idempotency::Idempotency::PREFIX,
    cache::Cache::PREFIX,
    schedules::Schedules::PREFIX,
    finished::Finished::PREFIX,
    limits::Limits::PREFIX,
    runs::Runs::PREFIX,
    results::Results::PREFIX,
    task_runs::TaskRuns::PREFIX,
    batches::Batches::PREFIX,
];

/// Keys in errors are cut to this many bytes.
const KEY_IN_ERRORS: usize = 200;

fn shown(key: &str) -> String {
    if key.len() <= KEY_IN_ERRORS {
        return key.to_string();
    }
    let mut end = KEY_IN_ERRORS;
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &key[..end])
}

/// Encodes a JSON record.
pub(crate) fn json<T: serde::Serialize + ?Sized>(
    what: &'static str,
    value: &T,
) -> Result<Vec<u8>, TableError> {
    serde_json::to_vec(value).map_err(|e| TableError::Encode {
        what,
        reason: e.to_string(),
    })
}

/// Decodes a JSON record.
pub(crate) fn from_json<T: serde::de::DeserializeOwned>(value: &[u8]) -> Result<T, String> {
    serde_json::from_slice(value).map_err(|e| e.to_string())
}

/// `RUN/TASK/INDEX` of a task run key (without its prefix).
pub(crate) fn split_task_run(rest: &str) -> Result<(String, String, i64), String> {
    let mut parts = rest.splitn(3, '/');
    let (Some(run), Some(task), Some(index)) = (parts.next(), parts.next(), parts.next()) else {
        return Err("expected RUN/TASK/INDEX".into());
    };
    let index = index
        .parse()
        .map_err(|_| "the map index is not a number".to_string())?;
    Ok((run.to_string(), task.to_string(), index))
}

/// The rows of every table, read back in any order; [`Rows::finish`] makes them the
/// engine's [`Recovered`] state.
#[derive(Default)]
pub struct Rows {
    rec: Recovered,
    pointers: HashMap<(String, String, i64), ResultRef>,
    /// The latest batched record of each mapped task run, with its batch's number.
    batched: HashMap<(String, String, i64), (u64, crate::engine::TaskRunRecord)>,
}

fn row<T: Table>(key: &str, value: &[u8]) -> Option<Result<T::Row, TableError>> {
    let rest = key.strip_prefix(T::PREFIX)?;
    Some(T::decode(rest, value).map_err(|reason| TableError::Decode {
        what: T::WHAT,
        key: shown(key),
        reason,
    }))
}

impl Rows {
    /// Reads one row. An unreadable row is an error and leaves the rest as they were.
    pub fn add(&mut self, key: &str, value: &[u8]) -> Result<(), TableError> {
        let rec = &mut self.rec;
        if let Some(r) = row::<flows::Flows>(key, value) {
            rec.flows.push(r?);
        } else if let Some(r) = row::<runs::Runs>(key, value) {
            rec.runs.push(r?);
        } else if let Some(r) = row::<task_runs::TaskRuns>(key, value) {
            rec.task_runs.push(r?);
        } else if let Some(r) = row::<batches::Batches>(key, value) {
            let (run, seq, rows) = r?;
            let next = rec.batch_seqs.entry(run.clone()).or_default();
            *next = (*next).max(seq + 1);
            for (task, index, record) in rows {
                let key = (run.clone(), task, index);
                if self.batched.get(&key).is_none_or(|(s, _)| *s <= seq) {
                    self.batched.insert(key, (seq, record));
                }
            }
        } else if let Some(r) = row::<results::Results>(key, value) {
            let (run, task, index, pointer) = r?;
            self.pointers.insert((run, task, index), pointer);
        } else if let Some(r) = row::<idempotency::Idempotency>(key, value) {
            rec.idempotency.push(r?);
        } else if let Some(r) = row::<cache::Cache>(key, value) {
            rec.cache.push(r?);
        } else if let Some(r) = row::<schedules::Schedules>(key, value) {
            rec.schedules.push(r?);
        } else if let Some(r) = row::<limits::Limits>(key, value) {
            rec.limits.push(r?);
        } else if let Some(r) = row::<finished::Finished>(key, value) {
            rec.finished.push(r?);
        } else {
            return Err(TableError::UnknownKey(shown(key)));
        }
        Ok(())
    }

    /// The committed result pointers read so far, by `(run, task, map index)`.
    pub fn pointers(&self) -> &HashMap<(String, String, i64), ResultRef> {
        &self.pointers
    }

    /// The recovered state, with task run records made to agree with their committed
    /// result pointers (see [`Recovered::apply_pointers`]).
    pub fn finish(self) -> Recovered {
        let mut rec = self.rec;
        // A batched record is newer than a record of its own (written before batches were).
        if !self.batched.is_empty() {
            let batched = &self.batched;
            rec.task_runs.retain(|(run, task, index, _)| {
                !batched.contains_key(&(run.clone(), task.clone(), *index))
            });
            let mut rows: Vec<_> = self.batched.into_iter().collect();
            rows.sort_by(|a, b| a.0.cmp(&b.0));
            rec.task_runs.extend(
                rows.into_iter()
                    .map(|((run, task, index), (_, record))| (run, task, index, record)),
            );
        }
        rec.apply_pointers(self.pointers);
        rec
    }
}

/// The engine's side: an encoded record becomes an operation of the step, and an encoding
/// failure fails the step.
impl super::Engine {
    pub(super) fn write(&mut self, op: Result<Op, TableError>) {
        match op {
            Ok(op) => self.ops.push(op),
            Err(e) => self.encode_errors.push(e.to_string()),
        }
    }
}
