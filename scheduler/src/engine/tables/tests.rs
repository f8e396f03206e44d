//! Every table reads back what it writes, and bad rows are errors that name the table.

use super::*;
use crate::engine::{CacheEntry, RunRecord, ScheduleRecord, TaskRunRecord};
use baton_common::flow::parse_flow;
use baton_common::state::{RunState, TaskState};

fn put_value(op: &Op) -> (&str, &[u8]) {
    match op {
        Op::Put { key, value } | Op::Create { key, value } => (key, value),
        _ => panic!("not a write"),
    }
}

fn pointer(uri: &str) -> ResultRef {
    ResultRef {
        uri: uri.into(),
        size: 4,
        checksum: "sha256:00".into(),
        content_type: "application/json".into(),
    }
}

fn run_record(id: &str) -> RunRecord {
    RunRecord {
        id: id.into(),
        project: "p".into(),
        flow: "f".into(),
        version: 2,
        params: Default::default(),
        state: RunState::Running,
        created_ms: 1,
        started_ms: 1,
        ended_ms: 0,
        error: String::new(),
        idempotency_key: String::new(),
        scheduled_start_ms: 0,
        no_cache: false,
        priority: 0,
        parent: None,
        trigger: Default::default(),
        created_us: 0,
        ended_us: 0,
    }
}

fn task_run(state: TaskState, result: Option<ResultRef>) -> TaskRunRecord {
    TaskRunRecord {
        state,
        attempt: 1,
        worker: "w1".into(),
        started_ms: 1,
        ended_ms: 2,
        result,
        value: Some(serde_json::json!(0.1)),
        error: String::new(),
        failures: 0,
        lost: 0,
        attempts: Vec::new(),
        child: None,
        us: Default::default(),
    }
}

#[test]
fn every_table_reads_back_what_it_writes() {
    let spec = parse_flow("name: f\nproject: p\ntasks:\n  - name: a\n    builtin: noop\n")
        .expect("a flow");
    let run = run_record("r1");
    let entry = CacheEntry {
        result: pointer("file:///c"),
        value: Some(serde_json::json!([1, 2])),
        expires_ms: 7,
        run: "r1".into(),
        task: "a".into(),
    };
    let summary = baton_proto::FlowRun {
        id: "r0".into(),
        created_ms: 5,
        ..Default::default()
    };
    let ops = vec![
        flows::put(&spec, 2).expect("encoded"),
        runs::put(&run).expect("encoded"),
        task_runs::put("r1", "a", -1, &task_run(TaskState::Running, None)).expect("encoded"),
        task_runs::put("r1", "b", 3, &task_run(TaskState::Ready, None)).expect("encoded"),
        results::create("r1", "a", 7, &pointer("file:///x")).expect("encoded"),
        idempotency::put("k/with/slashes", "r1"),
        cache::put("abc", &entry).expect("encoded"),
        schedules::put("p", "f", &ScheduleRecord::default()).expect("encoded"),
        limits::put("gpu", 3),
        finished::put(finished::key(5, "r0"), &summary),
    ];
    let mut rows = Rows::default();
    for op in &ops {
        let (key, value) = put_value(op);
        assert!(PREFIXES.iter().any(|p| key.starts_with(p)), "{key}");
        rows.add(key, value).expect("a readable row");
    }
    assert_eq!(rows.pointers().len(), 1);
    let rec = rows.finish();
    assert_eq!(rec.flows, vec![(2, spec)]);
    assert_eq!(rec.runs.len(), 1);
    assert_eq!(rec.runs[0].id, "r1");
    assert_eq!(rec.runs[0].version, 2);
    assert_eq!(rec.task_runs.len(), 3, "two records and the pointer's own");
    assert!(rec
        .task_runs
        .iter()
        .any(|(r, t, i, tr)| (r.as_str(), t.as_str(), *i, tr.state)
            == ("r1", "a", 7, TaskState::Completed)));
    assert_eq!(
        rec.idempotency,
        vec![("k/with/slashes".to_string(), "r1".to_string())]
    );
    assert_eq!(rec.cache.len(), 1);
    assert_eq!(rec.cache[0].0, "abc");
    assert_eq!(rec.cache[0].1.expires_ms, 7);
    assert_eq!(rec.schedules.len(), 1);
    assert_eq!(
        (rec.schedules[0].0.as_str(), rec.schedules[0].1.as_str()),
        ("p", "f")
    );
    assert_eq!(rec.limits, vec![("gpu".to_string(), 3)]);
    assert_eq!(rec.finished, vec![(finished::key(5, "r0"), summary)]);
}

