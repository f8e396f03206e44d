//! Task-run queries: a page of one run's task runs, filtered by task, state and map index,
//! with the whole run's counts by task and state; for live runs (the engine) and archived
//! ones (their rows) alike, so that no page needs every task run of a large map.

use super::model::Run;
use super::view::pending_row;
use super::{Engine, EngineError};
use baton_proto as pb;

/// What a query asks for.
#[derive(Debug, Clone, Default)]
pub struct TaskQuery {
    pub with_values: bool,
    /// The first matching row, and the most rows.
    pub offset: usize,
    pub limit: usize,
    /// Only this task's task runs (empty: every task).
    pub task: String,
    /// Only these states (wire values; empty: any).
    pub states: Vec<i32>,
    /// Only this map index (-1: an unmapped task's one).
    pub map_index: Option<i64>,
    /// Also the run's counts by task and state.
    pub with_counts: bool,
}

/// A query's answer.
#[derive(Debug, Clone, Default)]
pub struct TaskPage {
    pub rows: Vec<pb::TaskRun>,
    /// Matching rows in all.
    pub total: usize,
    pub counts: Vec<pb::TaskCount>,
}

impl TaskQuery {
    fn wants_task(&self, task: &str) -> bool {
        self.task.is_empty() || self.task == task
    }

    fn wants_state(&self, state: i32) -> bool {
        self.states.is_empty() || self.states.contains(&state)
    }

    fn wants_index(&self, index: i64) -> bool {
        self.map_index.is_none_or(|i| i == index)
    }

    /// Whether row number `n` (of the matching ones) is on the page.
    fn on_page(&self, n: usize) -> bool {
        n >= self.offset && n - self.offset < self.limit
    }
}

/// Counts by state of one task, gathered in one pass (indexed by wire state).
#[derive(Default)]
struct Tally {
    by_state: [u32; 16],
    first_started_ms: [i64; 16],
    last_ended_ms: [i64; 16],
}

impl Tally {
    fn add(&mut self, state: i32, started_ms: i64, ended_ms: i64) {
        let s = (state.clamp(0, 15)) as usize;
        self.by_state[s] += 1;
        if started_ms > 0
            && (self.first_started_ms[s] == 0 || started_ms < self.first_started_ms[s])
        {
            self.first_started_ms[s] = started_ms;
        }
        self.last_ended_ms[s] = self.last_ended_ms[s].max(ended_ms);
    }

    fn push(&self, task: &str, mapped: bool, out: &mut Vec<pb::TaskCount>) {
        for (s, &count) in self.by_state.iter().enumerate() {
            if count > 0 {
                out.push(pb::TaskCount {
                    task: task.to_string(),
                    state: s as i32,
                    count,
                    mapped,
                    first_started_ms: self.first_started_ms[s],
                    last_ended_ms: self.last_ended_ms[s],
                });
            }
        }
    }
}

impl Engine {
    /// A page of run `id`'s task runs as `q` asks, in task order then map index.
    pub fn task_query(&self, id: &str, q: &TaskQuery) -> Result<TaskPage, EngineError> {
        let slot = self.slot_of(id)?;
        let run = &self.runs[slot];
        let mut page = TaskPage::default();
        // Without a state or index filter, a task's rows are all its task runs: the page
        // takes its slice of them and the rest is only counted.
        let unfiltered = q.states.is_empty() && q.map_index.is_none();
        for (i, n) in run.nodes.iter().enumerate() {
            let name = &run.flow.task(i).name;
            if q.with_counts {
                self.count_node(run, i, &mut page.counts);
            }
            if !q.wants_task(name) {
                continue;
            }
            if unfiltered && !n.runs.is_empty() {
                let len = n.runs.len();
                let from = q.offset.saturating_sub(page.total).min(len);
                let upto = q
                    .offset
                    .saturating_add(q.limit)
                    .saturating_sub(page.total)
                    .min(len);
                for (j, tr) in n.runs.iter().enumerate().take(upto).skip(from) {
                    page.rows.push(self.tr_view(run, i, j, tr, q.with_values));
                }
                page.total += len;
                continue;
            }
            if n.runs.is_empty() {
                let row = pending_row(&run.id.0, name, n);
                if q.wants_state(row.state) && q.wants_index(-1) {
                    if q.on_page(page.total) {
                        page.rows.push(row);
                    }
                    page.total += 1;
                }
                continue;
            }
            let indexes: Box<dyn Iterator<Item = usize>> = match q.map_index {
                Some(i) if n.mapped => Box::new(usize::try_from(i).ok().into_iter()),
                Some(-1) | None => Box::new(0..n.runs.len()),
                Some(_) => Box::new(std::iter::empty()),
            };
            for j in indexes {
                let Some(tr) = n.runs.get(j) else { continue };
                if !q.wants_state(pb::TaskState::from(tr.state) as i32) {
                    continue;
                }
                if q.on_page(page.total) {
                    page.rows.push(self.tr_view(run, i, j, tr, q.with_values));
                }
                page.total += 1;
            }
        }
        Ok(page)
    }

    /// Adds node `i`'s counts by state.
    fn count_node(&self, run: &Run, i: usize, out: &mut Vec<pb::TaskCount>) {
        let n = &run.nodes[i];
        let name = &run.flow.task(i).name;
        let mut tally = Tally::default();
        if n.runs.is_empty() {
            tally.add(pending_row(&run.id.0, name, n).state, 0, 0);
        }
        for tr in &n.runs {
            tally.add(
                pb::TaskState::from(tr.state) as i32,
                tr.started_ms,
                tr.ended_ms,
            );
        }
        tally.push(name, n.mapped, out);
    }
}

/// The same query over an archived run's rows (in task order, as archived).
pub fn query_rows(rows: &[pb::TaskRun], q: &TaskQuery) -> TaskPage {
    let mut page = TaskPage::default();
    let mut tallies: Vec<(String, bool, Tally)> = Vec::new();
    for t in rows {
        if q.with_counts {
            if tallies.last().is_none_or(|(task, _, _)| *task != t.task) {
                tallies.push((t.task.clone(), false, Tally::default()));
            }
            if let Some((_, mapped, tally)) = tallies.last_mut() {
                *mapped |= t.map_index >= 0;
                tally.add(t.state, t.started_ms, t.ended_ms);
            }
        }
        if !q.wants_task(&t.task) || !q.wants_state(t.state) || !q.wants_index(t.map_index) {
            continue;
        }
        if q.on_page(page.total) {
            let mut t = t.clone();
            if !q.with_values {
                t.value.clear();
            }
            page.rows.push(t);
        }
        page.total += 1;
    }
    for (task, mapped, tally) in &tallies {
        tally.push(task, *mapped, &mut page.counts);
    }
    page
}
