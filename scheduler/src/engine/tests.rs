//! Tests of the DAG engine against virtual workers and a virtual clock: no I/O, no sleeping.
//!
//! [`VirtualCluster`] plays the host (it commits the engine's ops to an in-memory store and
//! delivers its messages) and the workers (each holds the attempts assigned to it until the
//! test finishes them, computing results from the assignment's inputs).

use super::{Engine, EngineConfig, EngineError, NewRun, Outcome, Outgoing, Recovered};
use crate::store::Op;
use baton_common::flow::{parse_flow, ResourceSpec};
use baton_common::ids::{AttemptKey, WorkerId};
use baton_common::result_store::{checksum, ResultRef};
use baton_proto as pb;
use baton_proto::scheduler_message::Msg;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// The virtual clock's start (a realistic unix time in milliseconds).
const T0: i64 = 1_700_000_000_000;
const LEASE_MS: i64 = 5_000;
const GRACE_MS: i64 = 3_000;
const UNRUNNABLE_MS: i64 = 20_000;

fn config() -> EngineConfig {
    EngineConfig {
        result_store: "mem://results".into(),
        heartbeat_interval_ms: 500,
        worker_lease_ms: LEASE_MS as u64,
        adopt_grace_ms: GRACE_MS as u64,
        unrunnable_timeout_ms: UNRUNNABLE_MS as u64,
        max_lost_attempts: 3,
    }
}

/// One Assign, as the virtual worker received it.
#[derive(Clone, Debug)]
struct Assignment {
    worker: String,
    session: u64,
    epoch: u64,
    key: AttemptKey,
    /// The task spec sent (`{"kind": "builtin", "function": ...}`).
    spec: Value,
    inputs: Value,
    timeout_ms: u64,
    /// When it was sent.
    at: i64,
}

impl Assignment {
    fn task(&self) -> &str {
        &self.key.task
    }

    fn index(&self) -> i64 {
        self.key.map_index
    }

    fn attempt(&self) -> u32 {
        self.key.attempt
    }
}

/// Computes an attempt's result from its assignment.
type Behaviour = Box<dyn Fn(&Assignment) -> Value>;

/// A Cancel, as the virtual worker received it.
#[derive(Clone, Debug)]
struct Cancelled {
    worker: String,
    session: u64,
    key: AttemptKey,
    reason: String,
}

/// A virtual worker.
struct VWorker {
    session: u64,
    connected: bool,
    labels: Vec<String>,
    resources: ResourceSpec,
    /// Attempts assigned to it and not yet reported finished.
    running: Vec<Assignment>,
    /// The Welcome of its latest session.
    welcome: Option<pb::Welcome>,
}

struct VirtualCluster {
    engine: Engine,
    epoch: u64,
    now: i64,
    next_session: u64,
    /// The state store: the engine's ops applied in order.
    store: BTreeMap<String, Vec<u8>>,
    /// Every op the engine emitted, in order.
    ops: Vec<Op>,
    /// Every message sent to workers, in order.
    sent: Vec<Outgoing>,
    /// Every Assign sent, in order.
    assigns: Vec<Assignment>,
    workers: BTreeMap<String, VWorker>,
    /// Per task name; tasks without one behave by their built-in function.
    behaviours: HashMap<String, Behaviour>,
}

impl VirtualCluster {
    fn new() -> Self {
        VirtualCluster {
            engine: Engine::new(config(), 1),
            epoch: 1,
            now: T0,
            next_session: 1,
            store: BTreeMap::new(),
            ops: Vec::new(),
            sent: Vec::new(),
            assigns: Vec::new(),
            workers: BTreeMap::new(),
            behaviours: HashMap::new(),
        }
    }

    // --- flows and runs ---

    fn register(&mut self, yaml: &str) -> (u32, bool) {
        let spec = parse_flow(yaml).expect("a valid flow file");
        let out = self.engine.register_flow(spec);
        self.drain();
        out
    }

    fn try_start(&mut self, req: NewRun) -> Result<(String, bool), EngineError> {
        let out = self.engine.create_run(req, self.now);
        self.drain();
        out.map(|(id, created)| (id.0, created))
    }

    /// Starts a run of flow `flow` of the default project with parameters `params`.
    fn start(&mut self, flow: &str, params: Value) -> String {
        let (id, created) = self
            .try_start(new_run(flow, params))
            .expect("the run is created");
        assert!(created);
        id
    }

    fn cancel(&mut self, run: &str) {
        self.engine
            .cancel_run(run, self.now)
            .expect("the run exists");
        self.drain();
    }

    /// Sets how the virtual workers compute task `task`'s results.
    fn behave(&mut self, task: &str, f: impl Fn(&Assignment) -> Value + 'static) {
        self.behaviours.insert(task.to_string(), Box::new(f));
    }

    // --- workers ---

    fn connect(&mut self, id: &str, labels: &[&str], slots: u32, gpus: u32) -> u64 {
        self.workers.insert(
            id.to_string(),
            VWorker {
                session: 0,
                connected: false,
                labels: labels.iter().map(|l| l.to_string()).collect(),
                resources: ResourceSpec {
                    slots,
                    gpus,
                    memory_mb: 0,
                },
                running: Vec::new(),
                welcome: None,
            },
        );
        self.open_session(id, Vec::new())
    }

    /// An existing worker opens a new session, reporting the attempts it still runs.
    fn reconnect(&mut self, id: &str, running: &[AttemptKey]) -> pb::Welcome {
        self.open_session(id, running.to_vec());
        self.workers[id].welcome.clone().expect("a Welcome")
    }

