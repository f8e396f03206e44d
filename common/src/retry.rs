//! baton's one retry policy: exponential backoff with jitter (backon), named once per kind
//! of operation. Each operation is retried at one layer only, the one that knows whether a
//! failure is transient: the S3 result store for S3 requests (the SDK's own retries are
//! off), the etcd store for transactions, the dialers for connections. Callers of those
//! layers do not retry again.

use backon::BackoffBuilder;
pub use backon::{ExponentialBackoff, ExponentialBuilder, Retryable};
use std::time::Duration;

/// How an operation is retried: delays from `first` doubling to `max` (each with a random
/// jitter of up to itself), for at most `total` of delays in all (`None`: until the caller
/// stops).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub first: Duration,
    pub max: Duration,
    pub total: Option<Duration>,
}

impl Policy {
    /// Retries without end (the caller stops, for instance when its lease is gone).
    pub const fn endless(first: Duration, max: Duration) -> Self {
        Policy {
            first,
            max,
            total: None,
        }
    }

    /// The same policy, giving up once its delays add up to `total`.
    pub const fn for_at_most(self, total: Duration) -> Self {
        Policy {
            total: Some(total),
            ..self
        }
    }

    /// The backon builder of this policy, for `op.retry(policy.builder())`.
    pub fn builder(&self) -> ExponentialBuilder {
        let b = ExponentialBuilder::default()
            .with_min_delay(self.first)
            .with_max_delay(self.max)
            .with_jitter()
            .without_max_times();
        b.with_total_delay(self.total)
    }

    /// The delays of this policy, for loops that do more between tries than call again.
    pub fn delays(&self) -> ExponentialBackoff {
        self.builder().build()
    }
}

/// S3 requests that failed in a way worth another try (see the S3 store).
pub const S3: Policy = Policy::endless(Duration::from_millis(200), Duration::from_secs(2));
/// etcd transactions whose outcome is unknown: until known, or the lease is lost.
pub const ETCD: Policy = Policy::endless(Duration::from_millis(50), Duration::from_secs(1));
/// A replica's campaign for leadership after a failure.
pub const CAMPAIGN: Policy = Policy::endless(Duration::from_millis(300), Duration::from_secs(5));
/// A worker's connection to the schedulers: short, so that a worker finds a new leader
/// within half a second of its election (delays reach up to twice `max` with their
/// jitter): a failover's first dispatch waits for the workers to come back.
pub const DIAL: Policy = Policy::endless(Duration::from_millis(50), Duration::from_millis(200));
/// A worker a scheduler refused (a bad token, say): it tries again, slowly.
pub const REFUSED: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_with_jitter_and_stop_at_the_total() {
        let p = Policy::endless(Duration::from_millis(100), Duration::from_millis(800));
        let d: Vec<Duration> = p.delays().take(8).collect();
        assert_eq!(d.len(), 8, "endless");
        for (i, d) in d.iter().enumerate() {
            let base = Duration::from_millis(100 << i.min(3));
            assert!(
                *d >= base && *d <= base * 2,
                "delay {i}: {d:?} from {base:?}"
            );
        }
        let bounded = p.for_at_most(Duration::from_secs(2));
        let sum: Duration = bounded.delays().sum();
        assert!(sum <= Duration::from_secs(2), "{sum:?}");
        assert!(bounded.delays().count() >= 2);
    }

    #[tokio::test]
    async fn an_operation_is_retried_while_its_failure_is_transient() {
        let p = Policy::endless(Duration::from_millis(1), Duration::from_millis(2));
        let tries = std::sync::atomic::AtomicU32::new(0);
        let r: Result<u32, &str> = (|| async {
            match tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
                0 | 1 => Err("transient"),
                2 => Err("fatal"),
                n => Ok(n),
            }
        })
        .retry(p.builder())
        .sleep(tokio::time::sleep)
        .when(|e| *e == "transient")
        .await;
        assert_eq!(r, Err("fatal"));
        assert_eq!(tries.load(std::sync::atomic::Ordering::SeqCst), 3);
    }
}
