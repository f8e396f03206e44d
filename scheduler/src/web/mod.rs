//! The web UI: pages served by the scheduler on its own HTTP address (`--http`), rendered on
//! the server (maud) from the gRPC API, which the UI calls as a client of its own replica
//! (a follower's calls follow the leader; the caller's token, from the login cookie, is the
//! one the API checks, so the UI can do only what that token may).

mod pages;

use axum::extract::{Form, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use baton_client::Client;
use baton_common::text::percent_encode as encode;
use std::collections::HashMap;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The cookie holding a user's token.
const COOKIE: &str = "baton_token";
/// The stylesheet, shipped in the binary (no asset is loaded from elsewhere).
const STYLE: &str = include_str!("style.css");

/// What every page needs: where the API is.
#[derive(Clone)]
struct Web {
    /// This replica's gRPC address.
    api: Arc<String>,
    /// Whether the API requires a token.
    auth: bool,
    /// The client without a token, connected once (with a token, each request has its
    /// caller's).
    anonymous: Arc<tokio::sync::OnceCell<Client>>,
}

/// Serves the UI on `listener` until `shutdown`, calling the API at `api`.
pub async fn spawn(
    listener: tokio::net::TcpListener,
    api: String,
    auth: bool,
    shutdown: CancellationToken,
) -> std::io::Result<std::net::SocketAddr> {
    let addr = listener.local_addr()?;
    let state = Web {
        api: Arc::new(api),
        auth,
        anonymous: Arc::default(),
    };
    let app = axum::Router::new()
        .route("/", axum::routing::get(dashboard))
        .route("/runs", axum::routing::get(runs))
        .route("/runs/{id}", axum::routing::get(run))
        .route("/runs/{id}/cancel", axum::routing::post(cancel))
        .route(
            "/flows/{project}/{flow}/run",
            axum::routing::get(quick_run_form).post(quick_run),
        )
        .route(
            "/flows/{project}/{flow}/schedule",
            axum::routing::post(schedule),
        )
        .route("/flows", axum::routing::get(flows))
        .route("/workers", axum::routing::get(workers))
        .route("/login", axum::routing::get(login_form).post(login))
        .route("/style.css", axum::routing::get(style))
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
            Some(t) => Client::connect_with(api_at, Some(&t), None)
                .await
                .map_err(api),
            None if self.auth => Err(Redirect::to("/login").into_response()),
            None => self
                .anonymous
                .get_or_try_init(|| Client::connect_with(api_at, None, None))
                .await
                .cloned()
                .map_err(api),
        }
    }
}

