//! `GetLogs` answers: a run's lines in order — by task, map index and attempt, then as they
//! arrived — from the stored chunks and the keeper's memory, then, when following, the new
//! lines until the run is over.

use super::{decode, entry, Held, Line, FOLLOW_BUFFER};
use crate::actor::{Command, Handle};
use baton_common::ids::AttemptKey;
use baton_common::result_store::ResultStore;
use baton_proto as pb;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

/// How often a follower checks whether the run is over.
const POLL: Duration = Duration::from_millis(300);

type Tx = mpsc::Sender<Result<pb::LogEntry, Status>>;

/// What is known of one attempt: held in memory, or only in the store.
type Attempts = BTreeMap<(String, i64, u32), Option<Held>>;

/// Opens the stream of a run's lines. `task_runs` are the run's task runs (which attempts
/// there were); `live` says whether the run is in the engine (not archived), and so may
/// have new lines to follow.
pub async fn open(
    leader: Handle,
    store: Arc<dyn ResultStore>,
    req: pb::GetLogsRequest,
    task_runs: Vec<pb::TaskRun>,
    live: bool,
) -> Result<ReceiverStream<Result<pb::LogEntry, Status>>, Status> {
    let (ftx, frx) = if req.follow && live {
        let (tx, rx) = mpsc::channel(FOLLOW_BUFFER);
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    // Asked even of an archived run: its last lines may still be on their way to the store.
    let mut held = leader.logs.held(&req.run_id, &req.task, ftx).await?;
    let index = req.map_index;
    held.retain(|h| index.is_none_or(|i| h.key.map_index == i));
    let mut attempts = Attempts::new();
    for tr in task_runs
        .iter()
        .filter(|t| req.task.is_empty() || t.task == req.task)
        .filter(|t| index.is_none_or(|i| t.map_index == i))
    {
        let last = tr
            .attempts
            .iter()
            .map(|a| a.number)
            .max()
            .unwrap_or(0)
            .max(tr.attempt);
        for n in 1..=last {
            attempts.insert((tr.task.clone(), tr.map_index, n), None);
        }
    }
    for h in held {
        attempts.insert(
            (h.key.task.clone(), h.key.map_index, h.key.attempt),
            Some(h),
        );
    }
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(async move {
        if send_known(&tx, store.as_ref(), &req.run_id, attempts)
            .await
            .is_err()
        {
            return;
        }
        if let Some(frx) = frx {
            follow(&tx, &leader, &req.run_id, index, frx).await;
        }
    });
    Ok(ReceiverStream::new(rx))
}

/// The reader has gone.
struct Gone;

async fn send_lines(tx: &Tx, key: &AttemptKey, lines: &[Line]) -> Result<(), Gone> {
    for l in lines {
        tx.send(Ok(entry(key, l))).await.map_err(|_| Gone)?;
    }
    Ok(())
}

/// Sends every attempt's stored chunks, then what the keeper holds of it.
async fn send_known(
    tx: &Tx,
    store: &dyn ResultStore,
    run: &str,
    attempts: Attempts,
) -> Result<(), Gone> {
    for ((task, map_index, attempt), held) in attempts {
        let key = AttemptKey {
            run: run.to_string(),
            task,
            map_index,
            attempt,
        };
        let mut chunk = 0u32;
        loop {
            if let Some(h) = &held {
                if chunk >= h.next_chunk {
                    break;
                }
                if let Some(lines) = h.inflight.get(&chunk) {
                    send_lines(tx, &key, lines).await?;
                    chunk += 1;
                    continue;
                }
            }
            let uri = format!("{}/{}", store.root_uri(), key.log_key(chunk));
            match store.get(&uri).await {
                Ok(bytes) => send_lines(tx, &key, &decode(&bytes)).await?,
                // Not in memory: the chunks are numbered from 0 without gaps.
                Err(baton_common::Error::NotFound(_)) if held.is_none() => break,
                // A chunk whose write was given up.
                Err(baton_common::Error::NotFound(_)) => {}
                Err(e) => {
                    let status = Status::unavailable(format!("cannot read the logs of {key}: {e}"));
                    let _ = tx.send(Err(status)).await;
                    return Err(Gone);
                }
            }
            chunk += 1;
        }
        if let Some(h) = &held {
            send_lines(tx, &key, &h.pending).await?;
        }
    }
    Ok(())
}

/// Passes on new lines (of map index `index` when given) until the run is over (or gone
/// from this leader), then ends.
async fn follow(
    tx: &Tx,
    leader: &Handle,
    run: &str,
    index: Option<i64>,
    mut frx: mpsc::Receiver<pb::LogEntry>,
) {
    let wanted = |e: &pb::LogEntry| index.is_none_or(|i| e.map_index == i);
    let mut poll = tokio::time::interval(POLL);
    loop {
        tokio::select! {
            e = frx.recv() => match e {
                Some(e) if !wanted(&e) => {}
                Some(e) => {
                    if tx.send(Ok(e)).await.is_err() {
                        return;
                    }
                }
                None => {
                    let status = Status::resource_exhausted(
                        "this log reader fell too far behind and was cut off; read the logs again",
                    );
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            },
            _ = poll.tick() => {
                let over = match leader.ask(|r| Command::GetRun(run.to_string(), r)).await {
                    Ok(r) => is_over(&r),
                    Err(_) => true,
                };
                if over {
                    // Lines handed over before the run ended are in the keeper once this
                    // returns, and so in `frx`.
                    leader.logs.barrier().await;
                    while let Ok(e) = frx.try_recv() {
                        if wanted(&e) && tx.send(Ok(e)).await.is_err() {
                            return;
                        }
                    }
                    return;
                }
            }
            _ = tx.closed() => return,
        }
    }
}

fn is_over(run: &pb::FlowRun) -> bool {
    matches!(
        pb::RunState::try_from(run.state),
        Ok(pb::RunState::Completed | pb::RunState::Failed | pb::RunState::Cancelled)
    )
}
