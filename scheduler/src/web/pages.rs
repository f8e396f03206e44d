//! The UI's pages, rendered as HTML (maud): the layout, the dashboard, runs (filtered,
//! paged), a run (its task runs grouped by task, a mapped task's runs paged and filtered by
//! state), flows, workers and the sign-in form.

use baton_common::state::{run_state_name, task_state_name};
use baton_proto as pb;
use maud::{html, Markup, DOCTYPE};
use std::collections::{BTreeMap, HashMap};

/// Rows per page of a list.
pub const PAGE: usize = 50;

/// The page around `body`.
pub fn layout(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · baton" }
                link rel="stylesheet" href="/style.css";
            }
            body {
                header {
                    span.brand { "baton" }
                    nav {
                        a href="/" { "Dashboard" }
                        a href="/flows" { "Flows" }
                        a href="/runs" { "Runs" }
                        a href="/workers" { "Workers" }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
}

/// An error from the API.
pub fn error(message: &str) -> Markup {
    html! { p.error { (message) } p { a href="/" { "Back to the dashboard" } } }
}

fn state(name: &str) -> Markup {
    html! { span class={ "state s-" (name) } { (name) } }
}

fn when(ms: i64) -> String {
    if ms <= 0 {
        return "-".into();
    }
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|_| "-".into())
}

fn took(from: i64, to: i64) -> String {
    if from <= 0 || to < from {
        return "-".into();
    }
    let ms = to - from;
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

fn run_link(id: &str) -> Markup {
    html! { a.mono href={ "/runs/" (id) } { (id) } }
}

/// Home: the leader and replicas, workers, and recent runs by state.
pub fn dashboard(
    leader: &pb::GetLeaderResponse,
    runs: &[pb::FlowRun],
    workers: &[pb::WorkerInfo],
) -> Markup {
    let mut by_state: BTreeMap<&str, usize> = BTreeMap::new();
    for r in runs {
        *by_state.entry(run_state_name(r.state)).or_default() += 1;
    }
    let slots: u32 = workers
        .iter()
        .filter_map(|w| w.resources.as_ref())
        .map(|r| r.slots)
        .sum();
    html! {
        div.cards {
            div.card { div.muted { "Leader" } div.mono { (leader.leader_address) } div.muted { "epoch " (leader.epoch) } }
            div.card { div.muted { "Workers" } div.big { (workers.len()) } div.muted { (slots) " slots" } }
            @for (s, n) in &by_state {
                div.card { div.muted { (state(s)) } div.big { (n) } div.muted { "recent runs" } }
            }
        }
        h2 { "Replicas" }
        table {
            tr { th { "Replica" } th { "Address" } th { "Role" } }
            @for r in &leader.replicas {
                tr { td.mono { (r.id) } td.mono { (r.address) } td { @if r.leader { "leader" } @else { "follower" } } }
            }
        }
        h2 { "Latest runs" }
        (run_table(runs.iter().take(10)))
    }
}

fn run_table<'a>(runs: impl Iterator<Item = &'a pb::FlowRun>) -> Markup {
    html! {
        table {
            tr { th { "Run" } th { "Flow" } th { "State" } th { "Trigger" } th { "Created" } th { "Duration" } }
            @for r in runs {
                tr {
                    td { (run_link(&r.id)) }
                    td { (r.project) "/" (r.flow) " v" (r.version) }
                    td { (state(run_state_name(r.state))) }
                    td { (r.trigger) }
                    td { (when(r.created_ms)) }
                    td.num { (took(r.started_ms.max(r.created_ms), r.ended_ms)) }
                }
            }
        }
    }
}

/// What the runs page shows.
#[derive(Default)]
pub struct RunFilter {
    pub project: String,
    pub flow: String,
    pub state: String,
    pub offset: usize,
}

impl RunFilter {
    pub fn from_query(q: &HashMap<String, String>) -> Self {
        let get = |k: &str| q.get(k).cloned().unwrap_or_default();
        RunFilter {
            project: get("project"),
            flow: get("flow"),
            state: get("state").to_ascii_uppercase(),
            offset: get("offset").parse().unwrap_or(0),
        }
    }
}

/// Runs, newest first, filtered and paged.
pub fn runs(all: &[pb::FlowRun], f: &RunFilter) -> Markup {
    let shown: Vec<&pb::FlowRun> = all
        .iter()
        .filter(|r| f.project.is_empty() || r.project == f.project)
        .filter(|r| f.flow.is_empty() || r.flow == f.flow)
        .filter(|r| f.state.is_empty() || run_state_name(r.state) == f.state)
        .collect();
    let page = shown.iter().skip(f.offset).take(PAGE).copied();
    html! {
        form method="get" action="/runs" {
            input name="project" placeholder="project" value=(f.project);
            " " input name="flow" placeholder="flow" value=(f.flow);
            " " input name="state" placeholder="state" value=(f.state);
            " " button type="submit" { "Filter" }
        }
        p.muted { (shown.len()) " runs" }
        (run_table(page))
        (pager("/runs", &[("project", &f.project), ("flow", &f.flow), ("state", &f.state)], f.offset, shown.len()))
    }
}

fn pager(path: &str, keep: &[(&str, &str)], offset: usize, total: usize) -> Markup {
    let query = |off: usize| {
        let mut q: Vec<String> = keep
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| format!("{k}={}", encode(v)))
            .collect();
        q.push(format!("offset={off}"));
        format!("{path}?{}", q.join("&"))
    };
    html! {
        p.pager {
            @if offset > 0 { a href=(query(offset.saturating_sub(PAGE))) { "← newer" } }
            @if offset + PAGE < total { a href=(query(offset + PAGE)) { "older →" } }
        }
    }
}

