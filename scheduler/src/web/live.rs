//! Live pages: a run's events as server-sent events (`/runs/{id}/events`), from the API's
//! watch of the run. A page that listens refreshes its parts in place on each `change`
//! (live.js); `end` says the run is over. Events are coalesced: at most one `change` per
//! [`SPACING`], whatever the run's rate of change.

use super::{api, Web};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use baton_client::is_finished;
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

/// The least time between two `change` events of one stream.
const SPACING: Duration = Duration::from_millis(300);

pub(super) async fn events(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let c = match web.client(&headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let mut watch = match c.watch(&id, false).await {
        Ok(w) => w,
        Err(e) => return api(e),
    };
    let (tx, rx) = mpsc::channel::<Event>(4);
    tokio::spawn(async move {
        let mut last = tokio::time::Instant::now() - SPACING;
        loop {
            let ev = tokio::select! {
                ev = watch.message() => ev,
                _ = tx.closed() => return,
            };
            let run = match ev {
                Ok(Some(ev)) => ev.run,
                // The watch ended or failed: the page stops listening and shows what is.
                Ok(None) | Err(_) => {
                    let _ = tx.send(Event::default().event("end").data("")).await;
                    return;
                }
            };
            let Some(mut run) = run else { continue };
            // Coalesce: wait out the spacing, take what arrived meanwhile, report the latest.
            let wait = (last + SPACING).saturating_duration_since(tokio::time::Instant::now());
            tokio::time::sleep(wait).await;
            while !is_finished(&run) {
                match tokio::time::timeout(Duration::ZERO, watch.message()).await {
                    Ok(Ok(Some(ev))) => run = ev.run.unwrap_or(run),
                    Ok(Ok(None) | Err(_)) | Err(_) => break,
                }
            }
            last = tokio::time::Instant::now();
            if is_finished(&run) {
                let state = baton_common::state::run_state_name(run.state);
                let _ = tx.send(Event::default().event("end").data(state)).await;
                return;
            }
            let done = format!("{}/{}", run.tasks_done, run.tasks_total);
            if tx
                .send(Event::default().event("change").data(done))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let stream = ReceiverStream::new(rx).map(Ok::<_, Infallible>);
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}
