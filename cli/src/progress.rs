//! `baton run`'s live progress: per task, its task runs done, running and failed. On a
//! terminal, a bar per task with its rate and ETA (indicatif); otherwise one summary line
//! every few seconds, never a line per task run. Also says why a run waits, once known.

use baton_proto as pb;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// How often the plain display prints its line.
const LINE_EVERY: Duration = Duration::from_secs(2);
/// Tasks named in a plain line; the rest are counted.
const LINE_TASKS: usize = 6;

/// Task runs of one task, by where they are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub total: u64,
    pub done: u64,
    pub running: u64,
    pub failed: u64,
}

/// Where a task run is, as counted.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Waiting,
    Running,
    Done,
    Failed,
}

fn phase(state: i32) -> Phase {
    use pb::TaskState as S;
    match S::try_from(state) {
        Ok(S::Assigned | S::Running | S::Retrying) => Phase::Running,
        Ok(S::Completed | S::Skipped) => Phase::Done,
        Ok(S::Failed | S::Cancelled) => Phase::Failed,
        _ => Phase::Waiting,
    }
}

/// The display.
pub struct Progress {
    /// Bars on a terminal; `None` for plain lines.
    bars: Option<(MultiProgress, BTreeMap<String, ProgressBar>)>,
    tasks: BTreeMap<String, Counts>,
    seen: HashMap<(String, i64), Phase>,
    waiting: String,
    last_line: Instant,
    started: Instant,
}

impl Progress {
    /// Bars when `terminal`, else plain lines (both on stderr).
    pub fn new(terminal: bool) -> Self {
        let bars = terminal.then(|| {
            (
                MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
                BTreeMap::new(),
            )
        });
        Progress {
            bars,
            tasks: BTreeMap::new(),
            seen: HashMap::new(),
            waiting: String::new(),
            last_line: Instant::now(),
            started: Instant::now(),
        }
    }

    /// The counts so far, by task.
    pub fn counts(&self) -> &BTreeMap<String, Counts> {
        &self.tasks
    }

    /// Takes changed task runs.
    pub fn update(&mut self, trs: &[pb::TaskRun]) {
        for t in trs {
            if t.map_index >= 0 {
                // A mapped task's row from before its expansion gives way to its runs.
                if let Some(p) = self.seen.remove(&(t.task.clone(), -1)) {
                    let c = self.tasks.entry(t.task.clone()).or_default();
                    c.total = c.total.saturating_sub(1);
                    adjust(c, p, -1);
                }
            }
            let now = phase(t.state);
            let before = self.seen.insert((t.task.clone(), t.map_index), now);
            let c = self.tasks.entry(t.task.clone()).or_default();
            match before {
                None => c.total += 1,
                Some(b) => adjust(c, b, -1),
            }
            adjust(c, now, 1);
        }
        self.draw(false);
    }

    /// The run waits for this reason (empty: it no longer waits).
    pub fn waiting(&mut self, reason: &str) {
        if reason == self.waiting {
            return;
        }
        self.waiting = reason.to_string();
        if reason.is_empty() {
            return;
        }
        match &self.bars {
            Some((m, _)) => {
                let _ = m.println(format!("waiting: {reason}"));
            }
            None => eprintln!("waiting: {reason}"),
        }
    }

    /// The run is over: the last state is shown and the bars are left as they are.
    pub fn finish(&mut self) {
        self.draw(true);
        if let Some((_, bars)) = &self.bars {
            for b in bars.values() {
                b.finish();
            }
        }
    }

    fn draw(&mut self, last: bool) {
        match &mut self.bars {
            Some((m, bars)) => {
                for (task, c) in &self.tasks {
                    let bar = bars.entry(task.clone()).or_insert_with(|| {
                        let b = m.add(ProgressBar::new(c.total));
                        b.set_style(style());
                        b.set_prefix(task.clone());
                        b
                    });
                    bar.set_length(c.total);
                    bar.set_position(c.done + c.failed);
                    bar.set_message(format!("{} running, {} failed", c.running, c.failed));
                }
            }
            None => {
                if last || self.last_line.elapsed() >= LINE_EVERY {
                    self.last_line = Instant::now();
                    eprintln!("{}", line(&self.tasks, self.started.elapsed()));
                }
            }
        }
    }
}

fn adjust(c: &mut Counts, p: Phase, by: i64) {
    let slot = match p {
        Phase::Waiting => return,
        Phase::Running => &mut c.running,
        Phase::Done => &mut c.done,
        Phase::Failed => &mut c.failed,
    };
    *slot = slot.saturating_add_signed(by);
}

fn style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{prefix:>16.bold} [{bar:30}] {pos}/{len} {msg}  {per_sec} eta {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ")
}

/// A plain progress line: the whole run, then the first tasks.
pub fn line(tasks: &BTreeMap<String, Counts>, elapsed: Duration) -> String {
    let sum = tasks.values().fold(Counts::default(), |a, c| Counts {
        total: a.total + c.total,
        done: a.done + c.done,
        running: a.running + c.running,
        failed: a.failed + c.failed,
    });
    let secs = elapsed.as_secs_f64().max(0.001);
    let mut s = format!(
        "progress: {}/{} task runs done, {} running, {} failed ({:.0}/s)",
        sum.done + sum.failed,
        sum.total,
        sum.running,
        sum.failed,
        (sum.done + sum.failed) as f64 / secs
    );
    let parts: Vec<String> = tasks
        .iter()
        .take(LINE_TASKS)
        .map(|(t, c)| format!("{t} {}/{}", c.done + c.failed, c.total))
        .collect();
    if !parts.is_empty() {
        s.push_str(" | ");
        s.push_str(&parts.join(", "));
        if tasks.len() > LINE_TASKS {
            s.push_str(&format!(", {} more tasks", tasks.len() - LINE_TASKS));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tr(task: &str, index: i64, state: pb::TaskState) -> pb::TaskRun {
        pb::TaskRun {
            task: task.into(),
            map_index: index,
            state: state as i32,
            ..Default::default()
        }
    }

    #[test]
    fn counts_follow_each_task_run_through_its_states() {
        use pb::TaskState as S;
        let mut p = Progress::new(false);
        p.update(&[tr("a", -1, S::Running), tr("w", -1, S::Pending)]);
        p.update(&[tr("w", 0, S::Ready), tr("w", 1, S::Ready)]);
        p.update(&[tr("a", -1, S::Completed), tr("w", 0, S::Running)]);
        p.update(&[
            tr("w", 0, S::Failed),
            tr("w", 1, S::Completed),
            tr("w", 2, S::Ready),
        ]);
        let c = p.counts();
        let a = Counts {
            total: 1,
            done: 1,
            running: 0,
            failed: 0,
        };
        assert_eq!(c["a"], a);
        let w = Counts {
            total: 3,
            done: 1,
            running: 0,
            failed: 1,
        };
        assert_eq!(c["w"], w);
        let l = line(c, Duration::from_secs(1));
        assert!(
            l.starts_with("progress: 3/4 task runs done, 0 running, 1 failed (3/s) | a 1/1, w 2/3"),
            "{l}"
        );
    }
}
