//! Parsing a flow file (YAML, of which JSON is a subset) into a validated [`FlowSpec`].

use super::validate::validate;
use super::{
    CacheSpec, FlowSpec, Input, ParamSpec, PullPolicy, ResourceSpec, RetryPolicy, ScheduleSpec,
    TaskKind, TaskSpec,
};
use crate::{Error, Result};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// The largest flow file accepted.
pub use baton_proto::limits::MAX_FLOW_SOURCE_BYTES as MAX_FLOW_FILE_BYTES;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFlow {
    name: String,
    #[serde(default)]
    project: Option<String>,
    #[serde(default)]
    labels: Vec<String>,
    #[serde(default)]
    parameters: BTreeMap<String, Option<RawParam>>,
    tasks: Vec<Value>,
    #[serde(default)]
    schedule: Option<RawSchedule>,
    /// Every process task of the flow runs in this image (Prefect's `DockerRun`).
    #[serde(default)]
    container: Option<RawFlowContainer>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct RawFlowContainer {
    image: String,
    #[serde(default)]
    pull: PullPolicy,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchedule {
    cron: String,
    #[serde(default)]
    timezone: String,
    #[serde(default)]
    catch_up: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSubflow {
    flow: String,
    #[serde(default)]
    project: Option<String>,
    #[serde(default)]
    version: u32,
    #[serde(default)]
    result: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawParam {
    #[serde(default)]
    default: Option<Value>,
    #[serde(default)]
    description: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTask {
    name: String,
    #[serde(default)]
    builtin: Option<String>,
    #[serde(default)]
    process: Option<RawProcess>,
    #[serde(default)]
    container: Option<RawContainer>,
    #[serde(default)]
    subflow: Option<RawSubflow>,
    #[serde(default)]
    inputs: BTreeMap<String, Value>,
    #[serde(default)]
    map: Vec<String>,
    #[serde(default)]
    after: Vec<String>,
    #[serde(default)]
    labels: Vec<String>,
    #[serde(default)]
    resources: Option<RawResources>,
    #[serde(default)]
    retries: Option<RawRetries>,
    #[serde(default)]
    timeout_s: Option<f64>,
    #[serde(default)]
    cache: Option<RawCache>,
    #[serde(default)]
    tags: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCache {
    #[serde(default)]
    version: Option<Value>,
    #[serde(default)]
    expire_s: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProcess {
    command: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    fatal_exit_codes: Vec<i32>,
    #[serde(default)]
    aws_credentials: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawContainer {
    image: String,
    #[serde(default)]
    command: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    workdir: Option<String>,
    #[serde(default)]
    pull: PullPolicy,
    #[serde(default)]
    fatal_exit_codes: Vec<i32>,
    #[serde(default)]
    aws_credentials: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResources {
    #[serde(default)]
    slots: Option<u32>,
    #[serde(default)]
    gpus: u32,
    #[serde(default)]
    memory_mb: u64,
    #[serde(default)]
    gpu_memory_mb: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetries {
    count: u32,
    #[serde(default)]
    delay_s: f64,
    #[serde(default)]
    backoff: Option<f64>,
    #[serde(default)]
    jitter: Option<f64>,
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidFlow(msg.into())
}

/// Parses and validates a flow file's text.
pub fn parse_flow(source: &str) -> Result<FlowSpec> {
    if source.len() > MAX_FLOW_FILE_BYTES {
        return Err(invalid(format!(
            "flow file is {} bytes; the limit is {} bytes",
            source.len(),
            MAX_FLOW_FILE_BYTES
        )));
    }
    if source.trim().is_empty() {
        return Err(invalid("flow file is empty"));
    }
    if super::depth::nesting_depth(source, super::MAX_FLOW_NESTING) > super::MAX_FLOW_NESTING {
        return Err(invalid(format!(
            "flow file nests lists and maps more than {} deep",
            super::MAX_FLOW_NESTING
        )));
    }
    let raw: RawFlow = serde_yaml_ng::from_str(source).map_err(|e| invalid(format!("{e}")))?;
    let mut tasks = Vec::with_capacity(raw.tasks.len());
    for (i, t) in raw.tasks.into_iter().enumerate() {
        let name = t
            .get("name")
            .and_then(Value::as_str)
            .map(|n| format!("task `{n}`"))
            .unwrap_or_else(|| format!("task #{}", i + 1));
        let raw_task: RawTask =
            serde_json::from_value(t).map_err(|e| invalid(format!("{name}: {e}")))?;
        tasks.push(convert_task(
            raw_task,
            raw.project.as_deref().unwrap_or("default"),
            raw.container.as_ref(),
        )?);
    }
    let parameters = raw
        .parameters
        .into_iter()
        .map(|(k, p)| {
            let p = p.unwrap_or(RawParam {
                default: None,
                description: String::new(),
            });
            (
                k,
                ParamSpec {
                    default: p.default,
                    description: p.description,
                },
            )
        })
        .collect();
    let schedule = match raw.schedule {
        None => None,
        Some(s) => {
            crate::schedule::CronSchedule::parse(&s.cron, &s.timezone)?;
            Some(ScheduleSpec {
                cron: s.cron.trim().to_string(),
                timezone: s.timezone,
                catch_up: crate::schedule::CatchUp::parse(&s.catch_up)?,
            })
        }
    };
    let spec = FlowSpec {
        schedule,
        name: raw.name,
        project: raw.project.unwrap_or_else(|| "default".to_string()),
        labels: raw.labels,
        parameters,
        tasks,
    };
    validate(spec)
}

fn convert_task(t: RawTask, project: &str, image: Option<&RawFlowContainer>) -> Result<TaskSpec> {
    let at = |field: &str, msg: String| invalid(format!("task `{}`: {field}: {msg}", t.name));
    let kind = match (t.builtin, t.process, t.container, t.subflow) {
        (Some(f), None, None, None) => TaskKind::Builtin { function: f },
        // The flow's image, when it names one, runs every process task (DockerRun).
        (None, Some(p), None, None) => match image {
            Some(c) => TaskKind::Container {
                image: c.image.clone(),
                command: Some(p.command),
                args: p.args,
                env: p.env,
                workdir: None,
                pull: c.pull,
                fatal_exit_codes: p.fatal_exit_codes,
                aws_credentials: p.aws_credentials,
            },
            None => TaskKind::Process {
                command: p.command,
                args: p.args,
                env: p.env,
                fatal_exit_codes: p.fatal_exit_codes,
                aws_credentials: p.aws_credentials,
            },
        },
        (None, None, Some(c), None) => TaskKind::Container {
            image: c.image,
            command: c.command,
            args: c.args,
            env: c.env,
            workdir: c.workdir,
            pull: c.pull,
            fatal_exit_codes: c.fatal_exit_codes,
            aws_credentials: c.aws_credentials,
        },
        (None, None, None, Some(f)) => TaskKind::Flow {
            project: f.project.unwrap_or_else(|| project.to_string()),
            flow: f.flow,
            version: f.version,
            result: f.result,
        },
        (None, None, None, None) => {
            return Err(at(
                "kind",
                "missing task kind: give `builtin: FUNCTION`, `process: {command: ...}`, `container: {image: ...}` or `subflow: {flow: ...}`".into(),
            ))
        }
        _ => {
            return Err(at(
                "kind",
                "give one of `builtin`, `process`, `container` or `subflow`, not several".into(),
            ))
        }
    };
    let mut inputs = BTreeMap::new();
    for (k, v) in t.inputs {
        let input = convert_input(&v).map_err(|m| at(&format!("input `{k}`"), m))?;
        inputs.insert(k, input);
    }
    let resources = match t.resources {
        None => ResourceSpec::default(),
        Some(r) => ResourceSpec {
            slots: r.slots.unwrap_or(1),
            gpus: r.gpus,
            memory_mb: r.memory_mb,
            gpu_memory_mb: r.gpu_memory_mb,
        },
    };
    let retries = match t.retries {
        None => RetryPolicy {
            count: 0,
            delay_ms: 0,
            backoff: 1.0,
            jitter: 0.0,
        },
        Some(r) => {
            if !(r.delay_s.is_finite() && r.delay_s >= 0.0) {
                return Err(at("retries.delay_s", "must be a number >= 0".into()));
            }
            let backoff = r.backoff.unwrap_or(1.0);
            if !(backoff.is_finite() && (1.0..=100.0).contains(&backoff)) {
                return Err(at("retries.backoff", "must be between 1 and 100".into()));
            }
            if r.count > 100 {
                return Err(at("retries.count", "must be at most 100".into()));
            }
            let jitter = r.jitter.unwrap_or(0.0);
            if !(jitter.is_finite() && (0.0..=1.0).contains(&jitter)) {
                return Err(at("retries.jitter", "must be between 0 and 1".into()));
            }
            RetryPolicy {
                count: r.count,
                delay_ms: (r.delay_s * 1000.0) as u64,
                backoff,
                jitter,
            }
        }
    };
    let timeout_ms = match t.timeout_s {
        None => 0,
        Some(s) if s.is_finite() && s > 0.0 => (s * 1000.0).ceil() as u64,
        Some(_) => return Err(at("timeout_s", "must be a number > 0".into())),
    };
    let cache = match t.cache {
        None => None,
        Some(c) => {
            let version = match c.version {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s,
                Some(v @ Value::Number(_)) => v.to_string(),
                Some(_) => return Err(at("cache.version", "must be a string".into())),
            };
            let expire_ms = match c.expire_s {
                None => 0,
                Some(s) if s.is_finite() && s > 0.0 => (s * 1000.0).ceil() as u64,
                Some(_) => return Err(at("cache.expire_s", "must be a number > 0".into())),
            };
            Some(CacheSpec { version, expire_ms })
        }
    };
    Ok(TaskSpec {
        name: t.name,
        kind,
        inputs,
        map: t.map,
        after: t.after,
        labels: t.labels,
        resources,
        retries,
        timeout_ms,
        cache,
        tags: t.tags,
    })
}

/// An input is a mapping with one of `param`, `result` (with an optional `index`), `value` or
/// `flatten`; anything else is a literal.
fn convert_input(v: &Value) -> std::result::Result<Input, String> {
    let Value::Object(m) = v else {
        return Ok(Input::Value(v.clone()));
    };
    let keys: Vec<&str> = m.keys().map(String::as_str).collect();
    match keys.as_slice() {
        ["param"] => match &m["param"] {
            Value::String(p) => Ok(Input::Param(p.clone())),
            other => Err(format!("`param` must be a parameter name, got {other}")),
        },
        ["result"] => Ok(Input::Result(name_of(&m["result"], "result")?)),
        ["index", "result"] | ["result", "index"] => {
            let task = name_of(&m["result"], "result")?;
            let index = m["index"]
                .as_u64()
                .ok_or_else(|| format!("`index` must be an integer >= 0, got {}", m["index"]))?;
            Ok(Input::Element {
                task,
                index: index as usize,
            })
        }
        ["value"] => Ok(Input::Value(m["value"].clone())),
        ["context"] => match &m["context"] {
            Value::String(c) => Ok(Input::Context(c.clone())),
            other => Err(format!("`context` must be a name, got {other}")),
        },
        ["secret"] => match &m["secret"] {
            Value::String(s) if super::valid_secret_name(s) => Ok(Input::Secret(s.clone())),
            Value::String(_) => Err(format!(
                "`secret` must name a secret: 1-{} letters, digits or `_`, not starting with a digit",
                super::MAX_SECRET_NAME
            )),
            other => Err(format!("`secret` must be a name, got {}", super::resolve::kind_of(other))),
        },
        ["flatten"] => match &m["flatten"] {
            Value::Array(items) => Ok(Input::Flatten(
                items
                    .iter()
                    .map(convert_input)
                    .collect::<std::result::Result<_, _>>()?,
            )),
            other => Err(format!("`flatten` must be a list of inputs, got {other}")),
        },
        _ => Err(format!(
            "expected one of {{param}}, {{result}}, {{result, index}}, {{value}}, {{context}}, {{secret}} or {{flatten}}; got keys {keys:?} (write a literal mapping as {{value: ...}})"
        )),
    }
}

fn name_of(v: &Value, field: &str) -> std::result::Result<String, String> {
    v.as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("`{field}` must be a task name, got {v}"))
}

#[cfg(test)]
mod tests {
    use super::parse_flow;
    use crate::flow::{PullPolicy, TaskKind, CONTAINER_EXECUTOR, PROCESS_EXECUTOR};

    #[test]
    fn container_tasks_and_a_flow_image_for_every_process_task() {
        let spec = parse_flow(
            r#"
name: c
tasks:
  - name: a
    container: {image: "python:3.11-slim", command: python3, args: ["-c", "print(1)"], pull: never, workdir: /app}
  - name: b
    container: {image: "busybox"}
  - name: p
    process: {command: sh}
"#,
        )
        .expect("parsed");
        match &spec.tasks[0].kind {
            TaskKind::Container {
                image,
                command,
                pull,
                workdir,
                ..
            } => {
                assert_eq!(image, "python:3.11-slim");
                assert_eq!(command.as_deref(), Some("python3"));
                assert_eq!(*pull, PullPolicy::Never);
                assert_eq!(workdir.as_deref(), Some("/app"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            &spec.tasks[1].kind,
            TaskKind::Container {
                command: None,
                pull: PullPolicy::IfMissing,
                ..
            }
        ));
        assert_eq!(spec.tasks[1].kind.executor(), Some(CONTAINER_EXECUTOR));
        assert_eq!(spec.tasks[2].kind.executor(), Some(PROCESS_EXECUTOR));

        // DockerRun: the flow's image runs its process tasks.
        let spec = parse_flow(
            "name: d\ncontainer: {image: baton-ridge:local, pull: never}\ntasks:\n  - name: p\n    process: {command: python3, args: [train.py]}\n  - name: q\n    builtin: noop\n",
        )
        .expect("parsed");
        match &spec.tasks[0].kind {
            TaskKind::Container {
                image,
                command,
                args,
                pull,
                ..
            } => {
                assert_eq!(image, "baton-ridge:local");
                assert_eq!(command.as_deref(), Some("python3"));
                assert_eq!(args, &["train.py".to_string()]);
                assert_eq!(*pull, PullPolicy::Never);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(spec.tasks[1].kind, TaskKind::Builtin { .. }));

        for bad in [
            "name: e\ntasks:\n  - name: a\n    container: {image: \"\"}\n",
            "name: e\ntasks:\n  - name: a\n    container: {image: \"a b\"}\n",
            "name: e\ntasks:\n  - name: a\n    container: {image: x, pull: sometimes}\n",
            "name: e\ntasks:\n  - name: a\n    container: {image: x}\n    process: {command: sh}\n",
        ] {
            assert!(parse_flow(bad).is_err(), "{bad}");
        }
    }
}
