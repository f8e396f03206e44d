//! The UI's layout and its list pages, rendered as HTML (maud): the dashboard, runs
//! (filtered, paged), flows, workers, the sign-in form and Quick Run; and the small pieces
//! the other pages share (states, times, bars, pagers).

use baton_common::state::run_state_name;
use baton_proto as pb;
use maud::{html, Markup, DOCTYPE};
use std::collections::{BTreeMap, HashMap};

pub use baton_common::text::percent_encode as encode;

/// Rows per page of a list.
pub const PAGE: usize = 50;

/// The page around `body`; with `live`, the page listens to that event source and
/// refreshes its parts (and also every `poll` ms when given).
pub fn layout_live(title: &str, live: Option<&str>, poll: Option<u32>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light dark";
                title { (title) " · baton" }
                link rel="stylesheet" href="/style.css";
                script src="/live.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header {
                    a.brand href="/" { "baton" }
                    nav aria-label="main" {
                        a href="/" { "Dashboard" }
                        a href="/flows" { "Flows" }
                        a href="/runs" { "Runs" }
                        a href="/schedules" { "Schedules" }
                        a href="/limits" { "Limits" }
                        a href="/workers" { "Workers" }
                    }
                    form.inline.signout method="post" action="/logout" {
                        button.link type="submit" { "Sign out" }
                    }
                }
                main id="main" data-live=[live] data-poll=[poll] { h1 { (title) } (body) }
            }
        }
    }
}

/// The page around `body`.
pub fn layout(title: &str, body: Markup) -> Markup {
    layout_live(title, None, None, body)
}

/// An error from the API (or the request).
pub fn error(status: axum::http::StatusCode, message: &str) -> Markup {
    html! {
        p.error role="alert" { (status.as_u16()) " · " (message) }
        @if status == axum::http::StatusCode::UNAUTHORIZED {
            p { a href="/login" { "Sign in with another token" } }
        }
        p { a href="/" { "Back to the dashboard" } }
    }
}

/// A state as a coloured label.
pub fn state(name: &str) -> Markup {
    html! { span class={ "state s-" (name) } { (name) } }
}

/// A Unix-ms time, in UTC ("-" for none).
pub fn when(ms: i64) -> String {
    if ms <= 0 {
        return "-".into();
    }
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|_| "-".into())
}

/// How long from `from` to `to` (Unix ms; "-" when not both).
pub fn took(from: i64, to: i64) -> String {
    if from <= 0 || to < from {
        return "-".into();
    }
    let ms = to - from;
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 120_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        format!("{:.1} min", ms as f64 / 60_000.0)
    }
}

/// How long ago `ms` was.
pub fn ago(ms: i64, now: i64) -> String {
    if ms <= 0 {
        return "-".into();
    }
    let s = (now - ms).max(0) / 1000;
    match s {
        0..=119 => format!("{s} s ago"),
        120..=7199 => format!("{} min ago", s / 60),
        _ => format!("{} h ago", s / 3600),
    }
}

pub fn run_link(id: &str) -> Markup {
    html! { a.mono href={ "/runs/" (encode(id)) } { (id) } }
}

/// A run's progress: its done share of task runs, coloured by the run's state.
pub fn run_bar(r: &pb::FlowRun) -> Markup {
    let name = run_state_name(r.state);
    let share = if r.tasks_total == 0 {
        0.0
    } else {
        100.0 * r.tasks_done as f64 / r.tasks_total as f64
    };
    let label = format!("{} of {} task runs done", r.tasks_done, r.tasks_total);
    html! {
        span.bar role="img" aria-label=(label) title=(label) {
            span class={ "fill s-" (name) } style={ "width:" (format!("{share:.1}")) "%" } {}
        }
    }
}

