//! The engine's host: one task owning the [`Engine`], fed by a command channel. Each step
//! drains every waiting command, lets the engine tick and dispatch, and commits the
//! resulting state operations in one batch (group commit). What the step sends (worker
//! messages, answers to clients, watch events, archives) is prepared from the engine as the
//! step left it, and held until that commit is durable. With a store that pipelines
//! commits the next steps run meanwhile; their commits land, and their effects go out, in
//! order, and a failed commit drops its own effects and every later step's.

use crate::engine::query::{TaskPage, TaskQuery};
use crate::engine::{Engine, EngineError, NewRun, Outcome, WorkerRegistration};
use crate::store::{StateStore, Submitted};
use baton_common::flow::FlowSpec;
use baton_common::ids::{AttemptKey, WorkerId};
use baton_common::result_store::ResultStore;
use baton_common::time::now_ms;
use baton_proto as pb;
use pb::worker_message::Msg as Up;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

type Reply<T> = oneshot::Sender<Result<T, EngineError>>;

/// What a step does once its commit is durable (sends a message, answers a client, starts
/// an archive's write).
type Deferred = Box<dyn FnOnce(&mut Actor) + Send>;

/// A read answered from the state a step leaves, sent once that state is durable.
type AfterCommit = Box<dyn FnOnce(&Engine) -> Deferred + Send>;

/// Steps whose commits may be in flight at once; past this the actor waits for the oldest.
const MAX_IN_FLIGHT: usize = 64;

/// A step whose commit is in flight.
struct InFlight {
    ticket: crate::store::Ticket,
    /// What it sends once durable.
    effects: Vec<Deferred>,
    /// Its operations, and when they were submitted (for metrics).
    ops: usize,
    since: std::time::Instant,
}

/// Answers `reply` with `r` once the step is durable.
fn answer<T: Send + 'static>(reply: Reply<T>, r: Result<T, EngineError>) -> Deferred {
    Box::new(move |_| {
        let _ = reply.send(r);
    })
}

/// A watcher's channel of run events.
pub type WatchTx = mpsc::Sender<Result<pb::RunEvent, tonic::Status>>;

/// A client following a run.
struct Watcher {
    tx: WatchTx,
    with_task_runs: bool,
}

/// What the services ask of the engine.
pub enum Command {
    /// A flow definition, whether to switch its schedule on → (version, new, schedule).
    RegisterFlow(FlowSpec, bool, Reply<(u32, bool, Option<pb::Schedule>)>),
    /// (project, flow, active) → the schedule.
    SetSchedule(String, String, bool, Reply<pb::Schedule>),
    /// (tag, limit) → the limit.
    SetLimit(String, u32, Reply<pb::ConcurrencyLimit>),
    /// tag → whether there was a limit.
    DeleteLimit(String, Reply<bool>),
    ListLimits(Reply<Vec<pb::ConcurrencyLimit>>),
    CreateRun(NewRun, Reply<(pb::FlowRun, bool)>),
    GetRun(String, Reply<pb::FlowRun>),
    ListRuns(usize, Reply<Vec<pb::FlowRun>>),
    /// A page of a run's task runs as the query asks, with its counts.
    TaskQuery(String, TaskQuery, Reply<TaskPage>),
    CancelRun(String, Reply<pb::FlowRun>),
    /// Registered flows of a project ("" for all).
    ListFlows(String, Reply<Vec<pb::FlowSummary>>),
    /// (project, flow, version) → that version's definition.
    GetFlow(String, String, u32, Reply<pb::GetFlowResponse>),
    ListWorkers(Reply<Vec<pb::WorkerInfo>>),
    /// Watch a run; `true` to receive changed task runs too.
    Watch(String, bool, WatchTx, Reply<()>),
    WorkerConnected(
        WorkerRegistration,
        u64,
        mpsc::UnboundedSender<pb::SchedulerMessage>,
    ),
    WorkerMessage(WorkerId, u64, Up),
    WorkerDisconnected(WorkerId, u64),
    /// A large result was read back from the store.
    ResultLoaded(WorkerId, u64, AttemptKey, Outcome),
    /// A finished run's archive is in the result store.
    Archived(String, usize),
    /// A finished run's archive could not be written.
    ArchiveAbandoned(String),
    /// Answers once the run's archive is in the result store (`true`), or at once
    /// (`false`) when it is not being written.
    AwaitArchive(String, Reply<bool>),
    /// What live state references in the result store (for garbage collection).
    Referenced(Reply<crate::engine::Referenced>),
}

