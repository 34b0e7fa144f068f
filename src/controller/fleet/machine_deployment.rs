//! The MachineDeployment reconciler: rolls MachineSets, Kubernetes
//! Deployment style, and rolls machines when their MachineClass changes.
//!
//! validate → load the class (its effective-spec hash, see [`super::drift`])
//! → list sets and machines (consistent reads) → find the *new* set: the one
//! whose template equals the deployment's and whose class hash is the class's
//! current one → one step of the strategy ([`rollout`], pure) → scale sets,
//! create the new set, clean old ones → status and conditions.
//!
//! A class edit that needs new instances changes the hash, so no set matches
//! any more and a new one is created: the normal rolling update then replaces
//! every machine within maxSurge/maxUnavailable. A set created before the
//! hash existed (or while the class was invalid) adopts the class as it is,
//! so neither an operator upgrade nor a broken class edit rolls anything.
//!
//! `paused` and the (unsupported) `InPlaceUpdate` strategy only scale; the
//! latter says so in the Progressing condition.
//!
//! For the cluster-autoscaler ([`super::autoscaler`]): the machines named in
//! the deployment's trigger-deletion annotation get priority 1 before any
//! set is scaled (so a lowered `replicas` removes exactly those), and while
//! a rollout runs every Node of the deployment is protected from the
//! autoscaler's scale-down.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::{Future, Stream, StreamExt, TryFuture, future};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{self, Action};
use kube::runtime::events::EventType;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Controller, watcher};
use kube::{Resource, ResourceExt};
use serde_json::json;
use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};

use super::autoscaler::{self, NodeMark};
use super::census::{self, MACHINE_PRIORITY_ANNOTATION};
use super::drift::{self, EffectiveSpec, SPEC_HASH_ANNOTATION};
use super::expectations::{self, Write};
use super::in_place;
use super::rollout::{self, ConditionInputs, Counts, RecreateStep, SetView};
use crate::api::machine::{Machine, NODE_LABEL};
use crate::api::machine_class::MachineClass;
use crate::api::machine_deployment::{
    MACHINE_TEMPLATE_HASH_LABEL, MachineDeployment, MachineDeploymentConditionType,
    MachineDeploymentStatus, MachineDeploymentStrategyType,
};
use crate::api::machine_set::{MachineSet, MachineSetConditionType, MachineSetSpec};
use crate::api::shared::{ConditionStatus, MachineSummary, MachineTemplateSpec};
use crate::controller::cached_machine::CachedMachine;
use crate::controller::context::{Context, store_ready};
use crate::controller::error::{Error, Result};
use crate::controller::events::publish;
use crate::controller::ownership::{self, Claim};
use crate::controller::status;

/// Re-check every deployment this often even without events: edits of the
/// class's Secret (its userData) are noticed within this period.
const RESYNC: Duration = Duration::from_secs(60);

const IN_PLACE_MESSAGE: &str = "strategy.type InPlaceUpdate is not supported by this operator: changes of the template or its MachineClass are not rolled out, the deployment only scales. Use RollingUpdate or Recreate.";

/// The MachineDeployment controller, woken by changes of its deployments,
/// of the sets they own, of the machines of those sets (through `sets`, the
/// MachineSet controller's store) and of the classes they use, running
/// `reconcile` ([`reconcile`], possibly wrapped, e.g. for metrics). Runs
/// until SIGTERM/SIGINT.
pub fn controller<R, Fut, M, C>(
    client: &Client,
    namespace: Option<&str>,
    (machines, classes): (M, C),
    ctx: Arc<Context>,
    reconcile: R,
    sets: Store<MachineSet>,
) -> impl Future<Output = ()> + use<R, Fut, M, C>
where
    M: Stream<Item = Arc<CachedMachine>> + Send + 'static,
    C: Stream<Item = Arc<MachineClass>> + Send + 'static,
    R: FnMut(Arc<MachineDeployment>, Arc<Context>) -> Fut,
    Fut: TryFuture<Ok = Action, Error = Error> + Send + 'static,
{
    let wc = watcher::Config::default();
    let ctl = Controller::new(
        crate::controller::api::<MachineDeployment>(client, namespace),
        wc.clone(),
    );
    let deployments = ctl.store();
    let concurrency = ctx.config.concurrency;
    // No debounce: machines of a deployment change often during a rollout,
    // and trailing-edge debouncing would keep postponing its reconcile.
    ctl.with_config(controller::Config::default().concurrency(concurrency))
        .owns(
            crate::controller::api::<MachineSet>(client, namespace),
            wc.clone(),
        )
        .watches_shared_stream(machines, move |m| deployment_of_machine(&sets, &m))
        .watches_shared_stream(classes, move |class| {
            let ns = class.namespace();
            deployments
                .state()
                .iter()
                .filter(|d| {
                    d.namespace() == ns && d.spec.template.spec.class.name == class.name_any()
                })
                .map(|d| ObjectRef::from_obj(d.as_ref()))
                .collect::<Vec<_>>()
        })
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|_| future::ready(()))
}