use baton_common::text::percent_encode as encode;

/// Which task runs of a run the run page lists.
#[derive(Default)]
pub struct TaskFilter {
    pub task: String,
    pub state: String,
    pub offset: usize,
}

impl TaskFilter {
    pub fn from_query(q: &HashMap<String, String>) -> Self {
        let get = |k: &str| q.get(k).cloned().unwrap_or_default();
        TaskFilter {
            task: get("task"),
            state: get("state").to_ascii_uppercase(),
            offset: get("offset").parse().unwrap_or(0),
        }
    }
}

/// A run: its facts and parameters, its tasks with counts by state, and a page of task
/// runs (of one task and state when asked).
pub fn run(r: &pb::FlowRun, trs: &[pb::TaskRun], f: &TaskFilter) -> Markup {
    let mut tasks: Vec<(&str, BTreeMap<&str, usize>, usize)> = Vec::new();
    for t in trs {
        let i = match tasks.iter().position(|(n, _, _)| *n == t.task) {
            Some(i) => i,
            None => {
                tasks.push((&t.task, BTreeMap::new(), 0));
                tasks.len() - 1
            }
        };
        *tasks[i].1.entry(task_state_name(t.state)).or_default() += 1;
        tasks[i].2 += 1;
    }
    let listed: Vec<&pb::TaskRun> = trs
        .iter()
        .filter(|t| f.task.is_empty() || t.task == f.task)
        .filter(|t| f.state.is_empty() || task_state_name(t.state) == f.state)
        .collect();
    let path = format!("/runs/{}", r.id);
    html! {
        table {
            tr { th { "Flow" } td { (r.project) "/" (r.flow) " v" (r.version) } }
            tr { th { "State" } td { (state(run_state_name(r.state))) } }
            tr { th { "Trigger" } td { (r.trigger) } }
            tr { th { "Created" } td { (when(r.created_ms)) } }
            tr { th { "Duration" } td { (took(r.started_ms.max(r.created_ms), r.ended_ms)) } }
            @if !r.parent_run_id.is_empty() {
                tr { th { "Parent" } td { (run_link(&r.parent_run_id)) " (" (r.parent_task) ")" } }
            }
            @if !r.waiting_reason.is_empty() {
                tr { th { "Waiting" } td { (r.waiting_reason) } }
            }
            @if !r.error.is_empty() {
                tr { th { "Error" } td.error { (r.error) } }
            }
            @if !baton_client::is_finished(r) {
                tr { th { "" } td {
                    form.inline method="post" action={ "/runs/" (r.id) "/cancel" } {
                        button type="submit" { "Cancel run" }
                    }
                } }
            }
            @for (k, v) in &r.parameters {
                tr { th { "param " (k) } td.mono { (v) } }
            }
        }
        h2 { "Tasks" }
        table {
            tr { th { "Task" } th { "Task runs" } th { "By state" } }
            @for (task, states, n) in &tasks {
                tr {
                    td { a href={ (path) "?task=" (encode(task)) } { (task) } }
                    td.num { (n) }
                    td {
                        @for (s, k) in states {
                            a href={ (path) "?task=" (encode(task)) "&state=" (s) } { (state(s)) " " (k) } " "
                        }
                    }
                }
            }
        }
        h2 { "Task runs" @if !f.task.is_empty() { " of " (f.task) } @if !f.state.is_empty() { ", " (f.state) } }
        p.muted { (listed.len()) " task runs" }
        table {
            tr { th { "Task" } th { "Index" } th { "State" } th { "Attempt" } th { "Worker" } th { "Duration" } th { "Result" } th { "Value / error" } }
            @for t in listed.iter().skip(f.offset).take(PAGE) {
                tr {
                    td { (t.task) }
                    td.num { @if t.map_index >= 0 { (t.map_index) } @else { "-" } }
                    td { (state(task_state_name(t.state))) }
                    td.num { (t.attempt) }
                    td.mono { (t.worker) }
                    td.num { (took(t.started_ms, t.ended_ms)) }
                    td.mono { @if let Some(res) = &t.result { (res.uri) } }
                    td {
                        @if !t.error.is_empty() { span.error { (t.error) } }
                        @else if !t.value.is_empty() { code { (clip(&t.value, 200)) } }
                        @else { span.muted { (t.waiting_reason) } }
                    }
                }
            }
        }
        (pager(&path, &[("task", &f.task), ("state", &f.state)], f.offset, listed.len()))
    }
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(n).collect();
        out.push('…');
        out
    }
}

