//! The Node cache: what the operator reads of each Node of the target
//! cluster, kept compact.
//!
//! A real Node is ~10 KB of JSON, mostly container images and node info
//! that no reconcile reads; even trimmed to metadata, spec, conditions and
//! addresses, a `k8s_openapi` Node costs ~8 KB in memory (a `String` per
//! label key and value, a B-tree node per map, 150 bytes per condition).
//! This cache keeps, per Node, only the fields in [`trim_node`], with every
//! string interned (a fleet's Nodes share almost all of theirs: label keys,
//! most label values, condition reasons and messages), and builds a `Node`
//! when a reconcile asks for one. Lookups by name, and by the instance ID
//! in the providerID ([`Nodes::with_instance`], from a table of the Node's
//! own interned strings: 16 bytes a Node).
//!
//! It follows the watcher's relist protocol as kube's store does: a relist
//! fills a new generation that replaces the old one at its end. What a
//! relist changed (new, changed, gone) is announced to subscribers then;
//! a first list announces every Node.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, RwLock};

use hashbrown::HashTable;

use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeCondition, NodeSpec, NodeStatus, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::watcher::Event;
use tokio::sync::watch;

use crate::api::stamp::Stamp;
use crate::aws::instances::instance_id_from_provider_id;
use crate::controller::compact_id::CompactId;
use crate::intern::IStr;

/// The cache's strings: thin (8 bytes a field), interned in the process-wide
/// interner of [`IStr`], so that a Node's name is one string with the
/// Machine's node label and addresses naming it.
pub type Sym = IStr;

/// See the module docs.
pub struct Nodes {
    state: RwLock<State>,
    ready: watch::Sender<bool>,
}

#[derive(Default)]
struct State {
    live: Generation,
    /// The generation a relist is filling; swapped in at its end.
    relist: Option<Generation>,
    hasher: RandomState,
}

/// The Nodes of one list, by name and by instance.
#[derive(Default)]
struct Generation {
    /// Boxed: a hash table keeps room for up to twice its entries, and a
    /// `Compact` is ~160 bytes (a spare slot costs 16 this way).
    nodes: HashMap<Sym, Box<Compact>>,
    /// (providerID, name) of each Node with an instance ID in its
    /// providerID, hashed by that ID.
    by_instance: HashTable<(Sym, Sym)>,
}

impl Generation {
    fn insert(&mut self, hasher: &RandomState, c: Compact) {
        self.remove(hasher, &c.name);
        if let Some(provider) = &c.provider_id
            && let Some(id) = instance_id_from_provider_id(provider)
        {
            let rehash = |(p, _): &(Sym, Sym)| hasher.hash_one(instance_id_from_provider_id(p));
            let entry = (provider.clone(), c.name.clone());
            self.by_instance
                .insert_unique(hasher.hash_one(Some(id)), entry, rehash);
        }
        self.nodes.insert(c.name.clone(), Box::new(c));
    }

    fn remove(&mut self, hasher: &RandomState, name: &str) {
        let Some(old) = self.nodes.remove(name) else {
            return;
        };
        if let Some(id) = old
            .provider_id
            .as_deref()
            .and_then(instance_id_from_provider_id)
            && let Ok(slot) = self
                .by_instance
                .find_entry(hasher.hash_one(Some(id)), |(_, n)| **n == *name)
        {
            slot.remove();
        }
    }

    /// The Nodes whose providerID names instance `id`.
    fn with_instance<'a>(
        &'a self,
        hasher: &RandomState,
        id: &'a str,
    ) -> impl Iterator<Item = &'a Compact> {
        self.by_instance
            .iter_hash(hasher.hash_one(Some(id)))
            .filter(move |(p, _)| instance_id_from_provider_id(p) == Some(id))
            .filter_map(|(_, name)| self.nodes.get(name).map(|c| &**c))
    }
}

/// What a watch event means for subscribers: Nodes to hand them as they
/// are, and names to look up (after a relist: those it added or changed).
#[derive(Default)]
pub struct Announce {
    pub nodes: Vec<Arc<Node>>,
    pub names: Vec<Sym>,
}

type Pairs = Option<Box<[(Sym, Sym)]>>;

struct Compact {
    name: Sym,
    uid: CompactId,
    resource_version: CompactId,
    created: Stamp,
    deleted: Stamp,
    labels: Pairs,
    annotations: Pairs,
    provider_id: Option<Sym>,
    unschedulable: Option<bool>,
    taints: Option<Box<[CompactTaint]>>,
    conditions: Option<Box<[CompactCondition]>>,
    addresses: Pairs,
}

