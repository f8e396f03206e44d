//! Garbage collection of the result store's packs (S3 packs, local segments): a pack that
//! no writer adds to any more, last written longer ago than the grace period, and holding
//! no result that a live run, a cache entry or a run's archive references, is deleted.
//! A byte that anything references is never deleted:
//!
//! 1. the packs are listed first, and only those older than the grace period (at least
//!    [`MIN_GRACE`]) and [`CLOCK_SLACK`] are candidates: a result is committed within
//!    seconds of its upload (workers report it at once, and again to a new leader within
//!    its adopt grace) or never (an attempt whose worker stays away is retried, and its
//!    late result ignored); so a new leader refuses a pass until its workers' lease and
//!    adopt grace have passed (a worker that held results while no leader ran has then
//!    reported them);
//! 2. then the leader's live state is read (after its current step is committed): every
//!    live run's results and every cache entry; runs whose archives are being written are
//!    waited for, and a pass is refused while a finished run's archive could not be
//!    written, or a record or run could not be recovered (what they reference is then
//!    only in the state store);
//! 3. then every run archive that may reference a candidate is read: in S3, one written
//!    after the oldest candidate was (less [`CLOCK_SLACK`]; a run referencing a result
//!    finished after that result was uploaded, so an older archive cannot; this assumes
//!    the bucket's objects kept their times, not copied after the fact); in a local
//!    folder, every archive;
//! 4. a candidate that none of these reference is deleted, while this replica still leads.
//!
//! A run created during the pass references only results uploaded during it (too new to be
//! candidates) or results a cache entry read in step 2 points at.

use crate::actor::{Command, Handle};
use crate::engine::tables::finished;
use crate::Error;
use baton_common::result_store::{object_of, Listed, ResultStore};
use baton_proto as pb;
use std::collections::HashSet;
use std::time::{Duration, SystemTime};

/// The grace period when the caller names none.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(3600);
/// The shortest grace period accepted.
pub const MIN_GRACE: Duration = Duration::from_secs(600);
/// How far the store's clock may disagree with itself between two objects' times.
pub const CLOCK_SLACK: Duration = Duration::from_secs(600);
/// Unreferenced packs named in a report, at most.
const NAMED: usize = 100;
/// Times the live state is read again while runs' archives are being written.
const SEALED_TRIES: usize = 100;
/// Leadership is checked again after this many deletions.
const RECHECK_EVERY: usize = 100;

/// What a pass is asked to do.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Only packs last written at least this long ago are candidates.
    pub grace: Duration,
    /// Report, delete nothing.
    pub dry_run: bool,
}

impl Options {
    /// From a request: 0 seconds is the default grace; less than [`MIN_GRACE`] is refused.
    pub fn from_request(req: &pb::CollectGarbageRequest) -> Result<Options, Error> {
        let grace = match req.older_than_seconds {
            0 => DEFAULT_GRACE,
            s => Duration::from_secs(s),
        };
        if grace < MIN_GRACE {
            return Err(Error::Engine(crate::engine::EngineError::InvalidArgument(
                format!(
                    "older_than_seconds must be at least {} (or 0 for {})",
                    MIN_GRACE.as_secs(),
                    DEFAULT_GRACE.as_secs()
                ),
            )));
        }
        Ok(Options {
            grace,
            dry_run: req.dry_run,
        })
    }
}

/// One pass; see the module docs. `leader` is this replica's actor, asked again before
/// anything is deleted (it fails once this replica no longer leads).
pub async fn collect(
    store: &dyn ResultStore,
    leader: &Handle,
    options: Options,
) -> Result<pb::CollectGarbageResponse, Error> {
    let mut report = pb::CollectGarbageResponse {
        dry_run: options.dry_run,
        ..Default::default()
    };
    let packs = store
        .closed_packs()
        .await
        .map_err(|e| failed("listing the packs", e))?;
    report.packs = packs.len() as u64;
    let now = SystemTime::now();
    let old: Vec<Listed> = packs
        .into_iter()
        .filter(|p| old_enough(now, p.modified, options.grace))
        .collect();
    report.old_packs = old.len() as u64;
    if old.is_empty() {
        return Ok(report);
    }

    let mut referenced = live_references(leader).await?;
    let since = oldest_byte(&old).and_then(|t| t.checked_sub(CLOCK_SLACK));
    let archives = store
        .list(finished::ARCHIVES)
        .await
        .map_err(|e| failed("listing the run archives", e))?;
    for archive in archives {
        if since.is_some_and(|since| archive.modified < since) {
            continue;
        }
        read_archive(store, &archive, &mut referenced).await?;
        report.archives_read += 1;
    }

    let (kept, gone): (Vec<Listed>, Vec<Listed>) =
        old.into_iter().partition(|p| referenced.contains(&p.uri));
    report.referenced = kept.len() as u64;
    report.unreferenced = gone.len() as u64;
    report.unreferenced_bytes = gone.iter().map(|p| p.size).sum();
    report.unreferenced_uris = gone.iter().take(NAMED).map(|p| p.uri.clone()).collect();
    if options.dry_run || gone.is_empty() {
        return Ok(report);
    }
    for (i, pack) in gone.iter().enumerate() {
        if i % RECHECK_EVERY == 0 {
            // Still the leader (a deposed one's actor has stopped).
            leader.ask(Command::ListLimits).await?;
        }
        store
            .delete(&pack.uri)
            .await
            .map_err(|e| failed("deleting a pack", e))?;
        report.deleted += 1;
    }
    tracing::info!(
        deleted = report.deleted,
        bytes = report.unreferenced_bytes,
        kept = report.referenced,
        "garbage collection deleted unreferenced packs"
    );
    Ok(report)
}

