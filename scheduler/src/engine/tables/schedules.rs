//! `sched/PROJECT/FLOW`: a registered flow's schedule progress (JSON).

use super::{from_json, json, Table, TableError};
use crate::engine::ScheduleRecord;
use crate::store::Op;

pub struct Schedules;

impl Table for Schedules {
    const PREFIX: &'static str = "sched/";
    const WHAT: &'static str = "a schedule record";
    /// `(project, flow, progress)`.
    type Row = (String, String, ScheduleRecord);
    fn decode(rest: &str, value: &[u8]) -> Result<Self::Row, String> {
        let (project, flow) = rest.split_once('/').ok_or("expected PROJECT/FLOW")?;
        Ok((project.to_string(), flow.to_string(), from_json(value)?))
    }
}

pub fn key(project: &str, flow: &str) -> String {
    format!("{}{project}/{flow}", Schedules::PREFIX)
}

pub fn put(project: &str, flow: &str, record: &ScheduleRecord) -> Result<Op, TableError> {
    Ok(Op::Put {
        key: key(project, flow),
        value: json(Schedules::WHAT, record)?,
    })
}

pub fn delete(project: &str, flow: &str) -> Op {
    Op::Delete {
        key: key(project, flow),
    }
}
