//! The worker's side of `WorkerService.Connect`: one long-lived stream to the leader,
//! reconnected with backoff, and the attempts that outlive any one stream. This module owns
//! the worker state (running attempts, finished-but-unacknowledged results, the highest epoch
//! seen, the leader lease and the drain); `dial` picks the replica to dial, `session` runs
//! one stream and `writer` batches its frames.
//!
//! In a cluster the worker is given several replicas: it dials them in turn, goes straight to
//! the leader a refusing follower names (`baton-leader` metadata), refuses any leader older
//! than the newest it has seen, and stops its attempts when no leader has been heard from
//! for longer than its lease.

mod dial;
mod outbound;
mod session;
mod writer;

pub use session::LEADER_METADATA;

use crate::config::WorkerConfig;
use crate::error::Result;
use crate::task::{TaskError, TaskLog};
use baton_common::ids::AttemptKey;
use baton_common::result_store::ResultStore;
use baton_proto as proto;
use dial::{Backoff, Dialer};
use proto::finished::Outcome;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long a drained worker waits for the acknowledgement of its last results.
const SETTLE: Duration = Duration::from_secs(2);

/// Runs the worker until `shutdown` is cancelled and the drain ends: connects to the
/// schedulers in turn, registers, runs what it is assigned and reports it.
pub async fn run(config: WorkerConfig, shutdown: CancellationToken) -> Result<()> {
    config.validate()?;
    tracing::info!(
        worker = %config.id,
        schedulers = ?config.schedulers,
        labels = ?config.labels,
        slots = config.slots,
        "worker starting"
    );
    if let Some(at) = &config.metrics_addr {
        let bound =
            baton_common::metrics::spawn(at, crate::metrics::get().registry(), shutdown.clone())
                .await
                .map_err(|e| crate::error::Error::config("metrics-addr", format!("{at}: {e}")))?;
        tracing::info!(addr = %bound, "serving metrics at /metrics");
    }
    let containers = if config.allow_container {
        let c = crate::executor::Containers::connect(&config.id)
            .await
            .map_err(|e| crate::error::Error::config("allow", format!("container: {e}")))?;
        // Containers a previous life of this worker left (killed with -9) go first.
        match c.remove_left_over().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                containers = n,
                "removed containers a previous run of this worker left"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "cannot look for containers left by a previous run")
            }
        }
        Some(c)
    } else {
        None
    };
    let mut dialer = Dialer::new(config.schedulers.clone());
    let (mut worker, mut inbox) = Worker::new(config);
    worker.containers = containers;
    let mut backoff = Backoff::default();
    loop {
        let address = dialer.next();
        let delay = match worker
            .session(&address, &mut inbox, &shutdown, &mut backoff)
            .await
        {
            session::End::Drained => break,
            session::End::Lost(lost) => {
                if worker.connected {
                    dialer.welcomed();
                    worker.leader_lost(Instant::now());
                }
                if lost.fatal {
                    tracing::error!(scheduler = %address, reason = %lost.reason, "scheduler refused this worker");
                    backoff.saturate();
                } else if let Some(leader) = &lost.leader {
                    tracing::info!(scheduler = %address, %leader, reason = %lost.reason, "sent to the leader");
                } else {
                    tracing::warn!(scheduler = %address, reason = %lost.reason, "no connection to the leader");
                }
                if dialer.lost(&address, lost.leader) && !lost.fatal {
                    backoff.quick()
                } else {
                    backoff.next()
                }
            }
        };
        if worker.idle(delay, &mut inbox, &shutdown).await {
            break;
        }
    }
    worker.root.cancel();
    tracing::info!(worker = %worker.config.id, "worker stopped");
    Ok(())
}

/// What attempt tasks send back to the connection: their results and their log lines.
struct Inbox {
    finished: mpsc::UnboundedReceiver<(AttemptKey, proto::Finished)>,
    logs: mpsc::UnboundedReceiver<TaskLog>,
}

/// One attempt being run.
struct Running {
    cancel: CancellationToken,
    /// The failure it reports when it was cancelled on purpose.
    reason: Option<TaskError>,
    /// When it was assigned here (for metrics).
    since: std::time::Instant,
}

/// A drain in progress.
struct Drain {
    /// When running attempts are cancelled.
    deadline: Instant,
    cancelled: bool,
    /// When the worker stops waiting for acknowledgements.
    settle: Option<Instant>,
}