    fn open_session(&mut self, id: &str, running: Vec<AttemptKey>) -> u64 {
        let session = self.next_session;
        self.next_session += 1;
        let w = self.workers.get_mut(id).expect("a known worker");
        w.session = session;
        w.connected = true;
        w.welcome = None;
        let reg = super::WorkerRegistration {
            id: WorkerId(id.to_string()),
            labels: w.labels.clone(),
            resources: w.resources.clone(),
            running,
            address: format!("vw://{id}"),
        };
        self.engine.worker_connected(reg, session, self.now);
        self.drain();
        assert!(
            self.workers[id].welcome.is_some(),
            "a connecting worker is welcomed"
        );
        session
    }

    fn disconnect(&mut self, id: &str) {
        let w = self.workers.get_mut(id).expect("a known worker");
        w.connected = false;
        let session = w.session;
        self.engine
            .worker_disconnected(&WorkerId(id.to_string()), session, self.now);
        self.drain();
    }

    /// The worker says something (a heartbeat) on its session.
    fn heartbeat(&mut self, id: &str) {
        let session = self.workers[id].session;
        self.engine
            .worker_seen(&WorkerId(id.to_string()), session, self.now);
    }

    /// Attempts assigned to `worker` and not reported finished.
    fn outstanding(&self, worker: &str) -> usize {
        self.workers[worker].running.len()
    }

    // --- time and steps ---

    /// One host step: fire timers, dispatch, commit and deliver.
    fn step(&mut self) -> Vec<Assignment> {
        self.engine.tick(self.now);
        self.engine.dispatch(self.now);
        self.drain()
    }

    /// Moves the clock forward by `ms`, then steps.
    fn advance(&mut self, ms: i64) -> Vec<Assignment> {
        assert!(ms >= 0);
        self.now += ms;
        self.step()
    }

    /// Commits the engine's ops and delivers its messages; returns the new assignments.
    fn drain(&mut self) -> Vec<Assignment> {
        let fx = self.engine.take_effects();
        for op in fx.ops {
            match &op {
                Op::Put { key, value } => {
                    self.store.insert(key.clone(), value.clone());
                }
                Op::Create { key, value } => {
                    assert!(
                        !self.store.contains_key(key),
                        "Create of existing key {key}"
                    );
                    self.store.insert(key.clone(), value.clone());
                }
                Op::Delete { key } => {
                    self.store.remove(key);
                }
            }
            self.ops.push(op);
        }
        let mut new = Vec::new();
        for out in fx.outgoing {
            assert_eq!(
                out.msg.epoch, self.epoch,
                "messages carry the engine's epoch"
            );
            let w = self
                .workers
                .get_mut(&out.worker.0)
                .unwrap_or_else(|| panic!("a message for unknown worker {}", out.worker));
            match &out.msg.msg {
                Some(Msg::Assign(a)) => {
                    assert!(
                        w.connected && w.session == out.session,
                        "an Assign for a closed session of {}",
                        out.worker
                    );
                    let asg = Assignment {
                        worker: out.worker.0.clone(),
                        session: out.session,
                        epoch: out.msg.epoch,
                        key: AttemptKey::from(a.key.as_ref().expect("a key")),
                        spec: serde_json::from_str(&a.task_spec).expect("task spec JSON"),
                        inputs: serde_json::from_str(&a.inputs).expect("inputs JSON"),
                        timeout_ms: a.timeout_ms,
                        at: self.now,
                    };
                    w.running.push(asg.clone());
                    self.assigns.push(asg.clone());
                    new.push(asg);
                }
                Some(Msg::Welcome(welcome)) if w.session == out.session => {
                    w.welcome = Some(welcome.clone());
                }
                _ => {}
            }
            self.sent.push(out);
        }
        new
    }

    // --- attempts ---

    /// The worker reports that the attempt started.
    fn started(&mut self, a: &Assignment) {
        self.engine.task_started(&a.key, self.now);
        self.drain();
    }

    /// The worker reports success, with the value its behaviour computes.
    fn succeed(&mut self, a: &Assignment) -> bool {
        let value = match self.behaviours.get(a.task()) {
            Some(f) => f(a),
            None => builtin(a),
        };
        self.succeed_with(a, value)
    }

    fn succeed_with(&mut self, a: &Assignment, value: Value) -> bool {
        let bytes = serde_json::to_vec(&value).expect("JSON");
        let result = ResultRef {
            uri: format!("mem://results/{}", a.key.result_key()),
            size: bytes.len() as u64,
            checksum: checksum(&bytes),
            content_type: "application/json".into(),
        };
        self.finish(a, Outcome::Success { result, value })
    }

    fn fail(&mut self, a: &Assignment, error: &str, retryable: bool) -> bool {
        self.finish(
            a,
            Outcome::Failure {
                error: error.to_string(),
                retryable,
            },
        )
    }

    /// The worker reports the attempt finished on its current session; returns whether the
    /// engine committed it (and checks the Ack says the same).
    fn finish(&mut self, a: &Assignment, outcome: Outcome) -> bool {
        let w = self.workers.get_mut(&a.worker).expect("a known worker");
        w.running.retain(|r| r.key != a.key);
        let session = w.session;
        let id = WorkerId(a.worker.clone());
        self.engine.worker_seen(&id, session, self.now);
        let committed = self
            .engine
            .task_finished(&id, session, &a.key, outcome, self.now);
        let before = self.sent.len();
        self.drain();
        let ack = self.sent[before..]
            .iter()
            .find_map(|o| match &o.msg.msg {
                Some(Msg::Ack(ack)) if o.worker == id && o.session == session => Some(ack.clone()),
                _ => None,
            })
            .expect("every Finished is acknowledged");
        assert_eq!(AttemptKey::from(ack.key.as_ref().expect("a key")), a.key);
        assert_eq!(ack.committed, committed);
        committed
    }

