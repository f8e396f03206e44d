//! The connection against an in-process fake scheduler speaking the real gRPC protocol.

use super::*;
use proto::scheduler_message::Msg as Down;
use proto::worker_message::Msg as Up;
use proto::worker_service_server::{WorkerService, WorkerServiceServer};
use serde_json::json;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio_stream::wrappers::{TcpListenerStream, UnboundedReceiverStream};
use tonic::{Request, Response, Status};

const WAIT: Duration = Duration::from_secs(10);

/// One accepted stream, seen from the scheduler's side.
struct Conn {
    up: tonic::Streaming<proto::WorkerMessage>,
    down: mpsc::UnboundedSender<Result<proto::SchedulerMessage, Status>>,
    queued: VecDeque<Up>,
    heartbeats: usize,
}

impl Conn {
    /// The next message other than a heartbeat, batches unpacked.
    async fn next(&mut self) -> Up {
        loop {
            if let Some(m) = self.queued.pop_front() {
                if matches!(m, Up::Heartbeat(_)) {
                    self.heartbeats += 1;
                    continue;
                }
                return m;
            }
            let m = tokio::time::timeout(WAIT, self.up.message())
                .await
                .expect("a message in time")
                .expect("a healthy stream")
                .expect("an open stream");
            match m.msg {
                Some(Up::Batch(b)) => self
                    .queued
                    .extend(b.messages.into_iter().filter_map(|m| m.msg)),
                Some(m) => self.queued.push_back(m),
                None => {}
            }
        }
    }

    /// Waits for a heartbeat (the welcome asks for one every 100 ms).
    async fn heartbeat(&mut self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.heartbeats == 0 {
            assert!(tokio::time::Instant::now() < deadline, "no heartbeat");
            let m = tokio::time::timeout(WAIT, self.up.message()).await;
            if let Ok(Ok(Some(m))) = m {
                let msgs = match m.msg {
                    Some(Up::Batch(b)) => b.messages.into_iter().filter_map(|m| m.msg).collect(),
                    Some(m) => vec![m],
                    None => vec![],
                };
                for m in msgs {
                    if matches!(m, Up::Heartbeat(_)) {
                        self.heartbeats += 1;
                    } else {
                        self.queued.push_back(m);
                    }
                }
            }
        }
    }

    fn send(&self, epoch: u64, msg: Down) {
        let _ = self.down.send(Ok(proto::SchedulerMessage {
            epoch,
            msg: Some(msg),
        }));
    }

    async fn register(&mut self) -> proto::Register {
        match self.next().await {
            Up::Register(r) => r,
            other => panic!("expected a register, got {other:?}"),
        }
    }

    fn welcome(&self, epoch: u64, store: &str, unknown: Vec<proto::AttemptKey>) {
        self.send(
            epoch,
            Down::Welcome(proto::Welcome {
                result_store: store.to_string(),
                heartbeat_interval_ms: 100,
                unknown,
            }),
        );
    }
}

struct Fake {
    conns: mpsc::UnboundedSender<Conn>,
    refuse: Arc<AtomicBool>,
}

#[tonic::async_trait]
impl WorkerService for Fake {
    type ConnectStream = UnboundedReceiverStream<Result<proto::SchedulerMessage, Status>>;

    async fn connect(
        &self,
        request: Request<tonic::Streaming<proto::WorkerMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        if self.refuse.load(Ordering::SeqCst) {
            return Err(Status::unavailable("not now"));
        }
        let (down, rx) = mpsc::unbounded_channel();
        let _ = self.conns.send(Conn {
            up: request.into_inner(),
            down,
            queued: VecDeque::new(),
            heartbeats: 0,
        });
        Ok(Response::new(UnboundedReceiverStream::new(rx)))
    }
}

struct Harness {
    conns: mpsc::UnboundedReceiver<Conn>,
    refuse: Arc<AtomicBool>,
    store: String,
    dir: tempfile::TempDir,
    shutdown: CancellationToken,
    worker: tokio::task::JoinHandle<Result<()>>,
}

