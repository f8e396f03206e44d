//! baton's worker daemon: the connection to the leader, task executors (built-in and
//! process), the built-in task library and result upload.

pub mod builtins;
pub mod config;
pub mod connection;
pub mod error;
pub mod executor;
pub mod gpu;
pub mod health;
pub mod metrics;
pub mod secrets;
pub mod shim;
pub mod task;

pub use config::WorkerConfig;
pub use connection::run;
pub use error::{Error, Result};
