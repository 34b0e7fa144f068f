//! The Machine as the operator's cache holds it: every field a reconcile
//! reads, with labels and annotations as compact sorted pairs instead of
//! `ObjectMeta`'s B-trees.
//!
//! A `BTreeMap` allocates a whole node (about 540 bytes for string pairs)
//! for its first entry, so a Machine's two labels (`name`, `node`) and its
//! launch record cost 1.5 KB of B-tree in the cache — more than half of the
//! cached Machine, and 15 MB at 10,000. [`CachedMachine`] keeps them as
//! [`Pairs`] (interned keys, boxed values) and everything else as the watch
//! delivered it; [`CachedMachine::to_machine`] gives the API type back for
//! a reconcile.
//!
//! A `CachedMachine` is a handle: its parts sit behind one `Arc`, so the
//! store's copy (kube's store clones every object it takes in), the
//! secondary index's entries and the events in flight share one Machine
//! instead of holding a copy each.
//!
//! Its `ObjectMeta` carries everything but the labels and annotations (and
//! managedFields, which no reconcile reads), so code generic over
//! `Resource` (owner references, finalizers, deletion, generation) reads it
//! as it would the Machine. Labels and annotations are read through the
//! inherent [`CachedMachine::labels`] and [`CachedMachine::annotations`],
//! which shadow kube's `ResourceExt` methods of the same names: reading them
//! through `ResourceExt` would see none, so generic code that needs them
//! goes through [`crate::controller::fleet::expectations::Cached`].

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ops::Deref;
use std::sync::Arc;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::core::{Selector, SelectorExt};
use kube::runtime::watcher::Event;
use serde::{Deserialize, Deserializer};

use crate::api::machine::{Machine, MachineSpec, MachineStatus};
use crate::api::shared::MachinePhase;
use crate::controller::caches::trim_machine;
use crate::intern::IStr;

/// Labels or annotations: pairs sorted by key, keys and values interned
/// (keys repeat across every Machine; a value is a set's name, shared by
/// its Machines, or a Node's name, shared with the Node cache and the
/// Machine's addresses, or a launch record, the Machine's own). A Machine without the map at all holds `None`,
/// kept apart from an empty map so that [`CachedMachine::to_machine`] gives
/// back what came in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pairs(Option<Box<[Pair]>>);

/// One label or annotation.
type Pair = (IStr, IStr);

impl Pairs {
    fn from_map(map: Option<BTreeMap<String, String>>) -> Self {
        Pairs(map.map(|map| {
            map.into_iter()
                .map(|(k, v)| (IStr::new(&k), IStr::new(&v)))
                .collect()
        }))
    }

    fn slice(&self) -> &[Pair] {
        self.0.as_deref().unwrap_or_default()
    }

    /// The value under `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        let pairs = self.slice();
        pairs
            .binary_search_by(|(k, _)| k.as_str().cmp(key))
            .ok()
            .map(|i| pairs[i].1.as_str())
    }

    /// The pairs in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.slice().iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The pairs as the API types hold them (empty where there were none).
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    fn to_option_map(&self) -> Option<BTreeMap<String, String>> {
        self.0.as_ref().map(|_| self.to_map())
    }
}

/// See the module docs.
#[derive(Clone, Debug, PartialEq)]
pub struct CachedMachine(Arc<Parts>);

/// What a [`CachedMachine`] holds; its `spec` and `status` are read
/// through the handle.
#[derive(Clone, Debug, PartialEq)]
pub struct Parts {
    /// Without labels, annotations and managedFields.
    metadata: ObjectMeta,
    labels: Pairs,
    annotations: Pairs,
    pub spec: MachineSpec,
    pub status: Option<MachineStatus>,
}

impl Deref for CachedMachine {
    type Target = Parts;
    fn deref(&self) -> &Parts {
        &self.0
    }
}

impl CachedMachine {
    /// Whether `self` and `other` are the same handle (one watch event's
    /// Machine), not merely equal.
    pub fn same(&self, other: &CachedMachine) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// The Machine's labels.
    pub fn labels(&self) -> &Pairs {
        &self.labels
    }

    /// The Machine's annotations.
    pub fn annotations(&self) -> &Pairs {
        &self.annotations
    }

    /// Whether the Machine's labels match `selector`.
    pub fn matches(&self, selector: &Selector) -> bool {
        selector.selects_all() || selector.matches(&self.labels().to_map())
    }

    /// The Machine, as the API server holds it (less managedFields and
    /// kubectl's last-applied copy).
    pub fn to_machine(&self) -> Machine {
        let mut metadata = self.metadata.clone();
        metadata.labels = self.labels.to_option_map();
        metadata.annotations = self.annotations.to_option_map();
        Machine {
            metadata,
            spec: self.spec.clone(),
            status: self.status.clone(),
        }
    }

    /// The machine's lifecycle phase, if the operator has set one.
    pub fn phase(&self) -> Option<MachinePhase> {
        self.status.as_ref()?.current_status.phase
    }
}

