//! Identifier newtypes and the key of one attempt of one task run.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A flow run's id.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RunId(pub String);

impl RunId {
    /// A fresh random id.
    pub fn generate() -> Self {
        RunId(uuid::Uuid::new_v4().simple().to_string()[..16].to_string())
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A worker's id.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WorkerId(pub String);

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Map index of an unmapped task run.
pub const UNMAPPED: i64 = -1;

/// One attempt of one task run: `(run, task, map index, attempt)`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AttemptKey {
    pub run: String,
    pub task: String,
    pub map_index: i64,
    pub attempt: u32,
}

impl AttemptKey {
    /// The stem of this attempt's keys: `<run>/<task>/attempt-<n>` for an unmapped task,
    /// `<run>/<task>/<index>.attempt-<n>` for a mapped one (one folder per task, not per
    /// task run, so that a wide fan-out does not create a folder per result).
    fn stem(&self) -> String {
        if self.map_index == UNMAPPED {
            format!("{}/{}/attempt-{}", self.run, self.task, self.attempt)
        } else {
            format!(
                "{}/{}/{}.attempt-{}",
                self.run, self.task, self.map_index, self.attempt
            )
        }
    }

    /// The key under which this attempt's result is written; never reused.
    pub fn result_key(&self) -> String {
        format!("results/{}.json", self.stem())
    }

    /// A key for this attempt's result when its worker ran it ahead of the scheduler: unique
    /// to that run ahead (the task run may be dispatched as this attempt after all, if the
    /// scheduler does not take what was run ahead).
    pub fn ahead_result_key(&self) -> String {
        format!(
            "results/{}.ahead-{}.json",
            self.stem(),
            uuid::Uuid::new_v4().simple()
        )
    }

    /// The key of chunk `chunk` (from 0) of this attempt's log lines; never reused.
    pub fn log_key(&self, chunk: u32) -> String {
        format!("logs/{}.{chunk}.log", self.stem())
    }

    /// The folder under which this attempt writes its artifacts.
    pub fn artifact_prefix(&self) -> String {
        format!("artifacts/{}", self.stem())
    }
}

impl fmt::Display for AttemptKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.map_index == UNMAPPED {
            write!(f, "{}/{}#{}", self.run, self.task, self.attempt)
        } else {
            write!(
                f,
                "{}/{}[{}]#{}",
                self.run, self.task, self.map_index, self.attempt
            )
        }
    }
}

impl From<&baton_proto::AttemptKey> for AttemptKey {
    fn from(k: &baton_proto::AttemptKey) -> Self {
        AttemptKey {
            run: k.run_id.clone(),
            task: k.task.clone(),
            map_index: k.map_index,
            attempt: k.attempt,
        }
    }
}

impl From<&AttemptKey> for baton_proto::AttemptKey {
    fn from(k: &AttemptKey) -> Self {
        baton_proto::AttemptKey {
            run_id: k.run.clone(),
            task: k.task.clone(),
            map_index: k.map_index,
            attempt: k.attempt,
        }
    }
}
