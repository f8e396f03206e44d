//! Spans of runs and of their task runs' attempts, made only while traces are exported: a
//! run's span lasts from its creation to its end (under the caller's `traceparent`, or its
//! parent run's span for a child run); an attempt's from its dispatch to its result, under
//! its run's, and its `traceparent` goes to the worker in `Assign`. A run gets at most
//! [`MAX_ATTEMPT_SPANS`] attempt spans (a wide fan-out would flood the collector); later
//! attempts send the run's `traceparent` marked not sampled, so that their workers record
//! no span either, while a task's own SDK still sees the run's trace id.

use baton_common::ids::AttemptKey;
use baton_common::traces;
use baton_proto as pb;
use std::collections::HashMap;
use tracing::Span;

/// Attempt spans per run, at most.
pub const MAX_ATTEMPT_SPANS: usize = 200;

#[derive(Default)]
pub(super) struct RunTraces {
    runs: HashMap<String, RunTrace>,
    /// `traceparent`s given with runs being created, until their spans are made.
    callers: HashMap<String, String>,
}

struct RunTrace {
    span: Span,
    attempts: HashMap<(String, i64, u32), Span>,
    made: usize,
    /// The run's `traceparent`, not sampled, for attempts past the cap (made once).
    unsampled: Option<String>,
}

impl RunTraces {
    /// A client created run `id` under `traceparent`.
    pub fn caller(&mut self, id: &str, traceparent: String) {
        if traces::on() && !traceparent.is_empty() {
            self.callers.insert(id.to_string(), traceparent);
        }
    }

    /// Whether run `id` has a span.
    pub fn knows(&self, id: &str) -> bool {
        self.runs.contains_key(id)
    }

    /// Opens the span of a run seen for the first time.
    pub fn opened(&mut self, run: &pb::FlowRun) {
        let span = tracing::info_span!(
            "run",
            run = %run.id,
            project = %run.project,
            flow = %run.flow,
            parent_run = %run.parent_run_id,
            parent_task = %run.parent_task,
            state = tracing::field::Empty,
        );
        if let Some(tp) = self.callers.remove(&run.id) {
            traces::set_parent(&span, &tp);
        } else if let Some(parent) = self.runs.get(&run.parent_run_id) {
            let _ = tracing_opentelemetry::OpenTelemetrySpanExt::set_parent(
                &span,
                tracing_opentelemetry::OpenTelemetrySpanExt::context(&parent.span),
            );
        }
        self.runs.insert(
            run.id.clone(),
            RunTrace {
                span,
                attempts: HashMap::new(),
                made: 0,
                unsampled: None,
            },
        );
    }

    /// An attempt is being sent to `worker`: its span opens, and `Assign` carries it.
    pub fn assigned(&mut self, a: &mut pb::Assign, worker: &str) {
        let Some(k) = a.key.as_ref() else { return };
        let Some(run) = self.runs.get_mut(&k.run_id) else {
            return;
        };
        if run.made >= MAX_ATTEMPT_SPANS {
            let span = &run.span;
            a.traceparent = run
                .unsampled
                .get_or_insert_with(|| traces::unsampled(&traces::traceparent(span)))
                .clone();
            return;
        }
        run.made += 1;
        let span = tracing::info_span!(
            parent: &run.span,
            "task_run",
            run = %k.run_id,
            task = %k.task,
            map_index = k.map_index,
            attempt = k.attempt,
            worker = %worker,
        );
        a.traceparent = traces::traceparent(&span);
        run.attempts
            .insert((k.task.clone(), k.map_index, k.attempt), span);
    }

    /// An attempt's result came back: its span, with a child span for the commit of its
    /// result (the group commit of this step), both to be closed once that is durable.
    pub fn finished(&mut self, key: &AttemptKey) -> Option<(Span, Span)> {
        let span = self.runs.get_mut(&key.run)?.attempts.remove(&(
            key.task.clone(),
            key.map_index,
            key.attempt,
        ))?;
        let commit = tracing::info_span!(
            parent: &span,
            "result_commit",
            operations = tracing::field::Empty,
        );
        Some((span, commit))
    }

    /// A run ended: its span closes, and any attempt's left.
    pub fn ended(&mut self, id: &str, state: &str) {
        if let Some(run) = self.runs.remove(id) {
            run.span.record("state", state);
            drop(run);
        }
    }
}