/// Home: runs of the last hour and day by state, failing flows, workers, the leader and
/// replicas, the latest runs.
pub fn dashboard(
    leader: &pb::GetLeaderResponse,
    runs: &[pb::FlowRun],
    workers: &[pb::WorkerInfo],
    now: i64,
) -> Markup {
    let count = |since: i64| {
        let mut by: BTreeMap<&str, usize> = BTreeMap::new();
        for r in runs.iter().filter(|r| r.created_ms >= now - since) {
            *by.entry(run_state_name(r.state)).or_default() += 1;
        }
        by
    };
    let hour = count(3_600_000);
    let day = count(86_400_000);
    let mut failing: BTreeMap<(&str, &str), (usize, &pb::FlowRun)> = BTreeMap::new();
    for r in runs
        .iter()
        .filter(|r| r.created_ms >= now - 86_400_000 && run_state_name(r.state) == "FAILED")
    {
        let e = failing.entry((&r.project, &r.flow)).or_insert((0, r));
        e.0 += 1;
    }
    let slots: u32 = workers
        .iter()
        .filter_map(|w| w.resources.as_ref())
        .map(|r| r.slots)
        .sum();
    let free: u32 = workers
        .iter()
        .filter_map(|w| w.free.as_ref())
        .map(|r| r.slots)
        .sum();
    html! {
        div.cards {
            div.card { div.muted { "Leader" } div.mono { (leader.leader_address) } div.muted { "epoch " (leader.epoch) ", " (leader.replicas.len().max(1)) " replica(s)" } }
            div.card { div.muted { "Workers" } div.big { (workers.len()) } div.muted { (slots - free.min(slots)) " of " (slots) " slots busy" } }
            div.card {
                div.muted { "Runs, last hour" }
                div.big { (hour.values().sum::<usize>()) }
                div { @for (s, n) in &hour { (state(s)) " " (n) " " } }
            }
            div.card {
                div.muted { "Runs, last day" }
                div.big { (day.values().sum::<usize>()) }
                div { @for (s, n) in &day { (state(s)) " " (n) " " } }
            }
        }
        h2 { "Failing flows (last day)" }
        @if failing.is_empty() { p.muted { "None." } } @else {
            table {
                thead { tr { th { "Flow" } th.num { "Failed runs" } th { "Latest failure" } th { "Error" } } }
                tbody {
                    @for ((project, flow), (n, r)) in &failing {
                        tr {
                            td { a href={ "/runs?project=" (encode(project)) "&flow=" (encode(flow)) "&state=FAILED" } { (project) "/" (flow) } }
                            td.num { (n) }
                            td { (run_link(&r.id)) }
                            td.error { (clip(&r.error, 160)) }
                        }
                    }
                }
            }
        }
        h2 { "Replicas" }
        table {
            thead { tr { th { "Replica" } th { "Address" } th { "Role" } } }
            tbody {
                @for r in &leader.replicas {
                    tr { td.mono { (r.id) } td.mono { (r.address) } td { @if r.leader { "leader" } @else { "follower" } } }
                }
            }
        }
        h2 { "Latest runs" }
        (run_table(runs.iter().take(10), now))
    }
}

