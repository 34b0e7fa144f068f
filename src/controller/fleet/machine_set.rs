//! The MachineSet reconciler: keeps `spec.replicas` healthy Machines made
//! from `spec.template`.
//!
//! list (consistent read) → claim (adopt orphans matching the selector,
//! release machines that stopped matching) → plan (pure, [`census::plan_set`]:
//! replace Failed machines, scale up or down in MCM's order, replace drifted
//! machines when asked) → delete, create in slow-start batches → status.
//!
//! Machines are owned through a controller ownerReference: deleting a set
//! lets the garbage collector delete its machines, whose own finalizer then
//! terminates their instances. Machines are listed from the API server rather
//! than a cache, so that a pass never acts on a view that misses the machines
//! the previous pass created.

use std::sync::Arc;
use std::time::Duration;

use futures::future::{self, join_all};
use futures::{Future, Stream, StreamExt, TryFuture};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{self, Action};
use kube::runtime::events::EventType;
use kube::runtime::reflector::Store;
use kube::runtime::{Controller, watcher};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use super::autoscaler::PRIORITY_DEFAULT;
use super::census::{self, MACHINE_PRIORITY_ANNOTATION, plan_set, slow_start_batches};
use super::drift::REPLACE_ON_DRIFT_ANNOTATION;
use super::expectations::{self, Write};
use super::in_place;
use super::preserved;
use crate::api::machine::{Machine, NODE_LABEL};
use crate::api::machine_deployment::MachineDeployment;
use crate::api::machine_set::{MachineSet, MachineSetConditionType, MachineSetStatus};
use crate::api::shared::ConditionStatus;
use crate::controller::cached_machine::CachedMachine;
use crate::controller::context::Context;
use crate::controller::error::{Error, Result};
use crate::controller::events::publish;
use crate::controller::machine::FINALIZER;
use crate::controller::machine::preservation::{self, PRESERVE_ANNOTATION, Preserve, Wish};
use crate::controller::ownership::{self, Claim};
use crate::controller::status;

/// Re-check every set this often even without events.
const RESYNC: Duration = Duration::from_secs(600);
/// Re-check this soon while a kept machine waits for its preservation.
const PRESERVATION_PENDING: Duration = Duration::from_secs(5);

/// The MachineSet controller, woken by changes of its sets and of the
/// machines they own, running `reconcile` ([`reconcile`], possibly wrapped,
/// e.g. for metrics), and the store of its sets (for other controllers'
/// mappings). Runs until SIGTERM/SIGINT.
pub fn controller<R, Fut, M>(
    client: &Client,
    namespace: Option<&str>,
    machines: M,
    ctx: Arc<Context>,
    reconcile: R,
) -> (impl Future<Output = ()> + use<R, Fut, M>, Store<MachineSet>)
where
    M: Stream<Item = Arc<CachedMachine>> + Send + 'static,
    R: FnMut(Arc<MachineSet>, Arc<Context>) -> Fut,
    Fut: TryFuture<Ok = Action, Error = Error> + Send + 'static,
{
    let ctl = Controller::new(
        crate::controller::api::<MachineSet>(client, namespace),
        watcher::Config::default(),
    );
    let store = ctl.store();
    let concurrency = ctx.config.concurrency;
    let run = ctl
        .with_config(controller::Config::default().concurrency(concurrency))
        .owns_shared_stream(machines)
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|_| future::ready(()));
    (run, store)
}

