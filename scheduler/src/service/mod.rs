//! The gRPC services: thin adapters that decode requests, hand commands to the engine's
//! actor and map its errors to statuses.

mod admin;
mod flow;
mod worker;

pub use flow::FlowApi;
pub use worker::WorkerApi;

/// Largest gRPC message accepted or sent.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
