//! `tr/RUN/TASK/INDEX`: a live task run's record (JSON); INDEX is the map index, -1 for a
//! task that is not mapped.

use super::{from_json, json, split_task_run, Table, TableError};
use crate::engine::TaskRunRecord;
use crate::store::Op;

pub struct TaskRuns;

impl Table for TaskRuns {
    const PREFIX: &'static str = "tr/";
    const WHAT: &'static str = "a task run record";
    /// `(run, task, map index, record)`.
    type Row = (String, String, i64, TaskRunRecord);
    fn decode(rest: &str, value: &[u8]) -> Result<Self::Row, String> {
        let (run, task, index) = split_task_run(rest)?;
        Ok((run, task, index, from_json(value)?))
    }
}

pub fn key(run: &str, task: &str, index: i64) -> String {
    format!("{}{run}/{task}/{index}", TaskRuns::PREFIX)
}

pub fn put(run: &str, task: &str, index: i64, record: &TaskRunRecord) -> Result<Op, TableError> {
    Ok(Op::Put {
        key: key(run, task, index),
        value: json(TaskRuns::WHAT, record)?,
    })
}

/// Deletes every task run record of `run`; `keys` are those the engine knows of.
pub fn delete_run(run: &str, keys: Vec<String>) -> Op {
    Op::DeletePrefix {
        prefix: format!("{}{run}/", TaskRuns::PREFIX),
        keys,
    }
}
