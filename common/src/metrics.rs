//! Prometheus metrics shared by the scheduler and the worker: the `/metrics` endpoint
//! (OpenMetrics text) and the result store's latency and errors, measured by a wrapper
//! around any [`ResultStore`].

use crate::result_store::{ResultRef, ResultStore};
use crate::Result;
use async_trait::async_trait;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

pub use prometheus_client;

/// The content type of the OpenMetrics text format.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Buckets for latencies: 10 µs to about 42 s.
pub fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.000_01, 2.0, 23)
}

/// A histogram with [`latency_buckets`].
pub fn latency_histogram() -> Histogram {
    Histogram::new(latency_buckets())
}

/// Serves `GET /metrics` from `registry` on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let registry = registry.clone();
            async move { render(&registry) }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// Binds `addr` and serves `/metrics` in the background; the bound address, or why not.
pub async fn spawn(
    addr: &str,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
) -> std::io::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = serve(listener, registry, shutdown).await {
            tracing::warn!(error = %e, "the metrics endpoint stopped");
        }
    });
    Ok(local)
}

fn render(registry: &Registry) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, registry) {
        Ok(()) => ([(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response(),
        Err(_) => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the metrics",
        )
            .into_response(),
    }
}

/// Labels of a result store operation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: &'static str,
}

/// The result store's metrics: latency and errors by operation.
#[derive(Clone)]
pub struct StoreMetrics {
    latency: Family<OpLabel, Histogram, fn() -> Histogram>,
    errors: Family<OpLabel, Counter>,
}

impl StoreMetrics {
    /// Registers `baton_result_store_operation_seconds` and
    /// `baton_result_store_errors_total` in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = StoreMetrics {
            latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            errors: Family::default(),
        };
        registry.register_with_unit(
            "baton_result_store_operation",
            "Latency of result store operations (put, get, exists, delete)",
            Unit::Seconds,
            m.latency.clone(),
        );
        registry.register(
            "baton_result_store_errors",
            "Result store operations that failed, by operation",
            m.errors.clone(),
        );
        m
    }

    /// Wraps `inner` so that its operations are measured.
    pub fn wrap(&self, inner: Arc<dyn ResultStore>) -> Arc<dyn ResultStore> {
        Arc::new(Measured {
            inner,
            m: self.clone(),
        })
    }

    fn done<T>(&self, op: &'static str, start: Instant, r: &Result<T>) {
        let label = OpLabel { op };
        self.latency
            .get_or_create(&label)
            .observe(start.elapsed().as_secs_f64());
        if r.is_err() {
            self.errors.get_or_create(&label).inc();
        }
    }
}

/// A result store whose operations are measured.
struct Measured {
    inner: Arc<dyn ResultStore>,
    m: StoreMetrics,
}

#[async_trait]
impl ResultStore for Measured {
    fn root_uri(&self) -> String {
        self.inner.root_uri()
    }

    async fn put(&self, key: &str, data: bytes::Bytes, content_type: &str) -> Result<ResultRef> {
        let start = Instant::now();
        let r = self.inner.put(key, data, content_type).await;
        self.m.done("put", start, &r);
        r
    }

    async fn get(&self, uri: &str) -> Result<Vec<u8>> {
        let start = Instant::now();
        let r = self.inner.get(uri).await;
        self.m.done("get", start, &r);
        r
    }

    async fn get_at_most(&self, uri: &str, max: u64) -> Result<Vec<u8>> {
        let start = Instant::now();
        let r = self.inner.get_at_most(uri, max).await;
        self.m.done("get", start, &r);
        r
    }

    async fn get_range(&self, uri: &str, offset: u64, len: u64) -> Result<(Vec<u8>, u64)> {
        let start = Instant::now();
        let r = self.inner.get_range(uri, offset, len).await;
        self.m.done("get", start, &r);
        r
    }

    async fn exists(&self, uri: &str) -> Result<bool> {
        let start = Instant::now();
        let r = self.inner.exists(uri).await;
        self.m.done("exists", start, &r);
        r
    }

    async fn delete(&self, uri: &str) -> Result<()> {
        let start = Instant::now();
        let r = self.inner.delete(uri).await;
        self.m.done("delete", start, &r);
        r
    }

    async fn list(&self, prefix: &str) -> Result<Vec<crate::result_store::Listed>> {
        let start = Instant::now();
        let r = self.inner.list(prefix).await;
        self.m.done("list", start, &r);
        r
    }

    async fn closed_packs(&self) -> Result<Vec<crate::result_store::Listed>> {
        let start = Instant::now();
        let r = self.inner.closed_packs().await;
        self.m.done("list", start, &r);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_endpoint_serves_measured_store_operations() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let mut registry = Registry::default();
        let m = StoreMetrics::register(&mut registry);
        let store = m.wrap(
            crate::result_store::open_store(&format!("file://{}", dir.path().display()))
                .await
                .expect("a local store"),
        );
        store
            .put(
                "results/a",
                bytes::Bytes::from_static(b"1"),
                "application/json",
            )
            .await
            .expect("put");
        assert!(store.get("file:///nowhere/at/all").await.is_err());
        let shutdown = CancellationToken::new();
        let addr = spawn("127.0.0.1:0", Arc::new(registry), shutdown.clone())
            .await
            .expect("bound");
        let body = tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(addr).expect("connected");
            s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
                .expect("sent");
            let mut out = String::new();
            s.read_to_string(&mut out).expect("read");
            out
        })
        .await
        .expect("joined");
        shutdown.cancel();
        assert!(
            body.starts_with("HTTP/1.0 200") || body.starts_with("HTTP/1.1 200"),
            "{body}"
        );
        assert!(body.contains(CONTENT_TYPE), "{body}");
        assert!(
            body.contains("baton_result_store_operation_seconds_count{op=\"put\"} 1"),
            "{body}"
        );
        assert!(
            body.contains("baton_result_store_errors_total{op=\"get\"} 1"),
            "{body}"
        );
        assert!(body.trim_end().ends_with("# EOF"), "{body}");
    }
}