/// A handle to send commands to the actor.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<Command>,
    /// The log keeper of this leader.
    pub logs: crate::logs::Logs,
}

impl Handle {
    /// Sends a command and awaits its reply.
    pub async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, crate::Error> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .await
            .map_err(|_| crate::Error::ShuttingDown)?;
        Ok(rx.await.map_err(|_| crate::Error::ShuttingDown)??)
    }

    /// Queues a command without waiting (tests: several commands into one step).
    #[cfg(test)]
    pub fn try_tell(&self, cmd: Command) {
        let _ = self.tx.try_send(cmd);
    }

    /// Sends a command that has no reply.
    pub async fn tell(&self, cmd: Command) -> Result<(), crate::Error> {
        self.tx
            .send(cmd)
            .await
            .map_err(|_| crate::Error::ShuttingDown)
    }
}

mod archive;
mod results;
mod traces;
mod watch;

struct Actor {
    engine: Engine,
    state: Arc<dyn StateStore>,
    results: Arc<dyn ResultStore>,
    sessions: HashMap<WorkerId, (u64, mpsc::UnboundedSender<pb::SchedulerMessage>)>,
    watchers: HashMap<String, Vec<Watcher>>,
    after_commit: Vec<AfterCommit>,
    /// Watches to open once this step is committed.
    new_watches: Vec<(String, bool, WatchTx, Reply<()>)>,
    self_tx: mpsc::Sender<Command>,
    logs: crate::logs::Logs,
    /// The actor's background work (archive and result reads and writes, final watch
    /// events): waited for, for a bounded time, when the actor stops.
    tasks: tokio_util::task::TaskTracker,
    /// Readers waiting for the archive of a sealed run.
    awaiting: HashMap<String, Vec<Reply<bool>>>,
    /// Steps whose commits are in flight, oldest first, with what each sends once durable.
    in_flight: std::collections::VecDeque<InFlight>,
    /// When the metrics' gauges were last refreshed.
    gauges_at: std::time::Instant,
    /// When this leader's actor started (garbage collection waits for workers to settle).
    started: std::time::Instant,
    /// Spans of runs and attempts, while traces are exported.
    traces: traces::RunTraces,
    /// Spans of attempts whose results this step commits, and of those commits: closed
    /// once the step is durable.
    committing: Vec<(tracing::Span, tracing::Span)>,
    /// Fault injection: stop after this step, as after a failed write.
    stop_on_its_own: bool,
}

/// Starts the actor; it stops when `shutdown` is cancelled or its state store fences it.
pub fn spawn(
    engine: Engine,
    state: Arc<dyn StateStore>,
    results: Arc<dyn ResultStore>,
    shutdown: CancellationToken,
) -> (Handle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(65_536);
    let logs = crate::logs::Logs::spawn(results.clone(), shutdown.clone());
    let actor = Actor {
        engine,
        state,
        results,
        sessions: HashMap::new(),
        watchers: HashMap::new(),
        after_commit: Vec::new(),
        new_watches: Vec::new(),
        self_tx: tx.clone(),
        logs: logs.clone(),
        tasks: tokio_util::task::TaskTracker::new(),
        awaiting: HashMap::new(),
        in_flight: std::collections::VecDeque::new(),
        gauges_at: std::time::Instant::now(),
        started: std::time::Instant::now(),
        traces: traces::RunTraces::default(),
        committing: Vec::new(),
        stop_on_its_own: false,
    };
    let join = tokio::spawn(actor.run(rx, shutdown));
    (Handle { tx, logs }, join)
}