impl Harness {
    async fn start(lease_ms: u64, drain_timeout_ms: u64) -> Harness {
        Harness::start_with(lease_ms, drain_timeout_ms, |leader| vec![leader]).await
    }

    /// Starts the fake leader and a worker given the replicas `schedulers(leader address)`.
    async fn start_with(
        lease_ms: u64,
        drain_timeout_ms: u64,
        schedulers: impl FnOnce(String) -> Vec<String>,
    ) -> Harness {
        Harness::start_full(lease_ms, drain_timeout_ms, schedulers, Vec::new()).await
    }

    /// Starts the fake leader and a worker offering `gpus`.
    async fn start_with_gpus(
        lease_ms: u64,
        drain_timeout_ms: u64,
        gpus: Vec<crate::gpu::Gpu>,
    ) -> Harness {
        Harness::start_full(lease_ms, drain_timeout_ms, |leader| vec![leader], gpus).await
    }

    async fn start_full(
        lease_ms: u64,
        drain_timeout_ms: u64,
        schedulers: impl FnOnce(String) -> Vec<String>,
        gpus: Vec<crate::gpu::Gpu>,
    ) -> Harness {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        let (tx, conns) = mpsc::unbounded_channel();
        let refuse = Arc::new(AtomicBool::new(false));
        let fake = Fake {
            conns: tx,
            refuse: refuse.clone(),
        };
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(WorkerServiceServer::new(fake))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        let dir = tempfile::tempdir().unwrap();
        let store = format!("file://{}", dir.path().display());
        let config = WorkerConfig {
            id: "w1".into(),
            schedulers: schedulers(address),
            labels: vec!["local".into()],
            slots: 4,
            gpus,
            memory_mb: 1024,
            leader_lease_ms: lease_ms,
            drain_timeout_ms,
            token: None,
            allow_process: true,
            allow_container: false,
            secrets: Default::default(),
            tls: Default::default(),
            health_file: Some(dir.path().join("health")),
            metrics_addr: None,
        };
        let shutdown = CancellationToken::new();
        let worker = tokio::spawn(run(config, shutdown.clone()));
        Harness {
            conns,
            refuse,
            store,
            dir,
            shutdown,
            worker,
        }
    }

    async fn conn(&mut self) -> Conn {
        tokio::time::timeout(WAIT, self.conns.recv())
            .await
            .expect("a connection in time")
            .expect("the fake is up")
    }

    async fn stopped(self) {
        tokio::time::timeout(WAIT, self.worker)
            .await
            .expect("the worker stops in time")
            .unwrap()
            .unwrap();
    }
}

fn key(task: &str) -> proto::AttemptKey {
    proto::AttemptKey {
        run_id: "r1".into(),
        task: task.into(),
        map_index: -1,
        attempt: 1,
    }
}

fn assign(task: &str, spec: serde_json::Value, inputs: serde_json::Value) -> Down {
    Down::Assign(proto::Assign {
        key: Some(key(task)),
        task_spec: spec.to_string(),
        inputs: inputs.to_string(),
        ..Default::default()
    })
}

fn builtin(function: &str) -> serde_json::Value {
    json!({"kind": "builtin", "function": function})
}

fn ack(task: &str) -> Down {
    Down::Ack(proto::Ack {
        key: Some(key(task)),
        committed: true,
    })
}

fn started_key(m: &Up) -> Option<&str> {
    match m {
        Up::Started(s) => s.key.as_ref().map(|k| k.task.as_str()),
        _ => None,
    }
}

fn expect_finished(m: Up, task: &str) -> proto::finished::Outcome {
    match m {
        Up::Finished(f) if f.key.as_ref().is_some_and(|k| k.task == task) => f.outcome.unwrap(),
        other => panic!("expected {task} finished, got {other:?}"),
    }
}

