//! Static validation of a flow: names, references, cycles, kinds and maps.

use super::{FlowSpec, Input, TaskKind, TaskSpec, BUILTINS, CONTEXT_KEYS};
use crate::{Error, Result};
use std::collections::{HashMap, HashSet};

fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidFlow(msg.into())
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
}

/// Validates a flow and returns it with its tasks in a topological order.
pub(super) fn validate(mut spec: FlowSpec) -> Result<FlowSpec> {
    if !valid_name(&spec.name) {
        return Err(invalid(format!(
            "flow name `{}` must be 1-128 characters of letters, digits, `_`, `-` or `.`",
            spec.name
        )));
    }
    if !valid_name(&spec.project) {
        return Err(invalid(format!(
            "project `{}` must be 1-128 characters of letters, digits, `_`, `-` or `.`",
            spec.project
        )));
    }
    if spec.tasks.is_empty() {
        return Err(invalid("a flow needs at least one task"));
    }
    for p in spec.parameters.keys() {
        if !valid_name(p) {
            return Err(invalid(format!("parameter name `{p}` is not a valid name")));
        }
    }
    let mut names = HashSet::new();
    for t in &spec.tasks {
        if !valid_name(&t.name) {
            return Err(invalid(format!(
                "task name `{}` must be 1-128 characters of letters, digits, `_`, `-` or `.`",
                t.name
            )));
        }
        if !names.insert(t.name.as_str()) {
            return Err(invalid(format!("duplicate task name `{}`", t.name)));
        }
    }
    for t in &spec.tasks {
        check_task(&spec, &names, t)?;
    }
    spec.tasks = topo_order(std::mem::take(&mut spec.tasks))?;
    Ok(spec)
}

fn check_task(spec: &FlowSpec, names: &HashSet<&str>, t: &TaskSpec) -> Result<()> {
    let at = |field: &str, msg: String| invalid(format!("task `{}`: {field}: {msg}", t.name));
    if let TaskKind::Builtin { function } = &t.kind {
        if !BUILTINS.contains(&function.as_str()) {
            return Err(at(
                "builtin",
                format!(
                    "unknown built-in function `{function}` (known: {})",
                    BUILTINS.join(", ")
                ),
            ));
        }
    }
    if let TaskKind::Process { command, .. } = &t.kind {
        if command.trim().is_empty() {
            return Err(at("process.command", "must not be empty".into()));
        }
    }
    if let TaskKind::Container { image, command, .. } = &t.kind {
        if image.trim().is_empty() || image.len() > 512 || image.chars().any(char::is_whitespace) {
            return Err(at(
                "container.image",
                "must be an image reference (up to 512 characters, no spaces)".into(),
            ));
        }
        if command.as_deref().is_some_and(|c| c.trim().is_empty()) {
            return Err(at(
                "container.command",
                "must not be empty when given".into(),
            ));
        }
    }
    if let TaskKind::Flow {
        project,
        flow,
        result,
        ..
    } = &t.kind
    {
        if !valid_name(flow) || !valid_name(project) {
            return Err(at(
                "subflow",
                format!("`{project}/{flow}` is not a valid project and flow name"),
            ));
        }
        if !result.is_empty() && !valid_name(result) {
            return Err(at(
                "subflow.result",
                format!("`{result}` is not a task name"),
            ));
        }
        if t.cache.is_some() {
            return Err(at(
                "cache",
                "a sub-flow task is not cached (cache the child's tasks)".into(),
            ));
        }
        if !t.tags.is_empty() {
            return Err(at(
                "tags",
                "a sub-flow task holds no worker slot (tag the child's tasks)".into(),
            ));
        }
    }
    for tag in &t.tags {
        if !valid_name(tag) {
            return Err(at(
                "tags",
                format!("`{tag}` must be 1-128 characters of letters, digits, `_`, `-` or `.`"),
            ));
        }
    }
    for (name, input) in &t.inputs {
        check_input(spec, names, t, input).map_err(|m| at(&format!("input `{name}`"), m))?;
        if let Input::Secret(_) = input {
            if t.map.contains(name) {
                return Err(at(
                    &format!("input `{name}`"),
                    "a secret cannot be mapped".into(),
                ));
            }
            if matches!(t.kind, TaskKind::Flow { .. }) {
                return Err(at(
                    &format!("input `{name}`"),
                    "a sub-flow task cannot take a secret (its child's tasks can, by name)".into(),
                ));
            }
        }
    }
    for m in &t.map {
        if !t.inputs.contains_key(m) {
            return Err(at("map", format!("`{m}` is not one of the task's inputs")));
        }
    }
    for a in &t.after {
        if !names.contains(a.as_str()) {
            return Err(at("after", format!("unknown task `{a}`")));
        }
        if a == &t.name {
            return Err(at("after", "a task cannot run after itself".into()));
        }
    }
    if t.resources.slots == 0 {
        return Err(at("resources.slots", "must be at least 1".into()));
    }
    if t.resources.gpus > super::MAX_GPUS {
        return Err(at(
            "resources.gpus",
            format!("must be at most {}", super::MAX_GPUS),
        ));
    }
    if t.resources.gpu_memory_mb > 0 && t.resources.gpus == 0 {
        return Err(at(
            "resources.gpu_memory_mb",
            "asks memory of GPUs, but `gpus` is 0: ask for at least one GPU".into(),
        ));
    }
    if let Some(c) = &t.cache {
        if c.version.len() > 128 {
            return Err(at("cache.version", "must be at most 128 characters".into()));
        }
    }
    Ok(())
}