/// Registered flows by project, with their schedules.
pub fn flows(flows: &[pb::FlowSummary]) -> Markup {
    html! {
        table {
            tr { th { "Project" } th { "Flow" } th { "Version" } th { "Schedule" } th { "Runs" } th { "" } }
            @for f in flows {
                tr {
                    td { (f.project) }
                    td { (f.flow) }
                    td.num { (f.latest_version) }
                    td {
                        @if let Some(s) = &f.schedule {
                            form.inline method="post" action={ "/flows/" (encode(&f.project)) "/" (encode(&f.flow)) "/schedule" } {
                                code { (s.cron) } " "
                                @if s.active {
                                    input type="hidden" name="active" value="off";
                                    button type="submit" aria-pressed="true" { "on · switch off" }
                                } @else {
                                    input type="hidden" name="active" value="on";
                                    button type="submit" aria-pressed="false" { "off · switch on" }
                                }
                            }
                        } @else { span.muted { "-" } }
                    }
                    td { a href={ "/runs?project=" (encode(&f.project)) "&flow=" (encode(&f.flow)) } { "runs" } }
                    td { a href={ "/flows/" (encode(&f.project)) "/" (encode(&f.flow)) "/run" } { "Quick run" } }
                }
            }
        }
    }
}

/// Connected workers: labels, slots, resources, running attempts.
pub fn workers(ws: &[pb::WorkerInfo]) -> Markup {
    html! {
        table {
            tr { th { "Worker" } th { "Labels" } th { "Slots free / all" } th { "GPUs" } th { "Running" } th { "Connected" } }
            @for w in ws {
                @let all = w.resources.clone().unwrap_or_default();
                @let free = w.free.clone().unwrap_or_default();
                tr {
                    td.mono { (w.id) }
                    td { (w.labels.join(", ")) }
                    td.num { (free.slots) " / " (all.slots) }
                    td.num { (all.gpus) }
                    td.num { (w.running) }
                    td { (when(w.connected_ms)) }
                }
            }
        }
    }
}

/// The sign-in form: a token, kept in an http-only cookie.
pub fn login() -> Markup {
    html! {
        p { "This cluster requires a token (from " code { "baton token new" } ")." }
        form method="post" action="/login" {
            label for="token" { "Token " }
            input id="token" name="token" type="password" autocomplete="off" required;
            " " button type="submit" { "Sign in" }
        }
    }
}

/// The Quick Run form: a field per parameter, its default filled in (JSON).
pub fn quick_run(def: &pb::GetFlowResponse, error: Option<&str>) -> Markup {
    let spec: serde_json::Value = serde_json::from_str(&def.definition_json).unwrap_or_default();
    let params: Vec<(String, String)> = spec["parameters"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let default = match &v["default"] {
                        serde_json::Value::Null => String::new(),
                        d => d.to_string(),
                    };
                    (k.clone(), default)
                })
                .collect()
        })
        .unwrap_or_default();
    let action = format!("/flows/{}/{}/run", encode(&def.project), encode(&def.flow));
    html! {
        @if let Some(e) = error { p.error { (e) } }
        p.muted { "Version " (def.latest_version) ". Values are JSON: a string is written in quotes." }
        form method="post" action=(action) {
            table {
                @for (name, default) in &params {
                    tr {
                        th { label for={ "p-" (name) } { (name) } }
                        td { input id={ "p-" (name) } name={ "p." (name) } value=(default) size="60"; }
                    }
                }
            }
            p { button type="submit" { "Run" } }
        }
    }
}
