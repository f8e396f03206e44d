//! `FlowService`: flows, runs, task runs, workers and results for clients.

use super::bounds;
use crate::actor::Command;
use crate::engine::query::{query_rows, TaskPage, TaskQuery};
use crate::engine::NewRun;
use crate::leadership::Roles;
use crate::Error;
use baton_common::flow::parse_flow;
use baton_common::result_store::ResultStore;
use baton_proto as pb;
use pb::flow_service_server::FlowService;
use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// The client-facing service.
pub struct FlowApi {
    roles: Arc<Roles>,
    pub(super) results: Arc<dyn ResultStore>,
    /// Archives read lately, newest last (finished runs never change): a run page asks
    /// for several pages of one archived run, and each would read and decode all of it.
    archives: Arc<Mutex<Archives>>,
    /// Held while a garbage collection pass runs.
    pub(super) gc_pass: tokio::sync::Mutex<()>,
}

/// Decoded archives by run id with their encoded sizes, oldest first.
type Archives = VecDeque<(String, Arc<pb::RunArchive>, usize)>;

/// Encoded bytes of the archives kept decoded, in all (a larger archive is not kept).
const ARCHIVE_BYTES_KEPT: usize = 64 << 20;

impl FlowApi {
    pub fn new(roles: Arc<Roles>, results: Arc<dyn ResultStore>) -> Self {
        FlowApi {
            roles,
            results,
            archives: Arc::default(),
            gc_pass: tokio::sync::Mutex::new(()),
        }
    }

    /// The archive of `run` if it was read lately.
    fn kept_archive(&self, run: &str) -> Option<Arc<pb::RunArchive>> {
        let kept = self.archives.lock().unwrap_or_else(|e| e.into_inner());
        kept.iter()
            .find(|(id, _, _)| id == run)
            .map(|(_, a, _)| a.clone())
    }

    /// Keeps an archive just read (`bytes` long, encoded), dropping the oldest beyond
    /// [`ARCHIVE_BYTES_KEPT`] (decoded, an archive takes a few times its encoded size).
    fn keep_archive(&self, run: &str, archive: Arc<pb::RunArchive>, bytes: usize) {
        if bytes > ARCHIVE_BYTES_KEPT {
            return;
        }
        let mut kept = self.archives.lock().unwrap_or_else(|e| e.into_inner());
        kept.retain(|(id, _, _)| id != run);
        kept.push_back((run.to_string(), archive, bytes));
        while kept.iter().map(|(_, _, b)| b).sum::<usize>() > ARCHIVE_BYTES_KEPT {
            kept.pop_front();
        }
    }

    pub(super) fn roles(&self) -> &Roles {
        &self.roles
    }
}

/// Parses a flow definition on the blocking pool, so that a large one never holds up the
/// threads that serve workers' streams and other clients.
async fn parse_off_runtime(source: String) -> Result<baton_common::flow::FlowSpec, Status> {
    tokio::task::spawn_blocking(move || parse_flow(&source))
        .await
        .map_err(|_| Status::internal("parsing the flow definition did not finish"))?
        .map_err(|e| Status::from(Error::from(e)))
}

fn parse_params(
    raw: BTreeMap<String, String>,
) -> Result<BTreeMap<String, serde_json::Value>, Status> {
    raw.into_iter()
        .map(|(k, v)| match serde_json::from_str(&v) {
            Ok(value) => Ok((k, value)),
            Err(e) => Err(Status::invalid_argument(format!(
                "parameter `{k}`: value is not valid JSON ({e}); quote strings, e.g. \"\\\"text\\\"\""
            ))),
        })
        .collect()
}

fn is_not_found(e: &Error) -> bool {
    matches!(e, Error::Engine(crate::engine::EngineError::NotFound(_)))
}

impl FlowApi {
    /// A run the leader answered about, or, when it has left memory, its summary from its
    /// archive.
    async fn run_or_archived(
        &self,
        id: &str,
        asked: Result<pb::FlowRun, Error>,
    ) -> Result<Option<pb::FlowRun>, Status> {
        match asked {
            Err(e) if is_not_found(&e) => Ok(self.archived(id, e).await?.run.clone()),
            other => Ok(Some(other?)),
        }
    }