/// Reconciles one MachineSet; see the module docs.
pub async fn reconcile(set: Arc<MachineSet>, ctx: Arc<Context>) -> Result<Action> {
    if set.metadata.deletion_timestamp.is_some() {
        // The garbage collector deletes the machines.
        ctx.expectations.forget(&set.uid().unwrap_or_default());
        return Ok(Action::await_change());
    }
    let ns = set
        .namespace()
        .ok_or_else(|| Error::Invalid("MachineSet has no namespace".into()))?;
    let uid = set.uid().unwrap_or_default();
    let now = Timestamp::now();
    let template_labels = set
        .spec
        .template
        .metadata
        .labels
        .clone()
        .unwrap_or_default();

    let selector = match ownership::selector(set.spec.selector.as_ref()) {
        Ok(s) if ownership::template_matches(&s, Some(&template_labels)) => s,
        Ok(_) => {
            let msg = "spec.template.metadata.labels do not match spec.selector";
            return invalid(&set, &ctx, msg).await;
        }
        Err(msg) => return invalid(&set, &ctx, &msg).await,
    };

    // Claim: machines under the selector that are ours or free; release ours
    // whose labels no longer match.
    // From the Machine cache once it shows every write of this set (see
    // [`expectations`](super::expectations)); live while it lags.
    let api = Api::<Machine>::namespaced(ctx.client.clone(), &ns);
    ctx.caches_synced().await?;
    let listed =
        expectations::owned_under(&ctx.expectations, &ctx.machines, &uid, &ns, &selector, &api)
            .await?;
    let mut owned: Vec<Machine> = Vec::new();
    for m in listed {
        match ownership::claim(&uid, &m.metadata) {
            Claim::Owned => owned.push(m),
            Claim::Adopt => {
                match ownership::adopt(&api, &m, ownership::controller_ref(set.as_ref())).await {
                    Ok(()) => {
                        ctx.expectations.wrote(&uid, &m.name_any(), Write::Adopted);
                        info!(set = %set.name_any(), machine = %m.name_any(), "adopted machine");
                        owned.push(m);
                    }
                    Err(e) => warn!(machine = %m.name_any(), error = %e, "could not adopt machine"),
                }
            }
            Claim::Ignore => {}
        }
    }
    for stray in ctx.machines.state().iter().filter(|m| {
        m.namespace().as_deref() == Some(ns.as_str())
            && ownership::controller_uid(m.meta()) == Some(uid.as_str())
            && !m.matches(&selector)
    }) {
        ownership::release(&api, &stray.to_machine(), &uid).await?;
        ctx.expectations
            .wrote(&uid, &stray.name_any(), Write::Released);
        info!(set = %set.name_any(), machine = %stray.name_any(), "released machine that no longer matches the selector");
    }

    // nodeTemplate and machine configuration change in place (see
    // [`in_place`]): no machine is replaced for them.
    for m in owned
        .iter()
        .filter(|m| m.metadata.deletion_timestamp.is_none())
    {
        if let Some(spec) = in_place::patch(&m.spec, &set.spec.template.spec) {
            let patch = json!({"spec": spec});
            let patched = api
                .patch(
                    &m.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await?;
            if let Some(generation) = patched.metadata.generation {
                ctx.expectations
                    .wrote(&uid, &m.name_any(), Write::Generation(generation));
            }
            info!(set = %set.name_any(), machine = %m.name_any(), "updated the machine's node template and configuration in place");
        }
    }

    // Preservation (see [`preserved`]): Failed machines are auto-preserved
    // up to the set's limit, and preserved Failed machines are kept out of
    // the plan: neither deleted nor counted, so they are replaced.
    let mut wishes: Vec<Wish> = owned.iter().map(|m| wish_of(&ctx, m)).collect();
    if let Some(max) = set.spec.auto_preserve_failed_machine_max.filter(|m| *m > 0) {
        let pairs: Vec<(&Machine, Wish)> = owned.iter().zip(wishes.iter().cloned()).collect();
        let chosen = preserved::to_auto_preserve(&pairs, max, now);
        for name in chosen {
            let patch = json!({"metadata": {"annotations": {
                PRESERVE_ANNOTATION: Preserve::AutoPreserved.as_str()}}});
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            ctx.expectations.wrote(
                &uid,
                &name,
                Write::Annotated(
                    PRESERVE_ANNOTATION.into(),
                    Preserve::AutoPreserved.as_str().into(),
                ),
            );
            info!(set = %set.name_any(), machine = %name, "auto-preserving the failed machine");
            if let Some(i) = owned.iter().position(|m| m.name_any() == name) {
                owned[i].annotations_mut().insert(
                    PRESERVE_ANNOTATION.into(),
                    Preserve::AutoPreserved.as_str().into(),
                );
                wishes[i] = wish_of(&ctx, &owned[i]);
            }
        }
    }
    let pairs: Vec<(&Machine, Wish)> = owned.iter().zip(wishes.iter().cloned()).collect();
    let kept: Vec<&Machine> = pairs
        .iter()
        .filter(|(m, w)| preserved::keeps(m, w, now))
        .map(|(m, _)| *m)
        .collect();
    let refs: Vec<&Machine> = owned.iter().collect();
    let planned: Vec<&Machine> = owned
        .iter()
        .filter(|m| !kept.iter().any(|k| k.name_any() == m.name_any()))
        .collect();
    let mut plan = plan_set(
        set.spec.replicas,
        &planned,
        replaces_drifted(&set),
        set.spec.min_ready_seconds,
        now,
    );
    if is_frozen(&set) {
        plan.create = 0;
    }

    let mut failure: Option<(&str, String)> = None;
    if !plan.delete.is_empty() {
        let results = join_all(plan.delete.iter().map(|name| {
            let api = api.clone();
            async move { (name, api.delete(name, &DeleteParams::background()).await) }
        }))
        .await;
        for (name, result) in results {
            match result {
                Ok(_) => {
                    ctx.expectations.wrote(&uid, name, Write::Deleted);
                    publish(
                        &ctx,
                        &*set,
                        EventType::Normal,
                        "SuccessfulDelete",
                        "Delete",
                        format!("Deleted machine: {name}"),
                    )
                    .await;
                }
                Err(e) if crate::controller::machine::drain::is_not_found(&e) => {}
                Err(e) => {
                    warn!(set = %set.name_any(), machine = %name, error = %e, "delete failed");
                    failure = Some((
                        "FailedDelete",
                        format!("Deleting machine {name} failed: {e}"),
                    ));
                }
            }
        }
    }
    if plan.create > 0 {
        info!(set = %set.name_any(), count = plan.create, replicas = set.spec.replicas, "creating machines");
        'batches: for batch in slow_start_batches(plan.create) {
            let results = join_all((0..batch).map(|_| {
                let api = api.clone();
                let machine = machine_from_template(&set, &ns);
                async move { api.create(&PostParams::default(), &machine).await }
            }))
            .await;
            let mut failed = false;
            for result in results {
                match result {
                    Ok(m) => {
                        ctx.expectations.wrote(&uid, &m.name_any(), Write::Created);
                        publish(
                            &ctx,
                            &*set,
                            EventType::Normal,
                            "SuccessfulCreate",
                            "Create",
                            format!("Created machine: {}", m.name_any()),
                        )
                        .await;
                    }
                    Err(e) => {
                        warn!(set = %set.name_any(), error = %e, "create failed");
                        failure = Some(("FailedCreate", format!("Creating a machine failed: {e}")));
                        failed = true;
                    }
                }
            }
            if failed {
                break 'batches;
            }
        }
    }
    if let Some((reason, message)) = &failure {
        publish(
            &ctx,
            &*set,
            EventType::Warning,
            reason,
            "Reconcile",
            message.clone(),
        )
        .await;
    }

    let old = set.status.clone().unwrap_or_default();
    let mut status = census::set_status(
        &old,
        set.metadata.generation,
        &template_labels,
        &refs,
        set.spec.min_ready_seconds,
        failure.as_ref().map(|(r, m)| (*r, m.as_str())),
        now,
    );
    let auto = count(preserved::auto_preserved(&pairs, now));
    status.auto_preserve_failed_machine_count =
        (auto > 0 || set.spec.auto_preserve_failed_machine_max.is_some()).then_some(auto);
    status.preserved_failed_replicas = count(kept.len());
    write_status(&set, &ctx, &old, status).await?;

    let next = if failure.is_some() {
        ctx.next_backoff(&uid)
    } else {
        ctx.reset_backoff(&uid);
        // A kept machine is deleted once its preservation ends; one about
        // to be preserved is looked at again soon.
        let preservation_ends = kept.iter().map(|m| match preserved::expiry(m) {
            Some(until) => Duration::try_from(now.duration_until(until))
                .unwrap_or_default()
                .saturating_add(Duration::from_secs(1)),
            None => PRESERVATION_PENDING,
        });
        census::next_available(&refs, set.spec.min_ready_seconds, now)
            .map(|d| d + Duration::from_secs(1))
            .into_iter()
            .chain(preservation_ends)
            .min()
            .map_or(RESYNC, |d| d.min(RESYNC))
    };
    Ok(Action::requeue(next))
}

