//! Machines whose finalizer this process released, remembered for a while.
//!
//! Releasing the finalizer deletes the Machine, but the cache shows that
//! only when the deletion event arrives. A reconcile triggered in between —
//! by the deletion of its Node, which cleanup does just before — would find
//! the old Machine, still carrying the finalizer, and run the whole cleanup
//! again: a bootstrap-token DELETE, a second `Deleted` Event and a
//! finalizer patch refused as NotFound (seen for 3 in 4 machines of a
//! 1,000-machine scale-down). A UID is never reused and no finalizer can be
//! added to an object being deleted, so a deleting Machine whose UID is
//! remembered here is a stale copy: nothing is left to do for it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a release is remembered: far longer than a deletion event takes
/// to arrive, short enough to keep the memory small.
const REMEMBER_FOR: Duration = Duration::from_secs(600);

/// UIDs of released Machines and when they were released.
#[derive(Default)]
pub struct Released {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    at: HashMap<String, Instant>,
    /// Size after the last sweep; the next sweep runs once it doubled.
    swept_at: usize,
}

impl Released {
    /// Remembers that the finalizer of Machine `uid` was released now.
    pub fn remember(&self, uid: &str) {
        self.remember_at(uid, Instant::now());
    }

    /// Whether the finalizer of Machine `uid` was released lately.
    pub fn contains(&self, uid: &str) -> bool {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner
            .at
            .get(uid)
            .is_some_and(|at| at.elapsed() < REMEMBER_FOR)
    }

    fn remember_at(&self, uid: &str, at: Instant) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.at.insert(uid.to_string(), at);
        if inner.at.len() >= 2 * inner.swept_at.max(64) {
            inner.at.retain(|_, at| at.elapsed() < REMEMBER_FOR);
            inner.swept_at = inner.at.len();
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().unwrap().at.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_release_is_remembered_for_its_uid_only() {
        let released = Released::default();
        released.remember("uid-1");
        assert!(released.contains("uid-1"));
        assert!(!released.contains("uid-2"));
    }

    #[test]
    fn old_releases_are_forgotten_and_swept() {
        let released = Released::default();
        let long_ago = Instant::now()
            .checked_sub(REMEMBER_FOR + Duration::from_secs(1))
            .expect("a monotonic clock older than the memory");
        for i in 0..100 {
            released.remember_at(&format!("old-{i}"), long_ago);
        }
        assert!(!released.contains("old-0"));
        for i in 0..100 {
            released.remember(&format!("new-{i}"));
        }
        // The sweeps dropped the old entries; the new ones stay.
        assert!(released.len() < 200, "{} entries kept", released.len());
        assert!(released.contains("new-0") && released.contains("new-99"));
    }
}