    /// A page of a run's task runs, live or archived.
    async fn task_query(&self, run: &str, q: TaskQuery) -> Result<TaskPage, Status> {
        let asked = self
            .roles
            .leader()?
            .ask(|r| Command::TaskQuery(run.to_string(), q.clone(), r))
            .await;
        match asked {
            Err(e) if is_not_found(&e) => {
                let archive = self.archived(run, e).await?;
                Ok(query_rows(&archive.task_runs, &q))
            }
            other => Ok(other?),
        }
    }

    /// A finished run that has left the live state, from its archive; `missing` is the
    /// error to return when there is none.
    async fn archived(&self, run: &str, missing: Error) -> Result<Arc<pb::RunArchive>, Status> {
        if run.contains('/') || run.contains("..") {
            return Err(missing.into());
        }
        if let Some(a) = self.kept_archive(run) {
            return Ok(a);
        }
        let uri = format!(
            "{}/{}",
            self.results.root_uri(),
            crate::engine::tables::finished::archive(run)
        );
        // A run that just finished may have its archive on its way to the store: the leader
        // answers once it is there (at once when it is not being written).
        self.roles
            .leader()?
            .ask(|r| Command::AwaitArchive(run.to_string(), r))
            .await?;
        match self.results.get(&uri).await {
            Ok(bytes) => {
                let archive = <pb::RunArchive as prost::Message>::decode(bytes.as_slice())
                    .map_err(|e| {
                        Status::internal(format!("archive of run `{run}` is damaged: {e}"))
                    })?;
                let archive = Arc::new(archive);
                self.keep_archive(run, archive.clone(), bytes.len());
                Ok(archive)
            }
            Err(baton_common::Error::NotFound(_)) => Err(missing.into()),
            Err(e) => Err(Error::from(e).into()),
        }
    }
}

pub(super) fn require(field: &str, value: &str) -> Result<(), Status> {
    if value.is_empty() {
        Err(Status::invalid_argument(format!("missing field `{field}`")))
    } else {
        Ok(())
    }
}

use baton_proto::limits::{MAX_MESSAGE_BYTES, MAX_RUNS_PAGE, MAX_STATES_ASKED, MAX_TASK_RUNS_PAGE};

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::RunEvent, Status>> + Send>>;

/// A part of a streamed result: 1 MiB.
const CHUNK_BYTES: u64 = 1 << 20;

/// The parts of a result, as [`FlowService::read_result`] streams them.
type ChunkStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::ResultChunk, Status>> + Send>>;

/// The content type of a result, from its location.
fn content_type(uri: &str) -> &'static str {
    if uri.ends_with(".json") {
        "application/json"
    } else if uri.ends_with(".csv") {
        "text/csv"
    } else {
        "application/octet-stream"
    }
}

impl FlowApi {
    /// `uri`, checked: bounded, and in this cluster's own store (never another bucket or
    /// file read with the scheduler's credentials; `baton result get --direct` reads
    /// elsewhere with the caller's own).
    fn own_location(&self, uri: String) -> Result<String, Status> {
        require("uri", &uri)?;
        bounds::check_len("uri", &uri, bounds::MAX_LOCATION_BYTES)?;
        let root = self.results.root_uri();
        if !uri.starts_with(&format!("{}/", root.trim_end_matches('/'))) {
            return Err(Status::permission_denied(format!(
                "`{}` is not in this cluster's result store; read it with your own \
                 credentials (`baton result get --direct`)",
                bounds::quote(&uri)
            )));
        }
        Ok(uri)
    }
}

#[tonic::async_trait]
impl FlowService for FlowApi {
    async fn set_schedule(
        &self,
        req: Request<pb::SetScheduleRequest>,
    ) -> Result<Response<pb::SetScheduleResponse>, Status> {
        self.set_schedule_impl(req.into_inner()).await
    }

    async fn set_concurrency_limit(
        &self,
        req: Request<pb::SetConcurrencyLimitRequest>,
    ) -> Result<Response<pb::ConcurrencyLimit>, Status> {
        self.set_limit_impl(req.into_inner()).await
    }

    async fn delete_concurrency_limit(
        &self,
        req: Request<pb::DeleteConcurrencyLimitRequest>,
    ) -> Result<Response<pb::DeleteConcurrencyLimitResponse>, Status> {
        self.delete_limit_impl(req.into_inner()).await
    }

