//! The Rust client SDK: a thin, typed wrapper over `FlowService`.

use baton_proto as pb;
use pb::flow_service_client::FlowServiceClient;
use std::collections::BTreeMap;
use tonic::transport::{Channel, Endpoint};

/// Client errors.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the scheduler at {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("{}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
    #[error("invalid address `{0}`")]
    Address(String),
}

/// A connection to a scheduler.
#[derive(Clone)]
pub struct Client {
    inner: FlowServiceClient<Channel>,
}

const MAX_MESSAGE: usize = 64 * 1024 * 1024;

impl Client {
    /// Connects to `addr` (`http://host:port`; a bare `host:port` gets `http://`).
    pub async fn connect(addr: &str) -> Result<Self, ClientError> {
        let url = if addr.contains("://") {
            addr.to_string()
        } else {
            format!("http://{addr}")
        };
        let endpoint =
            Endpoint::from_shared(url.clone()).map_err(|_| ClientError::Address(url.clone()))?;
        let channel = endpoint
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|source| ClientError::Connect { addr: url, source })?;
        Ok(Client {
            inner: FlowServiceClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        })
    }

    pub async fn register_flow(
        &self,
        source: String,
    ) -> Result<pb::RegisterFlowResponse, ClientError> {
        Ok(self
            .inner
            .clone()
            .register_flow(pb::RegisterFlowRequest { source })
            .await?
            .into_inner())
    }

    /// Starts a run of a flow definition given as text; parameters are JSON texts.
    pub async fn run_source(
        &self,
        source: String,
        parameters: BTreeMap<String, String>,
        idempotency_key: String,
    ) -> Result<pb::CreateRunResponse, ClientError> {
        Ok(self
            .inner
            .clone()
            .create_run(pb::CreateRunRequest {
                source,
                parameters: parameters.into_iter().collect(),
                idempotency_key,
                ..Default::default()
            })
            .await?
            .into_inner())
    }

    pub async fn create_run(
        &self,
        req: pb::CreateRunRequest,
    ) -> Result<pb::CreateRunResponse, ClientError> {
        Ok(self.inner.clone().create_run(req).await?.into_inner())
    }

    pub async fn get_run(&self, run_id: &str) -> Result<pb::FlowRun, ClientError> {
        let r = self
            .inner
            .clone()
            .get_run(pb::GetRunRequest {
                run_id: run_id.to_string(),
            })
            .await?
            .into_inner();
        r.run
            .ok_or_else(|| tonic::Status::internal("response without a run").into())
    }

    pub async fn list_runs(&self, limit: u32) -> Result<Vec<pb::FlowRun>, ClientError> {
        Ok(self
            .inner
            .clone()
            .list_runs(pb::ListRunsRequest { limit })
            .await?
            .into_inner()
            .runs)
    }

    /// All of a run's task runs, fetched page by page.
    pub async fn task_runs(
        &self,
        run_id: &str,
        with_values: bool,
    ) -> Result<Vec<pb::TaskRun>, ClientError> {
        let mut out = Vec::new();
        loop {
            let page = self
                .inner
                .clone()
                .list_task_runs(pb::ListTaskRunsRequest {
                    run_id: run_id.to_string(),
                    with_values,
                    offset: out.len() as u32,
                    limit: 0,
                })
                .await?
                .into_inner();
            let got = page.task_runs.len();
            out.extend(page.task_runs);
            if got == 0 || out.len() >= page.total as usize {
                return Ok(out);
            }
        }
    }

    /// A stream of the run's events (with the task runs that changed when `with_task_runs`),
    /// ending when the run is over.
    pub async fn watch(
        &self,
        run_id: &str,
        with_task_runs: bool,
    ) -> Result<tonic::Streaming<pb::RunEvent>, ClientError> {
        Ok(self
            .inner
            .clone()
            .watch_run(pb::WatchRunRequest {
                run_id: run_id.to_string(),
                with_task_runs,
            })
            .await?
            .into_inner())
    }

    /// Waits until the run is over and returns its final state.
    pub async fn wait(&self, run_id: &str) -> Result<pb::FlowRun, ClientError> {
        let mut stream = self.watch(run_id, false).await?;
        while let Some(ev) = stream.message().await? {
            if let Some(run) = ev.run {
                if is_finished(&run) {
                    return Ok(run);
                }
            }
        }
        self.get_run(run_id).await
    }

    pub async fn cancel_run(&self, run_id: &str) -> Result<pb::FlowRun, ClientError> {
        let r = self
            .inner
            .clone()
            .cancel_run(pb::CancelRunRequest {
                run_id: run_id.to_string(),
            })
            .await?
            .into_inner();
        r.run
            .ok_or_else(|| tonic::Status::internal("response without a run").into())
    }

    pub async fn workers(&self) -> Result<Vec<pb::WorkerInfo>, ClientError> {
        Ok(self
            .inner
            .clone()
            .list_workers(pb::ListWorkersRequest {})
            .await?
            .into_inner()
            .workers)
    }

    pub async fn get_result(&self, uri: &str) -> Result<pb::GetResultResponse, ClientError> {
        Ok(self
            .inner
            .clone()
            .get_result(pb::GetResultRequest {
                uri: uri.to_string(),
            })
            .await?
            .into_inner())
    }
}

/// Whether a run is over.
pub fn is_finished(run: &pb::FlowRun) -> bool {
    matches!(
        pb::RunState::try_from(run.state),
        Ok(pb::RunState::Completed | pb::RunState::Failed | pb::RunState::Cancelled)
    )
}
