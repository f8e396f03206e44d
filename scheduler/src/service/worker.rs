//! `WorkerService.Connect`: one bidirectional stream per worker session. A reader task
//! forwards the worker's messages to the engine; the engine's messages flow back through an
//! unbounded channel, bounded in practice by the credit each worker grants.

use super::bounds::{self, quote};
use crate::actor::Command;
use crate::auth::Identity;
use crate::engine::Gpu;
use crate::engine::WorkerRegistration;
use crate::leadership::Roles;
use baton_common::flow::{ResourceSpec, EXECUTORS, EXECUTOR_LABEL_PREFIX, MAX_GPUS};
use baton_common::ids::{AttemptKey, WorkerId};
use baton_proto as pb;
use pb::worker_message::Msg as Up;
use pb::worker_service_server::WorkerService;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use baton_proto::limits::MAX_WORKER_LABELS as MAX_LABELS;

/// The worker-facing service.
pub struct WorkerApi {
    roles: Arc<Roles>,
    next_session: AtomicU64,
    lease: Duration,
    reports: super::reports::Reports,
}

impl WorkerApi {
    /// `results_root`: the cluster's result store, where workers' results must lie.
    pub fn new(roles: Arc<Roles>, lease: Duration, results_root: &str) -> Self {
        WorkerApi {
            roles,
            next_session: AtomicU64::new(1),
            lease,
            reports: super::reports::Reports::new(results_root),
        }
    }
}

fn registration(r: pb::Register, address: String) -> Result<WorkerRegistration, Status> {
    if r.worker_id.trim().is_empty() {
        return Err(Status::invalid_argument("register: missing `worker_id`"));
    }
    bounds::check_len("worker_id", &r.worker_id, bounds::MAX_NAME_BYTES)?;
    if crate::engine::Runner::is_reserved(&r.worker_id) {
        return Err(Status::invalid_argument(format!(
            "register: `worker_id` `{}` is reserved (it stands for no worker in task runs)",
            quote(&r.worker_id)
        )));
    }
    if r.labels.len() > MAX_LABELS {
        return Err(Status::invalid_argument(format!(
            "register: a worker may have at most {MAX_LABELS} labels"
        )));
    }
    for label in &r.labels {
        bounds::check_len("labels", label, bounds::MAX_NAME_BYTES)?;
        if label.starts_with(EXECUTOR_LABEL_PREFIX) {
            return Err(Status::invalid_argument(format!(
                "register: labels starting with `{EXECUTOR_LABEL_PREFIX}` are the scheduler's \
                 (`{}`); allow executors with `executors`",
                quote(label)
            )));
        }
    }
    let mut labels = r.labels;
    for executor in &r.executors {
        if !EXECUTORS.contains(&executor.as_str()) {
            return Err(Status::invalid_argument(format!(
                "register: unknown executor `{}` (known: {})",
                quote(executor),
                EXECUTORS.join(", ")
            )));
        }
        // Process and container tasks require this label: only workers that allow them get
        // them.
        labels.push(format!("{EXECUTOR_LABEL_PREFIX}{executor}"));
    }
    let res = r.resources.unwrap_or_default();
    if res.slots == 0 {
        return Err(Status::invalid_argument(
            "register: `resources.slots` must be at least 1",
        ));
    }
    let devices = gpus(&res)?;
    let gpus_held = r
        .gpus_held
        .iter()
        .filter_map(|h| Some((AttemptKey::from(h.key.as_ref()?), h.gpus.clone())))
        .collect();
    Ok(WorkerRegistration {
        id: WorkerId(r.worker_id),
        labels,
        resources: ResourceSpec {
            slots: res.slots,
            gpus: res.gpus.max(devices.len() as u32),
            memory_mb: res.memory_mb,
            gpu_memory_mb: 0,
        },
        running: r.running.iter().map(AttemptKey::from).collect(),
        address,
        devices,
        gpus_held,
    })
}

/// The longest GPU uuid or name a worker may register.
const MAX_GPU_TEXT: usize = 256;

