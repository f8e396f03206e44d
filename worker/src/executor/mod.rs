//! Runs one assignment to its end: decodes the task spec and inputs, runs the body (a
//! built-in function or a process) under the attempt's timeout and cancellation, writes the
//! result to the store under the attempt's own key and builds the `Finished` message.

mod ahead;
mod container;
#[cfg(test)]
mod fuzz;
mod process;

pub use ahead::run_ahead;
pub use container::{Containers, WORKER_LABEL as CONTAINER_WORKER_LABEL};
pub use process::kill_all_groups;

use crate::secrets::Redactor;
use crate::task::{Grant, TaskContext, TaskError, TaskLog, TaskResult};
use baton_common::flow::TaskKind;
use baton_common::ids::AttemptKey;
use baton_common::result_store::ResultStore;
use baton_proto as proto;
use futures::FutureExt;
use serde_json::Value;
use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Results up to this size also travel inline in `Finished`.
pub use baton_proto::limits::MAX_INLINE_RESULT_BYTES as MAX_INLINE_BYTES;
/// The largest result a task may return (a list of a million numbers for a wide map fits);
/// larger data belongs in an artifact.
pub use baton_proto::limits::MAX_RESULT_BYTES;
/// How long a cancelled or timed-out body may take to clean up (kill and reap) before it is
/// dropped.
const WIND_DOWN: Duration = Duration::from_secs(5);

/// The error text of an attempt stopped by its cancellation token.
pub const CANCELLED: &str = "cancelled";

/// A decoded assignment.
#[derive(Clone, Debug, PartialEq)]
pub struct Job {
    pub key: AttemptKey,
    pub kind: TaskKind,
    /// A JSON object of named inputs.
    pub inputs: Value,
    /// 0: no timeout.
    pub timeout_ms: u64,
    pub scheduled_start_ms: i64,
    /// Secret inputs: input name → secret name, resolved on this worker.
    pub secrets: BTreeMap<String, String>,
    /// `BATON_SECRET_<NAME>` → value of the resolved secrets, for a process's environment.
    pub secret_env: BTreeMap<String, String>,
    /// Slots and memory (MiB) granted, for a container's limits.
    pub slots: u32,
    pub memory_mb: u64,
}

impl Job {
    /// Decodes `assign` for attempt `key`; a malformed spec or input is a fatal task error.
    pub fn decode(key: AttemptKey, assign: &proto::Assign) -> Result<Job, TaskError> {
        let (kind, secrets) = parse_kind(&assign.task_spec)?;
        let inputs = if assign.inputs.trim().is_empty() {
            Value::Object(Default::default())
        } else {
            serde_json::from_str::<Value>(&assign.inputs)
                .map_err(|e| TaskError::fatal(format!("the task's inputs are not JSON: {e}")))?
        };
        if !inputs.is_object() {
            return Err(TaskError::fatal("the task's inputs must be a JSON object"));
        }
        Ok(Job {
            key,
            kind,
            inputs,
            timeout_ms: assign.timeout_ms,
            scheduled_start_ms: assign.scheduled_start_ms,
            secrets,
            secret_env: BTreeMap::new(),
            slots: assign.resources.as_ref().map_or(1, |r| r.slots),
            memory_mb: assign.resources.as_ref().map_or(0, |r| r.memory_mb),
        })
    }
}

/// Parses a task spec: a [`TaskKind`] (`{"kind": "builtin", ...}`), or an object holding one
/// under `kind` (a whole task spec, or a kind with its secret inputs under `secrets`).
fn parse_kind(spec: &str) -> Result<(TaskKind, BTreeMap<String, String>), TaskError> {
    let value: Value = serde_json::from_str(spec)
        .map_err(|e| TaskError::fatal(format!("the task spec is not JSON: {e}")))?;
    let (value, secrets) = match value {
        Value::Object(mut o) if o.get("kind").is_some_and(Value::is_object) => {
            let secrets = match o.remove("secrets") {
                None => BTreeMap::new(),
                Some(s) => serde_json::from_value(s).map_err(|e| {
                    TaskError::fatal(format!("the task spec's secrets are invalid: {e}"))
                })?,
            };
            (o.remove("kind").unwrap_or_default(), secrets)
        }
        other => (other, BTreeMap::new()),
    };
    let kind = serde_json::from_value(value)
        .map_err(|e| TaskError::fatal(format!("invalid task spec: {e}")))?;
    Ok((kind, secrets))
}

