//! Cron schedules: parsing a cron expression in a time zone and finding its ticks.

use crate::{Error, Result};
use croner::parser::{CronParser, Seconds};
use croner::Cron;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// What happens to ticks that passed while no scheduler was leading (or the schedule's
/// leader was late by more than [`MISFIRE_GRACE_MS`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// Run only the latest missed tick, once.
    #[default]
    Latest,
    /// Run every missed tick (at most [`MAX_CATCH_UP`] of them).
    All,
    /// Skip missed ticks.
    None,
}

impl CatchUp {
    pub fn name(self) -> &'static str {
        match self {
            CatchUp::Latest => "latest",
            CatchUp::All => "all",
            CatchUp::None => "none",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "" | "latest" => Ok(CatchUp::Latest),
            "all" => Ok(CatchUp::All),
            "none" => Ok(CatchUp::None),
            other => Err(Error::InvalidFlow(format!(
                "schedule.catch_up: `{other}` is not one of latest, all, none"
            ))),
        }
    }
}

/// A tick noticed at most this late is on time; later ones are missed.
pub const MISFIRE_GRACE_MS: i64 = 5_000;
/// The most missed ticks `catch_up: all` runs at once.
pub const MAX_CATCH_UP: usize = 1_000;

/// A parsed cron expression with its time zone.
#[derive(Clone, Debug)]
pub struct CronSchedule {
    cron: Cron,
    tz: TimeZone,
}

impl CronSchedule {
    /// Parses a standard 5-field expression (or 6 fields, seconds first) in `timezone`
    /// (an IANA name; empty for UTC).
    pub fn parse(expr: &str, timezone: &str) -> Result<Self> {
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(expr.trim())
            .map_err(|e| Error::InvalidFlow(format!("schedule.cron: `{expr}`: {e}")))?;
        let tz = if timezone.is_empty() || timezone == "UTC" {
            TimeZone::UTC
        } else {
            TimeZone::get(timezone)
                .map_err(|e| Error::InvalidFlow(format!("schedule.timezone: `{timezone}`: {e}")))?
        };
        Ok(CronSchedule { cron, tz })
    }

    /// The first tick strictly after `after_ms` (unix ms), if any.
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        let ts = Timestamp::from_millisecond(after_ms).ok()?;
        let zoned = ts.to_zoned(self.tz.clone());
        let next = self.cron.find_next_occurrence(&zoned, false).ok()?;
        Some(next.timestamp().as_millisecond())
    }

    /// The ticks in `(after_ms, until_ms]`, the latest `max` of them, in order.
    pub fn ticks_between(&self, after_ms: i64, until_ms: i64, max: usize) -> Vec<i64> {
        let mut out = std::collections::VecDeque::new();
        let mut t = after_ms;
        // Bounded: a seconds schedule missed for a day has 86,400 ticks.
        for _ in 0..1_000_000 {
            match self.next_after(t) {
                Some(n) if n <= until_ms => {
                    if out.len() == max {
                        out.pop_front();
                    }
                    out.push_back(n);
                    t = n;
                }
                _ => break,
            }
        }
        out.into()
    }
}

/// The ticks to run when the scheduler looks at `now_ms` and the last tick run was
/// `last_ms`: on-time ticks, and missed ones as `catch_up` says.
pub fn due_ticks(s: &CronSchedule, catch_up: CatchUp, last_ms: i64, now_ms: i64) -> Vec<i64> {
    let due = s.ticks_between(last_ms, now_ms, MAX_CATCH_UP);
    let (missed, on_time): (Vec<i64>, Vec<i64>) = due
        .into_iter()
        .partition(|&t| now_ms - t > MISFIRE_GRACE_MS);
    let mut out = match catch_up {
        CatchUp::All => missed,
        CatchUp::Latest => missed.last().copied().into_iter().collect(),
        CatchUp::None => Vec::new(),
    };
    out.extend(on_time);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_minute_in_utc_and_every_second() {
        let s = CronSchedule::parse("*/1 * * * *", "").expect("valid");
        // 2021-10-04T16:17:45Z -> 16:18:00Z
        assert_eq!(s.next_after(1_633_364_265_000), Some(1_633_364_280_000));
        let s = CronSchedule::parse("* * * * * *", "").expect("valid");
        assert_eq!(s.next_after(1_000_500), Some(1_001_000));
        assert_eq!(s.ticks_between(1_000_000, 1_005_000, 10).len(), 5);
        assert_eq!(
            s.ticks_between(1_000_000, 1_005_000, 2),
            vec![1_004_000, 1_005_000]
        );
    }

    #[test]
    fn time_zones_shift_the_ticks() {
        // 09:00 in Seoul (UTC+9) is 00:00 UTC.
        let s = CronSchedule::parse("0 9 * * *", "Asia/Seoul").expect("valid");
        let day = 86_400_000;
        let t = s.next_after(10 * day + 1).expect("a tick");
        assert_eq!(t, 11 * day);
    }

    #[test]
    fn bad_expressions_and_zones_are_named() {
        let e = CronSchedule::parse("61 * * * *", "").expect_err("invalid");
        assert!(e.to_string().contains("61 * * * *"), "{e}");
        let e = CronSchedule::parse("* * * * *", "Mars/Olympus").expect_err("invalid");
        assert!(e.to_string().contains("Mars/Olympus"), "{e}");
    }

    #[test]
    fn catch_up_policies() {
        let s = CronSchedule::parse("* * * * * *", "").expect("valid");
        // Last tick at 0 s, now at 60 s: 60 ticks due, those within 5 s are on time.
        let now = 60_000;
        let all = due_ticks(&s, CatchUp::All, 0, now);
        assert_eq!(all.len(), 60);
        let latest = due_ticks(&s, CatchUp::Latest, 0, now);
        assert_eq!(
            latest,
            vec![54_000, 55_000, 56_000, 57_000, 58_000, 59_000, 60_000]
        );
        let none = due_ticks(&s, CatchUp::None, 0, now);
        assert_eq!(none, vec![55_000, 56_000, 57_000, 58_000, 59_000, 60_000]);
    }
}
