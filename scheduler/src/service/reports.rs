//! What a worker's reports may carry, bounded before they reach the engine: a result must
//! lie in the cluster's own result store (never another bucket or a file of the scheduler's
//! host, which the scheduler would read with its own rights) with a short location and
//! metadata; an inline result over its limit is dropped (the scheduler reads the result from
//! the store instead); errors and log lines are cut to their limits. Batches are walked.

use super::bounds::quote;
use baton_common::text::cut;
use baton_proto as pb;
use baton_proto::limits::{
    MAX_ERROR_BYTES, MAX_INLINE_RESULT_BYTES, MAX_LOCATION_BYTES, MAX_LOG_LINE_BYTES,
    MAX_RESULT_BYTES, MAX_RESULT_META_BYTES, MAX_RUN_AHEAD,
};
use pb::finished::Outcome;
use pb::worker_message::Msg;

/// The longest log stream name (`stdout`, `stderr`, `baton`).
const MAX_STREAM_BYTES: usize = 16;

/// Bounds the reports of one worker session; see the module docs.
#[derive(Clone, Debug)]
pub struct Reports {
    /// Results must lie under this (`file:///dir/` or `s3://bucket/prefix/`).
    store_prefix: String,
}

impl Reports {
    /// Reports for a cluster whose result store is `root` (`ResultStore::root_uri`).
    pub fn new(root: &str) -> Reports {
        Reports {
            store_prefix: format!("{}/", root.trim_end_matches('/')),
        }
    }

    /// Bounds `msg` in place.
    pub fn bound(&self, msg: &mut Msg) {
        match msg {
            Msg::Finished(f) => self.finished(f),
            Msg::Logs(l) => {
                for line in &mut l.lines {
                    cut(&mut line.line, MAX_LOG_LINE_BYTES, "");
                    cut(&mut line.stream, MAX_STREAM_BYTES, "");
                }
            }
            Msg::Batch(b) => {
                for inner in b.messages.iter_mut().filter_map(|m| m.msg.as_mut()) {
                    self.bound(inner);
                }
            }
            _ => {}
        }
    }

    fn finished(&self, f: &mut pb::Finished) {
        // What was run ahead: successes only, each within the limits; the chain ends at the
        // first that is not.
        f.ahead.truncate(MAX_RUN_AHEAD);
        let mut ahead = std::mem::take(&mut f.ahead);
        let good = ahead
            .iter_mut()
            .position(|r| !self.ran_ahead_ok(r))
            .unwrap_or(ahead.len());
        ahead.truncate(good);
        f.ahead = ahead;
        match &mut f.outcome {
            Some(Outcome::Success(s)) => {
                if s.inline_value.len() > MAX_INLINE_RESULT_BYTES {
                    s.inline_value = String::new();
                }
                if let Some(error) = s.result.as_ref().and_then(|r| self.refusal(r)) {
                    f.outcome = Some(Outcome::Failure(pb::TaskFailure {
                        error,
                        retryable: false,
                    }));
                }
            }
            Some(Outcome::Failure(e)) => cut(
                &mut e.error,
                MAX_ERROR_BYTES,
                " … (cut: the error is over the 16 KiB limit)",
            ),
            None => {}
        }
    }

    /// Whether a task run reported run ahead is a success within the limits (its own
    /// `ahead` is emptied: chains are flat).
    fn ran_ahead_ok(&self, r: &mut pb::RanAhead) -> bool {
        let Some(f) = r.finished.as_mut() else {
            return false;
        };
        f.ahead.clear();
        match &f.outcome {
            Some(Outcome::Success(s)) => {
                s.inline_value.len() <= MAX_INLINE_RESULT_BYTES
                    && !s.inline_value.is_empty()
                    && s.result.as_ref().is_some_and(|r| self.refusal(r).is_none())
            }
            _ => false,
        }
    }

