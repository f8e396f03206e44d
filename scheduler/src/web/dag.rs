//! A flow drawn as a schematic (SVG): its tasks in columns by depth (a task stands right of
//! every task it depends on), edges from each upstream task, each task coloured by the
//! state that sums up its task runs and labelled with how many are done.

use super::pages::{clip, encode};
use super::run_page::TaskSummary;
use baton_common::flow::FlowSpec;
use maud::{html, Markup};
use std::collections::HashMap;

const NODE_W: f64 = 168.0;
const NODE_H: f64 = 42.0;
const COL: f64 = 216.0;
const ROW: f64 = 58.0;
const PAD: f64 = 8.0;

/// The graph of `spec`, each task linked to its task runs on the page at `path`.
pub fn svg(spec: &FlowSpec, tasks: &[TaskSummary], path: &str) -> Markup {
    let names: HashMap<&str, usize> = spec
        .tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.as_str(), i))
        .collect();
    // Tasks come in a topological order: one pass gives each its depth.
    let mut depth = vec![0usize; spec.tasks.len()];
    for (i, t) in spec.tasks.iter().enumerate() {
        depth[i] = t
            .upstream()
            .iter()
            .filter_map(|u| names.get(u))
            .filter(|&&u| u < i)
            .map(|&u| depth[u] + 1)
            .max()
            .unwrap_or(0);
    }
    let mut rows_used: Vec<usize> = Vec::new();
    let mut at: Vec<(f64, f64)> = Vec::with_capacity(spec.tasks.len());
    for &d in &depth {
        if rows_used.len() <= d {
            rows_used.resize(d + 1, 0);
        }
        at.push((PAD + COL * d as f64, PAD + ROW * rows_used[d] as f64));
        rows_used[d] += 1;
    }
    let width = PAD * 2.0 + COL * (rows_used.len().max(1) - 1) as f64 + NODE_W;
    let height =
        PAD * 2.0 + ROW * (rows_used.iter().copied().max().unwrap_or(1) - 1) as f64 + NODE_H;
    let summary: HashMap<&str, &TaskSummary> = tasks.iter().map(|t| (t.task, t)).collect();
    html! {
        div.graph {
            svg.dag width=(format!("{width:.0}")) height=(format!("{height:.0}")) viewBox={ "0 0 " (format!("{width:.0} {height:.0}")) } role="img" aria-label={ "graph of flow " (spec.name) } {
                defs {
                    marker id="arrow" viewBox="0 0 8 8" refX="8" refY="4" markerWidth="7" markerHeight="7" orient="auto-start-reverse" {
                        path d="M0,0 L8,4 L0,8 z" class="arrowhead" {}
                    }
                }
                @for (i, t) in spec.tasks.iter().enumerate() {
                    @for u in t.upstream() {
                        @if let Some(&j) = names.get(u) {
                            @let (x0, y0) = (at[j].0 + NODE_W, at[j].1 + NODE_H / 2.0);
                            @let (x1, y1) = (at[i].0, at[i].1 + NODE_H / 2.0);
                            @let mid = (x0 + x1) / 2.0;
                            path.edge.after[t.after.iter().any(|a| a == u)]
                                d=(format!("M{x0:.1},{y0:.1} C{mid:.1},{y0:.1} {mid:.1},{y1:.1} {x1:.1},{y1:.1}"))
                                marker-end="url(#arrow)" {}
                        }
                    }
                }
                @for (i, t) in spec.tasks.iter().enumerate() {
                    @let s = summary.get(t.name.as_str());
                    @let overall = s.map_or("PENDING", |s| s.overall());
                    @let (x, y) = at[i];
                    a href={ (path) "?task=" (encode(&t.name)) } {
                        g.node transform=(format!("translate({x:.1},{y:.1})")) {
                            title { (t.name) ": " (overall) }
                            rect class={ "n s-" (overall) } width=(NODE_W) height=(NODE_H) rx="6" {}
                            text x="10" y="17" class="name" { (clip(&t.name, 20)) @if t.is_mapped() { " [ ]" } }
                            text x="10" y="33" class="sub" {
                                @if let Some(s) = s { (s.done()) "/" (s.total) " done" }
                                @else { "pending" }
                            }
                        }
                    }
                }
            }
        }
    }
}
