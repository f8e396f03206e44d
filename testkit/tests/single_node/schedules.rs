//! Cron schedules through the real binaries: a schedule ticking every second starts runs
//! only while it is on; each run's task reads its scheduled start; a scheduler killed and
//! restarted (single node) or a leader killed (cluster) in the middle neither misses nor
//! doubles a tick (`catch_up: all`).

use crate::support;
use baton_testkit::baton_cli as baton;
use baton_testkit::ha::HaConfig;
use baton_testkit::Cluster;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// Ticks every second; its task appends "SCHEDULED_START RUN_ID" to `log`.
fn ticker(log: &Path) -> String {
    format!(
        r#"
name: ticker
project: sched
labels: [local]
schedule: {{cron: "* * * * * *", catch_up: all}}
tasks:
  - name: stamp
    process:
      command: sh
      args: ["-c", "echo \"$BATON_SCHEDULED_START_MS $BATON_RUN_ID\" >> {}; echo null"]
"#,
        log.display()
    )
}

/// The ticks seen in `log`, each with the runs that ran for it.
fn ticks(log: &Path) -> BTreeMap<i64, Vec<String>> {
    let mut out: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for line in std::fs::read_to_string(log).unwrap_or_default().lines() {
        let mut parts = line.split_whitespace();
        if let (Some(t), Some(run)) = (parts.next(), parts.next()) {
            if let Ok(t) = t.parse::<i64>() {
                let runs = out.entry(t).or_default();
                if !runs.iter().any(|r| r == run) {
                    runs.push(run.to_string());
                }
            }
        }
    }
    out
}

/// Every tick from the first to the last once, each by one run, on whole seconds.
fn assert_every_tick_once(log: &Path) -> usize {
    let seen = ticks(log);
    let keys: Vec<i64> = seen.keys().copied().collect();
    assert!(keys.len() >= 2, "ticks: {keys:?}");
    for w in keys.windows(2) {
        assert_eq!(
            w[1] - w[0],
            1_000,
            "a missed tick between {} and {}",
            w[0],
            w[1]
        );
    }
    for (t, runs) in &seen {
        assert_eq!(t % 1_000, 0, "ticks fall on whole seconds");
        assert_eq!(runs.len(), 1, "tick {t} was run by {runs:?}");
    }
    keys.len()
}

async fn sleep_s(s: f64) {
    tokio::time::sleep(Duration::from_secs_f64(s)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_runs_only_while_on_and_survives_a_scheduler_restart() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(&[]).await?;
    cluster.add_worker("sched-w", "local", 4)?;
    let url = cluster.url();
    let log = cluster.dir.path().join("ticks.log");
    let file = cluster.dir.path().join("ticker.yaml");
    std::fs::write(&file, ticker(&log))?;
    let file = file.display().to_string();

    let (code, out, err) = baton(&url, &["flow", "register", &file])?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("sched/ticker v1"), "{out}");
    assert!(out.contains("off"), "registered inactive: {out}");
    sleep_s(2.5).await;
    assert!(ticks(&log).is_empty(), "no run while the schedule is off");

    let (code, out, err) = baton(&url, &["schedule", "on", "sched/ticker"])?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("on"), "{out}");
    sleep_s(3.5).await;
    assert!(
        ticks(&log).len() >= 2,
        "{:?}\n{}",
        ticks(&log),
        cluster.logs()
    );

    // kill -9 in the middle; the restarted scheduler catches up on the ticks it missed.
    cluster.restart_scheduler().await?;
    sleep_s(3.5).await;
    let (code, out, err) = baton(&url, &["schedule", "off", "sched/ticker"])?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("off"), "{out}");
    sleep_s(1.5).await;
    let n = assert_every_tick_once(&log);
    assert!(n >= 7, "{n} ticks in about 8 s on:\n{}", cluster.logs());
    sleep_s(2.5).await;
    assert_eq!(ticks(&log).len(), n, "no run after the schedule is off");

    let (code, out, _) = baton(&url, &["flow", "ls", "--json"])?;
    assert_eq!(code, 0);
    let rows: serde_json::Value = serde_json::from_str(&out)?;
    let s = &rows[0]["schedule"];
    assert_eq!(s["cron"], "* * * * * *");
    assert_eq!(s["active"], false);
    assert_eq!(s["catch_up"], "all");
    let last = ticks(&log).keys().last().copied().unwrap_or(0);
    assert_eq!(s["last_tick_ms"], last);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_kill_neither_misses_nor_doubles_a_tick() -> anyhow::Result<()> {
    let _serial = support::serial().await;
    let mut c = support::cluster(HaConfig::default(), &[("sched-hw", "local", 4)]).await?;
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("ticks.log");
    let file = dir.path().join("ticker.yaml");
    std::fs::write(&file, ticker(&log))?;
    let file = file.display().to_string();
    let all = c.urls().join(",");

    let (code, out, err) = baton(&all, &["flow", "register", "--schedule-active", &file])?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("on"), "{out}");
    sleep_s(3.5).await;
    let (old, epoch) = c.wait_leader(Duration::from_secs(10), None).await?;
    c.kill9_scheduler(old);
    let (_, new_epoch) = c.wait_leader(Duration::from_secs(30), Some(old)).await?;
    assert!(new_epoch > epoch);
    sleep_s(3.0).await;
    let (code, _, err) = baton(&all, &["schedule", "off", "sched/ticker"])?;
    assert_eq!(code, 0, "{err}");
    sleep_s(1.5).await;
    let n = assert_every_tick_once(&log);
    // About 3.5 s before the kill, a lease (4 s) to take over, 3 s after: every second.
    assert!(n >= 9, "{n} ticks:\n{}", c.logs());
    Ok(())
}
