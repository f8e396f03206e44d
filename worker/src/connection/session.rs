//! One `Connect` stream: connect, register, await the welcome, resend unacknowledged
//! results, then serve assignments, cancellations and acknowledgements while reporting
//! starts, log lines, results and heartbeats.

use super::outbound::{log_batch, Outbound};
use super::{writer, Backoff, Inbox, Running, Worker};
use crate::executor;
use crate::gpu::Gpu;
use crate::task::{Grant, TaskError, TaskLog};
use baton_common::ids::AttemptKey;
use baton_common::result_store::open_store;
use baton_common::time::now_ms;
use baton_proto as proto;
use proto::scheduler_message::Msg as Down;
use proto::worker_message::Msg as Up;
use proto::worker_service_client::WorkerServiceClient;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;
use tracing::Instrument;

/// The largest message either side may send on the stream.
use baton_proto::limits::MAX_MESSAGE_BYTES;
/// HTTP/2 flow-control window of the stream, so that batches flow without round trips.
const STREAM_WINDOW: u32 = 4 << 20;
/// Messages queued for the writer.
const OUTBOUND_CAPACITY: usize = 8192;
/// Frames queued between the writer and the transport; small, so that messages batch up.
const WIRE_CAPACITY: usize = 4;
/// Longest time from dialling to the welcome.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(5);
const MIN_HANDSHAKE: Duration = Duration::from_millis(200);
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(2);
const MIN_HEARTBEAT: Duration = Duration::from_millis(100);
/// How long a drained worker waits for its last messages to leave and the leader to close.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Metadata key of a refusal (any status) that names the leader's address: the worker dials
/// that address next.
pub use baton_proto::limits::LEADER_METADATA;

/// The span of an attempt, with target `$target`.
macro_rules! attempt_span {
    ($target:literal, $worker:expr, $key:expr) => {
        tracing::info_span!(
            target: $target,
            "attempt",
            worker = %$worker,
            run = %$key.run,
            task = %$key.task,
            map_index = $key.map_index,
            attempt = $key.attempt,
            trace_id = tracing::field::Empty
        )
    };
}

/// How a session ended.
pub(super) enum End {
    /// The drain is complete.
    Drained,
    Lost(Lost),
}

/// Why a session ended early.
pub(super) struct Lost {
    pub reason: String,
    /// Where the refusing replica says the leader is.
    pub leader: Option<String>,
    /// The scheduler refused this worker for a reason a retry will not cure soon.
    pub fatal: bool,
}

impl Lost {
    pub(super) fn new(reason: impl Into<String>) -> Self {
        Lost {
            reason: reason.into(),
            leader: None,
            fatal: false,
        }
    }
}

impl From<tonic::Status> for Lost {
    fn from(status: tonic::Status) -> Self {
        use tonic::Code;
        let leader = status
            .metadata()
            .get(LEADER_METADATA)
            .and_then(|v| v.to_str().ok())
            .filter(|a| !a.is_empty())
            .map(|a| {
                if a.contains("://") {
                    a.to_string()
                } else {
                    format!("http://{a}")
                }
            });
        let fatal = matches!(
            status.code(),
            Code::InvalidArgument
                | Code::Unauthenticated
                | Code::PermissionDenied
                | Code::Unimplemented
        );
        // A transport failure carries its cause (a refused TLS certificate, say) as source.
        let cause = std::error::Error::source(&status)
            .map(|e| format!(" ({})", error_chain(e)))
            .unwrap_or_default();
        Lost {
            reason: format!("{:?}: {}{cause}", status.code(), status.message()),
            leader,
            fatal,
        }
    }
}

/// A stream that was welcomed.
struct Opened {
    inbound: tonic::Streaming<proto::SchedulerMessage>,
    out: Outbound,
    writer: tokio::task::JoinHandle<()>,
    heartbeat: Duration,
}

/// What woke the serving loop.
enum Event {
    Shutdown,
    Down(Result<Option<proto::SchedulerMessage>, tonic::Status>),
    Finished(AttemptKey, proto::Finished),
    Log(TaskLog),
    Heartbeat,
    Wake,
}