/// Runs `assign` as attempt `key` and returns its `Finished` message. `cancel` stops the
/// attempt (it then fails with [`CANCELLED`]); logs go to `logs`. Never panics.
pub async fn execute(
    key: AttemptKey,
    assign: proto::Assign,
    grant: Grant,
    store: Arc<dyn ResultStore>,
    cancel: CancellationToken,
    logs: mpsc::UnboundedSender<TaskLog>,
) -> proto::Finished {
    let mut redactor = Redactor::default();
    let outcome = match Job::decode(key.clone(), &assign) {
        Ok(mut job) => match grant.secrets.resolve(&job.secrets, &mut job.inputs) {
            Ok(resolved) => {
                job.secret_env = resolved.env;
                redactor = resolved.redactor;
                let ctx = TaskContext::new(
                    key.clone(),
                    store,
                    job.scheduled_start_ms,
                    cancel.child_token(),
                    logs,
                )
                .with_grant(grant)
                .with_redactor(redactor.clone());
                AssertUnwindSafe(run_and_store(&job, &ctx, &cancel))
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|panic| Err(TaskError::retryable(panic_message(&panic))))
            }
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    // An error message (a process's stderr tail, a built-in's message) is stored and shown.
    let outcome = outcome.map_err(|mut e| {
        if !redactor.is_empty() {
            e.message = redactor.redact(e.message);
        }
        e
    });
    finished(&key, outcome)
}

/// Runs the job and persists its result.
pub async fn run_and_store(
    job: &Job,
    ctx: &TaskContext,
    cancel: &CancellationToken,
) -> Result<proto::TaskSuccess, TaskError> {
    let value = run_with_limits(job, ctx, cancel).await?;
    persist_checked(ctx.store.as_ref(), &job.key, &value, &ctx.redactor).await
}

/// Runs the body until it ends, `cancel` fires or the timeout passes. `ctx.cancel` must be a
/// child of `cancel`.
pub async fn run_with_limits(
    job: &Job,
    ctx: &TaskContext,
    cancel: &CancellationToken,
) -> TaskResult {
    let body = run_body(job, ctx);
    tokio::pin!(body);
    let timeout = async {
        match job.timeout_ms {
            0 => std::future::pending().await,
            ms => tokio::time::sleep(Duration::from_millis(ms)).await,
        }
    };
    tokio::select! {
        biased;
        _ = cancel.cancelled() => {
            let _ = tokio::time::timeout(WIND_DOWN, body).await;
            Err(TaskError::fatal(CANCELLED))
        }
        _ = timeout => {
            ctx.cancel.cancel();
            let _ = tokio::time::timeout(WIND_DOWN, body).await;
            Err(TaskError::retryable(format!("timed out after {} ms", job.timeout_ms)))
        }
        r = &mut body => r,
    }
}

async fn run_body(job: &Job, ctx: &TaskContext) -> TaskResult {
    match &job.kind {
        TaskKind::Builtin { function } => {
            // Tracing events of the built-in go to the attempt's log too.
            let logger = ctx.clone();
            let sink: baton_common::telemetry::TaskLogSink =
                std::sync::Arc::new(move |stream, line| logger.log(stream, line));
            let body = crate::builtins::run_builtin(function, job.inputs.clone(), ctx);
            baton_common::telemetry::task_log_scope(sink, body).await
        }
        TaskKind::Process {
            command,
            args,
            env,
            fatal_exit_codes,
            aws_credentials,
        } => {
            // The scheduler sends processes only to workers that allow them; an older one
            // might not.
            if !ctx.grant.processes {
                return Err(TaskError::fatal(
                    "this worker does not run process tasks (start it with --allow process)",
                ));
            }
            let withheld = process::withheld_env(*aws_credentials);
            let with_secrets;
            let env = if job.secret_env.is_empty() {
                env
            } else {
                with_secrets = env
                    .iter()
                    .chain(&job.secret_env)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<BTreeMap<_, _>>();
                &with_secrets
            };
            let cmd = process::Command {
                command,
                args,
                env,
                withheld: &withheld,
            };
            process::run(cmd, fatal_exit_codes, &job.inputs, ctx).await
        }
        TaskKind::Container {
            image,
            command,
            args,
            env,
            workdir,
            pull,
            fatal_exit_codes,
            aws_credentials,
        } => {
            let mut env = env.clone();
            env.extend(process::baton_env(ctx));
            env.extend(job.secret_env.iter().map(|(k, v)| (k.clone(), v.clone())));
            // Where the result store is, for a task that writes artifacts (settings, not
            // credentials: those come as a file, when asked for).
            for name in ["AWS_REGION", "BATON_S3_ENDPOINT", "BATON_S3_PATH_STYLE"] {
                if let Ok(v) = std::env::var(name) {
                    env.entry(name.to_string()).or_insert(v);
                }
            }
            let spec = container::Spec {
                image,
                command: command.as_deref(),
                args,
                env,
                workdir: workdir.as_deref(),
                pull: *pull,
                fatal_exit_codes,
                aws_credentials: *aws_credentials,
                cpus: job.slots,
                memory_mb: job.memory_mb,
            };
            container::run(spec, &job.inputs, ctx).await
        }
        TaskKind::Flow { .. } => Err(TaskError::fatal(
            "a sub-flow task is run by the scheduler, not by a worker",
        )),
    }
}

/// Writes `value` under the attempt's result key (never overwriting) and describes it.
pub async fn persist(
    store: &dyn ResultStore,
    key: &AttemptKey,
    value: &Value,
) -> Result<proto::TaskSuccess, TaskError> {
    persist_checked(store, key, value, &Redactor::default()).await
}

/// [`persist`], refusing a result that holds the value of one of the attempt's secrets: a
/// secret is never stored.
async fn persist_checked(
    store: &dyn ResultStore,
    key: &AttemptKey,
    value: &Value,
    secrets: &Redactor,
) -> Result<proto::TaskSuccess, TaskError> {
    persist_at(store, key, &key.result_key(), value, secrets).await
}

/// Writes `value` under `object_key` (never overwriting) for attempt `key`.
async fn persist_at(
    store: &dyn ResultStore,
    key: &AttemptKey,
    object_key: &str,
    value: &Value,
    secrets: &Redactor,
) -> Result<proto::TaskSuccess, TaskError> {
    let bytes = serde_json::to_vec(value)
        .map_err(|e| TaskError::fatal(format!("the result cannot be serialized: {e}")))?;
    if bytes.len() > MAX_RESULT_BYTES {
        return Err(too_large());
    }
    if let Some(name) = secrets.found_in(&bytes) {
        return Err(TaskError::fatal(format!(
            "the result holds the value of secret `{name}`: secrets are never stored (return \
             something derived from it instead)"
        )));
    }
    let inline_value = if bytes.len() <= MAX_INLINE_BYTES {
        String::from_utf8(bytes.clone()).unwrap_or_default()
    } else {
        String::new()
    };
    let bytes = bytes::Bytes::from(bytes);
    // One try: the result store retries transient failures itself (see
    // `baton_common::retry`); a failure left after that makes the attempt retryable.
    match store.put(object_key, bytes, "application/json").await {
        Ok(r) => Ok(proto::TaskSuccess {
            result: Some(r.into()),
            inline_value,
        }),
        Err(baton_common::Error::AlreadyExists(uri)) => Err(TaskError::fatal(format!(
            "the result of attempt {key} was already written at {uri}; results are never overwritten"
        ))),
        Err(e) => Err(TaskError::retryable(format!("cannot write the result: {e}"))),
    }
}

/// The error for a result over [`MAX_RESULT_BYTES`].
pub(crate) fn too_large() -> TaskError {
    TaskError::fatal(format!(
        "the result is over the {MAX_RESULT_BYTES} byte limit: write large data as an artifact \
         (under BATON_ARTIFACT_PREFIX) and return its location instead"
    ))
}

/// Builds the `Finished` message of an outcome.
pub fn finished(
    key: &AttemptKey,
    outcome: Result<proto::TaskSuccess, TaskError>,
) -> proto::Finished {
    use proto::finished::Outcome;
    proto::Finished {
        key: Some(key.into()),
        at_ms: baton_common::time::now_ms(),
        outcome: Some(match outcome {
            Ok(success) => Outcome::Success(success),
            Err(e) => Outcome::Failure(proto::TaskFailure {
                error: e.message,
                retryable: e.retryable,
            }),
        }),
        ahead: Vec::new(),
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string());
    format!("the task panicked: {what}")
}

#[cfg(test)]
mod tests;
