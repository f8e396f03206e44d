//! The run page: the run's facts and parameters, its flow drawn as a graph, its task runs
//! grouped by task (counts by state; a mapped task's runs listed a page at a time, filtered
//! by state, more fetched as the list is scrolled), a timeline by task, and its child runs
//! as a tree. Built from one page of task runs and the run's counts, never from all of
//! them, so that a run of 100,000 task runs renders as fast as one of ten.

use super::dag;
use super::pages::{clip, encode, pager, run_bar, run_link, state, took, when, PAGE as LIST_PAGE};
use baton_common::flow::FlowSpec;
use baton_common::state::{run_state_name, task_state_name};
use baton_proto as pb;
use maud::{html, Markup};
use std::collections::{BTreeMap, HashMap};

/// Rows of the task-run list fetched at a time.
pub const PAGE: usize = LIST_PAGE;

/// Which task runs the list shows.
#[derive(Default)]
pub struct TaskFilter {
    pub task: String,
    /// A state's name, e.g. `COMPLETED` (empty: any).
    pub state: String,
    pub offset: usize,
}

impl TaskFilter {
    pub fn from_query(q: &HashMap<String, String>) -> Self {
        let get = |k: &str| q.get(k).cloned().unwrap_or_default();
        // A state that is not one is no filter (the form shows "any").
        let state = get("state").to_ascii_uppercase();
        let state = if Self::named(&state).is_some() {
            state
        } else {
            String::new()
        };
        TaskFilter {
            task: get("task"),
            state,
            offset: super::pages::offset(q),
        }
    }

    fn named(state: &str) -> Option<pb::TaskState> {
        pb::TaskState::from_str_name(&format!("TASK_STATE_{state}"))
            .filter(|s| *s != pb::TaskState::Unspecified)
    }

    /// The state asked for, as the API's filter.
    pub fn states(&self) -> Vec<i32> {
        Self::named(&self.state)
            .map(|s| vec![s as i32])
            .unwrap_or_default()
    }

    fn keep(&self) -> [(&'static str, &str); 2] {
        [("task", &self.task), ("state", &self.state)]
    }
}

/// A run's child runs: by parent run, the task run that started each and the child.
#[derive(Default)]
pub struct Tree {
    pub children: BTreeMap<String, Vec<(pb::TaskRun, pb::FlowRun)>>,
    /// Not every child is shown (more than the tree holds).
    pub cut: bool,
}

impl Tree {
    pub fn add(&mut self, parent: &str, by: &pb::TaskRun, child: pb::FlowRun) {
        self.children
            .entry(parent.to_string())
            .or_default()
            .push((by.clone(), child));
    }

    pub fn len(&self) -> usize {
        self.children.values().map(Vec::len).sum()
    }
}

/// A task's counts, gathered from the run's counts by task and state.
pub struct TaskSummary<'a> {
    pub task: &'a str,
    pub mapped: bool,
    pub by_state: Vec<(&'static str, u32)>,
    pub total: u32,
    pub first_started_ms: i64,
    pub last_ended_ms: i64,
}

impl TaskSummary<'_> {
    fn count(&self, name: &str) -> u32 {
        self.by_state
            .iter()
            .filter(|(s, _)| *s == name)
            .map(|(_, n)| n)
            .sum()
    }

    /// The state that best sums the task up: failed over running over waiting over done.
    pub fn overall(&self) -> &'static str {
        for s in [
            "FAILED", "RUNNING", "ASSIGNED", "RETRYING", "READY", "PENDING",
        ] {
            if self.count(s) > 0 {
                return s;
            }
        }
        for s in ["COMPLETED", "CANCELLED", "SKIPPED"] {
            if self.count(s) > 0 {
                return s;
            }
        }
        "PENDING"
    }

    pub fn done(&self) -> u32 {
        self.count("COMPLETED") + self.count("SKIPPED")
    }
}