pub fn run_table<'a>(runs: impl Iterator<Item = &'a pb::FlowRun>, now: i64) -> Markup {
    html! {
        table {
            thead { tr { th { "Run" } th { "Flow" } th { "State" } th { "Progress" } th { "Trigger" } th { "Created" } th.num { "Duration" } } }
            tbody {
                @for r in runs {
                    tr {
                        td { (run_link(&r.id)) }
                        td { (r.project) "/" (r.flow) " v" (r.version) }
                        td { (state(run_state_name(r.state))) }
                        td { (run_bar(r)) " " span.muted { (r.tasks_done) "/" (r.tasks_total) } }
                        td {
                            @if r.parent_run_id.is_empty() { (r.trigger) }
                            @else { "parent " (run_link(&r.parent_run_id)) }
                        }
                        td title=(when(r.created_ms)) { (ago(r.created_ms, now)) }
                        td.num { (took(r.started_ms.max(r.created_ms), if r.ended_ms > 0 { r.ended_ms } else { now })) }
                    }
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
    /// "1h", "24h", "7d" or "" (any time).
    pub since: String,
    pub offset: usize,
}

impl RunFilter {
    pub fn from_query(q: &HashMap<String, String>) -> Self {
        let get = |k: &str| q.get(k).cloned().unwrap_or_default();
        RunFilter {
            project: get("project"),
            flow: get("flow"),
            state: get("state").to_ascii_uppercase(),
            since: get("since"),
            offset: offset(q),
        }
    }

    fn since_ms(&self) -> Option<i64> {
        match self.since.as_str() {
            "1h" => Some(3_600_000),
            "24h" => Some(86_400_000),
            "7d" => Some(7 * 86_400_000),
            _ => None,
        }
    }
}

const RUN_STATES: &[&str] = &[
    "SCHEDULED",
    "PENDING",
    "RUNNING",
    "COMPLETED",
    "FAILED",
    "CANCELLED",
];

/// Runs, newest first, filtered and paged.
pub fn runs(all: &[pb::FlowRun], f: &RunFilter, now: i64) -> Markup {
    let since = f.since_ms();
    let shown: Vec<&pb::FlowRun> = all
        .iter()
        .filter(|r| f.project.is_empty() || r.project == f.project)
        .filter(|r| f.flow.is_empty() || r.flow == f.flow)
        .filter(|r| f.state.is_empty() || run_state_name(r.state) == f.state)
        .filter(|r| since.is_none_or(|s| r.created_ms >= now - s))
        .collect();
    let page = shown.iter().skip(f.offset).take(PAGE).copied();
    html! {
        form.filters method="get" action="/runs" {
            label { "Project " input name="project" value=(f.project); }
            label { "Flow " input name="flow" value=(f.flow); }
            label { "State "
                select name="state" {
                    option value="" selected[f.state.is_empty()] { "any" }
                    @for s in RUN_STATES { option value=(s) selected[f.state == *s] { (s) } }
                }
            }
            label { "Created "
                select name="since" {
                    @for (v, label) in [("", "any time"), ("1h", "last hour"), ("24h", "last day"), ("7d", "last week")] {
                        option value=(v) selected[f.since == v] { (label) }
                    }
                }
            }
            button type="submit" { "Filter" }
        }
        p.muted { (shown.len()) " runs" }
        (run_table(page, now))
        (pager("/runs", &[("project", &f.project), ("flow", &f.flow), ("state", &f.state), ("since", &f.since)], f.offset, shown.len()))
    }
}

/// The `offset` a list is asked from (0 when absent or not a number; at most `u32::MAX`,
/// the API's own bound).
pub fn offset(q: &HashMap<String, String>) -> usize {
    q.get("offset")
        .and_then(|o| o.parse::<u32>().ok())
        .unwrap_or(0) as usize
}

pub fn pager(path: &str, keep: &[(&str, &str)], offset: usize, total: usize) -> Markup {
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
        nav.pager aria-label="pages" {
            @if offset > 0 { a href=(query(offset.saturating_sub(PAGE))) { "← previous" } }
            @if total > offset { span.muted { (offset.saturating_add(1)) "–" (offset.saturating_add(PAGE).min(total)) " of " (total) } }
            @if offset.saturating_add(PAGE) < total { a href=(query(offset + PAGE)) { "next →" } }
        }
    }
}

pub fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(n).collect();
        out.push('…');
        out
    }
}

/// Registered flows by project, with their schedules and last runs.
pub fn flows(flows: &[pb::FlowSummary], runs: &[pb::FlowRun]) -> Markup {
    let mut by_project: BTreeMap<&str, Vec<&pb::FlowSummary>> = BTreeMap::new();
    for f in flows {
        by_project.entry(&f.project).or_default().push(f);
    }
    html! {
        @if flows.is_empty() { p.muted { "No flow is registered yet: " code { "baton flow register FILE" } "." } }
        @for (project, flows) in &by_project {
            h2 { "Project " (project) }
            table {
                thead { tr { th { "Flow" } th.num { "Version" } th { "Schedule" } th { "Last runs" } th { "" } } }
                tbody {
                    @for f in flows {
                        @let last: Vec<&pb::FlowRun> = runs.iter().filter(|r| r.project == f.project && r.flow == f.flow).take(5).collect();
                        tr {
                            td { strong { (f.flow) } @if !f.description.is_empty() { div.muted { (f.description) } } }
                            td.num { (f.latest_version) }
                            td { (schedule_switch(f, "flows")) }
                            td {
                                @for r in &last {
                                    a href={ "/runs/" (encode(&r.id)) } title=(r.id) { (state(run_state_name(r.state))) } " "
                                }
                                a href={ "/runs?project=" (encode(&f.project)) "&flow=" (encode(&f.flow)) } { "all runs" }
                            }
                            td { a.button href={ "/flows/" (encode(&f.project)) "/" (encode(&f.flow)) "/run" } { "Quick run" } }
                        }
                    }
                }
            }
        }
    }
}

/// A flow's schedule with its on/off switch (a form that posts the other state); `back`
/// is the page to return to.
pub fn schedule_switch(f: &pb::FlowSummary, back: &str) -> Markup {
    html! {
        @if let Some(s) = &f.schedule {
            form.inline method="post" action={ "/flows/" (encode(&f.project)) "/" (encode(&f.flow)) "/schedule" } {
                input type="hidden" name="back" value=(back);
                code { (s.cron) } @if !s.timezone.is_empty() { " " span.muted { (s.timezone) } } " "
                @if s.active {
                    input type="hidden" name="active" value="off";
                    button.switch.on type="submit" role="switch" aria-checked="true"
                        aria-label={ "schedule of " (f.flow) } { "on" }
                } @else {
                    input type="hidden" name="active" value="on";
                    button.switch type="submit" role="switch" aria-checked="false"
                        aria-label={ "schedule of " (f.flow) } { "off" }
                }
            }
        } @else { span.muted { "-" } }
    }
}

/// Connected workers: labels, slots, resources, running attempts, last heard from; and
/// the runs whose ready task runs wait, with why.
pub fn workers(ws: &[pb::WorkerInfo], runs: &[pb::FlowRun], now: i64) -> Markup {
    let waiting: Vec<&pb::FlowRun> = runs
        .iter()
        .filter(|r| !r.waiting_reason.is_empty() && !baton_client::is_finished(r))
        .collect();
    html! {
        @if ws.is_empty() { p.muted { "No worker is connected: " code { "baton-worker --scheduler URL --labels …" } "." } }
        table {
            thead { tr { th { "Worker" } th { "Labels" } th.num { "Slots free / all" } th.num { "GPUs free / all" } th.num { "Memory (MB)" } th.num { "Running" } th { "Connected" } th { "Last heard" } } }
            tbody {
                @for w in ws {
                    @let all = w.resources.clone().unwrap_or_default();
                    @let free = w.free.clone().unwrap_or_default();
                    tr {
                        td.mono { (w.id) @if !w.address.is_empty() { div.muted { (w.address) } } }
                        td { @for l in &w.labels { span.label { (l) } " " } }
                        td.num { (free.slots) " / " (all.slots) }
                        td.num { (free.gpus) " / " (all.gpus) @for d in &all.devices { div.muted { (d.index) ": " (d.name) } } }
                        td.num { @if all.memory_mb > 0 { (all.memory_mb) } @else { "-" } }
                        td.num { (w.running) }
                        td title=(when(w.connected_ms)) { (ago(w.connected_ms, now)) }
                        td title=(when(w.last_seen_ms)) { (ago(w.last_seen_ms, now)) }
                    }
                }
            }
        }
        h2 { "Waiting to be placed" }
        @if waiting.is_empty() { p.muted { "No run has task runs waiting for a worker." } } @else {
            table {
                thead { tr { th { "Run" } th { "Flow" } th { "Why it waits" } } }
                tbody {
                    @for r in &waiting {
                        tr { td { (run_link(&r.id)) } td { (r.project) "/" (r.flow) } td { (r.waiting_reason) } }
                    }
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
            input id="token" name="token" type="password" autocomplete="off" required autofocus;
            " " button type="submit" { "Sign in" }
        }
    }
}

/// The Quick Run form: a field per parameter, its default (or what was entered) filled in
/// (JSON), checked as JSON before it is sent.
pub fn quick_run(
    def: &pb::GetFlowResponse,
    error: Option<&str>,
    entered: &HashMap<String, String>,
) -> Markup {
    let spec: serde_json::Value = serde_json::from_str(&def.definition_json).unwrap_or_default();
    let params: Vec<(String, String, String)> = spec["parameters"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let value = entered
                        .get(k)
                        .cloned()
                        .unwrap_or_else(|| match &v["default"] {
                            serde_json::Value::Null => String::new(),
                            d => d.to_string(),
                        });
                    let about = v["description"].as_str().unwrap_or_default().to_string();
                    (k.clone(), value, about)
                })
                .collect()
        })
        .unwrap_or_default();
    let action = format!("/flows/{}/{}/run", encode(&def.project), encode(&def.flow));
    html! {
        @if let Some(e) = error { p.error role="alert" { (e) } }
        p.muted { "Version " (def.latest_version) ". Values are JSON: a string is written in quotes." }
        form #quick-run method="post" action=(action) data-json-check {
            table {
                @for (name, value, about) in &params {
                    tr {
                        th { label for={ "p-" (name) } { (name) } }
                        td {
                            input.json id={ "p-" (name) } name={ "p." (name) } value=(value) size="60";
                            @if !about.is_empty() { div.muted { (about) } }
                        }
                    }
                }
            }
            p { button type="submit" { "Run" } }
        }
    }
}
