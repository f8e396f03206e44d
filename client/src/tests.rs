//! The client against in-process fake scheduler replicas on loopback, speaking the real
//! gRPC protocol: a shared fake "cluster" says which replica leads; the others refuse as a
//! real follower does (`unavailable` naming the leader in `baton-leader` metadata).

use super::*;
use pb::flow_service_server::{FlowService, FlowServiceServer};
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

/// Who leads the fake cluster, and what each replica was asked.
#[derive(Default)]
struct World {
    leader: String,
    epoch: u64,
    /// CreateRun calls per replica.
    creates: HashMap<String, usize>,
    /// Refusals still to give, per replica and method, as a leader stepping down does
    /// (`unavailable`, no leader named), after which the method succeeds.
    stepping_down: HashMap<(String, &'static str), usize>,
    /// When set, a replica that steps down hands leadership to this one.
    successor: Option<(String, u64)>,
    /// Scripts of WatchRun streams, per replica, one per call.
    watches: HashMap<String, VecDeque<Vec<Result<pb::RunEvent, Status>>>>,
    /// The replicas, by the address they are reached at.
    members: Vec<String>,
    /// Addresses replicas advertise, when not the one they are reached at (a proxy).
    advertised: HashMap<String, String>,
    /// Concurrency limits by tag, as the leader keeps them.
    limits: BTreeMap<String, u32>,
}

impl World {
    fn advertised(&self, addr: &str) -> String {
        self.advertised
            .get(addr)
            .cloned()
            .unwrap_or_else(|| addr.to_string())
    }
}

#[derive(Clone)]
struct Replica {
    addr: String,
    /// Whether GetLeader names the leader (false: a replica that does not know yet).
    reports_leader: bool,
    world: Arc<Mutex<World>>,
}

impl Replica {
    /// Refuses unless this replica leads (or steps down now); else the replica's address.
    fn lead(&self, method: &'static str) -> Result<String, Status> {
        let mut w = self.world.lock().unwrap();
        if let Some(n) = w.stepping_down.get_mut(&(self.addr.clone(), method)) {
            if *n > 0 {
                *n -= 1;
                if let Some((next, epoch)) = w.successor.take() {
                    w.leader = next;
                    w.epoch = epoch;
                }
                return Err(Status::unavailable("stepping down"));
            }
        }
        if w.leader == self.addr {
            return Ok(self.addr.clone());
        }
        let leader = w.advertised(&w.leader);
        let mut status = Status::unavailable(format!("not the leader; the leader is at {leader}"));
        if !w.leader.is_empty() {
            status
                .metadata_mut()
                .insert(cluster::LEADER_METADATA, leader.parse().unwrap());
        }
        Err(status)
    }

    fn run(&self, id: &str, by: String) -> pb::FlowRun {
        pb::FlowRun {
            id: id.to_string(),
            flow: by,
            state: pb::RunState::Running as i32,
            ..Default::default()
        }
    }
}

type EventStream = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<pb::RunEvent, Status>> + Send + 'static>,
>;

#[tonic::async_trait]
impl FlowService for Replica {
    type WatchRunStream = EventStream;
    type ReadResultStream =
        std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::ResultChunk, Status>> + Send>>;

    async fn read_result(
        &self,
        _r: Request<pb::GetResultRequest>,
    ) -> Result<Response<Self::ReadResultStream>, Status> {
        Err(Status::unimplemented("not scripted"))
    }

