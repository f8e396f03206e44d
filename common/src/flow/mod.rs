//! Flow specs: the validated model of a flow file, its parsing and its input resolution.

mod ahead;
mod depth;
#[cfg(test)]
mod fuzz;
mod parse;
mod resolve;
mod validate;

pub use depth::MAX_FLOW_NESTING;

/// The executor name a worker registers to run process tasks (`--allow process`).
pub const PROCESS_EXECUTOR: &str = "process";
/// The executor name a worker registers to run container tasks (`--allow container`).
pub const CONTAINER_EXECUTOR: &str = "container";
/// Every executor a worker may allow besides built-ins.
pub const EXECUTORS: &[&str] = &[PROCESS_EXECUTOR, CONTAINER_EXECUTOR];
/// The label the scheduler gives a worker that runs process tasks, and requires of every
/// process task; workers may not claim labels with this prefix themselves.
pub const EXECUTOR_LABEL_PREFIX: &str = "baton:";
pub use ahead::{inputs_digest, partial_inputs, reads_only, PartialInputs};
pub use parse::{parse_flow, MAX_FLOW_FILE_BYTES};
pub use resolve::{bind_parameters, resolve_inputs, InputError, ResolvedInputs, RunContext};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Built-ins quick and pure enough to be run ahead of the scheduler (see
/// [`PartialInputs`]): a chain of them runs on one worker without a round trip per task.
pub const INSTANT_BUILTINS: &[&str] = &["noop", "echo", "sum"];

/// The built-in functions every worker offers.
pub const BUILTINS: &[&str] = &[
    "noop",
    "echo",
    "sleep",
    "fail",
    "range",
    "sum",
    "generate_dataset",
    "train_test_split",
    "train_ridge",
    "evaluate",
    "cleanup",
    "read_csv",
    "ridge_benchmark",
];

/// A validated flow definition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlowSpec {
    pub name: String,
    pub project: String,
    /// Labels every task requires, on top of its own.
    #[serde(default)]
    pub labels: Vec<String>,
    #[serde(default)]
    pub parameters: BTreeMap<String, ParamSpec>,
    /// Tasks in a topological order.
    pub tasks: Vec<TaskSpec>,
    /// A cron schedule that starts runs with the parameters' defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleSpec>,
}

/// A flow's cron schedule (see [`crate::schedule`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleSpec {
    pub cron: String,
    /// IANA time zone name; empty: UTC.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub timezone: String,
    #[serde(default)]
    pub catch_up: crate::schedule::CatchUp,
}

/// Values a task input can take from its run with `{context: NAME}`.
pub const CONTEXT_KEYS: &[&str] = &[
    "scheduled_start_ms",
    "scheduled_start_s",
    "scheduled_start",
    "run_id",
    "flow_version",
    "parent_run_id",
];

impl FlowSpec {
    /// The index of the task named `slug`.
    pub fn task_index(&self, slug: &str) -> Option<usize> {
        self.tasks.iter().position(|t| t.name == slug)
    }
}

/// A flow parameter; without a default it is required.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ParamSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

/// One task of a flow.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub name: String,
    pub kind: TaskKind,
    /// Named inputs, in name order.
    #[serde(default)]
    pub inputs: BTreeMap<String, Input>,
    /// Names of the inputs that fan out (one task run per element).
    #[serde(default)]
    pub map: Vec<String>,
    /// Control-only upstream dependencies.
    #[serde(default)]
    pub after: Vec<String>,
    /// The task's own labels together with the flow's.
    #[serde(default)]
    pub labels: Vec<String>,
    #[serde(default)]
    pub resources: ResourceSpec,
    #[serde(default)]
    pub retries: RetryPolicy,
    /// Per-attempt timeout in milliseconds; 0 means none.
    #[serde(default)]
    pub timeout_ms: u64,
    /// Result caching: a later run with the same inputs reuses a committed result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheSpec>,
    /// Tags; a concurrency limit on a tag bounds the attempts holding it cluster-wide.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

