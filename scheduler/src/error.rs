//! The scheduler's error type and its mapping to gRPC status codes.

use crate::engine::EngineError;
use crate::store::StoreError;

/// Errors of the scheduler's services and start-up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Common(#[from] baton_common::Error),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("the scheduler is shutting down")]
    ShuttingDown,
    #[error("transport error: {0}")]
    Transport(String),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// A bug or an impossible state (a record that cannot be encoded).
    #[error("internal error: {0}")]
    Internal(String),
}

/// Result alias for [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        use baton_common::Error as C;
        let msg = e.to_string();
        match e {
            Error::Engine(EngineError::NotFound(_)) => tonic::Status::not_found(msg),
            Error::Engine(EngineError::InvalidArgument(_)) => tonic::Status::invalid_argument(msg),
            Error::Engine(EngineError::FailedPrecondition(_)) => {
                tonic::Status::failed_precondition(msg)
            }
            Error::Common(C::InvalidFlow(_) | C::InvalidArgument(_)) => {
                tonic::Status::invalid_argument(msg)
            }
            Error::Common(C::NotFound(_)) => tonic::Status::not_found(msg),
            Error::Common(C::AlreadyExists(_)) => tonic::Status::already_exists(msg),
            Error::Common(C::TooLarge { .. }) => tonic::Status::resource_exhausted(msg),
            Error::ShuttingDown
            | Error::Store(StoreError::Fenced { .. } | StoreError::Unavailable(_)) => {
                tonic::Status::unavailable(msg)
            }
            Error::Config(_) => tonic::Status::invalid_argument(msg),
            Error::Common(C::Io { .. })
            | Error::Store(_)
            | Error::Transport(_)
            | Error::Io(_)
            | Error::Internal(_) => tonic::Status::internal(msg),
        }
    }
}
