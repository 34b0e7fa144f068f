//! A window that gathers the members of a batch: the first member of a key
//! opens a batch and gets the future that closes it; later members of the
//! key join it until it has been idle for [`Window::idle`], has been open
//! for [`Window::max`], or holds [`Window::cap`] members. A full batch is
//! closed and the next member opens a new one.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// How long a batch gathers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Closed once no member joined for this long.
    pub idle: Duration,
    /// Closed at the latest this long after it opened.
    pub max: Duration,
    /// Closed as soon as it holds this many members.
    pub cap: usize,
}

struct Open<M> {
    seq: u64,
    members: Vec<M>,
    opened: Instant,
    last_join: Instant,
}

struct State<K, M> {
    open: HashMap<K, Open<M>>,
    /// Batches closed because they were full, until their closer takes them.
    full: HashMap<u64, Vec<M>>,
    next_seq: u64,
}

/// See the module docs. Cheap to clone (shared state).
pub struct Gather<K, M> {
    window: Window,
    state: Arc<Mutex<State<K, M>>>,
}

impl<K, M> Clone for Gather<K, M> {
    fn clone(&self) -> Self {
        Gather {
            window: self.window,
            state: Arc::clone(&self.state),
        }
    }
}

impl<K, M> Gather<K, M>
where
    K: Eq + Hash + Clone + Send + 'static,
    M: Send + 'static,
{
    pub fn new(window: Window) -> Self {
        Gather {
            window,
            state: Arc::new(Mutex::new(State {
                open: HashMap::new(),
                full: HashMap::new(),
                next_seq: 0,
            })),
        }
    }

    /// Adds `member` to the open batch of `key`. When that opened a new
    /// batch, returns the future that waits for the window to close and
    /// then yields the batch's members in the order they joined (this one
    /// first); the caller runs it (usually spawned).
    pub fn join(
        &self,
        key: K,
        member: M,
    ) -> Option<impl Future<Output = Vec<M>> + Send + 'static + use<K, M>> {
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(open) = state.open.get_mut(&key) {
            if open.members.len() < self.window.cap {
                open.members.push(member);
                open.last_join = now;
                return None;
            }
            if let Some(full) = state.open.remove(&key) {
                state.full.insert(full.seq, full.members);
            }
        }
        let seq = state.next_seq;
        state.next_seq = seq.wrapping_add(1);
        state.open.insert(
            key.clone(),
            Open {
                seq,
                members: vec![member],
                opened: now,
                last_join: now,
            },
        );
        drop(state);
        let (state, window) = (Arc::clone(&self.state), self.window);
        Some(async move { close(state, window, key, seq).await })
    }

    /// Members waiting in open batches (for tests and metrics).
    pub fn waiting(&self) -> usize {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.open.values().map(|o| o.members.len()).sum::<usize>()
            + state.full.values().map(Vec::len).sum::<usize>()
    }
}

async fn close<K: Eq + Hash, M>(
    state: Arc<Mutex<State<K, M>>>,
    window: Window,
    key: K,
    seq: u64,
) -> Vec<M> {
    loop {
        let until = {
            let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(members) = s.full.remove(&seq) {
                return members;
            }
            let Some(open) = s.open.get(&key).filter(|o| o.seq == seq) else {
                return Vec::new();
            };
            let until = (open.last_join + window.idle).min(open.opened + window.max);
            if open.members.len() >= window.cap || Instant::now() >= until {
                return s.open.remove(&key).map(|o| o.members).unwrap_or_default();
            }
            until
        };
        tokio::time::sleep_until(until).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Window = Window {
        idle: Duration::from_secs(1),
        max: Duration::from_secs(5),
        cap: 3,
    };

    #[tokio::test(start_paused = true)]
    async fn members_of_one_key_share_a_batch_until_it_idles() {
        let g: Gather<&str, u32> = Gather::new(WINDOW);
        let closer = g.join("a", 1).expect("the first member opens the batch");
        assert!(g.join("a", 2).is_none(), "joins");
        let other = g.join("b", 9).expect("another key, another batch");
        let batch = tokio::spawn(closer);
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert!(g.join("a", 3).is_none(), "still open: idle for < 1 s");
        assert_eq!(batch.await.unwrap(), vec![1, 2, 3]);
        assert_eq!(other.await, vec![9]);
        assert_eq!(g.waiting(), 0);
        assert!(g.join("a", 4).is_some(), "a closed batch takes no one");
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_closes_and_the_next_member_opens_another() {
        let g: Gather<&str, u32> = Gather::new(WINDOW);
        let first = g.join("a", 1).unwrap();
        assert!(g.join("a", 2).is_none());
        assert!(g.join("a", 3).is_none());
        let second = g.join("a", 4).expect("full: a new batch");
        let started = Instant::now();
        assert_eq!(first.await, vec![1, 2, 3]);
        assert!(started.elapsed() <= WINDOW.idle);
        assert_eq!(second.await, vec![4]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_batch_closes_after_the_longest_wait() {
        let g: Gather<&str, u32> = Gather::new(Window { cap: 100, ..WINDOW });
        let started = Instant::now();
        let closer = tokio::spawn(g.join("a", 0).unwrap());
        for i in 1..20 {
            tokio::time::sleep(Duration::from_millis(400)).await;
            let _ = g.join("a", i);
        }
        let members = closer.await.unwrap();
        assert_eq!(members, (0..13).collect::<Vec<_>>(), "joined before 5 s");
        assert!(started.elapsed() >= WINDOW.max);
    }
}
