//! Concurrency limits on task tags: at most N attempts of tasks with a tag hold a slot at
//! once, cluster-wide. A slot is held from assignment until the attempt's worker reports it
//! ended or the worker is lost (so a timed-out or cancelled attempt still holds its slot
//! until it is really gone); a new leader counts the attempts it recovers as held.

use super::model::TrRef;
use super::tables;
use super::{Engine, EngineError};
use baton_proto as pb;

impl Engine {
    /// Whether every tag of `class` has a free slot.
    pub(super) fn tags_free(&self, class: usize) -> bool {
        self.classes[class].tags.iter().all(|tag| {
            self.limits
                .get(tag)
                .is_none_or(|&l| self.tag_use.get(tag).copied().unwrap_or(0) < l)
        })
    }

    /// Why `class` waits for a tag's slot, if it does.
    pub(super) fn limit_reason(&self, class: usize) -> String {
        for tag in &self.classes[class].tags {
            if let Some(&l) = self.limits.get(tag) {
                let used = self.tag_use.get(tag).copied().unwrap_or(0);
                if used >= l {
                    return format!(
                        "waiting for a slot of concurrency limit `{tag}` ({used} of {l} in use)"
                    );
                }
            }
        }
        String::new()
    }

    /// Attempt `(t, attempt)` of a task run of `class` holds a slot of each of its tags.
    pub(super) fn hold(&mut self, t: TrRef, attempt: u32, class: usize) {
        let Some(c) = self.classes.get(class) else {
            return;
        };
        if c.tags.is_empty() || self.held.contains_key(&(t, attempt)) {
            return;
        }
        for tag in &c.tags {
            *self.tag_use.entry(tag.clone()).or_default() += 1;
        }
        self.held.insert((t, attempt), class);
    }

    /// The attempt ended: its slots are free again (idempotent).
    pub(super) fn unhold(&mut self, key: (TrRef, u32)) {
        let Some(class) = self.held.remove(&key) else {
            return;
        };
        for tag in &self.classes[class].tags {
            if let Some(n) = self.tag_use.get_mut(tag) {
                *n = n.saturating_sub(1);
            }
        }
    }

    /// Creates or changes the limit on `tag`.
    pub fn set_limit(
        &mut self,
        tag: &str,
        limit: u32,
    ) -> Result<pb::ConcurrencyLimit, EngineError> {
        let valid = !tag.is_empty()
            && tag.len() <= 128
            && tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !valid {
            return Err(EngineError::InvalidArgument(format!(
                "tag `{tag}` must be 1-128 characters of letters, digits, `_`, `-` or `.`"
            )));
        }
        self.limits.insert(tag.to_string(), limit);
        self.ops.push(tables::limits::put(tag, limit));
        Ok(self.limit_view(tag, limit))
    }

    /// Removes the limit on `tag`; false when there was none.
    pub fn delete_limit(&mut self, tag: &str) -> bool {
        if self.limits.remove(tag).is_none() {
            return false;
        }
        self.ops.push(tables::limits::delete(tag));
        true
    }

    /// Every limit with its slots in use, by tag.
    pub fn list_limits(&self) -> Vec<pb::ConcurrencyLimit> {
        self.limits
            .iter()
            .map(|(tag, &l)| self.limit_view(tag, l))
            .collect()
    }

    fn limit_view(&self, tag: &str, limit: u32) -> pb::ConcurrencyLimit {
        pb::ConcurrencyLimit {
            tag: tag.to_string(),
            limit,
            in_use: self.tag_use.get(tag).copied().unwrap_or(0),
        }
    }
}
