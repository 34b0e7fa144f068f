//! The operator's watches: one per kind, shared by every controller that
//! needs the kind, each feeding one store (and its index), trimmed to what
//! the operator reads.
//!
//! Machines, MachineClasses and Nodes are each watched once; the machine,
//! class, set and deployment controllers subscribe to the same stream
//! instead of opening a watch each (four Machine watches before). Objects
//! enter their store without managedFields; Machines are held as
//! [`CachedMachine`]s (their lists cut to length, see [`trim_machine`],
//! labels and annotations as compact pairs); Nodes go to the compact cache
//! of [`super::nodes`], which keeps only what reconciles read. Secrets are
//! watched by metadata only (see [`super::reads`]).

use std::future::Future;
use std::sync::Arc;

use futures::channel::mpsc::{self, Sender, UnboundedSender};
use futures::{SinkExt, Stream, StreamExt, TryStreamExt, future};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::Api;
use kube::runtime::reflector::{self, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};

use super::cached_machine::{CachedMachine, cached_event};
use super::index::Index;
use super::nodes::{Announce, Nodes};
use super::reads::{Reads, SecretMeta, trim_secret_meta};
use crate::api::machine::Machine;
use crate::api::machine_class::MachineClass;

/// How many events a slow subscriber may lag behind before the watch waits
/// for it.
const SUBSCRIBER_BUFFER: usize = 1024;

/// The same for Nodes, which reach subscribers as whole (trimmed) objects
/// rather than as references into a store.
const NODE_SUBSCRIBER_BUFFER: usize = 64;

/// Stores, indexes and writers of the shared watches; see the module docs.
pub struct Watches {
    pub machines: Store<CachedMachine>,
    pub machine_index: Arc<Index>,
    pub nodes: Arc<Nodes>,
    pub classes: Store<MachineClass>,
    pub secret_meta: Store<SecretMeta>,
    machine_writer: Writer<CachedMachine>,
    class_writer: Writer<MachineClass>,
    secret_writer: Writer<SecretMeta>,
    machine_gone: Vec<UnboundedSender<Arc<CachedMachine>>>,
    node_subscribers: Vec<Sender<Arc<Node>>>,
}

impl Default for Watches {
    fn default() -> Self {
        Self::new()
    }
}

impl Watches {
    pub fn new() -> Self {
        let (machines, machine_writer) = reflector::store_shared(SUBSCRIBER_BUFFER);
        let (classes, class_writer) = reflector::store_shared(SUBSCRIBER_BUFFER);
        let (secret_meta, secret_writer) = reflector::store();
        Self {
            machines,
            machine_index: Arc::new(Index::new()),
            nodes: Arc::new(Nodes::default()),
            classes,
            secret_meta,
            machine_writer,
            class_writer,
            secret_writer,
            machine_gone: Vec::new(),
            node_subscribers: Vec::new(),
        }
    }

    /// A new subscription to Machines touched: each applied Machine as the
    /// store holds it, and each deleted one (a shared subscription alone
    /// sees only changes: a deleted object is gone from the store it reads).
    pub fn machines_touched(&mut self) -> impl Stream<Item = Arc<CachedMachine>> + Send + use<> {
        let (tx, rx) = mpsc::unbounded();
        self.machine_gone.push(tx);
        futures::stream::select(subscribe(&self.machine_writer), rx)
    }

    /// A new subscription to Nodes touched (changed or deleted).
    pub fn nodes_touched(&mut self) -> impl Stream<Item = Arc<Node>> + Send + use<> {
        let (tx, rx) = mpsc::channel(NODE_SUBSCRIBER_BUFFER);
        self.node_subscribers.push(tx);
        rx
    }

    /// A new subscription to MachineClass changes.
    pub fn class_events(&self) -> impl Stream<Item = Arc<MachineClass>> + Send + use<> {
        subscribe(&self.class_writer)
    }

    /// Runs the watches (Machines, classes and Secrets of the control
    /// cluster in `namespace` or everywhere, Nodes of `target`) until
    /// shutdown. Subscribe first: subscriptions taken later see nothing.
    pub fn run(
        self,
        client: &Client,
        target: &Client,
        namespace: Option<&str>,
        reads: Arc<Reads>,
    ) -> impl Future<Output = ()> + Send + use<> {
        let wc = watcher::Config::default();
        let machine_index = self.machine_index.clone();
        let machines = watcher(super::api::<Machine>(client, namespace), wc.clone())
            .default_backoff()
            .map_ok(cached_event)
            .inspect_ok(move |ev| machine_index.observe(ev))
            .reflect_shared(self.machine_writer)
            .inspect_ok(move |ev| announce_deletion(ev, &self.machine_gone));
        // The Node cache trims each Node as it takes it in.
        let node_cache = self.nodes.clone();
        let mut node_subscribers = self.node_subscribers;
        let node_events = watcher(Api::<Node>::all(target.clone()), wc.clone()).default_backoff();
        let nodes = async move {
            let mut node_events = std::pin::pin!(node_events);
            while let Some(item) = node_events.next().await {
                match item {
                    Ok(ev) => {
                        let announce = node_cache.apply(ev);
                        hand_out(&node_cache, announce, &mut node_subscribers).await;
                    }
                    Err(e) => tracing::warn!(error = %e, "watch error (retried)"),
                }
            }
        };
        let classes = watcher(super::api::<MachineClass>(client, namespace), wc.clone())
            .default_backoff()
            .modify(|c: &mut MachineClass| trim_meta(c.meta_mut()))
            .reflect_shared(self.class_writer);
        let secrets = watcher(super::api::<SecretMeta>(client, namespace), wc)
            .default_backoff()
            .modify(trim_secret_meta)
            .reflect(self.secret_writer)
            .inspect_ok(move |ev| reads.observe_secret(ev));
        async move {
            future::join4(drain(machines), nodes, drain(classes), drain(secrets)).await;
        }
    }
}