/// Tasks in the flow's order with their counts.
pub fn summaries(counts: &[pb::TaskCount]) -> Vec<TaskSummary<'_>> {
    let mut out: Vec<TaskSummary<'_>> = Vec::new();
    for c in counts {
        if out.last().is_none_or(|s| s.task != c.task) {
            out.push(TaskSummary {
                task: &c.task,
                mapped: c.mapped,
                by_state: Vec::new(),
                total: 0,
                first_started_ms: 0,
                last_ended_ms: 0,
            });
        }
        if let Some(s) = out.last_mut() {
            s.by_state.push((task_state_name(c.state), c.count));
            s.total += c.count;
            if c.first_started_ms > 0
                && (s.first_started_ms == 0 || c.first_started_ms < s.first_started_ms)
            {
                s.first_started_ms = c.first_started_ms;
            }
            s.last_ended_ms = s.last_ended_ms.max(c.last_ended_ms);
        }
    }
    out
}

/// The whole run page.
pub fn run(
    r: &pb::FlowRun,
    spec: Option<&FlowSpec>,
    rows: &pb::ListTaskRunsResponse,
    f: &TaskFilter,
    tree: &Tree,
) -> Markup {
    let tasks = summaries(&rows.counts);
    let path = format!("/runs/{}", encode(&r.id));
    html! {
        section #facts data-part {
            div.facts {
                div { (state(run_state_name(r.state))) " " (run_bar(r)) " "
                    span.muted { (r.tasks_done) " of " (r.tasks_total) " task runs done" } }
                @if !baton_client::is_finished(r) {
                    form.inline method="post" action={ (path) "/cancel" } {
                        button.danger type="submit" { "Cancel run" }
                    }
                }
            }
            table.kv {
                tr { th { "Flow" } td { a href={ "/runs?project=" (encode(&r.project)) "&flow=" (encode(&r.flow)) } { (r.project) "/" (r.flow) } " v" (r.version) } }
                tr { th { "Trigger" } td { (r.trigger) } }
                tr { th { "Created" } td { (when(r.created_ms)) } }
                tr { th { "Duration" } td { (took(r.started_ms.max(r.created_ms), until(r))) } }
                @if !r.parent_run_id.is_empty() {
                    tr { th { "Parent" } td { (run_link(&r.parent_run_id)) " (" (r.parent_task) @if r.parent_map_index >= 0 { "[" (r.parent_map_index) "]" } ")" } }
                }
                @if !r.waiting_reason.is_empty() {
                    tr { th { "Waiting" } td.wait { (r.waiting_reason) } }
                }
                @if !r.error.is_empty() {
                    tr { th { "Error" } td.error { (r.error) } }
                }
                @for (k, v) in &r.parameters {
                    tr { th { "param " (k) } td.mono { (clip(v, 400)) } }
                }
            }
        }
        section #graph data-part {
            h2 { "Graph" }
            @if let Some(spec) = spec { (dag::svg(spec, &tasks, &path)) } @else { p.muted { "The flow's definition cannot be read." } }
        }
        section #tasks data-part {
            h2 { "Tasks" }
            table {
                thead { tr { th { "Task" } th.num { "Task runs" } th { "Done" } th { "By state" } th.num { "Took" } } }
                tbody {
                    @for t in &tasks {
                        tr.selected[t.task == f.task] {
                            td { a href={ (path) "?task=" (encode(t.task)) } { (t.task) } @if t.mapped { " " span.muted { "mapped" } } }
                            td.num { (t.total) }
                            td { (done_bar(t)) }
                            td {
                                @for (s, k) in &t.by_state {
                                    a.count href={ (path) "?task=" (encode(t.task)) "&state=" (s) } { (state(s)) " " (k) } " "
                                }
                            }
                            td.num { (took(t.first_started_ms, t.last_ended_ms)) }
                        }
                    }
                }
            }
        }
        section #timeline data-part {
            h2 { "Timeline" }
            (gantt(r, &tasks))
        }
        section #list data-part {
            h2 { "Task runs" @if !f.task.is_empty() { " of " (f.task) } @if !f.state.is_empty() { ", " (f.state) } }
            (list_filter(&path, f, &tasks))
            p.muted { (rows.total) " task runs" @if rows.total as usize > PAGE { ": scroll the list for more, or page" } }
            @let rows_url = {
                let mut q = format!("{path}/rows?");
                for (k, v) in f.keep() { if !v.is_empty() { q.push_str(&format!("{k}={}&", encode(v))); } }
                q
            };
            div.scroll tabindex="0" aria-label="task runs" data-rows=(rows_url)
                data-next=((f.offset.saturating_add(rows.task_runs.len())).to_string()) data-total=(rows.total) {
                table {
                    thead { tr { th { "Task run" } th { "State" } th.num { "Attempt" } th { "Worker" } th { "Time" } th.num { "Took" } th { "Value / error" } } }
                    tbody { (rows_markup(r, &rows.task_runs)) }
                }
            }
            (pager(&path, &f.keep(), f.offset, rows.total as usize))
        }
        @if !tree.children.is_empty() {
            section #children data-part {
                h2 { "Child runs" }
                (child_list(tree, &r.id, 0))
                @if tree.cut { p.muted { "More child runs than shown." } }
            }
        }
    }
}

