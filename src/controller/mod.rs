//! The reconcilers and their wiring: the Machine lifecycle, MachineClass and
//! Secret protection, and orphan collection, sharing one [`Context`].

pub mod class;
pub mod config;
pub mod context;
pub mod error;
pub mod events;
pub mod fleet;
pub mod machine;
pub mod node;
pub mod orphans;
pub mod ownership;
pub mod readiness;
pub mod status;

use std::sync::Arc;

use futures::{StreamExt, future};
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use kube::runtime::events::Reporter;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tracing::info;

pub use config::ControllerConfig;
pub use context::Context;

use crate::api::machine::{Machine, NODE_LABEL};
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

/// Machines that a Node event concerns (by `node` label or instance ID).
fn machines_of_node(store: &Store<Machine>, node: &Node) -> Vec<ObjectRef<Machine>> {
    let name = node.name_any();
    let id = node
        .spec
        .as_ref()
        .and_then(|s| s.provider_id.as_deref())
        .and_then(instance_id_from_provider_id)
        .map(str::to_string);
    store
        .state()
        .iter()
        .filter(|m| {
            m.labels().get(NODE_LABEL) == Some(&name)
                || (id.is_some()
                    && m.spec
                        .provider_id
                        .as_deref()
                        .and_then(instance_id_from_provider_id)
                        == id.as_deref())
        })
        .map(|m| ObjectRef::from_obj(m.as_ref()))
        .collect()
}

/// Runs every controller until SIGTERM/SIGINT, recording reconciles in
/// `metrics` and settling the `caches` and `ec2-credentials` checks of
/// `health`.
pub async fn run(
    client: Client,
    target: Client,
    config: ControllerConfig,
    reporter: Reporter,
    metrics: Arc<Metrics>,
    health: Health,
) {
    let ns = config.namespace.clone();
    let wc = watcher::Config::default();

    let machine_ctl = Controller::new(api::<Machine>(&client, ns.as_deref()), wc.clone());
    let machine_store = machine_ctl.store();

    let (node_store, node_writer) = reflector::store::<Node>();
    let node_events = reflector::reflector(
        node_writer,
        watcher(Api::<Node>::all(target.clone()), wc.clone()),
    )
    .default_backoff()
    .touched_objects();

    let ctx = Context::new(
        client.clone(),
        target,
        config.clone(),
        Ec2Clients::default(),
        node_store,
        machine_store.clone(),
        reporter,
    );
    metrics.observe_ec2(ctx.ec2.stats());
    metrics.observe_machines(machine_store.clone());

    let store_for_nodes = machine_store.clone();
    let node_triggers = node_events
        .filter_map(|ev| future::ready(ev.ok()))
        .flat_map(move |node| futures::stream::iter(machines_of_node(&store_for_nodes, &node)));
    let store_for_classes = machine_store.clone();
    let machines = machine_ctl
        .with_config(kube::runtime::controller::Config::default().concurrency(config.concurrency))
        .watches(
            api::<MachineClass>(&client, ns.as_deref()),
            wc.clone(),
            move |class| {
                let cns = class.namespace();
                store_for_classes
                    .state()
                    .iter()
                    .filter(|m| m.namespace() == cns && m.spec.class.name == class.name_any())
                    .map(|m| ObjectRef::from_obj(m.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .reconcile_on(node_triggers)
        .shutdown_on_signal()
        .run(
            metrics.instrument("machine", machine::reconcile),
            machine::error_policy,
            ctx.clone(),
        )
        .for_each(|_| future::ready(()));

    let class_ctl = Controller::new(api::<MachineClass>(&client, ns.as_deref()), wc.clone());
    let class_store = class_ctl.store();
    let classes = class_ctl
        .watches(api::<Machine>(&client, ns.as_deref()), wc, |m| {
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
        ctx.clone(),
        metrics.instrument("machineset", fleet::machine_set::reconcile),
    );
    // The machine reconciler finds a machine's deployment through the sets.
    let _ = ctx.sets.set(set_store.clone());
    let deployments = fleet::machine_deployment::controller(
        &client,
        ns.as_deref(),
        ctx.clone(),
        metrics.instrument("machinedeployment", fleet::machine_deployment::reconcile),
        set_store,
    );

    let orphans = orphans::run(ctx.clone());
    let readiness = readiness::run(ctx.clone(), class_store, health);
    info!(
        namespace = ns.as_deref().unwrap_or("<all>"),
        "controllers started"
    );
    tokio::select! {
        _ = future::join4(machines, classes, sets, deployments) => {}
        _ = future::join(orphans, readiness) => {}
    }
    info!("controllers stopped");
}