/// How a task's results are cached: the cache key is made of the project, flow, task name,
/// `version` and the resolved inputs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct CacheSpec {
    /// The task version: change it to stop reusing older results.
    #[serde(default)]
    pub version: String,
    /// How long an entry may be reused, in milliseconds after it was recorded; 0: forever.
    #[serde(default)]
    pub expire_ms: u64,
}

impl TaskSpec {
    /// The tasks this one depends on, through inputs and `after`, without duplicates.
    pub fn upstream(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for input in self.inputs.values() {
            input.upstream(&mut out);
        }
        for a in &self.after {
            if !out.contains(&a.as_str()) {
                out.push(a);
            }
        }
        out
    }

    /// Whether the scheduler runs the task itself (a sub-flow) instead of a worker.
    pub fn is_subflow(&self) -> bool {
        matches!(self.kind, TaskKind::Flow { .. })
    }

    /// Whether the task fans out.
    pub fn is_mapped(&self) -> bool {
        !self.map.is_empty()
    }
}

/// What a task runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TaskKind {
    /// A function of the worker's built-in library.
    Builtin { function: String },
    /// A process: inputs as a JSON object on stdin, the JSON result on stdout.
    Process {
        command: String,
        #[serde(default)]
        args: Vec<String>,
        #[serde(default)]
        env: BTreeMap<String, String>,
        /// Exit codes that fail the task without retries (any other non-zero exit is
        /// retried as the retry policy allows).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        fatal_exit_codes: Vec<i32>,
        /// Whether the worker's AWS credentials (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
        /// `AWS_SESSION_TOKEN`, …) reach the process; by default they do not.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        aws_credentials: bool,
    },
    /// A command in a container of `image`, through the worker's Docker engine, with the
    /// same contract as a process: inputs as a JSON object on stdin, the last stdout line as
    /// the JSON result, earlier lines and stderr as log lines.
    Container {
        image: String,
        /// The command; none: the image's entrypoint and command.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        command: Option<String>,
        #[serde(default)]
        args: Vec<String>,
        #[serde(default)]
        env: BTreeMap<String, String>,
        /// The working folder inside the container; none: the image's.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        workdir: Option<String>,
        #[serde(default)]
        pull: PullPolicy,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        fatal_exit_codes: Vec<i32>,
        /// Whether the worker's AWS credentials reach the container (as a file, not in its
        /// configuration); by default they do not.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        aws_credentials: bool,
    },
    /// A sub-flow: each task run starts a run of a registered flow with the task's inputs as
    /// its parameters, waits for it and yields the result of the child's task `result`.
    /// Run by the scheduler itself; the child's tasks go to workers by their own labels.
    Flow {
        project: String,
        flow: String,
        /// 0: the latest version when the child starts.
        #[serde(default)]
        version: u32,
        /// The child task whose result this task yields; empty: the child run's id.
        #[serde(default)]
        result: String,
    },
}

/// When a container task's image is pulled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PullPolicy {
    /// Never: a missing image fails the attempt without retries.
    Never,
    /// Only when the worker's engine does not have it.
    #[default]
    IfMissing,
    /// Before every attempt.
    Always,
}

impl TaskKind {
    /// The executor a worker must allow to run this kind (built-ins and sub-flows need
    /// none).
    pub fn executor(&self) -> Option<&'static str> {
        match self {
            TaskKind::Process { .. } => Some(PROCESS_EXECUTOR),
            TaskKind::Container { .. } => Some(CONTAINER_EXECUTOR),
            TaskKind::Builtin { .. } | TaskKind::Flow { .. } => None,
        }
    }
}

/// Where an input's value comes from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Input {
    /// A flow parameter.
    Param(String),
    /// An upstream task's result (a list of the children's results for a mapped task).
    Result(String),
    /// One element of an upstream list or tuple result.
    Element { task: String, index: usize },
    /// A literal value.
    Value(serde_json::Value),
    /// The concatenation of several inputs; lists are spliced one level, other values appended.
    Flatten(Vec<Input>),
    /// A value of the run itself (one of [`CONTEXT_KEYS`]), e.g. its scheduled start.
    Context(String),
    /// A secret of the worker that runs the task, by name: resolved there (from
    /// `BATON_SECRET_<NAME>` or its secrets file), never sent through the scheduler. The
    /// scheduler sends `null` in its place and names it in the task spec ([`TaskSecrets`]).
    Secret(String),
}

