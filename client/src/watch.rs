//! A watch of one run that survives a change of leader: when the stream breaks or ends
//! before the run is over, it is opened again on the leader of the moment, and events the
//! caller has already seen (the new stream starts with a full snapshot) are dropped, so the
//! caller sees the run move forward only, and always gets the finished run's event.

use super::cluster::{leader_hint, retryable, Backoff};
use super::{is_finished, Client, ClientError};
use baton_proto as pb;
use std::collections::HashMap;
use tokio::time::Instant;

/// A stream of a run's events; see [`Client::watch`].
pub struct RunWatch {
    client: Client,
    run_id: String,
    with_task_runs: bool,
    stream: Option<tonic::Streaming<pb::RunEvent>>,
    /// The replica the stream is open on.
    on: Option<String>,
    seen: Seen,
    /// The finished run's event was delivered.
    done: bool,
}

impl RunWatch {
    pub(super) async fn open(
        client: Client,
        run_id: String,
        with_task_runs: bool,
    ) -> Result<Self, ClientError> {
        let stream = client.open_watch(&run_id, with_task_runs).await?;
        Ok(RunWatch {
            on: client.current_leader(),
            client,
            run_id,
            with_task_runs,
            stream: Some(stream),
            seen: Seen::default(),
            done: false,
        })
    }

    /// The run watched.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// The next event; `None` after the finished run's event.
    pub async fn message(&mut self) -> Result<Option<pb::RunEvent>, ClientError> {
        let mut backoff = Backoff::default();
        let mut broken_since: Option<Instant> = None;
        while !self.done {
            let Some(stream) = self.stream.as_mut() else {
                let stream = self
                    .client
                    .open_watch(&self.run_id, self.with_task_runs)
                    .await?;
                self.stream = Some(stream);
                self.on = self.client.current_leader();
                continue;
            };
            let status = match stream.message().await {
                Ok(Some(ev)) => {
                    broken_since = None;
                    backoff.reset();
                    if let Some(ev) = self.admit(ev) {
                        return Ok(Some(ev));
                    }
                    continue;
                }
                // The stream ended before the run did (a leader stepping down ends its
                // watches), or the run is over and its last event went missing.
                Ok(None) => {
                    self.stream = None;
                    if let Some(ev) = self.final_event().await? {
                        return Ok(Some(ev));
                    }
                    if self.done {
                        break;
                    }
                    tonic::Status::unavailable("the watch ended before the run")
                }
                Err(status) if retryable(&status) => {
                    self.stream = None;
                    status
                }
                Err(status) => return Err(status.into()),
            };
            let since = *broken_since.get_or_insert_with(Instant::now);
            let delay = backoff.next();
            let Some(left) = self
                .client
                .retry_for()
                .checked_sub(since.elapsed())
                .filter(|l| !l.is_zero())
            else {
                return Err(status.into());
            };
            let delay = delay.min(left);
            match (leader_hint(&status), &self.on) {
                (Some(leader), _) => self.client.cluster.redirect(leader),
                (None, Some(on)) => self.client.cluster.forget(on),
                (None, None) => {}
            }
            tracing::debug!(
                run = %self.run_id,
                code = ?status.code(),
                message = status.message(),
                "watch broke, re-opening it on the leader"
            );
            tokio::time::sleep(delay).await;
        }
        Ok(None)
    }

    /// After the stream ended early: the finished run's event when the run is over (with
    /// its task runs that changed), else `None`.
    async fn final_event(&mut self) -> Result<Option<pb::RunEvent>, ClientError> {
        let run = self.client.get_run(&self.run_id).await?;
        if !is_finished(&run) {
            return Ok(None);
        }
        let task_runs = if self.with_task_runs {
            self.client.task_runs(&self.run_id, false).await?
        } else {
            Vec::new()
        };
        let ev = self.admit(pb::RunEvent {
            run: Some(run),
            task_runs,
        });
        self.done = true;
        Ok(ev)
    }

    /// `ev` less what was already delivered; `None` when nothing is left.
    fn admit(&mut self, ev: pb::RunEvent) -> Option<pb::RunEvent> {
        let ev = self.seen.admit(ev)?;
        if ev.run.as_ref().is_some_and(is_finished) {
            self.done = true;
            self.stream = None;
        }
        Some(ev)
    }
}

