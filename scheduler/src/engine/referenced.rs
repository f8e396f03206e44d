//! What the leader's live state references in the result store, for garbage collection:
//! the objects (packs, segments or objects of their own) holding the results of live runs'
//! task runs and of cache entries.

use super::Engine;
use baton_common::result_store::object_of;
use std::collections::HashSet;

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
}

impl Engine {
    /// See [`Referenced`].
    pub fn referenced(&self) -> Referenced {
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
        }
    }
}
