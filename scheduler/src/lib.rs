//! baton's scheduler: the DAG engine, dispatch, worker sessions, the state stores and the
//! client and worker gRPC services.

pub mod engine;
pub mod store;
