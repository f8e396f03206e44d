//! Result caching: a task with a `cache` spec reuses the committed result of an earlier task
//! run with the same key (project, flow, task, cache version and resolved inputs) instead of
//! being dispatched, until the entry expires. Entries live in the state store under `cache/`.
//!
//! [`Cache`] is the part that owns the entries (no engine inside, tested on its own below);
//! the engine computes keys, asks it for hits and records new results in it.

use super::held::HeldResult;
use super::model::{CacheEntry, TrRef, INLINE_VALUE_LIMIT};
use super::tables;
use super::Engine;
use super::RunKey;
use baton_common::result_store::{checksum, ResultRef};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

/// What a cache lookup found.
#[derive(Debug, PartialEq)]
pub(super) enum Lookup {
    /// A live entry with its value.
    Hit(ResultRef, Arc<Value>),
    /// An entry that expired: it is gone now, and its record must go too.
    Expired,
    /// No entry, or one whose value could not be read back.
    Miss,
}

/// Cache entries by key, each with its value (`None` when it could not be read back after
/// a restart).
#[derive(Debug, Default)]
pub(super) struct Cache {
    entries: HashMap<String, (CacheEntry, Option<Arc<Value>>)>,
}

impl Cache {
    /// The key of a cached task's result: a hex SHA-256 of what it depends on.
    pub fn key(
        project: &str,
        flow: &str,
        task: &str,
        version: &str,
        inputs: &str,
    ) -> Option<String> {
        let material = serde_json::to_vec(&(project, flow, task, version, inputs)).ok()?;
        let sum = checksum(&material);
        Some(sum.strip_prefix("sha256:").unwrap_or(&sum).to_string())
    }

    /// The entry at `key` as of `now`; an expired one is dropped.
    pub fn lookup(&mut self, key: &str, now: i64) -> Lookup {
        let Some((entry, value)) = self.entries.get(key) else {
            return Lookup::Miss;
        };
        if entry.expires_ms > 0 && now >= entry.expires_ms {
            self.entries.remove(key);
            return Lookup::Expired;
        }
        match value {
            Some(v) => Lookup::Hit(entry.result.clone(), v.clone()),
            None => Lookup::Miss,
        }
    }

    /// The results the entries point at.
    pub fn results(&self) -> impl Iterator<Item = &ResultRef> {
        self.entries.values().map(|(entry, _)| &entry.result)
    }

    /// Records a result (replacing an older entry at `key`).
    pub fn insert(&mut self, key: String, entry: CacheEntry, value: Arc<Value>) {
        self.entries.insert(key, (entry, Some(value)));
    }

    /// Entries read back from the state store (their values too, where they were read).
    pub fn recover(&mut self, entries: impl IntoIterator<Item = (String, CacheEntry)>) {
        for (key, entry) in entries {
            let value = entry.value.clone().map(Arc::new);
            self.entries.insert(key, (entry, value));
        }
    }
}

impl Engine {
    /// The cache key of a task run of node `node` of run `slot` with resolved `inputs` (JSON
    /// text); `None` when the task is not cached.
    pub(super) fn cache_key(&self, slot: RunKey, node: usize, inputs: &str) -> Option<String> {
        let run = &self.runs[slot];
        let task = run.flow.task(node);
        let cache = task.cache.as_ref()?;
        Cache::key(
            &run.flow.spec.project,
            &run.flow.spec.name,
            &task.name,
            &cache.version,
            inputs,
        )
    }

    /// A reusable committed result for a task run of node `node` of run `slot` with
    /// `inputs`, unless the run bypasses the cache. An expired entry is dropped.
    pub(super) fn cache_hit(
        &mut self,
        slot: RunKey,
        node: usize,
        inputs: &str,
        now: i64,
    ) -> Option<(ResultRef, Arc<Value>)> {
        if self.runs[slot].no_cache {
            return None;
        }
        let key = self.cache_key(slot, node, inputs)?;
        match self.cache.lookup(&key, now) {
            Lookup::Hit(result, value) => Some((result, value)),
            Lookup::Expired => {
                self.ops.push(tables::cache::delete(&key));
                None
            }
            Lookup::Miss => None,
        }
    }

