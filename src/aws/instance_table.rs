//! The instance view's table: each instance once, boxed, hashed by the ID it
//! holds, with the number of the refresh that last saw it.
//!
//! A `HashMap<String, Box<InstanceInfo>>` holds every ID twice (the key and
//! the info's own) and a refresh collected the IDs it saw in a `HashSet`
//! of a third copy: ~100 bytes an instance kept and ~60 more during each
//! refresh, at 10,000 instances 1 MB and 0.6 MB. Here an entry is a pointer
//! in the table, and "seen by refresh n" is a number in the entry.

use std::hash::{BuildHasher, RandomState};

use hashbrown::HashTable;

use super::instances::InstanceInfo;

/// See the module docs.
#[derive(Default)]
pub struct InstanceTable {
    entries: HashTable<Box<Entry>>,
    hasher: RandomState,
}

struct Entry {
    info: InstanceInfo,
    /// The refresh that last showed this instance (0: none did).
    seen_in: u32,
}

impl InstanceTable {
    fn hash(&self, id: &str) -> u64 {
        self.hasher.hash_one(id)
    }

    pub fn get(&self, id: &str) -> Option<&InstanceInfo> {
        self.entries
            .find(self.hash(id), |e| e.info.id == id)
            .map(|e| &e.info)
    }

    pub fn get_mut(&mut self, id: &str) -> Option<&mut InstanceInfo> {
        let hash = self.hash(id);
        self.entries
            .find_mut(hash, |e| e.info.id == id)
            .map(|e| &mut e.info)
    }

    /// Puts `info` in (replacing what was kept under its ID), as seen by
    /// refresh `seen_in` (0 for none: an instance an operation recorded).
    /// A replaced entry keeps the later of the two refresh numbers.
    pub fn put(&mut self, info: InstanceInfo, seen_in: u32) {
        let hash = self.hash(&info.id);
        let hasher = &self.hasher;
        match self.entries.find_mut(hash, |e| e.info.id == info.id) {
            Some(e) => {
                e.info = info;
                e.seen_in = e.seen_in.max(seen_in);
            }
            None => {
                self.entries
                    .insert_unique(hash, Box::new(Entry { info, seen_in }), |e| {
                        hasher.hash_one(e.info.id.as_str())
                    });
            }
        }
    }

    /// Keeps the instances for which `keep(info, seen_in)` holds.
    pub fn retain(&mut self, mut keep: impl FnMut(&InstanceInfo, u32) -> bool) {
        self.entries.retain(|e| keep(&e.info, e.seen_in));
        let hasher = &self.hasher;
        self.entries
            .shrink_to(self.entries.len(), |e| hasher.hash_one(e.info.id.as_str()));
    }

    pub fn values(&self) -> impl Iterator<Item = &InstanceInfo> {
        self.entries.iter().map(|e| &e.info)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::instances::InstanceState;

    fn info(id: &str, state: InstanceState) -> InstanceInfo {
        InstanceInfo::bare(id, state)
    }

    #[test]
    fn entries_are_found_replaced_and_dropped_by_id() {
        let mut t = InstanceTable::default();
        for i in 0..1_000 {
            t.put(info(&format!("i-{i}"), InstanceState::Running), 1);
        }
        assert_eq!(t.len(), 1_000);
        assert_eq!(t.get("i-7").unwrap().state, InstanceState::Running);
        assert!(t.get("i-1000").is_none());
        t.put(info("i-7", InstanceState::Stopped), 0);
        assert_eq!(t.get("i-7").unwrap().state, InstanceState::Stopped);
        assert_eq!(t.len(), 1_000);
        t.get_mut("i-8").unwrap().state = InstanceState::Terminated;
        assert_eq!(t.get("i-8").unwrap().state, InstanceState::Terminated);
        // Refresh 2 saw only the even ones; the recorded i-7 kept refresh 1.
        for i in (0..1_000).step_by(2) {
            t.put(info(&format!("i-{i}"), InstanceState::Running), 2);
        }
        let mut seen_of_7 = None;
        t.retain(|i, seen| {
            if i.id == "i-7" {
                seen_of_7 = Some(seen);
            }
            seen == 2
        });
        assert_eq!(seen_of_7, Some(1), "a later record keeps the refresh");
        assert_eq!(t.len(), 500);
        assert!(t.get("i-7").is_none());
        assert!(t.get("i-8").is_some());
        assert_eq!(t.values().count(), 500);
        t.retain(|_, _| false);
        assert!(t.is_empty());
    }
}
