//! Inputs of a task run ahead of the scheduler: a chained successor's inputs split into
//! those known before its one upstream task's result (parameters, context, literals) and the
//! bindings that read that result, completed on the worker once it has the result; and the
//! digest by which the scheduler checks that the worker used the inputs it would have sent.

use super::resolve::{eval, kind_of};
use super::{Input, InputError, ResolvedInputs, RunContext, TaskSpec};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// A successor's inputs before its upstream task's result is known.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PartialInputs {
    /// Inputs that do not read the upstream result, resolved.
    pub fixed: Map<String, Value>,
    /// Inputs that read only the upstream result (and literals), as bound in the flow.
    pub bound: BTreeMap<String, Input>,
}

/// Whether `input` reads nothing but the result of `upstream` and literals (it can be
/// evaluated from that result alone).
pub fn reads_only(input: &Input, upstream: &str) -> bool {
    match input {
        Input::Result(t) | Input::Element { task: t, .. } => t == upstream,
        Input::Value(_) => true,
        Input::Flatten(items) => items.iter().all(|i| reads_only(i, upstream)),
        Input::Param(_) | Input::Context(_) | Input::Secret(_) => false,
    }
}

/// Splits unmapped `task`'s inputs before the result of its only upstream task `upstream` is
/// known. `None` when an input mixes that result with parameters, context or secrets, or
/// cannot be resolved: such a task is not run ahead.
pub fn partial_inputs(
    task: &TaskSpec,
    params: &BTreeMap<String, Value>,
    context: &RunContext,
    upstream: &str,
) -> Option<PartialInputs> {
    let mut out = PartialInputs::default();
    for (name, input) in &task.inputs {
        let mut reads = Vec::new();
        input.upstream(&mut reads);
        if reads.is_empty() {
            if matches!(input, Input::Secret(_)) {
                return None;
            }
            let v = eval(input, params, context, &|_| None).ok()?;
            out.fixed.insert(name.clone(), v);
        } else if reads_only(input, upstream) {
            out.bound.insert(name.clone(), input.clone());
        } else {
            return None;
        }
    }
    Some(out)
}

impl PartialInputs {
    /// The inputs object's JSON text once `upstream`'s result is `value`, as the scheduler
    /// writes it ([`ResolvedInputs::json_for`]).
    pub fn complete(&self, upstream: &str, value: &Value) -> Result<String, InputError> {
        let mut fixed = self.fixed.clone();
        let params = BTreeMap::new();
        let context = RunContext::default();
        for (name, input) in &self.bound {
            let v = eval(input, &params, &context, &|t| {
                (t == upstream).then_some(value)
            })
            .map_err(|message| InputError {
                task: String::new(),
                input: name.clone(),
                message,
            })?;
            fixed.insert(name.clone(), v);
        }
        Ok(ResolvedInputs {
            fixed,
            mapped: Vec::new(),
        }
        .json_for(0))
    }

    /// The JSON texts sent in `Successor.fixed_inputs` and `Successor.bound_inputs`; `None`
    /// when they cannot be written (the chain then ends before this task).
    pub fn to_json(&self) -> Option<(String, String)> {
        let fixed = serde_json::to_string(&self.fixed).ok()?;
        let bound = serde_json::to_string(&self.bound).ok()?;
        Some((fixed, bound))
    }

    /// Reads what [`Self::to_json`] wrote.
    pub fn from_json(fixed: &str, bound: &str) -> Result<PartialInputs, String> {
        let fixed = match serde_json::from_str::<Value>(fixed) {
            Ok(Value::Object(m)) => m,
            Ok(other) => {
                return Err(format!(
                    "fixed inputs are {}, not an object",
                    kind_of(&other)
                ))
            }
            Err(e) => return Err(format!("fixed inputs are not JSON: {e}")),
        };
        let bound = serde_json::from_str(bound).map_err(|e| format!("bound inputs: {e}"))?;
        Ok(PartialInputs { fixed, bound })
    }
}

/// FNV-1a, 64 bits, of an inputs object's JSON text: stable across builds and hosts.
pub fn inputs_digest(json: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in json.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::parse_flow;
    use serde_json::json;

    fn task(yaml: &str, name: &str) -> TaskSpec {
        let flow = parse_flow(yaml).expect("flow");
        flow.tasks
            .into_iter()
            .find(|t| t.name == name)
            .expect("task")
    }

    const FLOW: &str = r#"
name: f
parameters:
  k: {default: 3}
tasks:
  - name: a
    builtin: echo
  - name: b
    builtin: echo
    inputs:
      whole: {result: a}
      first: {result: a, index: 0}
      both: {flatten: [{result: a}, {value: [9]}]}
      k: {param: k}
      lit: {value: "x"}
      run: {context: run_id}
"#;

    #[test]
    fn completes_to_what_the_scheduler_resolves() {
        let b = task(FLOW, "b");
        let params = BTreeMap::from([("k".to_string(), json!(3))]);
        let ctx = RunContext {
            run_id: "r1".into(),
            ..Default::default()
        };
        let p = partial_inputs(&b, &params, &ctx, "a").expect("runs ahead");
        assert_eq!(p.bound.len(), 3);
        let (fixed, bound) = p.to_json().expect("JSON");
        let p = PartialInputs::from_json(&fixed, &bound).expect("round trip");
        let a = json!([0.1, 5e-324, 1.7976931348623157e308]);
        let got = p.complete("a", &a).expect("complete");
        let want = crate::flow::resolve_inputs(&b, &params, &ctx, |t| (t == "a").then_some(&a))
            .expect("resolve")
            .json_for(0);
        assert_eq!(got, want);
        assert_eq!(inputs_digest(&got), inputs_digest(&want));
        assert_ne!(inputs_digest(&got), inputs_digest("{}"));
        // A value the element binding cannot take fails as the scheduler's would.
        assert!(p.complete("a", &json!(1)).is_err());
    }

    #[test]
    fn mixed_bindings_and_secrets_are_not_run_ahead() {
        let mixed = r#"
name: f
parameters:
  k: {default: 3}
tasks:
  - name: a
    builtin: echo
  - name: b
    builtin: echo
    inputs:
      x: {flatten: [{result: a}, {param: k}]}
"#;
        let none = BTreeMap::new();
        let ctx = RunContext::default();
        assert!(partial_inputs(&task(mixed, "b"), &none, &ctx, "a").is_none());
        let secret = r#"
name: f
tasks:
  - name: a
    builtin: echo
  - name: b
    builtin: echo
    inputs:
      x: {result: a}
      s: {secret: token}
"#;
        assert!(partial_inputs(&task(secret, "b"), &none, &ctx, "a").is_none());
    }
}
