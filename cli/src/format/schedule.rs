//! Cron schedules of registered flows as text and JSON: the schedule line, the SCHEDULE
//! column of `baton flow ls` and the table of `baton schedule ls`.

use super::table;
use super::time::timestamp;
use baton_proto as pb;
use serde_json::{json, Value};

fn on_off(active: bool) -> &'static str {
    if active {
        "on"
    } else {
        "off"
    }
}

fn zone(s: &pb::Schedule) -> &str {
    if s.timezone.is_empty() {
        "UTC"
    } else {
        &s.timezone
    }
}

fn catch_up(s: &pb::Schedule) -> &str {
    if s.catch_up.is_empty() {
        "latest"
    } else {
        &s.catch_up
    }
}

/// `schedule: */1 * * * * (UTC) on, catch-up latest, next 2026-11-29T05:31:00Z` (the next
/// tick only while the schedule is on).
pub fn schedule_line(s: &pb::Schedule) -> String {
    let mut out = format!(
        "schedule: {} ({}) {}, catch-up {}",
        s.cron,
        zone(s),
        on_off(s.active),
        catch_up(s)
    );
    if s.active && s.next_tick_ms > 0 {
        out.push_str(&format!(", next {}", timestamp(s.next_tick_ms)));
    }
    out
}

/// The SCHEDULE cell of `baton flow ls`: `CRON on|off`, or `-` without a schedule.
pub fn schedule_cell(s: Option<&pb::Schedule>) -> String {
    match s {
        Some(s) => format!("{} {}", s.cron, on_off(s.active)),
        None => "-".into(),
    }
}

/// A schedule as JSON (times as unix ms, 0 when none).
pub fn schedule_json(s: &pb::Schedule) -> Value {
    json!({
        "cron": s.cron,
        "timezone": zone(s),
        "active": s.active,
        "catch_up": catch_up(s),
        "last_tick_ms": s.last_tick_ms,
        "next_tick_ms": s.next_tick_ms,
    })
}

/// The table of `baton schedule ls`: the flows that have a schedule.
pub fn schedules_table(flows: &[pb::FlowSummary]) -> String {
    let rows: Vec<Vec<String>> = flows
        .iter()
        .filter_map(|f| {
            let s = f.schedule.as_ref()?;
            Some(vec![
                format!("{}/{}", f.project, f.flow),
                s.cron.clone(),
                zone(s).to_string(),
                on_off(s.active).to_string(),
                catch_up(s).to_string(),
                timestamp(s.last_tick_ms),
                if s.active {
                    timestamp(s.next_tick_ms)
                } else {
                    "-".into()
                },
            ])
        })
        .collect();
    table(
        &[
            "FLOW",
            "CRON",
            "TIMEZONE",
            "STATE",
            "CATCH-UP",
            "LAST TICK",
            "NEXT TICK",
        ],
        &rows,
    )
}

/// `baton schedule ls --json`: one object per flow that has a schedule.
pub fn schedules_json(flows: &[pb::FlowSummary]) -> Value {
    Value::Array(
        flows
            .iter()
            .filter_map(|f| {
                let s = f.schedule.as_ref()?;
                let mut v = schedule_json(s);
                v["project"] = json!(f.project);
                v["flow"] = json!(f.flow);
                Some(v)
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_minute(active: bool) -> pb::Schedule {
        pb::Schedule {
            cron: "*/1 * * * *".into(),
            timezone: String::new(),
            active,
            catch_up: String::new(),
            last_tick_ms: 1_795_930_200_000,
            next_tick_ms: 1_795_930_260_000,
        }
    }

    #[test]
    fn the_schedule_line_names_the_next_tick_only_while_on() {
        assert_eq!(
            schedule_line(&every_minute(true)),
            "schedule: */1 * * * * (UTC) on, catch-up latest, next 2026-11-29T05:31:00Z"
        );
        let off = pb::Schedule {
            timezone: "Europe/Paris".into(),
            catch_up: "none".into(),
            ..every_minute(false)
        };
        assert_eq!(
            schedule_line(&off),
            "schedule: */1 * * * * (Europe/Paris) off, catch-up none"
        );
        assert_eq!(schedule_cell(Some(&off)), "*/1 * * * * off");
        assert_eq!(schedule_cell(None), "-");
    }

    #[test]
    fn schedule_ls_lists_only_flows_with_a_schedule() {
        let flows = vec![
            pb::FlowSummary {
                project: "demo".into(),
                flow: "tick".into(),
                schedule: Some(every_minute(true)),
                ..Default::default()
            },
            pb::FlowSummary {
                project: "demo".into(),
                flow: "plain".into(),
                ..Default::default()
            },
        ];
        let text = schedules_table(&flows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].starts_with("FLOW"), "{text}");
        assert!(
            lines[1].starts_with("demo/tick  */1 * * * *  UTC"),
            "{text}"
        );
        assert!(
            lines[1].ends_with("2026-11-29T05:30:00Z  2026-11-29T05:31:00Z"),
            "{text}"
        );
        let j = schedules_json(&flows);
        assert_eq!(j.as_array().map(Vec::len), Some(1));
        assert_eq!(j[0]["flow"], "tick");
        assert_eq!(j[0]["active"], true);
        assert_eq!(j[0]["timezone"], "UTC");
    }
}