struct CompactTaint {
    key: Sym,
    value: Option<Sym>,
    effect: Sym,
    time_added: Stamp,
}

struct CompactCondition {
    type_: Sym,
    status: Sym,
    reason: Option<Sym>,
    message: Option<Sym>,
    last_transition_time: Stamp,
}

impl Default for Nodes {
    fn default() -> Self {
        Self {
            state: RwLock::default(),
            ready: watch::Sender::new(false),
        }
    }
}

impl Nodes {
    /// The Node named `name`, as [`trim_node`] leaves it.
    pub fn get(&self, name: &str) -> Option<Arc<Node>> {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        state.live.nodes.get(name).map(|c| Arc::new(c.rebuild()))
    }

    /// The Node whose providerID names EC2 instance `id` (the kubelet writes
    /// the zone there, the operator the Region: only the ID is compared).
    pub fn with_instance(&self, id: &str) -> Option<Arc<Node>> {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        let mut found = state.live.with_instance(&state.hasher, id);
        found.next().map(|c| Arc::new(c.rebuild()))
    }

    /// How many Nodes are cached.
    pub fn len(&self) -> usize {
        self.state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .live
            .nodes
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until the cache holds its first complete list.
    pub async fn ready(&self) -> bool {
        self.ready.subscribe().wait_for(|r| *r).await.is_ok()
    }

    /// Follows one watch event (of a Node already trimmed or not).
    pub fn apply(&self, event: Event<Node>) -> Announce {
        let mut guard = self.state.write().unwrap_or_else(|p| p.into_inner());
        let state = &mut *guard;
        match event {
            Event::Apply(node) => {
                let c = Compact::of(&node);
                state.live.insert(&state.hasher, c);
                announce_node(node)
            }
            Event::Delete(node) => {
                let name = node.metadata.name.as_deref().unwrap_or_default();
                state.live.remove(&state.hasher, name);
                announce_node(node)
            }
            Event::Init => {
                state.relist = Some(Generation::default());
                Announce::default()
            }
            Event::InitApply(node) => {
                let c = Compact::of(&node);
                state
                    .relist
                    .get_or_insert_with(Generation::default)
                    .insert(&state.hasher, c);
                Announce::default()
            }
            Event::InitDone => {
                let fresh = state.relist.take().unwrap_or_default();
                let old = std::mem::replace(&mut state.live, fresh).nodes;
                let mut out = Announce::default();
                for (name, c) in &state.live.nodes {
                    let same = old
                        .get(name)
                        .is_some_and(|o| o.resource_version == c.resource_version);
                    if !same {
                        out.names.push(name.clone());
                    }
                }
                for (name, c) in old {
                    if !state.live.nodes.contains_key(&name) {
                        out.nodes.push(Arc::new(c.rebuild()));
                    }
                }
                drop(guard);
                self.ready.send_replace(true);
                out
            }
        }
    }
}

fn announce_node(node: Node) -> Announce {
    Announce {
        nodes: vec![Arc::new(trimmed(node))],
        names: Vec::new(),
    }
}

/// What the operator keeps of a Node: name, uid, resourceVersion, creation
/// and deletion time, labels and annotations (node templates, preservation
/// and the autoscaler's marks are merge patches computed from them);
/// providerID, `unschedulable` and taints; conditions (without their
/// heartbeat times: a Machine's copies leave them out, and nothing else
/// reads them) and addresses. Everything else (images, node info, capacity,
/// volumes, managedFields, pod CIDRs) is dropped.
pub fn trim_node(node: &mut Node) {
    let taken = std::mem::take(node);
    *node = trimmed(taken);
}

fn trimmed(node: Node) -> Node {
    let meta = node.metadata;
    let spec = node.spec.unwrap_or_default();
    let status = node.status.unwrap_or_default();
    Node {
        metadata: ObjectMeta {
            name: meta.name,
            uid: meta.uid,
            resource_version: meta.resource_version,
            creation_timestamp: meta.creation_timestamp,
            deletion_timestamp: meta.deletion_timestamp,
            labels: meta.labels,
            annotations: meta.annotations,
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec {
            provider_id: spec.provider_id,
            unschedulable: spec.unschedulable,
            taints: spec.taints,
            ..NodeSpec::default()
        }),
        status: Some(NodeStatus {
            conditions: status.conditions.map(|mut cs| {
                for c in &mut cs {
                    c.last_heartbeat_time = None;
                }
                cs
            }),
            addresses: status.addresses,
            ..NodeStatus::default()
        }),
    }
}

impl Compact {
    fn of(node: &Node) -> Self {
        let meta = &node.metadata;
        let spec = node.spec.as_ref();
        let status = node.status.as_ref();
        let mut s = IStr::new;
        Compact {
            name: s(meta.name.as_deref().unwrap_or_default()),
            uid: CompactId::of(meta.uid.as_deref()),
            resource_version: CompactId::of(meta.resource_version.as_deref()),
            created: Stamp::of(&meta.creation_timestamp),
            deleted: Stamp::of(&meta.deletion_timestamp),
            labels: meta.labels.as_ref().map(|m| pairs(&mut s, m)),
            annotations: meta.annotations.as_ref().map(|m| pairs(&mut s, m)),
            provider_id: spec.and_then(|sp| sp.provider_id.as_deref()).map(&mut s),
            unschedulable: spec.and_then(|sp| sp.unschedulable),
            taints: spec.and_then(|sp| sp.taints.as_ref()).map(|ts| {
                ts.iter()
                    .map(|t| CompactTaint {
                        key: s(&t.key),
                        value: t.value.as_deref().map(&mut s),
                        effect: s(&t.effect),
                        time_added: Stamp::of(&t.time_added),
                    })
                    .collect()
            }),
            conditions: status.and_then(|st| st.conditions.as_ref()).map(|cs| {
                cs.iter()
                    .map(|c| CompactCondition {
                        type_: s(&c.type_),
                        status: s(&c.status),
                        reason: c.reason.as_deref().map(&mut s),
                        message: c.message.as_deref().map(&mut s),
                        last_transition_time: Stamp::of(&c.last_transition_time),
                    })
                    .collect()
            }),
            addresses: status
                .and_then(|st| st.addresses.as_ref())
                .map(|a| a.iter().map(|a| (s(&a.type_), s(&a.address))).collect()),
        }
    }

