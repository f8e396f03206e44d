//! Tracing set-up shared by the binaries, and task logs from tracing: events a built-in task
//! emits (at info level or above) while it runs inside [`task_log_scope`] also go to its
//! attempt's log.

use std::fmt::Write as _;
use std::future::Future;
use std::sync::Arc;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Where a running task's log lines go: `(stream, line)`.
pub type TaskLogSink = Arc<dyn Fn(&'static str, String) + Send + Sync>;

tokio::task_local! {
    static TASK_LOG: TaskLogSink;
}

/// Runs `fut` with tracing events emitted inside it sent to `sink` as well.
pub async fn task_log_scope<F: Future>(sink: TaskLogSink, fut: F) -> F::Output {
    TASK_LOG.scope(sink, fut).await
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Lines for people (the default).
    #[default]
    Text,
    /// One JSON object per line, with the fields of the event and of its span (run, task,
    /// map index, attempt, worker), for log collectors.
    Json,
}

/// Installs a `fmt` subscriber filtered by `RUST_LOG` (default `default_filter`), writing
/// text to stderr (in colour only on a terminal, and never with `NO_COLOR` set), plus the
/// task-log layer. Safe to call more than once.
pub fn init(default_filter: &str) {
    init_with(default_filter, LogFormat::Text)
}

/// [`init`], writing lines in `format`.
pub fn init_with(default_filter: &str, format: LogFormat) {
    install(default_filter, format, None);
}

/// [`init_with`] for a service (`baton-scheduler`, `baton-worker`), which also exports
/// spans over OTLP when an endpoint is configured (see [`crate::traces`]); call it inside
/// the Tokio runtime and keep what it returns for the life of the process.
pub fn init_service(
    default_filter: &str,
    format: LogFormat,
    service: &'static str,
) -> crate::traces::Traces {
    let provider = match crate::traces::provider(service) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{service}: traces are off: {e}");
            None
        }
    };
    install(
        default_filter,
        format,
        provider.as_ref().map(|p| (p, service)),
    );
    crate::traces::keep(provider)
}

fn install(
    default_filter: &str,
    format: LogFormat,
    traces: Option<(&opentelemetry_sdk::trace::SdkTracerProvider, &'static str)>,
) {
    use std::io::IsTerminal;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let fmt = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(colour)
            .with_target(false)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_target(false)
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
    };
    // Spans of baton's own code at info level: runs, task run attempts (and their events).
    let otel = traces.map(|(provider, service)| {
        crate::traces::layer(provider, service).with_filter(
            tracing_subscriber::filter::Targets::new()
                .with_target("baton_scheduler", Level::INFO)
                .with_target("baton_worker", Level::INFO)
                .with_target("baton_worker::untraced", LevelFilter::OFF)
                .with_target("baton_common", Level::INFO),
        )
    });
    let _ = tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(TaskLogLayer.with_filter(LevelFilter::INFO))
        .with(otel)
        .try_init();
}

/// Forwards events emitted within a [`task_log_scope`] to its sink.
struct TaskLogLayer;

impl<S: Subscriber> Layer<S> for TaskLogLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let _ = TASK_LOG.try_with(|sink| {
            let mut line = LineVisitor::default();
            event.record(&mut line);
            let level = *event.metadata().level();
            let stream = if level <= Level::WARN {
                "stderr"
            } else {
                "log"
            };
            sink(stream, format!("{level} {}{}", line.message, line.fields));
        });
    }
}

#[derive(Default)]
struct LineVisitor {
    message: String,
    fields: String,
}

impl Visit for LineVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[tokio::test]
    async fn events_inside_a_task_scope_reach_its_sink_only() {
        init("warn");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let seen = lines.clone();
        let sink: TaskLogSink = Arc::new(move |stream, line| {
            seen.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((stream, line));
        });
        tracing::info!("outside");
        task_log_scope(sink, async {
            tracing::info!(rows = 3, "fitting");
            tracing::debug!("too fine");
            tokio::task::yield_now().await;
            tracing::warn!("slow");
        })
        .await;
        let got = lines.lock().unwrap_or_else(|e| e.into_inner()).clone();
        assert_eq!(
            got,
            vec![
                ("log", "INFO fitting rows=3".to_string()),
                ("stderr", "WARN slow".to_string())
            ]
        );
    }
}
