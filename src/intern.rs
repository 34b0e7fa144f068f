//! String interning for caches: equal strings held by many cached objects
//! (label keys and values, condition reasons and messages, taint keys) are
//! stored once and shared by reference count.
//!
//! A fleet's Nodes and Machines repeat almost every string they carry: the
//! same fifteen label keys, the same condition types, reasons and
//! messages. Kept as `String`s each copy costs its own allocation; interned,
//! a repeat costs a pointer. An [`Interner`] belongs to one cache and is
//! used under that cache's lock; [`IStr`], for API fields deserialized
//! anywhere (a Machine's conditions), shares one process-wide interner and
//! is a thin pointer to one allocation holding count, length and text
//! (`arcstr`'s `ArcStr`: 8 bytes, not 16 — a Machine's seven conditions
//! hold 28 of them — and one allocation per distinct string, not two).
//! Strings no object holds any more are swept out once the set has doubled
//! since the last sweep, which keeps its size within twice what is in use.

use std::borrow::{Borrow, Cow};
use std::collections::HashSet;
use std::fmt;
use std::hash::Hash;
use std::ops::Deref;
use std::sync::{Arc, LazyLock, Mutex};

use arcstr::ArcStr;

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An interned string.
pub type Sym = Arc<str>;

/// See the module docs.
pub struct Interner<S = Sym> {
    set: HashSet<S>,
    /// Size of the set after the last sweep.
    swept_at: usize,
}

impl<S> Default for Interner<S> {
    fn default() -> Self {
        Interner {
            set: HashSet::new(),
            swept_at: 0,
        }
    }
}

/// What an [`Interner`] can hold: a shared string that knows how many hold
/// it.
pub trait Shareable: Borrow<str> + Hash + Eq + Clone {
    fn new(s: &str) -> Self;
    fn holders(&self) -> usize;
}

impl Shareable for Sym {
    fn new(s: &str) -> Self {
        Arc::from(s)
    }
    fn holders(&self) -> usize {
        Arc::strong_count(self)
    }
}

/// The thin shared string behind [`IStr`].
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Thin(ArcStr);

impl Borrow<str> for Thin {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl Shareable for Thin {
    fn new(s: &str) -> Self {
        Thin(ArcStr::from(s))
    }
    fn holders(&self) -> usize {
        // `None` only for literals, which the interner never makes.
        ArcStr::strong_count(&self.0).unwrap_or(usize::MAX)
    }
}

/// Below this many strings the interner never sweeps.
const MIN_SWEEP: usize = 1024;

impl<S: Shareable> Interner<S> {
    /// The shared copy of `s`.
    pub fn intern(&mut self, s: &str) -> S {
        if let Some(found) = self.set.get(s) {
            return found.clone();
        }
        if self.set.len() >= (2 * self.swept_at).max(MIN_SWEEP) {
            self.sweep();
        }
        let sym = S::new(s);
        self.set.insert(sym.clone());
        sym
    }

    /// Drops the strings only the interner still holds.
    pub fn sweep(&mut self) {
        self.set.retain(|s| s.holders() > 1);
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

/// The interner behind every [`IStr`].
static SHARED: LazyLock<Mutex<Interner<Thin>>> = LazyLock::new(Mutex::default);

/// An interned string for API fields whose values repeat across objects;
/// on the wire and in schemas a plain string.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IStr(Thin);

impl IStr {
    pub fn new(s: &str) -> Self {
        IStr(SHARED.lock().unwrap_or_else(|p| p.into_inner()).intern(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.0.is_empty()
    }

    /// Whether `self` and `other` are one shared string, not merely equal.
    pub fn same(&self, other: &IStr) -> bool {
        ArcStr::ptr_eq(&self.0.0, &other.0.0)
    }
}

impl Borrow<str> for IStr {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

/// An [`IStr`] can also live in an [`Interner`] of its own, for a cache
/// that sweeps its strings itself (the Node cache): half the size of a
/// [`Sym`] in every field that holds one.
impl Shareable for IStr {
    fn new(s: &str) -> Self {
        IStr(Thin::new(s))
    }
    fn holders(&self) -> usize {
        self.0.holders()
    }
}

impl Default for IStr {
    fn default() -> Self {
        IStr::new("")
    }
}

impl Deref for IStr {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0.0
    }
}

impl From<&str> for IStr {
    fn from(s: &str) -> Self {
        IStr::new(s)
    }
}

impl From<String> for IStr {
    fn from(s: String) -> Self {
        IStr::new(&s)
    }
}

impl From<&String> for IStr {
    fn from(s: &String) -> Self {
        IStr::new(s)
    }
}

impl PartialEq<str> for IStr {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for IStr {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for IStr {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other.as_str()
    }
}

impl fmt::Debug for IStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for IStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for IStr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for IStr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Cow::<'de, str>::deserialize(d)?;
        Ok(IStr::new(&s))
    }
}

impl JsonSchema for IStr {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        String::schema_name()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        String::json_schema(generator)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_strings_share_one_copy() {
        let mut i = Interner::<Sym>::default();
        let a = i.intern("kubelet is posting ready status");
        let b = i.intern(&String::from("kubelet is posting ready status"));
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(&*a, "kubelet is posting ready status");
        assert_eq!(i.len(), 1);
        assert!(!Arc::ptr_eq(&a, &i.intern("other")));
    }

    #[test]
    fn a_sweep_keeps_what_is_held_and_drops_the_rest() {
        let mut i = Interner::<Sym>::default();
        let kept = i.intern("kept");
        drop(i.intern("dropped"));
        i.sweep();
        assert_eq!(i.len(), 1);
        assert!(Arc::ptr_eq(&kept, &i.intern("kept")));
    }

    #[test]
    fn an_istr_is_a_plain_string_on_the_wire_and_shared_in_memory() {
        let a: IStr = serde_json::from_str("\"KubeletReady\"").unwrap();
        let b = IStr::from("KubeletReady");
        assert!(ArcStr::ptr_eq(&a.0.0, &b.0.0));
        assert_eq!(std::mem::size_of::<Option<IStr>>(), 8);
        assert_eq!(a, "KubeletReady");
        assert_eq!(serde_json::to_string(&a).unwrap(), "\"KubeletReady\"");
        assert_eq!(format!("{a} {a:?}"), "KubeletReady \"KubeletReady\"");
    }

    #[test]
    fn unused_strings_do_not_accumulate() {
        let mut i = Interner::<Sym>::default();
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
