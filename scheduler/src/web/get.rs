//! The UI's pages (GET): each asks the API for what it shows, and no more than a page of it.

use super::{admin, run_page, task_page};
use super::{api, failure, live_page, page, pages, Page, Web};
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use baton_client::Client;
use baton_common::flow::FlowSpec;
use baton_common::time::now_ms;
use baton_proto as pb;
use std::collections::HashMap;
use tokio_stream::StreamExt;

/// Runs the dashboard and the runs page consider (the newest).
const RECENT_RUNS: u32 = 1000;
/// Log lines a task run's page shows (the last ones), and the most it reads to find them.
const LOG_LINES: usize = 1000;
const LOG_LINES_READ: usize = 50_000;
/// How often a running task run's page reads its logs again (ms).
const LOG_POLL_MS: u32 = 2000;
/// Child runs the run page's tree shows, in all.
const TREE_RUNS: usize = 100;

type Q = Query<HashMap<String, String>>;

pub(super) async fn dashboard(State(web): State<Web>, headers: HeaderMap) -> Page {
    let c = web.client(&headers).await?;
    let leader = c.leader().await.map_err(api)?;
    let runs = c.list_runs(RECENT_RUNS).await.map_err(api)?;
    let workers = c.workers().await.map_err(api)?;
    let now = now_ms();
    Ok(page(
        "Dashboard",
        pages::dashboard(&leader, &runs, &workers, now),
    ))
}

pub(super) async fn runs(State(web): State<Web>, headers: HeaderMap, Query(q): Q) -> Page {
    let c = web.client(&headers).await?;
    let runs = c.list_runs(RECENT_RUNS).await.map_err(api)?;
    let filter = pages::RunFilter::from_query(&q);
    Ok(page("Runs", pages::runs(&runs, &filter, now_ms())))
}

/// The run page's request for task runs: one page of the filtered list, with counts.
fn rows_request(id: &str, f: &run_page::TaskFilter, with_counts: bool) -> pb::ListTaskRunsRequest {
    pb::ListTaskRunsRequest {
        run_id: id.to_string(),
        with_values: true,
        offset: f.offset as u32,
        limit: run_page::PAGE as u32,
        task: f.task.clone(),
        states: f.states(),
        map_index: None,
        with_counts,
    }
}

/// A run and one page of its task runs as the query asks (with its counts when asked).
async fn run_and_rows(
    web: &Web,
    headers: &HeaderMap,
    id: &str,
    q: &HashMap<String, String>,
    with_counts: bool,
) -> Result<
    (
        Client,
        pb::FlowRun,
        run_page::TaskFilter,
        pb::ListTaskRunsResponse,
    ),
    Response,
> {
    let c = web.client(headers).await?;
    let run = c.get_run(id).await.map_err(api)?;
    let f = run_page::TaskFilter::from_query(q);
    let rows = c
        .task_runs_query(rows_request(id, &f, with_counts))
        .await
        .map_err(api)?;
    Ok((c, run, f, rows))
}

pub(super) async fn run(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Q,
) -> Page {
    let (c, run, f, rows) = run_and_rows(&web, &headers, &id, &q, true).await?;
    let spec = flow_spec(&c, &run).await;
    let tree = child_tree(&c, &run, spec.as_ref()).await;
    let title = format!("Run {}", run.id);
    let body = run_page::run(&run, spec.as_ref(), &rows, &f, &tree);
    Ok(live_page(&title, &run, None, body))
}

/// More rows of a run page's task-run list (the list asks as it is scrolled): table rows
/// only.
pub(super) async fn run_rows(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Q,
) -> Page {
    let (_, run, _, rows) = run_and_rows(&web, &headers, &id, &q, false).await?;
    Ok(Html(run_page::rows(&run, &rows.task_runs).into_string()))
}

/// The flow a run runs, as registered (None when it cannot be read: the page then shows no
/// graph).
async fn flow_spec(c: &Client, run: &pb::FlowRun) -> Option<FlowSpec> {
    let def = c
        .get_flow(&run.project, &run.flow, run.version)
        .await
        .ok()?;
    serde_json::from_str(&def.definition_json).ok()
}

/// The run's child runs (of its sub-flow tasks), and theirs, breadth first, at most
/// [`TREE_RUNS`] in all.
async fn child_tree(c: &Client, run: &pb::FlowRun, spec: Option<&FlowSpec>) -> run_page::Tree {
    let mut tree = run_page::Tree::default();
    let Some(spec) = spec else { return tree };
    let mut queue: Vec<(String, FlowSpec)> = vec![(run.id.clone(), spec.clone())];
    while let Some((parent, spec)) = queue.pop() {
        for t in spec.tasks.iter().filter(|t| t.is_subflow()) {
            let left = TREE_RUNS.saturating_sub(tree.len());
            if left == 0 {
                tree.cut = true;
                return tree;
            }
            let req = pb::ListTaskRunsRequest {
                run_id: parent.clone(),
                task: t.name.clone(),
                limit: left as u32,
                ..Default::default()
            };
            let Ok(page) = c.task_runs_query(req).await else {
                continue;
            };
            tree.cut |= page.total as usize > page.task_runs.len();
            for tr in page.task_runs.iter().filter(|t| !t.child_run_id.is_empty()) {
                let Ok(child) = c.get_run(&tr.child_run_id).await else {
                    continue;
                };
                if let Some(s) = flow_spec(c, &child).await {
                    queue.push((child.id.clone(), s));
                }
                tree.add(&parent, tr, child);
            }
        }
    }
    tree
}

