//! The web UI served by a real scheduler (`--http`): the dashboard, runs (filtered), a run
//! with its mapped task's runs grouped and paged, flows, workers, the stylesheet; and with
//! authentication on, a sign-in that keeps the token in an http-only cookie.

use crate::support::fan_out;
use baton_client::Client;
use baton_scheduler::auth::{tokens, Role};
use baton_testkit::{eventually, free_port, Cluster};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::Duration;

/// An HTTP/1.0 request to the UI: (status, headers, body).
fn http(port: u16, request: &str) -> anyhow::Result<(u16, String, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    s.write_all(request.as_bytes())?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("a malformed answer: {raw}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no status: {head}"))?;
    Ok((status, head.to_string(), body.to_string()))
}

fn get(port: u16, path: &str, cookie: Option<&str>) -> anyhow::Result<(u16, String, String)> {
    let cookie = cookie.map_or(String::new(), |c| format!("Cookie: {c}\r\n"));
    http(
        port,
        &format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n{cookie}\r\n"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_shows_runs_tasks_flows_and_workers() -> anyhow::Result<()> {
    let port = free_port()?;
    let at = format!("127.0.0.1:{port}");
    let mut cluster = Cluster::start(&["--http", &at]).await?;
    cluster.add_worker("web-w", "local", 8)?;
    let c = Client::connect(&cluster.url()).await?;
    let run = c
        .run_source(fan_out("webfan", 120, 0), BTreeMap::new(), String::new())
        .await?
        .run
        .ok_or_else(|| anyhow::anyhow!("no run"))?;
    cluster.assert_completed(&c.wait(&run.id).await?);

    let (status, _, home) = get(port, "/", None)?;
    assert_eq!(status, 200, "{home}");
    assert!(
        home.contains("Dashboard") && home.contains(&run.id),
        "{home}"
    );
    assert!(home.contains("/style.css"), "{home}");

    let (_, _, runs) = get(port, "/runs?state=completed", None)?;
    assert!(runs.contains(&run.id), "{runs}");
    let (_, _, none) = get(port, "/runs?state=failed", None)?;
    assert!(!none.contains(&run.id), "{none}");

    // The run: its mapped task grouped (120 runs, all completed), one page of 50 rows.
    let path = format!("/runs/{}", run.id);
    let (status, _, page) = get(port, &path, None)?;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("COMPLETED</span> 120"), "{page}");
    assert!(
        page.contains("<svg class=\"dag\"") && page.contains("class=\"gantt\""),
        "{page}"
    );
    let rows = |page: &str| page.matches("/tasks/work/").count();
    let (_, _, first) = get(port, &format!("{path}?task=work&state=completed"), None)?;
    assert_eq!(rows(&first), 50, "{first}");
    assert!(first.contains("120 task runs"), "{first}");
    let (_, _, none) = get(port, &format!("{path}?task=work&state=failed"), None)?;
    assert_eq!(rows(&none), 0, "{none}");
    assert!(none.contains(">0 task runs"), "{none}");
    let (_, _, last) = get(port, &format!("{path}?task=work&offset=100"), None)?;
    assert_eq!(rows(&last), 20, "{last}");
    assert!(
        last.contains("← previous") && last.contains("101–120 of 120"),
        "{last}"
    );
    // More rows as the list is scrolled: table rows only, from the offset asked.
    let (status, _, more) = get(port, &format!("{path}/rows?task=work&offset=50"), None)?;
    assert_eq!(status, 200, "{more}");
    assert_eq!(rows(&more), 50, "{more}");
    assert!(
        more.starts_with("<tr>") && more.contains(">work[50]<"),
        "{more}"
    );
    let (_, _, total) = get(port, &format!("{path}?task=total"), None)?;
    assert!(total.contains("7140"), "the sum of 0..120: {total}");
    // One task run's page; one that does not exist.
    let (status, _, one) = get(port, &format!("{path}/tasks/work/7"), None)?;
    assert_eq!(status, 200, "{one}");
    assert!(
        one.contains("work[7]") && one.contains("id=\"value\""),
        "{one}"
    );
    let (status, _, _) = get(port, &format!("{path}/tasks/work/120"), None)?;
    assert_eq!(status, 404);
    // A map index that is no number: refused without echoing it.
    let long = "9".repeat(3000);
    let (status, _, refused) = get(port, &format!("{path}/tasks/work/{long}"), None)?;
    assert_eq!(status, 400, "{refused}");
    assert!(!refused.contains(&long[..100]), "{refused}");
    // A finished run's events: one `end`.
    let (status, head, events) = get(port, &format!("{path}/events"), None)?;
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("text/event-stream"), "{head}");
    assert!(
        events.contains("event: end") && events.contains("COMPLETED"),
        "{events}"
    );

    let (_, _, flows) = get(port, "/flows", None)?;
    assert!(flows.contains("webfan"), "{flows}");
    let (_, _, workers) = get(port, "/workers", None)?;
    assert!(
        workers.contains("web-w") && workers.contains("local"),
        "{workers}"
    );
    let (status, head, css) = get(port, "/style.css", None)?;
    assert_eq!(status, 200);
    assert!(
        head.contains("text/css") && css.contains("prefers-color-scheme"),
        "{head}"
    );
    let (status, head, js) = get(port, "/live.js", None)?;
    assert_eq!(status, 200);
    assert!(
        head.contains("text/javascript") && js.contains("EventSource"),
        "{head}"
    );
    for page in ["/schedules", "/limits"] {
        let (status, _, body) = get(port, page, None)?;
        assert_eq!(status, 200, "{page}: {body}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tokens_the_ui_asks_for_one_and_keeps_it_in_an_http_only_cookie() -> anyhow::Result<()>
{
    let keys = tempfile::tempdir()?;
    let client = tokens::generate();
    let file = keys.path().join("tokens");
    std::fs::write(&file, tokens::entry(Role::Client, "alice", &client))?;
    let port = free_port()?;
    let at = format!("127.0.0.1:{port}");
    let cluster =
        Cluster::start(&["--tokens-file", &file.display().to_string(), "--http", &at]).await?;
    let _ = &cluster;
    // Without a token: the sign-in page, no data.
    let (status, head, _) = eventually(Duration::from_secs(10), "the UI", || async {
        get(port, "/runs", None).ok()
    })
    .await?;
    assert_eq!(status, 303, "{head}");
    assert!(head.contains("location: /login"), "{head}");
    let (_, _, form) = get(port, "/login", None)?;
    assert!(form.contains("type=\"password\""), "{form}");
    // Signing in sets the cookie; with it the pages answer.
    let body = format!("token={client}");
    let (status, head, _) = http(
        port,
        &format!(
            "POST /login HTTP/1.0\r\nHost: 127.0.0.1\r\nOrigin: http://127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )?;
    assert_eq!(status, 303, "{head}");
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .ok_or_else(|| anyhow::anyhow!("no cookie: {head}"))?;
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap_or_default();
    assert!(
        !cookie.contains("Secure"),
        "on loopback over HTTP: {cookie}"
    );
    // Beyond loopback, a token is taken only over HTTPS (a proxy in front), and its cookie
    // is then `Secure`.
    let signin = |host: &str, proto: &str| {
        http(
            port,
            &format!(
                "POST /login HTTP/1.0\r\nHost: {host}\r\nOrigin: http://{host}\r\n{proto}Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        )
    };
    let (status, head, page) = signin("ui.example.org", "")?;
    assert_eq!(status, 400, "{head}");
    assert!(
        page.contains("HTTPS") && !head.contains("set-cookie"),
        "{page}"
    );
    let (status, head, _) = signin("ui.example.org", "X-Forwarded-Proto: https\r\n")?;
    assert_eq!(status, 303, "{head}");
    assert!(head.contains("; Secure"), "{head}");
    let (status, _, page) = get(port, "/runs", Some(pair))?;
    assert_eq!(status, 200, "{page}");
    // A wrong token: the API's refusal, not data.
    let (status, _, page) = get(port, "/runs", Some("baton_token=not-a-token"))?;
    assert_eq!(status, 401, "{page}");
    assert!(!page.contains("<td>"), "{page}");
    Ok(())
}

fn post(port: u16, path: &str, form: &str) -> anyhow::Result<(u16, String, String)> {
    http(
        port,
        &format!(
            "POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nSec-Fetch-Site: same-origin\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
            form.len()
        ),
    )
}

/// Where a redirect goes.
fn location(head: &str) -> String {
    head.lines()
        .find_map(|l| l.strip_prefix("location: "))
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_switches_schedules_quick_runs_and_cancels() -> anyhow::Result<()> {
    let port = free_port()?;
    let at = format!("127.0.0.1:{port}");
    let mut cluster = Cluster::start(&["--http", &at]).await?;
    cluster.add_worker("web-a", "local", 4)?;
    let c = Client::connect(&cluster.url()).await?;
    c.register_flow(
        "name: params\nparameters:\n  xs: {default: [1, 2]}\ntasks:\n  - {name: double, builtin: echo, inputs: {value: {param: xs}}, map: [value]}\n  - {name: total, builtin: sum, inputs: {values: {result: double}}}\n".into(),
    )
    .await?;
    c.register_flow(
        "name: ticking\nschedule: {cron: '* * * * * *'}\ntasks:\n  - {name: t, builtin: noop}\n"
            .into(),
    )
    .await?;

    // The schedule's switch: on, runs appear; off again.
    let (_, _, flows) = get(port, "/flows", None)?;
    assert!(flows.contains("aria-checked=\"false\""), "{flows}");
    let (status, head, _) = post(port, "/flows/default/ticking/schedule", "active=on")?;
    assert_eq!(status, 303, "{head}");
    let (_, _, flows) = get(port, "/flows", None)?;
    assert!(flows.contains("aria-checked=\"true\""), "{flows}");
    eventually(Duration::from_secs(20), "a scheduled run", || async {
        let (_, _, runs) = get(port, "/runs?flow=ticking", None).ok()?;
        runs.contains("schedule").then_some(())
    })
    .await?;
    post(port, "/flows/default/ticking/schedule", "active=off")?;
    let (_, _, flows) = get(port, "/flows", None)?;
    assert!(flows.contains("aria-checked=\"false\""), "{flows}");

    // Quick run: the form has the default; a bad value is shown back; a good one runs.
    let (_, _, form) = get(port, "/flows/default/params/run", None)?;
    assert!(form.contains("name=\"p.xs\" value=\"[1,2]\""), "{form}");
    let (status, _, bad) = post(port, "/flows/default/params/run", "p.xs=%5B1%2C2")?;
    assert_eq!(status, 400, "{bad}");
    assert!(bad.contains("not JSON"), "{bad}");
    let (status, head, _) = post(port, "/flows/default/params/run", "p.xs=%5B3%2C4%2C5%5D")?;
    assert_eq!(status, 303, "{head}");
    let to = location(&head);
    let id = to.trim_start_matches("/runs/").to_string();
    let done = c.wait(&id).await?;
    cluster.assert_completed(&done);
    let trs = c.task_runs(&id, true).await?;
    let total = trs
        .iter()
        .find(|t| t.task == "total")
        .map(|t| t.value.clone());
    assert_eq!(total.as_deref(), Some("12.0"));

    // Cancel from the run's page.
    let slow = c
        .run_source(
            "name: slow\ntasks:\n  - {name: nap, builtin: sleep, inputs: {ms: 60000, value: 1}}\n"
                .into(),
            BTreeMap::new(),
            String::new(),
        )
        .await?
        .run
        .ok_or_else(|| anyhow::anyhow!("no run"))?;
    let (_, _, page) = get(port, &format!("/runs/{}", slow.id), None)?;
    assert!(page.contains("Cancel run"), "{page}");
    let (status, head, _) = post(port, &format!("/runs/{}/cancel", slow.id), "")?;
    assert_eq!(status, 303, "{head}");
    let end = c.wait(&slow.id).await?;
    assert_eq!(end.state, baton_proto::RunState::Cancelled as i32);

    // Concurrency limits: set, shown, a bad one refused, removed.
    let (status, head, _) = post(port, "/limits", "tag=gpu&limit=2")?;
    assert_eq!(
        (status, location(&head).as_str()),
        (303, "/limits"),
        "{head}"
    );
    let (_, _, limits) = get(port, "/limits", None)?;
    assert!(limits.contains(">gpu<"), "{limits}");
    let (status, _, bad) = post(port, "/limits", "tag=gpu&limit=many")?;
    assert_eq!(status, 400, "{bad}");
    let (status, _, _) = post(port, "/limits/gpu/delete", "")?;
    assert_eq!(status, 303);
    assert!(c.list_limits().await?.is_empty());

    // An action sent from another site's page is refused (and changes nothing).
    let (status, _, refused) = http(
        port,
        "POST /limits HTTP/1.0\r\nHost: 127.0.0.1\r\nOrigin: http://elsewhere.example\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 15\r\n\r\ntag=gpu&limit=2",
    )?;
    assert_eq!(status, 403, "{refused}");
    // As is one that no browser page sent (neither `Origin` nor `Sec-Fetch-Site`), one
    // another site's page sent, and, without tokens, a page reached by a host name (DNS
    // rebinding).
    let (status, _, refused) = http(
        port,
        "POST /limits HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 15\r\n\r\ntag=gpu&limit=2",
    )?;
    assert_eq!(status, 403, "{refused}");
    let (status, _, refused) = http(
        port,
        "POST /limits HTTP/1.0\r\nHost: 127.0.0.1\r\nSec-Fetch-Site: cross-site\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 15\r\n\r\ntag=gpu&limit=2",
    )?;
    assert_eq!(status, 403, "{refused}");
    assert!(c.list_limits().await?.is_empty());
    let (status, _, refused) = http(port, "GET /runs HTTP/1.0\r\nHost: attacker.example\r\n\r\n")?;
    assert_eq!(status, 403, "{refused}");
    assert!(!refused.contains("<td>"), "{refused}");
    Ok(())
}
