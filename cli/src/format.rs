//! Output formatting: tables of task runs, runs, workers and replicas, durations, JSON
//! views; schedules, limits and run trees in submodules.

mod limits;
mod schedule;
mod time;
mod tree;

pub use limits::{limit_json, limit_line, limits_table};
pub use schedule::{schedule_cell, schedule_json, schedule_line, schedules_json, schedules_table};
pub use time::timestamp;
pub use tree::{parent_line, tree_json, tree_text, ChildRun, RunTree};

use baton_common::state::{run_state_name, task_state_name};
use baton_proto as pb;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// A duration in milliseconds as `1.23s` / `2m03s`; `-` when unknown (negative).
pub fn duration(ms: i64) -> String {
    if ms < 0 {
        return "-".into();
    }
    if ms < 60_000 {
        format!("{:.2}s", ms as f64 / 1000.0)
    } else {
        format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

/// The task run's duration in ms, or -1 when it has not both started and ended.
fn task_duration(t: &pb::TaskRun) -> i64 {
    if t.started_ms > 0 && t.ended_ms >= t.started_ms {
        t.ended_ms - t.started_ms
    } else {
        -1
    }
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(n.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

/// Renders rows as a left-aligned text table.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            let pad = widths[i].saturating_sub(c.chars().count());
            s.push_str(c);
            if i + 1 < cells.len() {
                s.push_str(&" ".repeat(pad + 2));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    out.push('\n');
    for r in rows {
        out.push_str(&line(r.clone()));
        out.push('\n');
    }
    out
}

/// The WORKER cell: the worker, else `child:<run id>` for a sub-flow task, else `-`.
fn worker_cell(t: &pb::TaskRun) -> String {
    if !t.worker.is_empty() {
        t.worker.clone()
    } else if !t.child_run_id.is_empty() {
        format!("child:{}", t.child_run_id)
    } else {
        "-".into()
    }
}

/// The table of a run's task runs, every one on a row, at full width.
pub fn task_table(trs: &[pb::TaskRun]) -> String {
    run_table(
        trs,
        TableOpts {
            all: true,
            width: None,
        },
    )
}

/// The run's duration in ms, or -1 while it has not ended.
fn run_duration(r: &pb::FlowRun) -> i64 {
    if r.ended_ms > 0 && r.started_ms > 0 {
        r.ended_ms - r.started_ms
    } else {
        -1
    }
}

/// What the summary adds when not the default: the tick of a scheduled run, the priority.
fn run_extras(r: &pb::FlowRun) -> Vec<String> {
    let mut out = Vec::new();
    if r.trigger == "schedule" {
        out.push(if r.scheduled_start_ms > 0 {
            format!("schedule tick {}", timestamp(r.scheduled_start_ms))
        } else {
            "by schedule".to_string()
        });
    }
    if r.priority != 0 {
        out.push(format!("priority {}", r.priority));
    }
    out
}

/// A one-line summary of a run (then `error:` and `waiting:` lines when there are some);
/// a scheduled run's tick and a priority other than 0 in brackets at the end.
pub fn run_line(r: &pb::FlowRun) -> String {
    let mut s = format!(
        "run {} of {}/{} v{}: {} ({}/{} task runs done, {})",
        r.id,
        r.project,
        r.flow,
        r.version,
        run_state_name(r.state),
        r.tasks_done,
        r.tasks_total,
        duration(run_duration(r))
    );
    let extras = run_extras(r);
    if !extras.is_empty() {
        s.push_str(&format!(" [{}]", extras.join(", ")));
    }
    if !r.error.is_empty() {
        s.push_str(&format!("\n  error: {}", r.error));
    }
    if !r.waiting_reason.is_empty() {
        s.push_str(&format!("\n  waiting: {}", r.waiting_reason));
    }
    s
}

/// The table of `baton runs`.
pub fn runs_table(runs: &[pb::FlowRun]) -> String {
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            vec![
                r.id.clone(),
                format!("{}/{}", r.project, r.flow),
                r.version.to_string(),
                run_state_name(r.state).to_string(),
                format!("{}/{}", r.tasks_done, r.tasks_total),
                duration(run_duration(r)),
            ]
        })
        .collect();
    table(
        &["RUN", "FLOW", "VERSION", "STATE", "TASKS", "DURATION"],
        &rows,
    )
}

/// A run and its task runs as JSON (values parsed when present).
pub fn run_json(run: &pb::FlowRun, trs: &[pb::TaskRun]) -> Value {
    let params: serde_json::Map<String, Value> = run
        .parameters
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                serde_json::from_str(v).unwrap_or(Value::String(v.clone())),
            )
        })
        .collect();
    let mut v = json!({
        "id": run.id,
        "project": run.project,
        "flow": run.flow,
        "version": run.version,
        "state": run_state_name(run.state),
        "parameters": params,
        "created_ms": run.created_ms,
        "started_ms": run.started_ms,
        "ended_ms": run.ended_ms,
        "created_us": run.created_us,
        "ended_us": run.ended_us,
        "error": run.error,
        "priority": run.priority,
        "trigger": run.trigger,
        "scheduled_start_ms": run.scheduled_start_ms,
        "task_runs": trs.iter().map(task_json).collect::<Vec<_>>(),
    });
    if !run.parent_run_id.is_empty() {
        v["parent"] = json!({
            "run_id": run.parent_run_id,
            "task": run.parent_task,
            "map_index": run.parent_map_index,
        });
    }
    v
}

