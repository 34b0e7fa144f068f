//! The Machine index: which Machines name a Node, an EC2 instance or a
//! MachineClass, kept up to date from the watch events that also feed the
//! Machine store.
//!
//! kube's `Store` only looks objects up by name; finding "the Machines of
//! this Node" from it means scanning every Machine, once per Node event —
//! quadratic work with thousands of each. The [`Index`] answers those
//! lookups from hash tables instead. Its entries are [`CachedMachine`]
//! handles, shared with the store, and each key is read off the Machine
//! it belongs to, so the index holds no strings of its own: about 60 bytes
//! per Machine, where string keys and object references cost 1.3 KB. (A
//! Node's instance is looked up in the Node cache, see
//! [`super::nodes::Nodes::with_instance`].)
//!
//! It follows the watcher's relist protocol: `Init` starts a fresh
//! generation, `InitApply` fills it, `InitDone` swaps it in, so a relist
//! drops keys of Machines deleted while the watch was down, as the store
//! does. Call [`Index::observe`] before the store sees the event: a lookup
//! then never finds less than the store holds.

use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::Mutex;

use hashbrown::HashTable;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher::Event;
use kube::{Resource, ResourceExt};

use crate::api::machine::NODE_LABEL;
use crate::aws::instances::instance_id_from_provider_id;
use crate::controller::cached_machine::CachedMachine;

/// What Machines are looked up by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Key<'a> {
    /// The Machines of namespace `ns` using MachineClass `name`.
    Class { ns: &'a str, name: &'a str },
    /// The Machines whose node label names this Node.
    Node(&'a str),
    /// The Machines whose providerID names this EC2 instance.
    Instance(&'a str),
}

/// The kinds of [`Key`] kept in the keyed table (Machines are found by
/// class through [`Tables::classes`]: one key shared by a whole fleet would
/// crowd a hash table's probe sequence).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Node,
    Instance,
}

const KINDS: [Kind; 2] = [Kind::Node, Kind::Instance];

/// The key of `kind` that `m` carries, if any.
fn key_of(kind: Kind, m: &CachedMachine) -> Option<Key<'_>> {
    match kind {
        Kind::Node => m.labels().get(NODE_LABEL).map(Key::Node),
        Kind::Instance => m
            .spec
            .provider_id
            .as_deref()
            .and_then(instance_id_from_provider_id)
            .map(Key::Instance),
    }
}

/// The class key of `m`.
fn class_of(m: &CachedMachine) -> (&str, &str) {
    (
        m.meta().namespace.as_deref().unwrap_or_default(),
        &m.spec.class.name,
    )
}

/// See the module docs.
#[derive(Default)]
pub struct Index {
    tables: Mutex<Generations>,
    hasher: RandomState,
}

#[derive(Default)]
struct Generations {
    live: Tables,
    /// Filled during a relist, swapped in at its end.
    relist: Option<Tables>,
}

#[derive(Default)]
struct Tables {
    /// Every indexed Machine, hashed by namespace and name.
    machines: HashTable<CachedMachine>,
    /// Each Machine once per Node or instance key it carries, hashed by
    /// the key.
    keyed: HashTable<(Kind, CachedMachine)>,
    /// The Machines of each class, hashed by namespace and class name.
    classes: HashTable<ClassUsers>,
}

/// The Machines using one class.
struct ClassUsers {
    ns: Box<str>,
    name: Box<str>,
    /// Hashed by namespace and name.
    machines: HashTable<CachedMachine>,
}

/// A reference to `m`, as kube's store keys it.
fn to_ref(m: &CachedMachine) -> ObjectRef<CachedMachine> {
    let r = ObjectRef::new(&m.name_any());
    match m.namespace() {
        Some(ns) => r.within(&ns),
        None => r,
    }
}

/// Namespace and name of a Machine.
fn id(m: &CachedMachine) -> (Option<&str>, Option<&str>) {
    (m.meta().namespace.as_deref(), m.meta().name.as_deref())
}

impl Index {
    pub fn new() -> Self {
        Self::default()
    }

    fn hash(&self, value: impl Hash) -> u64 {
        self.hasher.hash_one(value)
    }

    /// Follows one watch event (call it for every event, before the store
    /// sees it).
    pub fn observe(&self, event: &Event<CachedMachine>) {
        let mut g = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        match event {
            Event::Apply(m) => self.insert(&mut g.live, m),
            Event::Delete(m) => self.remove(&mut g.live, m),
            Event::Init => g.relist = Some(Tables::default()),
            Event::InitApply(m) => {
                let fresh = g.relist.get_or_insert_with(Tables::default);
                self.insert(fresh, m);
            }
            Event::InitDone => {
                if let Some(fresh) = g.relist.take() {
                    g.live = fresh;
                }
            }
        }
    }

