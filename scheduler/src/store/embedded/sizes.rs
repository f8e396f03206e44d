//! The embedded store's live keys and the sizes of their values (for the Create check and
//! for compaction's accounting), held as 128-bit keyed hashes of the keys rather than the
//! keys themselves: the two million keys of a million-task fan-out take about 70 MB, not
//! about 220 MB. The hash keys are random per process, so that no one can choose keys that
//! collide; two different keys share an entry with a probability of about 2^-128.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};

/// A key's identity in [`KeySizes`].
pub(super) type KeyId = u128;

/// Turns keys into [`KeyId`]s with keys of its own, random per instance.
pub(super) struct KeyHasher {
    high: RandomState,
    low: RandomState,
}

impl KeyHasher {
    pub fn new() -> Self {
        KeyHasher {
            high: RandomState::new(),
            low: RandomState::new(),
        }
    }

    pub fn id(&self, key: &str) -> KeyId {
        (u128::from(self.high.hash_one(key)) << 64) | u128::from(self.low.hash_one(key))
    }
}

/// Tables with room for more keys than this shrink when three quarters are empty.
const SHRINK_ABOVE: usize = 1 << 16;

pub(super) struct KeySizes {
    ids: KeyHasher,
    map: HashMap<KeyId, u32>,
}

impl KeySizes {
    pub fn new() -> Self {
        KeySizes {
            ids: KeyHasher::new(),
            map: HashMap::new(),
        }
    }

    pub fn id(&self, key: &str) -> KeyId {
        self.ids.id(key)
    }

    pub fn contains(&self, key: &str) -> bool {
        self.map.contains_key(&self.id(key))
    }

    /// Sets a key's value size; returns the old one.
    pub fn insert(&mut self, id: KeyId, size: u32) -> Option<u32> {
        self.map.insert(id, size)
    }

    pub fn remove(&mut self, id: KeyId) -> Option<u32> {
        let removed = self.map.remove(&id);
        // Room made for a large run's keys is given back once they are gone.
        if self.map.capacity() > SHRINK_ABOVE && self.map.len() < self.map.capacity() / 4 {
            self.map.shrink_to(self.map.len() * 2);
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::KeySizes;

    #[test]
    fn keys_are_told_apart_and_sizes_kept() {
        let mut s = KeySizes::new();
        for i in 0..100_000 {
            let id = s.id(&format!("tr/run/task/{i}"));
            assert_eq!(s.insert(id, i), None);
        }
        for i in 0..100_000 {
            let id = s.id(&format!("tr/run/task/{i}"));
            assert_eq!(s.insert(id, i + 1), Some(i), "{i}");
        }
        assert!(s.contains("tr/run/task/5"));
        assert!(!s.contains("tr/run/task/100000"));
        let id = s.id("tr/run/task/5");
        assert_eq!(s.remove(id), Some(6));
        assert!(!s.contains("tr/run/task/5"));
    }

    #[test]
    fn room_for_a_large_run_is_given_back_once_its_keys_are_gone() {
        let mut s = KeySizes::new();
        let ids: Vec<_> = (0..200_000)
            .map(|i| s.id(&format!("tr/run/task/{i}")))
            .collect();
        for &id in &ids {
            s.insert(id, 1);
        }
        let full = s.map.capacity();
        for &id in &ids[10..] {
            assert_eq!(s.remove(id), Some(1));
        }
        assert_eq!(s.map.len(), 10);
        assert!(
            s.map.capacity() <= super::SHRINK_ABOVE && s.map.capacity() < full / 2,
            "{} of {full}",
            s.map.capacity()
        );
        for &id in &ids[..10] {
            assert_eq!(s.remove(id), Some(1), "kept through the shrinking");
        }
    }
}