/// A state filter over the list, with the task.
fn list_filter(path: &str, f: &TaskFilter, tasks: &[TaskSummary]) -> Markup {
    html! {
        form.filters method="get" action=(path) {
            label { "Task "
                select name="task" {
                    option value="" selected[f.task.is_empty()] { "every task" }
                    @for t in tasks { option value=(t.task) selected[f.task == t.task] { (t.task) } }
                }
            }
            label { "State "
                select name="state" {
                    option value="" selected[f.state.is_empty()] { "any" }
                    @for s in ["PENDING", "READY", "ASSIGNED", "RUNNING", "RETRYING", "COMPLETED", "FAILED", "CANCELLED", "SKIPPED"] {
                        option value=(s) selected[f.state == s] { (s) }
                    }
                }
            }
            button type="submit" { "Show" }
        }
    }
}

/// A task's done share, coloured by its overall state.
fn done_bar(t: &TaskSummary) -> Markup {
    let share = if t.total == 0 {
        0.0
    } else {
        100.0 * t.done() as f64 / t.total as f64
    };
    let label = format!("{} of {} done", t.done(), t.total);
    html! {
        span.bar role="img" aria-label=(label) title=(label) {
            span class={ "fill s-" (t.overall()) } style={ "width:" (format!("{share:.1}")) "%" } {}
        }
    }
}

/// Table rows of task runs (the list's first page, or more of it).
pub fn rows(r: &pb::FlowRun, trs: &[pb::TaskRun]) -> Markup {
    rows_markup(r, trs)
}

/// The name of a task run: `task` or `task[index]`.
pub fn tr_name(t: &pb::TaskRun) -> String {
    if t.map_index >= 0 {
        format!("{}[{}]", t.task, t.map_index)
    } else {
        t.task.clone()
    }
}

fn rows_markup(r: &pb::FlowRun, trs: &[pb::TaskRun]) -> Markup {
    let origin = r.started_ms.max(r.created_ms);
    let end = until(r);
    html! {
        @for t in trs {
            tr {
                td { a href={ "/runs/" (encode(&r.id)) "/tasks/" (encode(&t.task)) "/" (t.map_index) } { (tr_name(t)) } }
                td { (state(task_state_name(t.state))) }
                td.num { (t.attempt) }
                td.mono { (t.worker) }
                td { (span_bar(origin, end, t.started_ms, t.ended_ms, task_state_name(t.state))) }
                td.num { (took(t.started_ms, t.ended_ms)) }
                td {
                    @if !t.error.is_empty() { span.error { (clip(&t.error, 160)) } }
                    @else if !t.value.is_empty() { code { (clip(&t.value, 120)) } }
                    @else if !t.child_run_id.is_empty() { "child " (run_link(&t.child_run_id)) }
                    @else if let Some(res) = &t.result { span.mono.muted { (clip(&res.uri, 80)) } }
                    @else { span.muted { (t.waiting_reason) } }
                }
            }
        }
    }
}

