//! Requests (parameters, unknown flows, idempotency) and views.

use super::*;

const PARAMS: &str = r#"
name: params
parameters:
  size:
    description: how many
  scale:
    default: 2
tasks:
  - name: t
    builtin: echo
    inputs: {size: {param: size}, scale: {param: scale}}
"#;

#[test]
fn run_requests_are_checked_and_idempotent() {
    let mut c = VirtualCluster::new();
    assert_eq!(c.register(PARAMS), (1, true));
    assert_eq!(
        c.register(PARAMS),
        (1, false),
        "the same spec is the same version"
    );
    c.connect("w", &[], 4, 0);

    match c.try_start(new_run("params", json!({}))) {
        Err(EngineError::InvalidArgument(m)) => assert!(m.contains("`size`"), "{m}"),
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    match c.try_start(new_run("params", json!({"size": 3, "colour": "red"}))) {
        Err(EngineError::InvalidArgument(m)) => assert!(m.contains("`colour`"), "{m}"),
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    match c.try_start(new_run("nope", json!({}))) {
        Err(EngineError::NotFound(m)) => assert!(m.contains("nope"), "{m}"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    let mut other_project = new_run("params", json!({"size": 3}));
    other_project.project = "elsewhere".into();
    assert!(matches!(
        c.try_start(other_project),
        Err(EngineError::NotFound(_))
    ));
    let mut bad_version = new_run("params", json!({"size": 3}));
    bad_version.version = 7;
    assert!(matches!(
        c.try_start(bad_version),
        Err(EngineError::NotFound(_))
    ));
    assert!(
        c.engine.list_runs(0).is_empty(),
        "failed requests create nothing"
    );

    let mut keyed = new_run("params", json!({"size": 3}));
    keyed.idempotency_key = "k1".into();
    let (id1, created) = c.try_start(keyed.clone()).unwrap();
    assert!(created);
    let (again, created) = c.try_start(keyed.clone()).unwrap();
    assert_eq!((again.as_str(), created), (id1.as_str(), false));
    keyed.params.insert("size".into(), json!(99));
    let (again, created) = c.try_start(keyed).unwrap();
    assert_eq!((again.as_str(), created), (id1.as_str(), false));
    let id2 = c.start("params", json!({"size": 5}));
    assert_ne!(id1, id2);
    assert_eq!(c.engine.list_runs(0).len(), 2);

    let all = c.run_to_end();
    assert_eq!(all.len(), 2, "{:?}", names(&all));
    for expected in [
        json!({"size": 3, "scale": 2}),
        json!({"size": 5, "scale": 2}),
    ] {
        assert!(
            all.iter().any(|a| a.inputs == expected),
            "defaults fill unset parameters: {:?}",
            all.iter().map(|a| &a.inputs).collect::<Vec<_>>()
        );
    }
}

#[test]
fn views_list_every_task_and_count_progress() {
    let mut c = VirtualCluster::new();
    c.register(SQUARES);
    c.connect("w", &[], 8, 0);
    c.behave("gen", |_| json!([1, 2, 3, 4]));
    let run = c.start("squares", json!({}));

    let rows = c.engine.task_runs(&run, false).unwrap();
    let shown: Vec<(&str, i64, pb::TaskState)> = rows
        .iter()
        .map(|t| (t.task.as_str(), t.map_index, task_state(t)))
        .collect();
    assert_eq!(
        shown,
        [
            ("gen", -1, pb::TaskState::Ready),
            ("sq", -1, pb::TaskState::Pending),
            ("total", -1, pb::TaskState::Pending),
        ]
    );
    let r = c.run(&run);
    assert_eq!((r.tasks_total, r.tasks_done), (3, 0));
    assert_eq!(run_state(&r), pb::RunState::Pending);
    assert_eq!(r.flow, "squares");
    assert_eq!(r.version, 1);

    let gen = c.step();
    assert_eq!(run_state(&c.run(&run)), pb::RunState::Running);
    assert_eq!(c.task(&run, "gen", -1).worker, "w");
    c.succeed(&gen[0]);
    let sq = c.step();
    assert_eq!(sq.len(), 4);

    let rows = c.engine.task_runs(&run, true).unwrap();
    let shown: Vec<(&str, i64)> = rows
        .iter()
        .map(|t| (t.task.as_str(), t.map_index))
        .collect();
    assert_eq!(
        shown,
        [
            ("gen", -1),
            ("sq", 0),
            ("sq", 1),
            ("sq", 2),
            ("sq", 3),
            ("total", -1)
        ]
    );
    assert_eq!(value_of(&rows[0]), json!([1, 2, 3, 4]));
    assert!(rows[1..5]
        .iter()
        .all(|t| task_state(t) == pb::TaskState::Assigned));
    let r = c.run(&run);
    assert_eq!((r.tasks_total, r.tasks_done), (6, 1));

    c.succeed(&sq[0]);
    c.succeed(&sq[1]);
    let r = c.run(&run);
    assert_eq!((r.tasks_total, r.tasks_done), (6, 3));

    c.run_to_end();
    let r = c.run(&run);
    assert_eq!((r.tasks_total, r.tasks_done), (6, 6));
    assert_eq!(run_state(&r), pb::RunState::Completed);
    assert!(r.started_ms >= T0 && r.ended_ms >= r.started_ms);
    assert_eq!(c.engine.list_runs(0)[0].id, run);
}

#[test]
fn task_runs_are_listed_page_by_page() {
    let mut c = VirtualCluster::new();
    c.register(SQUARES);
    c.connect("w", &[], 8, 0);
    c.behave("gen", |_| json!([1, 2, 3, 4]));
    let run = c.start("squares", json!({}));
    let gen = c.step();
    c.succeed(&gen[0]);
    c.step();
    let all = c.engine.task_runs(&run, false).unwrap();
    assert_eq!(all.len(), 6);
    let key = |t: &pb::TaskRun| (t.task.clone(), t.map_index);
    let mut paged = Vec::new();
    for offset in (0..8).step_by(2) {
        let (rows, total) = c.engine.task_runs_page(&run, false, offset, 2).unwrap();
        assert_eq!(total, 6);
        assert!(rows.len() <= 2);
        paged.extend(rows.iter().map(key));
    }
    assert_eq!(paged, all.iter().map(key).collect::<Vec<_>>());
    let (rows, _) = c.engine.task_runs_page(&run, false, 3, 100).unwrap();
    assert_eq!(
        rows.iter().map(key).collect::<Vec<_>>(),
        all[3..].iter().map(key).collect::<Vec<_>>()
    );
}

#[test]
fn task_runs_are_filtered_by_task_state_and_index_with_the_runs_counts() {
    use crate::engine::query::{query_rows, TaskQuery};
    let mut c = VirtualCluster::new();
    c.register(SQUARES);
    c.connect("w", &[], 8, 0);
    c.behave("gen", |_| json!([1, 2, 3, 4, 5]));
    let run = c.start("squares", json!({}));
    let gen = c.step();
    c.succeed(&gen[0]);
    let sq = c.step();
    assert_eq!(sq.len(), 5);
    c.succeed(&sq[1]);
    c.succeed(&sq[3]);
    c.step();
    let done = pb::TaskState::Completed as i32;
    let ask = |q: TaskQuery| c.engine.task_query(&run, &q).unwrap();
    let indexes = |rows: &[pb::TaskRun]| rows.iter().map(|t| t.map_index).collect::<Vec<_>>();

    // One task, one state: only its completed map entries, and the run's counts.
    let page = ask(TaskQuery {
        limit: 10,
        task: "sq".into(),
        states: vec![done],
        with_counts: true,
        ..Default::default()
    });
    assert_eq!((page.total, indexes(&page.rows)), (2, vec![1, 3]));
    let counts: Vec<(String, i32, u32, bool)> = page
        .counts
        .iter()
        .map(|k| (k.task.clone(), k.state, k.count, k.mapped))
        .collect();
    let assigned = pb::TaskState::Assigned as i32;
    let pending = pb::TaskState::Pending as i32;
    assert_eq!(
        counts,
        vec![
            ("gen".into(), done, 1, false),
            ("sq".into(), assigned, 3, true),
            ("sq".into(), done, 2, true),
            ("total".into(), pending, 1, false),
        ]
    );
    assert!(page.counts[0].first_started_ms > 0 && page.counts[0].last_ended_ms > 0);

    // Paging is over the matching rows; one map index is one row; other states none.
    let page = ask(TaskQuery {
        offset: 1,
        limit: 1,
        task: "sq".into(),
        states: vec![assigned],
        ..Default::default()
    });
    assert_eq!((page.total, indexes(&page.rows)), (3, vec![2]));
    assert!(page.counts.is_empty());
    let one = ask(TaskQuery {
        limit: 10,
        task: "sq".into(),
        map_index: Some(4),
        ..Default::default()
    });
    assert_eq!((one.total, indexes(&one.rows)), (1, vec![4]));
    let unmapped = ask(TaskQuery {
        limit: 10,
        task: "total".into(),
        map_index: Some(-1),
        ..Default::default()
    });
    assert_eq!((unmapped.total, unmapped.rows[0].state), (1, pending));
    let none = ask(TaskQuery {
        limit: 10,
        states: vec![pb::TaskState::Failed as i32],
        ..Default::default()
    });
    assert_eq!((none.total, none.rows.len()), (0, 0));

    // Unfiltered pages (sliced without visiting every task run) cover every row once.
    let rows = c.engine.task_runs(&run, true).unwrap();
    let key = |t: &pb::TaskRun| (t.task.clone(), t.map_index);
    let mut paged = Vec::new();
    for offset in (0..10).step_by(3) {
        let page = ask(TaskQuery {
            offset,
            limit: 3,
            ..Default::default()
        });
        assert_eq!(page.total, rows.len());
        paged.extend(page.rows.iter().map(key));
    }
    assert_eq!(paged, rows.iter().map(key).collect::<Vec<_>>());
    let sq_only = ask(TaskQuery {
        offset: 4,
        limit: 10,
        task: "sq".into(),
        ..Default::default()
    });
    assert_eq!((sq_only.total, indexes(&sq_only.rows)), (5, vec![4]));

    // An archived run's rows answer every query the same way.
    for q in [
        TaskQuery {
            limit: 10,
            task: "sq".into(),
            states: vec![done],
            with_counts: true,
            ..Default::default()
        },
        TaskQuery {
            offset: 2,
            limit: 3,
            with_counts: true,
            ..Default::default()
        },
        TaskQuery {
            limit: 10,
            task: "sq".into(),
            map_index: Some(3),
            ..Default::default()
        },
    ] {
        let live = ask(q.clone());
        let archived = query_rows(&rows, &q);
        assert_eq!(live.total, archived.total, "{q:?}");
        assert_eq!(indexes(&live.rows), indexes(&archived.rows), "{q:?}");
        assert_eq!(live.counts, archived.counts, "{q:?}");
    }
}