/// The state that outlives streams.
struct Worker {
    config: WorkerConfig,
    running: HashMap<AttemptKey, Running>,
    unacked: HashMap<AttemptKey, proto::Finished>,
    max_epoch: u64,
    /// The result store named by the last welcome, by its URI.
    store: Option<(String, Arc<dyn ResultStore>)>,
    finished_tx: mpsc::UnboundedSender<(AttemptKey, proto::Finished)>,
    logs_tx: mpsc::UnboundedSender<TaskLog>,
    /// Parent of every attempt's token.
    root: CancellationToken,
    drain: Option<Drain>,
    /// Cancelled when the drain begins: attempts then run no chain ahead (that would be
    /// new work).
    draining: CancellationToken,
    /// Whether a leader has welcomed the current stream.
    connected: bool,
    /// The last time a leader was heard from (see [`Worker::leader_lost`]); the leader
    /// lease runs from here while no leader is connected.
    leader_seen: Instant,
    /// The GPUs (device indices) of attempts whose body has not ended: held until it has,
    /// even when the attempt was cancelled or forgotten, so that no two attempts' processes
    /// ever share a device.
    gpu_holds: HashMap<AttemptKey, Vec<u32>>,
    /// Assignments whose GPUs are still held by an ending attempt, in arrival order.
    gpu_waiting: Vec<proto::Assign>,
    /// Touched while a leader is heard from, when configured.
    health: Option<crate::health::HealthFile>,
    /// The Docker engine, when container tasks are allowed.
    containers: Option<crate::executor::Containers>,
}

impl Worker {
    fn new(config: WorkerConfig) -> (Worker, Inbox) {
        let (finished_tx, finished) = mpsc::unbounded_channel();
        let (logs_tx, logs) = mpsc::unbounded_channel();
        let health = config
            .health_file
            .clone()
            .map(crate::health::HealthFile::new);
        let worker = Worker {
            health,
            containers: None,
            config,
            running: HashMap::new(),
            unacked: HashMap::new(),
            max_epoch: 0,
            store: None,
            finished_tx,
            logs_tx,
            root: CancellationToken::new(),
            drain: None,
            draining: CancellationToken::new(),
            connected: false,
            leader_seen: Instant::now(),
            gpu_holds: HashMap::new(),
            gpu_waiting: Vec::new(),
        };
        (worker, Inbox { finished, logs })
    }

    fn lease(&self) -> Duration {
        Duration::from_millis(self.config.leader_lease_ms)
    }

    /// The HTTP/2 keep-alive interval (and timeout) of the stream to the leader.
    fn keep_alive(&self) -> Duration {
        (self.lease() / 4).clamp(Duration::from_millis(500), Duration::from_secs(5))
    }

    /// A message (any frame) came from the leader.
    fn heard_from_leader(&mut self, now: Instant) {
        self.leader_seen = now;
        if let Some(h) = self.health.as_mut() {
            h.heard(now.into_std());
        }
    }

    /// The welcomed stream ended at `now`. The lease runs from the last message received from
    /// the leader; on a quiet stream, from the last moment the transport vouched for the
    /// leader (keep-alive pings are answered within interval + timeout, or the stream
    /// fails), so that a long task under a quiet leader is not stopped by a short blip.
    fn leader_lost(&mut self, now: Instant) {
        if !self.connected {
            return;
        }
        self.connected = false;
        crate::metrics::get().connected(false);
        if let Some(vouched) = now.checked_sub(self.keep_alive() * 2) {
            self.leader_seen = self.leader_seen.max(vouched);
        }
        tracing::info!(
            running = self.running.len(),
            unacknowledged = self.unacked.len(),
            lease_ms = self.config.leader_lease_ms,
            silent_ms = now.saturating_duration_since(self.leader_seen).as_millis() as u64,
            "lost the leader"
        );
    }

    /// When the leader lease lapses, if it runs.
    fn lease_deadline(&self) -> Option<Instant> {
        (!self.connected && !self.running.is_empty()).then(|| self.leader_seen + self.lease())
    }

    /// Records a finished attempt; returns the message to send now, if connected. Results of
    /// dropped attempts are discarded.
    fn on_finished(
        &mut self,
        key: AttemptKey,
        mut fin: proto::Finished,
    ) -> Option<proto::Finished> {
        let running = self.running.remove(&key)?;
        let metrics = crate::metrics::get();
        metrics.running(self.running.len());
        metrics.ended(
            matches!(fin.outcome, Some(Outcome::Success(_))) && running.reason.is_none(),
            running.since.elapsed(),
        );
        if let (Some(reason), Some(Outcome::Failure(_))) = (running.reason, &fin.outcome) {
            fin.outcome = Some(Outcome::Failure(proto::TaskFailure {
                error: reason.message,
                retryable: reason.retryable,
            }));
        }
        match &fin.outcome {
            Some(Outcome::Failure(f)) => {
                tracing::debug!(attempt = %key, error = %f.error, retryable = f.retryable, "attempt failed")
            }
            _ => tracing::debug!(attempt = %key, "attempt succeeded"),
        }
        let send = self.connected.then(|| fin.clone());
        self.unacked.insert(key, fin);
        send
    }

