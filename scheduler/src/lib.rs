//! baton's scheduler: the DAG engine, dispatch, worker sessions, the state stores and the
//! client and worker gRPC services.

pub mod actor;
#[cfg(test)]
mod actor_tests;
pub mod alloc;
pub mod auth;
pub mod config;
pub mod engine;
pub mod error;
pub mod gc;
pub mod leadership;
mod load;
pub mod logs;
pub mod metrics;
pub mod server;
pub mod service;
pub mod shed;
pub mod store;
pub mod tls;
pub mod web;

pub use config::SchedulerConfig;
pub use error::{Error, Result};
pub use server::serve;