    /// Steps and completes every outstanding attempt of connected workers (oldest first) until
    /// nothing is left to do; returns every assignment made meanwhile.
    fn run_to_end(&mut self) -> Vec<Assignment> {
        let mut all = Vec::new();
        for _ in 0..10_000 {
            all.extend(self.step());
            let next = self
                .workers
                .values()
                .filter(|w| w.connected)
                .flat_map(|w| w.running.iter())
                .min_by_key(|a| a.at)
                .cloned();
            match next {
                Some(a) => {
                    self.succeed(&a);
                }
                None => return all,
            }
        }
        panic!("the cluster never settled");
    }

    // --- messages ---

    fn cancels(&self) -> Vec<Cancelled> {
        self.sent
            .iter()
            .filter_map(|o| match &o.msg.msg {
                Some(Msg::Cancel(c)) => Some(Cancelled {
                    worker: o.worker.0.clone(),
                    session: o.session,
                    key: AttemptKey::from(c.key.as_ref().expect("a key")),
                    reason: c.reason.clone(),
                }),
                _ => None,
            })
            .collect()
    }

    // --- views ---

    fn run(&self, id: &str) -> pb::FlowRun {
        self.engine.get_run(id).expect("the run exists")
    }

    fn task(&self, run: &str, task: &str, index: i64) -> pb::TaskRun {
        self.engine
            .task_runs(run, true)
            .expect("the run exists")
            .into_iter()
            .find(|t| t.task == task && t.map_index == index)
            .unwrap_or_else(|| panic!("no task run {task}[{index}]"))
    }

    // --- restarts ---

    /// What a restarted scheduler reads back from its state store.
    fn recovered(&self) -> Recovered {
        let mut rec = Recovered::default();
        for (key, value) in &self.store {
            let parts: Vec<&str> = key.split('/').collect();
            match parts.as_slice() {
                ["flow", _project, _flow, version] => rec.flows.push((
                    version.parse().expect("a version"),
                    serde_json::from_slice(value).expect("a flow record"),
                )),
                ["run", _id] => rec
                    .runs
                    .push(serde_json::from_slice(value).expect("a run record")),
                ["tr", run, task, index] => rec.task_runs.push((
                    run.to_string(),
                    task.to_string(),
                    index.parse().expect("a map index"),
                    serde_json::from_slice(value).expect("a task run record"),
                )),
                ["idem", _key] => {}
                _ => panic!("unexpected key `{key}` in the state store"),
            }
        }
        rec
    }

    /// The scheduler restarts: a new engine with the next epoch recovers from the store. The
    /// workers' sessions are gone, but the workers keep running their attempts.
    fn restart(&mut self) {
        let rec = self.recovered();
        self.epoch += 1;
        self.engine = Engine::new(config(), self.epoch);
        self.engine.recover(rec, self.now);
        for w in self.workers.values_mut() {
            w.connected = false;
        }
        let new = self.drain();
        assert!(new.is_empty(), "recovering assigns nothing by itself");
    }
}

/// What the built-in functions compute, as far as these tests need.
fn builtin(a: &Assignment) -> Value {
    match a.spec["function"].as_str().unwrap_or("") {
        "noop" | "sleep" => Value::Null,
        "range" => {
            let n = a.inputs["n"].as_i64().unwrap_or(0);
            json!((1..=n).collect::<Vec<_>>())
        }
        "sum" => json!(sum_numbers(&a.inputs)),
        // "echo" and anything else: the inputs.
        _ => a.inputs.clone(),
    }
}

fn sum_numbers(v: &Value) -> i64 {
    match v {
        Value::Number(n) => n.as_i64().unwrap_or(0),
        Value::Array(items) => items.iter().map(sum_numbers).sum(),
        Value::Object(m) => m.values().map(sum_numbers).sum(),
        _ => 0,
    }
}

fn new_run(flow: &str, params: Value) -> NewRun {
    let params = match params {
        Value::Object(m) => m.into_iter().collect(),
        Value::Null => BTreeMap::new(),
        other => panic!("parameters must be an object, got {other}"),
    };
    NewRun {
        project: "default".into(),
        flow: flow.into(),
        params,
        ..Default::default()
    }
}

/// `task[index]#attempt@worker` of each assignment, for readable assertions.
fn names(v: &[Assignment]) -> Vec<String> {
    v.iter()
        .map(|a| {
            if a.index() < 0 {
                format!("{}#{}@{}", a.task(), a.attempt(), a.worker)
            } else {
                format!("{}[{}]#{}@{}", a.task(), a.index(), a.attempt(), a.worker)
            }
        })
        .collect()
}

/// `task[index]#attempt` of each assignment, where the worker does not matter.
fn attempts(v: &[Assignment]) -> Vec<String> {
    v.iter()
        .map(|a| {
            if a.index() < 0 {
                format!("{}#{}", a.task(), a.attempt())
            } else {
                format!("{}[{}]#{}", a.task(), a.index(), a.attempt())
            }
        })
        .collect()
}

fn only<'a>(v: &'a [Assignment], task: &str) -> Vec<&'a Assignment> {
    v.iter().filter(|a| a.task() == task).collect()
}

fn one<'a>(v: &'a [Assignment], task: &str) -> &'a Assignment {
    let found = only(v, task);
    assert_eq!(found.len(), 1, "one assignment of {task} in {:?}", names(v));
    found[0]
}

fn task_state(t: &pb::TaskRun) -> pb::TaskState {
    pb::TaskState::try_from(t.state).expect("a known task state")
}

fn run_state(r: &pb::FlowRun) -> pb::RunState {
    pb::RunState::try_from(r.state).expect("a known run state")
}

fn value_of(t: &pb::TaskRun) -> Value {
    serde_json::from_str(&t.value).expect("the task run's value")
}

