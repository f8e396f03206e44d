//! Binding parameter values and resolving a task's inputs from parameters and upstream results.

use super::{FlowSpec, Input, TaskSpec};
use crate::{Error, Result};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Checks given parameter values against the flow and fills in defaults.
pub fn bind_parameters(
    spec: &FlowSpec,
    given: BTreeMap<String, Value>,
) -> Result<BTreeMap<String, Value>> {
    for k in given.keys() {
        if !spec.parameters.contains_key(k) {
            let known: Vec<&str> = spec.parameters.keys().map(String::as_str).collect();
            return Err(Error::InvalidArgument(format!(
                "flow `{}` has no parameter `{k}` (parameters: {})",
                spec.name,
                known.join(", ")
            )));
        }
    }
    let mut out = BTreeMap::new();
    for (name, p) in &spec.parameters {
        let v = given
            .get(name)
            .cloned()
            .or_else(|| p.default.clone())
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "missing required parameter `{name}` of flow `{}`",
                    spec.name
                ))
            })?;
        out.insert(name.clone(), v);
    }
    Ok(out)
}

/// A task's inputs once its upstream results are known.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedInputs {
    /// Inputs given whole to every task run (unmapped, broadcast).
    pub fixed: Map<String, Value>,
    /// Mapped inputs, all lists of the same length.
    pub mapped: Vec<(String, Vec<Value>)>,
}

impl ResolvedInputs {
    /// The number of task runs of a mapped task; `None` for an unmapped one.
    pub fn width(&self) -> Option<usize> {
        self.mapped.first().map(|(_, v)| v.len())
    }

    /// The inputs object of task run `index` (ignored for an unmapped task).
    pub fn for_index(&self, index: usize) -> Value {
        let mut m = self.fixed.clone();
        for (k, vals) in &self.mapped {
            m.insert(k.clone(), vals.get(index).cloned().unwrap_or(Value::Null));
        }
        Value::Object(m)
    }

    /// The JSON text of [`Self::for_index`], written straight from the shared inputs
    /// (keys in order, as `serde_json` writes an object), without copying any value.
    pub fn json_for(&self, index: usize) -> String {
        use std::fmt::Write;
        static NULL: Value = Value::Null;
        let mut entries: Vec<(&str, &Value)> = self
            .fixed
            .iter()
            .map(|(k, v)| (k.as_str(), v))
            .chain(
                self.mapped
                    .iter()
                    .map(|(k, vals)| (k.as_str(), vals.get(index).unwrap_or(&NULL))),
            )
            .collect();
        entries.sort_by(|a, b| a.0.cmp(b.0));
        let mut out = String::from("{");
        for (i, (k, v)) in entries.into_iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            // Writing to a String cannot fail.
            let _ = write!(out, "{}:{}", Value::from(k), v);
        }
        out.push('}');
        out
    }
}

/// Why a task's inputs could not be resolved at run time.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("task `{task}`: input `{input}`: {message}")]
pub struct InputError {
    pub task: String,
    pub input: String,
    pub message: String,
}

pub(super) fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// What `{context: NAME}` inputs read from their run.
#[derive(Debug, Clone, Default)]
pub struct RunContext {
    pub run_id: String,
    pub flow_version: u32,
    pub scheduled_start_ms: i64,
    pub parent_run_id: String,
}

impl RunContext {
    fn get(&self, name: &str) -> Option<Value> {
        Some(match name {
            "scheduled_start_ms" => Value::from(self.scheduled_start_ms),
            "scheduled_start_s" => Value::from(self.scheduled_start_ms.div_euclid(1000)),
            "scheduled_start" => Value::from(
                jiff::Timestamp::from_millisecond(self.scheduled_start_ms)
                    .map(|t| t.to_string())
                    .unwrap_or_default(),
            ),
            "run_id" => Value::from(self.run_id.clone()),
            "flow_version" => Value::from(self.flow_version),
            "parent_run_id" => Value::from(self.parent_run_id.clone()),
            _ => return None,
        })
    }
}

