//! Timed rechecks of Machines, held in one compact table instead of kube's
//! controller scheduler.
//!
//! Every Machine asks to be looked at again after some time: a Running one
//! after the instance sync period, a Pending one when its creation timeout
//! runs out, a waiting one when its launch may have been answered. Through
//! `Action::requeue` each such wish is a `ReconcileRequest` whose
//! `ObjectRef` carries name, namespace, resourceVersion and uid, held twice
//! (a `DelayQueue` slab and a `HashMap`): ~0.7 KB per Machine, ~7 MB at
//! 10,000 Machines, and the tables keep their largest size. Here a wish is
//! the Machine's namespace (interned), name and a due second: ~70 bytes.
//!
//! [`Wakeups::recheck`] records a wish (the latest wins, as each reconcile
//! computes the next check from what it saw) and returns
//! `Action::await_change()`; [`Wakeups::due`] is a stream, polled once a
//! second, of the Machines whose time came, handed to the controller with
//! `reconcile_on`. A wish for a Machine deleted since is dropped by the
//! controller (not in its store). Watch events still wake a Machine at once;
//! a wish that outlives such a reconcile costs one extra reconcile at most.

use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use hashbrown::HashTable;
use kube::Resource;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use tokio::time::{Instant, MissedTickBehavior};

use super::cached_machine::CachedMachine;
use crate::intern::IStr;

/// How often [`Wakeups::due`] looks for Machines whose time came; a recheck
/// comes at most this much later than asked.
const TICK: Duration = Duration::from_secs(1);

/// See the module docs.
pub struct Wakeups {
    /// When second 0 was (the due seconds count from here).
    start: Instant,
    table: Mutex<HashTable<Wish>>,
    hasher: RandomState,
}

/// One Machine's next recheck.
struct Wish {
    namespace: IStr,
    name: Box<str>,
    /// Seconds after [`Wakeups::start`].
    due: u32,
}

impl Default for Wakeups {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            table: Mutex::default(),
            hasher: RandomState::new(),
        }
    }
}

impl Wakeups {
    pub fn new() -> Self {
        Self::default()
    }

    fn hash(&self, namespace: &str, name: &str) -> u64 {
        self.hasher.hash_one((namespace, name))
    }

    /// The second (after `start`) by which `after` from now has passed.
    fn second_after(&self, after: Duration) -> u32 {
        let at = self.start.elapsed().saturating_add(after);
        let whole = at.as_secs() + u64::from(at.subsec_nanos() > 0);
        u32::try_from(whole).unwrap_or(u32::MAX)
    }

    /// Asks for `obj` to be reconciled again `after` from now (replacing
    /// an earlier wish) and returns the action that leaves kube's scheduler
    /// out of it. An object without name is requeued by kube.
    pub fn recheck<K: Resource>(&self, obj: &K, after: Duration) -> Action {
        let meta = obj.meta();
        let Some(name) = meta.name.as_deref() else {
            return Action::requeue(after);
        };
        let namespace = meta.namespace.as_deref().unwrap_or_default();
        self.insert(namespace, name, after);
        Action::await_change()
    }

    fn insert(&self, namespace: &str, name: &str, after: Duration) {
        let due = self.second_after(after);
        let hash = self.hash(namespace, name);
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        match table.find_mut(hash, |w| &*w.name == name && w.namespace == namespace) {
            Some(wish) => wish.due = due,
            None => {
                table.insert_unique(
                    hash,
                    Wish {
                        namespace: IStr::new(namespace),
                        name: name.into(),
                        due,
                    },
                    |w| self.hash(&w.namespace, &w.name),
                );
            }
        }
    }

    /// Takes out every wish due by now.
    fn take_due(&self) -> Vec<ObjectRef<CachedMachine>> {
        let now = self.second_after(Duration::ZERO);
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let mut due = Vec::new();
        table.retain(|w| {
            if w.due > now {
                return true;
            }
            let r = ObjectRef::new(&w.name);
            due.push(if w.namespace.is_empty() {
                r
            } else {
                r.within(&w.namespace)
            });
            false
        });
        // Room for twice what is left, not for the largest it ever held.
        let left = table.len();
        if table.capacity() > 64 && table.capacity() > 4 * left {
            table.shrink_to(2 * left, |w| self.hash(&w.namespace, &w.name));
        }
        due
    }