    async fn list_concurrency_limits(
        &self,
        _req: Request<pb::ListConcurrencyLimitsRequest>,
    ) -> Result<Response<pb::ListConcurrencyLimitsResponse>, Status> {
        self.list_limits_impl().await
    }

    async fn collect_garbage(
        &self,
        req: Request<pb::CollectGarbageRequest>,
    ) -> Result<Response<pb::CollectGarbageResponse>, Status> {
        self.collect_garbage_impl(req.into_inner()).await
    }

    async fn register_flow(
        &self,
        req: Request<pb::RegisterFlowRequest>,
    ) -> Result<Response<pb::RegisterFlowResponse>, Status> {
        let req = req.into_inner();
        bounds::check_len("source", &req.source, bounds::MAX_FLOW_SOURCE_BYTES)?;
        let spec = parse_off_runtime(req.source).await?;
        let (project, flow) = (spec.project.clone(), spec.name.clone());
        let (version, created, schedule) = self
            .roles
            .leader()?
            .ask(|r| Command::RegisterFlow(spec, req.schedule_active, r))
            .await?;
        Ok(Response::new(pb::RegisterFlowResponse {
            project,
            flow,
            version,
            created,
            schedule,
        }))
    }

    async fn create_run(
        &self,
        req: Request<pb::CreateRunRequest>,
    ) -> Result<Response<pb::CreateRunResponse>, Status> {
        // A caller's W3C trace context (`traceparent` metadata): the run joins its trace. A
        // well-formed one is 55 bytes; anything longer is ignored.
        let traceparent = req
            .metadata()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .filter(|v| v.len() <= 64)
            .unwrap_or_default()
            .to_string();
        let req = req.into_inner();
        bounds::check_len("project", &req.project, bounds::MAX_NAME_BYTES)?;
        bounds::check_len("flow", &req.flow, bounds::MAX_NAME_BYTES)?;
        bounds::check_len(
            "idempotency_key",
            &req.idempotency_key,
            bounds::MAX_IDEMPOTENCY_KEY_BYTES,
        )?;
        bounds::check_len("source", &req.source, bounds::MAX_FLOW_SOURCE_BYTES)?;
        let params = parse_params(bounds::bounded_parameters(req.parameters)?)?;
        let (project, flow, version) = if req.source.is_empty() {
            require("flow", &req.flow)?;
            let project = if req.project.is_empty() {
                "default".to_string()
            } else {
                req.project
            };
            (project, req.flow, req.version)
        } else {
            let spec = parse_off_runtime(req.source).await?;
            let (project, flow) = (spec.project.clone(), spec.name.clone());
            let (version, _, _) = self
                .roles
                .leader()?
                .ask(|r| Command::RegisterFlow(spec, false, r))
                .await?;
            (project, flow, version)
        };
        let new = NewRun {
            project,
            flow,
            version,
            params,
            idempotency_key: req.idempotency_key,
            scheduled_start_ms: 0,
            no_cache: req.no_cache,
            priority: req.priority,
            traceparent,
            ..Default::default()
        };
        let (mut run, created) = self
            .roles
            .leader()?
            .ask(|r| Command::CreateRun(new, r))
            .await?;
        if !created && run.state == pb::RunState::Unspecified as i32 {
            // The idempotency key names a finished run that was archived.
            let missing = Error::Engine(crate::engine::EngineError::NotFound(format!(
                "no run `{}`",
                run.id
            )));
            if let Some(r) = &self.archived(&run.id, missing).await?.run {
                run = r.clone();
            }
        }
        Ok(Response::new(pb::CreateRunResponse {
            run: Some(run),
            created,
        }))
    }

    async fn get_run(
        &self,
        req: Request<pb::GetRunRequest>,
    ) -> Result<Response<pb::GetRunResponse>, Status> {
        let id = req.into_inner().run_id;
        bounds::run_id(&id)?;
        let asked = self
            .roles
            .leader()?
            .ask(|r| Command::GetRun(id.clone(), r))
            .await;
        let run = self.run_or_archived(&id, asked).await?;
        Ok(Response::new(pb::GetRunResponse { run }))
    }

