//! Start-up: open the stores, serve the gRPC services at once (a follower answers with the
//! leader's address), and run the leadership loop: campaign, load the state, run the
//! engine's actor while leading, and on losing leadership drop everything and campaign again.

use crate::actor;
use crate::auth::AuthLayer;
use crate::config::SchedulerConfig;
use crate::engine::Engine;
use crate::leadership::{Role, Roles};
use crate::service::{FlowApi, WorkerApi, MAX_MESSAGE_BYTES};
use crate::shed::{ShedLayer, Shedder};
use crate::store::{EmbeddedStore, EtcdConfig, EtcdStore, Leadership, StateStore};
use crate::tls::ServerTls;
use crate::{Error, Result};
use baton_common::result_store::{open_store, ResultStore};
use baton_proto::flow_service_server::FlowServiceServer;
use baton_proto::worker_service_server::WorkerServiceServer;
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
    let tokens = config.auth(addr)?;
    if let Some(t) = &tokens {
        t.watch(shutdown.clone());
        tracing::info!("authentication on: every call but health checks needs a token");
    }
    let tls = config.tls_files().map(ServerTls::load).transpose()?;
    if let Some(t) = &tls {
        t.watch(shutdown.clone());
        tracing::info!("TLS on");
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    let advertise = config
        .advertise
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{addr}"));
    let replica_id = config
        .replica_id
        .clone()
        .unwrap_or_else(|| advertise.clone());
    let state = open_state(&config, &replica_id, &advertise).await?;
    let store_uri = config.result_store_uri();
    let metrics = crate::metrics::get();
    let results = metrics.store.wrap(open_store(&store_uri).await?);
    if let Some(at) = &config.metrics_addr {
        let bound = baton_common::metrics::spawn(at, metrics.registry(), shutdown.clone())
            .await
            .map_err(|e| Error::Config(format!("--metrics-addr {at}: {e}")))?;
        tracing::info!(addr = %bound, "serving metrics at /metrics");
    }
    if let Some(at) = &config.http {
        if tokens.is_none() && config.tls_client_ca.is_some() {
            // The UI calls the API with this replica's own certificate: without tokens it
            // would open the API to anyone who reaches the UI's port.
            return Err(Error::Config(format!(
                "--http {at}: the API requires client certificates (--tls-client-ca) and no \
                 token; the web UI would open it to anyone who reaches {at}. Give \
                 --tokens-file"
            )));
        }
        let listener = TcpListener::bind(at)
            .await
            .map_err(|e| Error::Config(format!("--http {at}: {e}")))?;
        let (api, api_tls) = web_api(&config, addr);
        let bound =
            crate::web::spawn(listener, api, tokens.is_some(), api_tls, shutdown.clone()).await?;
        tracing::info!(url = %format!("http://{bound}/"), "serving the web UI");
    }
    let roles = Arc::new(Roles::new(state.clone(), replica_id, advertise));

    let flow = FlowServiceServer::new(FlowApi::new(roles.clone(), results.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let worker = WorkerServiceServer::new(WorkerApi::new(
        roles.clone(),
        Duration::from_millis(config.worker_lease_ms),
        &results.root_uri(),
    ))
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let (health, reflection_v1, reflection_v1alpha) = meta_services().await?;
    tracing::info!(%addr, "serving");
    // tonic applies its `tcp_nodelay` setting only to listeners it binds itself; accepted
    // sockets of a listener handed in must be given TCP_NODELAY here, or small frames wait
    // for Nagle's algorithm and the peer's delayed ACK (about 40 ms a message).
    let stop = shutdown.clone();
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(5)))
        .layer(
            tower::ServiceBuilder::new()
                .layer(AuthLayer::new(tokens))
                .layer(ShedLayer::new(Shedder::new(config.shed_limits()))),
        )
        .add_service(flow)
        .add_service(worker)
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    let mut server = match &tls {
        None => {
            let incoming =
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            tokio::spawn(router.serve_with_incoming_shutdown(incoming, stop.cancelled_owned()))
        }
        Some(tls) => {
            let incoming = tls.incoming(listener, stop.clone());
            tokio::spawn(router.serve_with_incoming_shutdown(incoming, stop.cancelled_owned()))
        }
    };

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
            tls: config.etcd_tls()?,
            compact_every: crate::store::etcd::DEFAULT_COMPACT_EVERY,
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
    let mut delays = baton_common::retry::CAMPAIGN.delays();
    loop {
        roles.set(Role::Follower);
        let won: Leadership = tokio::select! {
            r = state.acquire() => match r {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(error = %e, "cannot become leader; retrying");
                    let delay = delays.next().unwrap_or(baton_common::retry::CAMPAIGN.max);
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => continue,
                        _ = shutdown.cancelled() => return Ok(()),
                    }
                }
            },
            _ = shutdown.cancelled() => return Ok(()),
        };
        let epoch = won.epoch;
        delays = baton_common::retry::CAMPAIGN.delays();
        roles.set(Role::Starting { epoch });
        tracing::info!(epoch, "elected; loading state");
        let recovered = tokio::select! {
            r = crate::load::load(state.as_ref(), results.as_ref()) => r,
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
        crate::metrics::get().leading(Some(epoch));
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
        crate::metrics::get().leading(None);
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

/// Where the web UI calls this replica's API, and with what TLS. Over loopback when the
/// replica listens on every address; under TLS by the name `localhost` (which a replica's
/// certificate holds, as the health check's `https://localhost:PORT` needs), trusting the
/// CA in `BATON_TLS_CA` or else the one that signs client certificates, and presenting the
/// replica's own certificate where clients must present one.
fn web_api(
    config: &SchedulerConfig,
    addr: std::net::SocketAddr,
) -> (String, Option<baton_client::tls::TlsFiles>) {
    let port = addr.port();
    let ip = if addr.ip().is_unspecified() {
        std::net::IpAddr::from([127, 0, 0, 1])
    } else {
        addr.ip()
    };
    let Some(files) = config.tls_files() else {
        return (
            format!("http://{}", std::net::SocketAddr::new(ip, port)),
            None,
        );
    };
    let host = if ip.is_loopback() {
        "localhost".to_string()
    } else {
        std::net::SocketAddr::new(ip, port).ip().to_string()
    };
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    let ca = std::env::var_os("BATON_TLS_CA")
        .map(std::path::PathBuf::from)
        .or_else(|| files.client_ca.clone());
    let mutual = files.client_ca.is_some();
    let tls = baton_client::tls::TlsFiles {
        ca,
        cert: mutual.then(|| files.cert.clone()),
        key: mutual.then(|| files.key.clone()),
    };
    (format!("https://{host}:{port}"), Some(tls))
}
