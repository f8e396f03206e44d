//! Cron schedules of registered flows: each active schedule starts a run per tick, with the
//! tick as the run's scheduled start. Progress (`through_ms`: every tick up to it was seen)
//! is part of the fenced state and committed with the runs it started; each tick's run also
//! carries an idempotency key naming the tick, so a tick that a deposed or crashed leader
//! already started is never started twice. Ticks missed while no leader ran are handled by
//! the schedule's catch-up policy (see [`baton_common::schedule::due_ticks`]).

use super::model::Trigger;
use super::tables;
use super::{Engine, EngineError, NewRun};
use baton_common::flow::ScheduleSpec;
use baton_common::schedule::{due_ticks, CronSchedule};
use baton_proto as pb;
use serde::{Deserialize, Serialize};

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

/// A schedule in memory: its record, the latest version's spec and the next tick.
#[derive(Debug)]
pub(super) struct ScheduleState {
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

type FlowKey = (String, String);

impl Engine {
    /// A flow version was registered: take up its schedule. A schedule starts inactive
    /// unless `activate`; an unchanged definition keeps its schedule's state (and is
    /// switched on by `activate`); a new version without a schedule removes it.
    pub(super) fn schedule_registered(
        &mut self,
        key: FlowKey,
        spec: Option<ScheduleSpec>,
        new_version: bool,
        activate: bool,
        now: i64,
    ) {
        let Some(spec) = spec else {
            if self.schedules.remove(&key).is_some() {
                self.ops.push(tables::schedules::delete(&key.0, &key.1));
            }
            return;
        };
        let mut record = self
            .schedules
            .get(&key)
            .map(|s| s.record.clone())
            .unwrap_or_default();
        let was_active = record.active;
        if new_version || !self.schedules.contains_key(&key) {
            record.active = activate;
        } else if activate {
            record.active = true;
        }
        if record.active && !was_active {
            // Ticks from before it was switched on are not missed: they never were due.
            record.through_ms = record.through_ms.max(now);
        }
        self.put_schedule(key, ScheduleState::new(spec, record));
    }

    fn put_schedule(&mut self, key: FlowKey, state: ScheduleState) {
        self.write(tables::schedules::put(&key.0, &key.1, &state.record));
        self.schedules.insert(key, state);
    }

    /// Switches a registered flow's schedule on or off.
    pub fn set_schedule(
        &mut self,
        project: &str,
        flow: &str,
        active: bool,
        now: i64,
    ) -> Result<pb::Schedule, EngineError> {
        self.flow(project, flow, 0)?;
        let key = (project.to_string(), flow.to_string());
        let Some(state) = self.schedules.remove(&key) else {
            return Err(EngineError::FailedPrecondition(format!(
                "flow `{project}/{flow}` has no schedule (add `schedule: {{cron: ...}}` to its file and register it)"
            )));
        };
        let mut record = state.record;
        if active && !record.active {
            record.through_ms = record.through_ms.max(now);
        }
        record.active = active;
        let state = ScheduleState::new(state.spec, record);
        let view = state.view();
        self.put_schedule(key, state);
        Ok(view)
    }

    /// The schedule of a registered flow, if it has one.
    pub fn schedule_view(&self, project: &str, flow: &str) -> Option<pb::Schedule> {
        self.schedules
            .get(&(project.to_string(), flow.to_string()))
            .map(ScheduleState::view)
    }

    /// Starts the runs of every due tick.
    pub(super) fn fire_schedules(&mut self, now: i64) {
        let due: Vec<FlowKey> = self
            .schedules
            .iter()
            .filter(|(_, s)| s.next_ms != 0 && s.next_ms <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            let Some(mut state) = self.schedules.remove(&key) else {
                continue;
            };
            let ticks = match &state.cron {
                Some(c) => due_ticks(c, state.spec.catch_up, state.record.through_ms, now),
                None => Vec::new(),
            };
            let skipped = state.next_ms < ticks.first().copied().unwrap_or(i64::MAX);
            if skipped {
                tracing::warn!(project = %key.0, flow = %key.1, catch_up = state.spec.catch_up.name(), "schedule ticks were missed and skipped");
            }
            for &tick in &ticks {
                let req = NewRun {
                    project: key.0.clone(),
                    flow: key.1.clone(),
                    idempotency_key: format!("schedule/{}/{}/{tick}", key.0, key.1),
                    scheduled_start_ms: tick,
                    trigger: Trigger::Schedule,
                    ..Default::default()
                };
                match self.create_run(req, now) {
                    Ok((id, true)) => {
                        tracing::info!(run = %id, project = %key.0, flow = %key.1, tick, "scheduled run")
                    }
                    Ok((id, false)) => {
                        tracing::info!(run = %id, tick, "the tick's run already exists")
                    }
                    Err(e) => {
                        tracing::warn!(project = %key.0, flow = %key.1, tick, error = %e, "cannot start a scheduled run")
                    }
                }
                state.record.last_tick_ms = state.record.last_tick_ms.max(tick);
            }
            state.record.through_ms = state.record.through_ms.max(now);
            state.plan();
            self.put_schedule(key, state);
        }
    }

    /// The next tick of any active schedule.
    pub(super) fn next_tick(&self) -> Option<i64> {
        self.schedules
            .values()
            .filter(|s| s.next_ms != 0)
            .map(|s| s.next_ms)
            .min()
    }

    /// Schedules read back after a restart (their flows are loaded first).
    pub(super) fn recover_schedules(&mut self, records: Vec<(String, String, ScheduleRecord)>) {
        for (project, flow, record) in records {
            let spec = self
                .flows
                .get(&(project.clone(), flow.clone()))
                .and_then(|v| v.last())
                .and_then(|f| f.spec.schedule.clone());
            match spec {
                Some(spec) => {
                    self.schedules
                        .insert((project, flow), ScheduleState::new(spec, record));
                }
                None => tracing::warn!(%project, %flow, "a schedule without a scheduled flow"),
            }
        }
    }
}