#[tokio::test]
async fn serves_assignments_cancels_acks_and_drains() {
    let mut h = Harness::start(10_000, 5_000).await;
    let mut c = h.conn().await;
    let r = c.register().await;
    assert_eq!(r.worker_id, "w1");
    assert_eq!(r.labels, vec!["local".to_string()]);
    assert_eq!(r.resources.unwrap().slots, 4);
    assert!(r.running.is_empty());
    c.welcome(5, &h.store, vec![]);

    c.send(5, assign("a", builtin("echo"), json!({"value": 42})));
    assert_eq!(started_key(&c.next().await), Some("a"));
    match expect_finished(c.next().await, "a") {
        Outcome::Success(s) => assert_eq!(s.inline_value, "42"),
        other => panic!("{other:?}"),
    }
    c.send(5, ack("a"));

    // A message from an older epoch is ignored; batched messages inherit the batch's epoch.
    c.send(3, assign("stale", builtin("noop"), json!({})));
    let sleeper = proto::SchedulerMessage {
        epoch: 0,
        msg: Some(assign("b", builtin("sleep"), json!({"ms": 60_000}))),
    };
    c.send(
        5,
        Down::Batch(proto::SchedulerBatch {
            messages: vec![sleeper],
        }),
    );
    assert_eq!(started_key(&c.next().await), Some("b"));
    c.send(
        5,
        Down::Cancel(proto::Cancel {
            key: Some(key("b")),
            reason: "user asked".into(),
        }),
    );
    match expect_finished(c.next().await, "b") {
        Outcome::Failure(f) => {
            assert_eq!(f.error, "cancelled: user asked");
            assert!(!f.retryable);
        }
        other => panic!("{other:?}"),
    }
    c.send(5, ack("b"));

    let script = json!({"kind": "process", "command": "sh", "args": ["-c", "echo hi; echo 1"]});
    c.send(5, assign("p", script, json!({})));
    let mut saw_log = false;
    loop {
        match c.next().await {
            Up::Logs(l) => {
                saw_log |= l
                    .lines
                    .iter()
                    .any(|l| l.line == "hi" && l.stream == "stdout")
            }
            Up::Started(_) => {}
            other => {
                assert!(matches!(expect_finished(other, "p"), Outcome::Success(_)));
                break;
            }
        }
    }
    assert!(saw_log);
    c.heartbeat().await;
    // Hearing from the leader keeps the health file fresh.
    let health = h.dir.path().join("health");
    let lease = std::time::Duration::from_secs(10);
    assert!(crate::health::check(&health, lease).is_ok());

    h.shutdown.cancel();
    assert!(matches!(c.next().await, Up::Draining(_)));
    c.send(5, assign("late", builtin("noop"), json!({})));
    c.send(5, ack("p"));
    h.stopped().await;
    // Whatever else the worker sent, it never started the stale or the late assignment.
    while let Ok(Some(m)) = c.up.message().await {
        assert!(!matches!(m.msg, Some(Up::Started(_))), "{m:?}");
    }
}

#[tokio::test]
async fn reconnects_resends_unacknowledged_results_and_obeys_the_new_leader() {
    let mut h = Harness::start(10_000, 1_000).await;
    let mut c = h.conn().await;
    c.register().await;
    c.welcome(5, &h.store, vec![]);
    c.send(5, assign("a", builtin("echo"), json!({"value": "x"})));
    c.send(5, assign("b", builtin("sleep"), json!({"ms": 60_000})));
    let mut started = Vec::new();
    let mut finished_a = false;
    while started.len() < 2 || !finished_a {
        match c.next().await {
            Up::Started(s) => started.push(s.key.unwrap().task),
            other => finished_a = matches!(expect_finished(other, "a"), Outcome::Success(_)),
        }
    }
    drop(c);

    // The worker comes back with both attempts; a welcome from an older epoch is refused.
    let mut c = h.conn().await;
    let r = c.register().await;
    let mut running: Vec<String> = r.running.iter().map(|k| k.task.clone()).collect();
    running.sort();
    assert_eq!(running, vec!["a", "b"]);
    assert_eq!(r.max_epoch, 5);
    c.welcome(4, &h.store, vec![]);

    let mut c = h.conn().await;
    c.register().await;
    c.welcome(6, &h.store, vec![key("b")]);
    match expect_finished(c.next().await, "a") {
        Outcome::Success(s) => assert_eq!(s.inline_value, "\"x\""),
        other => panic!("{other:?}"),
    }
    c.send(6, ack("a"));

    // "b" was unknown to the new leader: stopped, never reported; the drain ends at once.
    h.shutdown.cancel();
    assert!(matches!(c.next().await, Up::Draining(_)));
    h.stopped().await;
}

