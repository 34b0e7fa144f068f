//! Shared copies of API sub-objects that repeat across cached objects: a
//! [`Shared<T>`] is a `T` on the wire and in schemas, and in memory one
//! reference-counted copy per distinct value.
//!
//! Every Machine of a set carries the same class reference, node template
//! and timeouts, copied from the set's template: about 1.3 KB per Machine
//! held once per Machine in the cache (the node template alone is an
//! `ObjectMeta` plus a `NodeSpec`, 600 bytes before its labels). Deserialized
//! as `Shared`, equal values found while other objects still hold them are
//! handed out again, so a fleet keeps one copy per template. Values built in
//! code are not looked up (only what is deserialized reaches the caches);
//! writing through [`DerefMut`] copies a value other holders still share.
//!
//! Equal values are found by their JSON text (the types shared here have no
//! `Hash`) and confirmed by `==`. Entries whose value nobody holds any more
//! are swept out once the table has doubled since the last sweep, like
//! [`crate::intern`]'s strings.

use std::any::{Any, TypeId};
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, LazyLock, Mutex, Weak};

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// See the module docs.
#[derive(Clone, PartialEq)]
pub struct Shared<T>(Arc<T>);

/// Values handed out, by type and JSON text.
#[derive(Default)]
struct Table {
    map: HashMap<(TypeId, Box<str>), Weak<dyn Any + Send + Sync>>,
    /// Size of the map after the last sweep.
    swept_at: usize,
}

/// Below this many entries the table never sweeps.
const MIN_SWEEP: usize = 64;

static TABLE: LazyLock<Mutex<Table>> = LazyLock::new(Mutex::default);

impl Table {
    fn sweep(&mut self) {
        self.map.retain(|_, held| held.strong_count() > 0);
        self.map.shrink_to_fit();
        self.swept_at = self.map.len();
    }
}

impl<T> Shared<T>
where
    T: Serialize + PartialEq + Send + Sync + 'static,
{
    /// The copy of `value` already held elsewhere, or `value` made the copy
    /// later equal values share.
    pub fn dedup(value: T) -> Self {
        let Ok(text) = serde_json::to_string(&value) else {
            return Shared(Arc::new(value));
        };
        let key = (TypeId::of::<T>(), text.into_boxed_str());
        let mut table = TABLE.lock().unwrap_or_else(|p| p.into_inner());
        let found = table
            .map
            .get(&key)
            .and_then(Weak::upgrade)
            .and_then(|held| held.downcast::<T>().ok())
            .filter(|held| **held == value);
        if let Some(held) = found {
            return Shared(held);
        }
        if table.map.len() >= (2 * table.swept_at).max(MIN_SWEEP) {
            table.sweep();
        }
        let held = Arc::new(value);
        let erased: Arc<dyn Any + Send + Sync> = held.clone();
        table.map.insert(key, Arc::downgrade(&erased));
        Shared(held)
    }
}

impl<T: Default + PartialEq> Shared<T> {
    /// Whether the value equals `T`'s default, without building a shared
    /// default (for `skip_serializing_if`: no table lookup per write).
    pub fn is_default(&self) -> bool {
        *self.0 == T::default()
    }
}

impl<T> Shared<T> {
    /// Whether `a` and `b` are the same copy (not merely equal).
    pub fn ptr_eq(a: &Self, b: &Self) -> bool {
        Arc::ptr_eq(&a.0, &b.0)
    }
}

impl<T> From<T> for Shared<T> {
    fn from(value: T) -> Self {
        Shared(Arc::new(value))
    }
}

/// Shared as well: most Machines leave a field out (a set without a node
/// template), and serde fills each of those with a default, which would
/// otherwise be a copy per Machine (~600 bytes for a node template).
impl<T> Default for Shared<T>
where
    T: Default + Serialize + PartialEq + Send + Sync + 'static,
{
    fn default() -> Self {
        Self::dedup(T::default())
    }
}

impl<T> Deref for Shared<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: Clone> DerefMut for Shared<T> {
    fn deref_mut(&mut self) -> &mut T {
        Arc::make_mut(&mut self.0)
    }
}

impl<T: fmt::Debug> fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl<T: Serialize> Serialize for Shared<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for Shared<T>
where
    T: Deserialize<'de> + Serialize + PartialEq + Send + Sync + 'static,
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        T::deserialize(d).map(Shared::dedup)
    }
}

impl<T: JsonSchema> JsonSchema for Shared<T> {
    fn inline_schema() -> bool {
        T::inline_schema()
    }
    fn schema_name() -> Cow<'static, str> {
        T::schema_name()
    }
    fn schema_id() -> Cow<'static, str> {
        T::schema_id()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        T::json_schema(generator)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
    struct Template {
        labels: BTreeMap<String, String>,
    }

    fn template(pool: &str) -> Shared<Template> {
        serde_json::from_value(serde_json::json!({"labels": {"pool": pool}})).unwrap()
    }

    #[test]
    fn equal_deserialized_values_share_one_copy() {
        let (a, b, c) = (template("a"), template("a"), template("c"));
        assert!(Shared::ptr_eq(&a, &b));
        assert!(!Shared::ptr_eq(&a, &c));
        assert_eq!(a.labels["pool"], "a");
        assert_eq!(
            serde_json::to_value(&a).unwrap(),
            serde_json::json!({"labels": {"pool": "a"}})
        );
    }

    #[test]
    fn the_table_does_not_keep_values_alive() {
        let first = template("dropped");
        let weak = Arc::downgrade(&first.0);
        drop(first);
        assert!(weak.upgrade().is_none());
        assert_eq!(template("dropped").labels["pool"], "dropped");
    }

    #[test]
    fn defaults_share_one_copy_until_written() {
        let (a, mut b) = (Shared::<Template>::default(), Shared::<Template>::default());
        assert!(Shared::ptr_eq(&a, &b));
        b.labels.insert("pool".into(), "b".into());
        assert!(a.labels.is_empty());
        assert!(!Shared::ptr_eq(&a, &b));
    }

    #[test]
    fn writing_copies_a_value_others_share() {
        let a = template("w");
        let mut b = a.clone();
        b.labels.insert("extra".into(), "1".into());
        assert_eq!(a.labels.len(), 1);
        assert_eq!(b.labels.len(), 2);
        assert!(Shared::ptr_eq(&a, &template("w")));
    }

    #[test]
    fn unheld_values_do_not_accumulate() {
        let held: Vec<_> = (0..5).map(|n| template(&format!("held-{n}"))).collect();
        for n in 0..10_000 {
            drop(template(&format!("transient-{n}")));
        }
        let table = TABLE.lock().unwrap();
        assert!(
            table.map.len() < 4 * MIN_SWEEP + 1000,
            "{}",
            table.map.len()
        );
        drop(table);
        for (n, h) in held.iter().enumerate() {
            assert!(Shared::ptr_eq(h, &template(&format!("held-{n}"))));
        }
    }

    #[test]
    fn the_schema_is_the_values() {
        let mut generator = SchemaGenerator::default();
        assert_eq!(
            Shared::<Template>::json_schema(&mut generator),
            Template::json_schema(&mut generator)
        );
    }
}