impl Worker {
    /// Runs one stream to `address` until it fails or the drain completes: open it, resend
    /// the unacknowledged results, serve.
    pub(super) async fn session(
        &mut self,
        address: &str,
        inbox: &mut Inbox,
        shutdown: &CancellationToken,
        backoff: &mut Backoff,
    ) -> End {
        // Stops this session's writer however the session ends.
        let stop = CancellationToken::new();
        let _stop_writer = stop.clone().drop_guard();
        let limit = self.handshake_limit();
        let opened = match tokio::time::timeout(limit, self.open(address, &stop)).await {
            Err(_) => {
                return End::Lost(Lost::new(format!(
                    "no welcome within {} ms",
                    limit.as_millis()
                )))
            }
            Ok(Err(lost)) => return End::Lost(lost),
            Ok(Ok(opened)) => opened,
        };
        let Opened {
            mut inbound,
            out,
            writer,
            heartbeat,
        } = opened;
        backoff.reset();
        tracing::info!(
            scheduler = %address,
            epoch = self.max_epoch,
            running = self.running.len(),
            unacknowledged = self.unacked.len(),
            "connected to leader"
        );
        let served = async {
            let pending: Vec<proto::Finished> = self.unacked.values().cloned().collect();
            for fin in pending {
                out.send(Up::Finished(fin)).await?;
            }
            self.serve(&mut inbound, &out, inbox, shutdown, heartbeat)
                .await
        };
        match served.await {
            Ok(()) => {
                // Close gracefully: flush what is queued, end our half, let the leader end its.
                drop(out);
                let _ = tokio::time::timeout(CLOSE_GRACE, writer).await;
                let _ = tokio::time::timeout(CLOSE_GRACE, async {
                    while let Ok(Some(_)) = inbound.message().await {}
                })
                .await;
                End::Drained
            }
            Err(lost) => End::Lost(lost),
        }
    }

    /// How long dialling may take: at most [`HANDSHAKE_LIMIT`], less when the lease or the
    /// drain needs attention sooner.
    fn handshake_limit(&self) -> Duration {
        match self.next_wakeup() {
            Some(w) => w
                .saturating_duration_since(Instant::now())
                .clamp(MIN_HANDSHAKE, HANDSHAKE_LIMIT),
            None => HANDSHAKE_LIMIT,
        }
    }

