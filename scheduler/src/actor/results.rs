//! Results reported by workers: read large ones back from the store, then hand the
//! outcome to the engine; and the crash-before-commit fault injection.

use super::{Actor, Command};
use crate::engine::Outcome;
use baton_common::ids::{AttemptKey, WorkerId};
use baton_common::result_store::ResultRef;
use baton_proto as pb;

impl Actor {
    pub(super) fn finished(&mut self, id: &WorkerId, session: u64, f: pb::Finished, now: i64) {
        let Some(key) = f.key.as_ref().map(AttemptKey::from) else {
            tracing::warn!(worker = %id, "finished message without a key");
            return;
        };
        let outcome = match f.outcome {
            Some(pb::finished::Outcome::Success(s)) => {
                self.fault_crash_before_commit(&key);
                self.fault_stop_engine(&key);
                let Some(result) = s.result.map(ResultRef::from) else {
                    let outcome = Outcome::Failure {
                        error: "worker reported success without a result location".into(),
                        retryable: true,
                    };
                    self.engine.task_finished(id, session, &key, outcome, now);
                    return;
                };
                if s.inline_value.is_empty() {
                    self.load_result(id.clone(), session, key, result);
                    return;
                }
                match serde_json::from_str(&s.inline_value) {
                    Ok(value) => Outcome::Success { result, value },
                    Err(e) => Outcome::Failure {
                        error: format!("result is not valid JSON: {e}"),
                        retryable: false,
                    },
                }
            }
            Some(pb::finished::Outcome::Failure(e)) => Outcome::Failure {
                error: e.error,
                retryable: e.retryable,
            },
            None => Outcome::Failure {
                error: "worker reported neither success nor failure".into(),
                retryable: true,
            },
        };
        self.engine.task_finished(id, session, &key, outcome, now);
    }

    /// Fault injection: abort between a result's upload and its commit (once).
    pub(super) fn fault_crash_before_commit(&self, key: &AttemptKey) {
        if !cfg!(feature = "faults") {
            return;
        }
        if let Some((task, marker)) = &self.engine.config().fault_crash_before_commit {
            if *task == key.task && !marker.exists() {
                let _ = std::fs::write(marker, key.to_string());
                tracing::warn!(attempt = %key, "fault injection: aborting before the commit");
                std::process::abort();
            }
        }
    }

    /// Fault injection: the engine stops on its own (once), as after a failed write.
    pub(super) fn fault_stop_engine(&mut self, key: &AttemptKey) {
        if !cfg!(feature = "faults") {
            return;
        }
        if let Some((task, marker)) = &self.engine.config().fault_stop_engine {
            if *task == key.task && !marker.exists() {
                let _ = std::fs::write(marker, key.to_string());
                tracing::warn!(attempt = %key, "fault injection: the engine stops on its own");
                self.stop_on_its_own = true;
            }
        }
    }

    /// Reads a large result back from the store, then feeds it to the engine.
    pub(super) fn load_result(
        &self,
        id: WorkerId,
        session: u64,
        key: AttemptKey,
        result: ResultRef,
    ) {
        let store = self.results.clone();
        let tx = self.self_tx.clone();
        self.tasks.spawn(async move {
            let max = baton_proto::limits::MAX_RESULT_BYTES as u64;
            let outcome = match store.get_at_most(&result.uri, max).await {
                Ok(bytes) => match serde_json::from_slice(&bytes) {
                    Ok(value) => Outcome::Success { result, value },
                    Err(e) => Outcome::Failure {
                        error: format!("result is not valid JSON: {e}"),
                        retryable: false,
                    },
                },
                Err(e @ baton_common::Error::TooLarge { .. }) => Outcome::Failure {
                    error: format!("the result is too large: {e}"),
                    retryable: false,
                },
                Err(e) => Outcome::Failure {
                    error: format!("cannot read result {}: {e}", result.uri),
                    retryable: true,
                },
            };
            let _ = tx
                .send(Command::ResultLoaded(id, session, key, outcome))
                .await;
        });
    }
}
