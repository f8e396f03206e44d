//! Failures of S3 requests: which are worth another try, and the crate errors they become.

use crate::retry::{self, Retryable};
use crate::{Error, Result};
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use std::future::Future;
use std::io::ErrorKind;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Why one try of an operation failed.
#[derive(Debug)]
pub(super) enum Failure {
    NotFound,
    /// The object exists (HEAD found it, or a conditional write was refused).
    Exists,
    /// Worth trying again: the server may be restarting or overloaded.
    Transient(String),
    Fatal(ErrorKind, String),
    /// The object is larger than the reader takes.
    TooLarge {
        size: u64,
        max: u64,
    },
}

impl Failure {
    pub(super) fn from_sdk<E>(e: SdkError<E, HttpResponse>) -> Failure
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let message = DisplayErrorContext(&e).to_string();
        match &e {
            SdkError::ServiceError(s) => {
                let status = s.raw().status().as_u16();
                let code = s.err().code().unwrap_or_default();
                match (status, code) {
                    (404, _) | (_, "NoSuchKey" | "NotFound") => Failure::NotFound,
                    (412, _) | (_, "PreconditionFailed") => Failure::Exists,
                    (403, _) => Failure::Fatal(ErrorKind::PermissionDenied, message),
                    (408 | 429 | 500..=599, _)
                    | (_, "RequestTimeout" | "SlowDown" | "InternalError") => {
                        Failure::Transient(message)
                    }
                    _ => Failure::Fatal(ErrorKind::Other, message),
                }
            }
            SdkError::DispatchFailure(d) if d.is_user() => {
                Failure::Fatal(ErrorKind::InvalidInput, message)
            }
            SdkError::DispatchFailure(_)
            | SdkError::TimeoutError(_)
            | SdkError::ResponseError(_) => Failure::Transient(message),
            _ => Failure::Fatal(ErrorKind::InvalidInput, message),
        }
    }

    pub(super) fn into_error(self, location: String) -> Error {
        match self {
            Failure::NotFound => Error::NotFound(location),
            Failure::Exists => Error::AlreadyExists(location),
            Failure::TooLarge { size, max } => Error::TooLarge { size, max },
            Failure::Transient(m) => Error::Io {
                location,
                source: std::io::Error::new(ErrorKind::TimedOut, m),
            },
            Failure::Fatal(kind, m) => Error::Io {
                location,
                source: std::io::Error::new(kind, m),
            },
        }
    }
}

pub(super) type Try<T> = std::result::Result<T, Failure>;

/// Runs `op` until it succeeds, fails for good, or [`retry::S3`]'s delays add up to
/// `retry_for`; `op` is given whether an earlier try failed in a way that may have taken
/// effect. This is the only layer that retries S3 requests: the SDK's own retries are off.
pub(super) async fn retrying<T, F, Fut>(retry_for: Duration, location: &str, mut op: F) -> Result<T>
where
    F: FnMut(bool) -> Fut,
    Fut: Future<Output = Try<T>>,
{
    let retried = AtomicBool::new(false);
    (|| op(retried.load(Ordering::Relaxed)))
        .retry(retry::S3.for_at_most(retry_for).builder())
        .sleep(tokio::time::sleep)
        .when(|f| matches!(f, Failure::Transient(_)))
        .notify(|f, delay| {
            if let Failure::Transient(message) = f {
                tracing::warn!(%location, error = %message, ?delay, "s3 request failed, retrying");
            }
            retried.store(true, Ordering::Relaxed);
        })
        .await
        .map_err(|f| f.into_error(location.to_string()))
}
