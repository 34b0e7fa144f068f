//! A string interner for caches: equal strings held by many cached objects
//! (label keys and values, condition reasons and messages, taint keys) are
//! stored once and shared by reference count.
//!
//! A fleet's Nodes repeat almost every string they carry: the same fifteen
//! label keys, the same five condition messages, mostly the same label
//! values. Kept as `String`s each copy costs its own allocation; interned,
//! a repeat costs a pointer. The interner belongs to one cache and is used
//! under that cache's lock, so it needs no global state; strings no cached
//! object holds any more are swept out once the set has doubled since the
//! last sweep, which keeps its size within twice what is in use.

use std::collections::HashSet;
use std::sync::Arc;

/// An interned string.
pub type Sym = Arc<str>;

/// See the module docs.
#[derive(Default)]
pub struct Interner {
    set: HashSet<Sym>,
    /// Size of the set after the last sweep.
    swept_at: usize,
}

/// Below this many strings the interner never sweeps.
const MIN_SWEEP: usize = 1024;

impl Interner {
    /// The shared copy of `s`.
    pub fn intern(&mut self, s: &str) -> Sym {
        if let Some(found) = self.set.get(s) {
            return found.clone();
        }
        if self.set.len() >= (2 * self.swept_at).max(MIN_SWEEP) {
            self.sweep();
        }
        let sym: Sym = Arc::from(s);
        self.set.insert(sym.clone());
        sym
    }

    /// Drops the strings only the interner still holds.
    pub fn sweep(&mut self) {
        self.set.retain(|s| Arc::strong_count(s) > 1);
        self.set.shrink_to_fit();
        self.swept_at = self.set.len();
    }

    /// How many distinct strings are held.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_strings_share_one_copy() {
        let mut i = Interner::default();
        let a = i.intern("kubelet is posting ready status");
        let b = i.intern(&String::from("kubelet is posting ready status"));
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(&*a, "kubelet is posting ready status");
        assert_eq!(i.len(), 1);
        assert!(!Arc::ptr_eq(&a, &i.intern("other")));
    }

    #[test]
    fn a_sweep_keeps_what_is_held_and_drops_the_rest() {
        let mut i = Interner::default();
        let kept = i.intern("kept");
        drop(i.intern("dropped"));
        i.sweep();
        assert_eq!(i.len(), 1);
        assert!(Arc::ptr_eq(&kept, &i.intern("kept")));
    }

    #[test]
    fn unused_strings_do_not_accumulate() {
        let mut i = Interner::default();
        let held: Vec<Sym> = (0..10).map(|n| i.intern(&format!("held-{n}"))).collect();
        for n in 0..100_000 {
            drop(i.intern(&format!("transient-{n}")));
        }
        assert!(i.len() <= 2 * MIN_SWEEP, "{} strings held", i.len());
        for (n, h) in held.iter().enumerate() {
            assert!(Arc::ptr_eq(h, &i.intern(&format!("held-{n}"))));
        }
    }
}