/// When the run ended, or now while it goes on.
fn until(r: &pb::FlowRun) -> i64 {
    if r.ended_ms > 0 {
        r.ended_ms
    } else {
        baton_common::time::now_ms()
    }
}

/// A small bar of `from..to` on the run's span `origin..end`.
fn span_bar(origin: i64, end: i64, from: i64, to: i64, state_name: &str) -> Markup {
    let span = (end - origin).max(1) as f64;
    if from <= 0 {
        return html! { span.track {} };
    }
    let left = (100.0 * (from - origin).max(0) as f64 / span).min(100.0);
    let to = if to >= from { to } else { end };
    let width = (100.0 * (to - from) as f64 / span)
        .max(0.5)
        .min((100.0 - left).max(0.0));
    html! {
        span.track title={ (took(from, to)) } {
            span class={ "fill s-" (state_name) } style={ "left:" (format!("{left:.2}")) "%;width:" (format!("{width:.2}")) "%" } {}
        }
    }
}

/// The run's timeline by task: each task's first start to last end, as an SVG Gantt chart.
fn gantt(r: &pb::FlowRun, tasks: &[TaskSummary]) -> Markup {
    let origin = r.started_ms.max(r.created_ms);
    let end = tasks
        .iter()
        .map(|t| t.last_ended_ms.max(t.first_started_ms))
        .max()
        .unwrap_or(0)
        .max(until(r))
        .max(origin + 1);
    let span = (end - origin) as f64;
    const LABEL: f64 = 160.0;
    const WIDTH: f64 = 1000.0;
    const ROW: f64 = 22.0;
    let height = ROW * tasks.len() as f64 + 24.0;
    let x = |ms: i64| LABEL + (WIDTH - LABEL - 10.0) * ((ms - origin).max(0) as f64 / span);
    html! {
        svg.gantt viewBox={ "0 0 " (WIDTH) " " (height) } role="img" aria-label="timeline of the run's tasks" {
            @for (i, t) in tasks.iter().enumerate() {
                @let y = ROW * i as f64;
                text x="4" y=(y + 15.0) { (clip(t.task, 22)) }
                @if t.first_started_ms > 0 {
                    @let x0 = x(t.first_started_ms);
                    @let open = t.overall() == "RUNNING" || t.overall() == "ASSIGNED" || t.last_ended_ms < t.first_started_ms;
                    @let x1 = x(if open { end } else { t.last_ended_ms });
                    rect class={ "g s-" (t.overall()) } x=(format!("{x0:.1}")) y=(y + 4.0) width=(format!("{:.1}", (x1 - x0).max(2.0))) height=(ROW - 8.0) rx="2" {
                        title { (t.task) ": " (took(t.first_started_ms, t.last_ended_ms)) }
                    }
                }
            }
            line x1=(LABEL) y1=(height - 20.0) x2=(WIDTH - 10.0) y2=(height - 20.0) class="axis" {}
            text x=(LABEL) y=(height - 5.0) { "0" }
            text x=(WIDTH - 10.0) y=(height - 5.0) text-anchor="end" { (took(origin, end)) }
        }
    }
}

/// The child runs of `parent`, each with its own children.
fn child_list(tree: &Tree, parent: &str, depth: usize) -> Markup {
    let Some(children) = tree.children.get(parent) else {
        return html! {};
    };
    html! {
        ul.tree {
            @for (by, child) in children {
                li {
                    (state(run_state_name(child.state))) " " (run_link(&child.id)) " "
                    span.muted { (child.project) "/" (child.flow) ", from " (tr_name(by)) ", " (child.tasks_done) "/" (child.tasks_total) " done" }
                    @if depth < 8 { (child_list(tree, &child.id, depth + 1)) }
                }
            }
        }
    }
}
