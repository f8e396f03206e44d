//! A task run's page: its state, attempts (worker, times, error), result location with a
//! preview of a small value and a download link, its child run, and its log lines (the last
//! ones, live while it runs).

use super::pages::{clip, encode, run_link, state, took, when};
use super::run_page::tr_name;
use baton_common::state::task_state_name;
use baton_proto as pb;
use maud::{html, Markup};
use std::collections::VecDeque;

/// Characters of a value the page shows.
const PREVIEW: usize = 4000;

/// A task run's log lines as read for its page.
#[derive(Default)]
pub struct Logs {
    pub lines: VecDeque<pb::LogEntry>,
    /// Earlier lines not shown.
    pub dropped: usize,
    /// The reading stopped before the end.
    pub cut: bool,
    pub error: Option<String>,
}

pub fn name(t: &pb::TaskRun) -> String {
    tr_name(t)
}

/// Whether the task run may still change.
fn open(t: &pb::TaskRun) -> bool {
    !matches!(
        task_state_name(t.state),
        "COMPLETED" | "FAILED" | "CANCELLED" | "SKIPPED"
    )
}

pub fn live(t: &pb::TaskRun) -> bool {
    open(t)
}

pub fn task_run(r: &pb::FlowRun, t: &pb::TaskRun, logs: &Logs) -> Markup {
    let run_path = format!("/runs/{}", encode(&r.id));
    html! {
        p { "Run " (run_link(&r.id)) " of " (r.project) "/" (r.flow) " · "
            a href={ (run_path) "?task=" (encode(&t.task)) } { "every task run of " (t.task) } }
        section #facts data-part {
            table.kv {
                tr { th { "State" } td { (state(task_state_name(t.state))) } }
                tr { th { "Attempt" } td { (t.attempt) } }
                tr { th { "Worker" } td.mono { (t.worker) } }
                tr { th { "Started" } td { (when(t.started_ms)) } }
                tr { th { "Ended" } td { (when(t.ended_ms)) } }
                tr { th { "Took" } td { (took(t.started_ms, t.ended_ms)) } }
                @if !t.waiting_reason.is_empty() { tr { th { "Waiting" } td.wait { (t.waiting_reason) } } }
                @if !t.error.is_empty() { tr { th { "Error" } td.error { (t.error) } } }
                @if !t.child_run_id.is_empty() { tr { th { "Child run" } td { (run_link(&t.child_run_id)) } } }
                @if let Some(res) = &t.result {
                    tr { th { "Result location" } td.mono #result-location { (res.uri) } }
                    tr { th { "Size" } td { (res.size) " bytes" @if !res.content_type.is_empty() { ", " (res.content_type) } } }
                    tr { th { "" } td { a href={ "/result?uri=" (encode(&res.uri)) } download { "Download the result" } } }
                }
            }
            @if !t.value.is_empty() {
                h2 { "Value" }
                pre.value #value { (pretty(&t.value)) }
            }
            @if t.attempts.len() > 1 || t.attempts.iter().any(|a| !a.error.is_empty()) {
                h2 { "Attempts" }
                table {
                    thead { tr { th.num { "Attempt" } th { "Worker" } th { "Started" } th.num { "Took" } th { "Error" } } }
                    tbody {
                        @for a in &t.attempts {
                            tr {
                                td.num { (a.number) }
                                td.mono { (a.worker) }
                                td { (when(a.started_ms)) }
                                td.num { (took(a.started_ms, a.ended_ms)) }
                                td.error { (clip(&a.error, 400)) }
                            }
                        }
                    }
                }
            }
        }
        section #logs data-part {
            h2 { "Logs" }
            @if let Some(e) = &logs.error { p.error { "The logs cannot be read: " (e) } }
            @if logs.dropped > 0 { p.muted { (logs.dropped) " earlier lines not shown; " code { "baton logs " (r.id) " --task " (t.task) } " prints them all." } }
            @if logs.lines.is_empty() && logs.error.is_none() { p.muted { "No log lines" @if open(t) { " yet" } "." } }
            @else {
                pre.logs {
                    @for l in &logs.lines {
                        span class={ "line " (l.stream) } { span.muted { "#" (l.attempt) " " (l.stream) " " } (l.line) } "\n"
                    }
                }
            }
            @if logs.cut { p.muted { "More lines follow: the page reads at most 50,000." } }
        }
    }
}

/// A JSON value indented (as it came when it is not JSON), cut to [`PREVIEW`] characters.
fn pretty(value: &str) -> String {
    let shown = serde_json::from_str::<serde_json::Value>(value)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| value.to_string());
    clip(&shown, PREVIEW)
}