    /// Cancels a running attempt; it then reports `reason`.
    fn cancel(&mut self, key: &AttemptKey, reason: TaskError) {
        if let Some(r) = self.running.get_mut(key) {
            tracing::info!(attempt = %key, reason = %reason.message, "cancelling attempt");
            r.reason = Some(reason.clone());
            r.cancel.cancel();
        }
        // One still waiting for its GPUs never starts.
        if self.take_waiting(key) {
            let fin = crate::executor::finished(key, Err(reason));
            let _ = self.finished_tx.send((key.clone(), fin));
        }
    }

    /// Removes `key` from the attempts waiting for GPUs; whether it was there.
    fn take_waiting(&mut self, key: &AttemptKey) -> bool {
        let before = self.gpu_waiting.len();
        self.gpu_waiting
            .retain(|a| a.key.as_ref().map(AttemptKey::from).as_ref() != Some(key));
        self.gpu_waiting.len() != before
    }

    /// Stops an attempt and forgets it and its result: nothing about it is reported.
    fn forget(&mut self, key: &AttemptKey) {
        if let Some(r) = self.running.remove(key) {
            r.cancel.cancel();
        }
        self.take_waiting(key);
        self.unacked.remove(key);
    }

    fn begin_drain(&mut self) {
        tracing::info!(
            running = self.running.len(),
            drain_timeout_ms = self.config.drain_timeout_ms,
            "draining"
        );
        self.draining.cancel();
        self.drain = Some(Drain {
            deadline: Instant::now() + Duration::from_millis(self.config.drain_timeout_ms),
            cancelled: false,
            settle: None,
        });
    }

    /// Applies the lease and the drain at `now`; true when the drain is complete.
    fn tick(&mut self, now: Instant) -> bool {
        if self.lease_deadline().is_some_and(|d| now >= d) {
            tracing::warn!(
                attempts = self.running.len(),
                lease_ms = self.config.leader_lease_ms,
                "no leader heard from within the lease, stopping running attempts"
            );
            for (_, r) in self.running.drain() {
                r.cancel.cancel();
            }
        }
        let Some(drain) = &mut self.drain else {
            return false;
        };
        if !self.running.is_empty() && !drain.cancelled && now >= drain.deadline {
            tracing::warn!(
                attempts = self.running.len(),
                "drain timeout passed, cancelling running attempts"
            );
            for r in self.running.values_mut() {
                r.reason = Some(TaskError::retryable(
                    "cancelled: the worker shut down before the attempt finished",
                ));
                r.cancel.cancel();
            }
            drain.cancelled = true;
            drain.settle = Some(now + SETTLE);
        }
        if self.running.is_empty() {
            if self.unacked.is_empty() {
                return true;
            }
            drain.settle.get_or_insert(now + SETTLE);
        }
        if drain.settle.is_some_and(|s| now >= s) {
            tracing::warn!(
                running = self.running.len(),
                unacknowledged = self.unacked.len(),
                "drain ended before everything was acknowledged"
            );
            return true;
        }
        false
    }

    /// The next instant [`Worker::tick`] has something to do.
    fn next_wakeup(&self) -> Option<Instant> {
        let lease = self.lease_deadline();
        let (deadline, settle) = match &self.drain {
            Some(d) => (
                (!d.cancelled && !self.running.is_empty()).then_some(d.deadline),
                d.settle,
            ),
            None => (None, None),
        };
        [lease, deadline, settle].into_iter().flatten().min()
    }

    /// Waits `delay` while disconnected, still collecting results and applying the lease
    /// and the drain; true when the drain is complete.
    async fn idle(
        &mut self,
        delay: Duration,
        inbox: &mut Inbox,
        shutdown: &CancellationToken,
    ) -> bool {
        let until = Instant::now() + delay;
        let mut dropped_logs = 0u64;
        let drained = loop {
            if self.tick(Instant::now()) {
                break true;
            }
            let now = Instant::now();
            if now >= until {
                break false;
            }
            let wake = self.next_wakeup().map_or(until, |w| w.min(until));
            tokio::select! {
                _ = shutdown.cancelled(), if self.drain.is_none() => self.begin_drain(),
                Some((key, fin)) = inbox.finished.recv() => {
                    self.on_finished(key, fin);
                }
                Some(_) = inbox.logs.recv() => dropped_logs += 1,
                _ = tokio::time::sleep_until(wake) => {}
            }
        };
        if dropped_logs > 0 {
            tracing::debug!(lines = dropped_logs, "dropped log lines while disconnected");
        }
        drained
    }
}

#[cfg(test)]
mod tests;
