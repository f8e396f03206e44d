//! What the leader's live state references in the result store, for garbage collection:
//! the objects (packs, segments or objects of their own) holding the results of live runs'
//! task runs and of cache entries.

use super::Engine;
use baton_common::result_store::object_of;
use std::collections::HashSet;
use std::time::Duration;

/// Beyond the worker lease and the adopt grace: how long a new leader waits before it
/// trusts that every result a worker held has been reported to it.
const SETTLE_MARGIN: Duration = Duration::from_secs(2);

/// The objects live state references, and the runs whose references live elsewhere.
#[derive(Debug, Default)]
pub struct Referenced {
    /// Locations of whole objects (without byte ranges).
    pub objects: HashSet<String>,
    /// Finished runs out of memory whose archives are being written: their references
    /// are in their archives once written.
    pub sealed: Vec<String>,
    /// Finished runs whose archives could not be written on this leader: their
    /// references are only in the state store, until the next leader archives them.
    pub abandoned: usize,
    /// Records or runs this leader could not recover: what they reference is unknown.
    pub unrecovered: usize,
    /// How much longer this leader must lead before workers that held results while no
    /// leader ran have reported them (or had their attempts retried): zero once settled.
    pub settling: Duration,
}

impl Engine {
    /// See [`Referenced`]; `led` is how long this leader has led.
    pub fn referenced(&self, led: Duration) -> Referenced {
        let mut objects = HashSet::new();
        for (_, run) in self.runs.iter() {
            for node in &run.nodes {
                for tr in &node.runs {
                    if let Some(r) = &tr.result {
                        objects.insert(object_of(r.uri()).to_string());
                    }
                }
            }
        }
        for r in self.cache.results() {
            objects.insert(object_of(&r.uri).to_string());
        }
        Referenced {
            objects,
            sealed: self.tombstones.keys().cloned().collect(),
            abandoned: self.abandoned_archives,
            unrecovered: self.unrecovered,
            settling: (Duration::from_millis(self.cfg.worker_lease_ms + self.cfg.adopt_grace_ms)
                + SETTLE_MARGIN)
                .saturating_sub(led),
        }
    }
}
