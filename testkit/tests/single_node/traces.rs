//! OpenTelemetry traces on real processes: a real OTLP/gRPC receiver gets the spans of the
//! scheduler and two workers. After the ridge sweep, the run is one trace in which every
//! task run attempt is a worker span under the scheduler's span of that attempt, under the
//! run's span, with the commit of its result as a span of its own; a process task's
//! `TRACEPARENT` names its attempt's worker span.

use baton_client::Client;
use baton_testkit::otlp::{Received, Receiver};
use baton_testkit::{eventually, Cluster};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

const TRACED_FLOW: &str = r#"
name: traced
labels: [local]
tasks:
  - name: show
    process:
      command: sh
      args: ["-c", "echo \"\\\"$TRACEPARENT\\\"\""]
"#;

/// The spans of `run`: the run's span, and every span of that trace.
fn trace_of<'a>(spans: &'a [Received], run: &str) -> Option<(&'a Received, Vec<&'a Received>)> {
    let root = spans
        .iter()
        .find(|s| s.name == "run" && s.attributes.get("run").map(String::as_str) == Some(run))?;
    let all = spans
        .iter()
        .filter(|s| s.trace_id == root.trace_id)
        .collect();
    Some((root, all))
}

/// Whether `span`'s parent chain within `all` reaches `root`.
fn reaches(span: &Received, root: &Received, all: &[&Received]) -> bool {
    let by_id: HashMap<&str, &&Received> = all.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let mut at = span;
    for _ in 0..16 {
        if at.span_id == root.span_id {
            return true;
        }
        match by_id.get(at.parent.as_str()) {
            Some(p) => at = p,
            None => return false,
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_is_one_trace_from_the_scheduler_to_every_attempt_on_the_workers(
) -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    let endpoint = format!("OTEL_EXPORTER_OTLP_ENDPOINT={}", receiver.endpoint());
    let delay = "OTEL_BSP_SCHEDULE_DELAY=100";
    let mut cluster = Cluster::start_under(&["env", &endpoint, delay], &[]).await?;
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let json = ["--allow", "process", "--log-format", "json"];
    cluster.add_worker_with("w-local", "local", 2, &json, &env)?;
    cluster.add_worker_with("w-trainer", "local,trainer", 2, &[], &env)?;
    let client = Client::connect(&cluster.url()).await?;
    let run = crate::support::start_ridge(&client).await?;
    cluster.assert_completed(&client.wait(&run.id).await?);
    let attempts = client.task_runs(&run.id, false).await?;
    let ran: Vec<_> = attempts.iter().filter(|t| t.attempt > 0).collect();
    assert!(ran.len() >= 20, "{} task runs ran", ran.len());

    let traced = client
        .run_source(TRACED_FLOW.to_string(), BTreeMap::new(), String::new())
        .await?
        .run
        .ok_or_else(|| anyhow::anyhow!("no run"))?;
    cluster.assert_completed(&client.wait(&traced.id).await?);

    // Every attempt's worker span has arrived.
    let spans = eventually(Duration::from_secs(30), "every span", || {
        let spans = receiver.spans();
        let done = [(&run.id, ran.len()), (&traced.id, 1)]
            .iter()
            .all(|(id, n)| {
                trace_of(&spans, id).is_some_and(|(_, all)| {
                    let count = |name: &str| all.iter().filter(|s| s.name == name).count();
                    count("attempt") >= *n && count("result_commit") >= *n
                })
            });
        async move { done.then_some(spans) }
    })
    .await?;

    let (root, all) = trace_of(&spans, &run.id).expect("the run's trace");
    assert_eq!(root.service, "baton-scheduler");
    assert!(root.parent.is_empty(), "the run's span is the trace's root");
    // One trace per run: every span naming this run is in it.
    for s in spans
        .iter()
        .filter(|s| s.attributes.get("run") == Some(&run.id))
    {
        assert_eq!(s.trace_id, root.trace_id, "{s:?}");
    }
    for t in &ran {
        let index = t.map_index.to_string();
        let attempt = t.attempt.to_string();
        let matches = |s: &&&Received| {
            s.attributes.get("task") == Some(&t.task)
                && s.attributes.get("map_index") == Some(&index)
                && s.attributes.get("attempt") == Some(&attempt)
        };
        let on_worker = all
            .iter()
            .find(|s| s.name == "attempt" && matches(s))
            .unwrap_or_else(|| panic!("no worker span for {} [{index}]", t.task));
        assert!(on_worker.service == "baton-worker", "{on_worker:?}");
        let by_scheduler = all
            .iter()
            .find(|s| s.name == "task_run" && matches(s))
            .unwrap_or_else(|| panic!("no scheduler span for {} [{index}]", t.task));
        assert_eq!(on_worker.parent, by_scheduler.span_id, "{on_worker:?}");
        assert_eq!(by_scheduler.parent, root.span_id, "{by_scheduler:?}");
        assert!(reaches(on_worker, root, &all));
        // The commit of its result, in a group commit of at least one operation.
        let commit = all
            .iter()
            .find(|s| s.name == "result_commit" && s.parent == by_scheduler.span_id)
            .unwrap_or_else(|| panic!("no result commit for {} [{index}]", t.task));
        let ops: u64 = commit.attributes["operations"].parse()?;
        assert!(ops >= 1, "{commit:?}");
    }

    // The worker's JSON log lines of a traced attempt name its trace.
    let log = std::fs::read_to_string(&cluster.workers[0].log)?;
    let traced_line = log.lines().any(|l| {
        serde_json::from_str::<serde_json::Value>(l)
            .is_ok_and(|v| v["span"]["trace_id"].as_str() == Some(root.trace_id.as_str()))
    });
    assert!(
        traced_line,
        "no log line with trace {}:\n{log}",
        root.trace_id
    );

    // The process task saw its attempt's span as TRACEPARENT.
    let (_, all) = trace_of(&spans, &traced.id).expect("the second run's trace");
    let span = all
        .iter()
        .find(|s| s.name == "attempt")
        .expect("the process task's span");
    let trs = client.task_runs(&traced.id, true).await?;
    let seen: String = serde_json::from_str(&trs[0].value)?;
    assert_eq!(seen, format!("00-{}-{}-01", span.trace_id, span.span_id));
    Ok(())
}