// ---------------------------------------------------------------------------------------------
// Data flow: maps, flatten, `after`
// ---------------------------------------------------------------------------------------------

const SQUARES: &str = r#"
name: squares
tasks:
  - name: gen
    builtin: range
  - name: sq
    builtin: echo
    inputs:
      x: {result: gen}
      scale: 10
    map: [x]
  - name: total
    builtin: echo
    inputs:
      xs: {result: sq}
"#;

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

// ---------------------------------------------------------------------------------------------
// Dispatch: labels, resources, credit
// ---------------------------------------------------------------------------------------------

#[test]
fn labelled_tasks_go_only_to_workers_with_all_their_labels() {
    let mut c = VirtualCluster::new();
    c.register(
        r#"
name: labelled
labels: [local]
tasks:
  - name: prep
    builtin: echo
    inputs: {x: [1, 2, 3, 4]}
    map: [x]
  - name: train
    builtin: echo
    labels: [trainer]
    inputs: {x: [1, 2, 3, 4]}
    map: [x]
"#,
    );
    // The roomy workers lack one of the labels; only the small one has both.
    c.connect("local-only", &["local"], 8, 0);
    c.connect("trainer-only", &["trainer"], 8, 0);
    c.connect("both", &["trainer", "local"], 1, 0);
    let run = c.start("labelled", json!({}));

    let mut all = Vec::new();
    for _ in 0..100 {
        let new = c.step();
        all.extend(new);
        assert!(c.outstanding("both") <= 1);
        assert_eq!(c.outstanding("trainer-only"), 0);
        let next = c
            .workers
            .values()
            .flat_map(|w| w.running.iter())
            .min_by_key(|a| a.at)
            .cloned();
        match next {
            Some(a) => {
                c.succeed(&a);
            }
            None => break,
        }
    }
    assert_eq!(only(&all, "train").len(), 4);
    assert_eq!(only(&all, "prep").len(), 4);
    for a in only(&all, "train") {
        assert_eq!(a.worker, "both", "{:?}", names(&all));
    }
    for a in only(&all, "prep") {
        assert_ne!(
            a.worker, "trainer-only",
            "the flow's labels apply to every task"
        );
    }
    assert_eq!(run_state(&c.run(&run)), pb::RunState::Completed);
}

#[test]
fn a_worker_never_runs_more_attempts_than_its_slots() {
    let mut c = VirtualCluster::new();
    c.register(
        r#"
name: wide
tasks:
  - name: work
    builtin: echo
    inputs: {x: [1, 2, 3, 4, 5, 6, 7]}
    map: [x]
"#,
    );
    c.connect("w", &[], 2, 0);
    let run = c.start("wide", json!({}));

    let mut most = 0;
    let mut assigned = 0;
    for _ in 0..100 {
        assigned += c.step().len();
        let outstanding = c.outstanding("w");
        assert!(
            outstanding <= 2,
            "{outstanding} attempts on a 2-slot worker"
        );
        most = most.max(outstanding);
        let Some(a) = c.workers["w"].running.first().cloned() else {
            break;
        };
        c.succeed(&a);
    }
    assert_eq!(assigned, 7);
    assert_eq!(most, 2, "both slots are used");
    assert_eq!(run_state(&c.run(&run)), pb::RunState::Completed);
}

#[test]
fn a_task_needing_two_gpus_never_goes_to_a_one_gpu_worker() {
    let mut c = VirtualCluster::new();
    c.register(
        r#"
name: gpu-heavy
tasks:
  - name: fit
    builtin: echo
    inputs: {x: [1, 2, 3]}
    map: [x]
    resources: {gpus: 2}
"#,
    );
    c.connect("one-gpu", &[], 8, 1);
    c.connect("two-gpu", &[], 8, 2);
    let run = c.start("gpu-heavy", json!({}));

    let mut all = Vec::new();
    for _ in 0..100 {
        all.extend(c.step());
        assert_eq!(c.outstanding("one-gpu"), 0);
        assert!(
            c.outstanding("two-gpu") <= 1,
            "two gpus fit one task at a time"
        );
        let Some(a) = c.workers["two-gpu"].running.first().cloned() else {
            break;
        };
        c.succeed(&a);
    }
    assert_eq!(all.len(), 3);
    assert!(
        all.iter().all(|a| a.worker == "two-gpu"),
        "{:?}",
        names(&all)
    );
    assert_eq!(run_state(&c.run(&run)), pb::RunState::Completed);
}

// ---------------------------------------------------------------------------------------------
// Failures: propagation, retries, timeouts
// ---------------------------------------------------------------------------------------------

#[test]
fn a_failure_skips_downstream_tasks_and_fails_the_run_while_other_branches_complete() {
    let mut c = VirtualCluster::new();
    c.register(
        r#"
name: branches
tasks:
  - name: a
    builtin: fail
  - name: b
    builtin: echo
    inputs: {v: {result: a}}
  - name: c
    builtin: echo
    inputs: {v: {result: b}}
  - name: x
    builtin: echo
    inputs: {n: 1}
  - name: y
    builtin: echo
    inputs: {v: {result: x}}
"#,
    );
    c.connect("w", &[], 8, 0);
    let run = c.start("branches", json!({}));

    let first = c.step();
    assert_eq!(first.len(), 2, "{:?}", names(&first));
    assert!(c.fail(one(&first, "a"), "boom", false));
    assert!(c.step().is_empty());
    assert_eq!(task_state(&c.task(&run, "b", -1)), pb::TaskState::Skipped);
    assert_eq!(task_state(&c.task(&run, "c", -1)), pb::TaskState::Skipped);
    assert!(c.task(&run, "b", -1).error.contains("`a`"));
    assert_eq!(
        run_state(&c.run(&run)),
        pb::RunState::Running,
        "the independent branch is still going"
    );

    c.succeed(one(&first, "x"));
    let y = c.step();
    assert_eq!(names(&y), ["y#1@w"]);
    assert_eq!(y[0].inputs, json!({"v": {"n": 1}}));
    c.succeed(&y[0]);

    assert_eq!(task_state(&c.task(&run, "y", -1)), pb::TaskState::Completed);
    let a = c.task(&run, "a", -1);
    assert_eq!(task_state(&a), pb::TaskState::Failed);
    assert_eq!(a.error, "boom");
    let r = c.run(&run);
    assert_eq!(run_state(&r), pb::RunState::Failed);
    assert!(
        r.error.contains("`a`") && r.error.contains("boom"),
        "{}",
        r.error
    );
    assert!(c.assigns.iter().all(|a| a.task() != "b" && a.task() != "c"));
}

