//! OpenTelemetry traces: an OTLP/gRPC exporter set up from the standard variables
//! (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
//! `OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`), off when no
//! endpoint is set; and W3C `traceparent` propagation between processes (gRPC metadata,
//! `Assign.traceparent`, a task's `TRACEPARENT`).

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing_opentelemetry::OpenTelemetrySpanExt;

static ON: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported (an OTLP endpoint is configured).
pub fn on() -> bool {
    ON.load(Ordering::Relaxed)
}

/// The exporter's provider: flushes what is left when dropped (keep it for the life of
/// the process).
pub struct Traces(Option<SdkTracerProvider>);

impl Drop for Traces {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = p.shutdown();
        }
    }
}

/// The OTLP endpoint set in the environment, if any.
fn endpoint() -> Option<String> {
    [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .find_map(|v| std::env::var(v).ok().filter(|s| !s.trim().is_empty()))
}

/// Builds the exporter and its provider when an endpoint is set (inside a Tokio runtime:
/// the gRPC exporter runs on it). `service` names the process unless `OTEL_SERVICE_NAME`
/// does.
pub(crate) fn provider(service: &'static str) -> Result<Option<SdkTracerProvider>, String> {
    let Some(at) = endpoint() else {
        return Ok(None);
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .map_err(|e| format!("OTLP exporter for {at}: {e}"))?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service);
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    ON.store(true, Ordering::Relaxed);
    Ok(Some(provider))
}

/// The tracing layer exporting spans through `provider`.
pub(crate) fn layer<S>(
    provider: &SdkTracerProvider,
    service: &'static str,
) -> tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_opentelemetry::layer().with_tracer(provider.tracer(service))
}

/// Wraps a provider for the process to keep.
pub(crate) fn keep(provider: Option<SdkTracerProvider>) -> Traces {
    Traces(provider)
}

/// The W3C `traceparent` of `span` (empty when traces are off or the span is not
/// recorded).
pub fn traceparent(span: &tracing::Span) -> String {
    if !on() {
        return String::new();
    }
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return String::new();
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove("traceparent").unwrap_or_default()
}

/// Whether `traceparent` asks for its children to be recorded (its sampled flag is set).
pub fn sampled(traceparent: &str) -> bool {
    traceparent.ends_with("-01")
}

/// `traceparent` with its sampled flag cleared: spans under it are not recorded.
pub fn unsampled(traceparent: &str) -> String {
    match traceparent.rsplit_once('-') {
        Some((head, _flags)) => format!("{head}-00"),
        None => String::new(),
    }
}

/// Makes `traceparent` (W3C; ignored when empty or malformed) the parent of `span`, which
/// must not have been entered yet.
pub fn set_parent(span: &tracing::Span, traceparent: &str) {
    if !on() || traceparent.is_empty() {
        return;
    }
    let carrier = HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}