    /// Dials, registers and awaits the welcome.
    async fn open(&mut self, address: &str, stop: &CancellationToken) -> Result<Opened, Lost> {
        let keep_alive = self.keep_alive();
        let mut endpoint = Endpoint::from_shared(address.to_string()).map_err(|e| Lost {
            fatal: true,
            ..Lost::new(format!("invalid address: {e}"))
        })?;
        if address.starts_with("https://") {
            // The files are read at each dial: renewed certificates need no restart.
            let tls = self.config.tls.config().map_err(Lost::new)?;
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| Lost::new(format!("TLS: {e}")))?;
        }
        let endpoint = endpoint
            .connect_timeout(HANDSHAKE_LIMIT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(keep_alive)
            .keep_alive_timeout(keep_alive)
            .keep_alive_while_idle(true)
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(STREAM_WINDOW * 2);
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| Lost::new(error_chain(&e)))?;
        // Bounds what the worker accepts; what it sends is bounded by the scheduler.
        let mut client =
            WorkerServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
        let (out_tx, out_rx) = mpsc::channel(OUTBOUND_CAPACITY);
        let (wire_tx, wire_rx) = mpsc::channel(WIRE_CAPACITY);
        let writer = tokio::spawn(writer::run(out_rx, wire_tx, stop.clone()));
        let out = Outbound {
            tx: out_tx,
            stall: self.lease(),
        };
        out.send(Up::Register(self.register())).await?;
        let mut request = tonic::Request::new(ReceiverStream::new(wire_rx));
        if let Some(token) = &self.config.token {
            let value = format!("Bearer {}", token.expose())
                .parse()
                .map_err(|_| Lost {
                    fatal: true,
                    ..Lost::new("the token is not a valid header value (printable ASCII)")
                })?;
            request.metadata_mut().insert("authorization", value);
        }
        let mut inbound = client.connect(request).await?.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Lost::new("the scheduler closed the stream before its welcome"))?;
        let Some(Down::Welcome(welcome)) = first.msg else {
            return Err(Lost::new("the scheduler's first message was not a welcome"));
        };
        let heartbeat = self.welcome(first.epoch, welcome).await?;
        if self.drain.is_some() {
            out.send(Up::Draining(proto::Draining {})).await?;
        }
        Ok(Opened {
            inbound,
            out,
            writer,
            heartbeat,
        })
    }

    fn register(&self) -> proto::Register {
        let c = &self.config;
        proto::Register {
            worker_id: c.id.clone(),
            labels: c.labels.clone(),
            resources: Some(proto::Resources {
                slots: c.slots,
                gpus: c.gpus.len() as u32,
                memory_mb: c.memory_mb,
                devices: c.gpus.iter().map(Gpu::to_wire).collect(),
                gpu_memory_mb: 0,
            }),
            running: self
                .running
                .keys()
                .chain(self.unacked.keys())
                .map(Into::into)
                .collect(),
            max_epoch: self.max_epoch,
            gpus_held: self.gpus_held(),
            executors: [
                (c.allow_process, baton_common::flow::PROCESS_EXECUTOR),
                (c.allow_container, baton_common::flow::CONTAINER_EXECUTOR),
            ]
            .into_iter()
            .filter(|(allowed, _)| *allowed)
            .map(|(_, name)| name.to_string())
            .collect(),
        }
    }

    /// Applies a welcome; returns the heartbeat interval. A welcome from a leader older than
    /// the newest seen is refused (the stream is dropped and the worker dials on).
    async fn welcome(&mut self, epoch: u64, welcome: proto::Welcome) -> Result<Duration, Lost> {
        if epoch < self.max_epoch {
            tracing::warn!(
                epoch,
                max_epoch = self.max_epoch,
                "refusing the welcome of an older leader"
            );
            return Err(Lost::new(format!(
                "the scheduler's epoch {epoch} is older than epoch {} already seen",
                self.max_epoch
            )));
        }
        self.max_epoch = epoch;
        if self
            .store
            .as_ref()
            .is_none_or(|(uri, _)| *uri != welcome.result_store)
        {
            let store = open_store(&welcome.result_store).await.map_err(|e| Lost {
                fatal: true,
                ..Lost::new(format!(
                    "cannot open the result store `{}`: {e}",
                    welcome.result_store
                ))
            })?;
            let store = crate::metrics::get().store.wrap(store);
            self.store = Some((welcome.result_store.clone(), store));
        }
        for k in &welcome.unknown {
            let key = AttemptKey::from(k);
            tracing::info!(attempt = %key, "the scheduler does not know this attempt, dropping it");
            self.forget(&key);
        }
        self.connected = true;
        crate::metrics::get().connected(true);
        self.heard_from_leader(Instant::now());
        Ok(match welcome.heartbeat_interval_ms {
            0 => DEFAULT_HEARTBEAT,
            ms => Duration::from_millis(ms).max(MIN_HEARTBEAT),
        })
    }

    /// Serves the stream until it fails (`Err`) or the drain completes (`Ok`).
    async fn serve(
        &mut self,
        inbound: &mut tonic::Streaming<proto::SchedulerMessage>,
        out: &Outbound,
        inbox: &mut Inbox,
        shutdown: &CancellationToken,
        heartbeat: Duration,
    ) -> Result<(), Lost> {
        let mut ticker = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self.tick(Instant::now()) {
                return Ok(());
            }
            let wake = self.next_wakeup();
            let event = tokio::select! {
                _ = shutdown.cancelled(), if self.drain.is_none() => Event::Shutdown,
                m = inbound.message() => Event::Down(m),
                Some((key, fin)) = inbox.finished.recv() => Event::Finished(key, fin),
                Some(line) = inbox.logs.recv() => Event::Log(line),
                _ = ticker.tick() => Event::Heartbeat,
                _ = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => Event::Wake,
            };
            match event {
                Event::Shutdown => {
                    self.begin_drain();
                    out.send(Up::Draining(proto::Draining {})).await?;
                }
                Event::Down(Ok(Some(msg))) => {
                    self.heard_from_leader(Instant::now());
                    self.on_message(msg, out).await?
                }
                Event::Down(Ok(None)) => return Err(Lost::new("the scheduler closed the stream")),
                Event::Down(Err(status)) => return Err(status.into()),
                Event::Finished(key, fin) => {
                    // An attempt's log lines are queued before its result: send them first.
                    while let Ok(line) = inbox.logs.try_recv() {
                        out.send_logs(log_batch(line, &mut inbox.logs))?;
                    }
                    // Its body has ended: its GPUs are free for waiting assignments.
                    let freed = self.gpu_holds.remove(&key).is_some();
                    if let Some(fin) = self.on_finished(key, fin) {
                        out.send(Up::Finished(fin)).await?;
                    }
                    if freed {
                        self.start_waiting(out).await?;
                    }
                }
                Event::Log(first) => out.send_logs(log_batch(first, &mut inbox.logs))?,
                Event::Heartbeat => {
                    out.send(Up::Heartbeat(proto::Heartbeat { at_ms: now_ms() }))
                        .await?
                }
                Event::Wake => {}
            }
        }
    }

    /// Handles one message (or batch) from the scheduler.
    async fn on_message(
        &mut self,
        msg: proto::SchedulerMessage,
        out: &Outbound,
    ) -> Result<(), Lost> {
        let mut flat = Vec::new();
        flatten(msg, 0, &mut flat);
        for (epoch, msg) in flat {
            if epoch < self.max_epoch {
                tracing::warn!(
                    epoch,
                    max_epoch = self.max_epoch,
                    "ignoring a message from an older leader"
                );
                continue;
            }
            self.max_epoch = epoch;
            match msg {
                Down::Assign(assign) => self.on_assign(assign, out).await?,
                Down::Cancel(cancel) => {
                    if let Some(k) = &cancel.key {
                        let error = if cancel.reason.is_empty() {
                            executor::CANCELLED.to_string()
                        } else {
                            format!("{}: {}", executor::CANCELLED, cancel.reason)
                        };
                        self.cancel(&AttemptKey::from(k), TaskError::fatal(error));
                    }
                }
                Down::Ack(ack) => {
                    if let Some(k) = &ack.key {
                        let key = AttemptKey::from(k);
                        if self.unacked.remove(&key).is_some() {
                            tracing::trace!(attempt = %key, committed = ack.committed, "result acknowledged");
                        }
                    }
                }
                Down::Welcome(_) => tracing::warn!("ignoring a second welcome on the same stream"),
                Down::Batch(_) => {}
            }
        }
        Ok(())
    }

    /// Starts an assigned attempt, unless draining or already running or finished.
    async fn on_assign(&mut self, assign: proto::Assign, out: &Outbound) -> Result<(), Lost> {
        let Some(proto_key) = assign.key.clone() else {
            tracing::warn!("ignoring an assignment without a key");
            return Ok(());
        };
        let key = AttemptKey::from(&proto_key);
        if self.drain.is_some() {
            tracing::debug!(attempt = %key, "draining, not starting the assignment");
            return Ok(());
        }
        if self.running.contains_key(&key) {
            tracing::debug!(attempt = %key, "attempt already running");
            return Ok(());
        }
        if let Some(fin) = self.unacked.get(&key) {
            return out.send(Up::Finished(fin.clone())).await;
        }
        if self
            .gpu_waiting
            .iter()
            .any(|a| a.key.as_ref() == Some(&proto_key))
        {
            return Ok(());
        }
        if self.store.is_none() {
            tracing::warn!(attempt = %key, "no result store yet, not starting the assignment");
            return Ok(());
        }
        self.running.insert(
            key.clone(),
            Running {
                cancel: self.root.child_token(),
                reason: None,
                since: std::time::Instant::now(),
            },
        );
        crate::metrics::get().running(self.running.len());
        self.place(key, assign, out).await
    }

    /// Starts an admitted attempt on its GPUs, or lets it wait while another attempt's
    /// processes still hold one of them, or fails it when it names a GPU this worker lacks.
    async fn place(
        &mut self,
        key: AttemptKey,
        mut assign: proto::Assign,
        out: &Outbound,
    ) -> Result<(), Lost> {
        let wanted: Vec<u32> = assign
            .resources
            .iter()
            .flat_map(|r| r.devices.iter().map(|d| d.index))
            .collect();
        let mut pinned = Vec::with_capacity(wanted.len());
        for i in &wanted {
            match self.config.gpus.iter().find(|g| g.index == *i) {
                Some(g) => pinned.push(g.clone()),
                None => {
                    let error = TaskError::retryable(format!(
                        "the scheduler pinned GPU {i}, which this worker does not offer"
                    ));
                    let fin = executor::finished(&key, Err(error));
                    let _ = self.finished_tx.send((key, fin));
                    return Ok(());
                }
            }
        }
        let busy = self
            .gpu_holds
            .iter()
            .find(|(k, held)| **k != key && held.iter().any(|g| wanted.contains(g)));
        if let Some((holder, _)) = busy {
            tracing::info!(attempt = %key, holder = %holder, "waiting for GPUs still held by an ending attempt");
            self.gpu_waiting.push(assign);
            return Ok(());
        }
        let Some((_, store)) = &self.store else {
            return Ok(());
        };
        let Some(cancel) = self.running.get(&key).map(|r| r.cancel.clone()) else {
            return Ok(());
        };
        if !wanted.is_empty() {
            self.gpu_holds.insert(key.clone(), wanted);
        }
        let grant = Grant {
            pinned: pinned.into(),
            worker_has_gpus: !self.config.gpus.is_empty(),
            processes: self.config.allow_process,
            containers: self.containers.clone(),
            secrets: self.config.secrets.clone(),
        };
        // Exported (under the scheduler's span of this attempt) only when the scheduler
        // asks for it: traces are on and the attempt is sampled. Otherwise the span has a
        // target the trace exporter does not take, and only logs see it.
        let span = if baton_common::traces::sampled(&assign.traceparent) {
            let span = attempt_span!("baton_worker::traced", self.config.id, key);
            baton_common::traces::set_parent(&span, &assign.traceparent);
            // Log lines of the attempt carry its trace.
            if let Some(trace) = assign.traceparent.split('-').nth(1) {
                span.record("trace_id", trace);
            }
            span
        } else {
            attempt_span!("baton_worker::untraced", self.config.id, key)
        };
        let body = {
            let (key, store) = (key.clone(), store.clone());
            let (finished, logs) = (self.finished_tx.clone(), self.logs_tx.clone());
            let successors = std::mem::take(&mut assign.successors);
            let draining = self.draining.clone();
            async move {
                let mut fin =
                    executor::execute(key.clone(), assign, grant, store.clone(), cancel, logs)
                        .await;
                // The chain that follows, run ahead and reported with this result.
                if let Some(proto::finished::Outcome::Success(s)) = &fin.outcome {
                    let ahead = !successors.is_empty() && !draining.is_cancelled();
                    if ahead && !s.inline_value.is_empty() {
                        let value = s.inline_value.clone();
                        fin.ahead =
                            executor::run_ahead(&key, &value, successors, store.as_ref()).await;
                    }
                }
                let _ = finished.send((key, fin));
            }
        };
        tokio::spawn(body.instrument(span));
        let at_us = baton_common::time::now_us();
        out.send(Up::Started(proto::Started {
            key: Some((&key).into()),
            at_ms: at_us.div_euclid(1000),
            at_us,
        }))
        .await
    }

    /// Starts the assignments that waited for GPUs now free (a cancelled one reports so).
    async fn start_waiting(&mut self, out: &Outbound) -> Result<(), Lost> {
        for assign in std::mem::take(&mut self.gpu_waiting) {
            let Some(key) = assign.key.as_ref().map(AttemptKey::from) else {
                continue;
            };
            match self.running.get(&key) {
                None => continue,
                Some(r) if r.cancel.is_cancelled() => {
                    let reason = r
                        .reason
                        .clone()
                        .unwrap_or_else(|| TaskError::fatal(executor::CANCELLED));
                    let fin = executor::finished(&key, Err(reason));
                    let _ = self.finished_tx.send((key, fin));
                }
                Some(_) => self.place(key, assign, out).await?,
            }
        }
        Ok(())
    }

    /// The GPUs of attempts still running or waiting, for a new leader.
    fn gpus_held(&self) -> Vec<proto::AttemptGpus> {
        let held = self.gpu_holds.iter().map(|(k, g)| (k.clone(), g.clone()));
        let waiting = self.gpu_waiting.iter().filter_map(|a| {
            let key = AttemptKey::from(a.key.as_ref()?);
            let gpus = a
                .resources
                .as_ref()?
                .devices
                .iter()
                .map(|d| d.index)
                .collect();
            Some((key, gpus))
        });
        held.chain(waiting)
            .filter(|(k, _)| self.running.contains_key(k))
            .map(|(k, gpus)| proto::AttemptGpus {
                key: Some((&k).into()),
                gpus,
            })
            .collect()
    }
}

/// Unpacks batches; an inner message without an epoch takes its batch's.
fn flatten(msg: proto::SchedulerMessage, inherited: u64, out: &mut Vec<(u64, Down)>) {
    let epoch = if msg.epoch == 0 { inherited } else { msg.epoch };
    match msg.msg {
        Some(Down::Batch(batch)) => {
            for m in batch.messages {
                flatten(m, epoch, out);
            }
        }
        Some(m) => out.push((epoch, m)),
        None => {}
    }
}

/// An error and its sources, on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}
