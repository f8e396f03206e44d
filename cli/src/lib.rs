//! baton's command line and Rust client SDK: the gRPC client, the embedded single-node
//! cluster (`baton dev`) and the output formatting shared by the commands.

pub mod client;
pub mod embedded;
pub mod format;

pub use client::Client;
pub use embedded::{EmbeddedCluster, WorkerSpec};
