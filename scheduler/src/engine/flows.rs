//! Registered flows: the list of flows with their latest versions, and one version's
//! definition.

use super::{Engine, EngineError};
use baton_proto as pb;

impl Engine {
    /// Every registered flow (of `project`, or of all projects when empty), sorted.
    pub fn list_flows(&self, project: &str) -> Vec<pb::FlowSummary> {
        let mut out: Vec<pb::FlowSummary> = self
            .flows
            .iter()
            .filter(|((p, _), _)| project.is_empty() || p == project)
            .filter_map(|((p, f), versions)| {
                let last = versions.last()?;
                Some(pb::FlowSummary {
                    project: p.clone(),
                    flow: f.clone(),
                    latest_version: last.version,
                    description: format!("{} tasks", last.spec.tasks.len()),
                    schedule: self.schedule_view(p, f),
                })
            })
            .collect();
        out.sort_by(|a, b| (&a.project, &a.flow).cmp(&(&b.project, &b.flow)));
        out
    }

    /// Version `version` (0: the latest) of a registered flow, with its definition.
    pub fn get_flow(
        &self,
        project: &str,
        flow: &str,
        version: u32,
    ) -> Result<pb::GetFlowResponse, EngineError> {
        let found = self.flow(project, flow, version)?;
        let latest = self
            .flows
            .get(&(project.to_string(), flow.to_string()))
            .map(|v| v.len() as u32)
            .unwrap_or(found.version);
        Ok(pb::GetFlowResponse {
            project: project.to_string(),
            flow: flow.to_string(),
            version: found.version,
            latest_version: latest,
            definition_json: serde_json::to_string_pretty(&found.spec).unwrap_or_default(),
            schedule: self.schedule_view(project, flow),
        })
    }
}