    /// Why the scheduler will not take `r` as a result, if it will not.
    fn refusal(&self, r: &pb::ResultRef) -> Option<String> {
        if r.uri.len() > MAX_LOCATION_BYTES {
            return Some(format!(
                "the worker reported a result location of {} bytes, over the limit of \
                 {MAX_LOCATION_BYTES} bytes",
                r.uri.len()
            ));
        }
        if !r.uri.starts_with(&self.store_prefix) {
            return Some(format!(
                "the worker reported a result at \"{}\", outside this cluster's result store",
                quote(&r.uri)
            ));
        }
        if r.checksum.len() > MAX_RESULT_META_BYTES || r.content_type.len() > MAX_RESULT_META_BYTES
        {
            return Some(format!(
                "the worker reported a result checksum or content type over the limit of \
                 {MAX_RESULT_META_BYTES} bytes"
            ));
        }
        if r.size > MAX_RESULT_BYTES as u64 {
            return Some(format!(
                "the result is {} bytes, over the limit of {MAX_RESULT_BYTES} bytes: write \
                 large data as an artifact and return its location",
                r.size
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn success(uri: &str, inline: &str) -> Msg {
        Msg::Finished(pb::Finished {
            outcome: Some(Outcome::Success(pb::TaskSuccess {
                result: Some(pb::ResultRef {
                    uri: uri.into(),
                    size: 2,
                    ..Default::default()
                }),
                inline_value: inline.into(),
            })),
            ..Default::default()
        })
    }

    fn error_of(msg: &Msg) -> Option<&str> {
        match msg {
            Msg::Finished(pb::Finished {
                outcome: Some(Outcome::Failure(e)),
                ..
            }) => Some(&e.error),
            _ => None,
        }
    }

    #[test]
    fn results_outside_the_store_fail_the_attempt() {
        let r = Reports::new("file:///data/store/");
        let mut ok = success("file:///data/store/results/r/a/0.json", "42");
        r.bound(&mut ok);
        assert_eq!(error_of(&ok), None);
        for uri in [
            "file:///etc/passwd",
            "file:///data/store-other/x",
            "s3://another-bucket/x",
        ] {
            let mut m = success(uri, "42");
            r.bound(&mut m);
            let e = error_of(&m).expect("refused");
            assert!(e.contains("outside this cluster's result store"), "{e}");
        }
        let mut long = success(&format!("file:///data/store/{}", "x".repeat(10_000)), "");
        r.bound(&mut long);
        assert!(error_of(&long).expect("refused").contains("4096 bytes"));
    }

    #[test]
    fn large_inline_values_errors_and_log_lines_are_cut() {
        let r = Reports::new("s3://b/p");
        let big = format!("\"{}\"", "v".repeat(MAX_INLINE_RESULT_BYTES));
        let mut m = Msg::Batch(pb::WorkerBatch {
            messages: vec![pb::WorkerMessage {
                msg: Some(success("s3://b/p/results/x", &big)),
            }],
        });
        r.bound(&mut m);
        let Msg::Batch(b) = &m else { panic!() };
        match &b.messages[0].msg {
            Some(Msg::Finished(pb::Finished {
                outcome: Some(Outcome::Success(s)),
                ..
            })) => assert!(s.inline_value.is_empty()),
            other => panic!("{other:?}"),
        }

        let mut f = Msg::Finished(pb::Finished {
            outcome: Some(Outcome::Failure(pb::TaskFailure {
                error: "é".repeat(MAX_ERROR_BYTES),
                retryable: true,
            })),
            ..Default::default()
        });
        r.bound(&mut f);
        let e = error_of(&f).expect("failure");
        assert!(e.len() < MAX_ERROR_BYTES + 100, "{}", e.len());
        assert!(e.ends_with("16 KiB limit)"));

        let mut logs = Msg::Logs(pb::LogLines {
            lines: vec![pb::LogLine {
                line: "l".repeat(MAX_LOG_LINE_BYTES * 4),
                stream: "s".repeat(1000),
                ..Default::default()
            }],
        });
        r.bound(&mut logs);
        let Msg::Logs(l) = &logs else { panic!() };
        assert_eq!(l.lines[0].line.len(), MAX_LOG_LINE_BYTES);
        assert_eq!(l.lines[0].stream.len(), MAX_STREAM_BYTES);
    }
}