fn check_input(
    spec: &FlowSpec,
    names: &HashSet<&str>,
    t: &TaskSpec,
    input: &Input,
) -> std::result::Result<(), String> {
    match input {
        Input::Param(p) => {
            if !spec.parameters.contains_key(p) {
                return Err(format!("unknown parameter `{p}`"));
            }
        }
        Input::Result(u) | Input::Element { task: u, .. } => {
            if !names.contains(u.as_str()) {
                return Err(format!("unknown task `{u}`"));
            }
            if u == &t.name {
                return Err("a task cannot take its own result".into());
            }
        }
        Input::Flatten(items) => {
            for i in items {
                if let Input::Secret(_) = i {
                    return Err("a secret is a whole input, not part of a `flatten`".into());
                }
                check_input(spec, names, t, i)?;
            }
        }
        Input::Secret(_) => {}
        Input::Value(_) => {}
        Input::Context(c) => {
            if !CONTEXT_KEYS.contains(&c.as_str()) {
                return Err(format!(
                    "unknown context value `{c}` (known: {})",
                    CONTEXT_KEYS.join(", ")
                ));
            }
        }
    }
    Ok(())
}

/// Kahn's algorithm, keeping file order among independent tasks; names the cycle if any.
fn topo_order(tasks: Vec<TaskSpec>) -> Result<Vec<TaskSpec>> {
    let index: HashMap<String, usize> = tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.clone(), i))
        .collect();
    let mut indegree = vec![0usize; tasks.len()];
    let mut down: Vec<Vec<usize>> = vec![Vec::new(); tasks.len()];
    for (i, t) in tasks.iter().enumerate() {
        for u in t.upstream() {
            let j = index[u];
            indegree[i] += 1;
            down[j].push(i);
        }
    }
    let mut order = Vec::with_capacity(tasks.len());
    let mut ready: std::collections::BTreeSet<usize> =
        (0..tasks.len()).filter(|&i| indegree[i] == 0).collect();
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &d in &down[i] {
            indegree[d] -= 1;
            if indegree[d] == 0 {
                ready.insert(d);
            }
        }
    }
    if order.len() < tasks.len() {
        let cycle = find_cycle(&tasks, &index, &indegree);
        return Err(invalid(format!("dependency cycle: {}", cycle.join(" -> "))));
    }
    let mut slots: Vec<Option<TaskSpec>> = tasks.into_iter().map(Some).collect();
    Ok(order.into_iter().filter_map(|i| slots[i].take()).collect())
}

fn find_cycle(
    tasks: &[TaskSpec],
    index: &HashMap<String, usize>,
    indegree: &[usize],
) -> Vec<String> {
    // Walk upstream edges among the tasks left over until a task repeats.
    let Some(start) = (0..tasks.len()).find(|&i| indegree[i] > 0) else {
        return Vec::new();
    };
    let mut path = vec![start];
    let mut cur = start;
    loop {
        let next = tasks[cur]
            .upstream()
            .into_iter()
            .map(|u| index[u])
            .find(|&j| indegree[j] > 0);
        let Some(next) = next else { break };
        if let Some(pos) = path.iter().position(|&p| p == next) {
            let mut cycle: Vec<String> = path[pos..]
                .iter()
                .rev()
                .map(|&i| tasks[i].name.clone())
                .collect();
            cycle.push(tasks[cur].name.clone());
            return cycle;
        }
        path.push(next);
        cur = next;
    }
    path.iter().map(|&i| tasks[i].name.clone()).collect()
}

#[cfg(test)]
mod tests {
    use crate::flow::{parse_flow, Input, TaskSecrets};

    fn flow(inputs: &str, extra: &str) -> String {
        format!(
            "name: s\ntasks:\n  - name: t\n    process: {{command: sh}}\n    inputs: {inputs}\n{extra}"
        )
    }

    #[test]
    fn a_secret_input_is_named_in_the_assignment_and_nowhere_else() {
        let spec = parse_flow(&flow("{key: {secret: API_KEY}, n: 1}", "")).expect("parsed");
        let t = &spec.tasks[0];
        assert_eq!(t.inputs["key"], Input::Secret("API_KEY".into()));
        let sent: TaskSecrets =
            serde_json::from_str(&t.assignment_json()).expect("a kind with secrets");
        assert_eq!(sent.secrets["key"], "API_KEY");
        assert_eq!(sent.kind, t.kind);
        // The inputs the scheduler resolves hold null in its place.
        let r = crate::flow::resolve_inputs(t, &Default::default(), &Default::default(), |_| None)
            .expect("resolved");
        assert_eq!(r.fixed["key"], serde_json::Value::Null);
        // Without secrets, the bare kind as before.
        let plain = parse_flow(&flow("{n: 1}", "")).expect("parsed");
        assert_eq!(
            plain.tasks[0].assignment_json(),
            serde_json::to_string(&plain.tasks[0].kind).expect("json")
        );
    }

    #[test]
    fn secrets_are_whole_named_unmapped_inputs() {
        let bad = [
            (flow("{key: {secret: 9LIVES}}", ""), "must name a secret"),
            (flow("{key: {secret: a-b}}", ""), "must name a secret"),
            (flow("{key: {secret: [A]}}", ""), "must be a name"),
            (
                flow("{key: {secret: K}}", "    map: [key]\n"),
                "cannot be mapped",
            ),
            (
                flow("{key: {flatten: [{secret: K}]}}", ""),
                "not part of a `flatten`",
            ),
        ];
        for (source, needle) in bad {
            let e = parse_flow(&source).expect_err(&source).to_string();
            assert!(e.contains(needle), "{source}: {e}");
        }
        let long = format!("{{key: {{secret: {}}}}}", "A".repeat(129));
        assert!(parse_flow(&flow(&long, "")).is_err());
    }
}