    fn rebuild(&self) -> Node {
        let text = |s: &Sym| s.to_string();
        let map = |p: &Pairs| {
            p.as_ref().map(|p| {
                p.iter()
                    .map(|(k, v)| (text(k), text(v)))
                    .collect::<BTreeMap<_, _>>()
            })
        };
        Node {
            metadata: ObjectMeta {
                name: Some(text(&self.name)),
                uid: self.uid.to_option(),
                resource_version: self.resource_version.to_option(),
                creation_timestamp: self.created.time(),
                deletion_timestamp: self.deleted.time(),
                labels: map(&self.labels),
                annotations: map(&self.annotations),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec {
                provider_id: self.provider_id.as_ref().map(text),
                unschedulable: self.unschedulable,
                taints: self.taints.as_ref().map(|ts| {
                    ts.iter()
                        .map(|t| Taint {
                            key: text(&t.key),
                            value: t.value.as_ref().map(text),
                            effect: text(&t.effect),
                            time_added: t.time_added.time(),
                        })
                        .collect()
                }),
                ..NodeSpec::default()
            }),
            status: Some(NodeStatus {
                conditions: self.conditions.as_ref().map(|cs| {
                    cs.iter()
                        .map(|c| NodeCondition {
                            type_: text(&c.type_),
                            status: text(&c.status),
                            reason: c.reason.as_ref().map(text),
                            message: c.message.as_ref().map(text),
                            last_heartbeat_time: None,
                            last_transition_time: c.last_transition_time.time(),
                        })
                        .collect()
                }),
                addresses: self.addresses.as_ref().map(|a| {
                    a.iter()
                        .map(|(t, v)| NodeAddress {
                            type_: text(t),
                            address: text(v),
                        })
                        .collect()
                }),
                ..NodeStatus::default()
            }),
        }
    }
}

fn pairs(s: &mut impl FnMut(&str) -> Sym, map: &BTreeMap<String, String>) -> Box<[(Sym, Sym)]> {
    map.iter().map(|(k, v)| (s(k), s(v))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn real_node(name: &str, rv: &str) -> Node {
        serde_json::from_value(json!({
            "metadata": {
                "name": name, "uid": format!("uid-{name}"), "resourceVersion": rv,
                "creationTimestamp": "2026-12-01T09:00:00Z",
                "labels": {"kubernetes.io/hostname": name, "kubernetes.io/arch": "amd64"},
                "annotations": {"node.alpha.kubernetes.io/ttl": "0"},
                "finalizers": ["example.com/f"],
                "managedFields": [{"manager": "kubelet", "operation": "Update"}]
            },
            "spec": {"providerID": "aws:///eu-west-1a/i-1", "unschedulable": true,
                     "podCIDR": "100.96.0.0/24",
                     "taints": [{"key": "k", "value": "v", "effect": "NoSchedule",
                                 "timeAdded": "2026-12-01T09:30:00Z"}]},
            "status": {
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                "message": "kubelet is posting ready status",
                                "lastHeartbeatTime": "2026-12-01T10:00:00Z",
                                "lastTransitionTime": "2026-12-01T09:00:00Z"}],
                "addresses": [{"type": "InternalIP", "address": "10.0.0.1"},
                              {"type": "Hostname", "address": name}],
                "images": [{"names": ["registry/image:1"], "sizeBytes": 1}],
                "nodeInfo": {"architecture": "amd64", "bootID": "", "containerRuntimeVersion": "",
                             "kernelVersion": "", "kubeProxyVersion": "", "kubeletVersion": "",
                             "machineID": "", "operatingSystem": "linux", "osImage": "",
                             "systemUUID": ""},
                "capacity": {"cpu": "2"}
            }
        }))
        .unwrap()
    }

