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
    let dir = tempfile::tempdir().expect("a temp dir");
    let results = open_store(&format!("file://{}", dir.path().display()))
        .await
        .expect("a local store");
    let state = Arc::new(GateStore::default());
    let cfg = EngineConfig {
        result_store: results.root_uri(),
        ..EngineConfig::default()
    };
    let (handle, task) = spawn(
        Engine::new(cfg, 1),
        state.clone(),
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

    // A cancel and a read in one step, whose commit is fenced (the leader was deposed).
    state.fail.store(true, Ordering::SeqCst);
    let (cancel_tx, _cancel_rx) = oneshot::channel();
    let (get_tx, get_rx) = oneshot::channel();
    handle.try_tell(Command::CancelRun(run.id.clone(), cancel_tx));
    handle.try_tell(Command::GetRun(run.id.clone(), get_tx));
    match get_rx.await {
        Err(_) => {}
        Ok(answer) => panic!("a read was answered from an uncommitted step: {answer:?}"),
    }
    task.await.expect("the actor stops");
}