#[test]
fn a_pointer_completes_a_record_that_lags_it() {
    let mut rows = Rows::default();
    let run = run_record("r1");
    for op in [
        runs::put(&run).expect("encoded"),
        task_runs::put("r1", "a", -1, &task_run(TaskState::Running, None)).expect("encoded"),
        results::create("r1", "a", -1, &pointer("file:///x")).expect("encoded"),
    ] {
        let (key, value) = put_value(&op);
        rows.add(key, value).expect("readable");
    }
    let rec = rows.finish();
    let (_, _, _, tr) = &rec.task_runs[0];
    assert_eq!(tr.state, TaskState::Completed);
    assert_eq!(tr.result, Some(pointer("file:///x")));
    assert_eq!(tr.value, None, "read back from the result store");
}

#[test]
fn bad_rows_are_errors_that_name_the_table_and_a_bounded_key() {
    let mut rows = Rows::default();
    let e = rows.add("run/r1", b"{not json").expect_err("unreadable");
    assert!(e.to_string().contains("a run record"), "{e}");
    let e = rows.add("limit/gpu", b"many").expect_err("unreadable");
    assert!(e.to_string().contains("not a number"), "{e}");
    let e = rows.add("tr/r1/a", b"{}").expect_err("no index");
    assert!(e.to_string().contains("RUN/TASK/INDEX"), "{e}");
    let e = rows.add("flow/p/f/latest", b"{}").expect_err("no version");
    assert!(e.to_string().contains("version"), "{e}");
    let long = format!("zzz/{}", "é".repeat(10_000));
    let e = rows.add(&long, b"").expect_err("no table");
    assert!(matches!(e, TableError::UnknownKey(_)));
    assert!(
        e.to_string().len() < 400,
        "the key is cut: {} bytes",
        e.to_string().len()
    );
    assert!(rows.finish().runs.is_empty(), "bad rows leave nothing");
}

#[test]
fn an_encoding_failure_is_an_error_not_an_empty_record() {
    // A map with non-string keys cannot be JSON.
    let mut bad = std::collections::BTreeMap::new();
    bad.insert((1, 2), 3);
    let e = json("a test record", &bad).expect_err("not encodable");
    assert!(
        matches!(
            e,
            TableError::Encode {
                what: "a test record",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn batched_records_read_back_latest_first_whatever_the_order() {
    let running = task_run(TaskState::Running, None);
    let done = task_run(TaskState::Completed, Some(pointer("s3://b/p.pack#0+4")));
    // 2,000 records take several batches; each batch is a key of its own, numbered up.
    let many: Vec<(&str, i64, TaskRunRecord)> =
        (0..2000).map(|i| ("work", i, running.clone())).collect();
    let mut seq = 0;
    let first = batches::put("r1", &mut seq, &many).expect("encodes");
    assert!(first.len() >= 2, "{} batches", first.len());
    assert_eq!(seq, first.len() as u64);
    assert!(first
        .iter()
        .all(|op| op.size() < batches::MAX_BATCH_BYTES + 2048));
    // Then index 7 completes, in a later batch; an older record of its own (the layout
    // before batches) is overridden.
    let later = batches::put("r1", &mut seq, &[("work", 7, done.clone())]).expect("encodes");
    let own = task_runs::put("r1", "work", 7, &running).expect("encodes");
    // Read in reverse order: the latest batch still wins.
    let mut rows = Rows::default();
    for op in later.iter().chain([&own]).chain(first.iter().rev()) {
        let (k, v) = put_value(op);
        rows.add(k, v).expect("readable");
    }
    let rec = rows.finish();
    assert_eq!(rec.task_runs.len(), 2000);
    let seven: Vec<_> = rec.task_runs.iter().filter(|t| t.2 == 7).collect();
    assert_eq!(seven.len(), 1);
    assert_eq!(seven[0].3, done);
    assert_eq!(rec.batch_seqs.get("r1"), Some(&seq));
    // Deleting the run's batches names every one of them.
    match batches::delete_run("r1", seq) {
        Op::DeletePrefix { prefix, keys } => {
            assert_eq!(prefix, "trb/r1/");
            assert_eq!(keys.len() as u64, seq);
            assert_eq!(keys[0], batches::key("r1", 0));
        }
        other => panic!("{other:?}"),
    }
    // A damaged batch names its table.
    let e = Rows::default()
        .add("trb/r1/zz", b"[]")
        .expect_err("not hex");
    assert!(e.to_string().contains("batch of task run records"), "{e}");
}