/// An error page (status 502: the API did not answer as asked).
fn failure(message: &str) -> Response {
    let body = pages::layout("Error", pages::error(message));
    (StatusCode::BAD_GATEWAY, Html(body.into_string())).into_response()
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

async fn dashboard(State(web): State<Web>, headers: HeaderMap) -> Page {
    let c = web.client(&headers).await?;
    let leader = c.leader().await.map_err(api)?;
    let runs = c.list_runs(200).await.map_err(api)?;
    let workers = c.workers().await.map_err(api)?;
    Ok(Html(
        pages::layout("Dashboard", pages::dashboard(&leader, &runs, &workers)).into_string(),
    ))
}

async fn runs(
    State(web): State<Web>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Page {
    let c = web.client(&headers).await?;
    let runs = c.list_runs(1000).await.map_err(api)?;
    let filter = pages::RunFilter::from_query(&q);
    Ok(Html(
        pages::layout("Runs", pages::runs(&runs, &filter)).into_string(),
    ))
}

async fn run(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Page {
    let c = web.client(&headers).await?;
    let run = c.get_run(&id).await.map_err(api)?;
    let trs = c.task_runs(&id, true).await.map_err(api)?;
    let view = pages::TaskFilter::from_query(&q);
    let title = format!("Run {}", run.id);
    Ok(Html(
        pages::layout(&title, pages::run(&run, &trs, &view)).into_string(),
    ))
}

async fn flows(State(web): State<Web>, headers: HeaderMap) -> Page {
    let c = web.client(&headers).await?;
    let flows = c.list_flows("").await.map_err(api)?;
    Ok(Html(
        pages::layout("Flows", pages::flows(&flows)).into_string(),
    ))
}

async fn workers(State(web): State<Web>, headers: HeaderMap) -> Page {
    let c = web.client(&headers).await?;
    let workers = c.workers().await.map_err(api)?;
    Ok(Html(
        pages::layout("Workers", pages::workers(&workers)).into_string(),
    ))
}

/// Cancels a run, then shows it.
async fn cancel(State(web): State<Web>, headers: HeaderMap, Path(id): Path<String>) -> Action {
    let c = web.client(&headers).await?;
    c.cancel_run(&id).await.map_err(api)?;
    Ok(Redirect::to(&format!("/runs/{}", encode(&id))).into_response())
}

/// What an action answers: where to go next, or an error page.
type Action = Result<Response, Response>;

/// The error page of an API call's failure.
fn api(e: baton_client::ClientError) -> Response {
    failure(&e.to_string())
}

/// Switches a flow's schedule on (`active=on`) or off, then shows the flows.
async fn schedule(
    State(web): State<Web>,
    headers: HeaderMap,
    Path((project, flow)): Path<(String, String)>,
    Form(form): Form<HashMap<String, String>>,
) -> Action {
    let c = web.client(&headers).await?;
    let active = form.get("active").is_some_and(|v| v == "on");
    c.set_schedule(&project, &flow, active).await.map_err(api)?;
    Ok(Redirect::to("/flows").into_response())
}

/// The Quick Run form of a flow: its parameters, their defaults filled in.
async fn quick_run_form(
    State(web): State<Web>,
    headers: HeaderMap,
    Path((project, flow)): Path<(String, String)>,
) -> Page {
    let c = web.client(&headers).await?;
    let def = c.get_flow(&project, &flow, 0).await.map_err(api)?;
    let title = format!("Quick run: {project}/{flow}");
    Ok(Html(
        pages::layout(&title, pages::quick_run(&def, None)).into_string(),
    ))
}

/// Starts a run of the flow's latest version with the form's values (each JSON; one that
/// is not is shown back with the error), then shows the run.
async fn quick_run(
    State(web): State<Web>,
    headers: HeaderMap,
    Path((project, flow)): Path<(String, String)>,
    Form(form): Form<HashMap<String, String>>,
) -> Action {
    let c = web.client(&headers).await?;
    let mut parameters = HashMap::new();
    for (k, v) in &form {
        let Some(name) = k.strip_prefix("p.") else {
            continue;
        };
        if v.trim().is_empty() {
            continue;
        }
        if let Err(e) = serde_json::from_str::<serde_json::Value>(v) {
            let def = c.get_flow(&project, &flow, 0).await.map_err(api)?;
            let why = format!("parameter `{name}`: not JSON ({e}); a string is written in quotes");
            let body = pages::quick_run(&def, Some(&why));
            return Err((
                StatusCode::BAD_REQUEST,
                Html(pages::layout("Quick run", body).into_string()),
            )
                .into_response());
        }
        parameters.insert(name.to_string(), v.clone());
    }
    let req = baton_proto::CreateRunRequest {
        project,
        flow,
        parameters,
        idempotency_key: uuid::Uuid::new_v4().to_string(),
        ..Default::default()
    };
    let run = c
        .create_run(req)
        .await
        .map_err(api)?
        .run
        .ok_or_else(|| failure("the scheduler answered no run"))?;
    Ok(Redirect::to(&format!("/runs/{}", encode(&run.id))).into_response())
}

async fn login_form() -> Html<String> {
    Html(pages::layout("Sign in", pages::login()).into_string())
}

/// Keeps the token in an http-only cookie (the UI never shows it again), then goes home.
async fn login(Form(form): Form<HashMap<String, String>>) -> Response {
    let token = form.get("token").map(|t| t.trim()).unwrap_or_default();
    if token.is_empty() || token.len() > 4096 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return (
            StatusCode::BAD_REQUEST,
            Html(pages::layout("Sign in", pages::login()).into_string()),
        )
            .into_response();
    }
    let cookie = format!("{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/");
    ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
}
