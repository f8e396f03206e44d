//! The worker's error type: bad configuration, an unreachable or misbehaving scheduler, and
//! result store failures. Task failures are not errors here: they travel as
//! [`crate::task::TaskError`] inside a `Finished` message.

/// Errors raised by the worker daemon.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is invalid; `key` names it as the flag spells it.
    #[error("invalid configuration `{key}`: {message}")]
    Config { key: &'static str, message: String },
    /// No connection to a scheduler could be made.
    #[error("cannot connect to scheduler {address}: {message}")]
    Connect { address: String, message: String },
    /// The scheduler answered, but not as the protocol says.
    #[error("protocol error from scheduler {address}: {message}")]
    Protocol { address: String, message: String },
    /// The result store named by the scheduler cannot be opened.
    #[error("result store: {0}")]
    Store(#[from] baton_common::Error),
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