#[test]
fn retries_wait_with_backoff_and_non_retryable_failures_are_final() {
    let mut c = VirtualCluster::new();
    c.register(
        r#"
name: flaky
tasks:
  - name: f
    builtin: noop
    retries: {count: 2, delay_s: 1, backoff: 2}
  - name: g
    builtin: noop
    retries: {count: 3, delay_s: 1}
"#,
    );
    c.connect("w", &[], 8, 0);
    let run = c.start("flaky", json!({}));
    let first = c.step();
    assert_eq!(first.len(), 2);

    // A non-retryable failure is final whatever the policy.
    assert!(c.fail(one(&first, "g"), "bad config", false));
    let g = c.task(&run, "g", -1);
    assert_eq!(task_state(&g), pb::TaskState::Failed);
    assert_eq!(g.attempt, 1);

    // Attempt 2: one second after the first failure.
    c.advance(100);
    let t1 = c.now;
    assert!(c.fail(one(&first, "f"), "flaky 1", true));
    assert_eq!(task_state(&c.task(&run, "f", -1)), pb::TaskState::Retrying);
    assert!(c.advance(999).is_empty(), "not before the delay");
    let second = c.advance(1);
    assert_eq!(names(&second), ["f#2@w"]);
    assert_eq!(second[0].at, t1 + 1000);

    // Attempt 3: two seconds (1 s × 2) after the second failure.
    c.advance(50);
    let t2 = c.now;
    assert!(c.fail(&second[0], "flaky 2", true));
    assert!(c.advance(1999).is_empty(), "the delay doubles");
    let third = c.advance(1);
    assert_eq!(names(&third), ["f#3@w"]);
    assert_eq!(third[0].at, t2 + 2000);

    // Retries exhausted.
    assert!(c.fail(&third[0], "flaky 3", true));
    assert!(c.advance(3_600_000).is_empty());
    let f = c.task(&run, "f", -1);
    assert_eq!(task_state(&f), pb::TaskState::Failed);
    assert_eq!(f.attempt, 3);
    assert_eq!(f.error, "flaky 3");
    let numbers: Vec<u32> = f.attempts.iter().map(|a| a.number).collect();
    assert_eq!(numbers, [1, 2, 3]);
    let errors: Vec<&str> = f.attempts.iter().map(|a| a.error.as_str()).collect();
    assert_eq!(errors, ["flaky 1", "flaky 2", "flaky 3"]);

    assert_eq!(only(&c.assigns, "g").len(), 1, "g is never retried");
    assert_eq!(run_state(&c.run(&run)), pb::RunState::Failed);
}

#[test]
fn a_timed_out_attempt_is_cancelled_on_its_worker_and_retried_then_failed() {
    let mut c = VirtualCluster::new();
    c.register(
        r#"
name: slow
tasks:
  - name: s
    builtin: sleep
    timeout_s: 1
    retries: {count: 1}
"#,
    );
    c.connect("w", &[], 2, 0);
    let run = c.start("slow", json!({}));
    let first = c.step();
    assert_eq!(names(&first), ["s#1@w"]);
    assert_eq!(first[0].timeout_ms, 1000);
    c.started(&first[0]);

    assert!(c.advance(999).is_empty());
    assert!(c.cancels().is_empty(), "not timed out yet");

    // At +1000 ms: attempt 1 is cancelled on its worker and retried at once (no delay).
    let second = c.advance(1);
    let cancels = c.cancels();
    assert_eq!(cancels.len(), 1);
    assert_eq!(cancels[0].worker, "w");
    assert_eq!(cancels[0].session, first[0].session);
    assert_eq!(cancels[0].key, first[0].key);
    assert!(cancels[0].reason.contains("timed out"));
    assert_eq!(names(&second), ["s#2@w"]);
    let s = c.task(&run, "s", -1);
    assert!(
        s.attempts[0].error.contains("timed out"),
        "{:?}",
        s.attempts
    );

    // The worker stops attempt 1 and reports it: too late to count.
    assert!(!c.fail(&first[0], "cancelled", false));
    assert_eq!(task_state(&c.task(&run, "s", -1)), pb::TaskState::Assigned);

    // Attempt 2 times out too, with no retry left.
    assert!(c.advance(1000).is_empty());
    let cancels = c.cancels();
    assert_eq!(cancels.len(), 2);
    assert_eq!(cancels[1].key, second[0].key);
    let s = c.task(&run, "s", -1);
    assert_eq!(task_state(&s), pb::TaskState::Failed);
    assert!(s.error.contains("timed out"), "{}", s.error);
    let r = c.run(&run);
    assert_eq!(run_state(&r), pb::RunState::Failed);
    assert!(r.error.contains("timed out"), "{}", r.error);
}

// ---------------------------------------------------------------------------------------------
// Cancellation
// ---------------------------------------------------------------------------------------------