pub(super) async fn task_run(
    State(web): State<Web>,
    headers: HeaderMap,
    Path((id, task, index)): Path<(String, String, String)>,
) -> Page {
    // Parsed here: the router's own refusal would echo the whole segment back.
    let Ok(index) = index.parse::<i64>() else {
        return Err(failure(
            StatusCode::BAD_REQUEST,
            "the map index in the path is not a number (-1 for an unmapped task)",
        ));
    };
    let c = web.client(&headers).await?;
    let run = c.get_run(&id).await.map_err(api)?;
    let req = pb::ListTaskRunsRequest {
        run_id: id.clone(),
        with_values: true,
        limit: 1,
        task: task.clone(),
        map_index: Some(index),
        ..Default::default()
    };
    let found = c.task_runs_query(req).await.map_err(api)?;
    let Some(tr) = found.task_runs.into_iter().next() else {
        return Err(failure(
            StatusCode::NOT_FOUND,
            "no such task run in this run",
        ));
    };
    let logs = read_logs(&c, &id, &task, index).await;
    let title = format!("{} of run {}", task_page::name(&tr), run.id);
    let poll = task_page::live(&tr).then_some(LOG_POLL_MS);
    Ok(live_page(
        &title,
        &run,
        poll,
        task_page::task_run(&run, &tr, &logs),
    ))
}

/// A task run's log lines: the last [`LOG_LINES`] (of at most [`LOG_LINES_READ`]).
async fn read_logs(c: &Client, run: &str, task: &str, index: i64) -> task_page::Logs {
    let mut logs = task_page::Logs::default();
    let mut stream = match c.logs_of(run, task, Some(index), false).await {
        Ok(s) => s,
        Err(e) => {
            logs.error = Some(e.to_string());
            return logs;
        }
    };
    let mut read = 0usize;
    loop {
        match stream.message().await {
            Ok(Some(e)) => {
                read += 1;
                logs.lines.push_back(e);
                if logs.lines.len() > LOG_LINES {
                    logs.lines.pop_front();
                    logs.dropped += 1;
                }
                if read >= LOG_LINES_READ {
                    logs.cut = true;
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                logs.error = Some(format!("{}: {}", e.code(), e.message()));
                break;
            }
        }
    }
    logs
}

/// A result or artifact, downloaded in parts as the API streams it.
pub(super) async fn result(State(web): State<Web>, headers: HeaderMap, Query(q): Q) -> Response {
    let c = match web.client(&headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Some(uri) = q.get("uri").filter(|u| !u.is_empty()) else {
        return failure(StatusCode::BAD_REQUEST, "no `uri` asked for");
    };
    let stream = match c.read_result(uri).await {
        Ok(s) => s,
        Err(e) => return api(e),
    };
    let name = uri
        .rsplit('/')
        .next()
        .filter(|n| {
            n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        })
        .unwrap_or("result")
        .to_string();
    let body = Body::from_stream(stream.map(|part| part.map(|c| c.data)));
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        body,
    )
        .into_response()
}

pub(super) async fn flows(State(web): State<Web>, headers: HeaderMap) -> Page {
    let c = web.client(&headers).await?;
    let flows = c.list_flows("").await.map_err(api)?;
    let runs = c.list_runs(RECENT_RUNS).await.map_err(api)?;
    Ok(page("Flows", pages::flows(&flows, &runs)))
}

pub(super) async fn schedules(State(web): State<Web>, headers: HeaderMap) -> Page {
    let c = web.client(&headers).await?;
    let flows = c.list_flows("").await.map_err(api)?;
    Ok(page("Schedules", admin::schedules(&flows)))
}

pub(super) async fn limits(State(web): State<Web>, headers: HeaderMap) -> Page {
    let c = web.client(&headers).await?;
    let limits = c.list_limits().await.map_err(api)?;
    Ok(page("Concurrency limits", admin::limits(&limits, None)))
}

pub(super) async fn workers(State(web): State<Web>, headers: HeaderMap) -> Page {
    let c = web.client(&headers).await?;
    let workers = c.workers().await.map_err(api)?;
    let runs = c.list_runs(RECENT_RUNS).await.map_err(api)?;
    Ok(page("Workers", pages::workers(&workers, &runs, now_ms())))
}

/// The Quick Run form of a flow: its parameters, their defaults filled in.
pub(super) async fn quick_run_form(
    State(web): State<Web>,
    headers: HeaderMap,
    Path((project, flow)): Path<(String, String)>,
) -> Page {
    let c = web.client(&headers).await?;
    let def = c.get_flow(&project, &flow, 0).await.map_err(api)?;
    let title = format!("Quick run: {project}/{flow}");
    Ok(page(&title, pages::quick_run(&def, None, &HashMap::new())))
}

pub(super) async fn login_form() -> Html<String> {
    page("Sign in", pages::login())
}
