//! The reconcilers and their wiring: the Machine lifecycle, MachineClass and
//! Secret protection, and orphan collection, sharing one [`Context`].

pub mod cached_machine;
pub mod caches;
pub mod class;
pub mod compact_id;
pub mod config;
pub mod context;
pub mod error;
pub mod events;
pub mod fleet;
pub mod index;
pub mod machine;
pub mod node;
pub mod nodes;
pub mod orphans;
pub mod ownership;
pub mod readiness;
pub mod reads;
pub mod recorder;
pub mod status;
pub mod wakeups;

use std::sync::Arc;

use futures::{StreamExt, future};
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use kube::runtime::Controller;
use kube::runtime::events::Reporter;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use tracing::info;

pub use config::ControllerConfig;
pub use context::Context;

use cached_machine::CachedMachine;
use caches::Watches;
use index::Index;
use reads::Reads;

use crate::api::machine_class::MachineClass;
use crate::aws::clients::Ec2Clients;
use crate::aws::instances::instance_id_from_provider_id;
use crate::health::Health;
use crate::metrics::Metrics;

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The Machines a Node event concerns: those naming it in their node label
/// or naming its instance in their providerID (an index lookup).
fn machines_of_node(index: &Index, node: &Node) -> Vec<ObjectRef<CachedMachine>> {
    let name = node.name_any();
    let mut found = index.get(index::Key::Node(&name));
    let instance = node
        .spec
        .as_ref()
        .and_then(|s| s.provider_id.as_deref())
        .and_then(instance_id_from_provider_id);
    for m in instance
        .map(|id| index.get(index::Key::Instance(id)))
        .unwrap_or_default()
    {
        if !found.contains(&m) {
            found.push(m);
        }
    }
    found
}

/// The Machines of namespace `ns` using class `name` (class events are
/// rare; a scan of the store is fine).
fn machines_of_class(
    store: &Store<CachedMachine>,
    ns: Option<String>,
    name: &str,
) -> Vec<ObjectRef<CachedMachine>> {
    store
        .state()
        .iter()
        .filter(|m| m.namespace() == ns && m.spec.class.name == name)
        .map(|m| ObjectRef::from_obj(m.as_ref()))
        .collect()
}

pub async fn run(
    client: Client,
    target: Client,
    config: ControllerConfig,
    reporter: Reporter,
    metrics: Arc<Metrics>,
    health: Health,
) {
    let ns = config.namespace.clone();
    let mut watches = Watches::new();
    let reads = Arc::new(Reads::new(
        client.clone(),
        watches.classes.clone(),
        watches.secret_meta.clone(),
    ));
    let ctx = Context::new(
        client.clone(),
        target.clone(),
        config.clone(),
        Ec2Clients::new(config.rate_limits),
        &watches,
        reads.clone(),
        reporter,
    );
    metrics.observe_ec2(ctx.ec2.stats());
    metrics.observe_machines(watches.machines.clone());

    let index = watches.machine_index.clone();
    let node_triggers = watches
        .nodes_touched()
        .flat_map(move |node| futures::stream::iter(machines_of_node(&index, &node)));
    let store_for_classes = watches.machines.clone();
    let machines =
        Controller::for_shared_stream(watches.machines_touched(), watches.machines.clone())
            .with_config(
                kube::runtime::controller::Config::default().concurrency(config.concurrency),
            )
            .watches_shared_stream(watches.class_events(), move |class| {
                machines_of_class(&store_for_classes, class.namespace(), &class.name_any())
            })
            .reconcile_on(node_triggers)
            .reconcile_on(ctx.wakeups.clone().due())
            .shutdown_on_signal()
            .run(
                metrics.instrument("machine", machine::reconcile),
                machine::error_policy,
                ctx.clone(),
            )
            .for_each(|_| future::ready(()));

    let classes = Controller::for_shared_stream(watches.class_events(), watches.classes.clone())
        .watches_shared_stream(watches.machines_touched(), |m| {
            let ns = m.namespace().unwrap_or_default();
            Some(ObjectRef::<MachineClass>::new(&m.spec.class.name).within(&ns))
        })
        .shutdown_on_signal()
        .run(
            metrics.instrument("machineclass", class::reconcile),
            class::error_policy,
            ctx.clone(),
        )
        .for_each(|_| future::ready(()));

    let (sets, set_store) = fleet::machine_set::controller(
        &client,
        ns.as_deref(),
        watches.machines_touched(),
        ctx.clone(),
        metrics.instrument("machineset", fleet::machine_set::reconcile),
    );
    // The machine reconciler finds a machine's deployment through the sets.
    let _ = ctx.sets.set(set_store.clone());
    let deployments = fleet::machine_deployment::controller(
        &client,
        ns.as_deref(),
        (watches.machines_touched(), watches.class_events()),
        ctx.clone(),
        metrics.instrument("machinedeployment", fleet::machine_deployment::reconcile),
        set_store,
    );

    let orphans = orphans::run(ctx.clone());
    let readiness = readiness::run(ctx.clone(), health);
    let watching = watches.run(&client, &target, ns.as_deref(), reads);
    info!(
        namespace = ns.as_deref().unwrap_or("<all>"),
        "controllers started"
    );
    tokio::select! {
        _ = future::join4(machines, classes, sets, deployments) => {}
        _ = future::join(orphans, readiness) => {}
        _ = watching => {}
    }
    info!("controllers stopped");
}