/// Whether an object last written at `modified` is older than `grace` as of `now`; the
/// store's clock may run behind this one, so it must look older by [`CLOCK_SLACK`] too.
fn old_enough(now: SystemTime, modified: SystemTime, grace: Duration) -> bool {
    now.duration_since(modified)
        .is_ok_and(|age| age >= grace.saturating_add(CLOCK_SLACK))
}

/// The first byte of the oldest candidate, where every candidate's is known.
fn oldest_byte(packs: &[Listed]) -> Option<SystemTime> {
    packs
        .iter()
        .map(|p| p.created)
        .collect::<Option<Vec<_>>>()?
        .into_iter()
        .min()
}

/// The objects the leader's live state references, once no run's archive is being written.
async fn live_references(leader: &Handle) -> Result<HashSet<String>, Error> {
    for _ in 0..SEALED_TRIES {
        let live = leader.ask(Command::Referenced).await?;
        if !live.settling.is_zero() {
            return Err(refused(format!(
                "this leader was elected moments ago: garbage collection waits {} s more, until every worker has reported the results it held",
                live.settling.as_secs().max(1)
            )));
        }
        if live.unrecovered > 0 {
            return Err(refused(format!(
                "{} records or runs could not be recovered by this leader (see its log), so what they reference is unknown",
                live.unrecovered
            )));
        }
        if live.abandoned > 0 {
            return Err(Error::Engine(crate::engine::EngineError::FailedPrecondition(
                format!(
                    "{} finished runs' archives could not be written on this leader; their results are referenced only by the state store until the next leader archives them",
                    live.abandoned
                ),
            )));
        }
        if live.sealed.is_empty() {
            return Ok(live.objects);
        }
        for run in live.sealed {
            leader.ask(|r| Command::AwaitArchive(run, r)).await?;
        }
    }
    Err(Error::Engine(
        crate::engine::EngineError::FailedPrecondition(
            "runs kept finishing while garbage collection waited for their archives; try again"
                .to_string(),
        ),
    ))
}

/// Adds the objects an archive references to `referenced`.
async fn read_archive(
    store: &dyn ResultStore,
    archive: &Listed,
    referenced: &mut HashSet<String>,
) -> Result<(), Error> {
    let bytes = store
        .get(&archive.uri)
        .await
        .map_err(|e| failed("reading a run archive", e))?;
    let decoded = <pb::RunArchive as prost::Message>::decode(bytes.as_slice()).map_err(|e| {
        Error::Internal(format!(
            "a run archive cannot be read ({e}), so what it references is unknown: {}",
            name_of(&archive.uri)
        ))
    })?;
    for tr in decoded.task_runs {
        if let Some(r) = tr.result.filter(|r| !r.uri.is_empty()) {
            referenced.insert(object_of(&r.uri).to_string());
        }
    }
    Ok(())
}

fn refused(why: String) -> Error {
    Error::Engine(crate::engine::EngineError::FailedPrecondition(why))
}

/// A result store failure, logged in full; the caller is told what failed without the
/// store's paths.
fn failed(what: &str, e: baton_common::Error) -> Error {
    tracing::error!(error = %e, "garbage collection: {what} failed");
    match e {
        baton_common::Error::NotFound(_) => Error::Internal(format!(
            "garbage collection stopped: {what} found an object gone (another pass?)"
        )),
        _ => Error::Internal(format!(
            "garbage collection stopped: {what} failed (the scheduler's log has the details)"
        )),
    }
}

/// The file name of an archive (its run), not the store's path.
fn name_of(uri: &str) -> &str {
    uri.rsplit('/').next().unwrap_or(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_grace_is_accepted_without_overflow_and_the_clock_slack_counts() {
        let req = |s| pb::CollectGarbageRequest {
            older_than_seconds: s,
            dry_run: false,
        };
        assert!(Options::from_request(&req(599)).is_err());
        assert_eq!(Options::from_request(&req(0)).unwrap().grace, DEFAULT_GRACE);
        let huge = Options::from_request(&req(u64::MAX)).unwrap();
        let now = SystemTime::now();
        let hour_ago = now - Duration::from_secs(3600);
        assert!(!old_enough(now, hour_ago, huge.grace));
        assert!(!old_enough(now, hour_ago, Duration::from_secs(3300)));
        assert!(old_enough(now, hour_ago, Duration::from_secs(3000)));
        assert!(!old_enough(now, now + Duration::from_secs(60), MIN_GRACE));
    }
}
