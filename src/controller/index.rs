//! Secondary indexes over watched objects: which objects carry a key (a
//! Node name, an instance ID), kept up to date from the watch events that
//! also feed the object's store.
//!
//! kube's `Store` only looks objects up by name; finding "the Machines of
//! this Node" or "the Node of this instance" from it means scanning every
//! object, once per Node event — quadratic work with thousands of each. An
//! [`Index`] answers those lookups from a map instead. It follows the
//! watcher's relist protocol: `Init` starts a fresh buffer, `InitApply`
//! fills it, `InitDone` swaps it in, so a relist drops keys of objects
//! deleted while the watch was down, as the store does.

use std::collections::{HashMap, HashSet};
use std::marker::PhantomData;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::Node;
use kube::Resource;
use kube::runtime::reflector::{Lookup, ObjectRef};
use kube::runtime::watcher::Event;

use crate::api::machine::NODE_LABEL;
use crate::aws::instances::instance_id_from_provider_id;
use crate::controller::cached_machine::CachedMachine;
use crate::intern::{Interner, Sym};

/// The keys an object is found under.
pub type KeysOf<K> = fn(&K) -> Vec<String>;

/// Objects by key; see the module docs.
pub struct Index<K>
where
    K: Lookup<DynamicType = ()> + 'static,
{
    keys_of: KeysOf<K>,
    maps: Mutex<Generations>,
    kind: PhantomData<fn() -> K>,
}

struct Generations {
    live: Maps,
    /// Filled during a relist, swapped in at its end.
    relist: Option<Maps>,
    /// Keys, names and namespaces, shared by both generations.
    strings: Interner,
}

/// An object by namespace and name, both interned: the index holds one per
/// object and key, so it keeps them small (a kube `ObjectRef` is ~100 bytes
/// before its strings).
#[derive(Clone, PartialEq, Eq, Hash)]
struct Obj {
    namespace: Option<Sym>,
    name: Sym,
}

/// The objects under one key: almost always one (a Node, an instance), so
/// one is kept without a set around it.
enum Refs {
    One(Obj),
    Many(HashSet<Obj>),
}

#[derive(Default)]
struct Maps {
    by_key: HashMap<Sym, Refs>,
    by_object: HashMap<Obj, Box<[Sym]>>,
}

impl Maps {
    fn remove(&mut self, obj: &Obj) {
        for key in self.by_object.remove(obj).unwrap_or_default() {
            let emptied = match self.by_key.get_mut(&key) {
                Some(Refs::One(o)) => o == obj,
                Some(Refs::Many(set)) => {
                    set.remove(obj);
                    set.is_empty()
                }
                None => false,
            };
            if emptied {
                self.by_key.remove(&key);
            }
        }
    }

    fn insert(&mut self, obj: Obj, keys: Box<[Sym]>) {
        self.remove(&obj);
        for key in &keys {
            match self.by_key.get_mut(key) {
                None => {
                    self.by_key.insert(key.clone(), Refs::One(obj.clone()));
                }
                Some(Refs::One(o)) if *o == obj => {}
                Some(Refs::One(o)) => {
                    let set = HashSet::from([o.clone(), obj.clone()]);
                    self.by_key.insert(key.clone(), Refs::Many(set));
                }
                Some(Refs::Many(set)) => {
                    set.insert(obj.clone());
                }
            }
        }
        if !keys.is_empty() {
            self.by_object.insert(obj, keys);
        }
    }
}

impl<K> Index<K>
where
    K: Lookup<DynamicType = ()> + 'static,
{
    pub fn new(keys_of: KeysOf<K>) -> Self {
        Self {
            keys_of,
            maps: Mutex::new(Generations {
                live: Maps::default(),
                relist: None,
                strings: Interner::default(),
            }),
            kind: PhantomData,
        }
    }

    /// Follows one watch event (call it for every event, before the store
    /// sees it).
    pub fn observe(&self, event: &Event<K>) {
        let mut guard = self.maps.lock().unwrap_or_else(|p| p.into_inner());
        let g = &mut *guard;
        match event {
            Event::Apply(obj) => {
                let (o, keys) = self.entry(&mut g.strings, obj);
                g.live.insert(o, keys);
            }
            Event::Delete(obj) => {
                let o = object(&mut g.strings, obj);
                g.live.remove(&o);
            }
            Event::Init => g.relist = Some(Maps::default()),
            Event::InitApply(obj) => {
                let (o, keys) = self.entry(&mut g.strings, obj);
                g.relist.get_or_insert_with(Maps::default).insert(o, keys);
            }
            Event::InitDone => {
                if let Some(fresh) = g.relist.take() {
                    g.live = fresh;
                    g.strings.sweep();
                }
            }
        }
    }

    fn entry(&self, strings: &mut Interner, obj: &K) -> (Obj, Box<[Sym]>) {
        let keys = (self.keys_of)(obj)
            .iter()
            .map(|k| strings.intern(k))
            .collect();
        (object(strings, obj), keys)
    }

    /// The objects found under `key`.
    pub fn get(&self, key: &str) -> Vec<ObjectRef<K>> {
        let g = self.maps.lock().unwrap_or_else(|p| p.into_inner());
        let to_ref = |o: &Obj| {
            let r = ObjectRef::new(&o.name);
            match &o.namespace {
                Some(ns) => r.within(ns),
                None => r,
            }
        };
        match g.live.by_key.get(key) {
            None => Vec::new(),
            Some(Refs::One(o)) => vec![to_ref(o)],
            Some(Refs::Many(set)) => set.iter().map(to_ref).collect(),
        }
    }
}

