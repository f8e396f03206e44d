//! Run and task-run states, with their wire forms.

use baton_proto::{RunState as PRun, TaskState as PTask};
use serde::{Deserialize, Serialize};

/// A flow run's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunState {
    Scheduled,
    Pending,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl RunState {
    /// Whether the run is over.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Scheduled => "Scheduled",
            Self::Pending => "Pending",
            Self::Running => "Running",
            Self::Completed => "Completed",
            Self::Failed => "Failed",
            Self::Cancelled => "Cancelled",
        }
    }
}

impl From<RunState> for PRun {
    fn from(s: RunState) -> Self {
        match s {
            RunState::Scheduled => PRun::Scheduled,
            RunState::Pending => PRun::Pending,
            RunState::Running => PRun::Running,
            RunState::Completed => PRun::Completed,
            RunState::Failed => PRun::Failed,
            RunState::Cancelled => PRun::Cancelled,
        }
    }
}

/// A task run's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskState {
    Pending,
    Ready,
    Assigned,
    Running,
    Completed,
    Failed,
    Retrying,
    Cancelled,
    Skipped,
}

impl TaskState {
    /// Whether the task run is over.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::Failed | Self::Cancelled | Self::Skipped
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Ready => "Ready",
            Self::Assigned => "Assigned",
            Self::Running => "Running",
            Self::Completed => "Completed",
            Self::Failed => "Failed",
            Self::Retrying => "Retrying",
            Self::Cancelled => "Cancelled",
            Self::Skipped => "Skipped",
        }
    }
}

impl From<TaskState> for PTask {
    fn from(s: TaskState) -> Self {
        match s {
            TaskState::Pending => PTask::Pending,
            TaskState::Ready => PTask::Ready,
            TaskState::Assigned => PTask::Assigned,
            TaskState::Running => PTask::Running,
            TaskState::Completed => PTask::Completed,
            TaskState::Failed => PTask::Failed,
            TaskState::Retrying => PTask::Retrying,
            TaskState::Cancelled => PTask::Cancelled,
            TaskState::Skipped => PTask::Skipped,
        }
    }
}

/// The display name of a wire run state.
pub fn run_state_name(s: i32) -> &'static str {
    PRun::try_from(s)
        .map(|s| s.as_str_name().trim_start_matches("RUN_STATE_"))
        .unwrap_or("UNKNOWN")
}

/// The display name of a wire task state.
pub fn task_state_name(s: i32) -> &'static str {
    PTask::try_from(s)
        .map(|s| s.as_str_name().trim_start_matches("TASK_STATE_"))
        .unwrap_or("UNKNOWN")
}
