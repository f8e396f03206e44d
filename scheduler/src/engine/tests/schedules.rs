//! Cron schedules: runs only while a schedule is on, one per tick with the tick as the
//! scheduled start (readable by tasks), none missed or doubled across restarts, and the
//! catch-up policies for ticks missed while no leader ran.

use super::*;

/// Ticks every second; its task echoes the run's scheduled start.
const EVERY_SECOND: &str = r#"
name: ticker
schedule: {cron: "* * * * * *", catch_up: all}
tasks:
  - name: when
    builtin: echo
    inputs:
      at: {context: scheduled_start_ms}
"#;

/// The seed's schedule: every minute, default catch-up (the latest missed tick).
const EVERY_MINUTE: &str = r#"
name: minutely
schedule: {cron: "*/1 * * * *"}
tasks:
  - name: a
    builtin: noop
"#;

/// Scheduled starts of every run, oldest first.
fn scheduled(c: &VirtualCluster) -> Vec<i64> {
    let mut v: Vec<i64> = c
        .engine
        .list_runs(0)
        .iter()
        .map(|r| r.scheduled_start_ms)
        .collect();
    v.sort();
    v
}

/// Steps the clock `ms` forward in steps of `step` ms.
fn tick_for(c: &mut VirtualCluster, ms: i64, step: i64) {
    let mut left = ms;
    while left > 0 {
        c.advance(step.min(left));
        left -= step;
    }
}

fn schedule(c: &VirtualCluster, flow: &str) -> pb::Schedule {
    c.engine
        .schedule_view("default", flow)
        .expect("the flow has a schedule")
}

#[test]
fn a_schedule_runs_only_while_it_is_on_with_the_tick_as_scheduled_start() {
    let mut c = VirtualCluster::new();
    c.connect("w", &[], 8, 0);
    let (v, _) = c.register(EVERY_SECOND);
    assert_eq!(v, 1);
    assert!(!schedule(&c, "ticker").active, "registered inactive");
    tick_for(&mut c, 5_000, 250);
    assert!(scheduled(&c).is_empty(), "no run while off");

    let on = c
        .engine
        .set_schedule("default", "ticker", true, c.now)
        .expect("switched on");
    assert!(on.active);
    assert!(on.next_tick_ms > c.now && on.next_tick_ms <= c.now + 1_000);
    let first = on.next_tick_ms;
    tick_for(&mut c, 3_000, 250);
    c.run_to_end();
    let ticks = scheduled(&c);
    assert_eq!(ticks, vec![first, first + 1_000, first + 2_000]);
    for r in c.engine.list_runs(0) {
        assert_eq!(r.trigger, "schedule");
        assert_eq!(run_state(&r), pb::RunState::Completed);
        let t = c.task(&r.id, "when", -1);
        assert_eq!(
            value_of(&t),
            json!({"at": r.scheduled_start_ms}),
            "the task reads its run's scheduled start"
        );
    }
    assert_eq!(schedule(&c, "ticker").last_tick_ms, first + 2_000);

    c.engine
        .set_schedule("default", "ticker", false, c.now)
        .expect("switched off");
    c.drain();
    tick_for(&mut c, 5_000, 250);
    assert_eq!(scheduled(&c).len(), 3, "no run after it is switched off");
}

#[test]
fn restarts_neither_miss_nor_double_a_tick() {
    let mut c = VirtualCluster::new();
    c.connect("w", &[], 8, 0);
    c.register_with(EVERY_SECOND, true);
    tick_for(&mut c, 3_000, 200);
    // The leader dies; the next one takes over 4.5 s later and catches up (`all`).
    c.restart();
    c.now += 4_500;
    c.step();
    tick_for(&mut c, 2_000, 200);
    let ticks = scheduled(&c);
    assert_eq!(ticks.len(), 9, "{ticks:?}");
    for w in ticks.windows(2) {
        assert_eq!(
            w[1] - w[0],
            1_000,
            "consecutive seconds, none missed or doubled"
        );
    }

    // A leader that started a tick's run but whose schedule progress did not land (another
    // transaction): the next leader fires that tick again and finds the run by its key.
    let before = c
        .store
        .get("sched/default/ticker")
        .cloned()
        .expect("progress");
    c.advance(1_000);
    assert_eq!(scheduled(&c).len(), 10);
    c.store.insert("sched/default/ticker".into(), before);
    c.restart();
    c.step();
    let ticks = scheduled(&c);
    assert_eq!(
        ticks.len(),
        10,
        "the re-fired tick is not doubled: {ticks:?}"
    );
}

#[test]
fn the_default_catch_up_runs_the_latest_missed_tick_once() {
    let mut c = VirtualCluster::new();
    c.connect("w", &[], 8, 0);
    c.register_with(EVERY_MINUTE, true);
    assert_eq!(schedule(&c, "minutely").catch_up, "latest");
    c.restart();
    // Ten minutes and a half without a leader: ten ticks missed.
    c.now += 10 * 60_000 + 30_000;
    c.step();
    let ticks = scheduled(&c);
    assert_eq!(
        ticks.len(),
        1,
        "only the latest missed tick runs: {ticks:?}"
    );
    assert_eq!(ticks[0] % 60_000, 0);
    assert!(c.now - ticks[0] >= 30_000 && c.now - ticks[0] < 90_000);
    // Then it goes on on time.
    tick_for(&mut c, 60_000, 1_000);
    assert_eq!(scheduled(&c).len(), 2);
}

#[test]
fn registering_again_keeps_or_resets_the_schedule_like_prefect() {
    let mut c = VirtualCluster::new();
    c.register_with(EVERY_MINUTE, true);
    assert!(schedule(&c, "minutely").active);
    // The same definition again, without switching on: left on.
    c.register(EVERY_MINUTE);
    assert!(schedule(&c, "minutely").active);
    // A new version registers its schedule as asked (off).
    let (v, new) = c.register(&EVERY_MINUTE.replace("*/1 * * * *", "*/5 * * * *"));
    assert_eq!((v, new), (2, true));
    let s = schedule(&c, "minutely");
    assert!(!s.active);
    assert_eq!(s.cron, "*/5 * * * *");
    assert_eq!(s.next_tick_ms, 0);
    // A version without a schedule removes it.
    c.register("name: minutely\ntasks:\n  - name: a\n    builtin: noop\n");
    assert!(c.engine.schedule_view("default", "minutely").is_none());
    assert!(!c.store.contains_key("sched/default/minutely"));
    let e = c
        .engine
        .set_schedule("default", "minutely", true, c.now)
        .expect_err("no schedule");
    assert!(matches!(e, EngineError::FailedPrecondition(_)), "{e:?}");
}