/// What was delivered: the last run and the last version of each task run.
#[derive(Default)]
struct Seen {
    run: Option<pb::FlowRun>,
    tasks: HashMap<(String, i64), pb::TaskRun>,
}

/// How far a run has gone: its state's rank, then its finished task runs.
fn progress(run: &pb::FlowRun) -> (u8, u32) {
    let rank = match pb::RunState::try_from(run.state) {
        Ok(pb::RunState::Unspecified) | Err(_) => 0,
        Ok(pb::RunState::Scheduled) => 1,
        Ok(pb::RunState::Pending) => 2,
        Ok(pb::RunState::Running) => 3,
        Ok(pb::RunState::Completed | pb::RunState::Failed | pb::RunState::Cancelled) => 4,
    };
    (rank, run.tasks_done)
}

impl Seen {
    /// Drops the task runs already delivered (or older attempts of them) and keeps the run
    /// from going back; `None` when the event brings nothing new.
    fn admit(&mut self, mut ev: pb::RunEvent) -> Option<pb::RunEvent> {
        let tasks = &mut self.tasks;
        ev.task_runs.retain(|t| {
            let key = (t.task.clone(), t.map_index);
            match tasks.get(&key) {
                Some(prev) if prev == t || t.attempt < prev.attempt => false,
                _ => {
                    tasks.insert(key, t.clone());
                    true
                }
            }
        });
        let run_is_new = match (ev.run.take(), &self.run) {
            (Some(run), Some(prev)) if progress(&run) < progress(prev) || run == *prev => {
                ev.run = Some(prev.clone());
                false
            }
            (Some(run), _) => {
                self.run = Some(run.clone());
                ev.run = Some(run);
                true
            }
            (None, _) => false,
        };
        (run_is_new || !ev.task_runs.is_empty()).then_some(ev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(state: pb::RunState, done: u32) -> pb::FlowRun {
        pb::FlowRun {
            id: "r".into(),
            state: state as i32,
            tasks_done: done,
            tasks_total: 3,
            ..Default::default()
        }
    }

    fn task(name: &str, state: pb::TaskState, attempt: u32) -> pb::TaskRun {
        pb::TaskRun {
            run_id: "r".into(),
            task: name.into(),
            map_index: -1,
            state: state as i32,
            attempt,
            ..Default::default()
        }
    }

    fn ev(run: pb::FlowRun, task_runs: Vec<pb::TaskRun>) -> pb::RunEvent {
        pb::RunEvent {
            run: Some(run),
            task_runs,
        }
    }

    #[test]
    fn a_resumed_snapshot_brings_only_what_is_new() {
        use pb::{RunState::*, TaskState};
        let mut seen = Seen::default();
        let a1 = task("a", TaskState::Running, 1);
        assert!(seen
            .admit(ev(
                run(Running, 0),
                vec![a1.clone(), task("b", TaskState::Pending, 1)]
            ))
            .is_some());
        let a_done = task("a", TaskState::Completed, 1);
        assert!(seen
            .admit(ev(run(Running, 1), vec![a_done.clone()]))
            .is_some());
        // The new leader's first event: the whole run again, "b" now running.
        let b2 = task("b", TaskState::Running, 2);
        let got = seen
            .admit(ev(
                run(Running, 1),
                vec![a_done.clone(), task("b", TaskState::Pending, 1), b2.clone()],
            ))
            .unwrap();
        assert_eq!(got.task_runs, vec![b2.clone()]);
        // Nothing new at all: dropped. An older attempt: dropped. A step back within an
        // attempt is news (a retried task is Ready again before its next attempt).
        assert!(seen.admit(ev(run(Running, 1), vec![a_done])).is_none());
        assert!(seen
            .admit(ev(run(Running, 1), vec![task("b", TaskState::Running, 1)]))
            .is_none());
        assert!(seen.admit(ev(run(Running, 1), vec![a1])).is_some());
        // A run that goes back is shown as it was last seen.
        let got = seen
            .admit(ev(run(Pending, 0), vec![task("c", TaskState::Ready, 1)]))
            .unwrap();
        assert_eq!(progress(got.run.as_ref().unwrap()), (3, 1));
        assert!(seen.admit(ev(run(Completed, 3), vec![])).is_some());
    }
}