fn object<K: Lookup<DynamicType = ()>>(strings: &mut Interner, obj: &K) -> Obj {
    Obj {
        namespace: obj.namespace().map(|ns| strings.intern(&ns)),
        name: strings.intern(&obj.name().unwrap_or_default()),
    }
}

/// Index key of the objects naming Node `name`.
pub fn node_key(name: &str) -> String {
    format!("node/{name}")
}

/// Index key of the objects naming EC2 instance `id`.
pub fn instance_key(id: &str) -> String {
    format!("instance/{id}")
}

/// Index key of the Machines using class `name` of namespace `ns`.
pub fn class_key(ns: &str, name: &str) -> String {
    format!("class/{ns}/{name}")
}

/// A Machine is found under its class, its Node (the node label) and its
/// instance (the ID in its providerID).
pub fn machine_keys(m: &CachedMachine) -> Vec<String> {
    let mut keys = vec![class_key(
        m.meta().namespace.as_deref().unwrap_or_default(),
        &m.spec.class.name,
    )];
    if let Some(node) = m.labels().get(NODE_LABEL) {
        keys.push(node_key(node));
    }
    if let Some(id) = m
        .spec
        .provider_id
        .as_deref()
        .and_then(instance_id_from_provider_id)
    {
        keys.push(instance_key(id));
    }
    keys
}

/// A Node is found under the instance ID of its providerID.
pub fn node_keys(n: &Node) -> Vec<String> {
    n.spec
        .as_ref()
        .and_then(|s| s.provider_id.as_deref())
        .and_then(instance_id_from_provider_id)
        .map(instance_key)
        .into_iter()
        .collect()
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
    fn finds_machines_by_node_and_instance() {
        let index = Index::new(machine_keys);
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
        assert_eq!(names(index.get(&node_key("ip-1"))), ["a"]);
        assert_eq!(names(index.get(&instance_key("i-1"))), ["a"]);
        assert_eq!(names(index.get(&instance_key("i-2"))), ["b"]);
        assert!(index.get(&node_key("ip-2")).is_empty());
        assert_eq!(names(index.get(&class_key("ns", "c"))), ["a", "b"]);
        assert!(index.get(&class_key("other", "c")).is_empty());
    }

    #[test]
    fn an_update_moves_keys_and_a_delete_drops_them() {
        let index = Index::new(machine_keys);
        index.observe(&Event::Apply(machine("a", Some("ip-1"), None)));
        index.observe(&Event::Apply(machine("a", Some("ip-2"), None)));
        assert!(index.get(&node_key("ip-1")).is_empty());
        assert_eq!(names(index.get(&node_key("ip-2"))), ["a"]);
        index.observe(&Event::Delete(machine("a", Some("ip-2"), None)));
        assert!(index.get(&node_key("ip-2")).is_empty());
    }

    #[test]
    fn a_relist_replaces_everything_at_its_end() {
        let index = Index::new(machine_keys);
        index.observe(&Event::Apply(machine("gone", Some("ip-1"), None)));
        index.observe(&Event::Init);
        index.observe(&Event::InitApply(machine("kept", Some("ip-2"), None)));
        // Until the relist ends, lookups answer from the old generation.
        assert_eq!(names(index.get(&node_key("ip-1"))), ["gone"]);
        assert!(index.get(&node_key("ip-2")).is_empty());
        index.observe(&Event::InitDone);
        assert!(index.get(&node_key("ip-1")).is_empty());
        assert_eq!(names(index.get(&node_key("ip-2"))), ["kept"]);
    }

    #[test]
    fn two_machines_on_one_node_are_both_found() {
        let index = Index::new(machine_keys);
        index.observe(&Event::Apply(machine("a", Some("ip-1"), None)));
        index.observe(&Event::Apply(machine("b", Some("ip-1"), None)));
        assert_eq!(names(index.get(&node_key("ip-1"))), ["a", "b"]);
        index.observe(&Event::Delete(machine("a", Some("ip-1"), None)));
        assert_eq!(names(index.get(&node_key("ip-1"))), ["b"]);
    }

    #[test]
    fn nodes_are_found_by_the_instance_in_their_provider_id() {
        let index = Index::new(node_keys);
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": "ip-1"},
            "spec": {"providerID": "aws:///eu-west-1a/i-9"}
        }))
        .unwrap();
        index.observe(&Event::Apply(node));
        let found = index.get(&instance_key("i-9"));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].name, "ip-1");
    }
}
