//! Data flow: maps, flatten, `after`.

use super::*;

#[test]
fn map_width_comes_from_the_upstream_result() {
    let mut c = VirtualCluster::new();
    c.register(SQUARES);
    c.connect("w", &[], 8, 0);
    // The worker decides the width at run time.
    c.behave("gen", |_| json!([1, 2, 3, 4, 5]));
    c.behave("sq", |a| {
        let x = a.inputs["x"].as_i64().unwrap();
        json!(x * x * a.inputs["scale"].as_i64().unwrap())
    });
    let run = c.start("squares", json!({}));

    let first = c.step();
    assert_eq!(names(&first), ["gen#1@w"]);
    assert_eq!(first[0].inputs, json!({}));
    assert!(c.succeed(&first[0]));

    let mut sq = c.step();
    assert_eq!(sq.len(), 5, "one task run per element: {:?}", names(&sq));
    sq.sort_by_key(|a| a.index());
    for (i, a) in sq.iter().enumerate() {
        assert_eq!(a.task(), "sq");
        assert_eq!(a.index(), i as i64);
        assert_eq!(a.attempt(), 1);
        // The mapped input is one element; the others are given whole.
        assert_eq!(a.inputs, json!({"x": i + 1, "scale": 10}));
    }

    // Finishing out of order: `total` waits for all of them and gets them in map order.
    for a in sq.iter().skip(1).rev() {
        assert!(c.succeed(a));
        assert!(c.step().is_empty(), "`total` must wait for every `sq`");
    }
    assert!(c.succeed(&sq[0]));
    let total = c.step();
    assert_eq!(names(&total), ["total#1@w"]);
    assert_eq!(total[0].inputs, json!({"xs": [10, 40, 90, 160, 250]}));
    assert!(c.succeed(&total[0]));

    assert_eq!(run_state(&c.run(&run)), pb::RunState::Completed);
    let rows = c.engine.task_runs(&run, false).unwrap();
    let sq_rows: Vec<i64> = rows
        .iter()
        .filter(|t| t.task == "sq")
        .map(|t| t.map_index)
        .collect();
    assert_eq!(sq_rows, [0, 1, 2, 3, 4]);
    assert_eq!(
        value_of(&c.task(&run, "total", -1)),
        json!({"xs": [10, 40, 90, 160, 250]})
    );
}

#[test]
fn map_over_an_empty_list_makes_no_task_runs_and_completes() {
    let mut c = VirtualCluster::new();
    c.register(SQUARES);
    c.connect("w", &[], 8, 0);
    c.behave("gen", |_| json!([]));
    let run = c.start("squares", json!({}));
    let gen = c.step();
    c.succeed(&gen[0]);
    let next = c.step();
    assert_eq!(names(&next), ["total#1@w"], "`sq` has nothing to run");
    assert_eq!(next[0].inputs, json!({"xs": []}));
    c.succeed(&next[0]);
    assert_eq!(run_state(&c.run(&run)), pb::RunState::Completed);
    assert!(c.assigns.iter().all(|a| a.task() != "sq"));
}

#[test]
fn map_over_a_non_list_fails_the_task() {
    let mut c = VirtualCluster::new();
    c.register(SQUARES);
    c.connect("w", &[], 8, 0);
    c.behave("gen", |_| json!({"not": "a list"}));
    let run = c.start("squares", json!({}));
    let gen = c.step();
    c.succeed(&gen[0]);
    assert!(c.step().is_empty());
    let rows = c.engine.task_runs(&run, false).unwrap();
    let sq: Vec<&pb::TaskRun> = rows.iter().filter(|t| t.task == "sq").collect();
    assert_eq!(sq.len(), 1);
    let sq = sq[0];
    assert_eq!(task_state(sq), pb::TaskState::Failed);
    assert!(sq.error.contains("must be a list"), "{}", sq.error);
    assert_eq!(
        task_state(&c.task(&run, "total", -1)),
        pb::TaskState::Skipped
    );
    let r = c.run(&run);
    assert_eq!(run_state(&r), pb::RunState::Failed);
    assert!(r.error.contains("`sq`"), "{}", r.error);
}

#[test]
fn flatten_splices_lists_and_appends_values() {
    let mut c = VirtualCluster::new();
    c.register(
        r#"
name: flat
tasks:
  - name: a
    builtin: echo
  - name: b_mapped
    builtin: echo
    inputs: {x: [10, 20]}
    map: [x]
  - name: joined
    builtin: echo
    inputs:
      all: {flatten: [{result: a}, {result: b_mapped}, {value: [9]}, {value: 7}]}
"#,
    );
    c.connect("w", &[], 8, 0);
    c.behave("a", |_| json!([1, 2]));
    c.behave("b_mapped", |a| json!(a.inputs["x"].as_i64().unwrap() + 1));
    let run = c.start("flat", json!({}));

    let first = c.step();
    assert_eq!(first.len(), 3, "{:?}", names(&first));
    for a in &first {
        c.succeed(a);
    }
    let joined = c.step();
    assert_eq!(names(&joined), ["joined#1@w"]);
    assert_eq!(joined[0].inputs, json!({"all": [1, 2, 11, 21, 9, 7]}));
    c.succeed(&joined[0]);
    assert_eq!(run_state(&c.run(&run)), pb::RunState::Completed);
}

#[test]
fn after_holds_a_task_until_its_upstream_completes_without_passing_data() {
    let mut c = VirtualCluster::new();
    c.register(
        r#"
name: ordered
tasks:
  - name: setup
    builtin: echo
  - name: work
    builtin: echo
    after: [setup]
    inputs: {n: 3}
"#,
    );
    c.connect("w", &[], 8, 0);
    c.behave("setup", |_| json!("setup-result"));
    let run = c.start("ordered", json!({}));

    let first = c.step();
    assert_eq!(
        names(&first),
        ["setup#1@w"],
        "`work` waits though a slot is free"
    );
    assert!(c.advance(60_000).is_empty());
    assert_eq!(
        task_state(&c.task(&run, "work", -1)),
        pb::TaskState::Pending
    );

    c.succeed(&first[0]);
    let work = c.step();
    assert_eq!(names(&work), ["work#1@w"]);
    assert_eq!(
        work[0].inputs,
        json!({"n": 3}),
        "no data flows through `after`"
    );
    c.succeed(&work[0]);
    assert_eq!(run_state(&c.run(&run)), pb::RunState::Completed);
}
