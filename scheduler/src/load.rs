//! Reading the state store back when a replica becomes leader: every table through
//! [`tables::Rows`], then the values too large for their records from the result store.

use crate::engine::{tables, Recovered};
use crate::store::StateStore;
use crate::Result;
use baton_common::result_store::ResultStore;
use futures::StreamExt;

/// Result-store reads in flight while values are read back.
const READS_IN_FLIGHT: usize = 32;

/// Reads the engine's state back. An unreadable record is logged and skipped; a store that
/// cannot be read is an error.
pub(crate) async fn load(state: &dyn StateStore, results: &dyn ResultStore) -> Result<Recovered> {
    let mut rows = tables::Rows::default();
    let mut skipped = 0;
    for prefix in tables::PREFIXES {
        for (key, value) in state.load(prefix).await? {
            if let Err(e) = rows.add(&key, &value) {
                tracing::error!(error = %e, "skipping a record");
                skipped += 1;
            }
        }
    }
    let mut rec = rows.finish();
    rec.skipped = skipped;
    read_task_run_values(&mut rec, results).await;
    read_cache_values(&mut rec, results).await;
    Ok(rec)
}

/// Values too large to sit in their task run's record are read back, many at a time. A
/// JSON null result is 4 bytes: a missing (or, in older records, null) value of a larger
/// result must be read.
async fn read_task_run_values(rec: &mut Recovered, results: &dyn ResultStore) {
    let wanted: Vec<(usize, String)> = rec
        .task_runs
        .iter()
        .enumerate()
        .filter_map(|(i, (_, _, _, r))| {
            let res = r.result.as_ref()?;
            let missing =
                r.value.is_none() || (r.value == Some(serde_json::Value::Null) && res.size != 4);
            missing.then(|| (i, res.uri.clone()))
        })
        .collect();
    for (i, bytes) in read_all(wanted, results).await {
        rec.task_runs[i].3.value = serde_json::from_slice(&bytes).ok();
    }
}

/// Likewise the values of live cache entries too large for their record.
async fn read_cache_values(rec: &mut Recovered, results: &dyn ResultStore) {
    let now = baton_common::time::now_ms();
    let wanted: Vec<(usize, String)> = rec
        .cache
        .iter()
        .enumerate()
        .filter(|(_, (_, e))| e.value.is_none() && (e.expires_ms == 0 || e.expires_ms > now))
        .map(|(i, (_, e))| (i, e.result.uri.clone()))
        .collect();
    for (i, bytes) in read_all(wanted, results).await {
        rec.cache[i].1.value = serde_json::from_slice(&bytes).ok();
    }
}

/// Reads `(index, uri)` objects, [`READS_IN_FLIGHT`] at a time; a failed read is logged and
/// left out.
async fn read_all(
    wanted: Vec<(usize, String)>,
    results: &dyn ResultStore,
) -> Vec<(usize, Vec<u8>)> {
    let reads = wanted.into_iter().map(|(i, uri)| async move {
        let max = baton_proto::limits::MAX_RESULT_BYTES as u64;
        (
            i,
            results.get_at_most(&uri, max).await.map_err(|e| (uri, e)),
        )
    });
    futures::stream::iter(reads)
        .buffer_unordered(READS_IN_FLIGHT)
        .filter_map(|(i, got)| async move {
            match got {
                Ok(bytes) => Some((i, bytes)),
                Err((uri, e)) => {
                    tracing::error!(%uri, error = %e, "cannot read a value back");
                    None
                }
            }
        })
        .collect()
        .await
}
