//! The cluster fault tests, as one test binary: three scheduler replicas on a three-member
//! etcd cluster with results in S3 ([`baton_testkit::ha::HaCluster`]), with faults of the
//! leader, etcd, S3, the network and the workers. Every test holds [`support::serial`]: a
//! cluster is heavy and its leases are timing-sensitive, so one runs at a time.

#[path = "../support/mod.rs"]
mod support;

mod chaos;
mod etcd;
mod failover;
mod gc;
mod partitions;
mod workers;
