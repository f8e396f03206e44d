//! A worker session's budget of log bytes: a token bucket that refills at
//! [`LOG_BYTES_PER_SEC`] up to twice that, applied to the log lines of each message from the
//! worker (batches included) before they reach the engine. Lines over the budget are dropped
//! and counted, so a worker that floods logs costs the scheduler a bounded amount of work.

use baton_proto as pb;
use pb::worker_message::Msg;
use std::time::Instant;

/// Log bytes a second one worker session may send, sustained (a burst may be twice this).
pub const LOG_BYTES_PER_SEC: f64 = baton_proto::limits::LOG_BYTES_PER_SEC as f64;

/// See the module docs.
#[derive(Debug)]
pub struct LogBudget {
    rate: f64,
    tokens: f64,
    refilled: Instant,
    /// Lines dropped so far.
    pub dropped: u64,
}

impl LogBudget {
    pub fn new(now: Instant) -> LogBudget {
        LogBudget::with_rate(LOG_BYTES_PER_SEC, now)
    }

    /// A budget of `rate` bytes a second.
    pub fn with_rate(rate: f64, now: Instant) -> LogBudget {
        LogBudget {
            rate,
            tokens: rate * 2.0,
            refilled: now,
            dropped: 0,
        }
    }

    /// Drops the log lines of `msg` over the budget; returns how many it dropped.
    pub fn admit(&mut self, msg: &mut Msg, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate * 2.0);
        self.refilled = now;
        let before = self.dropped;
        self.trim(msg);
        self.dropped - before
    }

    fn trim(&mut self, msg: &mut Msg) {
        match msg {
            Msg::Logs(l) => l.lines.retain(|line| {
                let cost = (line.line.len() + line.stream.len() + 16) as f64;
                if self.tokens >= cost {
                    self.tokens -= cost;
                    true
                } else {
                    self.dropped += 1;
                    false
                }
            }),
            Msg::Batch(b) => {
                for m in b.messages.iter_mut() {
                    if let Some(inner) = m.msg.as_mut() {
                        self.trim(inner);
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn logs(n: usize, bytes: usize) -> Msg {
        Msg::Logs(pb::LogLines {
            lines: (0..n)
                .map(|_| pb::LogLine {
                    line: "x".repeat(bytes),
                    ..Default::default()
                })
                .collect(),
        })
    }

    fn kept(msg: &Msg) -> usize {
        match msg {
            Msg::Logs(l) => l.lines.len(),
            Msg::Batch(b) => b
                .messages
                .iter()
                .filter_map(|m| m.msg.as_ref())
                .map(kept)
                .sum(),
            _ => 0,
        }
    }

    #[test]
    fn a_flood_is_cut_to_the_budget_and_the_budget_refills() {
        let start = Instant::now();
        // 84 bytes a line (with the overhead), 840 bytes a second: a burst of 20 lines.
        let mut b = LogBudget::with_rate(840.0, start);
        let mut m = logs(50, 68);
        assert_eq!(b.admit(&mut m, start), 30);
        assert_eq!(kept(&m), 20);
        // Lines inside a batch count too.
        let mut batch = Msg::Batch(pb::WorkerBatch {
            messages: vec![pb::WorkerMessage {
                msg: Some(logs(5, 68)),
            }],
        });
        assert_eq!(b.admit(&mut batch, start), 5);
        // A second later, ten more.
        let mut m = logs(50, 68);
        b.admit(&mut m, start + Duration::from_secs(1));
        assert_eq!(kept(&m), 10);
        assert_eq!(b.dropped, 75);
        // Other messages pass untouched.
        let mut hb = Msg::Heartbeat(pb::Heartbeat { at_ms: 1 });
        assert_eq!(b.admit(&mut hb, start), 0);
    }
}
