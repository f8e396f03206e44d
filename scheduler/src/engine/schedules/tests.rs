//! The schedules part on its own: activation, due ticks by catch-up policy, progress.

use super::*;
use baton_common::schedule::CatchUp;

/// 2023-11-14T22:13:20Z, a multiple of a minute plus 20 s.
const T: i64 = 1_700_000_000_000;
const MIN: i64 = 60_000;

fn every_minute(catch_up: CatchUp) -> ScheduleSpec {
    ScheduleSpec {
        cron: "* * * * *".into(),
        timezone: String::new(),
        catch_up,
    }
}

fn key() -> FlowKey {
    ("p".into(), "f".into())
}

/// The first minute boundary after `t`.
fn next_minute(t: i64) -> i64 {
    (t / MIN + 1) * MIN
}

#[test]
fn a_schedule_starts_off_unless_activated_and_fires_each_tick_once() {
    let mut s = Schedules::default();
    let rec = s
        .register(key(), Some(every_minute(CatchUp::Latest)), true, false, T)
        .expect("a record");
    assert!(!rec.active);
    assert_eq!(s.next_tick(), None);
    assert!(s.fire(T + 10 * MIN).is_empty());

    let (rec, view) = s.set_active(&key(), true, T).expect("a schedule");
    assert!(rec.active && view.active);
    assert_eq!(
        rec.through_ms, T,
        "ticks before it was switched on are not missed"
    );
    let tick = next_minute(T);
    assert_eq!(s.next_tick(), Some(tick));
    assert!(s.fire(tick - 1).is_empty());
    let fired = s.fire(tick);
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].ticks, vec![tick]);
    assert!(!fired[0].skipped);
    assert_eq!(fired[0].record.last_tick_ms, tick);
    assert_eq!(fired[0].record.through_ms, tick);
    assert!(s.fire(tick).is_empty(), "a tick fires once");
    assert_eq!(s.next_tick(), Some(tick + MIN));
    assert_eq!(s.view(&key()).map(|v| v.last_tick_ms), Some(tick));
}

#[test]
fn missed_ticks_follow_the_catch_up_policy() {
    for (policy, expected) in [(CatchUp::Latest, 1), (CatchUp::All, 10), (CatchUp::None, 0)] {
        let mut s = Schedules::default();
        s.register(key(), Some(every_minute(policy)), true, true, T);
        // No leader for ten minutes: ten ticks were missed.
        let now = next_minute(T) + 9 * MIN + 30_000;
        let fired = s.fire(now);
        assert_eq!(fired.len(), 1, "{policy:?}");
        assert_eq!(
            fired[0].ticks.len(),
            expected,
            "{policy:?}: {:?}",
            fired[0].ticks
        );
        assert_eq!(fired[0].skipped, expected < 10, "{policy:?}");
        assert_eq!(fired[0].record.through_ms, now);
        assert!(s.next_tick().is_some_and(|t| t > now));
    }
}

#[test]
fn switching_off_and_re_registering() {
    let mut s = Schedules::default();
    s.register(key(), Some(every_minute(CatchUp::All)), true, true, T);
    let (rec, view) = s.set_active(&key(), false, T + MIN).expect("a schedule");
    assert!(!rec.active);
    assert_eq!(view.next_tick_ms, 0);
    assert_eq!(s.next_tick(), None);
    // Switched on again much later: the ticks while it was off are not caught up.
    let later = T + 60 * MIN;
    let (rec, _) = s.set_active(&key(), true, later).expect("a schedule");
    assert_eq!(rec.through_ms, later);
    assert_eq!(s.next_tick(), Some(next_minute(later)));
    // The same definition registered again keeps the schedule on; a new version without
    // `activate` switches it off; one without a schedule removes it.
    let rec = s
        .register(key(), Some(every_minute(CatchUp::All)), false, false, later)
        .expect("a record");
    assert!(rec.active);
    let rec = s
        .register(key(), Some(every_minute(CatchUp::All)), true, false, later)
        .expect("a record");
    assert!(!rec.active);
    assert_eq!(s.register(key(), None, true, false, later), None);
    assert!(s.view(&key()).is_none());
    assert!(s.set_active(&key(), true, later).is_none());
}
