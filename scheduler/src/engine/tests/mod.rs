//! Tests of the DAG engine against virtual workers and a virtual clock: no I/O, no sleeping.
//!
//! [`VirtualCluster`] plays the host (it commits the engine's ops to an in-memory store and
//! delivers its messages) and the workers (each holds the attempts assigned to it until the
//! test finishes them, computing results from the assignment's inputs).

use super::{
    Engine, EngineConfig, EngineError, NewRun, Outcome, Outgoing, Recovered, TaskRunRecord,
};
use crate::engine::tables;
use crate::store::Op;
use baton_common::flow::{parse_flow, ResourceSpec};
use baton_common::ids::{AttemptKey, WorkerId};
use baton_common::result_store::{checksum, ResultRef};
use baton_proto as pb;
use baton_proto::scheduler_message::Msg;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};

mod ahead;
mod caching;
mod dataflow;
mod dispatch;
mod failures;
mod gpus;
mod limits;
mod memory;
mod requests;
mod schedules;
mod subflows;
mod torn;
mod workers;

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
        ..EngineConfig::default()
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
    /// The GPUs pinned to it (device indices).
    gpus: Vec<u32>,
    /// The chain it may run ahead.
    successors: Vec<pb::Successor>,
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
    /// Its GPUs, when given as devices.
    devices: Vec<super::Gpu>,
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
    /// The values of every result reported, by location (the result store).
    values: HashMap<String, Value>,
    /// Whether a commit was torn (records may lag their pointers).
    torn: bool,
}

impl VirtualCluster {
    fn new() -> Self {
        Self::with_config(config())
    }

    fn with_config(cfg: EngineConfig) -> Self {
        VirtualCluster {
            engine: Engine::new(cfg, 1),
            epoch: 1,
            now: T0,
            next_session: 1,
            store: BTreeMap::new(),
            ops: Vec::new(),
            sent: Vec::new(),
            assigns: Vec::new(),
            workers: BTreeMap::new(),
            behaviours: HashMap::new(),
            values: HashMap::new(),
            torn: false,
        }
    }

    // --- flows and runs ---

    fn register(&mut self, yaml: &str) -> (u32, bool) {
        self.register_with(yaml, false)
    }

    /// Registers a flow, switching its schedule on with `schedule_active`.
    fn register_with(&mut self, yaml: &str, schedule_active: bool) -> (u32, bool) {
        let spec = parse_flow(yaml).expect("a valid flow file");
        let out = self.engine.register_flow(spec, schedule_active, self.now);
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
        self.connect_with_gpus(id, labels, slots, gpus, Vec::new())
    }

    /// A worker offering GPU devices (`gpus` counts them and any anonymous ones).
    fn connect_with_gpus(
        &mut self,
        id: &str,
        labels: &[&str],
        slots: u32,
        gpus: u32,
        devices: Vec<super::Gpu>,
    ) -> u64 {
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
                    gpu_memory_mb: 0,
                },
                devices,
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
            gpus_held: running
                .iter()
                .filter_map(|k| {
                    let a = w.running.iter().find(|a| &a.key == k)?;
                    Some((k.clone(), a.gpus.clone()))
                })
                .collect(),
            running,
            address: format!("vw://{id}"),
            devices: w.devices.clone(),
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
                Op::DeletePrefix { prefix, keys } => delete_prefix(&mut self.store, prefix, keys),
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
                        gpus: a
                            .resources
                            .iter()
                            .flat_map(|r| r.devices.iter().map(|d| d.index))
                            .collect(),
                        successors: a.successors.clone(),
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
        self.engine.task_started(&a.key, self.now, 0);
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
        self.values.insert(result.uri.clone(), value.clone());
        self.finish(a, Outcome::Success { result, value })
    }

    /// The worker reports success with `value` and the task runs it ran ahead.
    fn succeed_ahead(&mut self, a: &Assignment, value: Value, ahead: Vec<pb::RanAhead>) -> bool {
        let session = self.workers[&a.worker].session;
        self.engine
            .ran_ahead(&WorkerId(a.worker.clone()), session, ahead);
        self.succeed_with(a, value)
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

    /// Steps and completes the outstanding attempts of `task` until none is left.
    fn run_to_end_of(&mut self, task: &str) {
        for _ in 0..10_000 {
            self.step();
            let next = self
                .workers
                .values()
                .filter(|w| w.connected)
                .flat_map(|w| w.running.iter())
                .find(|a| a.task() == task)
                .cloned();
            match next {
                Some(a) => {
                    self.succeed(&a);
                }
                None => return,
            }
        }
        panic!("{task} never settled");
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
        // The host's own reader: every table through `tables::Rows`.
        let mut rows = tables::Rows::default();
        for (key, value) in &self.store {
            rows.add(key, value)
                .unwrap_or_else(|e| panic!("a readable state store: {e}"));
        }
        if !self.torn {
            // Without a torn commit, a pointer matches its task run's record.
            for ((run, task, index), pointer) in rows.pointers() {
                let key = tables::task_runs::key(run, task, *index);
                let tr: TaskRunRecord =
                    serde_json::from_slice(&self.store[&key]).expect("a task run record");
                assert_eq!(tr.result.as_ref(), Some(pointer), "pointer of {key}");
            }
        }
        let mut rec = rows.finish();
        // The host reads the values of results whose records do not hold them; here they
        // are the values the virtual workers reported.
        for (_, _, _, r) in &mut rec.task_runs {
            if let (Some(res), None) = (&r.result, &r.value) {
                r.value = self.values.get(&res.uri).cloned();
            }
        }
        rec
    }

    /// Like [`Self::drain`], but the commit is torn: only the first `keep(n)` of its `n`
    /// operations reach the store, and nothing is sent (the host steps down when a commit
    /// fails). Returns `n`.
    fn drain_torn(&mut self, keep: &dyn Fn(usize) -> usize) -> usize {
        self.torn = true;
        let fx = self.engine.take_effects();
        let total = fx.ops.len();
        for op in fx.ops.into_iter().take(keep(total)) {
            match &op {
                Op::Put { key, value } | Op::Create { key, value } => {
                    self.store.insert(key.clone(), value.clone());
                }
                Op::Delete { key } => {
                    self.store.remove(key);
                }
                Op::DeletePrefix { prefix, keys } => delete_prefix(&mut self.store, prefix, keys),
            }
            self.ops.push(op);
        }
        total
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

/// gen → sq (mapped over gen's list) → total.
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

/// A range delete as etcd does it; the keys the engine named must all lie under the prefix.
fn delete_prefix(store: &mut BTreeMap<String, Vec<u8>>, prefix: &str, keys: &[String]) {
    assert!(keys.iter().all(|k| k.starts_with(prefix)), "{prefix}");
    store.retain(|k, _| !k.starts_with(prefix));
}