/// Resolves `task`'s inputs; `result` gives a completed upstream task's result.
pub fn resolve_inputs<'a>(
    task: &TaskSpec,
    params: &BTreeMap<String, Value>,
    context: &RunContext,
    result: impl Fn(&str) -> Option<&'a Value>,
) -> std::result::Result<ResolvedInputs, InputError> {
    let mut fixed = Map::new();
    let mut mapped = Vec::new();
    for (name, input) in &task.inputs {
        let err = |message: String| InputError {
            task: task.name.clone(),
            input: name.clone(),
            message,
        };
        let v = eval(input, params, context, &result).map_err(err)?;
        if task.map.contains(name) {
            match v {
                Value::Array(items) => mapped.push((name.clone(), items)),
                other => {
                    return Err(err(format!(
                        "mapped input must be a list at run time, got {}",
                        kind_of(&other)
                    )))
                }
            }
        } else {
            fixed.insert(name.clone(), v);
        }
    }
    if let Some((first, first_items)) = mapped.first() {
        for (name, items) in &mapped[1..] {
            if items.len() != first_items.len() {
                return Err(InputError {
                    task: task.name.clone(),
                    input: name.clone(),
                    message: format!(
                        "mapped inputs differ in length: `{first}` has {}, `{name}` has {}",
                        first_items.len(),
                        items.len()
                    ),
                });
            }
        }
    }
    Ok(ResolvedInputs { fixed, mapped })
}

pub(super) fn eval<'a>(
    input: &Input,
    params: &BTreeMap<String, Value>,
    context: &RunContext,
    result: &impl Fn(&str) -> Option<&'a Value>,
) -> std::result::Result<Value, String> {
    match input {
        Input::Context(c) => context
            .get(c)
            .ok_or_else(|| format!("unknown context value `{c}`")),
        Input::Param(p) => params
            .get(p)
            .cloned()
            .ok_or_else(|| format!("parameter `{p}` has no value")),
        Input::Value(v) => Ok(v.clone()),
        // Resolved by the worker, which alone holds it.
        Input::Secret(_) => Ok(Value::Null),
        Input::Result(t) => result(t)
            .cloned()
            .ok_or_else(|| format!("task `{t}` has no result")),
        Input::Element { task: t, index } => {
            let v = result(t).ok_or_else(|| format!("task `{t}` has no result"))?;
            match v {
                Value::Array(items) => items.get(*index).cloned().ok_or_else(|| {
                    format!(
                        "index {index} is out of range: task `{t}` returned {} elements",
                        items.len()
                    )
                }),
                other => Err(format!(
                    "cannot take element {index} of task `{t}`'s result: it is {}, not a list",
                    kind_of(other)
                )),
            }
        }
        Input::Flatten(items) => {
            let mut out = Vec::new();
            for i in items {
                match eval(i, params, context, result)? {
                    Value::Array(inner) => out.extend(inner),
                    other => out.push(other),
                }
            }
            Ok(Value::Array(out))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ResolvedInputs;
    use serde_json::{json, Value};

    #[test]
    fn json_for_writes_what_serde_json_writes() {
        let fixed = json!({"big": "x".repeat(1000), "a": 0.1, "zz": {"n": [1, 2]}, "m": null});
        let Value::Object(fixed) = fixed else {
            unreachable!()
        };
        let inputs = ResolvedInputs {
            fixed,
            mapped: vec![
                ("b".into(), vec![json!(1.5), json!("two"), json!([3])]),
                (
                    "zzz".into(),
                    vec![json!(5e-324), json!(null), json!({"k": "v\"q"})],
                ),
            ],
        };
        for i in 0..4 {
            let want = serde_json::to_string(&inputs.for_index(i)).expect("JSON");
            assert_eq!(inputs.json_for(i), want, "index {i}");
        }
        let unmapped = ResolvedInputs {
            fixed: serde_json::Map::new(),
            mapped: Vec::new(),
        };
        assert_eq!(unmapped.json_for(0), "{}");
    }
}