#[tokio::test]
async fn attempts_stop_when_no_leader_is_reachable_for_the_lease() {
    let mut h = Harness::start(300, 1_000).await;
    let mut c = h.conn().await;
    c.register().await;
    c.welcome(1, &h.store, vec![]);
    c.send(1, assign("b", builtin("sleep"), json!({"ms": 60_000})));
    assert_eq!(started_key(&c.next().await), Some("b"));
    h.refuse.store(true, Ordering::SeqCst);
    drop(c);
    // Past the lease the attempt is dropped, so the next registration no longer lists it.
    tokio::time::sleep(Duration::from_millis(900)).await;
    h.refuse.store(false, Ordering::SeqCst);
    let mut c = h.conn().await;
    assert!(c.register().await.running.is_empty());
    c.welcome(1, &h.store, vec![]);
    h.shutdown.cancel();
    assert!(matches!(c.next().await, Up::Draining(_)));
    h.stopped().await;
}

#[tokio::test]
async fn drain_timeout_cancels_running_attempts_as_retryable() {
    let mut h = Harness::start(10_000, 200).await;
    let mut c = h.conn().await;
    c.register().await;
    c.welcome(1, &h.store, vec![]);
    c.send(1, assign("b", builtin("sleep"), json!({"ms": 60_000})));
    assert_eq!(started_key(&c.next().await), Some("b"));
    h.shutdown.cancel();
    assert!(matches!(c.next().await, Up::Draining(_)));
    match expect_finished(c.next().await, "b") {
        Outcome::Failure(f) => {
            assert!(f.retryable);
            assert!(f.error.starts_with("cancelled"), "{}", f.error);
        }
        other => panic!("{other:?}"),
    }
    c.send(1, ack("b"));
    h.stopped().await;
}

/// A replica that is not the leader: refuses every stream, naming `leader` in metadata.
struct Follower {
    leader: String,
    refused: Arc<std::sync::atomic::AtomicUsize>,
}

#[tonic::async_trait]
impl WorkerService for Follower {
    type ConnectStream = UnboundedReceiverStream<Result<proto::SchedulerMessage, Status>>;

    async fn connect(
        &self,
        _request: Request<tonic::Streaming<proto::WorkerMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        self.refused.fetch_add(1, Ordering::SeqCst);
        let mut status =
            Status::unavailable(format!("not the leader; the leader is at {}", self.leader));
        status
            .metadata_mut()
            .insert(LEADER_METADATA, self.leader.parse().unwrap());
        Err(status)
    }
}

/// An address nothing listens on.
async fn dead_address() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    address
}

#[tokio::test]
async fn a_follower_sends_the_worker_to_the_leader() {
    let dead = dead_address().await;
    let follower_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let follower = format!("http://{}", follower_listener.local_addr().unwrap());
    let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (leader_tx, leader_rx) = tokio::sync::oneshot::channel();
    let spawn_follower = {
        let refused = refused.clone();
        move |leader: String| {
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(WorkerServiceServer::new(Follower { leader, refused }))
                    .serve_with_incoming(TcpListenerStream::new(follower_listener)),
            );
        }
    };
    // The worker knows a dead replica and a follower, not the leader.
    let replicas = vec![dead, follower];
    let mut h = Harness::start_with(10_000, 1_000, |leader| {
        let _ = leader_tx.send(leader);
        replicas
    })
    .await;
    spawn_follower(leader_rx.await.unwrap());
    let mut c = h.conn().await;
    assert_eq!(c.register().await.worker_id, "w1");
    assert!(
        refused.load(Ordering::SeqCst) >= 1,
        "the follower was asked first"
    );
    c.welcome(2, &h.store, vec![]);
    c.send(2, assign("a", builtin("echo"), json!({"value": 1})));
    assert_eq!(started_key(&c.next().await), Some("a"));
    assert!(matches!(
        expect_finished(c.next().await, "a"),
        Outcome::Success(_)
    ));
    c.send(2, ack("a"));
    h.shutdown.cancel();
    assert!(matches!(c.next().await, Up::Draining(_)));
    h.stopped().await;
}

