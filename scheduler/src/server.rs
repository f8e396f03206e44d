//! Start-up: open the stores, serve the gRPC services at once (a follower answers with the
//! leader's address), and run the leadership loop: campaign, load the state, run the
//! engine's actor while leading, and on losing leadership drop everything and campaign again.

use crate::actor;
use crate::config::SchedulerConfig;
use crate::engine::{keys, Engine, Recovered, RunRecord, TaskRunRecord};
use crate::leadership::{Role, Roles};
use crate::service::{FlowApi, WorkerApi, MAX_MESSAGE_BYTES};
use crate::store::{EmbeddedStore, EtcdConfig, EtcdStore, Leadership, StateStore};
use crate::{Error, Result};
use baton_common::flow::FlowSpec;
use baton_common::result_store::{open_store, ResultStore};
use baton_proto::flow_service_server::FlowServiceServer;
use baton_proto::worker_service_server::WorkerServiceServer;
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Runs a scheduler replica on `listener` until `shutdown` is cancelled: single-node with
/// embedded state, or one of several replicas with state in etcd.
pub async fn serve(
    config: SchedulerConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<()> {
    config.validate()?;
    let addr = listener.local_addr()?;
    let advertise = config
        .advertise
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));
    let replica_id = config
        .replica_id
        .clone()
        .unwrap_or_else(|| advertise.clone());
    let state = open_state(&config, &replica_id, &advertise).await?;
    let store_uri = config.result_store_uri();
    let results = open_store(&store_uri).await?;
    let roles = Arc::new(Roles::new(state.clone(), replica_id, advertise));

    let flow = FlowServiceServer::new(FlowApi::new(roles.clone(), results.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let worker = WorkerServiceServer::new(WorkerApi::new(
        roles.clone(),
        Duration::from_millis(config.worker_lease_ms),
    ))
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let (health, reflection_v1, reflection_v1alpha) = meta_services().await?;
    tracing::info!(%addr, "serving");
    // tonic applies its `tcp_nodelay` setting only to listeners it binds itself; accepted
    // sockets of a listener handed in must be given TCP_NODELAY here, or small frames wait
    // for Nagle's algorithm and the peer's delayed ACK (about 40 ms a message).
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let stop = shutdown.clone();
    let mut server = tokio::spawn(
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(5)))
            .add_service(flow)
            .add_service(worker)
            .add_service(health)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .serve_with_incoming_shutdown(incoming, stop.cancelled_owned()),
    );

    let led = lead(&config, state, results, &roles, &shutdown).await;
    shutdown.cancel();
    // Open connections (a worker's stream, a watch) get a bounded time to close.
    let drain = Duration::from_millis(crate::config::defaults::DRAIN_MS);
    let served = match tokio::time::timeout(drain, &mut server).await {
        Ok(joined) => joined.map_err(|e| Error::Transport(e.to_string()))?,
        Err(_) => {
            tracing::warn!(
                "connections still open {} ms after shutdown; closing them",
                drain.as_millis()
            );
            server.abort();
            Ok(())
        }
    };
    led?;
    served.map_err(|e| Error::Transport(e.to_string()))
}