    #[test]
    fn a_node_keeps_what_reconciles_read_and_loses_the_rest() {
        let mut node = real_node("ip-1", "1");
        trim_node(&mut node);
        let v = serde_json::to_value(&node).unwrap();
        assert_eq!(v["metadata"]["labels"]["kubernetes.io/arch"], "amd64");
        assert_eq!(
            v["metadata"]["annotations"]["node.alpha.kubernetes.io/ttl"],
            "0"
        );
        assert_eq!(v["metadata"]["uid"], "uid-ip-1");
        assert!(v["metadata"].get("managedFields").is_none());
        assert!(v["metadata"].get("finalizers").is_none());
        assert_eq!(v["spec"]["providerID"], "aws:///eu-west-1a/i-1");
        assert_eq!(v["spec"]["unschedulable"], true);
        assert_eq!(v["spec"]["taints"][0]["key"], "k");
        assert!(v["spec"].get("podCIDR").is_none());
        assert_eq!(v["status"]["conditions"][0]["type"], "Ready");
        assert_eq!(v["status"]["addresses"][0]["address"], "10.0.0.1");
        assert!(v["status"].get("images").is_none());
        assert!(v["status"].get("nodeInfo").is_none());
        assert!(v["status"].get("capacity").is_none());
    }

    #[test]
    fn the_cache_gives_back_exactly_the_trimmed_node() {
        let nodes = Nodes::default();
        let node = real_node("ip-1", "1");
        let mut want = node.clone();
        trim_node(&mut want);
        nodes.apply(Event::Apply(node));
        assert_eq!(*nodes.get("ip-1").unwrap(), want);
        assert!(nodes.get("ip-2").is_none());

        // Absent and empty fields stay as they were.
        let bare: Node = serde_json::from_value(json!({"metadata": {"name": "bare"}})).unwrap();
        let mut want = bare.clone();
        trim_node(&mut want);
        nodes.apply(Event::Apply(bare));
        assert_eq!(*nodes.get("bare").unwrap(), want);
    }

