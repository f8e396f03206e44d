//! Which scheduler replica to dial next, and how long to wait before dialling: the leader a
//! refusing replica named comes first, otherwise the configured replicas are tried in turn,
//! with the one retry policy's backoff (`baton_common::retry::DIAL`) between failures.

use baton_common::retry;
use rand::Rng;
use std::time::Duration;

/// Shortest reconnection delay, after the first failure.
pub(super) const MIN_BACKOFF: Duration = retry::DIAL.first;
/// Longest reconnection delay (the policy's cap with its jitter of up to as much again):
/// short, so that a worker finds a new leader well within its lease.
pub(super) const MAX_BACKOFF: Duration = retry::DIAL.max.saturating_mul(2);
/// Leader hints followed in a row at once, before hints wait their turn like any failure
/// (so that two replicas naming each other cannot make the worker spin).
const QUICK_HOPS: u32 = 2;

/// Picks the address of the next dial.
pub(super) struct Dialer {
    replicas: Vec<String>,
    turn: usize,
    /// The leader named by the last refusal.
    hint: Option<String>,
    /// Hints followed at once since the last welcome.
    hops: u32,
}

impl Dialer {
    pub(super) fn new(replicas: Vec<String>) -> Self {
        Dialer {
            replicas,
            turn: 0,
            hint: None,
            hops: 0,
        }
    }

    /// The leader named by the last refusal, else the next configured replica.
    pub(super) fn next(&mut self) -> String {
        if let Some(hint) = self.hint.take() {
            return hint;
        }
        let n = self.replicas.len().max(1);
        let address = self
            .replicas
            .get(self.turn % n)
            .cloned()
            .unwrap_or_default();
        self.turn = self.turn.wrapping_add(1);
        address
    }

    /// Records that the dial to `dialed` ended, naming `leader` or not; true when the
    /// next dial may go at once (a fresh hint to another replica), false when it waits for
    /// the backoff.
    pub(super) fn lost(&mut self, dialed: &str, leader: Option<String>) -> bool {
        let Some(leader) = leader else {
            return false;
        };
        let quick = leader != dialed && self.hops < QUICK_HOPS;
        if quick {
            self.hops += 1;
        }
        self.hint = Some(leader);
        quick
    }

    /// A leader welcomed the worker: hints may be followed at once again.
    pub(super) fn welcomed(&mut self) {
        self.hops = 0;
    }
}

/// The reconnection delays: the one retry policy's ([`retry::DIAL`]), started again after a
/// welcome, and [`retry::REFUSED`] apart after a refusal.
pub(super) struct Backoff {
    delays: retry::ExponentialBackoff,
    cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            delays: retry::DIAL.delays(),
            cap: MAX_BACKOFF,
        }
    }
}

impl Backoff {
    /// The next delay: from [`MIN_BACKOFF`] growing to at most [`MAX_BACKOFF`].
    pub(super) fn next(&mut self) -> Duration {
        self.delays.next().unwrap_or(self.cap).min(self.cap)
    }

    /// The delay before following a leader hint: short, and the backoff does not grow.
    pub(super) fn quick(&self) -> Duration {
        let cap_ms = u64::try_from(MIN_BACKOFF.as_millis() / 2).unwrap_or(u64::MAX);
        Duration::from_millis(rand::rng().random_range(0..=cap_ms))
    }

    pub(super) fn reset(&mut self) {
        *self = Backoff::default();
    }

    /// From now on the longest delays (the scheduler refused this worker).
    pub(super) fn saturate(&mut self) {
        self.delays = retry::Policy::endless(retry::REFUSED, retry::REFUSED).delays();
        self.cap = retry::REFUSED.saturating_mul(2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dialer() -> Dialer {
        Dialer::new(vec![
            "http://a:1".into(),
            "http://b:1".into(),
            "http://c:1".into(),
        ])
    }

    #[test]
    fn replicas_are_tried_in_turn() {
        let mut d = dialer();
        let order: Vec<String> = (0..4)
            .map(|_| {
                let a = d.next();
                assert!(!d.lost(&a, None));
                a
            })
            .collect();
        assert_eq!(
            order,
            ["http://a:1", "http://b:1", "http://c:1", "http://a:1"]
        );
    }

    #[test]
    fn the_named_leader_is_dialled_first_then_the_turn_goes_on() {
        let mut d = dialer();
        let a = d.next();
        assert!(d.lost(&a, Some("http://leader:9".into())));
        assert_eq!(d.next(), "http://leader:9");
        assert!(!d.lost("http://leader:9", None));
        assert_eq!(d.next(), "http://b:1");
    }

    #[test]
    fn hints_are_followed_at_once_only_a_few_times_in_a_row() {
        let mut d = dialer();
        // Two replicas naming each other: followed quickly twice, then with backoff.
        assert!(d.lost("http://a:1", Some("http://b:1".into())));
        assert!(d.lost("http://b:1", Some("http://a:1".into())));
        assert!(!d.lost("http://a:1", Some("http://b:1".into())));
        assert_eq!(d.next(), "http://b:1");
        // A replica naming itself (a leader still loading) waits for the backoff.
        d.welcomed();
        assert!(!d.lost("http://b:1", Some("http://b:1".into())));
        assert!(d.lost("http://b:1", Some("http://c:1".into())));
    }

    #[test]
    fn backoff_grows_with_jitter_up_to_the_cap() {
        let mut b = Backoff::default();
        let first = b.next();
        assert!(
            first >= MIN_BACKOFF && first <= MIN_BACKOFF * 2,
            "{first:?}"
        );
        for _ in 0..50 {
            assert!(b.next() <= MAX_BACKOFF);
        }
        b.reset();
        assert!(b.next() <= MIN_BACKOFF * 2);
        assert!(b.quick() <= MIN_BACKOFF);
        b.saturate();
        assert!(b.next() >= retry::REFUSED);
    }
}
