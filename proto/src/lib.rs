//! baton's wire protocol (`baton.v1`): the generated messages and services, nothing else.

#![allow(clippy::large_enum_variant, clippy::doc_lazy_continuation)]

/// The `baton.v1` package.
pub mod v1 {
    tonic::include_proto!("baton.v1");
}

pub use v1::*;