#[test]
fn cancelling_a_run_cancels_running_attempts_and_assigns_nothing_more() {
    let mut c = VirtualCluster::new();
    c.register(
        r#"
name: long
tasks:
  - name: a
    builtin: sleep
    inputs: {x: [1, 2, 3]}
    map: [x]
  - name: b
    builtin: echo
    inputs: {xs: {result: a}}
"#,
    );
    c.connect("w", &[], 2, 0);
    let run = c.start("long", json!({}));
    let running = c.step();
    assert_eq!(running.len(), 2, "a third waits for a slot");

    c.advance(10);
    c.cancel(&run);
    let cancels = c.cancels();
    let mut cancelled: Vec<AttemptKey> = cancels.iter().map(|x| x.key.clone()).collect();
    cancelled.sort_by_key(|k| k.map_index);
    let mut expected: Vec<AttemptKey> = running.iter().map(|a| a.key.clone()).collect();
    expected.sort_by_key(|k| k.map_index);
    assert_eq!(cancelled, expected, "each running attempt is cancelled");
    assert!(cancels
        .iter()
        .all(|x| x.worker == "w" && x.reason == "run cancelled"));
    assert_eq!(run_state(&c.run(&run)), pb::RunState::Cancelled);

    // Cancelling again changes nothing.
    c.cancel(&run);
    assert_eq!(c.cancels().len(), 2);

    // The attempts end late: not committed; the freed slots take nothing.
    assert!(!c.succeed(&running[0]));
    assert!(c.step().is_empty());
    assert!(!c.fail(&running[1], "cancelled", false));
    assert!(c.advance(3_600_000).is_empty());
    assert_eq!(c.assigns.len(), 2);

    for t in c.engine.task_runs(&run, false).unwrap() {
        assert_eq!(task_state(&t), pb::TaskState::Cancelled, "{}", t.task);
    }
    assert_eq!(run_state(&c.run(&run)), pb::RunState::Cancelled);
    let w = c.engine.workers();
    assert_eq!(
        w[0].free.as_ref().unwrap().slots,
        2,
        "the slots are released"
    );
}

// ---------------------------------------------------------------------------------------------
// Unrunnable tasks
// ---------------------------------------------------------------------------------------------

#[test]
fn a_task_no_worker_can_run_waits_with_a_reason_then_fails() {
    let mut c = VirtualCluster::new();
    c.register(
        r#"
name: accel
tasks:
  - name: prep1
    builtin: noop
  - name: prep2
    builtin: noop
  - name: fit
    builtin: noop
    labels: [gpu]
  - name: convert
    builtin: noop
    labels: [tpu]
"#,
    );
    c.connect("cpu", &[], 1, 0);
    let run = c.start("accel", json!({}));
    let first = c.step();
    assert_eq!(
        names(&first),
        ["prep1#1@cpu"],
        "prep2 waits for the busy worker"
    );

    let r = c.run(&run);
    assert!(
        r.waiting_reason.contains("gpu"),
        "the run says why it waits: {:?}",
        r.waiting_reason
    );
    let fit = c.task(&run, "fit", -1);
    assert_eq!(task_state(&fit), pb::TaskState::Ready);
    assert!(
        fit.waiting_reason.contains("gpu"),
        "{:?}",
        fit.waiting_reason
    );
    assert!(c.task(&run, "convert", -1).waiting_reason.contains("tpu"));
    assert_eq!(c.task(&run, "prep2", -1).waiting_reason, "");

    // A worker that can run `convert` comes later: it gets it.
    c.advance(5_000);
    c.connect("tpu-box", &["tpu"], 2, 0);
    let new = c.step();
    let convert = one(&new, "convert").clone();
    assert_eq!(convert.worker, "tpu-box");
    assert_eq!(c.task(&run, "convert", -1).waiting_reason, "");
    c.succeed(&convert);

    // `fit` fails once it has waited the unrunnable timeout.
    c.now = T0 + UNRUNNABLE_MS - 1;
    c.step();
    assert_eq!(task_state(&c.task(&run, "fit", -1)), pb::TaskState::Ready);
    c.advance(1);
    let fit = c.task(&run, "fit", -1);
    assert_eq!(task_state(&fit), pb::TaskState::Failed);
    assert!(
        fit.error.contains("unrunnable") && fit.error.contains("gpu"),
        "{}",
        fit.error
    );

    c.run_to_end();
    let r = c.run(&run);
    assert_eq!(run_state(&r), pb::RunState::Failed);
    assert!(
        r.error.contains("`fit`") && r.error.contains("gpu"),
        "{}",
        r.error
    );
    assert!(c.assigns.iter().all(|a| a.task() != "fit"));
    assert_eq!(
        task_state(&c.task(&run, "convert", -1)),
        pb::TaskState::Completed
    );
}

#[test]
fn the_unrunnable_timeout_counts_from_when_each_task_became_ready() {
    let mut c = VirtualCluster::new();
    c.register(
        r#"
name: late-gpu
tasks:
  - name: early
    builtin: noop
    labels: [gpu]
  - name: pre
    builtin: noop
  - name: late
    builtin: noop
    labels: [gpu]
    after: [pre]
"#,
    );
    c.connect("cpu", &[], 1, 0);
    let run = c.start("late-gpu", json!({}));
    let pre = c.step();
    assert_eq!(names(&pre), ["pre#1@cpu"]);
    c.advance(15_000);
    c.succeed(&pre[0]);
    c.step();
    assert_eq!(task_state(&c.task(&run, "late", -1)), pb::TaskState::Ready);

    // `early` has waited long enough; `late` (ready 15 s later) has not.
    c.now = T0 + UNRUNNABLE_MS;
    c.step();
    assert_eq!(
        task_state(&c.task(&run, "early", -1)),
        pb::TaskState::Failed
    );
    assert_eq!(task_state(&c.task(&run, "late", -1)), pb::TaskState::Ready);

    c.now = T0 + 15_000 + UNRUNNABLE_MS - 1;
    c.step();
    assert_eq!(task_state(&c.task(&run, "late", -1)), pb::TaskState::Ready);
    c.advance(1);
    let late = c.task(&run, "late", -1);
    assert_eq!(task_state(&late), pb::TaskState::Failed);
    assert!(late.error.contains("gpu"), "{}", late.error);
    assert_eq!(run_state(&c.run(&run)), pb::RunState::Failed);
}

