//! baton's command line: the embedded single-node cluster (`baton dev`) and the output
//! formatting shared by the commands. The gRPC client is the `baton-client` crate (the Rust
//! SDK, which depends on neither the scheduler nor the worker), re-exported as `client`.

pub use baton_client as client;
pub mod embedded;
pub mod format;
pub mod progress;

pub use client::Client;
pub use embedded::{EmbeddedCluster, WorkerSpec};
