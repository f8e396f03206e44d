//! The writer of one stream: drains the session's outbound queue and, when more than one
//! message is ready, sends them as one `WorkerBatch` frame (bounded in count and size).

use baton_proto as proto;
use proto::worker_message::Msg as Up;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Messages per batch frame.
pub(super) const MAX_BATCH: usize = 512;
/// Estimated bytes per batch frame, well under a server's default 4 MiB message limit.
pub(super) const MAX_BATCH_BYTES: usize = 1 << 20;

/// Moves messages from `rx` to `wire`, batching what is ready, until either side closes or
/// `stop` fires.
pub(super) async fn run(
    mut rx: mpsc::Receiver<proto::WorkerMessage>,
    wire: mpsc::Sender<proto::WorkerMessage>,
    stop: CancellationToken,
) {
    let mut carry: Option<proto::WorkerMessage> = None;
    loop {
        let first = match carry.take() {
            Some(m) => m,
            None => tokio::select! {
                _ = stop.cancelled() => return,
                m = rx.recv() => match m {
                    Some(m) => m,
                    None => return,
                },
            },
        };
        let frame = batch(first, &mut rx, &mut carry);
        tokio::select! {
            _ = stop.cancelled() => return,
            sent = wire.send(frame) => {
                if sent.is_err() {
                    return;
                }
            }
        }
    }
}

/// `first` alone, or wrapped with the messages ready after it in one batch. A message that
/// would overflow the batch is left in `carry`. A `Register` always travels alone.
fn batch(
    first: proto::WorkerMessage,
    rx: &mut mpsc::Receiver<proto::WorkerMessage>,
    carry: &mut Option<proto::WorkerMessage>,
) -> proto::WorkerMessage {
    if matches!(first.msg, Some(Up::Register(_))) {
        return first;
    }
    let mut bytes = approx_size(&first);
    let mut messages = vec![first];
    while messages.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
        let Ok(m) = rx.try_recv() else { break };
        let size = approx_size(&m);
        if bytes + size > MAX_BATCH_BYTES || matches!(m.msg, Some(Up::Register(_))) {
            *carry = Some(m);
            break;
        }
        bytes += size;
        messages.push(m);
    }
    if messages.len() == 1 {
        if let Some(m) = messages.pop() {
            return m;
        }
    }
    proto::WorkerMessage {
        msg: Some(Up::Batch(proto::WorkerBatch { messages })),
    }
}

/// A generous estimate of a message's encoded size.
pub(super) fn approx_size(m: &proto::WorkerMessage) -> usize {
    fn key(k: &Option<proto::AttemptKey>) -> usize {
        k.as_ref().map_or(0, |k| k.run_id.len() + k.task.len() + 24)
    }
    32 + match &m.msg {
        Some(Up::Finished(f)) => {
            key(&f.key)
                + match &f.outcome {
                    Some(proto::finished::Outcome::Success(s)) => {
                        s.inline_value.len()
                            + s.result.as_ref().map_or(0, |r| {
                                r.uri.len() + r.checksum.len() + r.content_type.len() + 24
                            })
                    }
                    Some(proto::finished::Outcome::Failure(e)) => e.error.len() + 8,
                    None => 0,
                }
        }
        Some(Up::Logs(l)) => l
            .lines
            .iter()
            .map(|x| key(&x.key) + x.stream.len() + x.line.len() + 24)
            .sum(),
        Some(Up::Started(s)) => key(&s.key),
        Some(Up::Batch(b)) => b.messages.iter().map(approx_size).sum(),
        Some(Up::Register(r)) => {
            r.worker_id.len()
                + r.labels.iter().map(|l| l.len() + 4).sum::<usize>()
                + r.running
                    .iter()
                    .map(|k| key(&Some(k.clone())))
                    .sum::<usize>()
        }
        Some(Up::Heartbeat(_)) | Some(Up::Draining(_)) | None => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started(i: i64) -> proto::WorkerMessage {
        proto::WorkerMessage {
            msg: Some(Up::Started(proto::Started {
                key: Some(proto::AttemptKey {
                    run_id: "r".into(),
                    task: "t".into(),
                    map_index: i,
                    attempt: 1,
                }),
                at_ms: 0,
                at_us: 0,
            })),
        }
    }

    fn big_log() -> proto::WorkerMessage {
        proto::WorkerMessage {
            msg: Some(Up::Logs(proto::LogLines {
                lines: vec![proto::LogLine {
                    line: "x".repeat(MAX_BATCH_BYTES / 2),
                    ..Default::default()
                }],
            })),
        }
    }

    #[tokio::test]
    async fn batches_what_is_ready_within_limits() {
        let (tx, rx) = mpsc::channel(2048);
        let (wire_tx, mut wire) = mpsc::channel(1);
        for i in 0..600 {
            tx.send(started(i)).await.unwrap();
        }
        tx.send(big_log()).await.unwrap();
        tx.send(big_log()).await.unwrap();
        tx.send(started(9999)).await.unwrap();
        drop(tx);
        tokio::spawn(run(rx, wire_tx, CancellationToken::new()));
        let mut frames = Vec::new();
        while let Some(f) = wire.recv().await {
            frames.push(f);
        }
        let sizes: Vec<usize> = frames
            .iter()
            .map(|f| match &f.msg {
                Some(Up::Batch(b)) => b.messages.len(),
                _ => 1,
            })
            .collect();
        assert_eq!(sizes.iter().sum::<usize>(), 603);
        assert_eq!(sizes[0], MAX_BATCH);
        assert!(frames
            .iter()
            .all(|f| approx_size(f) <= MAX_BATCH_BYTES + 64));
    }

    #[tokio::test]
    async fn a_lone_message_is_not_wrapped() {
        let (tx, rx) = mpsc::channel(8);
        let (wire_tx, mut wire) = mpsc::channel(1);
        tx.send(started(1)).await.unwrap();
        drop(tx);
        tokio::spawn(run(rx, wire_tx, CancellationToken::new()));
        assert!(matches!(
            wire.recv().await.unwrap().msg,
            Some(Up::Started(_))
        ));
        assert!(wire.recv().await.is_none());
    }
}
