//! The sub-flow links: the child run that each sub-flow task run's current attempt started,
//! found from the task run, from its run, or for every live link. Only sub-flow task runs
//! have a link, so no task run carries room for one. No engine inside: tested on its own.

use super::model::TrRef;
use super::RunKey;
use std::collections::HashMap;
use std::sync::Arc;

/// Sub-flow task runs and their child runs.
#[derive(Debug, Default)]
pub(super) struct Children {
    /// A sub-flow task run's child run (of its latest attempt).
    child: HashMap<TrRef, Arc<str>>,
    /// The linked task runs of each run, so that a run's children are found without a scan.
    by_run: HashMap<RunKey, Vec<TrRef>>,
}

impl Children {
    /// Task run `t`'s latest attempt started child run `id` (replacing an earlier attempt's).
    pub fn link(&mut self, t: TrRef, id: &str) {
        if self.child.insert(t, Arc::from(id)).is_none() {
            self.by_run.entry(t.run).or_default().push(t);
        }
    }

    /// The child run of task run `t`'s latest attempt.
    pub fn of(&self, t: TrRef) -> Option<&str> {
        self.child.get(&t).map(|c| &**c)
    }

    /// The linked task runs of run `run` with their child runs.
    pub fn of_run(&self, run: RunKey) -> impl Iterator<Item = (TrRef, &str)> {
        self.by_run
            .get(&run)
            .into_iter()
            .flatten()
            .filter_map(|t| Some((*t, self.of(*t)?)))
    }

    /// Every link.
    pub fn iter(&self) -> impl Iterator<Item = (TrRef, &str)> {
        self.child.iter().map(|(t, c)| (*t, &**c))
    }

    /// Forgets run `run`'s links (it leaves memory); returns them by (node, index).
    pub fn take_run(&mut self, run: RunKey) -> HashMap<(u32, u32), Arc<str>> {
        self.by_run
            .remove(&run)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|t| Some(((t.node, t.index), self.child.remove(&t)?)))
            .collect()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.child.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::table::Table;

    #[test]
    fn links_are_found_both_ways_and_leave_with_their_run() {
        let mut runs: Table<()> = Table::default();
        let (a, b) = (runs.insert("a".into(), ()), runs.insert("b".into(), ()));
        let t = |run, node, index| TrRef { run, node, index };
        let mut c = Children::default();
        c.link(t(a, 1, 0), "child-1");
        c.link(t(a, 1, 1), "child-2");
        c.link(t(b, 0, 0), "child-3");
        // A retry's child replaces the first attempt's.
        c.link(t(a, 1, 0), "child-1b");
        assert_eq!(c.len(), 3);
        assert_eq!(c.of(t(a, 1, 0)), Some("child-1b"));
        assert_eq!(c.of(t(a, 2, 0)), None);
        let mut of_a: Vec<(u32, &str)> = c.of_run(a).map(|(t, id)| (t.index, id)).collect();
        of_a.sort();
        assert_eq!(of_a, vec![(0, "child-1b"), (1, "child-2")]);
        let taken = c.take_run(a);
        assert_eq!(taken.len(), 2);
        assert_eq!(taken.get(&(1, 1)).map(|c| &**c), Some("child-2"));
        assert_eq!(c.len(), 1);
        assert_eq!(c.of_run(a).count(), 0);
        assert_eq!(
            c.iter().map(|(_, id)| id).collect::<Vec<_>>(),
            vec!["child-3"]
        );
        // A new run in a reused slot has no links of the old one.
        runs.remove(b);
        let b2 = runs.insert("b2".into(), ());
        assert_eq!(c.of_run(b2).count(), 0);
    }
}