#[tokio::test]
async fn a_leader_older_than_the_newest_seen_is_refused_across_reconnects() {
    let mut h = Harness::start(10_000, 1_000).await;
    let mut c = h.conn().await;
    assert_eq!(c.register().await.max_epoch, 0);
    c.welcome(5, &h.store, vec![]);
    c.send(5, assign("b", builtin("sleep"), json!({"ms": 60_000})));
    assert_eq!(started_key(&c.next().await), Some("b"));
    drop(c);

    // A new session stamped with epoch 3: the worker reports epoch 5 and drops the stream.
    let mut c = h.conn().await;
    let r = c.register().await;
    assert_eq!(r.max_epoch, 5);
    assert_eq!(r.running.len(), 1);
    c.welcome(3, &h.store, vec![]);
    let ended = tokio::time::timeout(WAIT, async {
        while let Ok(Some(_)) = c.up.message().await {}
    })
    .await;
    assert!(
        ended.is_ok(),
        "the worker keeps no stream to an older leader"
    );

    // It still remembers epoch 5; the leader of epoch 5 is obeyed, epoch 3 messages are not.
    let mut c = h.conn().await;
    let r = c.register().await;
    assert_eq!(r.max_epoch, 5);
    assert_eq!(r.running.len(), 1, "{r:?}");
    c.welcome(5, &h.store, vec![]);
    c.send(3, assign("stale", builtin("noop"), json!({})));
    c.send(
        3,
        Down::Cancel(proto::Cancel {
            key: Some(key("b")),
            reason: "from the old leader".into(),
        }),
    );
    c.send(5, assign("a", builtin("echo"), json!({"value": 1})));
    assert_eq!(started_key(&c.next().await), Some("a"));
    assert!(matches!(
        expect_finished(c.next().await, "a"),
        Outcome::Success(_)
    ));
    c.send(5, ack("a"));
    // "b" still runs: the stale cancel was ignored. The new leader's cancel stops it.
    c.send(
        5,
        Down::Cancel(proto::Cancel {
            key: Some(key("b")),
            reason: "done".into(),
        }),
    );
    match expect_finished(c.next().await, "b") {
        Outcome::Failure(f) => assert_eq!(f.error, "cancelled: done"),
        other => panic!("{other:?}"),
    }
    c.send(5, ack("b"));
    h.shutdown.cancel();
    assert!(matches!(c.next().await, Up::Draining(_)));
    h.stopped().await;
}

/// A worker whose lease is `lease_ms`, welcomed by a leader, running one attempt.
fn leased_worker(lease_ms: u64) -> (Worker, CancellationToken) {
    let (mut w, _inbox) = Worker::new(WorkerConfig {
        leader_lease_ms: lease_ms,
        ..WorkerConfig::default()
    });
    let cancel = CancellationToken::new();
    w.running.insert(
        AttemptKey::from(&key("b")),
        Running {
            cancel: cancel.clone(),
            reason: None,
            since: std::time::Instant::now(),
        },
    );
    w.connected = true;
    w.heard_from_leader(Instant::now());
    (w, cancel)
}

