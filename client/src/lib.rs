//! The Rust client SDK: a typed wrapper over `FlowService` that talks to whichever scheduler
//! replica leads.
//!
//! A [`Client`] is given one replica or several. It finds the leader (any replica answers
//! `GetLeader`; a follower's refusal names the leader in `baton-leader` metadata), and every
//! call that fails because the replica is not (or no longer) the leader, or because the
//! connection broke, is tried again on the leader of the moment, with backoff and jitter,
//! for up to [`Client::retry_for`] in all. `CreateRun` is retried only when it carries an
//! idempotency key (otherwise a retry could start a second run), except after a refusal
//! that proves it was not carried out. [`Client::watch`] streams survive a change of leader.

mod cluster;
mod logs;
pub mod tls;
mod watch;

pub use cluster::LEADER_METADATA;
pub use logs::format_entry;
pub use watch::RunWatch;

use baton_proto as pb;
use cluster::{leader_hint, refused_up_front, retryable, Api, Backoff, Bearer, Cluster};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How long calls are retried by default while the leader cannot be reached.
pub const DEFAULT_RETRY_FOR: Duration = Duration::from_secs(30);

/// Client errors.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the scheduler at {addr}: {reason}")]
    Connect { addr: String, reason: String },
    /// The server's answer. Its code and message are the whole error: the status is not a
    /// `source`, so a chain of causes (`{:#}`) does not print them twice.
    #[error("{}: {}", .0.code(), .0.message())]
    Status(tonic::Status),
    #[error("invalid address `{0}`")]
    Address(String),
    #[error("`{0}` asks for TLS: give the CA that signs the scheduler's certificate (--tls-ca, BATON_TLS_CA)")]
    Tls(String),
    #[error("TLS: {0}")]
    TlsFiles(String),
    #[error("the token is not a valid header value (printable ASCII)")]
    Token,
}

impl From<tonic::Status> for ClientError {
    fn from(s: tonic::Status) -> Self {
        ClientError::Status(s)
    }
}

/// A connection to a baton cluster; cheap to clone (clones share the connections and what
/// is known of the leader).
#[derive(Clone)]
pub struct Client {
    cluster: Arc<Cluster>,
    retry_for: Duration,
}

/// Whether a call may be sent again after a failure that leaves it unknown whether it was
/// carried out.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Retry {
    /// The call is idempotent.
    Always,
    /// Only when the failure proves the call was not carried out.
    IfRefused,
}

impl Client {
    /// Connects to a cluster given one replica address or a comma-separated list
    /// (`http://host:port`; a bare `host:port` gets `http://`). Fails when no replica
    /// answers; succeeds while an election is still going on.
    pub async fn connect(addrs: &str) -> Result<Self, ClientError> {
        let list: Vec<String> = addrs.split(',').map(str::to_string).collect();
        Client::connect_any(&list).await
    }

    /// Connects to a cluster given its replica addresses (each may also be a
    /// comma-separated list; empty entries are skipped).
    pub async fn connect_any(addrs: &[String]) -> Result<Self, ClientError> {
        Client::connect_with_token(addrs, None).await
    }

    /// Connects as [`Client::connect_any`] does, sending `token` (as `authorization: Bearer`)
    /// with every call, as a scheduler with authentication on requires.
    pub async fn connect_with_token(
        addrs: &[String],
        token: Option<&str>,
    ) -> Result<Self, ClientError> {
        Client::connect_with(addrs, token, None).await
    }

    /// Connects as [`Client::connect_with_token`] does, over TLS to `https://` replicas
    /// (and to addresses without a scheme) when `tls` is given.
    pub async fn connect_with(
        addrs: &[String],
        token: Option<&str>,
        tls: Option<tls::TlsFiles>,
    ) -> Result<Self, ClientError> {
        let bearer = Bearer::new(token)?;
        let tls = tls.filter(tls::TlsFiles::is_set);
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut replicas = Vec::new();
        for a in addrs.iter().flat_map(|a| a.split(',')) {
            if a.trim().is_empty() {
                continue;
            }
            let url = cluster::normalize_with(a, scheme)?;
            if url.starts_with("https://") && tls.is_none() {
                // Never plaintext to an address that asks for TLS.
                return Err(ClientError::Tls(url));
            }
            if !replicas.contains(&url) {
                replicas.push(url);
            }
        }
        if replicas.is_empty() {
            return Err(ClientError::Address(addrs.join(",")));
        }
        let cluster = Arc::new(Cluster::new(replicas, bearer, tls));
        if let Err(status) = cluster.leader().await {
            return Err(ClientError::Connect {
                addr: cluster.replicas().join(","),
                reason: status.message().to_string(),
            });
        }
        Ok(Client {
            cluster,
            retry_for: DEFAULT_RETRY_FOR,
        })
    }

