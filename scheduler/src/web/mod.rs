//! The web UI: pages served by the scheduler on its own HTTP address (`--http`), rendered on
//! the server (maud) from the gRPC API, which the UI calls as a client of its own replica
//! (a follower's calls follow the leader; the caller's token, from the login cookie, is the
//! one the API checks, so the UI can do only what that token may).

mod admin;
mod dag;
mod get;
mod live;
mod pages;
mod post;
mod run_page;
mod task_page;

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use baton_client::tls::TlsFiles;
use baton_client::Client;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// The cookie holding a user's token.
const COOKIE: &str = "baton_token";
/// The stylesheet and the script, shipped in the binary (no asset is loaded from
/// elsewhere).
const STYLE: &str = include_str!("style.css");
const SCRIPT: &str = include_str!("live.js");

/// Clients kept connected, one per token (the oldest dropped beyond this).
const CLIENTS: usize = 64;

/// What every page needs: where the API is.
#[derive(Clone)]
struct Web {
    /// This replica's gRPC address.
    api: Arc<String>,
    /// Whether the API requires a token.
    auth: bool,
    /// TLS to the API, when it serves gRPC over TLS.
    tls: Option<TlsFiles>,
    /// The client without a token, connected once.
    anonymous: Arc<tokio::sync::OnceCell<Client>>,
    /// Clients of the tokens seen, connected once each (a token the API refused is not
    /// kept), in the order they connected.
    clients: Arc<Mutex<VecDeque<(String, Client)>>>,
}

/// Serves the UI on `listener` until `shutdown`, calling the API at `api` (over TLS with
/// `tls`).
pub async fn spawn(
    listener: tokio::net::TcpListener,
    api: String,
    auth: bool,
    tls: Option<TlsFiles>,
    shutdown: CancellationToken,
) -> std::io::Result<std::net::SocketAddr> {
    let addr = listener.local_addr()?;
    let state = Web {
        api: Arc::new(api),
        auth,
        tls,
        anonymous: Arc::default(),
        clients: Arc::default(),
    };
    let app = axum::Router::new()
        .route("/", get(get::dashboard))
        .route("/runs", get(get::runs))
        .route("/runs/{id}", get(get::run))
        .route("/runs/{id}/rows", get(get::run_rows))
        .route("/runs/{id}/events", get(live::events))
        .route("/runs/{id}/tasks/{task}/{index}", get(get::task_run))
        .route("/runs/{id}/cancel", post(post::cancel))
        .route("/result", get(get::result))
        .route(
            "/flows/{project}/{flow}/run",
            get(get::quick_run_form).post(post::quick_run),
        )
        .route("/flows/{project}/{flow}/schedule", post(post::schedule))
        .route("/flows", get(get::flows))
        .route("/schedules", get(get::schedules))
        .route("/limits", get(get::limits).post(post::set_limit))
        .route("/limits/{tag}/delete", post(post::delete_limit))
        .route("/workers", get(get::workers))
        .route("/login", get(get::login_form).post(post::login))
        .route("/logout", post(post::logout))
        .route("/style.css", get(style))
        .route("/live.js", get(script))
        .with_state(state);
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "the web UI stopped");
        }
    });
    Ok(addr)
}

/// A page's outcome: its HTML, or an error page.
type Page = Result<Html<String>, Response>;

impl Web {
    /// A client of the API with the caller's token; without one where a token is needed,
    /// the login page.
    async fn client(&self, headers: &HeaderMap) -> Result<Client, Response> {
        let token = cookie(headers, COOKIE);
        let api_at = std::slice::from_ref(&*self.api);
        match token {
            Some(t) => {
                let known = self.known(&t);
                if let Some(c) = known {
                    return Ok(c);
                }
                let c = Client::connect_with(api_at, Some(&t), self.tls.clone())
                    .await
                    .map_err(api)?;
                // Kept only once the API takes it (connecting asks nothing a token opens).
                c.list_limits().await.map_err(api)?;
                let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
                if clients.len() >= CLIENTS {
                    clients.pop_front();
                }
                clients.push_back((t, c.clone()));
                Ok(c)
            }
            None if self.auth => Err(Redirect::to("/login").into_response()),
            // Without tokens, a page of another site could reach this UI by a name of its
            // own that resolves here (DNS rebinding): only addresses are answered.
            None if !by_address(headers) => Err(failure(
                StatusCode::FORBIDDEN,
                "without tokens this UI answers only at its address (127.0.0.1:PORT), not \
                 by a host name",
            )),
            None => self
                .anonymous
                .get_or_try_init(|| Client::connect_with(api_at, None, self.tls.clone()))
                .await
                .cloned()
                .map_err(api),
        }
    }

    /// The client of `token`, if one is connected.
    fn known(&self, token: &str) -> Option<Client> {
        let clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients
            .iter()
            .find(|(t, _)| t == token)
            .map(|(_, c)| c.clone())
    }
}

/// A whole page: `body` in the layout.
fn page(title: &str, body: maud::Markup) -> Html<String> {
    Html(pages::layout(title, body).into_string())
}

/// A page that refreshes its parts on the events of run `run` while it is not finished
/// (and every `poll` ms when given).
fn live_page(
    title: &str,
    run: &baton_proto::FlowRun,
    poll: Option<u32>,
    body: maud::Markup,
) -> Html<String> {
    if baton_client::is_finished(run) {
        return page(title, body);
    }
    let events = format!(
        "/runs/{}/events",
        baton_common::text::percent_encode(&run.id)
    );
    Html(pages::layout_live(title, Some(&events), poll, body).into_string())
}

/// An error page with `status`.
fn failure(status: StatusCode, message: &str) -> Response {
    let body = pages::layout("Error", pages::error(status, message));
    (status, Html(body.into_string())).into_response()
}

/// The error page of an API call's failure, with the HTTP status that matches the API's:
/// 401 for a missing or wrong token, 403 for a role that may not, 404, 400 for a request
/// the API refused, 502 otherwise (the API did not answer as asked).
fn api(e: baton_client::ClientError) -> Response {
    use tonic::Code;
    let status = match &e {
        baton_client::ClientError::Status(s) => match s.code() {
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::InvalidArgument | Code::FailedPrecondition | Code::AlreadyExists => {
                StatusCode::BAD_REQUEST
            }
            _ => StatusCode::BAD_GATEWAY,
        },
        _ => StatusCode::BAD_GATEWAY,
    };
    failure(status, &e.to_string())
}

/// Whether the request's `Host` is `localhost` or an IP address (not another name).
fn by_address(headers: &HeaderMap) -> bool {
    let name = host_name(headers);
    name == "localhost" || name.parse::<std::net::IpAddr>().is_ok()
}

/// The request's `Host`, without its port (and without brackets for IPv6).
fn host_name(headers: &HeaderMap) -> &str {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    }
}

/// The value of cookie `name`.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
        .filter(|v| !v.is_empty())
}

async fn style() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE)
}

async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
}