fn task_json(t: &pb::TaskRun) -> Value {
    let mut v = json!({
        "task": t.task,
        "map_index": t.map_index,
        "state": task_state_name(t.state),
        "attempt": t.attempt,
        "worker": t.worker,
        "started_ms": t.started_ms,
        "ended_ms": t.ended_ms,
        "duration_ms": task_duration(t).max(0),
        "ready_us": t.ready_us,
        "assigned_us": t.assigned_us,
        "started_us": t.started_us,
        "ended_us": t.ended_us,
        "result": t.result.as_ref().map(|r| json!({
            "uri": r.uri, "size": r.size, "checksum": r.checksum, "content_type": r.content_type,
        })),
        "value": if t.value.is_empty() { Value::Null } else {
            serde_json::from_str(&t.value).unwrap_or(Value::Null)
        },
        "error": t.error,
        "attempts": t.attempts.iter().map(|a| json!({
            "number": a.number, "worker": a.worker, "started_ms": a.started_ms,
            "ended_ms": a.ended_ms, "error": a.error,
        })).collect::<Vec<_>>(),
    });
    if !t.child_run_id.is_empty() {
        v["child_run_id"] = json!(t.child_run_id);
    }
    v
}

/// The table of `baton workers`, then one line per GPU: its device, and the attempt holding
/// it or `free`.
pub fn workers_table(ws: &[pb::WorkerInfo]) -> String {
    let rows: Vec<Vec<String>> = ws
        .iter()
        .map(|w| {
            let r = w.resources.clone().unwrap_or_default();
            let f = w.free.clone().unwrap_or_default();
            vec![
                w.id.clone(),
                w.labels.join(","),
                format!("{}/{}", f.slots, r.slots),
                format!("{}/{}", f.gpus, r.gpus),
                w.running.to_string(),
                w.address.clone(),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "WORKER",
            "LABELS",
            "FREE SLOTS",
            "FREE GPUS",
            "RUNNING",
            "ADDRESS",
        ],
        &rows,
    );
    let gpus: Vec<Vec<String>> = ws
        .iter()
        .flat_map(|w| {
            let devices = w.resources.clone().unwrap_or_default().devices;
            devices.into_iter().map(move |d| {
                let holder = w
                    .gpus_held
                    .iter()
                    .find(|h| h.gpus.contains(&d.index))
                    .and_then(|h| h.key.as_ref())
                    .map_or_else(|| "free".to_string(), attempt_name);
                vec![
                    w.id.clone(),
                    d.index.to_string(),
                    if d.name.is_empty() {
                        "-".into()
                    } else {
                        d.name.clone()
                    },
                    if d.memory_mb == 0 {
                        "-".into()
                    } else {
                        format!("{} MB", d.memory_mb)
                    },
                    if d.uuid.is_empty() {
                        "-".into()
                    } else {
                        d.uuid.clone()
                    },
                    holder,
                ]
            })
        })
        .collect();
    if !gpus.is_empty() {
        out.push('\n');
        out.push_str(&table(
            &["WORKER", "GPU", "NAME", "MEMORY", "UUID", "HELD BY"],
            &gpus,
        ));
    }
    out
}

/// `run/task[index]#attempt`.
fn attempt_name(k: &pb::AttemptKey) -> String {
    let index = if k.map_index >= 0 {
        format!("[{}]", k.map_index)
    } else {
        String::new()
    };
    format!("{}/{}{index}#{}", k.run_id, k.task, k.attempt)
}

/// What `baton leader` prints: the leader, its epoch, who answered, then the replicas.
pub fn leader_report(r: &pb::GetLeaderResponse) -> String {
    let leader = if r.leader_address.is_empty() {
        "none known (an election may be under way)".to_string()
    } else {
        r.leader_address.clone()
    };
    let mut out = format!("leader: {leader}\nepoch: {}\n", r.epoch);
    if !r.answered_by.is_empty() {
        out.push_str(&format!("answered by: {}\n", r.answered_by));
    }
    if !r.replicas.is_empty() {
        let rows: Vec<Vec<String>> = r
            .replicas
            .iter()
            .map(|x| {
                vec![
                    x.id.clone(),
                    x.address.clone(),
                    if x.leader { "leader" } else { "follower" }.to_string(),
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&table(&["REPLICA", "ADDRESS", "ROLE"], &rows));
    }
    out
}

/// `baton leader --json`.
pub fn leader_json(r: &pb::GetLeaderResponse) -> Value {
    json!({
        "leader": if r.leader_address.is_empty() { Value::Null } else { json!(r.leader_address) },
        "epoch": r.epoch,
        "answered_by": r.answered_by,
        "replicas": r.replicas.iter().map(|x| json!({
            "id": x.id, "address": x.address, "leader": x.leader,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_line_ends_with_its_tick_and_priority_when_not_the_default() {
        let r = pb::FlowRun {
            id: "r1".into(),
            project: "demo".into(),
            flow: "tick".into(),
            version: 2,
            state: pb::RunState::Running as i32,
            tasks_total: 3,
            trigger: "api".into(),
            scheduled_start_ms: 1_795_930_200_000,
            ..Default::default()
        };
        let plain = "run r1 of demo/tick v2: RUNNING (0/3 task runs done, -)";
        assert_eq!(run_line(&r), plain);
        let scheduled = pb::FlowRun {
            trigger: "schedule".into(),
            priority: -2,
            error: "late".into(),
            ..r.clone()
        };
        assert_eq!(
            run_line(&scheduled),
            format!("{plain} [schedule tick 2026-11-29T05:30:00Z, priority -2]\n  error: late")
        );
        let j = run_json(&scheduled, &[]);
        assert_eq!(j["priority"], -2);
        assert_eq!(j["trigger"], "schedule");
        assert!(j.get("parent").is_none());
    }

    #[test]
    fn a_sub_flow_task_names_its_child_run_in_the_worker_column() {
        let trs = vec![
            pb::TaskRun {
                task: "sub".into(),
                map_index: -1,
                child_run_id: "c1".into(),
                ..Default::default()
            },
            pb::TaskRun {
                task: "plain".into(),
                map_index: -1,
                worker: "w1".into(),
                child_run_id: "ignored".into(),
                ..Default::default()
            },
        ];
        let text = task_table(&trs);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[1].contains(" child:c1 "), "{text}");
        assert!(
            lines[2].contains(" w1 ") && !lines[2].contains("child:"),
            "{text}"
        );
    }

    #[test]
    fn the_leader_report_lists_the_replicas() {
        let r = pb::GetLeaderResponse {
            leader_address: "http://10.0.0.2:7070".into(),
            epoch: 42,
            answered_by: "s1".into(),
            replicas: vec![
                pb::Replica {
                    id: "s1".into(),
                    address: "http://10.0.0.1:7070".into(),
                    leader: false,
                },
                pb::Replica {
                    id: "s2".into(),
                    address: "http://10.0.0.2:7070".into(),
                    leader: true,
                },
            ],
        };
        let text = leader_report(&r);
        assert!(
            text.starts_with("leader: http://10.0.0.2:7070\nepoch: 42\n"),
            "{text}"
        );
        assert!(
            text.contains("s2       http://10.0.0.2:7070  leader"),
            "{text}"
        );
        let j = leader_json(&r);
        assert_eq!(j["epoch"], 42);
        assert_eq!(j["replicas"][1]["leader"], true);
        let none = leader_json(&pb::GetLeaderResponse::default());
        assert!(none["leader"].is_null());
        assert!(leader_report(&pb::GetLeaderResponse::default()).contains("none known"));
    }
}

/// How [`run_table`] lays out a run's task runs.
#[derive(Clone, Copy, Debug, Default)]
pub struct TableOpts {
    /// Every task run of a mapped task on a row of its own (else one row per mapped task,
    /// with the failed ones listed under it).
    pub all: bool,
    /// Fit in this many columns (shortened locations, clipped values); `None`: full width.
    pub width: Option<usize>,
}

/// Failed task runs of a mapped task listed under its row when it is grouped.
const FAILED_LISTED: usize = 10;

/// The final table of a run: an unmapped task's run on a row; a mapped task's runs on one
/// row with counts by state (and its failed runs, a few, on rows of their own) unless
/// `all`; fitted to a width when given.
pub fn run_table(trs: &[pb::TaskRun], opts: TableOpts) -> String {
    let mut rows: Vec<Vec<String>> = Vec::new();
    if opts.all {
        rows.extend(trs.iter().map(|t| task_row(t, opts)));
    } else {
        // Tasks in the order their first task run comes; each with its unmapped run and
        // its mapped runs.
        type Runs<'a> = (Vec<&'a pb::TaskRun>, Vec<&'a pb::TaskRun>);
        let mut order: Vec<&str> = Vec::new();
        let mut by_task: std::collections::HashMap<&str, Runs> = Default::default();
        for t in trs {
            let entry = by_task.entry(&t.task).or_insert_with(|| {
                order.push(&t.task);
                (Vec::new(), Vec::new())
            });
            if t.map_index < 0 {
                entry.0.push(t);
            } else {
                entry.1.push(t);
            }
        }
        for task in order {
            let (single, mapped) = &by_task[task];
            rows.extend(single.iter().map(|t| task_row(t, opts)));
            if mapped.is_empty() {
                continue;
            }
            rows.push(group_row(task, mapped));
            let failed: Vec<&&pb::TaskRun> = mapped
                .iter()
                .filter(|t| t.state == pb::TaskState::Failed as i32)
                .collect();
            rows.extend(failed.iter().take(FAILED_LISTED).map(|t| task_row(t, opts)));
            if failed.len() > FAILED_LISTED {
                let mut more = vec![String::new(); 8];
                more[2] = format!("{} more failed", failed.len() - FAILED_LISTED);
                more[7] = "(--all lists every task run)".into();
                rows.push(more);
            }
        }
    }
    const HEADER: [&str; 8] = [
        "TASK",
        "INDEX",
        "STATE",
        "ATTEMPT",
        "WORKER",
        "DURATION",
        "RESULT",
        "VALUE / ERROR",
    ];
    if let Some(width) = opts.width {
        fit_last_column(&HEADER, &mut rows, width);
    }
    table(&HEADER, &rows)
}

/// A task run's row.
fn task_row(t: &pb::TaskRun, opts: TableOpts) -> Vec<String> {
    let detail = if !t.error.is_empty() {
        clip(&t.error, 80)
    } else if !t.value.is_empty() {
        clip(&t.value, 60)
    } else {
        t.waiting_reason.clone()
    };
    let result = t.result.as_ref().map_or_else(
        || "-".to_string(),
        |r| {
            if opts.width.is_some() {
                short_location(&r.uri)
            } else {
                r.uri.clone()
            }
        },
    );
    vec![
        t.task.clone(),
        if t.map_index < 0 {
            "-".into()
        } else {
            t.map_index.to_string()
        },
        task_state_name(t.state).to_string(),
        t.attempt.to_string(),
        worker_cell(t),
        duration(task_duration(t)),
        result,
        detail,
    ]
}

/// The row of a mapped task's runs: how many, counts by state, workers, the longest.
fn group_row(task: &str, runs: &[&pb::TaskRun]) -> Vec<String> {
    let mut states: BTreeMap<&str, usize> = BTreeMap::new();
    let mut workers = std::collections::BTreeSet::new();
    for t in runs {
        *states.entry(task_state_name(t.state)).or_default() += 1;
        if !t.worker.is_empty() {
            workers.insert(t.worker.as_str());
        }
    }
    let counts: Vec<String> = states.iter().map(|(s, n)| format!("{s} {n}")).collect();
    let longest = runs.iter().map(|t| task_duration(t)).max().unwrap_or(-1);
    let attempts = runs.iter().map(|t| t.attempt).max().unwrap_or(0);
    vec![
        task.to_string(),
        format!("0..{}", runs.len().saturating_sub(1)),
        counts.join(", "),
        format!("≤{attempts}"),
        match workers.len() {
            0 => "-".into(),
            1 => workers
                .iter()
                .next()
                .map_or_else(String::new, |w| w.to_string()),
            n => format!("{n} workers"),
        },
        format!("≤{}", duration(longest)),
        "-".into(),
        format!("{} task runs (--all lists each)", runs.len()),
    ]
}

/// A location shortened for a narrow table: its last part.
fn short_location(uri: &str) -> String {
    tail(uri, 32)
}

/// The last `keep` characters of `s`, with `…` in front when it was longer.
fn tail(s: &str, keep: usize) -> String {
    let n = s.chars().count();
    if n <= keep {
        return s.to_string();
    }
    let tail: String = s.chars().skip(n - keep.saturating_sub(1)).collect();
    format!("…{tail}")
}

/// The RESULT column, shortened first when a row does not fit.
const RESULT_COLUMN: usize = 6;
/// What the last column keeps at least, and the RESULT column.
const MIN_LAST: usize = 16;
const MIN_RESULT: usize = 12;

/// Fits every row in `width` columns: the last column (values, errors) is clipped, and the
/// RESULT column cut to its end when that is not enough.
fn fit_last_column(header: &[&str], rows: &mut [Vec<String>], width: usize) {
    let cols = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows.iter() {
        for (i, c) in r.iter().enumerate().take(cols - 1) {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let used: usize = widths[..cols - 1].iter().map(|w| w + 2).sum();
    if used + MIN_LAST > width && widths[RESULT_COLUMN] > MIN_RESULT {
        let over = used + MIN_LAST - width;
        let keep = widths[RESULT_COLUMN].saturating_sub(over).max(MIN_RESULT);
        for r in rows.iter_mut() {
            if let Some(c) = r.get_mut(RESULT_COLUMN) {
                *c = tail(c, keep);
            }
        }
        widths[RESULT_COLUMN] = keep;
    }
    let used: usize = widths[..cols - 1].iter().map(|w| w + 2).sum();
    let room = width.saturating_sub(used).max(MIN_LAST);
    for r in rows.iter_mut() {
        if let Some(last) = r.get_mut(cols - 1) {
            *last = clip(last, room);
        }
    }
}