    /// The same client, retrying calls for up to `d` in all (zero: never).
    pub fn with_retry_for(mut self, d: Duration) -> Self {
        self.retry_for = d;
        self
    }

    /// How long calls are retried while the leader cannot be reached.
    pub fn retry_for(&self) -> Duration {
        self.retry_for
    }

    /// The replica addresses this client was given.
    pub fn replicas(&self) -> &[String] {
        self.cluster.replicas()
    }

    /// The replica calls go to now (the leader as far as is known), if one is chosen.
    pub fn current_leader(&self) -> Option<String> {
        self.cluster.target()
    }

    /// Sends a call to the leader; tries again as the retry policy allows.
    async fn call<T, F, Fut>(&self, retry: Retry, mut f: F) -> Result<T, ClientError>
    where
        F: FnMut(Api) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let started = Instant::now();
        let mut backoff = Backoff::default();
        loop {
            let (dialled, status) = match self.cluster.leader().await {
                Ok(addr) => match self.cluster.client(&addr) {
                    Ok(client) => match f(client).await {
                        Ok(response) => return Ok(response.into_inner()),
                        Err(status) => (Some(addr), status),
                    },
                    Err(e) => return Err(e),
                },
                Err(status) => (None, status),
            };
            if !retryable(&status)
                || (retry == Retry::IfRefused && !refused_up_front(dialled.is_some(), &status))
            {
                return Err(status.into());
            }
            let hint = leader_hint(&status);
            let delay = match &hint {
                Some(h) => backoff.after_hint(dialled.as_deref(), h),
                None => backoff.next(),
            };
            let Some(left) = self
                .retry_for
                .checked_sub(started.elapsed())
                .filter(|l| !l.is_zero())
            else {
                return Err(status.into());
            };
            let delay = delay.min(left);
            tracing::debug!(
                replica = dialled.as_deref().unwrap_or("-"),
                leader = hint.as_deref().unwrap_or("-"),
                code = ?status.code(),
                message = status.message(),
                delay_ms = delay.as_millis() as u64,
                "retrying on the leader"
            );
            match (hint, &dialled) {
                (Some(h), _) => self.cluster.redirect(h),
                (None, Some(addr)) => self.cluster.forget(addr),
                (None, None) => {}
            }
            tokio::time::sleep(delay).await;
        }
    }

    /// Who leads the cluster, its epoch and the replicas, as a replica reports it (any
    /// replica answers; the leader's own view is asked first).
    pub async fn leader(&self) -> Result<pb::GetLeaderResponse, ClientError> {
        let report = self
            .call(Retry::Always, |mut c| async move {
                c.get_leader(pb::GetLeaderRequest {}).await
            })
            .await?;
        self.cluster.learn(&report, None);
        Ok(report)
    }

    /// Registers a flow definition (YAML or JSON text); a schedule it has is left inactive
    /// (or as it was, when the definition is unchanged).
    pub async fn register_flow(
        &self,
        source: String,
    ) -> Result<pb::RegisterFlowResponse, ClientError> {
        self.register_flow_with(source, false).await
    }

    /// Registers a flow definition; with `schedule_active`, its schedule is switched on.
    pub async fn register_flow_with(
        &self,
        source: String,
        schedule_active: bool,
    ) -> Result<pb::RegisterFlowResponse, ClientError> {
        let req = pb::RegisterFlowRequest {
            source,
            schedule_active,
        };
        self.call(Retry::Always, |mut c| {
            let req = req.clone();
            async move { c.register_flow(req).await }
        })
        .await
    }

    /// Registered flows of `project` (all projects when empty).
    pub async fn list_flows(&self, project: &str) -> Result<Vec<pb::FlowSummary>, ClientError> {
        let req = pb::ListFlowsRequest {
            project: project.to_string(),
        };
        let r = self
            .call(Retry::Always, |mut c| {
                let req = req.clone();
                async move { c.list_flows(req).await }
            })
            .await?;
        Ok(r.flows)
    }

    /// Version `version` (0: the latest) of a registered flow.
    pub async fn get_flow(
        &self,
        project: &str,
        flow: &str,
        version: u32,
    ) -> Result<pb::GetFlowResponse, ClientError> {
        let req = pb::GetFlowRequest {
            project: project.to_string(),
            flow: flow.to_string(),
            version,
        };
        self.call(Retry::Always, |mut c| {
            let req = req.clone();
            async move { c.get_flow(req).await }
        })
        .await
    }

    /// Switches the cron schedule of a registered flow (`project` empty: `default`) on or
    /// off; returns the schedule as it is now.
    pub async fn set_schedule(
        &self,
        project: &str,
        flow: &str,
        active: bool,
    ) -> Result<pb::SetScheduleResponse, ClientError> {
        let req = pb::SetScheduleRequest {
            project: project.to_string(),
            flow: flow.to_string(),
            active,
        };
        self.call(Retry::Always, |mut c| {
            let req = req.clone();
            async move { c.set_schedule(req).await }
        })
        .await
    }

    /// Creates or changes the cluster-wide concurrency limit on a task tag.
    pub async fn set_limit(
        &self,
        tag: &str,
        limit: u32,
    ) -> Result<pb::ConcurrencyLimit, ClientError> {
        let req = pb::SetConcurrencyLimitRequest {
            tag: tag.to_string(),
            limit,
        };
        self.call(Retry::Always, |mut c| {
            let req = req.clone();
            async move { c.set_concurrency_limit(req).await }
        })
        .await
    }

    /// Removes the concurrency limit on a tag; whether there was one. (A retry after a
    /// change of leader may report false for a limit the first try removed.)
    pub async fn delete_limit(&self, tag: &str) -> Result<bool, ClientError> {
        let req = pb::DeleteConcurrencyLimitRequest {
            tag: tag.to_string(),
        };
        let r = self
            .call(Retry::Always, |mut c| {
                let req = req.clone();
                async move { c.delete_concurrency_limit(req).await }
            })
            .await?;
        Ok(r.deleted)
    }

    /// Every concurrency limit, with the attempts holding its slots now.
    pub async fn list_limits(&self) -> Result<Vec<pb::ConcurrencyLimit>, ClientError> {
        Ok(self
            .call(Retry::Always, |mut c| async move {
                c.list_concurrency_limits(pb::ListConcurrencyLimitsRequest {})
                    .await
            })
            .await?
            .limits)
    }

    /// Deletes the result store's packs that nothing references and that were last
    /// written at least `older_than_seconds` ago (0: the scheduler's default); with
    /// `dry_run`, only reports them. Retrying is safe: a pass deletes only what no one
    /// references.
    pub async fn collect_garbage(
        &self,
        older_than_seconds: u64,
        dry_run: bool,
    ) -> Result<pb::CollectGarbageResponse, ClientError> {
        let req = pb::CollectGarbageRequest {
            older_than_seconds,
            dry_run,
        };
        self.call(Retry::Always, |mut c| async move {
            c.collect_garbage(req).await
        })
        .await
    }

    /// Starts a run of a flow definition given as text; parameters are JSON texts. Give an
    /// idempotency key (the CLI always does) so that the call can be retried safely.
    pub async fn run_source(
        &self,
        source: String,
        parameters: BTreeMap<String, String>,
        idempotency_key: String,
    ) -> Result<pb::CreateRunResponse, ClientError> {
        self.create_run(pb::CreateRunRequest {
            source,
            parameters: parameters.into_iter().collect(),
            idempotency_key,
            ..Default::default()
        })
        .await
    }

    /// Starts a run. Retried across a change of leader only when `req` carries an
    /// idempotency key (a retry then returns the same run, with `created` false when the
    /// first try had created it).
    pub async fn create_run(
        &self,
        req: pb::CreateRunRequest,
    ) -> Result<pb::CreateRunResponse, ClientError> {
        let retry = if req.idempotency_key.is_empty() {
            Retry::IfRefused
        } else {
            Retry::Always
        };
        self.call(retry, |mut c| {
            let req = req.clone();
            async move { c.create_run(req).await }
        })
        .await
    }

    pub async fn get_run(&self, run_id: &str) -> Result<pb::FlowRun, ClientError> {
        let req = pb::GetRunRequest {
            run_id: run_id.to_string(),
        };
        let r = self
            .call(Retry::Always, |mut c| {
                let req = req.clone();
                async move { c.get_run(req).await }
            })
            .await?;
        r.run
            .ok_or_else(|| tonic::Status::internal("response without a run").into())
    }

    pub async fn list_runs(&self, limit: u32) -> Result<Vec<pb::FlowRun>, ClientError> {
        Ok(self
            .call(Retry::Always, |mut c| async move {
                c.list_runs(pb::ListRunsRequest { limit }).await
            })
            .await?
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
            let req = pb::ListTaskRunsRequest {
                run_id: run_id.to_string(),
                with_values,
                offset: out.len() as u32,
                ..Default::default()
            };
            let page = self
                .call(Retry::Always, |mut c| {
                    let req = req.clone();
                    async move { c.list_task_runs(req).await }
                })
                .await?;
            let got = page.task_runs.len();
            out.extend(page.task_runs);
            if got == 0 || out.len() >= page.total as usize {
                return Ok(out);
            }
        }
    }

    /// One page of a run's task runs as `req` asks (filtered by task, state and map index,
    /// with the run's counts by task and state when asked).
    pub async fn task_runs_query(
        &self,
        req: pb::ListTaskRunsRequest,
    ) -> Result<pb::ListTaskRunsResponse, ClientError> {
        self.call(Retry::Always, |mut c| {
            let req = req.clone();
            async move { c.list_task_runs(req).await }
        })
        .await
    }

    /// The run's events (with the task runs that changed when `with_task_runs`), ending
    /// with the event of the finished run. The watch is re-opened on the new leader when
    /// the leader changes; repeated events are dropped.
    pub async fn watch(&self, run_id: &str, with_task_runs: bool) -> Result<RunWatch, ClientError> {
        RunWatch::open(self.clone(), run_id.to_string(), with_task_runs).await
    }

    /// Opens one `WatchRun` stream on the leader (retried until it opens).
    async fn open_watch(
        &self,
        run_id: &str,
        with_task_runs: bool,
    ) -> Result<tonic::Streaming<pb::RunEvent>, ClientError> {
        let req = pb::WatchRunRequest {
            run_id: run_id.to_string(),
            with_task_runs,
        };
        self.call(Retry::Always, |mut c| {
            let req = req.clone();
            async move { c.watch_run(req).await }
        })
        .await
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
        let req = pb::CancelRunRequest {
            run_id: run_id.to_string(),
        };
        let r = self
            .call(Retry::Always, |mut c| {
                let req = req.clone();
                async move { c.cancel_run(req).await }
            })
            .await?;
        r.run
            .ok_or_else(|| tonic::Status::internal("response without a run").into())
    }

    pub async fn workers(&self) -> Result<Vec<pb::WorkerInfo>, ClientError> {
        Ok(self
            .call(Retry::Always, |mut c| async move {
                c.list_workers(pb::ListWorkersRequest {}).await
            })
            .await?
            .workers)
    }

    /// Opens a stream of the parts of a result or artifact of any size (`ReadResult`); the
    /// first part gives its size.
    pub async fn read_result(
        &self,
        uri: &str,
    ) -> Result<tonic::Streaming<pb::ResultChunk>, ClientError> {
        let req = pb::GetResultRequest {
            uri: uri.to_string(),
        };
        self.call(Retry::Always, |mut c| {
            let req = req.clone();
            async move { c.read_result(req).await }
        })
        .await
    }

    pub async fn get_result(&self, uri: &str) -> Result<pb::GetResultResponse, ClientError> {
        let req = pb::GetResultRequest {
            uri: uri.to_string(),
        };
        self.call(Retry::Always, |mut c| {
            let req = req.clone();
            async move { c.get_result(req).await }
        })
        .await
    }
}

/// Whether a run is over.
pub fn is_finished(run: &pb::FlowRun) -> bool {
    matches!(
        pb::RunState::try_from(run.state),
        Ok(pb::RunState::Completed | pb::RunState::Failed | pb::RunState::Cancelled)
    )
}

#[cfg(test)]
mod tests;