/// Checks the GPUs a worker registers: at most [`MAX_GPUS`], distinct indices, bounded text.
fn gpus(res: &pb::Resources) -> Result<Vec<Gpu>, Status> {
    if res.gpus > MAX_GPUS || res.devices.len() > MAX_GPUS as usize {
        return Err(Status::invalid_argument(format!(
            "register: a worker may offer at most {MAX_GPUS} GPUs"
        )));
    }
    let mut seen = std::collections::HashSet::new();
    for d in &res.devices {
        if !seen.insert(d.index) {
            return Err(Status::invalid_argument(format!(
                "register: GPU index {} is given twice",
                d.index
            )));
        }
        if d.uuid.len() > MAX_GPU_TEXT || d.name.len() > MAX_GPU_TEXT {
            return Err(Status::invalid_argument(format!(
                "register: GPU {}: uuid and name must be at most {MAX_GPU_TEXT} bytes",
                d.index
            )));
        }
    }
    Ok(res.devices.clone())
}

type Down = Pin<Box<dyn Stream<Item = Result<pb::SchedulerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl WorkerService for WorkerApi {
    type ConnectStream = Down;

    async fn connect(
        &self,
        req: Request<Streaming<pb::WorkerMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let actor = self.roles.leader()?;
        let address = req.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        let identity = req.extensions().get::<Identity>().cloned();
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(Duration::from_secs(10), inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no register message within 10 s"))??;
        let reg = match first.and_then(|m| m.msg) {
            Some(Up::Register(r)) => registration(r, address)?,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message on a worker stream must be `register`",
                ))
            }
        };
        // A worker's token binds the ids it may take: nobody registers as another worker.
        if let Some(who) = identity.filter(|who| !who.may_be_worker(&reg.id.0)) {
            return Err(Status::permission_denied(format!(
                "the token of worker `{}` may not register as worker `{}`",
                who.name,
                quote(&reg.id.0)
            )));
        }
        let session = self.next_session.fetch_add(1, Ordering::Relaxed);
        let id = reg.id.clone();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        actor
            .tell(Command::WorkerConnected(reg, session, tx))
            .await?;
        let lease = self.lease;
        let reports = self.reports.clone();
        tokio::spawn(async move {
            let mut budget = super::log_budget::LogBudget::new(std::time::Instant::now());
            loop {
                match tokio::time::timeout(lease, inbound.message()).await {
                    Ok(Ok(Some(m))) => {
                        let Some(mut msg) = m.msg else { continue };
                        reports.bound(&mut msg);
                        let dropped = budget.admit(&mut msg, std::time::Instant::now());
                        if dropped > 0
                            && (budget.dropped == dropped || budget.dropped % 10_000 < dropped)
                        {
                            tracing::warn!(worker = %id, dropped = budget.dropped, "worker sends log lines faster than its budget; dropping some");
                        }
                        let cmd = Command::WorkerMessage(id.clone(), session, msg);
                        if actor.tell(cmd).await.is_err() {
                            break;
                        }
                    }
                    Ok(Ok(None)) => break,
                    Ok(Err(e)) => {
                        tracing::info!(worker = %id, error = %e, "worker stream error");
                        break;
                    }
                    Err(_) => {
                        tracing::warn!(worker = %id, "worker silent for a lease; closing its session");
                        break;
                    }
                }
            }
            let _ = actor.tell(Command::WorkerDisconnected(id, session)).await;
        });
        let out = tokio_stream::wrappers::UnboundedReceiverStream::new(rx).map(Ok);
        Ok(Response::new(Box::pin(out)))
    }
}

#[cfg(test)]
mod tests {
    use super::registration;
    use baton_proto as pb;

    fn register(id: &str) -> pb::Register {
        pb::Register {
            worker_id: id.into(),
            resources: Some(pb::Resources {
                slots: 1,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_names_that_stand_for_no_worker_are_refused_as_worker_ids() {
        for id in ["cache", "subflow"] {
            let e = registration(register(id), String::new()).expect_err("reserved");
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().contains("reserved"), "{}", e.message());
        }
        assert!(registration(register("w1"), String::new()).is_ok());
        let e = registration(register(" "), String::new()).expect_err("empty");
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    }
}