fn subscribe<K>(writer: &Writer<K>) -> impl Stream<Item = Arc<K>> + Send + use<K>
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    writer
        .subscribe()
        .expect("shared stores always take subscribers")
}

/// Hands a deleted object to every deletion subscriber still listening.
fn announce_deletion<K: Clone>(event: &watcher::Event<K>, to: &[UnboundedSender<Arc<K>>]) {
    if let watcher::Event::Delete(obj) = event {
        let obj = Arc::new(obj.clone());
        for tx in to {
            // A closed receiver is a controller that stopped: nothing to tell.
            let _ = tx.unbounded_send(obj.clone());
        }
    }
}

/// Hands what a Node event announced to every subscriber still listening,
/// waiting for slow ones (the watch goes on once they took it).
async fn hand_out(cache: &Nodes, announce: Announce, to: &mut [Sender<Arc<Node>>]) {
    let looked_up = announce.names.iter().filter_map(|name| cache.get(name));
    for node in announce.nodes.into_iter().chain(looked_up) {
        for tx in to.iter_mut() {
            // A closed receiver is a controller that stopped: nothing to tell.
            let _ = tx.send(node.clone()).await;
        }
    }
}

/// Polls a watch to its end; errors are retried by its backoff and logged by
/// kube.
async fn drain<S, T, E>(stream: S)
where
    S: Stream<Item = Result<T, E>>,
    E: std::fmt::Display,
{
    stream
        .for_each(|item| {
            if let Err(e) = item {
                tracing::warn!(error = %e, "watch error (retried)");
            }
            future::ready(())
        })
        .await;
}

/// kubectl's copy of the object as last applied: often as large as the
/// object itself, never read here (every write is a patch of named fields,
/// so leaving it out of the cache never drops it from the object).
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Trims a Machine as it enters the store: [`trim_meta`], and its lists cut
/// to their length (a list deserialized from the watch's bytes has room for
/// up to twice its items: for an owner reference alone 300 bytes).
pub fn trim_machine(machine: &mut Machine) {
    let meta = machine.meta_mut();
    trim_meta(meta);
    if let Some(finalizers) = meta.finalizers.as_mut() {
        finalizers.shrink_to_fit();
    }
    if let Some(owners) = meta.owner_references.as_mut() {
        owners.shrink_to_fit();
    }
    if let Some(status) = machine.status.as_mut() {
        status.conditions.shrink_to_fit();
        status.addresses.shrink_to_fit();
    }
}

/// Drops what no reconcile reads from an object's metadata.
fn trim_meta(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cached_metadata_loses_managed_fields_and_kubectls_copy_only() {
        let mut meta: ObjectMeta = serde_json::from_value(json!({
            "name": "m", "labels": {"a": "b"},
            "annotations": {"keep": "1", LAST_APPLIED: "{\"kind\":\"Machine\"}"},
            "managedFields": [{"manager": "kubectl", "operation": "Update"}]
        }))
        .unwrap();
        trim_meta(&mut meta);
        assert!(meta.managed_fields.is_none());
        let annotations = meta.annotations.unwrap();
        assert_eq!(annotations.len(), 1);
        assert_eq!(annotations["keep"], "1");
        assert_eq!(meta.labels.unwrap()["a"], "b");
    }

    #[test]
    fn a_cached_machine_keeps_its_lists_without_spare_room() {
        let bytes = serde_json::to_vec(&json!({
            "apiVersion": "machine.sapcloud.io/v1alpha1", "kind": "Machine",
            "metadata": {"name": "m", "finalizers": ["f"],
                         "ownerReferences": [{"apiVersion": "v1", "kind": "MachineSet", "name": "s", "uid": "u"}]},
            "spec": {},
            "status": {"conditions": [{"type": "Ready", "status": "True"}],
                       "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}]}
        }))
        .unwrap();
        let mut machine: Machine = serde_json::from_slice(&bytes).unwrap();
        let before = machine.clone();
        trim_machine(&mut machine);
        assert_eq!(machine, before);
        let status = machine.status.as_ref().unwrap();
        assert_eq!(status.conditions.capacity(), 1);
        assert_eq!(status.addresses.capacity(), 1);
        let meta = &machine.metadata;
        assert_eq!(meta.owner_references.as_ref().unwrap().capacity(), 1);
        assert_eq!(meta.finalizers.as_ref().unwrap().capacity(), 1);
    }
}
