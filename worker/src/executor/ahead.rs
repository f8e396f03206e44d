//! Running a chain ahead of the scheduler: after an attempt succeeds, the successors its
//! assignment offered (`Assign.successors`) are run here, in order, as long as each is an
//! instant built-in whose inputs can be completed from its predecessor's result, within a
//! small time budget. Their results are written under keys of their own and reported with
//! the attempt's result; the scheduler takes each as the task run's first attempt, or drops
//! it and dispatches the task run as usual.

use super::{parse_kind, persist_at};
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
/// attempt's own result waits for it).
pub const BUDGET: Duration = Duration::from_millis(2);

/// Runs the successors of attempt `head`, whose result's JSON text is `head_value`, ahead;
/// returns what to report in `Finished.ahead` (possibly nothing).
pub async fn run_ahead(
    head: &AttemptKey,
    head_value: &str,
    successors: Vec<proto::Successor>,
    store: &dyn ResultStore,
) -> Vec<proto::RanAhead> {
    let since = Instant::now();
    let mut out = Vec::new();
    let Ok(mut value) = serde_json::from_str::<Value>(head_value) else {
        return out;
    };
    let mut after = head.clone();
    for s in successors.into_iter().take(MAX_RUN_AHEAD) {
        if since.elapsed() > BUDGET {
            break;
        }
        let Some((key, ran, next)) = run_one(&after, &value, s, store).await else {
            break;
        };
        out.push(ran);
        after = key;
        value = next;
    }
    out
}

/// Runs one successor after `after` (whose result is `value`): its key, its report and its
/// result; `None` when it cannot or should not be run ahead.
async fn run_one(
    after: &AttemptKey,
    value: &Value,
    s: proto::Successor,
    store: &dyn ResultStore,
) -> Option<(AttemptKey, proto::RanAhead, Value)> {
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
    let object_key = key.ahead_result_key();
    let success = persist_at(store, &key, &object_key, &result, &Redactor::default())
        .await
        .ok()?;
    if success.inline_value.is_empty() {
        return None;
    }
    // The value the scheduler will read back (from the same text) feeds the next task, so
    // that both compute the same inputs.
    let next: Value = serde_json::from_str(&success.inline_value).ok()?;
    let ended_us = now_us();
    let ran = proto::RanAhead {
        finished: Some(proto::Finished {
            key: Some((&key).into()),
            at_ms: ended_us.div_euclid(1000),
            outcome: Some(proto::finished::Outcome::Success(success)),
            ahead: Vec::new(),
        }),
        after: Some(after.into()),
        inputs_digest: inputs_digest(&json),
        started_us,
        ended_us,
    };
    Some((key, ran, next))
}