    /// Takes `m` in place of the Machine of the same name.
    fn insert(&self, t: &mut Tables, m: &CachedMachine) {
        self.remove(t, m);
        let by_id = |e: &CachedMachine| self.hash(id(e));
        t.machines.insert_unique(by_id(m), m.clone(), by_id);
        for kind in KINDS {
            if let Some(key) = key_of(kind, m) {
                let rehash = |(k, e): &(Kind, CachedMachine)| self.hash(key_of(*k, e));
                t.keyed
                    .insert_unique(self.hash(Some(key)), (kind, m.clone()), rehash);
            }
        }
        let class = class_of(m);
        let users = match t
            .classes
            .find_entry(self.hash(class), |u| (&*u.ns, &*u.name) == class)
        {
            Ok(found) => found.into_mut(),
            Err(absent) => {
                let table = absent.into_table();
                let users = ClassUsers {
                    ns: class.0.into(),
                    name: class.1.into(),
                    machines: HashTable::new(),
                };
                let rehash = |u: &ClassUsers| self.hash((&*u.ns, &*u.name));
                table
                    .insert_unique(self.hash(class), users, rehash)
                    .into_mut()
            }
        };
        users.machines.insert_unique(by_id(m), m.clone(), by_id);
    }

    /// Drops the Machine named as `m` is, and its keys.
    fn remove(&self, t: &mut Tables, m: &CachedMachine) {
        let Ok(found) = t.machines.find_entry(self.hash(id(m)), |e| id(e) == id(m)) else {
            return;
        };
        let (old, _) = found.remove();
        for kind in KINDS {
            if let Some(key) = key_of(kind, &old) {
                let slot = t
                    .keyed
                    .find_entry(self.hash(Some(key)), |(k, e)| *k == kind && e.same(&old));
                if let Ok(slot) = slot {
                    slot.remove();
                }
            }
        }
        let class = class_of(&old);
        if let Ok(mut users) = t
            .classes
            .find_entry(self.hash(class), |u| (&*u.ns, &*u.name) == class)
        {
            let machines = &mut users.get_mut().machines;
            if let Ok(slot) = machines.find_entry(self.hash(id(&old)), |e| e.same(&old)) {
                slot.remove();
            }
            if machines.is_empty() {
                users.remove();
            }
        }
    }

    /// The Machines found under `key`.
    pub fn get(&self, key: Key<'_>) -> Vec<ObjectRef<CachedMachine>> {
        let g = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        let t = &g.live;
        let found: Vec<&CachedMachine> = match key {
            Key::Class { ns, name } => t
                .classes
                .find(self.hash((ns, name)), |u| (&*u.ns, &*u.name) == (ns, name))
                .map(|u| u.machines.iter().collect())
                .unwrap_or_default(),
            Key::Node(_) | Key::Instance(_) => t
                .keyed
                .iter_hash(self.hash(Some(key)))
                .filter(|(k, m)| key_of(*k, m) == Some(key))
                .map(|(_, m)| m)
                .collect(),
        };
        found.into_iter().map(to_ref).collect()
    }

    /// How many Machines are indexed.
    pub fn len(&self) -> usize {
        let g = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        g.live.machines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::machine::Machine;
    use kube::ResourceExt;
    use serde_json::json;

    fn machine(name: &str, node: Option<&str>, provider_id: Option<&str>) -> CachedMachine {
        let mut m: Machine = serde_json::from_value(json!({
            "apiVersion": "machine.sapcloud.io/v1alpha1",
            "kind": "Machine",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"class": {"name": "c"}}
        }))
        .unwrap();
        if let Some(node) = node {
            m.labels_mut().insert(NODE_LABEL.into(), node.into());
        }
        m.spec.provider_id = provider_id.map(str::to_string);
        m.into()
    }

    fn names(refs: Vec<ObjectRef<CachedMachine>>) -> Vec<String> {
        let mut v: Vec<_> = refs.into_iter().map(|r| r.name).collect();
        v.sort();
        v
    }

    #[test]
    fn finds_machines_by_node_instance_and_class() {
        let index = Index::new();
        index.observe(&Event::Apply(machine(
            "a",
            Some("ip-1"),
            Some("aws:///eu-west-1/i-1"),
        )));
        index.observe(&Event::Apply(machine(
            "b",
            None,
            Some("aws:///eu-west-1/i-2"),
        )));
        assert_eq!(names(index.get(Key::Node("ip-1"))), ["a"]);
        assert_eq!(names(index.get(Key::Instance("i-1"))), ["a"]);
        assert_eq!(names(index.get(Key::Instance("i-2"))), ["b"]);
        assert!(index.get(Key::Node("ip-2")).is_empty());
        // A node named like an instance is not the instance.
        assert!(index.get(Key::Node("i-1")).is_empty());
        let class = |ns| Key::Class { ns, name: "c" };
        assert_eq!(names(index.get(class("ns"))), ["a", "b"]);
        assert!(index.get(class("other")).is_empty());
        let found = index.get(Key::Node("ip-1"));
        assert_eq!(found[0].namespace.as_deref(), Some("ns"));
        assert_eq!(index.len(), 2);
    }

