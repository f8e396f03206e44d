//! `run/RUN`: a live run's record (JSON); deleted once the run is archived.

use super::{from_json, json, Table, TableError};
use crate::engine::RunRecord;
use crate::store::Op;

pub struct Runs;

impl Table for Runs {
    const PREFIX: &'static str = "run/";
    const WHAT: &'static str = "a run record";
    type Row = RunRecord;
    fn decode(_rest: &str, value: &[u8]) -> Result<Self::Row, String> {
        from_json(value)
    }
}

pub fn key(run: &str) -> String {
    format!("{}{run}", Runs::PREFIX)
}

pub fn put(record: &RunRecord) -> Result<Op, TableError> {
    Ok(Op::Put {
        key: key(&record.id),
        value: json(Runs::WHAT, record)?,
    })
}

pub fn delete(run: &str) -> Op {
    Op::Delete { key: key(run) }
}
