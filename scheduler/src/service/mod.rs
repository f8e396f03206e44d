//! The gRPC services: thin adapters that decode requests, hand commands to the engine's
//! actor and map its errors to statuses.

mod admin;
pub mod bounds;
mod flow;
#[cfg(test)]
mod fuzz;
pub mod log_budget;
mod reports;
#[cfg(test)]
mod reports_tests;
mod worker;

pub use flow::FlowApi;
pub use worker::WorkerApi;

/// Largest gRPC message accepted or sent.
pub use baton_proto::limits::MAX_MESSAGE_BYTES;