// ---------------------------------------------------------------------------------------------
// Stale results, lost workers
// ---------------------------------------------------------------------------------------------

const ONCE: &str = r#"
name: once
tasks:
  - name: t
    builtin: noop
  - name: d
    builtin: echo
    inputs: {v: {result: t}}
"#;

#[test]
fn a_stale_or_duplicate_finished_is_not_committed() {
    let mut c = VirtualCluster::new();
    c.register(ONCE);
    c.behave("t", |a| json!({"attempt": a.attempt(), "worker": a.worker}));
    c.connect("a", &[], 1, 0);
    let run = c.start("once", json!({}));
    let t1 = c.step();
    assert_eq!(names(&t1), ["t#1@a"]);
    c.connect("b", &[], 1, 0);

    // `a` drops off; after its lease, attempt 2 goes to `b`.
    c.disconnect("a");
    let t2 = c.advance(LEASE_MS);
    assert_eq!(names(&t2), ["t#2@b"]);

    // `a` comes back still holding attempt 1: the scheduler tells it to stop.
    let welcome = c.reconnect("a", std::slice::from_ref(&t1[0].key));
    let unknown: Vec<AttemptKey> = welcome.unknown.iter().map(AttemptKey::from).collect();
    assert_eq!(unknown, [t1[0].key.clone()]);
    // Its result arrives anyway: refused, and attempt 2 goes on.
    assert!(!c.succeed(&t1[0]));
    let t = c.task(&run, "t", -1);
    assert_eq!(task_state(&t), pb::TaskState::Assigned);
    assert_eq!((t.attempt, t.worker.as_str()), (2, "b"));
    assert!(t.result.is_none());
    assert!(c.step().is_empty());

    assert!(c.succeed(&t2[0]));
    let d = c.step();
    assert_eq!(attempts(&d), ["d#1"]);
    let committed = json!({"attempt": 2, "worker": "b"});
    assert_eq!(d[0].inputs, json!({"v": committed}));

    // A duplicate of the committed attempt, and the stale one again: both refused.
    assert!(!c.succeed_with(&t2[0], json!("a different value")));
    assert!(!c.succeed(&t1[0]));
    assert!(c.step().is_empty());

    let t = c.task(&run, "t", -1);
    assert_eq!(task_state(&t), pb::TaskState::Completed);
    assert_eq!(value_of(&t), committed);
    assert!(t.result.unwrap().uri.contains("attempt-2"));
    let key = super::keys::task_run(&run, "t", -1);
    let completions = c
        .ops
        .iter()
        .filter(|op| match op {
            Op::Put { key: k, value } if *k == key => {
                let rec: super::TaskRunRecord = serde_json::from_slice(value).unwrap();
                rec.state == baton_common::state::TaskState::Completed
            }
            _ => false,
        })
        .count();
    assert_eq!(completions, 1, "exactly one Completed record");

    c.succeed(&d[0]);
    assert_eq!(run_state(&c.run(&run)), pb::RunState::Completed);
    assert_eq!(only(&c.assigns, "d").len(), 1);
}

#[test]
fn a_lost_workers_attempts_are_redispatched_only_after_its_lease() {
    let mut c = VirtualCluster::new();
    c.register(ONCE);
    c.connect("a", &[], 4, 0);
    let run = c.start("once", json!({}));
    let t1 = c.step();
    assert_eq!(names(&t1), ["t#1@a"]);
    c.connect("b", &[], 4, 0);

    c.advance(1_000);
    c.heartbeat("a");
    c.disconnect("a");
    let lost_at = c.now;
    assert!(
        c.advance(LEASE_MS - 1).is_empty(),
        "not before the lease lapses"
    );
    let t = c.task(&run, "t", -1);
    assert_eq!((t.attempt, t.worker.as_str()), (1, "a"));

    let t2 = c.advance(1);
    assert_eq!(names(&t2), ["t#2@b"]);
    assert_eq!(t2[0].at, lost_at + LEASE_MS);
    let t = c.task(&run, "t", -1);
    assert_eq!(t.attempts.len(), 2);
    assert!(t.attempts[0].error.contains("lost"), "{:?}", t.attempts[0]);
    assert_eq!(t.attempts[1].worker, "b");

    c.run_to_end();
    assert_eq!(run_state(&c.run(&run)), pb::RunState::Completed);
}

// ---------------------------------------------------------------------------------------------
// Recovery
// ---------------------------------------------------------------------------------------------

