//! The actor with a state store whose commits can be made to fail: what clients read must
//! never include a step whose commit did not land.

use crate::actor::{spawn, Command};
use crate::engine::{Engine, EngineConfig, NewRun};
use crate::store::{Epoch, Leadership, Op, StateStore, StoreError};
use async_trait::async_trait;
use baton_common::flow::parse_flow;
use baton_common::result_store::open_store;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// Commits succeed until `fail` is set; then every commit is fenced.
#[derive(Default)]
struct GateStore {
    fail: AtomicBool,
}

#[async_trait]
impl StateStore for GateStore {
    async fn acquire(&self) -> Result<Leadership, StoreError> {
        Ok(Leadership {
            epoch: 1,
            lost: CancellationToken::new(),
        })
    }
    async fn load(&self, _prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        Ok(Vec::new())
    }
    async fn commit(&self, epoch: Epoch, _ops: Vec<Op>) -> Result<(), StoreError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(StoreError::Fenced {
                ours: epoch,
                current: epoch + 1,
            });
        }
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn reads_never_see_a_step_whose_commit_failed() {
    let state = Arc::new(GateStore::default());
    let (handle, task, run, _dir) = started(state.clone()).await;

    // A cancel and a read in one step, whose commit is fenced (the leader was deposed).
    state.fail.store(true, Ordering::SeqCst);
    let (cancel_tx, _cancel_rx) = oneshot::channel();
    let (get_tx, get_rx) = oneshot::channel();
    handle.try_tell(Command::CancelRun(run.clone(), cancel_tx));
    handle.try_tell(Command::GetRun(run, get_tx));
    match get_rx.await {
        Err(_) => {}
        Ok(answer) => panic!("a read was answered from an uncommitted step: {answer:?}"),
    }
    task.await.expect("the actor stops");
}

/// A pipelining store whose commits land, wait, or fail as the test says.
struct PipeStore {
    gate: tokio::sync::watch::Sender<Gate>,
}

#[derive(Clone, Copy, PartialEq)]
enum Gate {
    Open,
    Paused,
    Failing,
}

#[async_trait]
impl StateStore for PipeStore {
    async fn acquire(&self) -> Result<Leadership, StoreError> {
        Ok(Leadership {
            epoch: 1,
            lost: CancellationToken::new(),
        })
    }
    async fn load(&self, _prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        Ok(Vec::new())
    }
    async fn commit(&self, _epoch: Epoch, _ops: Vec<Op>) -> Result<(), StoreError> {
        unreachable!("a pipelining store is submitted to")
    }
    fn submit(&self, _epoch: Epoch, _ops: Vec<Op>) -> crate::store::Submitted {
        let mut gate = self.gate.subscribe();
        crate::store::Submitted::Queued(Box::pin(async move {
            loop {
                match *gate.borrow_and_update() {
                    Gate::Open => return Ok(()),
                    Gate::Failing => return Err(StoreError::Unavailable("injected".into())),
                    Gate::Paused => {}
                }
                if gate.changed().await.is_err() {
                    return Err(StoreError::Unavailable("closed".into()));
                }
            }
        }))
    }
}

/// Starts an actor on `state` with one flow and one run of it.
async fn started(
    state: Arc<dyn StateStore>,
) -> (
    crate::actor::Handle,
    tokio::task::JoinHandle<()>,
    String,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let results = open_store(&format!("file://{}", dir.path().display()))
        .await
        .expect("a local store");
    let cfg = EngineConfig {
        result_store: results.root_uri(),
        ..EngineConfig::default()
    };
    let (handle, task) = spawn(
        Engine::new(cfg, 1),
        state,
        results,
        CancellationToken::new(),
    );
    let spec = parse_flow("name: f\ntasks:\n  - name: a\n    builtin: noop\n").expect("a flow");
    handle
        .ask(|r| Command::RegisterFlow(spec, false, r))
        .await
        .expect("registered");
    let (run, _) = handle
        .ask(|r| {
            Command::CreateRun(
                NewRun {
                    project: "default".into(),
                    flow: "f".into(),
                    ..NewRun::default()
                },
                r,
            )
        })
        .await
        .expect("a run");
    (handle, task, run.id, dir)
}

/// [`started`] on a [`PipeStore`], open.
async fn pipelined() -> (
    crate::actor::Handle,
    tokio::task::JoinHandle<()>,
    Arc<PipeStore>,
    String,
    tempfile::TempDir,
) {
    let (gate, _) = tokio::sync::watch::channel(Gate::Open);
    let state = Arc::new(PipeStore { gate });
    let (handle, task, run, dir) = started(state.clone()).await;
    (handle, task, state, run, dir)
}

#[tokio::test(flavor = "current_thread")]
async fn a_step_behind_a_commit_in_flight_is_answered_once_that_commit_lands() {
    let (handle, _task, state, _run, _dir) = pipelined().await;
    state.gate.send_replace(Gate::Paused);
    let (set_tx, mut set_rx) = oneshot::channel();
    handle.try_tell(Command::SetLimit("db".into(), 3, set_tx));
    // Let that step run and queue its commit, then read in a later step.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let (list_tx, mut list_rx) = oneshot::channel();
    handle.try_tell(Command::ListLimits(list_tx));
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(
        set_rx.try_recv().is_err(),
        "answered before its commit landed"
    );
    assert!(
        list_rx.try_recv().is_err(),
        "a read was answered before the state it saw landed"
    );
    state.gate.send_replace(Gate::Open);
    let set = set_rx.await.expect("answered").expect("the limit");
    let listed = list_rx.await.expect("answered").expect("the limits");
    assert_eq!(listed, vec![set]);
}

#[tokio::test(flavor = "current_thread")]
async fn a_failed_commit_in_flight_drops_its_answers_and_every_later_steps() {
    let (handle, task, state, run, _dir) = pipelined().await;
    state.gate.send_replace(Gate::Paused);
    let (cancel_tx, cancel_rx) = oneshot::channel();
    handle.try_tell(Command::CancelRun(run.clone(), cancel_tx));
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let (get_tx, get_rx) = oneshot::channel();
    handle.try_tell(Command::GetRun(run.clone(), get_tx));
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    state.gate.send_replace(Gate::Failing);
    match cancel_rx.await {
        Err(_) => {}
        Ok(answer) => panic!("a cancel was acknowledged from a failed commit: {answer:?}"),
    }
    match get_rx.await {
        Err(_) => {}
        Ok(answer) => panic!("a read behind a failed commit was answered: {answer:?}"),
    }
    task.await.expect("the actor stops");
}
