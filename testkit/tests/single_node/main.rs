//! The single-node integration tests, as one test binary: a scheduler and its workers run
//! as real processes of the workspace's own binaries, driven through the client, the `baton`
//! CLI and gRPC; one module per area. An area's cluster variant (its feature across a leader
//! failover) stays in the area's module and holds [`support::serial`], so that this binary
//! never runs two HA clusters at once.

#[path = "../support/mod.rs"]
mod support;

mod ahead;
mod auth;
mod bad_input;
mod browser;
mod caching;
mod cli;
mod containers;
mod dev;
mod durability;
mod faults;
mod flow_of_flows;
mod flows;
mod gc;
mod gpus;
mod grpc_meta;
mod latency;
mod lifecycle;
mod limits;
mod logs;
mod metrics;
mod python_client;
mod retries;
mod ridge_sweep;
mod schedules;
mod secrets;
mod shedding;
mod tls;
mod traces;
mod values;
mod web;
