//! What a set or deployment wrote and its cache has not shown yet — the
//! "expectations" of Kubernetes' ReplicaSet controller.
//!
//! Sets and deployments decide from the shared Machine (and MachineSet)
//! caches rather than a LIST per reconcile. A cache may lag the owner's own
//! writes: a set that created three machines a moment ago and counted from
//! a cache not showing them yet would create three more. So every create
//! and delete is recorded here, and until the cache shows each of them (the
//! created object present, the deleted one gone or marked for deletion) the
//! owner reads live instead. A record not seen within [`EXPIRY`] is dropped
//! (a lost watch event must not force live reads forever).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a write may stay unseen before it is no longer waited for.
pub const EXPIRY: Duration = Duration::from_secs(300);

/// One owner's writes not yet seen in the cache.
#[derive(Default)]
struct Pending {
    /// Names created, with when.
    created: HashMap<String, Instant>,
    /// Names deleted, with when.
    deleted: HashMap<String, Instant>,
}

/// Writes per owner (by UID); see the module docs.
#[derive(Default)]
pub struct Expectations {
    owners: Mutex<HashMap<String, Pending>>,
}

/// What the cache shows of one object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// Not in the cache.
    Absent,
    /// In the cache, not being deleted.
    Present,
    /// In the cache with a deletionTimestamp.
    Deleting,
}

impl Expectations {
    /// Records that `owner` created object `name`.
    pub fn created(&self, owner: &str, name: &str) {
        self.with(owner, |p| {
            p.created.insert(name.to_string(), Instant::now());
        });
    }

    /// Records that `owner` deleted object `name`.
    pub fn deleted(&self, owner: &str, name: &str) {
        self.with(owner, |p| {
            p.deleted.insert(name.to_string(), Instant::now());
        });
    }

    /// Whether the cache (`seen` tells what it shows of a name) reflects
    /// every write of `owner`; records it shows, or that expired, are
    /// forgotten.
    pub fn caught_up(&self, owner: &str, seen: impl Fn(&str) -> Seen) -> bool {
        self.caught_up_at(owner, seen, Instant::now())
    }

    fn caught_up_at(&self, owner: &str, seen: impl Fn(&str) -> Seen, now: Instant) -> bool {
        let mut owners = self.owners.lock().unwrap_or_else(|p| p.into_inner());
        let Some(p) = owners.get_mut(owner) else {
            return true;
        };
        let fresh = |at: &Instant| now.saturating_duration_since(*at) < EXPIRY;
        p.created
            .retain(|name, at| fresh(at) && seen(name) == Seen::Absent);
        p.deleted
            .retain(|name, at| fresh(at) && seen(name) == Seen::Present);
        let done = p.created.is_empty() && p.deleted.is_empty();
        if done {
            owners.remove(owner);
        }
        done
    }

    /// Forgets `owner` (it was deleted).
    pub fn forget(&self, owner: &str) {
        self.owners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(owner);
    }

    fn with(&self, owner: &str, f: impl FnOnce(&mut Pending)) {
        let mut owners = self.owners.lock().unwrap_or_else(|p| p.into_inner());
        f(owners.entry(owner.to_string()).or_default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_owner_without_writes_is_caught_up() {
        let e = Expectations::default();
        assert!(e.caught_up("set", |_| Seen::Absent));
    }

    #[test]
    fn a_creation_is_awaited_until_the_cache_shows_it() {
        let e = Expectations::default();
        e.created("set", "m-1");
        assert!(!e.caught_up("set", |_| Seen::Absent));
        assert!(e.caught_up("set", |_| Seen::Present));
        // Seen once, forgotten: a later deletion of m-1 is not a lag.
        assert!(e.caught_up("set", |_| Seen::Absent));
    }

    #[test]
    fn a_deletion_is_awaited_until_the_cache_shows_it_going_or_gone() {
        let e = Expectations::default();
        e.deleted("set", "m-1");
        assert!(!e.caught_up("set", |_| Seen::Present));
        assert!(e.caught_up("set", |_| Seen::Deleting));
        e.deleted("set", "m-2");
        assert!(e.caught_up("set", |_| Seen::Absent));
    }

    #[test]
    fn owners_are_independent() {
        let e = Expectations::default();
        e.created("a", "m-1");
        assert!(e.caught_up("b", |_| Seen::Absent));
        assert!(!e.caught_up("a", |_| Seen::Absent));
    }

    #[test]
    fn an_unseen_write_expires() {
        let e = Expectations::default();
        e.created("set", "m-1");
        let later = Instant::now() + EXPIRY + Duration::from_secs(1);
        assert!(e.caught_up_at("set", |_| Seen::Absent, later));
    }

    #[test]
    fn forget_drops_everything_of_an_owner() {
        let e = Expectations::default();
        e.created("set", "m-1");
        e.forget("set");
        assert!(e.caught_up("set", |_| Seen::Absent));
    }
}
