//! `cache/KEY`: a result cache entry (JSON); KEY is a hex SHA-256 of what the task's result
//! depends on.

use super::{from_json, json, Table, TableError};
use crate::engine::CacheEntry;
use crate::store::Op;

pub struct Cache;

impl Table for Cache {
    const PREFIX: &'static str = "cache/";
    const WHAT: &'static str = "a cache entry";
    /// `(cache key, entry)`.
    type Row = (String, CacheEntry);
    fn decode(rest: &str, value: &[u8]) -> Result<Self::Row, String> {
        Ok((rest.to_string(), from_json(value)?))
    }
}

pub fn key(cache_key: &str) -> String {
    format!("{}{cache_key}", Cache::PREFIX)
}

pub fn put(cache_key: &str, entry: &CacheEntry) -> Result<Op, TableError> {
    Ok(Op::Put {
        key: key(cache_key),
        value: json(Cache::WHAT, entry)?,
    })
}

pub fn delete(cache_key: &str) -> Op {
    Op::Delete {
        key: key(cache_key),
    }
}