impl From<Machine> for CachedMachine {
    fn from(mut machine: Machine) -> Self {
        trim_machine(&mut machine);
        let labels = Pairs::from_map(machine.metadata.labels.take());
        let annotations = Pairs::from_map(machine.metadata.annotations.take());
        CachedMachine(Arc::new(Parts {
            metadata: machine.metadata,
            labels,
            annotations,
            spec: machine.spec,
            status: machine.status,
        }))
    }
}

/// Deserialized as a Machine (kube's controller asks for the bound; the
/// cache is fed by conversion, see [`cached_event`]).
impl<'de> Deserialize<'de> for CachedMachine {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Machine::deserialize(d).map(Self::from)
    }
}

impl Resource for CachedMachine {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(dt: &()) -> Cow<'_, str> {
        Machine::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        Machine::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        Machine::version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        Machine::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut Arc::make_mut(&mut self.0).metadata
    }
}

/// A Machine watch event as the cache takes it.
pub fn cached_event(event: Event<Machine>) -> Event<CachedMachine> {
    match event {
        Event::Apply(m) => Event::Apply(m.into()),
        Event::Delete(m) => Event::Delete(m.into()),
        Event::Init => Event::Init,
        Event::InitApply(m) => Event::InitApply(m.into()),
        Event::InitDone => Event::InitDone,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::ResourceExt;
    use serde_json::json;

    fn machine() -> Machine {
        serde_json::from_value(json!({
            "apiVersion": "machine.sapcloud.io/v1alpha1", "kind": "Machine",
            "metadata": {
                "name": "m", "namespace": "ns", "uid": "u-1", "resourceVersion": "7",
                "generation": 2, "creationTimestamp": "2026-12-01T09:00:00Z",
                "labels": {"node": "ip-10-0-0-1", "name": "pool-a"},
                "annotations": {"machine.sapcloud.io/launch": "{\"attempt\":0}", "b": ""},
                "finalizers": ["machine.sapcloud.io/machine-controller-manager"],
                "ownerReferences": [{"apiVersion": "machine.sapcloud.io/v1alpha1",
                    "kind": "MachineSet", "name": "s", "uid": "s-1", "controller": true}],
                "managedFields": [{"manager": "kubectl", "operation": "Update"}]
            },
            "spec": {"class": {"kind": "MachineClass", "name": "c"},
                     "providerID": "aws:///eu-west-1/i-1"},
            "status": {"currentStatus": {"phase": "Running"}}
        }))
        .unwrap()
    }

    #[test]
    fn a_cached_machine_gives_back_the_machine_less_managed_fields() {
        let mut expected = machine();
        expected.metadata.managed_fields = None;
        assert_eq!(CachedMachine::from(machine()).to_machine(), expected);
    }

    #[test]
    fn absent_and_empty_maps_stay_apart() {
        let mut m = machine();
        m.metadata.labels = None;
        m.metadata.annotations = Some(BTreeMap::new());
        let back = CachedMachine::from(m).to_machine();
        assert_eq!(back.metadata.labels, None);
        assert_eq!(back.metadata.annotations, Some(BTreeMap::new()));
    }

    #[test]
    fn labels_and_annotations_are_read_through_the_pairs_and_the_rest_through_meta() {
        let c = CachedMachine::from(machine());
        assert_eq!(c.labels().get("node"), Some("ip-10-0-0-1"));
        assert_eq!(c.labels().get("name"), Some("pool-a"));
        assert_eq!(c.labels().get("zone"), None);
        assert_eq!(c.annotations().get("b"), Some(""));
        assert_eq!(c.phase(), Some(MachinePhase::Running));
        // What generic code reads through `Resource` is all there.
        assert_eq!(c.uid().as_deref(), Some("u-1"));
        assert_eq!(c.resource_version().as_deref(), Some("7"));
        assert_eq!(c.owner_references()[0].name, "s");
        assert_eq!(c.finalizers().len(), 1);
        assert_eq!(c.meta().generation, Some(2));
        assert!(c.meta().managed_fields.is_none());
    }

    #[test]
    fn selectors_match_on_the_pairs() {
        let c = CachedMachine::from(machine());
        let yes: Selector = [("name", "pool-a")].into_iter().collect();
        let no: Selector = [("name", "pool-b")].into_iter().collect();
        assert!(c.matches(&yes));
        assert!(!c.matches(&no));
        assert!(c.matches(&Selector::default()));
    }

    #[test]
    fn it_deserializes_as_a_machine() {
        let bytes = serde_json::to_vec(&machine()).unwrap();
        let c: CachedMachine = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(c, CachedMachine::from(machine()));
    }

    #[test]
    fn clones_share_the_machine() {
        let c = CachedMachine::from(machine());
        let copy = c.clone();
        assert!(copy.same(&c));
        let equal = CachedMachine::from(machine());
        assert_eq!(equal, c);
        assert!(!equal.same(&c));
        // A change through the handle leaves the other holders' copy alone.
        let mut changed = c.clone();
        changed.meta_mut().generation = Some(9);
        assert_eq!(c.meta().generation, Some(2));
        assert!(!changed.same(&c));
    }

    #[test]
    fn events_keep_their_kind() {
        assert!(matches!(
            cached_event(Event::Delete(machine())),
            Event::Delete(c) if c.name_any() == "m"
        ));
        assert!(matches!(cached_event(Event::InitDone), Event::InitDone));
    }
}