    async fn register_flow(
        &self,
        r: Request<pb::RegisterFlowRequest>,
    ) -> Result<Response<pb::RegisterFlowResponse>, Status> {
        let by = self.lead("register_flow")?;
        let active = r.into_inner().schedule_active;
        Ok(Response::new(pb::RegisterFlowResponse {
            flow: by,
            schedule: active.then(|| pb::Schedule {
                cron: "* * * * *".into(),
                active,
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn create_run(
        &self,
        r: Request<pb::CreateRunRequest>,
    ) -> Result<Response<pb::CreateRunResponse>, Status> {
        *self
            .world
            .lock()
            .unwrap()
            .creates
            .entry(self.addr.clone())
            .or_default() += 1;
        let by = self.lead("create_run")?;
        let key = r.into_inner().idempotency_key;
        Ok(Response::new(pb::CreateRunResponse {
            run: Some(self.run(&format!("run-{key}"), by)),
            created: true,
        }))
    }

    async fn get_run(
        &self,
        r: Request<pb::GetRunRequest>,
    ) -> Result<Response<pb::GetRunResponse>, Status> {
        let by = self.lead("get_run")?;
        Ok(Response::new(pb::GetRunResponse {
            run: Some(self.run(&r.into_inner().run_id, by)),
        }))
    }

    async fn list_runs(
        &self,
        _r: Request<pb::ListRunsRequest>,
    ) -> Result<Response<pb::ListRunsResponse>, Status> {
        self.lead("list_runs")?;
        Ok(Response::new(pb::ListRunsResponse::default()))
    }

    async fn watch_run(
        &self,
        _r: Request<pb::WatchRunRequest>,
    ) -> Result<Response<Self::WatchRunStream>, Status> {
        self.lead("watch_run")?;
        let script = self
            .world
            .lock()
            .unwrap()
            .watches
            .get_mut(&self.addr)
            .and_then(VecDeque::pop_front)
            .unwrap_or_default();
        Ok(Response::new(Box::pin(tokio_stream::iter(script))))
    }

    async fn list_task_runs(
        &self,
        _r: Request<pb::ListTaskRunsRequest>,
    ) -> Result<Response<pb::ListTaskRunsResponse>, Status> {
        self.lead("list_task_runs")?;
        Ok(Response::new(pb::ListTaskRunsResponse::default()))
    }

    async fn cancel_run(
        &self,
        r: Request<pb::CancelRunRequest>,
    ) -> Result<Response<pb::CancelRunResponse>, Status> {
        let by = self.lead("cancel_run")?;
        Ok(Response::new(pb::CancelRunResponse {
            run: Some(self.run(&r.into_inner().run_id, by)),
        }))
    }

    async fn list_workers(
        &self,
        _r: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::ListWorkersResponse>, Status> {
        self.lead("list_workers")?;
        Ok(Response::new(pb::ListWorkersResponse::default()))
    }

    async fn get_result(
        &self,
        _r: Request<pb::GetResultRequest>,
    ) -> Result<Response<pb::GetResultResponse>, Status> {
        Ok(Response::new(pb::GetResultResponse {
            data: self.addr.clone().into_bytes(),
            content_type: "text/plain".into(),
        }))
    }

    async fn get_leader(
        &self,
        _r: Request<pb::GetLeaderRequest>,
    ) -> Result<Response<pb::GetLeaderResponse>, Status> {
        let w = self.world.lock().unwrap();
        if !self.reports_leader {
            return Ok(Response::new(pb::GetLeaderResponse {
                answered_by: self.addr.clone(),
                ..Default::default()
            }));
        }
        Ok(Response::new(pb::GetLeaderResponse {
            leader_address: if w.leader.is_empty() {
                String::new()
            } else {
                w.advertised(&w.leader)
            },
            epoch: w.epoch,
            answered_by: self.addr.clone(),
            replicas: w
                .members
                .iter()
                .map(|m| pb::Replica {
                    id: m.clone(),
                    address: w.advertised(m),
                    leader: *m == w.leader,
                })
                .collect(),
        }))
    }

    // Not used by these tests.
    async fn list_flows(
        &self,
        _r: Request<pb::ListFlowsRequest>,
    ) -> Result<Response<pb::ListFlowsResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn get_flow(
        &self,
        _r: Request<pb::GetFlowRequest>,
    ) -> Result<Response<pb::GetFlowResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    type GetLogsStream =
        std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::LogEntry, Status>> + Send>>;

    async fn get_logs(
        &self,
        _r: Request<pb::GetLogsRequest>,
    ) -> Result<Response<Self::GetLogsStream>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn set_schedule(
        &self,
        r: Request<pb::SetScheduleRequest>,
    ) -> Result<Response<pb::SetScheduleResponse>, Status> {
        let by = self.lead("set_schedule")?;
        let r = r.into_inner();
        Ok(Response::new(pb::SetScheduleResponse {
            project: r.project,
            flow: r.flow,
            schedule: Some(pb::Schedule {
                cron: "* * * * *".into(),
                timezone: by,
                active: r.active,
                ..Default::default()
            }),
        }))
    }

    async fn set_concurrency_limit(
        &self,
        r: Request<pb::SetConcurrencyLimitRequest>,
    ) -> Result<Response<pb::ConcurrencyLimit>, Status> {
        self.lead("set_concurrency_limit")?;
        let r = r.into_inner();
        let mut w = self.world.lock().unwrap();
        w.limits.insert(r.tag.clone(), r.limit);
        Ok(Response::new(pb::ConcurrencyLimit {
            tag: r.tag,
            limit: r.limit,
            in_use: 0,
        }))
    }

    async fn delete_concurrency_limit(
        &self,
        r: Request<pb::DeleteConcurrencyLimitRequest>,
    ) -> Result<Response<pb::DeleteConcurrencyLimitResponse>, Status> {
        self.lead("delete_concurrency_limit")?;
        let tag = r.into_inner().tag;
        let deleted = self.world.lock().unwrap().limits.remove(&tag).is_some();
        Ok(Response::new(pb::DeleteConcurrencyLimitResponse {
            deleted,
        }))
    }

    async fn list_concurrency_limits(
        &self,
        _r: Request<pb::ListConcurrencyLimitsRequest>,
    ) -> Result<Response<pb::ListConcurrencyLimitsResponse>, Status> {
        self.lead("list_concurrency_limits")?;
        let limits = self
            .world
            .lock()
            .unwrap()
            .limits
            .iter()
            .map(|(tag, limit)| pb::ConcurrencyLimit {
                tag: tag.clone(),
                limit: *limit,
                in_use: 0,
            })
            .collect();
        Ok(Response::new(pb::ListConcurrencyLimitsResponse { limits }))
    }

    async fn collect_garbage(
        &self,
        _r: Request<pb::CollectGarbageRequest>,
    ) -> Result<Response<pb::CollectGarbageResponse>, Status> {
        Err(Status::unimplemented("not scripted"))
    }
}

/// Starts a replica of `world`; returns its address.
async fn replica(world: &Arc<Mutex<World>>, reports_leader: bool) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    world.lock().unwrap().members.push(addr.clone());
    let svc = Replica {
        addr: addr.clone(),
        reports_leader,
        world: world.clone(),
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(FlowServiceServer::new(svc))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    addr
}

/// An address nothing listens on.
async fn dead_address() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    addr
}

fn world() -> Arc<Mutex<World>> {
    Arc::new(Mutex::new(World::default()))
}

fn lead(world: &Arc<Mutex<World>>, addr: &str, epoch: u64) {
    let mut w = world.lock().unwrap();
    w.leader = addr.to_string();
    w.epoch = epoch;
}

fn creates(world: &Arc<Mutex<World>>, addr: &str) -> usize {
    world
        .lock()
        .unwrap()
        .creates
        .get(addr)
        .copied()
        .unwrap_or(0)
}

#[tokio::test]
async fn reaches_the_leader_past_a_dead_replica_and_a_follower() {
    let w = world();
    let dead = dead_address().await;
    let follower = replica(&w, true).await;
    let leader = replica(&w, true).await;
    lead(&w, &leader, 7);
    let c = Client::connect_any(&[dead.clone(), follower.clone(), leader.clone()])
        .await
        .unwrap();
    assert_eq!(c.current_leader().as_deref(), Some(leader.as_str()));
    assert_eq!(c.get_run("r1").await.unwrap().flow, leader);
    let report = c.leader().await.unwrap();
    assert_eq!(
        (report.leader_address.as_str(), report.epoch),
        (leader.as_str(), 7)
    );

    // The same through a comma-separated list.
    let c = Client::connect(&format!("{dead}, {follower},{leader}"))
        .await
        .unwrap();
    assert_eq!(c.replicas().len(), 3);
    assert_eq!(c.get_run("r1").await.unwrap().flow, leader);
}

#[tokio::test]
async fn schedules_and_limits_are_set_on_the_leader() {
    let w = world();
    let follower = replica(&w, false).await;
    let leader = replica(&w, true).await;
    lead(&w, &leader, 3);
    let c = Client::connect_any(std::slice::from_ref(&follower))
        .await
        .unwrap();
    let r = c.register_flow_with("flow".into(), true).await.unwrap();
    assert_eq!(r.flow, leader);
    assert_eq!(r.schedule.map(|s| s.active), Some(true));
    assert!(c
        .register_flow("flow".into())
        .await
        .unwrap()
        .schedule
        .is_none());

    let r = c.set_schedule("demo", "tick", false).await.unwrap();
    assert_eq!((r.project.as_str(), r.flow.as_str()), ("demo", "tick"));
    let s = r.schedule.unwrap();
    assert_eq!((s.timezone.as_str(), s.active), (leader.as_str(), false));

    assert_eq!(c.set_limit("gpu", 2).await.unwrap().limit, 2);
    c.set_limit("db", 5).await.unwrap();
    let tags: Vec<(String, u32)> = c
        .list_limits()
        .await
        .unwrap()
        .into_iter()
        .map(|l| (l.tag, l.limit))
        .collect();
    assert_eq!(tags, vec![("db".to_string(), 5), ("gpu".to_string(), 2)]);
    assert!(c.delete_limit("gpu").await.unwrap());
    assert!(!c.delete_limit("gpu").await.unwrap());
    assert_eq!(c.list_limits().await.unwrap().len(), 1);
}

#[tokio::test]
async fn follows_the_leader_a_follower_names_when_it_is_not_configured() {
    let w = world();
    let dead = dead_address().await;
    // The follower does not report the leader through GetLeader, only in its refusals.
    let follower = replica(&w, false).await;
    let leader = replica(&w, true).await;
    lead(&w, &leader, 1);
    let c = Client::connect_any(&[dead, follower.clone()])
        .await
        .unwrap();
    assert_eq!(c.current_leader().as_deref(), Some(follower.as_str()));
    assert_eq!(c.cancel_run("r1").await.unwrap().flow, leader);
    assert_eq!(c.current_leader().as_deref(), Some(leader.as_str()));
}

#[tokio::test]
async fn a_leader_is_dialled_where_it_answers_not_where_it_advertises() {
    let w = world();
    let a = replica(&w, true).await;
    let b = replica(&w, true).await;
    // `a` advertises an address this client cannot reach (say, a proxy of the workers').
    let unreachable = dead_address().await;
    w.lock()
        .unwrap()
        .advertised
        .insert(a.clone(), unreachable.clone());
    lead(&w, &a, 1);
    let c = Client::connect_any(&[b.clone(), a.clone()]).await.unwrap();
    assert_eq!(c.current_leader().as_deref(), Some(a.as_str()));
    assert_eq!(c.get_run("r1").await.unwrap().flow, a);
    // A refusal naming `a` by its advertised address also leads to where `a` answers.
    c.cluster.redirect(b.clone());
    assert_eq!(c.get_run("r1").await.unwrap().flow, a);
    assert_eq!(c.current_leader().as_deref(), Some(a.as_str()));
    let report = c.leader().await.unwrap();
    assert_eq!(report.leader_address, unreachable);
    assert_eq!(report.replicas.len(), 2);
}

#[tokio::test]
async fn connecting_fails_fast_when_no_replica_answers() {
    let started = Instant::now();
    let err = Client::connect_any(&[dead_address().await, dead_address().await])
        .await
        .err()
        .expect("no replica answers");
    assert!(matches!(err, ClientError::Connect { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(matches!(
        Client::connect(" , ").await.err(),
        Some(ClientError::Address(_))
    ));
}

#[tokio::test]
async fn a_call_refused_while_the_leader_moves_succeeds_on_the_new_leader() {
    let w = world();
    let a = replica(&w, true).await;
    let b = replica(&w, true).await;
    lead(&w, &a, 1);
    let c = Client::connect_any(&[a.clone(), b.clone()]).await.unwrap();
    assert_eq!(c.get_run("r1").await.unwrap().flow, a);
    {
        // `a` steps down under the next GetRun (no leader named) and `b` takes over.
        let mut w = w.lock().unwrap();
        w.stepping_down.insert((a.clone(), "get_run"), 1);
        w.successor = Some((b.clone(), 2));
    }
    assert_eq!(c.get_run("r1").await.unwrap().flow, b);
    assert_eq!(c.current_leader().as_deref(), Some(b.as_str()));

    // A run with an idempotency key is created on the new leader after a refusal too.
    {
        let mut w = w.lock().unwrap();
        w.stepping_down.insert((b.clone(), "create_run"), 1);
        w.successor = Some((a.clone(), 3));
    }
    let created = c
        .create_run(pb::CreateRunRequest {
            idempotency_key: "k1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(created.run.unwrap().flow, a);
    assert_eq!((creates(&w, &b), creates(&w, &a)), (1, 1));
}

#[tokio::test]
async fn create_run_without_a_key_is_not_retried() {
    let w = world();
    let a = replica(&w, true).await;
    let b = replica(&w, true).await;
    lead(&w, &a, 1);
    let c = Client::connect_any(&[a.clone(), b.clone()]).await.unwrap();
    {
        let mut w = w.lock().unwrap();
        w.stepping_down.insert((a.clone(), "create_run"), 1);
        w.successor = Some((b.clone(), 2));
    }
    let err = c
        .create_run(pb::CreateRunRequest::default())
        .await
        .expect_err("not retried");
    match err {
        ClientError::Status(s) => assert_eq!(s.code(), tonic::Code::Unavailable),
        other => panic!("{other}"),
    }
    assert_eq!((creates(&w, &a), creates(&w, &b)), (1, 0));

    // A follower's refusal naming the leader proves nothing was done: that one is followed.
    assert_eq!(w.lock().unwrap().leader, b);
    c.cluster.redirect(a.clone());
    let created = c.create_run(pb::CreateRunRequest::default()).await.unwrap();
    assert_eq!(created.run.unwrap().flow, b);
    assert_eq!((creates(&w, &a), creates(&w, &b)), (2, 1));
}

#[tokio::test]
async fn retries_stop_after_the_retry_budget() {
    let w = world();
    let a = replica(&w, true).await;
    lead(&w, &a, 1);
    let c = Client::connect_any(std::slice::from_ref(&a))
        .await
        .unwrap()
        .with_retry_for(Duration::from_millis(500));
    lead(&w, "", 1);
    let started = Instant::now();
    let err = c.list_runs(10).await.expect_err("no leader");
    assert!(matches!(err, ClientError::Status(ref s) if s.code() == tonic::Code::Unavailable));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(2),
        "{took:?}"
    );
    let c = c.with_retry_for(Duration::ZERO);
    let started = Instant::now();
    assert!(c.list_runs(10).await.is_err());
    assert!(started.elapsed() < Duration::from_millis(200));
}

fn event(state: pb::RunState, done: u32) -> Result<pb::RunEvent, Status> {
    Ok(pb::RunEvent {
        run: Some(pb::FlowRun {
            id: "r1".into(),
            state: state as i32,
            tasks_done: done,
            tasks_total: 3,
            ..Default::default()
        }),
        task_runs: Vec::new(),
    })
}

fn progress_of(ev: &pb::RunEvent) -> (i32, u32) {
    let r = ev.run.as_ref().unwrap();
    (r.state, r.tasks_done)
}

#[tokio::test]
async fn a_watch_resumes_on_the_new_leader_without_repeating_events() {
    use pb::RunState::*;
    let w = world();
    let a = replica(&w, true).await;
    let b = replica(&w, true).await;
    lead(&w, &a, 1);
    {
        let mut w = w.lock().unwrap();
        w.watches.entry(a.clone()).or_default().push_back(vec![
            event(Running, 0),
            event(Running, 1),
            Err(Status::unavailable("stepping down")),
        ]);
        // The new leader starts with a snapshot the client has seen, then moves on.
        w.watches
            .entry(b.clone())
            .or_default()
            .push_back(vec![event(Running, 1), event(Running, 2)]);
        // That stream ends early too; the third one shows the run finished.
        w.watches
            .entry(b.clone())
            .or_default()
            .push_back(vec![event(Running, 2), event(Completed, 3)]);
    }
    let c = Client::connect_any(&[a.clone(), b.clone()]).await.unwrap();
    let mut watch = c.watch("r1", false).await.unwrap();
    let mut seen = vec![progress_of(&watch.message().await.unwrap().unwrap())];
    seen.push(progress_of(&watch.message().await.unwrap().unwrap()));
    lead(&w, &b, 2);
    while let Some(ev) = watch.message().await.unwrap() {
        seen.push(progress_of(&ev));
    }
    let r = |s: pb::RunState, d| (s as i32, d);
    assert_eq!(
        seen,
        vec![r(Running, 0), r(Running, 1), r(Running, 2), r(Completed, 3)]
    );
    assert!(watch.message().await.unwrap().is_none());
}

#[tokio::test]
async fn a_watch_that_ends_early_is_reopened_until_the_run_is_over() {
    let w = world();
    let a = replica(&w, true).await;
    lead(&w, &a, 1);
    // The first stream ends while the run still runs (the fake's GetRun says so); the
    // second shows the end.
    w.lock()
        .unwrap()
        .watches
        .entry(a.clone())
        .or_default()
        .extend([
            vec![event(pb::RunState::Running, 0)],
            vec![event(pb::RunState::Failed, 1)],
        ]);
    let c = Client::connect(&a).await.unwrap();
    let run = c.wait("r1").await.unwrap();
    assert_eq!(run.state, pb::RunState::Failed as i32);
}