    #[test]
    fn an_update_moves_keys_and_a_delete_drops_them() {
        let index = Index::new();
        index.observe(&Event::Apply(machine("a", Some("ip-1"), None)));
        index.observe(&Event::Apply(machine("a", Some("ip-2"), None)));
        assert!(index.get(Key::Node("ip-1")).is_empty());
        assert_eq!(names(index.get(Key::Node("ip-2"))), ["a"]);
        assert_eq!(index.len(), 1);
        // A delete drops the keys the index holds, whatever the deleted
        // object's last state says.
        index.observe(&Event::Delete(machine("a", Some("ip-3"), None)));
        assert!(index.get(Key::Node("ip-2")).is_empty());
        assert!(
            index
                .get(Key::Class {
                    ns: "ns",
                    name: "c"
                })
                .is_empty()
        );
        assert!(index.is_empty());
    }

    #[test]
    fn a_relist_replaces_everything_at_its_end() {
        let index = Index::new();
        index.observe(&Event::Apply(machine("gone", Some("ip-1"), None)));
        index.observe(&Event::Init);
        index.observe(&Event::InitApply(machine("kept", Some("ip-2"), None)));
        // Until the relist ends, lookups answer from the old generation.
        assert_eq!(names(index.get(Key::Node("ip-1"))), ["gone"]);
        assert!(index.get(Key::Node("ip-2")).is_empty());
        index.observe(&Event::InitDone);
        assert!(index.get(Key::Node("ip-1")).is_empty());
        assert_eq!(names(index.get(Key::Node("ip-2"))), ["kept"]);
    }

    #[test]
    fn two_machines_on_one_node_are_both_found() {
        let index = Index::new();
        index.observe(&Event::Apply(machine("a", Some("ip-1"), None)));
        index.observe(&Event::Apply(machine("b", Some("ip-1"), None)));
        assert_eq!(names(index.get(Key::Node("ip-1"))), ["a", "b"]);
        index.observe(&Event::Delete(machine("a", Some("ip-1"), None)));
        assert_eq!(names(index.get(Key::Node("ip-1"))), ["b"]);
    }

    #[test]
    fn many_machines_stay_findable_as_the_tables_grow_and_shrink() {
        let index = Index::new();
        let node = |i: usize| format!("ip-{}", i % 500);
        let provider = |i: usize| format!("aws:///eu-west-1/i-{i:017x}");
        for i in 0..5000 {
            index.observe(&Event::Apply(machine(
                &format!("m-{i}"),
                Some(&node(i)),
                Some(&provider(i)),
            )));
        }
        for i in (0..5000).step_by(2) {
            index.observe(&Event::Delete(machine(&format!("m-{i}"), None, None)));
        }
        assert_eq!(index.len(), 2500);
        for i in 0..5000 {
            let by_instance = names(index.get(Key::Instance(&format!("i-{i:017x}"))));
            let want: Vec<String> = if i % 2 == 1 {
                vec![format!("m-{i}")]
            } else {
                vec![]
            };
            assert_eq!(by_instance, want, "instance of m-{i}");
        }
        // ip-1 is named by the ten odd Machines i = 1 (mod 500); those of
        // ip-2 were all deleted.
        assert_eq!(index.get(Key::Node("ip-1")).len(), 10);
        assert!(index.get(Key::Node("ip-2")).is_empty());
        let all = index.get(Key::Class {
            ns: "ns",
            name: "c",
        });
        assert_eq!(all.len(), 2500);
    }

    #[test]
    fn the_keys_of_a_machine() {
        let m = machine("a", Some("ip-1"), Some("aws:///eu-west-1/i-1"));
        let (ns, name) = class_of(&m);
        let keys: Vec<Key> = std::iter::once(Key::Class { ns, name })
            .chain(KINDS.into_iter().filter_map(|kind| key_of(kind, &m)))
            .collect();
        assert_eq!(
            keys,
            [
                Key::Class {
                    ns: "ns",
                    name: "c"
                },
                Key::Node("ip-1"),
                Key::Instance("i-1")
            ]
        );
        assert_eq!(m.name_any(), "a");
    }
}
