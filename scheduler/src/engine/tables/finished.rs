//! `done/CREATED/RUN`: an archived run's summary (a protobuf `FlowRun`), kept for listing;
//! CREATED (milliseconds, 13 digits) orders the keys by age. Also the result-store key of
//! the archive itself.

use super::Table;
use crate::store::Op;

pub struct Finished;

impl Table for Finished {
    const PREFIX: &'static str = "done/";
    const WHAT: &'static str = "a run summary";
    /// `(whole key, summary)`: the key names the row to delete when it ages out.
    type Row = (String, baton_proto::FlowRun);
    fn decode(rest: &str, value: &[u8]) -> Result<Self::Row, String> {
        let summary =
            <baton_proto::FlowRun as prost::Message>::decode(value).map_err(|e| e.to_string())?;
        Ok((format!("{}{rest}", Finished::PREFIX), summary))
    }
}

pub fn key(created_ms: i64, run: &str) -> String {
    format!("{}{created_ms:013}/{run}", Finished::PREFIX)
}

/// Keeps `summary` under `key` (from [`key`]).
pub fn put(key: String, summary: &baton_proto::FlowRun) -> Op {
    Op::Put {
        key,
        value: prost::Message::encode_to_vec(summary),
    }
}

/// Where runs' archives lie in the result store.
pub const ARCHIVES: &str = "archive/runs/";

/// The result-store key of a finished run's archive (an encoded `RunArchive`).
pub fn archive(run: &str) -> String {
    format!("{ARCHIVES}{run}.pb")
}
