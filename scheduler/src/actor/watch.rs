//! Clients following runs: the first event when a watch opens, then the changes of each
//! committed step, each built from the state its step left and sent once that is durable.

use super::{Actor, Deferred, Reply, WatchTx, Watcher};
use crate::engine::TrRef;
use baton_proto as pb;
use std::collections::HashMap;

impl Actor {
    pub(super) fn watch(
        &mut self,
        id: String,
        with_task_runs: bool,
        tx: WatchTx,
        reply: Reply<()>,
        out: &mut Vec<Deferred>,
    ) {
        let first = self.engine.get_run(&id).and_then(|run| {
            let task_runs = if with_task_runs {
                self.engine.task_runs(&id, false)?
            } else {
                Vec::new()
            };
            Ok(pb::RunEvent {
                run: Some(run),
                task_runs,
            })
        });
        match first {
            Ok(ev) => {
                if !is_terminal(&ev) {
                    self.watchers.entry(id).or_default().push(Watcher {
                        tx: tx.clone(),
                        with_task_runs,
                    });
                }
                out.push(Box::new(move |_| {
                    let _ = tx.try_send(Ok(ev));
                    let _ = reply.send(Ok(()));
                }));
            }
            Err(e) => out.push(super::answer(reply, Err(e))),
        }
    }

    pub(super) fn notify(
        &mut self,
        runs: &[baton_common::ids::RunId],
        trs: &[TrRef],
        out: &mut Vec<Deferred>,
    ) {
        let mut by_run: HashMap<&str, Vec<TrRef>> = HashMap::new();
        for &t in trs {
            if let Some(id) = self.engine.run_id_of(t) {
                if self.watchers.contains_key(id) {
                    by_run.entry(id).or_default().push(t);
                }
            }
        }
        for id in runs {
            let Some(watchers) = self.watchers.get_mut(&id.0) else {
                continue;
            };
            let Ok(run) = self.engine.get_run(&id.0) else {
                continue;
            };
            let refs = by_run.remove(id.0.as_str()).unwrap_or_default();
            let bare = pb::RunEvent {
                run: Some(run),
                task_runs: Vec::new(),
            };
            let full = if !refs.is_empty() && watchers.iter().any(|w| w.with_task_runs) {
                Some(pb::RunEvent {
                    run: bare.run.clone(),
                    task_runs: self.engine.task_run_views(&refs),
                })
            } else {
                None
            };
            let terminal = is_terminal(&bare);
            let event_for = |w: &Watcher| match (&full, w.with_task_runs) {
                (Some(f), true) => f.clone(),
                _ => bare.clone(),
            };
            if terminal {
                let last: Vec<_> = watchers
                    .drain(..)
                    .map(|w| (w.tx.clone(), event_for(&w)))
                    .collect();
                out.push(Box::new(move |a: &mut Actor| {
                    for (tx, ev) in last {
                        a.tasks.spawn(async move {
                            let _ = tx.send(Ok(ev)).await;
                        });
                    }
                }));
            } else {
                watchers.retain(|w| !w.tx.is_closed());
                let events: Vec<_> = watchers
                    .iter()
                    .map(|w| (w.tx.clone(), event_for(w)))
                    .collect();
                out.push(Box::new(move |_| {
                    for (tx, ev) in events {
                        // A watcher that does not keep up misses events, not the run's end.
                        let _ = tx.try_send(Ok(ev));
                    }
                }));
            }
            if watchers.is_empty() {
                self.watchers.remove(&id.0);
            }
        }
    }
}

pub(super) fn is_terminal(ev: &pb::RunEvent) -> bool {
    ev.run.as_ref().is_some_and(|r| {
        matches!(
            pb::RunState::try_from(r.state),
            Ok(pb::RunState::Completed | pb::RunState::Failed | pb::RunState::Cancelled)
        )
    })
}
