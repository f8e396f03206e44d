//! Running a chain ahead of the scheduler: after an attempt succeeds, the successors its
//! assignment offered (`Assign.successors`) are run here, in order, as long as each is an
//! instant built-in whose inputs can be completed from its predecessor's result, within a
//! small time budget. Their results are written under keys of their own, all at once once
//! the chain has run (so that a store that packs small results writes them in one pack,
//! one round trip for the whole chain), and reported with the attempt's result; the
//! scheduler takes each as the task run's first attempt, or drops it and dispatches the
//! task run as usual.

use super::{parse_kind, persist_at, MAX_INLINE_BYTES};
use crate::secrets::Redactor;
use baton_common::flow::{inputs_digest, PartialInputs, TaskKind, INSTANT_BUILTINS};
use baton_common::ids::AttemptKey;
use baton_common::result_store::ResultStore;
use baton_common::time::now_us;
use baton_proto as proto;
use baton_proto::limits::MAX_RUN_AHEAD;
use serde_json::Value;
use std::time::{Duration, Instant};

/// How long a worker keeps running a chain ahead before it reports what it has (the
/// attempt's own result waits for it). About one commit round trip of a cluster's etcd:
/// the chain's next stretch would wait that long anyway.
pub const BUDGET: Duration = Duration::from_millis(5);

/// Runs the successors of attempt `head`, whose result's JSON text is `head_value`, ahead;
/// returns what to report in `Finished.ahead` (possibly nothing).
pub async fn run_ahead(
    head: &AttemptKey,
    head_value: &str,
    successors: Vec<proto::Successor>,
    store: &dyn ResultStore,
) -> Vec<proto::RanAhead> {
    let since = Instant::now();
    let Ok(mut value) = serde_json::from_str::<Value>(head_value) else {
        return Vec::new();
    };
    let mut ran = Vec::new();
    let mut after = head.clone();
    for s in successors.into_iter().take(MAX_RUN_AHEAD) {
        if since.elapsed() > BUDGET {
            break;
        }
        let Some(one) = run_one(&after, &value, s) else {
            break;
        };
        after = one.key.clone();
        value = one.next.clone();
        ran.push(one);
    }
    // Every result at once; the chain ends at the first one that cannot be written.
    let redactor = Redactor::default();
    let keys: Vec<String> = ran.iter().map(|r| r.key.ahead_result_key()).collect();
    let written = futures::future::join_all(
        ran.iter()
            .zip(&keys)
            .map(|(r, k)| persist_at(store, &r.key, k, &r.result, &redactor)),
    )
    .await;
    let ended_us = now_us();
    let mut out = Vec::with_capacity(ran.len());
    for (r, success) in ran.into_iter().zip(written) {
        let Ok(success) = success else { break };
        if success.inline_value.is_empty() {
            break;
        }
        out.push(proto::RanAhead {
            finished: Some(proto::Finished {
                key: Some((&r.key).into()),
                at_ms: ended_us.div_euclid(1000),
                outcome: Some(proto::finished::Outcome::Success(success)),
                ahead: Vec::new(),
            }),
            after: Some((&r.after).into()),
            inputs_digest: inputs_digest(&r.inputs),
            started_us: r.started_us,
            ended_us,
        });
    }
    out
}

/// One successor run ahead, its result not yet written.
struct Ran {
    key: AttemptKey,
    after: AttemptKey,
    /// Its inputs' JSON text.
    inputs: String,
    result: Value,
    /// The result as the scheduler will read it back (from its JSON text), which feeds the
    /// next task, so that both compute the same inputs.
    next: Value,
    started_us: i64,
}

/// Runs one successor after `after` (whose result is `value`); `None` when it cannot or
/// should not be run ahead (its result would not be small enough to report inline, say).
fn run_one(after: &AttemptKey, value: &Value, s: proto::Successor) -> Option<Ran> {
    let (kind, secrets) = parse_kind(&s.task_spec).ok()?;
    let TaskKind::Builtin { function } = kind else {
        return None;
    };
    if !secrets.is_empty() || !INSTANT_BUILTINS.contains(&function.as_str()) {
        return None;
    }
    let partial = PartialInputs::from_json(&s.fixed_inputs, &s.bound_inputs).ok()?;
    let json = partial.complete(&after.task, value).ok()?;
    let inputs: Value = serde_json::from_str(&json).ok()?;
    let key = AttemptKey {
        run: after.run.clone(),
        task: s.task,
        map_index: -1,
        attempt: 1,
    };
    let started_us = now_us();
    // A failure is not reported: the task run is dispatched as usual and fails there.
    let result = crate::builtins::run_instant(&function, inputs)?.ok()?;
    let text = serde_json::to_vec(&result).ok()?;
    if text.len() > MAX_INLINE_BYTES {
        return None;
    }
    let next: Value = serde_json::from_slice(&text).ok()?;
    Some(Ran {
        key,
        after: after.clone(),
        inputs: json,
        result,
        next,
        started_us,
    })
}
