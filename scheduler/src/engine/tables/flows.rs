//! `flow/PROJECT/FLOW/VERSION`: a registered flow definition (JSON), one per version.

use super::{from_json, json, Table, TableError};
use crate::store::Op;
use baton_common::flow::FlowSpec;

pub struct Flows;

impl Table for Flows {
    const PREFIX: &'static str = "flow/";
    const WHAT: &'static str = "a flow definition";
    /// `(version, definition)`.
    type Row = (u32, FlowSpec);
    fn decode(rest: &str, value: &[u8]) -> Result<Self::Row, String> {
        let version = rest
            .rsplit('/')
            .next()
            .and_then(|v| v.parse().ok())
            .ok_or("the key ends in no version")?;
        Ok((version, from_json(value)?))
    }
}

pub fn key(project: &str, flow: &str, version: u32) -> String {
    format!("{}{project}/{flow}/{version:08}", Flows::PREFIX)
}

pub fn put(spec: &FlowSpec, version: u32) -> Result<Op, TableError> {
    Ok(Op::Put {
        key: key(&spec.project, &spec.name, version),
        value: json(Flows::WHAT, spec)?,
    })
}