/// The preserve value in force for `m` (its Node's, from the cache, wins).
fn wish_of(ctx: &Context, m: &Machine) -> Wish {
    let node = m
        .labels()
        .get(NODE_LABEL)
        .and_then(|name| ctx.nodes.get(name));
    preservation::wish(node.as_ref().map(|n| n.annotations()), m.annotations())
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Requeue policy after an error: per-object backoff.
pub fn error_policy(set: Arc<MachineSet>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(set = %set.name_any(), error = %error, category = error.category(), "reconcile failed");
    Action::requeue(ctx.next_backoff(&set.uid().unwrap_or_default()))
}

/// Drifted machines of this set are replaced: it is annotated so and no
/// MachineDeployment owns it (a deployment rolls its machines itself).
fn replaces_drifted(set: &MachineSet) -> bool {
    let owned_by_deployment = ownership::controller_of(&set.metadata)
        .is_some_and(|o| o.kind == MachineDeployment::kind(&()));
    !owned_by_deployment
        && set
            .annotations()
            .get(REPLACE_ON_DRIFT_ANNOTATION)
            .map(String::as_str)
            == Some("true")
}

/// MCM's safety controller freezes sets (label `freeze=True` or condition
/// `Frozen`): no new machines for them until it thaws.
fn is_frozen(set: &MachineSet) -> bool {
    set.labels().get("freeze").map(String::as_str) == Some("True")
        || set
            .status
            .as_ref()
            .and_then(|s| s.condition(MachineSetConditionType::Frozen))
            .is_some_and(|c| c.status == ConditionStatus::True)
}

/// A new Machine of `set`: the template's labels, annotations and spec, the
/// controller reference, the lifecycle finalizer (set at creation, so the
/// machine reconciler saves a write) and MCM's default scale-down priority
/// `3`, which the cluster-autoscaler expects on every machine.
fn machine_from_template(set: &MachineSet, ns: &str) -> Machine {
    let template = &set.spec.template;
    let mut spec = template.spec.clone();
    spec.provider_id = None;
    let mut annotations = template.metadata.annotations.clone().unwrap_or_default();
    annotations
        .entry(MACHINE_PRIORITY_ANNOTATION.to_string())
        .or_insert_with(|| PRIORITY_DEFAULT.to_string());
    Machine {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", set.name_any())),
            namespace: Some(ns.to_string()),
            labels: template.metadata.labels.clone(),
            annotations: Some(annotations),
            owner_references: Some(vec![ownership::controller_ref(set)]),
            finalizers: Some(vec![FINALIZER.to_string()]),
            ..ObjectMeta::default()
        },
        spec,
        status: None,
    }
}