    /// How many wishes wait.
    pub fn len(&self) -> usize {
        self.table.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The Machines whose time came, looked for once a [`TICK`].
    pub fn due(self: Arc<Self>) -> impl Stream<Item = ObjectRef<CachedMachine>> + Send + 'static {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        futures::stream::unfold((self, tick), |(wakeups, mut tick)| async move {
            tick.tick().await;
            let due = wakeups.take_due();
            Some((futures::stream::iter(due), (wakeups, tick)))
        })
        .flatten()
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;
    use crate::api::machine::Machine;

    fn machine(ns: &str, name: &str) -> Machine {
        let mut m = Machine::new(name, Default::default());
        m.metadata.namespace = Some(ns.into());
        m
    }

    fn names(refs: &[ObjectRef<CachedMachine>]) -> Vec<String> {
        let mut v: Vec<_> = refs
            .iter()
            .map(|r| format!("{}/{}", r.namespace.as_deref().unwrap_or_default(), r.name))
            .collect();
        v.sort();
        v
    }

    #[tokio::test(start_paused = true)]
    async fn a_wish_comes_due_after_its_time_and_only_once() {
        let w = Wakeups::new();
        assert_eq!(
            w.recheck(&machine("a", "m1"), Duration::from_secs(30)),
            Action::await_change()
        );
        w.recheck(&machine("a", "m2"), Duration::from_millis(1500));
        assert!(w.take_due().is_empty());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(names(&w.take_due()), ["a/m2"]);
        assert!(w.take_due().is_empty());
        tokio::time::advance(Duration::from_secs(27)).await;
        assert!(w.take_due().is_empty(), "m1 is due at 30 s, not 29");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(names(&w.take_due()), ["a/m1"]);
        assert!(w.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn the_latest_wish_wins_and_namespaces_keep_machines_apart() {
        let w = Wakeups::new();
        w.recheck(&machine("a", "m"), Duration::from_secs(5));
        w.recheck(&machine("b", "m"), Duration::from_secs(5));
        // A later reconcile of a/m saw a Running machine: 30 s, not 5.
        w.recheck(&machine("a", "m"), Duration::from_secs(30));
        assert_eq!(w.len(), 2);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(names(&w.take_due()), ["b/m"]);
        tokio::time::advance(Duration::from_secs(25)).await;
        assert_eq!(names(&w.take_due()), ["a/m"]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_table_shrinks_after_a_burst() {
        let w = Wakeups::new();
        for i in 0..5_000 {
            w.recheck(&machine("a", &format!("m{i}")), Duration::from_secs(1));
        }
        w.recheck(&machine("a", "late"), Duration::from_secs(60));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(w.take_due().len(), 5_000);
        let table = w.table.lock().unwrap();
        assert_eq!(table.len(), 1);
        assert!(table.capacity() < 64, "capacity {}", table.capacity());
    }

    #[tokio::test(start_paused = true)]
    async fn the_stream_yields_due_machines_on_its_tick() {
        let w = Arc::new(Wakeups::new());
        w.recheck(&machine("a", "m1"), Duration::from_secs(3));
        w.recheck(&machine("a", "m2"), Duration::from_secs(3));
        let mut due = Box::pin(w.clone().due());
        let first = tokio::time::timeout(Duration::from_secs(10), due.next())
            .await
            .expect("a wish came due")
            .expect("the stream goes on");
        let second = due.next().await.unwrap();
        assert_eq!(names(&[first, second]), ["a/m1", "a/m2"]);
        assert!(w.is_empty());
        // Nothing more is due: the stream waits.
        assert!(
            tokio::time::timeout(Duration::from_secs(60), due.next())
                .await
                .is_err()
        );
    }
}
