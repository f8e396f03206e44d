//! Concurrency limits on task tags: at most N attempts of tasks with a tag hold a slot at
//! once, cluster-wide. A slot is held from assignment until the attempt's worker reports it
//! ended or the worker is lost (so a timed-out or cancelled attempt still holds its slot
//! until it is really gone); a new leader counts the attempts it recovers as held.
//!
//! [`Limits`] is the part that owns this (no engine inside, tested on its own below); the
//! engine asks it whether a class of task runs may start and tells it which attempts hold
//! slots.

use super::model::TrRef;
use super::tables;
use super::{Engine, EngineError};
use baton_proto as pb;
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::Arc;

/// The longest tag a limit may be set on.
const MAX_TAG_CHARS: usize = 128;

/// Limits by tag and the slots that attempts (keyed by `K`) hold.
#[derive(Debug)]
pub(super) struct Limits<K> {
    limits: BTreeMap<String, u32>,
    in_use: HashMap<String, u32>,
    /// Attempts holding slots, with the tags whose slots they hold.
    held: HashMap<K, Arc<[String]>>,
}

impl<K> Default for Limits<K> {
    fn default() -> Self {
        Limits {
            limits: BTreeMap::new(),
            in_use: HashMap::new(),
            held: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq> Limits<K> {
    /// Creates or changes the limit on `tag`.
    pub fn set(&mut self, tag: &str, limit: u32) -> Result<pb::ConcurrencyLimit, EngineError> {
        let valid = !tag.is_empty()
            && tag.len() <= MAX_TAG_CHARS
            && tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !valid {
            let shown: String = tag.chars().take(MAX_TAG_CHARS).collect();
            return Err(EngineError::InvalidArgument(format!(
                "tag `{shown}` must be 1-{MAX_TAG_CHARS} characters of letters, digits, `_`, `-` or `.`"
            )));
        }
        self.limits.insert(tag.to_string(), limit);
        Ok(self.view(tag, limit))
    }

    /// Removes the limit on `tag`; false when there was none.
    pub fn remove(&mut self, tag: &str) -> bool {
        self.limits.remove(tag).is_some()
    }

    /// Limits read back from the state store.
    pub fn recover(&mut self, limits: impl IntoIterator<Item = (String, u32)>) {
        self.limits.extend(limits);
    }

    /// Every limit with its slots in use, by tag.
    pub fn views(&self) -> Vec<pb::ConcurrencyLimit> {
        self.limits
            .iter()
            .map(|(tag, &l)| self.view(tag, l))
            .collect()
    }

    fn view(&self, tag: &str, limit: u32) -> pb::ConcurrencyLimit {
        pb::ConcurrencyLimit {
            tag: tag.to_string(),
            limit,
            in_use: self.used(tag),
        }
    }

    fn used(&self, tag: &str) -> u32 {
        self.in_use.get(tag).copied().unwrap_or(0)
    }

    /// Whether every one of `tags` has a free slot.
    pub fn free(&self, tags: &[String]) -> bool {
        tags.iter()
            .all(|tag| self.limits.get(tag).is_none_or(|&l| self.used(tag) < l))
    }

    /// Why an attempt with `tags` waits for a slot (empty when it does not).
    pub fn reason(&self, tags: &[String]) -> String {
        for tag in tags {
            if let Some(&l) = self.limits.get(tag) {
                let used = self.used(tag);
                if used >= l {
                    return format!(
                        "waiting for a slot of concurrency limit `{tag}` ({used} of {l} in use)"
                    );
                }
            }
        }
        String::new()
    }

    /// Attempt `key` holds a slot of each of `tags` (once, however often it is told).
    pub fn hold(&mut self, key: K, tags: &Arc<[String]>) {
        if tags.is_empty() || self.held.contains_key(&key) {
            return;
        }
        for tag in tags.iter() {
            *self.in_use.entry(tag.clone()).or_default() += 1;
        }
        self.held.insert(key, tags.clone());
    }

    /// Attempt `key` ended: its slots are free again (idempotent).
    pub fn release(&mut self, key: &K) {
        let Some(tags) = self.held.remove(key) else {
            return;
        };
        for tag in tags.iter() {
            if let Some(n) = self.in_use.get_mut(tag) {
                *n = n.saturating_sub(1);
            }
        }
    }

    /// The attempts holding slots.
    pub fn holders(&self) -> impl Iterator<Item = &K> {
        self.held.keys()
    }
}

impl Engine {
    /// Whether every tag of `class` has a free slot.
    pub(super) fn tags_free(&self, class: usize) -> bool {
        self.limits.free(&self.registry.classes[class].tags)
    }

    /// Why `class` waits for a tag's slot, if it does.
    pub(super) fn limit_reason(&self, class: usize) -> String {
        self.limits.reason(&self.registry.classes[class].tags)
    }

    /// Attempt `(t, attempt)` of a task run of `class` holds a slot of each of its tags.
    pub(super) fn hold(&mut self, t: TrRef, attempt: u32, class: usize) {
        if let Some(c) = self.registry.classes.get(class) {
            self.limits.hold((t, attempt), &c.tags);
        }
    }

    /// The attempt ended: its slots are free again (idempotent).
    pub(super) fn unhold(&mut self, key: (TrRef, u32)) {
        self.limits.release(&key);
    }

    /// Creates or changes the limit on `tag`.
    pub fn set_limit(
        &mut self,
        tag: &str,
        limit: u32,
    ) -> Result<pb::ConcurrencyLimit, EngineError> {
        let view = self.limits.set(tag, limit)?;
        self.ops.push(tables::limits::put(tag, limit));
        Ok(view)
    }

    /// Removes the limit on `tag`; false when there was none.
    pub fn delete_limit(&mut self, tag: &str) -> bool {
        if !self.limits.remove(tag) {
            return false;
        }
        self.ops.push(tables::limits::delete(tag));
        true
    }

    /// Every limit with its slots in use, by tag.
    pub fn list_limits(&self) -> Vec<pb::ConcurrencyLimit> {
        self.limits.views()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(t: &[&str]) -> Arc<[String]> {
        t.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn slots_are_held_once_and_freed_once() {
        let mut l: Limits<u32> = Limits::default();
        let gpu = tags(&["gpu"]);
        assert!(l.free(&gpu), "no limit: always free");
        l.set("gpu", 2).expect("a valid tag");
        l.hold(1, &gpu);
        l.hold(1, &gpu);
        assert!(
            l.free(&gpu),
            "one attempt holds one slot, however often told"
        );
        l.hold(2, &gpu);
        assert!(!l.free(&gpu));
        assert_eq!(
            l.reason(&gpu),
            "waiting for a slot of concurrency limit `gpu` (2 of 2 in use)"
        );
        assert_eq!(l.views()[0].in_use, 2);
        l.release(&1);
        l.release(&1);
        assert!(l.free(&gpu));
        assert_eq!(l.views()[0].in_use, 1, "released once");
        assert_eq!(l.holders().collect::<Vec<_>>(), vec![&2]);
    }

    #[test]
    fn every_tag_must_have_a_slot() {
        let mut l: Limits<u32> = Limits::default();
        l.recover([("a".to_string(), 1), ("b".to_string(), 5)]);
        l.hold(1, &tags(&["a"]));
        assert!(!l.free(&tags(&["a", "b"])));
        assert!(l.free(&tags(&["b"])));
        assert!(l.reason(&tags(&["b", "a"])).contains("`a`"));
        // Removing the limit frees the tag; the slot held stays counted for a new limit.
        assert!(l.remove("a"));
        assert!(!l.remove("a"));
        assert!(l.free(&tags(&["a", "b"])));
        l.set("a", 1).expect("valid");
        assert!(!l.free(&tags(&["a"])));
    }

    #[test]
    fn bad_tags_are_refused_without_echoing_them_whole() {
        let mut l: Limits<u32> = Limits::default();
        for bad in ["", "a b", "ü", &"x".repeat(129)] {
            let e = l.set(bad, 1).expect_err("invalid");
            assert!(matches!(e, EngineError::InvalidArgument(_)));
            assert!(e.to_string().len() < 300);
        }
        assert!(l.views().is_empty());
        let huge = "é".repeat(100_000);
        let e = l.set(&huge, 1).expect_err("invalid");
        assert!(e.to_string().len() < 600, "{}", e.to_string().len());
    }
}
