//! The run table: live runs by generational key and by id. A removed run's slot is reused,
//! with a new generation, so that a key held anywhere (a timer, a ready queue, a worker's
//! attempt) can never reach the run that took the slot after it.

use std::collections::HashMap;

/// A generational key of a table entry: the slot and the generation it was given in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RunKey {
    slot: u32,
    gen: u32,
}

#[derive(Debug)]
struct Entry<T> {
    gen: u32,
    value: Option<(String, T)>,
}

/// Entries by generational key and by string id; removal frees the slot for reuse.
#[derive(Debug)]
pub struct Table<T> {
    entries: Vec<Entry<T>>,
    free: Vec<u32>,
    index: HashMap<String, RunKey>,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Table {
            entries: Vec::new(),
            free: Vec::new(),
            index: HashMap::new(),
        }
    }
}

impl<T> Table<T> {
    /// Adds `value` under `id` (an id already present is replaced, under a new key).
    pub fn insert(&mut self, id: String, value: T) -> RunKey {
        if let Some(old) = self.index.get(&id).copied() {
            self.remove(old);
        }
        let key = match self.free.pop() {
            Some(slot) => {
                let e = &mut self.entries[slot as usize];
                e.value = Some((id.clone(), value));
                RunKey { slot, gen: e.gen }
            }
            None => {
                let slot = u32::try_from(self.entries.len()).unwrap_or(u32::MAX);
                self.entries.push(Entry {
                    gen: 0,
                    value: Some((id.clone(), value)),
                });
                RunKey { slot, gen: 0 }
            }
        };
        self.index.insert(id, key);
        key
    }

    /// Removes the entry `key` names; a stale key removes nothing.
    pub fn remove(&mut self, key: RunKey) -> Option<T> {
        let e = self.entries.get_mut(key.slot as usize)?;
        if e.gen != key.gen {
            return None;
        }
        let (id, value) = e.value.take()?;
        // The next entry in this slot gets a new generation; a slot whose generations ran
        // out is retired rather than reused.
        match e.gen.checked_add(1) {
            Some(g) => {
                e.gen = g;
                self.free.push(key.slot);
            }
            None => e.gen = u32::MAX,
        }
        self.index.remove(&id);
        Some(value)
    }

    pub fn get(&self, key: RunKey) -> Option<&T> {
        let e = self.entries.get(key.slot as usize)?;
        if e.gen != key.gen {
            return None;
        }
        e.value.as_ref().map(|(_, v)| v)
    }

    pub fn get_mut(&mut self, key: RunKey) -> Option<&mut T> {
        let e = self.entries.get_mut(key.slot as usize)?;
        if e.gen != key.gen {
            return None;
        }
        e.value.as_mut().map(|(_, v)| v)
    }

    /// The key of the entry with this id.
    pub fn key_of(&self, id: &str) -> Option<RunKey> {
        self.index.get(id).copied()
    }

    pub fn contains_id(&self, id: &str) -> bool {
        self.index.contains_key(id)
    }

    /// Live entries.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Slots allocated (live and free): what the table holds in memory.
    pub fn capacity(&self) -> usize {
        self.entries.len()
    }

    /// Live entries in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (RunKey, &T)> {
        self.entries.iter().enumerate().filter_map(|(slot, e)| {
            e.value.as_ref().map(|(_, v)| {
                (
                    RunKey {
                        slot: slot as u32,
                        gen: e.gen,
                    },
                    v,
                )
            })
        })
    }
}

/// The engine reaches a run through a key it holds only while the run is live (keys from
/// outside, such as timers and queues, go through [`Table::get`] first).
impl<T> std::ops::Index<RunKey> for Table<T> {
    type Output = T;
    fn index(&self, key: RunKey) -> &T {
        match self.get(key) {
            Some(v) => v,
            None => panic!("run table: stale key {key:?}"),
        }
    }
}

impl<T> std::ops::IndexMut<RunKey> for Table<T> {
    fn index_mut(&mut self, key: RunKey) -> &mut T {
        match self.get_mut(key) {
            Some(v) => v,
            None => panic!("run table: stale key {key:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Table;

    #[test]
    fn a_removed_entry_leaves_and_its_key_never_reaches_the_next() {
        let mut t = Table::default();
        let a = t.insert("a".into(), 1);
        let b = t.insert("b".into(), 2);
        assert_eq!(t.len(), 2);
        assert_eq!(t.remove(a), Some(1));
        assert_eq!(t.get(a), None);
        assert!(!t.contains_id("a"));
        // The slot is reused under a new generation: the old key does not alias it.
        let c = t.insert("c".into(), 3);
        assert_eq!(t.capacity(), 2);
        assert_ne!(a, c);
        assert_eq!(t.get(a), None);
        assert_eq!(t.remove(a), None);
        assert_eq!(t.get(c), Some(&3));
        assert_eq!(t.key_of("c"), Some(c));
        assert_eq!(t[b], 2);
        let keys: Vec<_> = t.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec![c, b]);
    }

    #[test]
    fn memory_is_bounded_by_the_live_entries_not_by_history() {
        let mut t = Table::default();
        for round in 0..1000 {
            let keys: Vec<_> = (0..10)
                .map(|i| t.insert(format!("{round}/{i}"), i))
                .collect();
            for k in keys {
                t.remove(k);
            }
        }
        assert!(t.is_empty());
        assert_eq!(t.capacity(), 10);
    }

    #[test]
    fn an_id_inserted_again_replaces_the_old_entry() {
        let mut t = Table::default();
        let a = t.insert("a".into(), 1);
        let a2 = t.insert("a".into(), 2);
        assert_eq!(t.get(a), None);
        assert_eq!(t.get(a2), Some(&2));
        assert_eq!(t.len(), 1);
    }

    #[test]
    #[should_panic(expected = "stale key")]
    fn indexing_with_a_stale_key_is_a_bug_caught_loudly() {
        let mut t = Table::default();
        let a = t.insert("a".into(), 1);
        t.remove(a);
        let _ = t[a];
    }
}