    /// Records the committed result of task run `t` (just completed by a worker) when its
    /// task is cached.
    pub(super) fn cache_record(&mut self, t: TrRef, now: i64) {
        let run = &self.runs[t.run];
        let node = t.node as usize;
        let task = run.flow.task(node);
        let Some(spec) = task.cache.as_ref() else {
            return;
        };
        let tr = &run.nodes[node].runs[t.index as usize];
        let (Some(result), Some(value)) = (
            tr.result.as_deref().map(HeldResult::to_ref),
            tr.value.clone(),
        ) else {
            return;
        };
        let Some(inputs) = tr.inputs.as_ref().map(|i| i.json_for(t.index as usize)) else {
            return;
        };
        let Some(key) = self.cache_key(t.run, node, &inputs) else {
            return;
        };
        let entry = CacheEntry {
            value: (result.size as usize <= INLINE_VALUE_LIMIT).then(|| (*value).clone()),
            result,
            expires_ms: if spec.expire_ms > 0 {
                now.saturating_add(spec.expire_ms as i64)
            } else {
                0
            },
            run: run.id.0.clone(),
            task: task.name.clone(),
        };
        self.write(tables::cache::put(&key, &entry));
        self.cache.insert(key, entry, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(uri: &str, expires_ms: i64, value: Option<Value>) -> CacheEntry {
        CacheEntry {
            result: ResultRef {
                uri: uri.into(),
                size: 2,
                checksum: "sha256:00".into(),
                content_type: "application/json".into(),
            },
            value,
            expires_ms,
            run: "r".into(),
            task: "t".into(),
        }
    }

    #[test]
    fn keys_depend_on_every_part_and_on_nothing_else() {
        let k = Cache::key("p", "f", "t", "1", "[1]").expect("a key");
        assert_eq!(k.len(), 64, "hex SHA-256");
        assert_eq!(Some(k.clone()), Cache::key("p", "f", "t", "1", "[1]"));
        for other in [
            Cache::key("q", "f", "t", "1", "[1]"),
            Cache::key("p", "g", "t", "1", "[1]"),
            Cache::key("p", "f", "u", "1", "[1]"),
            Cache::key("p", "f", "t", "2", "[1]"),
            Cache::key("p", "f", "t", "1", "[2]"),
            // No ambiguity from where one part ends and the next begins.
            Cache::key("p", "f", "t1", "", "[1]"),
        ] {
            assert_ne!(other, Some(k.clone()));
        }
    }

    #[test]
    fn entries_hit_until_they_expire_then_are_gone() {
        let mut c = Cache::default();
        assert_eq!(c.lookup("k", 0), Lookup::Miss);
        let v = Arc::new(serde_json::json!(7));
        c.insert("k".into(), entry("file:///a", 100, None), v.clone());
        let Lookup::Hit(result, value) = c.lookup("k", 99) else {
            panic!("a hit");
        };
        assert_eq!((result.uri.as_str(), value), ("file:///a", v));
        assert_eq!(c.lookup("k", 100), Lookup::Expired);
        assert_eq!(c.lookup("k", 100), Lookup::Miss, "dropped once expired");
    }

    #[test]
    fn recovered_entries_without_values_are_misses() {
        let mut c = Cache::default();
        c.recover([
            (
                "a".to_string(),
                entry("file:///a", 0, Some(serde_json::json!([1]))),
            ),
            ("b".to_string(), entry("file:///b", 0, None)),
        ]);
        assert!(
            matches!(c.lookup("a", i64::MAX - 1), Lookup::Hit(..)),
            "never expires"
        );
        assert_eq!(c.lookup("b", 0), Lookup::Miss);
    }
}
