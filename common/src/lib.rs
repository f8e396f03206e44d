//! baton's shared domain: flow specs and their validation, run and task states, result
//! references and stores, errors, time and telemetry helpers. No networking servers.

pub mod error;
pub mod flow;
pub mod ids;
pub mod metrics;
pub mod result_store;
pub mod retry;
pub mod schedule;
pub mod shutdown;
pub mod state;
pub mod telemetry;
pub mod text;
pub mod time;
pub mod token;
pub mod traces;

pub use error::{Error, Result};
