//! baton's wire protocol (`baton.v1`): the generated messages and services, nothing else.

#![allow(clippy::large_enum_variant, clippy::doc_lazy_continuation)]

/// The `baton.v1` package.
pub mod v1 {
    tonic::include_proto!("baton.v1");
}

pub use v1::*;

pub mod limits;

/// The encoded `google.protobuf.FileDescriptorSet` of `baton/v1/baton.proto` (with source
/// info, so comments reach reflection clients), for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/baton_descriptor.bin"));