/// Merge-patches set `name`'s spec and records the change, to be awaited
/// in the set cache.
async fn patch_set(
    ctx: &Context,
    api: &Api<MachineSet>,
    uid: &str,
    name: &str,
    patch: &serde_json::Value,
) -> Result<()> {
    let patched = api
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await?;
    if let Some(generation) = patched.metadata.generation {
        ctx.expectations
            .wrote(uid, name, Write::Generation(generation));
    }
    Ok(())
}

/// The deployment whose set owns machine `m`, if any.
fn deployment_of_machine(
    sets: &Store<MachineSet>,
    m: &CachedMachine,
) -> Option<ObjectRef<MachineDeployment>> {
    let ns = m.namespace()?;
    let owner = ownership::controller_of(m.meta())?;
    let set = sets.get(&ObjectRef::new(&owner.name).within(&ns))?;
    let d = ownership::controller_of(&set.metadata)
        .filter(|o| o.kind == MachineDeployment::kind(&()))?;
    Some(ObjectRef::new(&d.name).within(&ns))
}

/// Reconciles one MachineDeployment; see the module docs.
pub async fn reconcile(d: Arc<MachineDeployment>, ctx: Arc<Context>) -> Result<Action> {
    if d.metadata.deletion_timestamp.is_some() {
        // The garbage collector deletes the sets, and with them the machines.
        ctx.expectations.forget(&d.uid().unwrap_or_default());
        return Ok(Action::await_change());
    }
    let ns = d
        .namespace()
        .ok_or_else(|| Error::Invalid("MachineDeployment has no namespace".into()))?;
    let uid = d.uid().unwrap_or_default();
    let now = Timestamp::now();
    let replicas = d.spec.replicas;
    let min_ready = d.spec.min_ready_seconds;

    // 1. What the schema cannot check.
    let selector = match ownership::selector(d.spec.selector.as_ref()) {
        Ok(s) if ownership::template_matches(&s, d.spec.template.metadata.labels.as_ref()) => s,
        Ok(_) => {
            return invalid(
                &d,
                &ctx,
                "spec.template.metadata.labels do not match spec.selector",
            )
            .await;
        }
        Err(msg) => return invalid(&d, &ctx, &msg).await,
    };
    let (surge, max_unavailable) = match rollout::limits(&d.spec.strategy, replicas) {
        Ok(limits) => limits,
        Err(msg) => return invalid(&d, &ctx, &msg).await,
    };
    let strategy = d.spec.strategy.effective_type();

    // 2. The class as it is now: its hash names the machines' generation.
    let class_name = &d.spec.template.spec.class.name;
    let (class_hash, legacy_hash, class_problem) =
        match drift::load_class(&ctx.reads, &ns, class_name).await {
            Ok(class) => {
                let effective = EffectiveSpec::of_class(&class);
                (Some(effective.hash), Some(effective.legacy_hash), None)
            }
            Err(Error::Invalid(msg)) => (None, None, Some(msg)),
            Err(e) => return Err(e),
        };

    // 3. Sets (adopting orphans under the selector) and their machines.
    // From the caches once they show this deployment's own writes (see
    // [`expectations`]); live while they lag.
    let sets_api = Api::<MachineSet>::namespaced(ctx.client.clone(), &ns);
    let listed_sets = match ctx.sets.get() {
        Some(store) if store_ready(store).await => {
            expectations::owned_under(&ctx.expectations, store, &uid, &ns, &selector, &sets_api)
                .await?
        }
        _ => {
            let query = ListParams::default().labels(&selector.to_string());
            sets_api.list(&query).await?.items
        }
    };
    let mut sets: Vec<MachineSet> = Vec::new();
    for s in listed_sets {
        match ownership::claim(&uid, &s.metadata) {
            Claim::Owned => sets.push(s),
            Claim::Adopt => {
                ownership::adopt(&sets_api, &s, ownership::controller_ref(d.as_ref())).await?;
                ctx.expectations.wrote(&uid, &s.name_any(), Write::Adopted);
                info!(deployment = %d.name_any(), set = %s.name_any(), "adopted machine set");
                sets.push(s);
            }
            Claim::Ignore => {}
        }
    }
    ctx.caches_synced().await?;
    let machines: Vec<Machine> = expectations::cached_under(&ctx.machines, &ns, &selector);
    let mut by_set: HashMap<String, Vec<&Machine>> = HashMap::new();
    for m in &machines {
        if let Some(owner) = ownership::controller_uid(&m.metadata) {
            by_set.entry(owner.to_string()).or_default().push(m);
        }
    }
    let view =
        |s: &MachineSet| set_view(s, by_set.get(&s.uid().unwrap_or_default()), min_ready, now);
    let owned: Vec<&Machine> = sets
        .iter()
        .filter_map(|s| by_set.get(&s.uid().unwrap_or_default()))
        .flatten()
        .copied()
        .collect();

    // 3b. The machines the cluster-autoscaler chose go first: marked before
    // any set is scaled down.
    let chosen = mark_chosen(&d, &ctx, &owned, now).await?;
    let has_chosen = |v: &SetView| {
        sets.iter()
            .find(|s| s.name_any() == v.name)
            .and_then(|s| by_set.get(&s.uid().unwrap_or_default()))
            .is_some_and(|ms| ms.iter().any(|m| chosen.contains(&m.name_any())))
    };

    // 4. Which set is the new one.
    let new_index = find_new(
        &sets,
        &d.spec.template,
        class_hash.as_deref(),
        legacy_hash.as_deref(),
    );
    if let Some(i) = new_index {
        let mut patch = json!({});
        if let Some(hash) = class_hash.as_deref().filter(|h| {
            sets[i]
                .annotations()
                .get(SPEC_HASH_ANNOTATION)
                .map(String::as_str)
                != Some(h)
        }) {
            // Baseline: the set's machines run the class as it is now
            // (a set from before hashes, or before the credentials counted).
            patch["metadata"] = json!({"annotations": {SPEC_HASH_ANNOTATION: hash}});
        }
        if let Some(spec) = in_place::patch(&sets[i].spec.template.spec, &d.spec.template.spec) {
            // nodeTemplate and machine configuration: the set takes them
            // over, and its machines after it; nothing rolls.
            patch["spec"] = json!({"template": {"spec": spec}});
            info!(deployment = %d.name_any(), set = %sets[i].name_any(), "updating the new set's node template and machine configuration in place");
        }
        if sets[i].spec.auto_preserve_failed_machine_max != d.spec.auto_preserve_failed_machine_max
        {
            patch["spec"]["autoPreserveFailedMachineMax"] =
                json!(d.spec.auto_preserve_failed_machine_max);
        }
        if patch != json!({}) {
            patch_set(&ctx, &sets_api, &uid, &sets[i].name_any(), &patch).await?;
        }
    }
    // Sets being rolled away preserve nothing: their Failed machines are
    // replaced as usual (MCM: preservation is ignored in rolling updates).
    for (i, s) in sets.iter().enumerate() {
        if Some(i) != new_index
            && s.spec
                .auto_preserve_failed_machine_max
                .is_some_and(|m| m > 0)
        {
            let patch = json!({"spec": {"autoPreserveFailedMachineMax": 0}});
            patch_set(&ctx, &sets_api, &uid, &s.name_any(), &patch).await?;
        }
    }
    let mut new_view: Option<SetView> = new_index.map(|i| view(&sets[i]));
    let mut old_views: Vec<SetView> = sets
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != new_index)
        .map(|(_, s)| view(s))
        .collect();
    let new_name = new_index.map(|i| sets[i].name_any());

    // 5. One step of the strategy.
    let in_place = strategy == MachineDeploymentStrategyType::InPlaceUpdate;
    let mut changes: Vec<(String, i32)> = Vec::new();
    let mut create_with: Option<i32> = None;
    if d.spec.paused || in_place {
        if sets.is_empty() && !d.spec.paused {
            create_with = Some(replicas);
        } else {
            let mut ordered: Vec<SetView> = new_view.iter().cloned().collect();
            let mut others = old_views.clone();
            others.sort_by(|a, b| (b.created, &b.name).cmp(&(a.created, &a.name)));
            ordered.extend(others);
            let total: i64 = ordered.iter().map(|v| i64::from(v.replicas)).sum();
            if total > i64::from(replicas) {
                autoscaler::chosen_last(&mut ordered, has_chosen);
            }
            changes = rollout::scale_without_rollout(replicas, &ordered);
        }
    } else if strategy == MachineDeploymentStrategyType::Recreate {
        match rollout::recreate_step(replicas, new_view.as_ref(), &old_views) {
            RecreateStep::ScaleOldToZero(names) => {
                changes = names.into_iter().map(|n| (n, 0)).collect();
            }
            RecreateStep::WaitForOldMachines | RecreateStep::Done => {}
            RecreateStep::ScaleNew(r) => match &new_view {
                Some(n) => changes = vec![(n.name.clone(), r)],
                None => create_with = Some(r),
            },
        }
    } else {
        match &new_view {
            Some(n) => {
                changes = rollout::rolling_step(replicas, surge, max_unavailable, n, &old_views)
            }
            None => {
                const PLACEHOLDER: &str = "\0new";
                let empty = SetView {
                    name: PLACEHOLDER.into(),
                    ..SetView::default()
                };
                let step =
                    rollout::rolling_step(replicas, surge, max_unavailable, &empty, &old_views);
                create_with = Some(
                    step.iter()
                        .find(|(n, _)| n == PLACEHOLDER)
                        .map_or(0, |(_, r)| *r),
                );
                changes = step.into_iter().filter(|(n, _)| n != PLACEHOLDER).collect();
            }
        }
    }

    // A rollout runs while old sets are to keep machines (MCM's rule for
    // protecting the deployment's Nodes from the autoscaler's scale-down).
    let rolling = !d.spec.paused && old_views.iter().any(|v| v.replicas > 0);

    debug!(
        deployment = %d.name_any(),
        new = ?new_view,
        old = ?old_views,
        ?changes,
        ?create_with,
        "rollout step"
    );

    // 6. Act: create the new set, scale sets.
    let mut failure: Option<(String, String)> = None;
    let mut set_create_error: Option<String> = None;
    let mut created_new = false;
    let mut collision_count = d.status.as_ref().and_then(|s| s.collision_count);
    let mut new_name = new_name;
    if let Some(r) = create_with {
        let hash = template_hash(&d.spec.template, class_hash.as_deref(), collision_count);
        let set = new_set(&d, &ns, &hash, class_hash.as_deref(), r);
        match sets_api.create(&PostParams::default(), &set).await {
            Ok(created) => {
                ctx.expectations
                    .wrote(&uid, &created.name_any(), Write::Created);
                created_new = true;
                info!(deployment = %d.name_any(), set = %created.name_any(), replicas = r, "created new machine set");
                publish(
                    &ctx,
                    &*d,
                    EventType::Normal,
                    "ScalingMachineSet",
                    "Rollout",
                    format!(
                        "Created new MachineSet {} with {r} replicas",
                        created.name_any()
                    ),
                )
                .await;
                new_name = Some(created.name_any());
                new_view = Some(SetView {
                    name: created.name_any(),
                    created: Some(now),
                    replicas: r,
                    ..SetView::default()
                });
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {
                // Named like ours but not a set we would use: pick another name.
                collision_count = Some(collision_count.unwrap_or_default().saturating_add(1));
                warn!(deployment = %d.name_any(), set = %set.name_any(), "machine set name collision");
            }
            Err(e) => {
                let message = format!("Creating MachineSet {} failed: {e}", set.name_any());
                set_create_error = Some(message.clone());
                failure = Some(("FailedCreate".into(), message));
            }
        }
    }
    for (set_name, r) in &changes {
        let patch = json!({"spec": {"replicas": r}});
        patch_set(&ctx, &sets_api, &uid, set_name, &patch).await?;
        let views = new_view.iter_mut().chain(old_views.iter_mut());
        if let Some(v) = views.into_iter().find(|v| &v.name == set_name) {
            let direction = if *r > v.replicas { "up" } else { "down" };
            publish(
                &ctx,
                &*d,
                EventType::Normal,
                "ScalingMachineSet",
                "Rollout",
                format!(
                    "Scaled {direction} MachineSet {set_name} from {} to {r}",
                    v.replicas
                ),
            )
            .await;
            info!(deployment = %d.name_any(), set = %set_name, from = v.replicas, to = r, "scaled machine set");
            v.replicas = *r;
        }
    }
    if let Some(i) = new_index
        && sets[i].spec.min_ready_seconds != min_ready
    {
        let patch = json!({"spec": {"minReadySeconds": min_ready}});
        patch_set(&ctx, &sets_api, &uid, &sets[i].name_any(), &patch).await?;
    }

    // 7. Status, and old sets beyond the history limit once complete.
    let counts = Counts::of(new_view.as_ref(), &old_views);
    if !d.spec.paused && counts.complete(replicas) {
        for set_name in rollout::history_to_delete(&old_views, d.spec.revision_history_limit) {
            match sets_api
                .delete(&set_name, &DeleteParams::background())
                .await
            {
                Ok(_) => {
                    ctx.expectations.wrote(&uid, &set_name, Write::Deleted);
                    info!(deployment = %d.name_any(), set = %set_name, "deleted old machine set")
                }
                Err(e) if crate::controller::machine::drain::is_not_found(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    if failure.is_none() {
        failure = class_problem.map(|msg| ("InvalidMachineClass".to_string(), msg));
    }
    if failure.is_none() {
        failure = sets.iter().find_map(|s| {
            let c = s
                .status
                .as_ref()?
                .condition(MachineSetConditionType::ReplicaFailure)?;
            (c.status == ConditionStatus::True).then(|| {
                (
                    c.reason.clone().unwrap_or_else(|| "ReplicaFailure".into()),
                    format!(
                        "MachineSet {}: {}",
                        s.name_any(),
                        c.message.clone().unwrap_or_default()
                    ),
                )
            })
        });
    }
    let old = d.status.clone().unwrap_or_default();
    let (conditions, recheck) = rollout::conditions(&ConditionInputs {
        previous: &old.conditions,
        counts,
        replicas,
        max_unavailable: if strategy == MachineDeploymentStrategyType::Recreate {
            0
        } else {
            max_unavailable
        },
        progressed: counts.progressed_since(&old) || !changes.is_empty(),
        new_set: new_name.as_deref(),
        created_new_set: created_new,
        paused: d.spec.paused,
        blocked: in_place
            .then_some(("InPlaceUpdateNotSupported", IN_PLACE_MESSAGE))
            .or(set_create_error
                .as_deref()
                .map(|m| (rollout::SET_CREATE_ERROR, m))),
        progress_deadline_seconds: d.spec.progress_deadline_seconds,
        failure: failure.as_ref().map(|(r, m)| (r.as_str(), m.as_str())),
        now,
    });
    let mut failed_machines: Vec<MachineSummary> = sets
        .iter()
        .filter_map(|s| s.status.as_ref())
        .flat_map(|s| s.failed_machines.iter().cloned())
        .collect();
    failed_machines.sort_by(|a, b| a.name.cmp(&b.name));
    let status = MachineDeploymentStatus {
        observed_generation: d.metadata.generation.unwrap_or_default(),
        replicas: counts.replicas,
        updated_replicas: counts.updated,
        ready_replicas: counts.ready,
        available_replicas: counts.available,
        unavailable_replicas: (counts.desired - counts.available).max(0),
        conditions,
        collision_count,
        failed_machines,
        preserved_failed_replicas: sets
            .iter()
            .filter_map(|s| s.status.as_ref())
            .map(|s| s.preserved_failed_replicas)
            .fold(0, i32::saturating_add),
    };
    announce_transitions(&ctx, &d, &old, &status).await;
    write_status(&d, &ctx, &old, status).await?;

    // 8. The autoscaler leaves the deployment's Nodes alone while it rolls;
    // the protection goes once the rollout is complete.
    let protect = if rolling {
        Some(true)
    } else if !d.spec.paused && counts.complete(replicas) {
        Some(false)
    } else {
        None
    };
    if let Some(protect) = protect {
        protect_nodes(&ctx, &owned, protect).await?;
    }

    let all: Vec<&Machine> = machines.iter().collect();
    let next = [
        Some(RESYNC),
        recheck,
        census::next_available(&all, min_ready, now).map(|d| d + Duration::from_secs(1)),
        (create_with.is_some() && !created_new).then_some(Duration::from_secs(1)),
    ]
    .into_iter()
    .flatten()
    .min()
    .unwrap_or(RESYNC);
    ctx.reset_backoff(&uid);
    Ok(Action::requeue(next))
}

/// Gives the machines named in the trigger-deletion annotation priority 1
/// (and the time they were chosen), reports malformed entries, and drops the
/// names of machines that are gone, Failed or being deleted. Returns the
/// names still chosen. The annotation is rewritten with the resourceVersion
/// read, so an entry the autoscaler adds meanwhile is never lost (the write
/// conflicts and the pass is retried).
async fn mark_chosen(
    d: &MachineDeployment,
    ctx: &Context,
    machines: &[&Machine],
    now: Timestamp,
) -> Result<BTreeSet<String>> {
    let annotations = d.annotations();
    let Some(value) = annotations.get(autoscaler::TRIGGER_DELETION_ANNOTATION) else {
        return Ok(BTreeSet::new());
    };
    let fallback = annotations
        .get(autoscaler::LAST_SCALER_CHANGE_ANNOTATION)
        .filter(|t| t.parse::<Timestamp>().is_ok())
        .cloned()
        .unwrap_or_else(|| now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
    let plan = autoscaler::plan_trigger_deletion(Some(value), machines, &fallback);
    let ns = d.namespace().unwrap_or_default();
    let machine_api = Api::<Machine>::namespaced(ctx.client.clone(), &ns);
    for (name, time) in &plan.mark {
        let mut marks = serde_json::Map::new();
        marks.insert(
            MACHINE_PRIORITY_ANNOTATION.into(),
            autoscaler::PRIORITY_CHOSEN.into(),
        );
        if let Some(time) = time {
            marks.insert(
                autoscaler::MARKED_FOR_DELETION_TIME_ANNOTATION.into(),
                time.clone().into(),
            );
        }
        let patch = json!({"metadata": {"annotations": marks}});
        machine_api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        info!(deployment = %d.name_any(), machine = %name, "machine chosen by the autoscaler: priority 1");
    }
    if !plan.problems.is_empty() {
        let message = format!(
            "Skipped {} entr{} of annotation {}: {}. Expected machine names, or name~<RFC 3339 time>, separated by commas.",
            plan.problems.len(),
            if plan.problems.len() == 1 { "y" } else { "ies" },
            autoscaler::TRIGGER_DELETION_ANNOTATION,
            plan.problems.join(", ")
        );
        warn!(deployment = %d.name_any(), %message, "malformed trigger-deletion annotation");
        publish(
            ctx,
            d,
            EventType::Warning,
            "InvalidTriggerDeletion",
            "Scale",
            message,
        )
        .await;
    }
    let chosen: BTreeSet<String> = plan.chosen.iter().cloned().collect();
    if let Some(new_value) = plan.annotation {
        let patch = json!({"metadata": {
            "resourceVersion": d.resource_version(),
            "annotations": {autoscaler::TRIGGER_DELETION_ANNOTATION: new_value},
        }});
        Api::<MachineDeployment>::namespaced(ctx.client.clone(), &ns)
            .patch(
                &d.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        debug!(deployment = %d.name_any(), value = ?new_value, "trigger-deletion annotation updated");
    }
    Ok(chosen)
}

/// Adds (`protect`) or removes the autoscaler's scale-down protection on the
/// Nodes of `machines` (see [`autoscaler::scale_down_mark`]); Nodes already
/// as wanted are not written.
async fn protect_nodes(ctx: &Context, machines: &[&Machine], protect: bool) -> Result<()> {
    let nodes = Api::<Node>::all(ctx.target.clone());
    for m in machines {
        if protect && census::is_terminating(m) {
            continue;
        }
        // A preserved machine's Node keeps the protection after the rollout
        // (the machine reconciler removes it when preservation ends).
        if !protect && super::preserved::expiry(m).is_some() {
            continue;
        }
        let Some(name) = m.labels().get(NODE_LABEL) else {
            continue;
        };
        let Some(node) = ctx.nodes.get(name) else {
            continue;
        };
        let value = match autoscaler::scale_down_mark(node.annotations(), protect) {
            Some(NodeMark::Add) => json!("true"),
            Some(NodeMark::Remove) => serde_json::Value::Null,
            None => continue,
        };
        let patch = json!({"metadata": {"annotations": {
            autoscaler::SCALE_DOWN_DISABLED_ANNOTATION: value,
            autoscaler::SCALE_DOWN_DISABLED_BY_US: value,
        }}});
        match nodes
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                debug!(node = %name, protect, "autoscaler scale-down protection changed")
            }
            Err(e) if crate::controller::machine::drain::is_not_found(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Requeue policy after an error: per-object backoff.
pub fn error_policy(d: Arc<MachineDeployment>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(deployment = %d.name_any(), error = %error, category = error.category(), "reconcile failed");
    Action::requeue(ctx.next_backoff(&d.uid().unwrap_or_default()))
}

/// A set as the rollout sees it, from its machines.
fn set_view(
    s: &MachineSet,
    machines: Option<&Vec<&Machine>>,
    min_ready: i32,
    now: Timestamp,
) -> SetView {
    let machines = machines.map(Vec::as_slice).unwrap_or_default();
    let count = |pred: &dyn Fn(&Machine) -> bool| {
        i32::try_from(machines.iter().filter(|m| pred(m)).count()).unwrap_or(i32::MAX)
    };
    SetView {
        name: s.name_any(),
        created: s.creation_timestamp().map(|t| t.0),
        replicas: s.spec.replicas,
        active: count(&census::is_active),
        terminating: count(&census::is_terminating),
        available: count(&|m| census::is_available(m, min_ready, now)),
        ready: count(&census::is_ready),
    }
}

/// A template without the hash label, the fields that change in place (see
/// [`in_place`]) and with empty maps as absent, for comparing a set's
/// template with the deployment's.
fn template_key(template: &MachineTemplateSpec) -> MachineTemplateSpec {
    let mut t = in_place::without(template);
    if let Some(labels) = t.metadata.labels.as_mut() {
        labels.remove(MACHINE_TEMPLATE_HASH_LABEL);
    }
    if t.metadata.labels.as_ref().is_some_and(BTreeMap::is_empty) {
        t.metadata.labels = None;
    }
    if t.metadata
        .annotations
        .as_ref()
        .is_some_and(BTreeMap::is_empty)
    {
        t.metadata.annotations = None;
    }
    t
}

/// Index of the deployment's new set: same template, made for the class as
/// it is now (or made before class hashes were recorded, or recorded with
/// the class's `legacy_hash`, from before the credentials counted). Without
/// a valid class (`class_hash` None) the class cannot roll: the newest set
/// with the template is the new one.
fn find_new(
    sets: &[MachineSet],
    template: &MachineTemplateSpec,
    class_hash: Option<&str>,
    legacy_hash: Option<&str>,
) -> Option<usize> {
    let wanted = template_key(template);
    let mut candidates: Vec<usize> = (0..sets.len())
        .filter(|i| template_key(&sets[*i].spec.template) == wanted)
        .collect();
    candidates.sort_by_key(|i| {
        (
            sets[*i].creation_timestamp().map(|t| t.0),
            sets[*i].name_any(),
        )
    });
    let hash_of = |i: &usize| {
        sets[*i]
            .annotations()
            .get(SPEC_HASH_ANNOTATION)
            .map(String::as_str)
    };
    match class_hash {
        Some(h) => candidates
            .iter()
            .find(|i| hash_of(i) == Some(h))
            .or_else(|| {
                candidates.iter().find(|i| {
                    hash_of(i).is_none() || (hash_of(i) == legacy_hash && legacy_hash.is_some())
                })
            })
            .copied(),
        None => candidates.last().copied(),
    }
}

/// The `machine-template-hash` of a new set: the template, the class hash and
/// the collision count, as 10 hex digits.
fn template_hash(
    template: &MachineTemplateSpec,
    class_hash: Option<&str>,
    collisions: Option<i32>,
) -> String {
    let mut hasher = Sha256::new();
    hasher.update(serde_json::to_vec(&template_key(template)).unwrap_or_default());
    hasher.update(b"\0");
    hasher.update(class_hash.unwrap_or_default().as_bytes());
    hasher.update(b"\0");
    hasher.update(collisions.unwrap_or_default().to_le_bytes());
    hasher
        .finalize()
        .iter()
        .take(5)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The new MachineSet of `d`: named and labelled with the template hash, the
/// class hash recorded, owned by `d`.
fn new_set(
    d: &MachineDeployment,
    ns: &str,
    hash: &str,
    class_hash: Option<&str>,
    replicas: i32,
) -> MachineSet {
    let mut template = d.spec.template.clone();
    template
        .metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(MACHINE_TEMPLATE_HASH_LABEL.into(), hash.into());
    let mut selector = d.spec.selector.clone().unwrap_or_default();
    selector
        .match_labels
        .get_or_insert_with(BTreeMap::new)
        .insert(MACHINE_TEMPLATE_HASH_LABEL.into(), hash.into());
    MachineSet {
        metadata: ObjectMeta {
            name: Some(format!("{}-{hash}", d.name_any())),
            namespace: Some(ns.to_string()),
            labels: template.metadata.labels.clone(),
            annotations: class_hash
                .map(|h| BTreeMap::from([(SPEC_HASH_ANNOTATION.to_string(), h.to_string())])),
            owner_references: Some(vec![ownership::controller_ref(d)]),
            ..ObjectMeta::default()
        },
        spec: MachineSetSpec {
            replicas,
            selector: Some(selector),
            machine_class: None,
            template,
            min_ready_seconds: d.spec.min_ready_seconds,
            auto_preserve_failed_machine_max: d.spec.auto_preserve_failed_machine_max,
        },
        status: None,
    }
}

/// Reports a deployment that cannot be reconciled as it is and waits for a
/// change.
async fn invalid(d: &MachineDeployment, ctx: &Context, msg: &str) -> Result<Action> {
    let old = d.status.clone().unwrap_or_default();
    let mut status = old.clone();
    let previous = old.condition(MachineDeploymentConditionType::ReplicaFailure);
    if previous.and_then(|c| c.message.as_deref()) != Some(msg) {
        status
            .conditions
            .retain(|c| c.type_ != MachineDeploymentConditionType::ReplicaFailure);
        status
            .conditions
            .push(crate::api::machine_deployment::MachineDeploymentCondition {
                type_: MachineDeploymentConditionType::ReplicaFailure,
                status: ConditionStatus::True,
                last_update_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    Timestamp::now(),
                )),
                last_transition_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    Timestamp::now(),
                )),
                reason: Some("InvalidSpec".into()),
                message: Some(msg.to_string()),
            });
        publish(
            ctx,
            d,
            EventType::Warning,
            "InvalidSpec",
            "Rollout",
            msg.to_string(),
        )
        .await;
    }
    status.observed_generation = d.metadata.generation.unwrap_or_default();
    write_status(d, ctx, &old, status).await?;
    Ok(Action::await_change())
}

/// Warning Events when the deployment enters a state that needs a human.
async fn announce_transitions(
    ctx: &Context,
    d: &MachineDeployment,
    old: &MachineDeploymentStatus,
    new: &MachineDeploymentStatus,
) {
    for c in &new.conditions {
        let before = old.conditions.iter().find(|o| o.type_ == c.type_);
        if before.map(|b| (&b.status, &b.reason)) == Some((&c.status, &c.reason)) {
            continue;
        }
        let warn = matches!(
            (c.type_, c.status),
            (
                MachineDeploymentConditionType::Progressing,
                ConditionStatus::False
            ) | (
                MachineDeploymentConditionType::ReplicaFailure,
                ConditionStatus::True
            )
        );
        if warn {
            let reason = c.reason.clone().unwrap_or_default();
            publish(
                ctx,
                d,
                EventType::Warning,
                &reason,
                "Rollout",
                c.message.clone().unwrap_or_default(),
            )
            .await;
        }
    }
}

async fn write_status(
    d: &MachineDeployment,
    ctx: &Context,
    old: &MachineDeploymentStatus,
    new: MachineDeploymentStatus,
) -> Result<()> {
    status::write(ctx, d, d.status.is_some(), old, &new).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::machine_deployment::MachineDeploymentSpec;
    use crate::api::shared::ClassSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};

    fn deployment() -> MachineDeployment {
        let labels = BTreeMap::from([("pool".to_string(), "a".to_string())]);
        let mut d = MachineDeployment::new(
            "web",
            MachineDeploymentSpec {
                replicas: 3,
                selector: Some(LabelSelector {
                    match_labels: Some(labels.clone()),
                    ..LabelSelector::default()
                }),
                template: MachineTemplateSpec {
                    metadata: ObjectMeta {
                        labels: Some(labels),
                        ..ObjectMeta::default()
                    },
                    spec: crate::api::machine::MachineSpec {
                        class: ClassSpec::machine_class("c").into(),
                        ..Default::default()
                    },
                },
                min_ready_seconds: 5,
                ..Default::default()
            },
        );
        d.metadata.uid = Some("d-uid".into());
        d
    }

    fn created(mut s: MachineSet, secs: i64) -> MachineSet {
        s.metadata.creation_timestamp =
            Some(Time(Timestamp::from_second(1_700_000_000 + secs).unwrap()));
        s
    }

    #[test]
    fn new_sets_carry_the_hash_everywhere_and_are_owned() {
        let d = deployment();
        let s = new_set(&d, "ns", "abc", Some("h1"), 2);
        assert_eq!(s.name_any(), "web-abc");
        assert_eq!(s.labels()[MACHINE_TEMPLATE_HASH_LABEL], "abc");
        assert_eq!(
            s.spec
                .selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap()[MACHINE_TEMPLATE_HASH_LABEL],
            "abc"
        );
        assert_eq!(
            s.spec.template.metadata.labels.as_ref().unwrap()[MACHINE_TEMPLATE_HASH_LABEL],
            "abc"
        );
        assert_eq!(s.annotations()[SPEC_HASH_ANNOTATION], "h1");
        assert_eq!(ownership::controller_uid(&s.metadata), Some("d-uid"));
        assert_eq!((s.spec.replicas, s.spec.min_ready_seconds), (2, 5));
    }

    #[test]
    fn the_new_set_matches_template_and_class() {
        let d = deployment();
        let h1 = created(new_set(&d, "ns", "aaa", Some("h1"), 3), 1);
        let h2 = created(new_set(&d, "ns", "bbb", Some("h2"), 0), 2);
        let sets = vec![h1.clone(), h2];
        assert_eq!(find_new(&sets, &d.spec.template, Some("h1"), None), Some(0));
        assert_eq!(find_new(&sets, &d.spec.template, Some("h2"), None), Some(1));
        assert_eq!(
            find_new(&sets, &d.spec.template, Some("h3"), None),
            None,
            "class edited: roll"
        );
        assert_eq!(
            find_new(&sets, &d.spec.template, Some("h3"), Some("h2")),
            Some(1),
            "a set hashed before the credentials counted stays the new one"
        );
        assert_eq!(
            find_new(&sets, &d.spec.template, None, None),
            Some(1),
            "invalid class: no roll"
        );

        // A set from before class hashes adopts the class as it is.
        let mut legacy = h1;
        legacy.metadata.annotations = None;
        assert_eq!(
            find_new(&[legacy], &d.spec.template, Some("h9"), None),
            Some(0)
        );

        // Another template: no match.
        let mut other = d.spec.template.clone();
        other
            .metadata
            .labels
            .get_or_insert_default()
            .insert("rev".into(), "2".into());
        assert_eq!(find_new(&sets, &other, Some("h1"), None), None);

        // Node template and machine configuration change in place: the
        // same set.
        let mut in_place = d.spec.template.clone();
        in_place.spec.configuration.max_evict_retries = Some(3);
        in_place.spec.node_template.metadata.labels = Some([("a".into(), "1".into())].into());
        assert_eq!(find_new(&sets, &in_place, Some("h1"), None), Some(0));
    }

    #[test]
    fn template_hash_depends_on_template_class_and_collisions() {
        let t = deployment().spec.template;
        let base = template_hash(&t, Some("h1"), None);
        assert_eq!(base.len(), 10);
        assert_eq!(base, template_hash(&t, Some("h1"), None));
        assert_ne!(base, template_hash(&t, Some("h2"), None));
        assert_ne!(base, template_hash(&t, Some("h1"), Some(1)));
        // The hash label itself does not count.
        let with_label = new_set(&deployment(), "ns", &base, Some("h1"), 1)
            .spec
            .template;
        assert_eq!(base, template_hash(&with_label, Some("h1"), None));
    }
}
