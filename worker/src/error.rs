//! The worker's error type. Only configuration errors stop the daemon: an unreachable or
//! misbehaving scheduler is retried (and logged), and task failures travel as
//! [`crate::task::TaskError`] inside a `Finished` message.

/// Errors raised by the worker daemon.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is invalid; `key` names it as its flag spells it.
    #[error("invalid configuration `{key}`: {message}")]
    Config { key: &'static str, message: String },
}

impl Error {
    /// A configuration error naming `key`.
    pub fn config(key: &'static str, message: impl Into<String>) -> Self {
        Error::Config {
            key,
            message: message.into(),
        }
    }
}

/// Result alias for [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