/// The standard `grpc.health.v1.Health` service and server reflection (v1, and v1alpha for
/// older clients), so that grpcurl and health probes work. Every replica that serves reports
/// SERVING for `""` and both baton services, followers included: a follower answers every
/// call (with the leader's address where it must), so it is healthy; which replica leads is
/// `FlowService.GetLeader`'s business, not the health check's.
async fn meta_services() -> Result<(
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
)> {
    let (reporter, health) = tonic_health::server::health_reporter();
    for name in [
        baton_proto::flow_service_server::SERVICE_NAME,
        baton_proto::worker_service_server::SERVICE_NAME,
    ] {
        reporter
            .set_service_status(name, tonic_health::ServingStatus::Serving)
            .await;
    }
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(baton_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let bad = |e: tonic_reflection::server::Error| Error::Transport(format!("reflection: {e}"));
    let v1 = reflection().build_v1().map_err(bad)?;
    let v1alpha = reflection().build_v1alpha().map_err(bad)?;
    Ok((health, v1, v1alpha))
}

async fn open_state(
    config: &SchedulerConfig,
    replica_id: &str,
    advertise: &str,
) -> Result<Arc<dyn StateStore>> {
    if !config.etcd.is_empty() {
        let store = EtcdStore::connect(EtcdConfig {
            endpoints: config.etcd.clone(),
            namespace: config.cluster.clone(),
            replica_id: replica_id.to_string(),
            advertise: advertise.to_string(),
            lease_ttl: Duration::from_millis(config.leader_lease_ms),
        })
        .await?;
        return Ok(Arc::new(store));
    }
    let state_dir = config.data_dir.join("state");
    let sync = config.sync_mode();
    let store = tokio::task::spawn_blocking(move || EmbeddedStore::open(&state_dir, sync))
        .await
        .map_err(|e| Error::Transport(e.to_string()))??;
    Ok(Arc::new(store))
}

/// The leadership loop; returns when `shutdown` is cancelled.
async fn lead(
    config: &SchedulerConfig,
    state: Arc<dyn StateStore>,
    results: Arc<dyn ResultStore>,
    roles: &Roles,
    shutdown: &CancellationToken,
) -> Result<()> {
    loop {
        roles.set(Role::Follower);
        let won: Leadership = tokio::select! {
            r = state.acquire() => match r {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(error = %e, "cannot become leader; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = shutdown.cancelled() => return Ok(()),
                    }
                }
            },
            _ = shutdown.cancelled() => return Ok(()),
        };
        let epoch = won.epoch;
        roles.set(Role::Starting { epoch });
        tracing::info!(epoch, "elected; loading state");
        let recovered = tokio::select! {
            r = load(state.as_ref(), results.as_ref()) => r,
            _ = won.lost.cancelled() => Err(Error::Transport("leadership lost while loading".into())),
            _ = shutdown.cancelled() => return Ok(()),
        };
        let recovered = match recovered {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(epoch, error = %e, "cannot load state; stepping down");
                state.resign(epoch).await;
                continue;
            }
        };
        let mut engine = Engine::new(config.engine(results.root_uri()), epoch);
        engine.recover(recovered, baton_common::time::now_ms());
        let stop = shutdown.child_token();
        let (handle, mut actor_task) =
            actor::spawn(engine, state.clone(), results.clone(), stop.clone());
        roles.set(Role::Leader { epoch, handle });
        tracing::info!(epoch, store = %results.root_uri(), "scheduler is leader");
        // The actor's handle is awaited exactly once: a finished handle polled again panics.
        let actor_done = tokio::select! {
            _ = won.lost.cancelled() => {
                tracing::warn!(epoch, "leadership lost; stepping down");
                false
            }
            _ = &mut actor_task => {
                tracing::warn!(epoch, "engine stopped; stepping down");
                true
            }
            _ = shutdown.cancelled() => false,
        };
        roles.set(Role::Follower);
        stop.cancel();
        if !actor_done {
            let _ = actor_task.await;
        }
        state.resign(epoch).await;
        if shutdown.is_cancelled() {
            return Ok(());
        }
    }
}

