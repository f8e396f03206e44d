//! The sending half of a session: a bounded queue to the writer that counts a closed or
//! stalled stream as lost, and the batching of log lines into `LogLines` messages.

use super::session::Lost;
use crate::task::TaskLog;
use baton_proto as proto;
use proto::worker_message::Msg as Up;
use std::time::Duration;
use tokio::sync::mpsc::{self, error::TrySendError};

/// Log lines per `LogLines` message, and their bytes.
const MAX_LOG_BATCH: usize = 256;
const MAX_LOG_BATCH_BYTES: usize = 512 << 10;
/// Longer log lines are cut.
use baton_proto::limits::MAX_LOG_LINE_BYTES as MAX_LOG_LINE;

/// The sending half of a session.
pub(super) struct Outbound {
    pub(super) tx: mpsc::Sender<proto::WorkerMessage>,
    /// How long a send may wait for room before the stream counts as lost.
    pub(super) stall: Duration,
}

impl Outbound {
    pub(super) async fn send(&self, msg: Up) -> Result<(), Lost> {
        let closed = || Lost::new("the stream to the scheduler is closed");
        match self.tx.try_send(proto::WorkerMessage { msg: Some(msg) }) {
            Ok(()) => Ok(()),
            Err(TrySendError::Closed(_)) => Err(closed()),
            Err(TrySendError::Full(m)) => {
                match tokio::time::timeout(self.stall, self.tx.send(m)).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(_)) => Err(closed()),
                    Err(_) => Err(Lost::new(format!(
                        "the stream to the scheduler stalled for {} ms",
                        self.stall.as_millis()
                    ))),
                }
            }
        }
    }

    /// Sends log lines unless the queue is full, in which case they are dropped.
    pub(super) fn send_logs(&self, logs: proto::LogLines) -> Result<(), Lost> {
        let lines = logs.lines.len();
        match self.tx.try_send(proto::WorkerMessage {
            msg: Some(Up::Logs(logs)),
        }) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                crate::metrics::get().lines_dropped(lines);
                tracing::debug!(lines, "outbound queue full, dropping log lines");
                Ok(())
            }
            Err(TrySendError::Closed(_)) => Err(Lost::new("the stream to the scheduler is closed")),
        }
    }
}

/// One `LogLines` of `first` and what else is ready, within the batch limits.
pub(super) fn log_batch(
    first: TaskLog,
    rx: &mut mpsc::UnboundedReceiver<TaskLog>,
) -> proto::LogLines {
    let mut lines = Vec::new();
    let mut bytes = 0;
    let mut next = Some(first);
    while let Some(l) = next {
        bytes += l.line.len();
        lines.push(proto::LogLine {
            key: Some((&l.key).into()),
            at_ms: l.at_ms,
            stream: l.stream.to_string(),
            line: cut(l.line, MAX_LOG_LINE),
        });
        next = if lines.len() < MAX_LOG_BATCH && bytes < MAX_LOG_BATCH_BYTES {
            rx.try_recv().ok()
        } else {
            None
        };
    }
    proto::LogLines { lines }
}

/// `s` cut to at most `max` bytes on a character boundary, marked with `…` when cut.
fn cut(mut s: String, max: usize) -> String {
    baton_common::text::cut(&mut s, max, "…");
    s
}
