//! What an executing task sees: its attempt, the result store, cancellation and a log sink.

use crate::gpu::Gpu;
use crate::secrets::{Redactor, Secrets};
use baton_common::ids::AttemptKey;
use baton_common::result_store::ResultStore;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// One log line written by a task.
#[derive(Debug, Clone)]
pub struct TaskLog {
    pub key: AttemptKey,
    pub at_ms: i64,
    /// "stdout", "stderr" or "log".
    pub stream: &'static str,
    pub line: String,
}

/// Everything a running attempt may use.
#[derive(Clone)]
pub struct TaskContext {
    pub key: AttemptKey,
    /// Where results and artifacts go.
    pub store: Arc<dyn ResultStore>,
    /// Unix milliseconds of the run's scheduled start.
    pub scheduled_start_ms: i64,
    /// Cancelled when the attempt is cancelled, times out or the worker stops.
    pub cancel: CancellationToken,
    /// What its worker grants this attempt.
    pub grant: Grant,
    /// Masks the values of the attempt's secrets in what it logs.
    pub redactor: Arc<Redactor>,
    logs: mpsc::UnboundedSender<TaskLog>,
}

/// What a worker grants an attempt: the GPUs it may use, and whether it may run a process.
#[derive(Clone, Debug, Default)]
pub struct Grant {
    /// The devices pinned to it.
    pub pinned: Arc<[Gpu]>,
    /// Whether its worker has GPUs at all (a task without any is then kept off them).
    pub worker_has_gpus: bool,
    /// Whether a process task may run (the worker was started with `--allow process`).
    pub processes: bool,
    /// The Docker engine for container tasks, when the worker allows them.
    pub containers: Option<crate::executor::Containers>,
    /// Where its secret inputs come from.
    pub secrets: Secrets,
}

impl TaskContext {
    pub fn new(
        key: AttemptKey,
        store: Arc<dyn ResultStore>,
        scheduled_start_ms: i64,
        cancel: CancellationToken,
        logs: mpsc::UnboundedSender<TaskLog>,
    ) -> Self {
        TaskContext {
            key,
            store,
            scheduled_start_ms,
            cancel,
            grant: Grant::default(),
            redactor: Arc::default(),
            logs,
        }
    }

    /// The same context with what the worker grants the attempt.
    pub fn with_grant(mut self, grant: Grant) -> Self {
        self.grant = grant;
        self
    }

    /// The same context masking `redactor`'s secret values in its log lines.
    pub fn with_redactor(mut self, redactor: Redactor) -> Self {
        self.redactor = Arc::new(redactor);
        self
    }

    /// Sends a log line to the scheduler, any secret value in it masked.
    pub fn log(&self, stream: &'static str, line: impl Into<String>) {
        let mut line = line.into();
        if !self.redactor.is_empty() {
            line = self.redactor.redact(line);
        }
        let _ = self.logs.send(TaskLog {
            key: self.key.clone(),
            at_ms: baton_common::time::now_ms(),
            stream,
            line,
        });
    }

    /// The store key of an artifact `name` of this attempt.
    pub fn artifact_key(&self, name: &str) -> String {
        format!("{}/{}", self.key.artifact_prefix(), name)
    }
}

/// Why an attempt failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct TaskError {
    pub message: String,
    /// Whether a retry may succeed (false for bad input).
    pub retryable: bool,
}

impl TaskError {
    /// A failure that a retry may cure (I/O, a crash).
    pub fn retryable(message: impl Into<String>) -> Self {
        TaskError {
            message: message.into(),
            retryable: true,
        }
    }

    /// A failure no retry can cure (a type error in the inputs).
    pub fn fatal(message: impl Into<String>) -> Self {
        TaskError {
            message: message.into(),
            retryable: false,
        }
    }
}

/// Result alias for task bodies.
pub type TaskResult = std::result::Result<serde_json::Value, TaskError>;
