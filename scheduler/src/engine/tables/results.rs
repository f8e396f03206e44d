//! `res/RUN/TASK/INDEX`: a task run's committed result pointer (JSON), created once and
//! never overwritten; recovery takes it as the truth about completion.

use super::{from_json, json, split_task_run, Table, TableError};
use crate::store::Op;
use baton_common::result_store::ResultRef;

pub struct Results;

impl Table for Results {
    const PREFIX: &'static str = "res/";
    const WHAT: &'static str = "a result pointer";
    /// `(run, task, map index, pointer)`.
    type Row = (String, String, i64, ResultRef);
    fn decode(rest: &str, value: &[u8]) -> Result<Self::Row, String> {
        let (run, task, index) = split_task_run(rest)?;
        Ok((run, task, index, from_json(value)?))
    }
}

pub fn key(run: &str, task: &str, index: i64) -> String {
    format!("{}{run}/{task}/{index}", Results::PREFIX)
}

/// Creates the pointer (the store refuses a second one).
pub fn create(run: &str, task: &str, index: i64, result: &ResultRef) -> Result<Op, TableError> {
    Ok(Op::Create {
        key: key(run, task, index),
        value: json(Results::WHAT, result)?,
    })
}

/// Deletes every result pointer of `run`; `keys` are those the engine knows of.
pub fn delete_run(run: &str, keys: Vec<String>) -> Op {
    Op::DeletePrefix {
        prefix: format!("{}{run}/", Results::PREFIX),
        keys,
    }
}