/// `RUN/TASK/INDEX` of a task run key (without its prefix).
fn split_task_run_key(rest: &str) -> Option<(String, String, i64)> {
    let mut parts = rest.splitn(3, '/');
    let (run, task, index) = (parts.next()?, parts.next()?, parts.next()?);
    Some((run.to_string(), task.to_string(), index.parse().ok()?))
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
    for (key, value) in state.load(keys::IDEMPOTENCY_PREFIX).await? {
        if let (Some(k), Ok(run)) = (
            key.strip_prefix(keys::IDEMPOTENCY_PREFIX),
            String::from_utf8(value),
        ) {
            rec.idempotency.push((k.to_string(), run));
        }
    }
    for (key, value) in state.load(keys::CACHE_PREFIX).await? {
        match serde_json::from_slice::<crate::engine::CacheEntry>(&value) {
            Ok(e) => rec
                .cache
                .push((key[keys::CACHE_PREFIX.len()..].to_string(), e)),
            Err(e) => tracing::error!(%key, error = %e, "skipping an unreadable cache entry"),
        }
    }
    for (key, value) in state.load(keys::SCHEDULE_PREFIX).await? {
        let mut parts = key[keys::SCHEDULE_PREFIX.len()..].splitn(2, '/');
        let (Some(project), Some(flow)) = (parts.next(), parts.next()) else {
            continue;
        };
        match serde_json::from_slice::<crate::engine::ScheduleRecord>(&value) {
            Ok(r) => rec
                .schedules
                .push((project.to_string(), flow.to_string(), r)),
            Err(e) => tracing::error!(%key, error = %e, "skipping an unreadable schedule record"),
        }
    }
    for (key, value) in state.load(keys::FINISHED_PREFIX).await? {
        match <baton_proto::FlowRun as prost::Message>::decode(value.as_slice()) {
            Ok(r) => rec.finished.push((key, r)),
            Err(e) => tracing::error!(%key, error = %e, "skipping an unreadable run summary"),
        }
    }
    for (key, value) in state.load(keys::LIMIT_PREFIX).await? {
        let tag = &key[keys::LIMIT_PREFIX.len()..];
        match std::str::from_utf8(&value)
            .ok()
            .and_then(|v| v.parse::<u32>().ok())
        {
            Some(l) => rec.limits.push((tag.to_string(), l)),
            None => tracing::error!(%key, "skipping an unreadable concurrency limit"),
        }
    }
    for (key, value) in state.load(keys::RUN_PREFIX).await? {
        match serde_json::from_slice::<RunRecord>(&value) {
            Ok(r) => rec.runs.push(r),
            Err(e) => tracing::error!(%key, error = %e, "skipping an unreadable run record"),
        }
    }
    // Committed result pointers are the truth about completion (see
    // `Recovered::apply_pointers`).
    let mut pointers = std::collections::HashMap::new();
    for (key, value) in state.load(keys::RESULT_PREFIX).await? {
        let Some((run, task, index)) = split_task_run_key(&key[keys::RESULT_PREFIX.len()..]) else {
            continue;
        };
        match serde_json::from_slice::<baton_common::result_store::ResultRef>(&value) {
            Ok(r) => {
                pointers.insert((run, task, index), r);
            }
            Err(e) => tracing::error!(%key, error = %e, "skipping an unreadable result pointer"),
        }
    }
    for (key, value) in state.load("tr/").await? {
        let Some((run, task, index)) = split_task_run_key(&key["tr/".len()..]) else {
            continue;
        };
        match serde_json::from_slice::<TaskRunRecord>(&value) {
            Ok(r) => rec.task_runs.push((run, task, index, r)),
            Err(e) => tracing::error!(%key, error = %e, "skipping an unreadable task run record"),
        }
    }
    rec.apply_pointers(pointers);
    // Values too large to sit in their record are read back from the result store, many at
    // a time. A JSON null result is 4 bytes: a missing (or, in older records, null) value of
    // a larger result must be read.
    let missing: Vec<usize> = rec
        .task_runs
        .iter()
        .enumerate()
        .filter(|(_, (_, _, _, r))| {
            r.result.as_ref().is_some_and(|res| {
                r.value.is_none() || (r.value == Some(serde_json::Value::Null) && res.size != 4)
            })
        })
        .map(|(i, _)| i)
        .collect();
    let reads = missing.into_iter().filter_map(|i| {
        let uri = rec.task_runs[i].3.result.as_ref()?.uri.clone();
        Some(async move { (i, results.get(&uri).await.map_err(|e| (uri, e))) })
    });
    let read: Vec<_> = futures::stream::iter(reads)
        .buffer_unordered(32)
        .collect()
        .await;
    for (i, got) in read {
        match got {
            Ok(bytes) => rec.task_runs[i].3.value = serde_json::from_slice(&bytes).ok(),
            Err((uri, e)) => tracing::error!(%uri, error = %e, "cannot read a result back"),
        }
    }
    // Likewise the values of live cache entries too large for their record.
    let now = baton_common::time::now_ms();
    let wanted: Vec<(usize, String)> = rec
        .cache
        .iter()
        .enumerate()
        .filter(|(_, (_, e))| e.value.is_none() && (e.expires_ms == 0 || e.expires_ms > now))
        .map(|(i, (_, e))| (i, e.result.uri.clone()))
        .collect();
    let reads = wanted
        .into_iter()
        .map(|(i, uri)| async move { (i, results.get(&uri).await.map_err(|err| (uri, err))) });
    let read: Vec<_> = futures::stream::iter(reads)
        .buffer_unordered(32)
        .collect()
        .await;
    for (i, got) in read {
        match got {
            Ok(bytes) => rec.cache[i].1.value = serde_json::from_slice(&bytes).ok(),
            Err((uri, e)) => tracing::warn!(%uri, error = %e, "cannot read a cached value back"),
        }
    }
    Ok(rec)
}
