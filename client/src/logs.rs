//! Task logs: the lines a run's tasks wrote, as the leader keeps them.

use super::{Client, ClientError, Retry};
use baton_proto as pb;

impl Client {
    /// A run's log lines (of one task when `task` is not empty), in order: by task, map
    /// index and attempt, then as written. With `follow`, the stream goes on with new lines
    /// until the run is over. The stream is opened on the leader of the moment; it is not
    /// re-opened if the leader changes while it is read.
    pub async fn logs(
        &self,
        run_id: &str,
        task: &str,
        follow: bool,
    ) -> Result<tonic::Streaming<pb::LogEntry>, ClientError> {
        self.logs_of(run_id, task, None, follow).await
    }

    /// [`Self::logs`], of one task run when `map_index` is given (-1: an unmapped task's).
    pub async fn logs_of(
        &self,
        run_id: &str,
        task: &str,
        map_index: Option<i64>,
        follow: bool,
    ) -> Result<tonic::Streaming<pb::LogEntry>, ClientError> {
        let req = pb::GetLogsRequest {
            run_id: run_id.to_string(),
            task: task.to_string(),
            follow,
            map_index,
        };
        self.call(Retry::Always, |mut c| {
            let req = req.clone();
            async move { c.get_logs(req).await }
        })
        .await
    }
}

/// One entry as `baton logs` prints it: `task[index]#attempt stream: line` (no `[index]`
/// for an unmapped task).
pub fn format_entry(e: &pb::LogEntry) -> String {
    if e.map_index < 0 {
        format!("{}#{} {}: {}", e.task, e.attempt, e.stream, e.line)
    } else {
        format!(
            "{}[{}]#{} {}: {}",
            e.task, e.map_index, e.attempt, e.stream, e.line
        )
    }
}
