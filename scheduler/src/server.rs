//! Start-up: open the stores, become the writer, recover state, start the engine's actor and
//! serve the gRPC services until shutdown.

use crate::actor;
use crate::config::SchedulerConfig;
use crate::engine::{keys, Engine, Recovered, RunRecord, TaskRunRecord};
use crate::service::{FlowApi, WorkerApi, MAX_MESSAGE_BYTES};
use crate::store::{EmbeddedStore, StateStore};
use crate::{Error, Result};
use baton_common::flow::FlowSpec;
use baton_common::result_store::{open_store, ResultStore};
use baton_proto::flow_service_server::FlowServiceServer;
use baton_proto::worker_service_server::WorkerServiceServer;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Runs a single-node scheduler on `listener` until `shutdown` is cancelled.
pub async fn serve(
    config: SchedulerConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<()> {
    config.validate()?;
    let state_dir = config.data_dir.join("state");
    let sync = config.sync_mode();
    let state: Arc<dyn StateStore> = Arc::new(
        tokio::task::spawn_blocking(move || EmbeddedStore::open(&state_dir, sync))
            .await
            .map_err(|e| Error::Transport(e.to_string()))??,
    );
    let store_uri = config.result_store_uri();
    let results = open_store(&store_uri)?;
    let epoch = state.acquire().await?;
    let recovered = load(state.as_ref(), results.as_ref()).await?;
    let mut engine = Engine::new(config.engine(results.root_uri()), epoch);
    engine.recover(recovered, baton_common::time::now_ms());
    tracing::info!(epoch, store = %results.root_uri(), "scheduler is leader");

    let (handle, actor_task) = actor::spawn(engine, state, results.clone(), shutdown.clone());
    let flow = FlowServiceServer::new(FlowApi::new(handle.clone(), results))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let worker = WorkerServiceServer::new(WorkerApi::new(
        handle,
        Duration::from_millis(config.worker_lease_ms),
    ))
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "serving");
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let stop = shutdown.clone();
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(5)))
        .add_service(flow)
        .add_service(worker)
        .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
        .await
        .map_err(|e| Error::Transport(e.to_string()))?;
    shutdown.cancel();
    let _ = actor_task.await;
    Ok(())
}

/// Reads flows, runs and task runs back; large values are read from the result store.
async fn load(state: &dyn StateStore, results: &dyn ResultStore) -> Result<Recovered> {
    let mut rec = Recovered::default();
    for (key, value) in state.load(keys::FLOW_PREFIX).await? {
        let version = key.rsplit('/').next().and_then(|v| v.parse().ok());
        match (version, serde_json::from_slice::<FlowSpec>(&value)) {
            (Some(v), Ok(spec)) => rec.flows.push((v, spec)),
            _ => tracing::error!(%key, "skipping an unreadable flow record"),
        }
    }
    for (key, value) in state.load(keys::RUN_PREFIX).await? {
        match serde_json::from_slice::<RunRecord>(&value) {
            Ok(r) => rec.runs.push(r),
            Err(e) => tracing::error!(%key, error = %e, "skipping an unreadable run record"),
        }
    }
    for (key, value) in state.load("tr/").await? {
        let mut parts = key.splitn(4, '/').skip(1);
        let (Some(run), Some(task), Some(index)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let Ok(index) = index.parse::<i64>() else {
            continue;
        };
        let mut r: TaskRunRecord = match serde_json::from_slice(&value) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(%key, error = %e, "skipping an unreadable task run record");
                continue;
            }
        };
        if r.value.is_none() {
            if let Some(res) = &r.result {
                match results.get(&res.uri).await {
                    Ok(bytes) => r.value = serde_json::from_slice(&bytes).ok(),
                    Err(e) => {
                        tracing::error!(uri = %res.uri, error = %e, "cannot read a result back")
                    }
                }
            }
        }
        rec.task_runs
            .push((run.to_string(), task.to_string(), index, r));
    }
    Ok(rec)
}