impl Input {
    pub(crate) fn upstream<'a>(&'a self, out: &mut Vec<&'a str>) {
        match self {
            Input::Result(t) | Input::Element { task: t, .. } => {
                if !out.contains(&t.as_str()) {
                    out.push(t);
                }
            }
            Input::Flatten(items) => items.iter().for_each(|i| i.upstream(out)),
            Input::Param(_) | Input::Value(_) | Input::Context(_) | Input::Secret(_) => {}
        }
    }
}

/// The most characters in a secret's name.
pub const MAX_SECRET_NAME: usize = 128;

/// Whether `name` may name a secret: letters, digits and `_`, not starting with a digit
/// (it is also the tail of an environment variable, `BATON_SECRET_<NAME>`).
pub fn valid_secret_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_SECRET_NAME
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A task's kind as an assignment carries it, with the secrets its worker puts in its
/// inputs: `{"kind": {...}, "secrets": {"input": "NAME"}}`, or the bare kind when it has
/// none (so the common case costs nothing).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskSecrets {
    pub kind: TaskKind,
    /// Input name → secret name.
    pub secrets: BTreeMap<String, String>,
}

impl TaskSpec {
    /// The task's secret inputs: input name → secret name.
    pub fn secrets(&self) -> BTreeMap<String, String> {
        self.inputs
            .iter()
            .filter_map(|(name, i)| match i {
                Input::Secret(s) => Some((name.clone(), s.clone())),
                _ => None,
            })
            .collect()
    }

    /// The JSON an assignment carries as its task spec: the kind, with the secrets if any.
    pub fn assignment_json(&self) -> String {
        let secrets = self.secrets();
        let json = if secrets.is_empty() {
            serde_json::to_string(&self.kind)
        } else {
            serde_json::to_string(&TaskSecrets {
                kind: self.kind.clone(),
                secrets,
            })
        };
        json.unwrap_or_default()
    }
}

/// What a task asks of a worker.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ResourceSpec {
    pub slots: u32,
    #[serde(default)]
    pub gpus: u32,
    #[serde(default)]
    pub memory_mb: u64,
    /// The memory each of the task's GPUs must have (0: any GPU).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gpu_memory_mb: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The most GPUs one task may ask for (and one worker may offer).
pub const MAX_GPUS: u32 = 64;

impl Default for ResourceSpec {
    fn default() -> Self {
        ResourceSpec {
            slots: 1,
            gpus: 0,
            memory_mb: 0,
            gpu_memory_mb: 0,
        }
    }
}

/// How failed attempts are retried.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub count: u32,
    /// Delay before the first retry, in milliseconds.
    #[serde(default)]
    pub delay_ms: u64,
    /// Multiplier applied to the delay for each further retry (>= 1).
    #[serde(default = "one")]
    pub backoff: f64,
    /// Up to this fraction of the delay is added at random (0 to 1), so that retries of
    /// many task runs failing together spread out.
    #[serde(default)]
    pub jitter: f64,
}

fn one() -> f64 {
    1.0
}

impl RetryPolicy {
    /// The delay before attempt `next` (2 for the first retry): `delay_ms * backoff^(next-2)`
    /// plus a jitter drawn from `seed` and `next` (the same task run and attempt always get
    /// the same delay, also after a restart).
    pub fn delay_before(&self, next: u32, seed: u64) -> u64 {
        let exp = next.saturating_sub(2) as i32;
        let base = self.delay_ms as f64 * self.backoff.max(1.0).powi(exp);
        let mut x = seed ^ (u64::from(next)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        let unit = (x >> 11) as f64 / (1u64 << 53) as f64;
        let d = base * (1.0 + self.jitter.clamp(0.0, 1.0) * unit);
        d.min(24.0 * 3600.0 * 1000.0) as u64
    }
}
