//! `FlowService` calls that configure the cluster: flow schedules on and off, concurrency
//! limits on task tags.

use super::bounds;
use super::flow::{require, FlowApi};
use crate::actor::Command;
use baton_proto as pb;
use tonic::{Response, Status};

impl FlowApi {
    pub(super) async fn set_schedule_impl(
        &self,
        req: pb::SetScheduleRequest,
    ) -> Result<Response<pb::SetScheduleResponse>, Status> {
        require("flow", &req.flow)?;
        bounds::check_len("flow", &req.flow, bounds::MAX_NAME_BYTES)?;
        bounds::check_len("project", &req.project, bounds::MAX_NAME_BYTES)?;
        let project = if req.project.is_empty() {
            "default".to_string()
        } else {
            req.project
        };
        let (p, f) = (project.clone(), req.flow.clone());
        let schedule = self
            .roles()
            .leader()?
            .ask(|r| Command::SetSchedule(p, f, req.active, r))
            .await?;
        Ok(Response::new(pb::SetScheduleResponse {
            project,
            flow: req.flow,
            schedule: Some(schedule),
        }))
    }

    pub(super) async fn set_limit_impl(
        &self,
        req: pb::SetConcurrencyLimitRequest,
    ) -> Result<Response<pb::ConcurrencyLimit>, Status> {
        require("tag", &req.tag)?;
        bounds::check_len("tag", &req.tag, bounds::MAX_NAME_BYTES)?;
        let limit = self
            .roles()
            .leader()?
            .ask(|r| Command::SetLimit(req.tag, req.limit, r))
            .await?;
        Ok(Response::new(limit))
    }

    pub(super) async fn collect_garbage_impl(
        &self,
        req: pb::CollectGarbageRequest,
    ) -> Result<Response<pb::CollectGarbageResponse>, Status> {
        let options = crate::gc::Options::from_request(&req)?;
        // One pass at a time: a second would list and read the same objects again.
        let Ok(_pass) = self.gc_pass.try_lock() else {
            return Err(Status::aborted(
                "a garbage collection pass is running; try again once it is done",
            ));
        };
        let leader = self.roles().leader()?;
        let report = crate::gc::collect(&*self.results, &leader, options).await?;
        Ok(Response::new(report))
    }

    pub(super) async fn delete_limit_impl(
        &self,
        req: pb::DeleteConcurrencyLimitRequest,
    ) -> Result<Response<pb::DeleteConcurrencyLimitResponse>, Status> {
        require("tag", &req.tag)?;
        bounds::check_len("tag", &req.tag, bounds::MAX_NAME_BYTES)?;
        let deleted = self
            .roles()
            .leader()?
            .ask(|r| Command::DeleteLimit(req.tag, r))
            .await?;
        Ok(Response::new(pb::DeleteConcurrencyLimitResponse {
            deleted,
        }))
    }

    pub(super) async fn list_limits_impl(
        &self,
    ) -> Result<Response<pb::ListConcurrencyLimitsResponse>, Status> {
        let limits = self.roles().leader()?.ask(Command::ListLimits).await?;
        Ok(Response::new(pb::ListConcurrencyLimitsResponse { limits }))
    }
}
