//! Cron schedules of registered flows: each active schedule starts a run per tick, with the
//! tick as the run's scheduled start. Progress (`through_ms`: every tick up to it was seen)
//! is part of the fenced state and committed with the runs it started; each tick's run also
//! carries an idempotency key naming the tick, so a tick that a deposed or crashed leader
//! already started is never started twice. Ticks missed while no leader ran are handled by
//! the schedule's catch-up policy (see [`baton_common::schedule::due_ticks`]).

use super::model::Trigger;
use super::schedules::{FlowKey, ScheduleRecord};
use super::tables;
use super::{Engine, EngineError, NewRun};
use baton_common::flow::ScheduleSpec;
use baton_proto as pb;

impl Engine {
    /// A flow version was registered: take up its schedule (see `Schedules::register`).
    pub(super) fn schedule_registered(
        &mut self,
        key: FlowKey,
        spec: Option<ScheduleSpec>,
        new_version: bool,
        activate: bool,
        now: i64,
    ) {
        match self
            .schedules
            .register(key.clone(), spec, new_version, activate, now)
        {
            Some(record) => self.write(tables::schedules::put(&key.0, &key.1, &record)),
            None => self.ops.push(tables::schedules::delete(&key.0, &key.1)),
        }
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
        let Some((record, view)) = self.schedules.set_active(&key, active, now) else {
            return Err(EngineError::FailedPrecondition(format!(
                "flow `{project}/{flow}` has no schedule (add `schedule: {{cron: ...}}` to its file and register it)"
            )));
        };
        self.write(tables::schedules::put(project, flow, &record));
        Ok(view)
    }

    /// The schedule of a registered flow, if it has one.
    pub fn schedule_view(&self, project: &str, flow: &str) -> Option<pb::Schedule> {
        self.schedules
            .view(&(project.to_string(), flow.to_string()))
    }

    /// Starts the runs of every due tick.
    pub(super) fn fire_schedules(&mut self, now: i64) {
        for fired in self.schedules.fire(now) {
            let key = &fired.key;
            if fired.skipped {
                self.stats.schedule_missed += 1;
                tracing::warn!(project = %key.0, flow = %key.1, "schedule ticks were missed and skipped");
            }
            for &tick in &fired.ticks {
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
                        self.stats.schedule_fired += 1;
                        tracing::info!(run = %id, project = %key.0, flow = %key.1, tick, "scheduled run")
                    }
                    Ok((id, false)) => {
                        tracing::info!(run = %id, tick, "the tick's run already exists")
                    }
                    Err(e) => {
                        tracing::warn!(project = %key.0, flow = %key.1, tick, error = %e, "cannot start a scheduled run")
                    }
                }
            }
            self.write(tables::schedules::put(&key.0, &key.1, &fired.record));
        }
    }

    /// The next tick of any active schedule.
    pub(super) fn next_tick(&self) -> Option<i64> {
        self.schedules.next_tick()
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
                Some(spec) => self.schedules.recover((project, flow), spec, record),
                None => tracing::warn!(%project, %flow, "a schedule without a scheduled flow"),
            }
        }
    }
}
