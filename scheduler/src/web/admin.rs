//! The overview pages: every flow's schedule (with its switch, last and next tick) and the
//! cluster's concurrency limits (slots in use; set and removed by an operator).

use super::pages::{encode, schedule_switch, when};
use baton_proto as pb;
use maud::{html, Markup};

pub fn schedules(flows: &[pb::FlowSummary]) -> Markup {
    let scheduled: Vec<&pb::FlowSummary> = flows.iter().filter(|f| f.schedule.is_some()).collect();
    html! {
        @if scheduled.is_empty() { p.muted { "No flow has a schedule (a flow's " code { "schedule: {cron: …}" } ")." } }
        @else {
            table {
                thead { tr { th { "Flow" } th { "Schedule" } th { "Catch-up" } th { "Last tick" } th { "Next tick" } } }
                tbody {
                    @for f in &scheduled {
                        @let s = f.schedule.clone().unwrap_or_default();
                        tr {
                            td { a href={ "/runs?project=" (encode(&f.project)) "&flow=" (encode(&f.flow)) } { (f.project) "/" (f.flow) } }
                            td { (schedule_switch(f, "schedules")) }
                            td { (if s.catch_up.is_empty() { "latest" } else { &s.catch_up }) }
                            td { (when(s.last_tick_ms)) }
                            td { @if s.active { (when(s.next_tick_ms)) } @else { span.muted { "off" } } }
                        }
                    }
                }
            }
        }
    }
}

pub fn limits(limits: &[pb::ConcurrencyLimit], error: Option<&str>) -> Markup {
    html! {
        @if let Some(e) = error { p.error role="alert" { (e) } }
        p.muted { "At most " em { "limit" } " attempts of tasks with a tag hold a slot at once, cluster-wide." }
        @if limits.is_empty() { p.muted { "No limit is set." } }
        @else {
            table {
                thead { tr { th { "Tag" } th.num { "Limit" } th.num { "In use" } th { "" } } }
                tbody {
                    @for l in limits {
                        tr {
                            td.mono { (l.tag) }
                            td.num { (l.limit) }
                            td.num { (l.in_use) }
                            td {
                                form.inline method="post" action={ "/limits/" (encode(&l.tag)) "/delete" } {
                                    button.link type="submit" aria-label={ "remove the limit on " (l.tag) } { "Remove" }
                                }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Set a limit" }
        form.filters #set-limit method="post" action="/limits" {
            label { "Tag " input name="tag" required maxlength="256"; }
            label { "Limit " input name="limit" type="number" min="0" required; }
            button type="submit" { "Set" }
        }
    }
}