impl Actor {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>, shutdown: CancellationToken) {
        loop {
            let now = now_ms();
            let wait = self
                .engine
                .next_deadline()
                .map(|d| (d - now).clamp(0, 250))
                .unwrap_or(250) as u64;
            let room = self.in_flight.len() < MAX_IN_FLIGHT;
            tokio::select! {
                landed = oldest(&mut self.in_flight), if !self.in_flight.is_empty() => {
                    if let Err(e) = landed {
                        crate::metrics::get().commit_failed();
                        tracing::error!(error = %e, "state commit failed; stepping down");
                        shutdown.cancel();
                        break;
                    }
                    if let Some(step) = self.in_flight.pop_front() {
                        crate::metrics::get().committed(step.ops, step.since.elapsed());
                        self.release(step.effects);
                    }
                    continue;
                }
                cmd = rx.recv(), if room => {
                    let Some(cmd) = cmd else { break };
                    self.handle(cmd);
                    let mut n = 0;
                    while n < 8192 {
                        match rx.try_recv() {
                            Ok(cmd) => self.handle(cmd),
                            Err(_) => break,
                        }
                        n += 1;
                    }
                }
                _ = tokio::time::sleep(std::time::Duration::from_millis(wait)), if room => {}
                _ = shutdown.cancelled() => {
                    self.land_in_flight().await;
                    break;
                }
            }
            if self.stop_on_its_own {
                break;
            }
            let now = self.clock();
            self.engine.tick(now);
            self.engine.dispatch(now);
            if let Err(e) = self.flush().await {
                tracing::error!(error = %e, "state commit failed; stepping down");
                shutdown.cancel();
                break;
            }
        }
        self.in_flight.clear();
        self.tasks.close();
        let drain = std::time::Duration::from_millis(crate::config::defaults::DRAIN_MS);
        if tokio::time::timeout(drain, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                left = self.tasks.len(),
                "background work still running after {} ms; left behind",
                drain.as_millis()
            );
        }
        tracing::info!("engine stopped");
    }

    /// Sends what a durable step held back.
    fn release(&mut self, effects: Vec<Deferred>) {
        for d in effects {
            d(self);
        }
    }

    /// On shutdown: lets the commits in flight land (for a bounded time) and sends what
    /// they held back; what has not landed by then is dropped, unacknowledged.
    async fn land_in_flight(&mut self) {
        let limit = std::time::Duration::from_millis(crate::config::defaults::DRAIN_MS);
        let deadline = tokio::time::Instant::now() + limit;
        while let Some(step) = self.in_flight.pop_front() {
            match tokio::time::timeout_at(deadline, step.ticket).await {
                Ok(Ok(())) => self.release(step.effects),
                _ => {
                    self.in_flight.clear();
                    return;
                }
            }
        }
    }

    /// Sets the engine's microsecond clock; returns the time in milliseconds.
    fn clock(&mut self) -> i64 {
        let us = baton_common::time::now_us();
        self.engine.set_clock_us(us);
        us.div_euclid(1000)
    }

    fn handle(&mut self, cmd: Command) {
        let now = self.clock();
        match cmd {
            Command::RegisterFlow(spec, schedule_active, reply) => {
                let (project, flow) = (spec.project.clone(), spec.name.clone());
                let key = format!("flows/{}/{}", spec.project, spec.name);
                let json = serde_json::to_vec_pretty(&spec);
                let (version, created) = self.engine.register_flow(spec, schedule_active, now);
                let r = (version, created, self.engine.schedule_view(&project, &flow));
                let store = self.results.clone();
                let tasks = self.tasks.clone();
                self.after_commit.push(Box::new(move |_| {
                    Box::new(move |_| {
                        if !r.1 {
                            let _ = reply.send(Ok(r));
                            return;
                        }
                        // A new version is also kept in the object store, versioned, as flow
                        // storage; the client hears back once it is there.
                        tasks.spawn(async move {
                        let key = format!("{key}/{}.json", r.0);
                        let put = match json {
                            Ok(json) => store.put(&key, json.into(), "application/json").await,
                            Err(e) => Err(baton_common::Error::InvalidArgument(e.to_string())),
                        };
                        match put {
                            Ok(_) | Err(baton_common::Error::AlreadyExists(_)) => {}
                            Err(e) => {
                                tracing::warn!(%key, error = %e, "cannot store the flow definition")
                            }
                        }
                        let _ = reply.send(Ok(r));
                    });
                    })
                }));
            }
            Command::CreateRun(mut req, reply) => {
                let traceparent = std::mem::take(&mut req.traceparent);
                match self.engine.create_run(req, now) {
                    Ok((id, created)) => {
                        if created {
                            self.traces.caller(&id.0, traceparent);
                        }
                        self.after_commit.push(Box::new(move |e: &Engine| {
                            let run = match e.get_run(&id.0) {
                                // A finished run known only from the archive: the service reads it.
                                Err(_) if !created => Ok(pb::FlowRun {
                                    id: id.0,
                                    ..Default::default()
                                }),
                                other => other,
                            };
                            answer(reply, run.map(|r| (r, created)))
                        }))
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            // Reads are answered once this step's changes are committed, so that nobody
            // sees a state that a failed commit (a deposed leader) never made durable.
            Command::GetRun(id, reply) => self
                .after_commit
                .push(Box::new(move |e| answer(reply, e.get_run(&id)))),
            Command::ListFlows(project, reply) => self
                .after_commit
                .push(Box::new(move |e| answer(reply, Ok(e.list_flows(&project))))),
            Command::GetFlow(project, flow, version, reply) => {
                self.after_commit.push(Box::new(move |e| {
                    answer(reply, e.get_flow(&project, &flow, version))
                }))
            }
            Command::ListRuns(limit, reply) => self
                .after_commit
                .push(Box::new(move |e| answer(reply, Ok(e.list_runs(limit))))),
            Command::TaskQuery(id, q, reply) => self
                .after_commit
                .push(Box::new(move |e| answer(reply, e.task_query(&id, &q)))),
            Command::CancelRun(id, reply) => match self.engine.cancel_run(&id, now) {
                Ok(()) => self
                    .after_commit
                    .push(Box::new(move |e: &Engine| answer(reply, e.get_run(&id)))),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Command::SetSchedule(project, flow, active, reply) => {
                match self.engine.set_schedule(&project, &flow, active, now) {
                    Ok(s) => self
                        .after_commit
                        .push(Box::new(move |_| answer(reply, Ok(s)))),
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Command::SetLimit(tag, limit, reply) => match self.engine.set_limit(&tag, limit) {
                Ok(l) => self
                    .after_commit
                    .push(Box::new(move |_| answer(reply, Ok(l)))),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Command::DeleteLimit(tag, reply) => {
                let deleted = self.engine.delete_limit(&tag);
                self.after_commit
                    .push(Box::new(move |_| answer(reply, Ok(deleted))))
            }
            Command::ListLimits(reply) => self
                .after_commit
                .push(Box::new(move |e| answer(reply, Ok(e.list_limits())))),
            Command::ListWorkers(reply) => {
                let _ = reply.send(Ok(self.engine.workers()));
            }
            Command::Watch(id, tasks, tx, reply) => self.new_watches.push((id, tasks, tx, reply)),
            Command::WorkerConnected(reg, session, tx) => {
                tracing::info!(worker = %reg.id, session, labels = ?reg.labels, slots = reg.resources.slots, "worker connected");
                self.sessions.insert(reg.id.clone(), (session, tx));
                self.engine.worker_connected(reg, session, now);
            }
            Command::WorkerDisconnected(id, session) => {
                if self.sessions.get(&id).is_some_and(|(s, _)| *s == session) {
                    tracing::info!(worker = %id, session, "worker disconnected");
                    self.sessions.remove(&id);
                }
                self.engine.worker_disconnected(&id, session, now);
            }
            Command::WorkerMessage(id, session, msg) => {
                self.engine.worker_seen(&id, session, now);
                self.worker_message(&id, session, msg, now);
            }
            Command::ResultLoaded(id, session, key, outcome) => {
                self.engine.task_finished(&id, session, &key, outcome, now);
            }
            Command::Archived(run, size) => self.archived(&run, size),
            Command::ArchiveAbandoned(run) => self.archive_abandoned(&run),
            Command::AwaitArchive(run, reply) => self.await_archive(run, reply),
            Command::Referenced(reply) => {
                let led = self.started.elapsed();
                self.after_commit
                    .push(Box::new(move |e| answer(reply, Ok(e.referenced(led)))))
            }
        }
    }

    fn worker_message(&mut self, id: &WorkerId, session: u64, m: Up, now: i64) {
        match m {
            // A worker reports only on attempts it was given: anything else is ignored.
            Up::Started(s) => {
                if let Some(k) = s.key.as_ref() {
                    let key = AttemptKey::from(k);
                    if self.engine.holds(id, session, &key) {
                        self.engine.task_started(&key, s.at_ms, s.at_us);
                    }
                }
            }
            Up::Finished(mut f) => {
                let ahead = std::mem::take(&mut f.ahead);
                if !ahead.is_empty() {
                    self.engine.ran_ahead(id, session, ahead);
                }
                if let Some(k) = f.key.as_ref() {
                    let key = AttemptKey::from(k);
                    if baton_common::traces::on() {
                        self.committing.extend(self.traces.finished(&key));
                    }
                    self.logs.ended(key);
                }
                self.finished(id, session, f, now)
            }
            Up::Logs(mut l) => {
                let before = l.lines.len();
                // A batch's lines mostly share a key: each key is looked up once in a row.
                let mut last: Option<(pb::AttemptKey, bool)> = None;
                l.lines.retain(|line| {
                    let Some(k) = line.key.as_ref() else {
                        return false;
                    };
                    match &last {
                        Some((seen, held)) if seen == k => *held,
                        _ => {
                            let held = self.engine.holds(id, session, &AttemptKey::from(k));
                            last = Some((k.clone(), held));
                            held
                        }
                    }
                });
                if l.lines.len() < before {
                    tracing::debug!(worker = %id, dropped = before - l.lines.len(), "ignoring log lines for attempts this worker was not given");
                }
                if !l.lines.is_empty() {
                    self.logs.lines(l);
                }
            }
            Up::Draining(_) => self.engine.worker_draining(id, session),
            Up::Batch(b) => {
                for inner in b.messages.into_iter().filter_map(|m| m.msg) {
                    self.worker_message(id, session, inner, now);
                }
            }
            Up::Heartbeat(_) | Up::Register(_) => {}
        }
    }

    /// Queues the step's commit, with what it sends once durable: worker messages (one
    /// message or batch per worker), answers, watch events, archives. A store that does not
    /// pipeline commits is waited for here.
    async fn flush(&mut self) -> Result<(), crate::Error> {
        let mut fx = self.engine.take_effects();
        if let Some(e) = fx.encode_errors.first() {
            // Committing the rest would store a state with records missing.
            return Err(crate::Error::Internal(format!(
                "{e} ({} records in all)",
                fx.encode_errors.len()
            )));
        }
        let epoch = self.engine.epoch();
        let metrics = crate::metrics::get();
        metrics.step(&fx.stats);
        if self.gauges_at.elapsed() >= crate::metrics::GAUGE_EVERY {
            self.gauges_at = std::time::Instant::now();
            metrics.gauges(&self.engine);
        }
        let mut out: Vec<Deferred> = Vec::new();
        if baton_common::traces::on() {
            self.trace(&mut fx);
        }
        let mut per_worker: HashMap<WorkerId, (u64, Vec<pb::SchedulerMessage>)> = HashMap::new();
        for o in fx.outgoing {
            if matches!(o.msg.msg, Some(pb::scheduler_message::Msg::Welcome(_))) {
                // A welcome opens a session on its own, ahead of anything batched.
                out.push(Box::new(move |a: &mut Actor| {
                    a.send(&o.worker, o.session, o.msg)
                }));
                continue;
            }
            per_worker
                .entry(o.worker)
                .or_insert_with(|| (o.session, Vec::new()))
                .1
                .push(o.msg);
        }
        for (worker, (session, mut msgs)) in per_worker {
            let msg = if msgs.len() == 1 {
                msgs.pop()
            } else {
                Some(pb::SchedulerMessage {
                    epoch,
                    msg: Some(pb::scheduler_message::Msg::Batch(pb::SchedulerBatch {
                        messages: msgs,
                    })),
                })
            };
            if let Some(msg) = msg {
                out.push(Box::new(move |a: &mut Actor| a.send(&worker, session, msg)));
            }
        }
        for f in std::mem::take(&mut self.after_commit) {
            out.push(f(&self.engine));
        }
        if !self.watchers.is_empty() {
            self.notify(&fx.changed_runs, &fx.changed_task_runs, &mut out);
        }
        for (id, tasks, tx, reply) in std::mem::take(&mut self.new_watches) {
            self.watch(id, tasks, tx, reply, &mut out);
        }
        // Sealed once the step is durable and its watchers are told: encoding a large
        // run's archive takes a while, and the run's end must not wait for it.
        for run in fx.finished_runs {
            out.push(Box::new(move |a: &mut Actor| {
                let mut write = Vec::new();
                a.archive(&run, &mut write);
                for f in write {
                    f(a);
                }
            }));
        }
        if !self.committing.is_empty() {
            let spans = std::mem::take(&mut self.committing);
            for (_, commit) in &spans {
                commit.record("operations", fx.ops.len());
            }
            out.push(Box::new(move |_| {
                // The commit's span ends first, then its attempt's.
                for (attempt, commit) in spans {
                    drop(commit);
                    drop(attempt);
                }
            }));
        }
        if fx.ops.is_empty() && self.in_flight.is_empty() {
            self.release(out);
            return Ok(());
        }
        // One commit per step: the store decides how to write it (see `StateStore::commit`).
        let (ops, since) = (fx.ops.len(), std::time::Instant::now());
        match self.state.submit(epoch, fx.ops) {
            Submitted::Queued(ticket) => self.in_flight.push_back(InFlight {
                ticket,
                effects: out,
                ops,
                since,
            }),
            Submitted::NotPipelined(all) => {
                if let Err(e) = self.state.commit(epoch, all).await {
                    metrics.commit_failed();
                    return Err(e.into());
                }
                metrics.committed(ops, since.elapsed());
                self.release(out);
            }
        }
        Ok(())
    }

    /// Opens the spans of runs seen for the first time and of attempts being dispatched
    /// (their `traceparent` goes in `Assign`), and closes those of runs that ended.
    fn trace(&mut self, fx: &mut crate::engine::Effects) {
        for id in &fx.changed_runs {
            if self.traces.knows(&id.0) {
                continue;
            }
            // A run seen again after its span closed (a late report touches it) gets no new
            // span: nothing would close it. One that ends in this very step is closed below.
            match self.engine.get_run(&id.0) {
                Ok(run) if fx.finished_runs.contains(id) || !baton_client::is_finished(&run) => {
                    self.traces.opened(&run)
                }
                _ => {}
            }
        }
        for o in &mut fx.outgoing {
            if let Some(pb::scheduler_message::Msg::Assign(a)) = o.msg.msg.as_mut() {
                self.traces.assigned(a, &o.worker.0);
            }
        }
        for id in &fx.finished_runs {
            let state = self
                .engine
                .get_run(&id.0)
                .ok()
                .and_then(|r| pb::RunState::try_from(r.state).ok())
                .map_or("", |s| s.as_str_name());
            self.traces.ended(&id.0, state);
        }
    }

    /// Sends a message on a worker's stream, if that session is still the worker's.
    fn send(&self, worker: &WorkerId, session: u64, msg: pb::SchedulerMessage) {
        if let Some((s, tx)) = self.sessions.get(worker) {
            if *s == session {
                let _ = tx.send(msg);
            }
        }
    }
}

/// The oldest commit in flight.
async fn oldest(
    in_flight: &mut std::collections::VecDeque<InFlight>,
) -> Result<(), crate::store::StoreError> {
    match in_flight.front_mut() {
        Some(step) => (&mut step.ticket).await,
        None => std::future::pending().await,
    }
}
