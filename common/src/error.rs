//! The crate's error type.

/// Errors raised by the shared domain code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flow file or definition is invalid; the message names the task and field.
    #[error("invalid flow: {0}")]
    InvalidFlow(String),
    /// An argument is invalid (a parameter value, a location, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Something asked for does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// An object that must never be overwritten already exists.
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// An object is larger than a reader takes.
    #[error("the object is {size} bytes, over the limit of {max} bytes")]
    TooLarge { size: u64, max: u64 },
    /// An I/O failure in a store.
    #[error("store i/o error at {location}: {source}")]
    Io {
        location: String,
        #[source]
        source: std::io::Error,
    },
}

/// Result alias for [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
