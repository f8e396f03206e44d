//! `limit/TAG`: a concurrency limit on a task tag (the number as text).

use super::Table;
use crate::store::Op;

pub struct Limits;

impl Table for Limits {
    const PREFIX: &'static str = "limit/";
    const WHAT: &'static str = "a concurrency limit";
    /// `(tag, limit)`.
    type Row = (String, u32);
    fn decode(rest: &str, value: &[u8]) -> Result<Self::Row, String> {
        let limit = std::str::from_utf8(value)
            .ok()
            .and_then(|v| v.parse().ok())
            .ok_or("the limit is not a number")?;
        Ok((rest.to_string(), limit))
    }
}

pub fn key(tag: &str) -> String {
    format!("{}{tag}", Limits::PREFIX)
}

pub fn put(tag: &str, limit: u32) -> Op {
    Op::Put {
        key: key(tag),
        value: limit.to_string().into_bytes(),
    }
}

pub fn delete(tag: &str) -> Op {
    Op::Delete { key: key(tag) }
}