#[tokio::test(start_paused = true)]
async fn the_lease_runs_from_the_last_message_of_the_leader() {
    // Lease 15 s: the keep-alive vouches for a quiet stream up to 7.5 s back.
    let (mut w, cancel) = leased_worker(15_000);
    tokio::time::advance(Duration::from_secs(8)).await;
    let last = Instant::now();
    w.heard_from_leader(last);
    tokio::time::advance(Duration::from_secs(2)).await;
    w.leader_lost(Instant::now());
    assert_eq!(w.next_wakeup(), Some(last + Duration::from_secs(15)));
    assert!(!w.tick(last + Duration::from_millis(14_999)));
    assert!(!cancel.is_cancelled());
    assert!(!w.tick(last + Duration::from_secs(15)));
    assert!(cancel.is_cancelled(), "stopped once the lease lapsed");
    assert!(w.running.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_quiet_leader_is_vouched_for_by_the_keep_alive_until_the_stream_fails() {
    let (mut w, cancel) = leased_worker(15_000);
    // No message for a minute (a long task), then the stream fails.
    tokio::time::advance(Duration::from_secs(60)).await;
    let lost = Instant::now();
    w.leader_lost(lost);
    let deadline = lost - Duration::from_millis(7_500) + Duration::from_secs(15);
    assert_eq!(w.next_wakeup(), Some(deadline));
    assert!(!w.tick(lost));
    assert!(!w.tick(deadline - Duration::from_millis(1)));
    assert!(!cancel.is_cancelled());
    // A new leader welcomes the worker in time: the lease no longer runs.
    w.connected = true;
    w.heard_from_leader(Instant::now());
    assert!(!w.tick(deadline + Duration::from_secs(60)));
    assert!(!cancel.is_cancelled());
    assert_eq!(w.next_wakeup(), None);
}

/// An assignment pinned to GPUs (device indices of the worker).
fn assign_on(task: &str, spec: serde_json::Value, inputs: serde_json::Value, gpus: &[u32]) -> Down {
    Down::Assign(proto::Assign {
        key: Some(key(task)),
        task_spec: spec.to_string(),
        inputs: inputs.to_string(),
        resources: Some(proto::Resources {
            slots: 1,
            gpus: gpus.len() as u32,
            devices: gpus
                .iter()
                .map(|&index| proto::GpuDevice {
                    index,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
        ..Default::default()
    })
}

#[tokio::test]
async fn a_gpu_still_held_by_an_ending_attempt_is_not_given_to_another() {
    let gpus = crate::gpu::simulated("24000").unwrap();
    let mut h = Harness::start_with_gpus(10_000, 1_000, gpus.clone()).await;
    let mut c = h.conn().await;
    let r = c.register().await;
    let res = r.resources.unwrap();
    assert_eq!(res.gpus, 1);
    assert_eq!(res.devices.len(), 1);
    assert_eq!(res.devices[0].uuid, gpus[0].uuid);
    assert_eq!(res.devices[0].memory_mb, 24_000);
    c.welcome(5, &h.store, vec![]);

    // `a` holds GPU 0; `b` is pinned to it too (a confused or new leader): it waits.
    c.send(
        5,
        assign_on("a", builtin("sleep"), json!({"ms": 400}), &[0]),
    );
    assert_eq!(started_key(&c.next().await), Some("a"));
    c.send(
        5,
        assign_on("b", builtin("echo"), json!({"value": 1}), &[0]),
    );
    // `c` names a GPU the worker does not have: it fails, retryably, without starting.
    c.send(
        5,
        assign_on("c", builtin("echo"), json!({"value": 1}), &[7]),
    );
    match expect_finished(c.next().await, "c") {
        Outcome::Failure(f) => {
            assert!(f.error.contains("GPU 7"), "{}", f.error);
            assert!(f.retryable);
        }
        other => panic!("{other:?}"),
    }
    // `b` starts only after `a` ended.
    assert!(matches!(
        expect_finished(c.next().await, "a"),
        Outcome::Success(_)
    ));
    assert_eq!(started_key(&c.next().await), Some("b"));
    assert!(matches!(
        expect_finished(c.next().await, "b"),
        Outcome::Success(_)
    ));
    h.shutdown.cancel();
}
