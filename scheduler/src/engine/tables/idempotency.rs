//! `idem/KEY`: the run an idempotency key started (its id as text), kept after the run is
//! archived.

use super::Table;
use crate::store::Op;

pub struct Idempotency;

impl Table for Idempotency {
    const PREFIX: &'static str = "idem/";
    const WHAT: &'static str = "an idempotency key";
    /// `(idempotency key, run id)`.
    type Row = (String, String);
    fn decode(rest: &str, value: &[u8]) -> Result<Self::Row, String> {
        let run = std::str::from_utf8(value).map_err(|_| "the run id is not UTF-8")?;
        Ok((rest.to_string(), run.to_string()))
    }
}

pub fn key(idempotency_key: &str) -> String {
    format!("{}{idempotency_key}", Idempotency::PREFIX)
}

pub fn put(idempotency_key: &str, run: &str) -> Op {
    Op::Put {
        key: key(idempotency_key),
        value: run.as_bytes().to_vec(),
    }
}
