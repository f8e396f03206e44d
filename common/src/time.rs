//! Wall-clock helpers: baton stores times as Unix milliseconds, and task-run timings also as
//! Unix microseconds (for dispatch latency).

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    now_us().div_euclid(1000)
}

/// Microseconds since the Unix epoch.
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
