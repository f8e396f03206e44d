//! The schedules part: each scheduled flow's cron schedule, its durable progress and its
//! next tick; which ticks are due at a time, by the schedule's catch-up policy. No engine
//! inside (the engine starts the due ticks' runs and writes the records): tested on its own.

use baton_common::flow::ScheduleSpec;
use baton_common::schedule::{due_ticks, CronSchedule};
use baton_proto as pb;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The durable progress of a flow's schedule.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ScheduleRecord {
    pub active: bool,
    /// Every tick at or before this time (unix ms) was handled.
    pub through_ms: i64,
    /// The latest tick a run was started for (0: none yet).
    #[serde(default)]
    pub last_tick_ms: i64,
}

/// A flow: (project, name).
pub(super) type FlowKey = (String, String);

/// A schedule in memory: its record, the latest version's spec and the next tick.
#[derive(Debug)]
struct ScheduleState {
    pub record: ScheduleRecord,
    pub spec: ScheduleSpec,
    pub cron: Option<CronSchedule>,
    /// The next tick when active (0: none).
    pub next_ms: i64,
}

impl ScheduleState {
    fn new(spec: ScheduleSpec, record: ScheduleRecord) -> Self {
        let cron = match CronSchedule::parse(&spec.cron, &spec.timezone) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(cron = %spec.cron, error = %e, "cannot parse a stored schedule");
                None
            }
        };
        let mut s = ScheduleState {
            record,
            spec,
            cron,
            next_ms: 0,
        };
        s.plan();
        s
    }

    fn plan(&mut self) {
        self.next_ms = match (&self.cron, self.record.active) {
            (Some(c), true) => c.next_after(self.record.through_ms).unwrap_or(0),
            _ => 0,
        };
    }

    fn view(&self) -> pb::Schedule {
        pb::Schedule {
            cron: self.spec.cron.clone(),
            timezone: self.spec.timezone.clone(),
            active: self.record.active,
            catch_up: self.spec.catch_up.name().to_string(),
            last_tick_ms: self.record.last_tick_ms,
            next_tick_ms: self.next_ms,
        }
    }
}

/// The ticks of one schedule that are due, and its record once they are started.
#[derive(Debug, PartialEq)]
pub(super) struct Fired {
    pub key: FlowKey,
    pub ticks: Vec<i64>,
    /// Missed ticks were skipped (by the catch-up policy).
    pub skipped: bool,
    /// The progress to write, with the runs of `ticks`.
    pub record: ScheduleRecord,
}

/// Every scheduled flow's schedule.
#[derive(Debug, Default)]
pub(super) struct Schedules {
    by_flow: BTreeMap<FlowKey, ScheduleState>,
}

impl Schedules {
    /// A flow version was registered with `spec` (None: without a schedule). A schedule
    /// starts inactive unless `activate`; an unchanged definition keeps its schedule's state
    /// (and is switched on by `activate`); a new version without a schedule removes it.
    /// Returns the record to write (None: delete it).
    pub fn register(
        &mut self,
        key: FlowKey,
        spec: Option<ScheduleSpec>,
        new_version: bool,
        activate: bool,
        now: i64,
    ) -> Option<ScheduleRecord> {
        let Some(spec) = spec else {
            self.by_flow.remove(&key);
            return None;
        };
        let known = self.by_flow.get(&key);
        let mut record = known.map(|s| s.record.clone()).unwrap_or_default();
        let was_active = record.active;
        if new_version || known.is_none() {
            record.active = activate;
        } else if activate {
            record.active = true;
        }
        if record.active && !was_active {
            // Ticks from before it was switched on are not missed: they never were due.
            record.through_ms = record.through_ms.max(now);
        }
        self.by_flow
            .insert(key, ScheduleState::new(spec, record.clone()));
        Some(record)
    }

    /// Switches a schedule on or off; its record to write and its view. None: the flow has
    /// no schedule.
    pub fn set_active(
        &mut self,
        key: &FlowKey,
        active: bool,
        now: i64,
    ) -> Option<(ScheduleRecord, pb::Schedule)> {
        let state = self.by_flow.get_mut(key)?;
        if active && !state.record.active {
            state.record.through_ms = state.record.through_ms.max(now);
        }
        state.record.active = active;
        state.plan();
        Some((state.record.clone(), state.view()))
    }

    pub fn view(&self, key: &FlowKey) -> Option<pb::Schedule> {
        self.by_flow.get(key).map(ScheduleState::view)
    }

    /// The schedules with ticks due at `now`, their progress advanced to `now`.
    pub fn fire(&mut self, now: i64) -> Vec<Fired> {
        let mut out = Vec::new();
        for (key, state) in self.by_flow.iter_mut() {
            if state.next_ms == 0 || state.next_ms > now {
                continue;
            }
            let ticks = match &state.cron {
                Some(c) => due_ticks(c, state.spec.catch_up, state.record.through_ms, now),
                None => Vec::new(),
            };
            let skipped = state.next_ms < ticks.first().copied().unwrap_or(i64::MAX);
            if let Some(&last) = ticks.last() {
                state.record.last_tick_ms = state.record.last_tick_ms.max(last);
            }
            state.record.through_ms = state.record.through_ms.max(now);
            state.plan();
            out.push(Fired {
                key: key.clone(),
                ticks,
                skipped,
                record: state.record.clone(),
            });
        }
        out
    }

    /// The next tick of any active schedule.
    pub fn next_tick(&self) -> Option<i64> {
        self.by_flow
            .values()
            .filter(|s| s.next_ms != 0)
            .map(|s| s.next_ms)
            .min()
    }

    /// A schedule read back after a restart.
    pub fn recover(&mut self, key: FlowKey, spec: ScheduleSpec, record: ScheduleRecord) {
        self.by_flow.insert(key, ScheduleState::new(spec, record));
    }
}

#[cfg(test)]
mod tests;
