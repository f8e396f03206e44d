//! The UI's actions (POST): cancel a run, switch a schedule, Quick Run, set and delete
//! concurrency limits, sign in and out. Each is the API call of the caller's token (which
//! decides whether it may), refused when the request comes from another site's page.

use super::{api, failure, page, pages, Web, COOKIE};
use axum::extract::{Form, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use baton_common::text::percent_encode as encode;
use baton_proto as pb;
use std::collections::HashMap;

/// What an action answers: where to go next, or an error page.
type Action = Result<Response, Response>;
type F = Form<HashMap<String, String>>;

/// Refuses an action that this UI's own pages did not send: the browser must say so, by
/// `Sec-Fetch-Site: same-origin` or an `Origin` naming this host (the cookie is
/// `SameSite=Strict` too, but without tokens there is no cookie at all).
fn same_origin(headers: &HeaderMap) -> Result<(), Box<Response>> {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &axum::http::HeaderValue| v.to_str().ok())
            .unwrap_or_default()
    };
    let host = text(header::HOST);
    let origin = text(header::ORIGIN);
    let origin_host = origin.split_once("://").map_or(origin, |(_, h)| h);
    let from_here = match text(axum::http::HeaderName::from_static("sec-fetch-site")) {
        "same-origin" => true,
        "" => !host.is_empty() && origin_host == host,
        _ => false,
    };
    if from_here {
        Ok(())
    } else {
        Err(Box::new(failure(
            StatusCode::FORBIDDEN,
            "this action did not come from this UI's own page",
        )))
    }
}

/// Cancels a run, then shows it.
pub(super) async fn cancel(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Action {
    same_origin(&headers).map_err(|r| *r)?;
    let c = web.client(&headers).await?;
    c.cancel_run(&id).await.map_err(api)?;
    Ok(Redirect::to(&format!("/runs/{}", encode(&id))).into_response())
}

/// Switches a flow's schedule on (`active=on`) or off, then goes back (`back=schedules`:
/// the schedules page; otherwise the flows).
pub(super) async fn schedule(
    State(web): State<Web>,
    headers: HeaderMap,
    Path((project, flow)): Path<(String, String)>,
    Form(form): F,
) -> Action {
    same_origin(&headers).map_err(|r| *r)?;
    let c = web.client(&headers).await?;
    let active = form.get("active").is_some_and(|v| v == "on");
    c.set_schedule(&project, &flow, active).await.map_err(api)?;
    let back = match form.get("back").map(String::as_str) {
        Some("schedules") => "/schedules",
        _ => "/flows",
    };
    Ok(Redirect::to(back).into_response())
}

/// Starts a run of the flow's latest version with the form's values (each JSON; one that
/// is not is shown back with the error), then shows the run.
pub(super) async fn quick_run(
    State(web): State<Web>,
    headers: HeaderMap,
    Path((project, flow)): Path<(String, String)>,
    Form(form): F,
) -> Action {
    same_origin(&headers).map_err(|r| *r)?;
    let c = web.client(&headers).await?;
    let mut parameters = HashMap::new();
    let mut entered = HashMap::new();
    let mut bad = None;
    for (k, v) in &form {
        let Some(name) = k.strip_prefix("p.") else {
            continue;
        };
        entered.insert(name.to_string(), v.clone());
        if v.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<serde_json::Value>(v) {
            Ok(_) => {
                parameters.insert(name.to_string(), v.clone());
            }
            Err(e) => {
                bad.get_or_insert_with(|| {
                    format!("parameter `{name}`: not JSON ({e}); a string is written in quotes")
                });
            }
        }
    }
    if let Some(why) = bad {
        let def = c.get_flow(&project, &flow, 0).await.map_err(api)?;
        let body = pages::quick_run(&def, Some(&why), &entered);
        return Err((StatusCode::BAD_REQUEST, page("Quick run", body)).into_response());
    }
    let req = pb::CreateRunRequest {
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
        .ok_or_else(|| failure(StatusCode::BAD_GATEWAY, "the scheduler answered no run"))?;
    Ok(Redirect::to(&format!("/runs/{}", encode(&run.id))).into_response())
}

/// Sets the concurrency limit of a tag (`tag`, `limit`), then shows the limits.
pub(super) async fn set_limit(State(web): State<Web>, headers: HeaderMap, Form(form): F) -> Action {
    same_origin(&headers).map_err(|r| *r)?;
    let c = web.client(&headers).await?;
    let tag = form.get("tag").map(|t| t.trim()).unwrap_or_default();
    let limit = form.get("limit").and_then(|l| l.trim().parse::<u32>().ok());
    let Some(limit) = limit.filter(|_| !tag.is_empty()) else {
        let limits = c.list_limits().await.map_err(api)?;
        let why = "a limit needs a tag and a whole number of slots";
        let body = super::admin::limits(&limits, Some(why));
        return Err((StatusCode::BAD_REQUEST, page("Concurrency limits", body)).into_response());
    };
    c.set_limit(tag, limit).await.map_err(api)?;
    Ok(Redirect::to("/limits").into_response())
}

/// Removes the concurrency limit of a tag, then shows the limits.
pub(super) async fn delete_limit(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(tag): Path<String>,
) -> Action {
    same_origin(&headers).map_err(|r| *r)?;
    let c = web.client(&headers).await?;
    c.delete_limit(&tag).await.map_err(api)?;
    Ok(Redirect::to("/limits").into_response())
}

/// Keeps the token in an http-only cookie (the UI never shows it again), then goes home.
/// Only over HTTPS (then the cookie is `Secure`) or on this machine (loopback), where no
/// network sees it.
pub(super) async fn login(headers: HeaderMap, Form(form): F) -> Response {
    if let Err(r) = same_origin(&headers) {
        return *r;
    }
    let token = form.get("token").map(|t| t.trim()).unwrap_or_default();
    let cookie_safe = |b: u8| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b);
    if token.is_empty() || token.len() > 4096 || !token.bytes().all(cookie_safe) {
        return (StatusCode::BAD_REQUEST, page("Sign in", pages::login())).into_response();
    }
    // Over plain HTTP beyond this machine the token would cross the network in clear: the
    // cookie is `Secure`, which the browser keeps only from HTTPS (a proxy in front).
    let https = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.eq_ignore_ascii_case("https"));
    if !https && !loopback(&headers) {
        return failure(
            StatusCode::BAD_REQUEST,
            "sign in over HTTPS (a proxy in front of the UI that sets X-Forwarded-Proto: \
             https), or on this machine (http://127.0.0.1, or an SSH tunnel to it): the token \
             would cross the network in clear",
        );
    }
    let secure = if https { "; Secure" } else { "" };
    let cookie = format!("{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/{secure}");
    ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
}

/// Forgets the token.
pub(super) async fn logout(headers: HeaderMap) -> Response {
    if let Err(r) = same_origin(&headers) {
        return *r;
    }
    let cookie = format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0");
    ([(header::SET_COOKIE, cookie)], Redirect::to("/login")).into_response()
}

/// Whether the request names a loopback host (`localhost`, `127.x`, `[::1]`).
fn loopback(headers: &HeaderMap) -> bool {
    let name = super::host_name(headers);
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}