    #[test]
    fn nodes_are_found_by_the_instance_in_their_provider_id() {
        let nodes = Nodes::default();
        let with = |name: &str, provider: Option<&str>| -> Node {
            let mut n = real_node(name, "1");
            n.spec.as_mut().unwrap().provider_id = provider.map(str::to_string);
            n
        };
        nodes.apply(Event::Apply(with("ip-1", Some("aws:///eu-west-1a/i-1"))));
        nodes.apply(Event::Apply(with("ip-2", Some("aws:///eu-west-1b/i-2"))));
        nodes.apply(Event::Apply(with("bare", None)));
        let name = |id: &str| -> Option<String> {
            nodes
                .with_instance(id)
                .and_then(|n| n.metadata.name.clone())
        };
        assert_eq!(name("i-1").as_deref(), Some("ip-1"));
        assert_eq!(name("i-2").as_deref(), Some("ip-2"));
        assert_eq!(name("i-3"), None);
        // A new providerID moves the Node; a delete drops it.
        nodes.apply(Event::Apply(with("ip-1", Some("aws:///eu-west-1a/i-3"))));
        assert_eq!(name("i-1"), None);
        assert_eq!(name("i-3").as_deref(), Some("ip-1"));
        nodes.apply(Event::Delete(with("ip-2", None)));
        assert_eq!(name("i-2"), None);
        // A relist answers from the old generation until its end.
        nodes.apply(Event::Init);
        nodes.apply(Event::InitApply(with(
            "ip-9",
            Some("aws:///eu-west-1a/i-9"),
        )));
        assert_eq!(name("i-3").as_deref(), Some("ip-1"));
        assert_eq!(name("i-9"), None);
        nodes.apply(Event::InitDone);
        assert_eq!(name("i-3"), None);
        assert_eq!(name("i-9").as_deref(), Some("ip-9"));
        // Many Nodes: each is found under its own instance.
        for i in 0..3000 {
            let provider = format!("aws:///eu-west-1a/i-{i:017x}");
            nodes.apply(Event::Apply(with(&format!("n-{i}"), Some(&provider))));
        }
        for i in (0..3000).step_by(3) {
            nodes.apply(Event::Delete(with(&format!("n-{i}"), None)));
        }
        for i in 0..3000 {
            let want = (i % 3 != 0).then(|| format!("n-{i}"));
            assert_eq!(name(&format!("i-{i:017x}")), want);
        }
    }

    #[test]
    fn nodes_share_their_equal_strings() {
        let nodes = Nodes::default();
        nodes.apply(Event::Apply(real_node("ip-1", "1")));
        nodes.apply(Event::Apply(real_node("ip-2", "1")));
        let state = nodes.state.read().unwrap();
        let (a, b) = (&state.live.nodes["ip-1"], &state.live.nodes["ip-2"]);
        let label = |c: &Compact, key: &str| {
            let pairs = c.labels.as_deref().unwrap();
            pairs
                .iter()
                .find(|(k, _)| k.as_str() == key)
                .unwrap()
                .1
                .clone()
        };
        // Equal strings are one string: in two Nodes, and in a Node and
        // anything else interned (a Machine's address naming the Node).
        assert!(label(a, "kubernetes.io/arch").same(&label(b, "kubernetes.io/arch")));
        assert!(label(a, "kubernetes.io/hostname").same(&IStr::new("ip-1")));
        assert!(!label(a, "kubernetes.io/hostname").same(&label(b, "kubernetes.io/hostname")));
    }

    #[test]
    fn updates_and_deletes_are_announced_with_the_node() {
        let nodes = Nodes::default();
        let a = nodes.apply(Event::Apply(real_node("ip-1", "1")));
        assert_eq!(a.nodes[0].metadata.name.as_deref(), Some("ip-1"));
        assert!(a.nodes[0].status.as_ref().unwrap().images.is_none());
        let d = nodes.apply(Event::Delete(real_node("ip-1", "2")));
        assert_eq!(d.nodes.len(), 1);
        assert!(nodes.get("ip-1").is_none());
    }

    #[tokio::test]
    async fn a_relist_swaps_at_its_end_and_announces_what_it_changed() {
        let nodes = Nodes::default();
        nodes.apply(Event::Init);
        nodes.apply(Event::InitApply(real_node("same", "1")));
        nodes.apply(Event::InitApply(real_node("changed", "1")));
        nodes.apply(Event::InitApply(real_node("gone", "1")));
        let first = nodes.apply(Event::InitDone);
        assert!(nodes.ready().await);
        let mut names: Vec<String> = first.names.iter().map(|n| n.to_string()).collect();
        names.sort();
        assert_eq!(names, ["changed", "gone", "same"]);

        nodes.apply(Event::Init);
        nodes.apply(Event::InitApply(real_node("same", "1")));
        nodes.apply(Event::InitApply(real_node("changed", "2")));
        nodes.apply(Event::InitApply(real_node("new", "1")));
        // Until the relist ends, lookups answer from the old generation.
        assert!(nodes.get("gone").is_some());
        assert!(nodes.get("new").is_none());
        let second = nodes.apply(Event::InitDone);
        let mut names: Vec<String> = second.names.iter().map(|n| n.to_string()).collect();
        names.sort();
        assert_eq!(names, ["changed", "new"]);
        assert_eq!(second.nodes.len(), 1);
        assert_eq!(second.nodes[0].metadata.name.as_deref(), Some("gone"));
        assert!(nodes.get("gone").is_none());
        assert_eq!(nodes.len(), 3);
    }
}
