//! The storage integration tests, as one test binary: the etcd state store and the S3
//! result store against real servers (etcd, s3s-fs), and the testkit's own etcd cluster and
//! partition proxy they rely on. No scheduler runs here; only the `baton` CLI, reading S3.

mod etcd_cluster;
mod etcd_store;
mod s3_store;