    async fn list_runs(
        &self,
        req: Request<pb::ListRunsRequest>,
    ) -> Result<Response<pb::ListRunsResponse>, Status> {
        // Every answer fits a message: the newest runs only, at most a page of them.
        let limit = match req.into_inner().limit as usize {
            0 => MAX_RUNS_PAGE,
            n => n.min(MAX_RUNS_PAGE),
        };
        let runs = self
            .roles
            .leader()?
            .ask(|r| Command::ListRuns(limit, r))
            .await?;
        Ok(Response::new(pb::ListRunsResponse { runs }))
    }

    type WatchRunStream = EventStream;

    async fn watch_run(
        &self,
        req: Request<pb::WatchRunRequest>,
    ) -> Result<Response<Self::WatchRunStream>, Status> {
        let req = req.into_inner();
        bounds::run_id(&req.run_id)?;
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let asked = self
            .roles
            .leader()?
            .ask(|r| Command::Watch(req.run_id.clone(), req.with_task_runs, tx.clone(), r))
            .await;
        match asked {
            Err(e) if is_not_found(&e) => {
                // A finished, archived run: one final event.
                let a = self.archived(&req.run_id, e).await?;
                let task_runs = if req.with_task_runs {
                    a.task_runs.clone()
                } else {
                    Vec::new()
                };
                let _ = tx.try_send(Ok(pb::RunEvent {
                    run: a.run.clone(),
                    task_runs,
                }));
            }
            other => other?,
        }
        drop(tx);
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn list_task_runs(
        &self,
        req: Request<pb::ListTaskRunsRequest>,
    ) -> Result<Response<pb::ListTaskRunsResponse>, Status> {
        let req = req.into_inner();
        bounds::run_id(&req.run_id)?;
        let limit = match req.limit {
            0 => MAX_TASK_RUNS_PAGE,
            n => (n as usize).min(MAX_TASK_RUNS_PAGE),
        };
        bounds::check_len("task", &req.task, bounds::MAX_NAME_BYTES)?;
        if req.states.len() > MAX_STATES_ASKED {
            return Err(Status::invalid_argument(format!(
                "{} states asked, at most {MAX_STATES_ASKED}",
                req.states.len()
            )));
        }
        if let Some(bad) = req
            .states
            .iter()
            .find(|s| pb::TaskState::try_from(**s).is_err())
        {
            return Err(Status::invalid_argument(format!("no task state {bad}")));
        }
        let q = TaskQuery {
            with_values: req.with_values,
            offset: req.offset as usize,
            limit,
            task: req.task,
            states: req.states,
            map_index: req.map_index,
            with_counts: req.with_counts,
        };
        let page = self.task_query(&req.run_id, q).await?;
        Ok(Response::new(pb::ListTaskRunsResponse {
            task_runs: page.rows,
            total: page.total as u32,
            counts: page.counts,
        }))
    }

    async fn cancel_run(
        &self,
        req: Request<pb::CancelRunRequest>,
    ) -> Result<Response<pb::CancelRunResponse>, Status> {
        let id = req.into_inner().run_id;
        bounds::run_id(&id)?;
        let asked = self
            .roles
            .leader()?
            .ask(|r| Command::CancelRun(id.clone(), r))
            .await;
        // A finished run that left memory: cancelling it changes nothing.
        let run = self.run_or_archived(&id, asked).await?;
        Ok(Response::new(pb::CancelRunResponse { run }))
    }

    async fn list_workers(
        &self,
        _req: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::ListWorkersResponse>, Status> {
        let workers = self.roles.leader()?.ask(Command::ListWorkers).await?;
        Ok(Response::new(pb::ListWorkersResponse { workers }))
    }

    async fn get_result(
        &self,
        req: Request<pb::GetResultRequest>,
    ) -> Result<Response<pb::GetResultResponse>, Status> {
        let uri = self.own_location(req.into_inner().uri)?;
        // The answer must fit a message; larger objects are read with `ReadResult`.
        let max = (MAX_MESSAGE_BYTES - 64 * 1024) as u64;
        let data = match self.results.get_at_most(&uri, max).await {
            Err(e @ baton_common::Error::TooLarge { .. }) => {
                return Err(Status::resource_exhausted(format!(
                    "{e}, more than one answer holds: read it in parts with ReadResult (as \
                     `baton result get` does)"
                )))
            }
            got => got.map_err(Error::from)?,
        };
        Ok(Response::new(pb::GetResultResponse {
            data,
            content_type: content_type(&uri).to_string(),
        }))
    }

    type ReadResultStream = ChunkStream;

    async fn read_result(
        &self,
        req: Request<pb::GetResultRequest>,
    ) -> Result<Response<Self::ReadResultStream>, Status> {
        let uri = self.own_location(req.into_inner().uri)?;
        // The first part is read before answering, so that a missing object is an error
        // of the call, not of the stream.
        let (first, size) = self
            .results
            .get_range(&uri, 0, CHUNK_BYTES)
            .await
            .map_err(Error::from)?;
        let store = self.results.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tokio::spawn(async move {
            let mut offset = first.len() as u64;
            let head = pb::ResultChunk {
                data: first,
                size,
                content_type: content_type(&uri).to_string(),
            };
            if tx.send(Ok(head)).await.is_err() {
                return;
            }
            while offset < size {
                let part = match store.get_range(&uri, offset, CHUNK_BYTES).await {
                    Ok((data, _)) if !data.is_empty() => data,
                    Ok(_) => {
                        let _ = tx
                            .send(Err(Status::data_loss(
                                "the object shrank while it was read",
                            )))
                            .await;
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(Error::from(e).into())).await;
                        return;
                    }
                };
                offset += part.len() as u64;
                let chunk = pb::ResultChunk {
                    data: part,
                    ..Default::default()
                };
                // The caller went away: stop reading.
                if tx.send(Ok(chunk)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn get_leader(
        &self,
        _req: Request<pb::GetLeaderRequest>,
    ) -> Result<Response<pb::GetLeaderResponse>, Status> {
        Ok(Response::new(self.roles.leader_info()))
    }

    async fn list_flows(
        &self,
        req: Request<pb::ListFlowsRequest>,
    ) -> Result<Response<pb::ListFlowsResponse>, Status> {
        let project = req.into_inner().project;
        bounds::check_len("project", &project, bounds::MAX_NAME_BYTES)?;
        let flows = self
            .roles
            .leader()?
            .ask(|r| Command::ListFlows(project, r))
            .await?;
        Ok(Response::new(pb::ListFlowsResponse { flows }))
    }

    async fn get_flow(
        &self,
        req: Request<pb::GetFlowRequest>,
    ) -> Result<Response<pb::GetFlowResponse>, Status> {
        let req = req.into_inner();
        require("flow", &req.flow)?;
        bounds::check_len("flow", &req.flow, bounds::MAX_NAME_BYTES)?;
        bounds::check_len("project", &req.project, bounds::MAX_NAME_BYTES)?;
        let project = if req.project.is_empty() {
            "default".to_string()
        } else {
            req.project
        };
        let flow = self
            .roles
            .leader()?
            .ask(|r| Command::GetFlow(project, req.flow, req.version, r))
            .await?;
        Ok(Response::new(flow))
    }

    type GetLogsStream = Pin<Box<dyn Stream<Item = Result<pb::LogEntry, Status>> + Send>>;

    async fn get_logs(
        &self,
        req: Request<pb::GetLogsRequest>,
    ) -> Result<Response<Self::GetLogsStream>, Status> {
        let req = req.into_inner();
        bounds::run_id(&req.run_id)?;
        bounds::check_len("task", &req.task, bounds::MAX_NAME_BYTES)?;
        if req.map_index.is_some() && req.task.is_empty() {
            return Err(Status::invalid_argument(
                "`map_index` names a task run of `task`: give the task too",
            ));
        }
        let leader = self.roles.leader()?;
        let q = TaskQuery {
            limit: usize::MAX,
            task: req.task.clone(),
            map_index: req.map_index,
            ..Default::default()
        };
        let asked = leader
            .ask(|r| Command::TaskQuery(req.run_id.clone(), q.clone(), r))
            .await;
        let (task_runs, live) = match asked {
            Err(e) if is_not_found(&e) => {
                let archive = self.archived(&req.run_id, e).await?;
                (query_rows(&archive.task_runs, &q).rows, false)
            }
            other => (other?.rows, true),
        };
        let stream =
            crate::logs::read::open(leader, self.results.clone(), req, task_runs, live).await?;
        Ok(Response::new(Box::pin(stream)))
    }
}