#[test]
fn a_restarted_engine_resumes_runs_adopts_running_attempts_and_redispatches_orphans() {
    let mut c = VirtualCluster::new();
    c.register(
        r#"
name: resumable
tasks:
  - name: gen
    builtin: range
    inputs: {n: 3}
  - name: sq
    builtin: echo
    inputs: {x: {result: gen}}
    map: [x]
  - name: total
    builtin: sum
    inputs: {xs: {result: sq}}
  - name: side
    builtin: sleep
    labels: [special]
"#,
    );
    c.behave("sq", |a| json!(a.inputs["x"].as_i64().unwrap().pow(2)));
    c.connect("w", &[], 4, 0);
    let run = c.start("resumable", json!({}));
    let gen = c.step();
    assert_eq!(names(&gen), ["gen#1@w"]);
    c.succeed(&gen[0]);
    let mut sq = c.step();
    sq.sort_by_key(|a| a.index());
    assert_eq!(names(&sq), ["sq[0]#1@w", "sq[1]#1@w", "sq[2]#1@w"]);
    c.connect("w2", &["special"], 4, 0);
    let side = c.step();
    assert_eq!(names(&side), ["side#1@w2"]);
    c.succeed(&sq[0]);
    c.succeed(&sq[1]);
    c.started(&sq[2]);
    assert!(c.step().is_empty());

    // The scheduler restarts.
    c.advance(100);
    c.restart();
    let before = c.assigns.len();
    assert_eq!(run_state(&c.run(&run)), pb::RunState::Running);
    assert_eq!(
        task_state(&c.task(&run, "gen", -1)),
        pb::TaskState::Completed
    );
    assert_eq!(task_state(&c.task(&run, "sq", 1)), pb::TaskState::Completed);
    assert!(c.step().is_empty());

    // A fresh worker able to run `side` must not get it while `w2` may still come back.
    c.connect("w3", &["special"], 4, 0);
    assert!(c.step().is_empty());

    // `w` comes back with its attempt: adopted, not assigned again.
    let welcome = c.reconnect("w", std::slice::from_ref(&sq[2].key));
    assert!(welcome.unknown.is_empty());
    assert!(c.step().is_empty());
    let sq2 = c.task(&run, "sq", 2);
    assert_eq!(task_state(&sq2), pb::TaskState::Running);
    assert_eq!((sq2.attempt, sq2.worker.as_str()), (1, "w"));

    // `w2` does not come back: after the grace period `side` runs again, as attempt 2.
    c.now = T0 + 100 + GRACE_MS - 1;
    assert!(c.step().is_empty());
    let side2 = c.advance(1);
    assert_eq!(names(&side2), ["side#2@w3"]);
    assert_eq!(side2[0].epoch, 2);

    // The adopted attempt's result is committed and the run finishes with the old results.
    assert!(c.succeed(&sq[2]));
    let total = c.step();
    assert_eq!(attempts(&total), ["total#1"]);
    assert_eq!(total[0].inputs, json!({"xs": [1, 4, 9]}));
    c.succeed(&total[0]);
    c.succeed(&side2[0]);
    assert_eq!(run_state(&c.run(&run)), pb::RunState::Completed);
    assert_eq!(value_of(&c.task(&run, "total", -1)), json!(14));

    let after = attempts(&c.assigns[before..]);
    assert_eq!(after, ["side#2", "total#1"], "nothing completed ran again");
}

#[test]
fn an_attempt_running_across_a_restart_still_times_out() {
    let mut c = VirtualCluster::new();
    c.register(
        r#"
name: slow-resume
tasks:
  - name: s
    builtin: sleep
    timeout_s: 2
"#,
    );
    c.connect("w", &[], 2, 0);
    let run = c.start("slow-resume", json!({}));
    let s1 = c.step();
    assert_eq!(names(&s1), ["s#1@w"]);
    c.started(&s1[0]);

    c.advance(500);
    c.restart();
    let welcome = c.reconnect("w", std::slice::from_ref(&s1[0].key));
    assert!(welcome.unknown.is_empty(), "the attempt is adopted");
    let session = c.workers["w"].session;

    // The deadline is still two seconds after the attempt started.
    c.now = T0 + 1_999;
    assert!(c.step().is_empty());
    assert!(c.cancels().is_empty());
    c.advance(1);
    let cancels = c.cancels();
    assert_eq!(cancels.len(), 1, "the adopted attempt times out");
    assert_eq!(cancels[0].key, s1[0].key);
    assert_eq!(
        (cancels[0].worker.as_str(), cancels[0].session),
        ("w", session)
    );
    let s = c.task(&run, "s", -1);
    assert_eq!(task_state(&s), pb::TaskState::Failed);
    assert!(s.error.contains("timed out"), "{}", s.error);
    assert!(!c.fail(&s1[0], "cancelled", false));
    assert_eq!(run_state(&c.run(&run)), pb::RunState::Failed);
}

#[test]
fn finished_runs_and_idempotency_keys_survive_a_restart() {
    let mut c = VirtualCluster::new();
    c.register(SQUARES);
    c.connect("w", &[], 8, 0);
    c.behave("gen", |_| json!([1, 2]));
    let mut req = new_run("squares", json!({}));
    req.idempotency_key = "nightly".into();
    let (run, created) = c.try_start(req.clone()).unwrap();
    assert!(created);
    c.run_to_end();
    assert_eq!(run_state(&c.run(&run)), pb::RunState::Completed);
    let before: Vec<(String, i64, i32, String)> = c
        .engine
        .task_runs(&run, true)
        .unwrap()
        .into_iter()
        .map(|t| (t.task, t.map_index, t.state, t.value))
        .collect();

    c.advance(1_000);
    c.restart();
    let r = c.run(&run);
    assert_eq!(run_state(&r), pb::RunState::Completed);
    assert_eq!((r.tasks_total, r.tasks_done), (4, 4));
    let after: Vec<(String, i64, i32, String)> = c
        .engine
        .task_runs(&run, true)
        .unwrap()
        .into_iter()
        .map(|t| (t.task, t.map_index, t.state, t.value))
        .collect();
    assert_eq!(after, before);

    let (again, created) = c.try_start(req).unwrap();
    assert_eq!((again.as_str(), created), (run.as_str(), false));
    c.reconnect("w", &[]);
    assert!(c.advance(60_000).is_empty(), "a finished run runs nothing");
}

// ---------------------------------------------------------------------------------------------
// Requests: parameters, unknown flows, idempotency
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// Views
// ---------------------------------------------------------------------------------------------

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