/// Reports a set that cannot be reconciled as it is and waits for a change.
async fn invalid(set: &MachineSet, ctx: &Context, msg: &str) -> Result<Action> {
    let old = set.status.clone().unwrap_or_default();
    let reported = census::set_status(
        &old,
        set.metadata.generation,
        &Default::default(),
        &[],
        0,
        Some(("InvalidSpec", msg)),
        Timestamp::now(),
    );
    let status = MachineSetStatus {
        conditions: reported.conditions,
        observed_generation: reported.observed_generation,
        ..old.clone()
    };
    let changed = old
        .condition(MachineSetConditionType::ReplicaFailure)
        .and_then(|c| c.message.as_deref())
        != Some(msg);
    write_status(set, ctx, &old, status).await?;
    if changed {
        publish(
            ctx,
            set,
            EventType::Warning,
            "InvalidSpec",
            "Reconcile",
            msg.to_string(),
        )
        .await;
    }
    Ok(Action::await_change())
}

async fn write_status(
    set: &MachineSet,
    ctx: &Context,
    old: &MachineSetStatus,
    new: MachineSetStatus,
) -> Result<()> {
    status::write(ctx, set, set.status.is_some(), old, &new).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::machine_set::MachineSetSpec;
    use crate::api::shared::{ClassSpec, MachineTemplateSpec};
    use std::collections::BTreeMap;

    fn set() -> MachineSet {
        let mut s = MachineSet::new(
            "pool",
            MachineSetSpec {
                replicas: 2,
                template: MachineTemplateSpec {
                    metadata: ObjectMeta {
                        labels: Some(BTreeMap::from([("pool".into(), "a".into())])),
                        ..ObjectMeta::default()
                    },
                    spec: crate::api::machine::MachineSpec {
                        class: ClassSpec::machine_class("c").into(),
                        provider_id: Some("aws:///x/i-1".into()),
                        ..Default::default()
                    },
                },
                ..Default::default()
            },
        );
        s.metadata.uid = Some("set-uid".into());
        s
    }

    #[test]
    fn machines_are_stamped_from_the_template_and_owned() {
        let m = machine_from_template(&set(), "ns");
        assert_eq!(m.metadata.generate_name.as_deref(), Some("pool-"));
        assert_eq!(m.labels()["pool"], "a");
        assert_eq!(m.spec.class.name, "c");
        assert_eq!(m.spec.provider_id, None, "never copied");
        assert_eq!(ownership::controller_uid(&m.metadata), Some("set-uid"));
        assert_eq!(m.finalizers(), [FINALIZER]);
        assert_eq!(m.annotations()[MACHINE_PRIORITY_ANNOTATION], "3");
        let mut chosen = set();
        chosen.spec.template.metadata.annotations = Some(BTreeMap::from([(
            MACHINE_PRIORITY_ANNOTATION.into(),
            "5".into(),
        )]));
        let m = machine_from_template(&chosen, "ns");
        assert_eq!(
            m.annotations()[MACHINE_PRIORITY_ANNOTATION],
            "5",
            "the template's wins"
        );
    }

    #[test]
    fn drift_replacement_is_opt_in_and_never_for_deployment_sets() {
        let mut s = set();
        assert!(!replaces_drifted(&s));
        s.metadata.annotations = Some(BTreeMap::from([(
            REPLACE_ON_DRIFT_ANNOTATION.into(),
            "true".into(),
        )]));
        assert!(replaces_drifted(&s));
        let mut d = MachineDeployment::new("d", Default::default());
        d.metadata.uid = Some("d-uid".into());
        s.metadata.owner_references = Some(vec![ownership::controller_ref(&d)]);
        assert!(!replaces_drifted(&s));
    }

    #[test]
    fn frozen_sets_are_recognised() {
        let mut s = set();
        assert!(!is_frozen(&s));
        s.metadata.labels = Some(BTreeMap::from([("freeze".into(), "True".into())]));
        assert!(is_frozen(&s));
    }
}
