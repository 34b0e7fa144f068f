//! The Machine reconciler: one EC2 instance per Machine, created, watched and
//! torn down behind the finalizer `machine.sapcloud.io/machine-controller-manager`.
//!
//! apply:   class + secrets → validate (pure) → find the instance (UID tag) →
//!          create it if missing (idempotent: ClientToken + UID tag) →
//!          providerID, node label → phase from instance + Node → status.
//! cleanup: Terminating → cordon + drain the Node → terminate every instance
//!          of the Machine → wait until EC2 says so → delete the Node →
//!          release the finalizer. Every step is read back from the world, so
//!          a restart resumes where the last process stopped.
//!
//! Beside it in this room: [`phase`] (the phase state machine, pure),
//! [`drain`] (cordon and evict), [`launch_record`] (what a Machine remembers
//! of its launch).

pub mod drain;
pub mod launch_record;
pub mod phase;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, NodeCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event, finalizer};
use serde_json::json;
use tracing::{info, warn};

use self::drain::DrainProgress;
use self::launch_record::{LaunchRecord, StaleToken};
use self::phase::{InstanceHealth, NodeHealth, Timeouts};
use super::context::{Context, MANAGER};
use super::error::{Error, Result};
use super::events::publish;
use super::ownership;
use crate::api::machine::{Machine, MachineStatus, NODE_LABEL};
use crate::api::machine_class::MachineClass;
use crate::api::machine_deployment::MACHINE_TEMPLATE_HASH_LABEL;
use crate::api::shared::{
    CurrentStatus, LastOperation, MachineOperationType, MachinePhase, MachineState,
};
use crate::aws::clients::Ec2Handle;
use crate::aws::credentials::user_data;
use crate::aws::errors::{Ec2Error, ErrorClass};
use crate::aws::instances::{self, InstanceInfo, InstanceState, instance_id_from_provider_id};
use crate::aws::launch::{
    LaunchContext, PostLaunchAction, build_run_instances, post_launch_actions,
};
use crate::controller::fleet::drift::{
    self, CLASS_TAG_KEYS_ANNOTATION, CONDITION_DRIFTED, EffectiveSpec, LoadedClass,
    REPLACE_ON_DRIFT_ANNOTATION, Replacer, SPEC_FIELDS_ANNOTATION, SPEC_HASH_ANNOTATION,
};

/// Finalizer on Machines (and on classes in use), as MCM names it.
pub const FINALIZER: &str = "machine.sapcloud.io/machine-controller-manager";
/// MCM's annotation with a JSON placement for the instance.
pub const PLACEMENT_ANNOTATION: &str = "machine.sapcloud.io/awsPlacement";
/// Condition type we add to `status.conditions` for configuration problems.
pub const CONDITION_CONFIG_VALID: &str = "MachineConfigurationValid";

const RECHECK_SOON: Duration = Duration::from_secs(5);

/// Entry point of the controller: everything happens behind the finalizer.
pub async fn reconcile(machine: Arc<Machine>, ctx: Arc<Context>) -> Result<Action> {
    let ns = machine
        .namespace()
        .ok_or_else(|| Error::Invalid("Machine has no namespace".into()))?;
    let api = Api::<Machine>::namespaced(ctx.client.clone(), &ns);
    let key = machine.uid().unwrap_or_default();
    let result = finalizer(&api, FINALIZER, machine, |event| async {
        match event {
            Event::Apply(m) => apply(&m, &ctx).await,
            Event::Cleanup(m) => match cleanup(&m, &ctx).await {
                Err(e) if !matches!(e, Error::Waiting { .. }) => {
                    report_delete_failure(&m, &ctx, &e).await;
                    Err(e)
                }
                other => other,
            },
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    if result.is_ok() {
        ctx.reset_backoff(&key);
    }
    result
}

/// Requeue policy after an error: waits are plain requeues, EC2 errors follow
/// their class, everything else backs off per object.
pub fn error_policy(machine: Arc<Machine>, error: &Error, ctx: Arc<Context>) -> Action {
    if let Error::Waiting { retry_after, .. } = error.inner() {
        return Action::requeue(*retry_after);
    }
    let key = machine.uid().unwrap_or_default();
    warn!(machine = %machine.name_any(), error = %error, category = error.category(), "reconcile failed");
    if let Error::Ec2(e) = error.inner()
        && e.class == ErrorClass::ResourceExhausted
    {
        return Action::requeue(e.retry_after());
    }
    match error.ec2_class() {
        Some(ErrorClass::InvalidInput) | Some(ErrorClass::Unauthorized) => {
            Action::requeue(Duration::from_secs(600).max(ctx.next_backoff(&key)))
        }
        _ if matches!(error.inner(), Error::Invalid(_)) => {
            Action::requeue(Duration::from_secs(600))
        }
        _ => Action::requeue(ctx.next_backoff(&key)),
    }
}

/// The class, merged secret data and EC2 handle a Machine needs, and the
/// class's effective provider spec (for drift).
struct Resolved {
    class: MachineClass,
    secret_data: std::collections::BTreeMap<String, k8s_openapi::ByteString>,
    handle: Ec2Handle,
    effective: EffectiveSpec,
}

async fn resolve(m: &Machine, ctx: &Context) -> Result<Resolved> {
    let ns = m.namespace().unwrap_or_default();
    let LoadedClass { class, secret_data } =
        drift::load_class(&ctx.client, &ns, &m.spec.class.name).await?;
    let source = ctx
        .config
        .credentials
        .credentials_for(&secret_data, &drift::secret_refs(&class))
        .map_err(|refused| Error::Invalid(refused.to_string()))?;
    let handle = ctx.ec2.get(&source, &class.provider_spec.region).await;
    let effective = EffectiveSpec::of(&class.provider_spec, user_data(&secret_data).as_deref());
    Ok(Resolved {
        class,
        secret_data,
        handle,
        effective,
    })
}

// ---------------------------------------------------------------- apply

async fn apply(m: &Machine, ctx: &Context) -> Result<Action> {
    let resolved = resolve(m, ctx).await;
    let home = match home(m, ctx, resolved.as_ref().ok()).await {
        // The Secrets of its launch are gone or refused: say so on the
        // Machine rather than only in the operator's log.
        Err(e @ Error::Invalid(_)) => {
            let msg = e.to_string();
            report_failure(
                m,
                ctx,
                MachineOperationType::Create,
                "InvalidArgument",
                &msg,
                true,
            )
            .await?;
            return Err(e);
        }
        home => home?,
    };
    let (resolved, home) = match (resolved, home) {
        (Ok(r), home) => (r, home),
        // A class that went bad after the launch: the instance still lives
        // where it was launched, so health checks go on and the last good
        // status stays; only new launches wait for the class to be fixed.
        (Err(Error::Invalid(problem)), Some((handle, region))) => {
            warn!(machine = %m.name_any(), %problem, "class unusable; watching the existing instance only");
            let instance = reported(
                m,
                ctx,
                "Looking up the instance",
                locate(m, &handle, ctx).await,
            )
            .await?;
            return observe(m, ctx, instance.as_ref(), &region, None, None).await;
        }
        (Err(e @ Error::Invalid(_)), None) => {
            report_failure(
                m,
                ctx,
                MachineOperationType::Create,
                "InvalidArgument",
                &e.to_string(),
                true,
            )
            .await?;
            return Err(e);
        }
        (Err(e), _) => return Err(e),
    };
    let (handle, region) = match home {
        Some(home) => home,
        None => (
            resolved.handle.clone(),
            resolved.class.provider_spec.region.clone(),
        ),
    };

    let instance = match reported(
        m,
        ctx,
        "Looking up the instance",
        locate(m, &handle, ctx).await,
    )
    .await?
    {
        Some(i) => i,
        None if m.spec.provider_id.is_some() => {
            // EC2's reads are eventually consistent: a just-launched instance
            // can be missing from DescribeInstances for a little while.
            if launch_within_grace(m) {
                return Ok(Action::requeue(RECHECK_SOON));
            }
            // The instance we launched is gone from EC2 altogether.
            return observe(m, ctx, None, &region, None, None).await;
        }
        // Failed without an instance (its creation timed out): the set
        // replaces it; nothing more to launch.
        None if m.phase() == Some(MachinePhase::Failed) => return Ok(Action::await_change()),
        None => {
            if let Some(action) = creation_timed_out(m, ctx).await? {
                return Ok(action);
            }
            let uid = m.uid().unwrap_or_default();
            let class_version = class_version(&resolved.class);
            if let Some(wait) = ctx.creation_held(&uid, &class_version) {
                return Ok(Action::requeue(wait));
            }
            return create(m, ctx, &resolved).await;
        }
    };
    // Machines from before drift bookkeeping (or whose launch record was
    // lost in a crash) take the class as it is now as their baseline.
    let recorded = launch_record(m, &resolved);
    ensure_identity(m, ctx, &instance, &region, &recorded).await?;
    let mut failed_update = None;
    if !instance.state.is_gone() {
        // Tags are bookkeeping: a refused CreateTags/DeleteTags (e.g. a
        // policy without ec2:CreateTags) is reported (Event, lastOperation),
        // and health checks and phases go on.
        if let Err(e) = sync_tags(m, ctx, &resolved, &handle, &instance, &recorded).await {
            warn!(machine = %m.name_any(), error = %e, "could not update the instance's tags");
            let description = format!("Updating the tags of instance {} failed: {e}", instance.id);
            publish(
                ctx,
                m,
                EventType::Warning,
                "TagsFailed",
                "Update",
                description.clone(),
            )
            .await;
            failed_update = Some((description, e.mcm_code()));
        }
        if instance.state == InstanceState::Running {
            let post_launch =
                ensure_post_launch(ctx, &handle, &instance, &resolved.class.provider_spec).await;
            reported(
                m,
                ctx,
                "Applying the settings EC2 takes only after launch",
                post_launch,
            )
            .await?;
        }
    }
    let drift = drift_condition(m, &resolved, &recorded);
    observe(m, ctx, Some(&instance), &region, Some(drift), failed_update).await
}

/// `result` of an apply step, with an EC2 failure that needs a human (a
/// missing permission, a parameter EC2 refuses) reported in
/// `lastOperation` and a Warning Event first; other failures are retried
/// soon and only logged. The next pass that gets through clears the report.
async fn reported<T>(m: &Machine, ctx: &Context, step: &str, result: Result<T>) -> Result<T> {
    match result {
        Err(Error::Ec2(e))
            if matches!(e.class, ErrorClass::Unauthorized | ErrorClass::InvalidInput) =>
        {
            let description = format!("{step} failed: {e}");
            report_failure(
                m,
                ctx,
                MachineOperationType::Create,
                e.mcm_code(),
                &description,
                false,
            )
            .await?;
            Err(Error::Ec2(e))
        }
        other => other,
    }
}

/// Where the Machine's instance lives, when a launch was ever attempted: the
/// Region and Secrets of its [`LaunchRecord`], else (machines launched before
/// records existed) the Region of its providerID with the class's Secrets.
/// `resolved`, when the class could be loaded, saves reading its Secrets again.
async fn home(
    m: &Machine,
    ctx: &Context,
    resolved: Option<&Resolved>,
) -> Result<Option<(Ec2Handle, String)>> {
    let record = LaunchRecord::from_annotations(m.annotations());
    let provider_region = m
        .spec
        .provider_id
        .as_deref()
        .and_then(instances::region_from_provider_id);
    let Some(region) = record
        .as_ref()
        .map(|r| r.region.clone())
        .or_else(|| provider_region.map(str::to_string))
    else {
        return Ok(None);
    };
    let class_refs = match resolved {
        Some(r) => Some(drift::secret_refs(&r.class)),
        None => {
            Api::<MachineClass>::namespaced(ctx.client.clone(), &m.namespace().unwrap_or_default())
                .get_opt(&m.spec.class.name)
                .await?
                .map(|c| drift::secret_refs(&c))
        }
    };
    let refs = match (&record, class_refs) {
        (Some(r), _) => r.secrets.clone(),
        (None, Some(refs)) => refs,
        (None, None) => {
            return Err(Error::Invalid(format!(
                "MachineClass {} (spec.class.name) not found, and the Machine has no launch record",
                m.spec.class.name
            )));
        }
    };
    let data = match resolved {
        Some(r) if drift::secret_refs(&r.class) == refs => r.secret_data.clone(),
        _ => drift::load_secret_data(&ctx.client, &refs).await?,
    };
    let source = ctx
        .config
        .credentials
        .credentials_for(&data, &refs)
        .map_err(|refused| Error::Invalid(refused.to_string()))?;
    Ok(Some((ctx.ec2.get(&source, &region).await, region)))
}

/// Whether the Machine's launch (its record, else its creation) is recent
/// enough that its instance may still be invisible to EC2's reads.
fn launch_within_grace(m: &Machine) -> bool {
    let now = Timestamp::now();
    match LaunchRecord::from_annotations(m.annotations()) {
        Some(r) => r.within_grace(now),
        None => m
            .creation_timestamp()
            .is_some_and(|t| launch_record::since(t.0, now) < launch_record::VISIBILITY_GRACE),
    }
}

/// A Machine without an instance whose creation timeout has passed is
/// Failed (its set replaces it), however its launches failed.
async fn creation_timed_out(m: &Machine, ctx: &Context) -> Result<Option<Action>> {
    let phase = m.phase();
    if !matches!(
        phase,
        None | Some(MachinePhase::Pending) | Some(MachinePhase::CrashLoopBackOff)
    ) {
        return Ok(None);
    }
    let timeout = timeouts(m, ctx).creation;
    let age = m
        .creation_timestamp()
        .map(|t| launch_record::since(t.0, Timestamp::now()))
        .unwrap_or_default();
    if age < timeout {
        return Ok(None);
    }
    let old = m.status.clone().unwrap_or_default();
    let mut status = old.clone();
    let previous = old.last_operation.description.clone();
    let description = format!(
        "Machine has no instance after its creation timeout of {}; last: {previous}",
        humantime_minutes(timeout)
    );
    status.current_status = entered(&old.current_status, MachinePhase::Failed, false);
    status.last_operation = LastOperation {
        description: description.clone(),
        error_code: old.last_operation.error_code.clone(),
        last_update_time: Some(Time(Timestamp::now())),
        state: Some(MachineState::Failed),
        type_: Some(MachineOperationType::Create),
    };
    write_status(m, ctx, &old, status).await?;
    publish(
        ctx,
        m,
        EventType::Warning,
        "CreationTimeout",
        "Create",
        description,
    )
    .await;
    Ok(Some(Action::await_change()))
}

/// `20m`, `1h30m`: a timeout as users write it.
fn humantime_minutes(d: Duration) -> String {
    let minutes = d.as_secs() / 60;
    match (minutes / 60, minutes % 60) {
        (0, m) => format!("{m}m"),
        (h, 0) => format!("{h}h"),
        (h, m) => format!("{h}h{m}m"),
    }
}

/// The drift annotations the Machine has, or, where missing, those of the
/// class as it is now.
fn launch_record(m: &Machine, r: &Resolved) -> BTreeMap<String, String> {
    let mut record = r.effective.annotations(&r.class.provider_spec.tags);
    for (key, value) in record.iter_mut() {
        if let Some(existing) = m.annotations().get(key) {
            value.clone_from(existing);
        }
    }
    record
}

/// `(status, reason, message)` of the Drifted condition.
fn drift_condition(
    m: &Machine,
    r: &Resolved,
    recorded: &BTreeMap<String, String>,
) -> (&'static str, &'static str, String) {
    let state = drift::assess(
        recorded
            .get(SPEC_HASH_ANNOTATION)
            .map(String::as_str)
            .unwrap_or_default(),
        recorded.get(SPEC_FIELDS_ANNOTATION).map(String::as_str),
        &r.effective,
    );
    let replacer = match ownership::controller_of(&m.metadata) {
        Some(o)
            if o.kind == "MachineSet" && m.labels().contains_key(MACHINE_TEMPLATE_HASH_LABEL) =>
        {
            Replacer::Deployment
        }
        Some(o) if o.kind == "MachineSet" => {
            if m.annotations()
                .get(REPLACE_ON_DRIFT_ANNOTATION)
                .map(String::as_str)
                == Some("true")
            {
                Replacer::SetOnDrift
            } else {
                Replacer::Set
            }
        }
        _ => Replacer::Nobody,
    };
    drift::condition(&state, &r.class.name_any(), replacer)
}

/// Applies the class's tags to the instance, its volumes and its network
/// interfaces in place (tags never need a new instance) and records which
/// keys came from the class, so that only those are ever removed.
async fn sync_tags(
    m: &Machine,
    ctx: &Context,
    r: &Resolved,
    handle: &Ec2Handle,
    instance: &InstanceInfo,
    recorded: &BTreeMap<String, String>,
) -> Result<()> {
    let class_tags = &r.class.provider_spec.tags;
    let applied = recorded.get(CLASS_TAG_KEYS_ANNOTATION).map(String::as_str);
    let plan = drift::tag_plan(&instance.tags, class_tags, applied);
    if !plan.is_empty() {
        let mut resources = vec![instance.id.clone()];
        resources.extend(attached_resources(handle, &instance.id).await?);
        if !plan.set.is_empty() {
            let tags: Vec<aws_sdk_ec2::types::Tag> = plan
                .set
                .iter()
                .map(|(k, v)| aws_sdk_ec2::types::Tag::builder().key(k).value(v).build())
                .collect();
            let req = handle
                .client
                .create_tags()
                .set_resources(Some(resources.clone()))
                .set_tags(Some(tags));
            handle.call("CreateTags", req.send()).await?;
        }
        if !plan.remove.is_empty() {
            let tags: Vec<aws_sdk_ec2::types::Tag> = plan
                .remove
                .iter()
                .map(|k| aws_sdk_ec2::types::Tag::builder().key(k).build())
                .collect();
            let req = handle
                .client
                .delete_tags()
                .set_resources(Some(resources))
                .set_tags(Some(tags));
            handle.call("DeleteTags", req.send()).await?;
        }
        let mut updated = instance.clone();
        updated.tags.extend(plan.set.clone());
        for key in &plan.remove {
            updated.tags.remove(key);
        }
        ctx.instances.record(&handle.key, updated).await;
        info!(machine = %m.name_any(), set = ?plan.set.keys().collect::<Vec<_>>(), removed = ?plan.remove, "updated instance tags in place");
        publish(
            ctx,
            m,
            EventType::Normal,
            "TagsUpdated",
            "Update",
            format!(
                "Updated the tags of instance {} in place (set: {}; removed: {})",
                instance.id,
                plan.set.keys().cloned().collect::<Vec<_>>().join(", "),
                plan.remove.join(", ")
            ),
        )
        .await;
    }
    let keys = drift::class_tag_keys(class_tags).join(",");
    if m.annotations().get(CLASS_TAG_KEYS_ANNOTATION) != Some(&keys) {
        annotate(m, ctx, CLASS_TAG_KEYS_ANNOTATION, &keys).await?;
    }
    Ok(())
}

/// Sets one annotation on the Machine (merge patch).
async fn annotate(m: &Machine, ctx: &Context, key: &str, value: &str) -> Result<()> {
    let patch = json!({"metadata": {"annotations": {key: value}}});
    machines(ctx, m)
        .patch(
            &m.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    Ok(())
}

/// IDs of the volumes and network interfaces attached to an instance, which
/// carry the class's tags too. Asked only when tags change.
async fn attached_resources(handle: &Ec2Handle, id: &str) -> Result<Vec<String>> {
    let req = handle.client.describe_instances().instance_ids(id);
    let out = handle.call("DescribeInstances", req.send()).await?;
    Ok(out
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .flat_map(|i| {
            let volumes = i
                .block_device_mappings()
                .iter()
                .filter_map(|b| b.ebs()?.volume_id().map(str::to_string));
            let interfaces = i
                .network_interfaces()
                .iter()
                .filter_map(|n| n.network_interface_id().map(str::to_string));
            volumes.chain(interfaces).collect::<Vec<_>>()
        })
        .collect())
}

/// Finds the Machine's instance: by providerID through the shared view, else
/// (never launched, or launched by a process that died before recording it)
/// by the Machine-UID tag, asking EC2 directly.
async fn locate(m: &Machine, handle: &Ec2Handle, ctx: &Context) -> Result<Option<InstanceInfo>> {
    if let Some(id) = m
        .spec
        .provider_id
        .as_deref()
        .and_then(instance_id_from_provider_id)
    {
        return Ok(ctx
            .instances
            .get(handle, id, ctx.config.instance_sync_period)
            .await?);
    }
    let uid = m.uid().unwrap_or_default();
    let mut found = instances::by_machine_uid(handle, &uid).await?;
    // Prefer a live instance; a terminated one only explains what happened.
    found.sort_by_key(|i| i.state.is_gone());
    Ok(found.into_iter().next())
}

async fn create(m: &Machine, ctx: &Context, r: &Resolved) -> Result<Action> {
    let name = m.name_any();
    let ns = m.namespace().unwrap_or_default();
    let uid = m.uid().unwrap_or_default();
    let spec = &r.class.provider_spec;

    let root = ctx
        .images
        .root_device_name(&r.handle, &spec.region, &spec.ami)
        .await;
    let root = match root {
        Ok(root) => root,
        Err(e) => return Err(launch_failed(m, ctx, r, e).await),
    };
    let user_data = user_data(&r.secret_data);
    let placement = m
        .spec
        .node_template
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(PLACEMENT_ANNOTATION))
        .or_else(|| m.annotations().get(PLACEMENT_ANNOTATION))
        .map(String::as_str);
    let Some(record) = record_launch(m, ctx, r).await? else {
        return Ok(Action::requeue(RECHECK_SOON));
    };
    if let Some(wait) = record.wait_before_call(Timestamp::now()) {
        return Ok(Action::requeue(wait.min(RECHECK_SOON * 6)));
    }
    let token = record.client_token(&uid);
    let launch = LaunchContext {
        machine_name: &name,
        machine_namespace: &ns,
        machine_uid: &uid,
        client_token: &token,
        spec,
        user_data: user_data.as_deref(),
        root_device_name: root.as_deref(),
        placement_annotation: placement,
    };
    let request = match build_run_instances(r.handle.client.run_instances(), &launch) {
        Ok(req) => req,
        Err(e) => {
            let msg = e.to_string();
            report_failure(
                m,
                ctx,
                MachineOperationType::Create,
                "InvalidArgument",
                &msg,
                true,
            )
            .await?;
            return Err(Error::Invalid(msg));
        }
    };
    // No SDK-level retries: capacity errors come back as HTTP 500, which the
    // SDK would retry at once; the controller's own policy decides instead.
    // (Retrying is safe either way: the ClientToken makes it idempotent.)
    let once = aws_sdk_ec2::config::Builder::default()
        .retry_config(aws_sdk_ec2::config::retry::RetryConfig::standard().with_max_attempts(1));
    let out = match r
        .handle
        .call(
            "RunInstances",
            request.customize().config_override(once).send(),
        )
        .await
    {
        Ok(out) => out,
        Err(e) => {
            if let Some(stale) = StaleToken::of(e.code.as_deref()) {
                // EC2 will not honour this token again: continue under a new
                // one (after a mismatch, only once an instance launched
                // under the old one had the time to show up and be adopted).
                let next = stale.next_record(&record, Timestamp::now());
                info!(machine = %name, code = ?e.code, attempt = next.attempt, "stale ClientToken: next launch attempt");
                write_launch_record(m, ctx, &next).await?;
                return Ok(Action::requeue(RECHECK_SOON));
            }
            return Err(launch_failed(m, ctx, r, e).await);
        }
    };
    let Some(instance) = out.instances().first().map(InstanceInfo::from) else {
        return Err(Error::Invalid("RunInstances returned no instance".into()));
    };
    info!(machine = %name, instance = %instance.id, "launched instance");
    ctx.instances.record(&r.handle.key, instance.clone()).await;
    let launched_from = r.effective.annotations(&spec.tags);
    ensure_identity(m, ctx, &instance, &spec.region, &launched_from).await?;
    publish(
        ctx,
        m,
        EventType::Normal,
        "Created",
        "Create",
        format!(
            "Launched instance {} ({}) in {}",
            instance.id,
            spec.machine_type,
            instance
                .availability_zone
                .as_deref()
                .unwrap_or(&spec.region)
        ),
    )
    .await;

    // Settings EC2 only takes after launch (MCM's InitializeMachine) follow
    // on the next passes, from what EC2 reports (`ensure_post_launch`).
    Ok(Action::requeue(RECHECK_SOON))
}

/// The launch record for the call about to be made, written to the Machine
/// *before* the call (see [`launch_record`]): the same token as the last
/// call when the class still launches in the same Region with the same
/// Secrets, a new attempt otherwise. `None`: an attempt elsewhere may still
/// have an invisible instance; wait.
async fn record_launch(m: &Machine, ctx: &Context, r: &Resolved) -> Result<Option<LaunchRecord>> {
    let now = Timestamp::now();
    let region = r.class.provider_spec.region.clone();
    let secrets = drift::secret_refs(&r.class);
    let record = match LaunchRecord::from_annotations(m.annotations()) {
        Some(rec) if rec.region == region && rec.secrets == secrets => {
            if rec.wait_before_call(now).is_some() {
                return Ok(Some(rec));
            }
            LaunchRecord {
                started: now,
                ..rec
            }
        }
        Some(rec) if rec.within_grace(now) => return Ok(None),
        Some(rec) => LaunchRecord {
            region,
            secrets,
            ..rec.next_attempt(now)
        },
        None => LaunchRecord {
            attempt: 0,
            region,
            secrets,
            started: now,
            not_before: None,
        },
    };
    write_launch_record(m, ctx, &record).await?;
    Ok(Some(record))
}

async fn write_launch_record(m: &Machine, ctx: &Context, record: &LaunchRecord) -> Result<()> {
    annotate(
        m,
        ctx,
        launch_record::LAUNCH_ANNOTATION,
        &record.to_annotation(),
    )
    .await
}

/// Applies what EC2 only accepts after launch (source/destination check,
/// IPv6 prefixes) until EC2 shows it, from the shared instance view: no call
/// when it already holds. The view is updated with what was applied, so a
/// pass before the next refresh does not assign prefixes twice.
async fn ensure_post_launch(
    ctx: &Context,
    handle: &Ec2Handle,
    instance: &InstanceInfo,
    spec: &crate::api::provider_spec::AWSProviderSpec,
) -> Result<()> {
    let actions = post_launch_actions(spec).pending(&instance.post_launch);
    if actions.is_empty() {
        return Ok(());
    }
    initialize(handle, &instance.id, &actions).await?;
    let mut updated = instance.clone();
    updated.post_launch.apply(&actions);
    ctx.instances.record(&handle.key, updated).await;
    Ok(())
}

/// What identifies a version of the class for the creation hold: its
/// generation, which moves with every change except metadata (our own
/// finalizer updates must not lift a hold).
fn class_version(class: &MachineClass) -> String {
    class.metadata.generation.unwrap_or_default().to_string()
}

/// Applies what EC2 only accepts after launch (source/destination check,
/// IPv6 prefixes), comparing the spec with the launched instance so that a
/// repeat does nothing twice.
async fn initialize(handle: &Ec2Handle, id: &str, actions: &[PostLaunchAction]) -> Result<()> {
    for action in actions {
        match action {
            PostLaunchAction::DisableSourceDestCheck => {
                let off = aws_sdk_ec2::types::AttributeBooleanValue::builder()
                    .value(false)
                    .build();
                let req = handle
                    .client
                    .modify_instance_attribute()
                    .instance_id(id)
                    .source_dest_check(off);
                handle.call("ModifyInstanceAttribute", req.send()).await?;
            }
            PostLaunchAction::AssignIpv6Prefixes {
                network_interface_id,
                count,
                ..
            } => {
                let req = handle
                    .client
                    .assign_ipv6_addresses()
                    .network_interface_id(network_interface_id)
                    .ipv6_prefix_count(*count);
                handle.call("AssignIpv6Addresses", req.send()).await?;
            }
        }
    }
    Ok(())
}

/// Records a failed launch in the status (CrashLoopBackOff, MCM's phase for
/// failing creations) and turns it into the reconcile error.
async fn launch_failed(m: &Machine, ctx: &Context, r: &Resolved, e: Ec2Error) -> Error {
    let code = e.mcm_code();
    // Whatever failed, the status write below must not trigger an
    // immediate retry; a class change lifts the hold.
    let class_version = class_version(&r.class);
    ctx.hold_creation(
        &m.uid().unwrap_or_default(),
        &class_version,
        e.retry_after(),
    );
    let description = match e.class {
        ErrorClass::ResourceExhausted => format!("Resource exhausted, will retry: {e}"),
        ErrorClass::InvalidInput => format!("Invalid machine configuration: {e}"),
        _ => format!("Creating the instance failed: {e}"),
    };
    let invalid = e.class == ErrorClass::InvalidInput;
    if let Err(status_err) = report_failure(
        m,
        ctx,
        MachineOperationType::Create,
        code,
        &description,
        invalid,
    )
    .await
    {
        return status_err;
    }
    Error::Ec2(e)
}

/// Sets `spec.providerID` and the `node` label once the instance is known.
/// Also records `launch` (the drift annotations of what the instance was
/// launched from) where the Machine's annotations differ.
async fn ensure_identity(
    m: &Machine,
    ctx: &Context,
    i: &InstanceInfo,
    region: &str,
    launch: &BTreeMap<String, String>,
) -> Result<()> {
    let provider_id = format!("aws:///{region}/{}", i.id);
    let node_name = node_for(ctx, m, i)
        .map(|n| n.name_any())
        .or_else(|| i.private_dns_name.clone());
    let wants_id = m.spec.provider_id.as_deref() != Some(provider_id.as_str());
    let wants_label = node_name.is_some() && m.labels().get(NODE_LABEL) != node_name.as_ref();
    let annotations: BTreeMap<&String, &String> = launch
        .iter()
        .filter(|(k, v)| m.annotations().get(*k) != Some(*v))
        .collect();
    if !wants_id && !wants_label && annotations.is_empty() {
        return Ok(());
    }
    let mut patch = json!({});
    if wants_id {
        patch["spec"] = json!({"providerID": provider_id});
    }
    patch["metadata"] = json!({});
    if let (true, Some(node)) = (wants_label, node_name) {
        patch["metadata"]["labels"] = json!({NODE_LABEL: node});
    }
    if !annotations.is_empty() {
        patch["metadata"]["annotations"] = json!(annotations);
    }
    machines(ctx, m)
        .patch(
            &m.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    Ok(())
}

/// The target-cluster Node of an instance: matched on the instance ID in its
/// providerID (the kubelet writes the zone there, we write the region) or on
/// its name, never on the whole providerID string.
fn node_for(ctx: &Context, m: &Machine, i: &InstanceInfo) -> Option<Arc<Node>> {
    let label = m.labels().get(NODE_LABEL);
    ctx.nodes
        .state()
        .into_iter()
        .find(|n| match node_instance(n) {
            Some(id) => id == i.id,
            None => {
                Some(&n.name_any()) == label
                    || n.name_any().as_str() == i.private_dns_name.as_deref().unwrap_or("-")
            }
        })
}

/// The instance ID in a Node's providerID, if it has one.
fn node_instance(node: &Node) -> Option<&str> {
    node.spec
        .as_ref()
        .and_then(|s| s.provider_id.as_deref())
        .and_then(instance_id_from_provider_id)
}

/// Whether `node` is the Node of this machine's instance. EC2 reuses the
/// private IPs of terminated instances, and with them node names: a Node
/// named like the machine's may belong to a newer instance by now, and must
/// then be neither drained nor deleted. A Node without providerID is taken
/// by its name.
fn node_belongs(node: &Node, m: &Machine) -> bool {
    let ours = m
        .spec
        .provider_id
        .as_deref()
        .and_then(instance_id_from_provider_id);
    node_instance(node).is_none_or(|id| Some(id) == ours)
}

fn node_by_name(ctx: &Context, name: &str) -> Option<Arc<Node>> {
    ctx.nodes.state().into_iter().find(|n| n.name_any() == name)
}

fn node_health(node: Option<&Node>, problem_conditions: &[String]) -> NodeHealth {
    let Some(node) = node else {
        return NodeHealth::Missing;
    };
    let conditions = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .map(Vec::as_slice)
        .unwrap_or_default();
    let ready = conditions.iter().find(|c| c.type_ == "Ready");
    match ready {
        Some(c) if c.status == "True" => {}
        Some(c) => return NodeHealth::Unhealthy(format!("Ready is {}", c.status)),
        None => return NodeHealth::Unhealthy("no Ready condition".into()),
    }
    match conditions
        .iter()
        .find(|c| c.status == "True" && problem_conditions.contains(&c.type_))
    {
        Some(c) => NodeHealth::Unhealthy(format!("{} is True", c.type_)),
        None => NodeHealth::Healthy,
    }
}

fn instance_health(i: Option<&InstanceInfo>) -> InstanceHealth {
    let reason = |i: &InstanceInfo| {
        i.state_reason
            .clone()
            .unwrap_or_else(|| "no reason given".into())
    };
    match i {
        None => InstanceHealth::Gone("EC2 no longer knows the instance".into()),
        Some(i) if i.state.is_gone() => {
            InstanceHealth::Gone(format!("{:?} ({})", i.state, reason(i)))
        }
        Some(i) if matches!(i.state, InstanceState::Stopping | InstanceState::Stopped) => {
            InstanceHealth::Stopped(reason(i))
        }
        Some(_) => InstanceHealth::Up,
    }
}

/// Timeouts in force: the Machine's own, else the flags.
fn timeouts(m: &Machine, ctx: &Context) -> Timeouts {
    let pick = |own: Option<&kube::core::Duration>, default: Duration| {
        own.filter(|d| !d.is_negative())
            .map(|d| Duration::from(*d))
            .unwrap_or(default)
    };
    Timeouts {
        creation: pick(
            m.spec.configuration.creation_timeout.as_ref(),
            ctx.config.creation_timeout,
        ),
        health: pick(
            m.spec.configuration.health_timeout.as_ref(),
            ctx.config.health_timeout,
        ),
    }
}

/// Phase from instance + Node, written to the status when it changed.
/// `failed_update` (description, MCM code) is an in-place update of this
/// pass that failed: it becomes `lastOperation` unless the phase changed. A
/// failure reported by an earlier pass is replaced by the phase's
/// description once a pass gets here without one.
async fn observe(
    m: &Machine,
    ctx: &Context,
    instance: Option<&InstanceInfo>,
    _region: &str,
    drift: Option<(&'static str, &'static str, String)>,
    failed_update: Option<(String, &'static str)>,
) -> Result<Action> {
    let node = instance.and_then(|i| node_for(ctx, m, i));
    let created = m
        .creation_timestamp()
        .map(|t| t.0)
        .unwrap_or_else(Timestamp::now);
    let current = m.status.as_ref().and_then(|s| {
        let phase = s.current_status.phase?;
        let since = s
            .current_status
            .last_update_time
            .as_ref()
            .map(|t| t.0)
            .unwrap_or(created);
        Some((phase, since))
    });
    let conditions: Vec<String> = m
        .spec
        .configuration
        .node_conditions
        .as_deref()
        .map(|s| {
            s.split(',')
                .map(|c| c.trim().to_string())
                .filter(|c| !c.is_empty())
                .collect()
        })
        .unwrap_or_else(|| ctx.config.node_conditions.clone());
    let decision = phase::decide(
        current,
        created,
        &instance_health(instance),
        &node_health(node.as_deref(), &conditions),
        timeouts(m, ctx),
        Timestamp::now(),
    );
    let old = m.status.clone().unwrap_or_default();
    let changed_phase = current.map(|c| c.0) != Some(decision.phase);
    let mut status = old.clone();
    status.current_status = CurrentStatus {
        phase: Some(decision.phase),
        timeout_active: decision.timeout_active,
        last_update_time: Some(Time(decision.since)),
        ..old.current_status.clone()
    };
    // A create or update step reported failing by an earlier pass, that
    // this pass got through. (Failed machines keep their last words.)
    let earlier_failure = old.last_operation.state == Some(MachineState::Failed)
        && matches!(
            old.last_operation.type_,
            Some(MachineOperationType::Create | MachineOperationType::Update)
        )
        && decision.phase != MachinePhase::Failed;
    if let (false, Some((description, code))) = (changed_phase, &failed_update) {
        if old.last_operation.description != *description {
            status.last_operation = LastOperation {
                description: description.clone(),
                error_code: Some(code.to_string()),
                last_update_time: Some(Time(Timestamp::now())),
                state: Some(MachineState::Failed),
                type_: Some(MachineOperationType::Update),
            };
        }
    } else if changed_phase || earlier_failure {
        let (state, type_) = match decision.phase {
            MachinePhase::Running => (MachineState::Successful, MachineOperationType::Create),
            MachinePhase::Failed => (MachineState::Failed, MachineOperationType::HealthCheck),
            MachinePhase::Unknown => (MachineState::Processing, MachineOperationType::HealthCheck),
            _ => (MachineState::Processing, MachineOperationType::Create),
        };
        status.last_operation = LastOperation {
            description: decision.description.clone(),
            error_code: None,
            last_update_time: Some(Time(decision.since)),
            state: Some(state),
            type_: Some(type_),
        };
    }
    let drift_message = drift
        .as_ref()
        .filter(|(status, _, _)| *status == "True")
        .map(|(_, _, message)| message.clone());
    status.conditions = merged_conditions(&old.conditions, node.as_deref(), None, drift);
    status.observed_generation = m.metadata.generation;
    write_status(m, ctx, &old, status).await?;
    let was_drifted = old
        .condition(CONDITION_DRIFTED)
        .is_some_and(|c| c.status == "True");
    if let (Some(message), false) = (drift_message, was_drifted) {
        publish(ctx, m, EventType::Normal, "Drifted", "Update", message).await;
    }
    if changed_phase {
        let (kind, reason) = match decision.phase {
            MachinePhase::Running => (EventType::Normal, "Running"),
            MachinePhase::Failed => (EventType::Warning, "Failed"),
            MachinePhase::Unknown => (EventType::Warning, "Unhealthy"),
            _ => (EventType::Normal, "Pending"),
        };
        publish(
            ctx,
            m,
            kind,
            reason,
            "HealthCheck",
            decision.description.clone(),
        )
        .await;
    }
    let next = match decision.phase {
        MachinePhase::Failed => Duration::from_secs(600),
        _ => ctx.config.instance_sync_period,
    };
    Ok(Action::requeue(
        decision
            .recheck_after
            .map_or(next, |d| d.min(next))
            .max(Duration::from_secs(1)),
    ))
}

/// Node conditions copied from the Node (without heartbeat times, which would
/// rewrite the status on every kubelet heartbeat) plus our own configuration
/// condition and, when `drift` is given, the Drifted condition (else the
/// previous one is kept).
fn merged_conditions(
    old: &[NodeCondition],
    node: Option<&Node>,
    config_problem: Option<&str>,
    drift: Option<(&'static str, &'static str, String)>,
) -> Vec<NodeCondition> {
    let ours = [CONDITION_CONFIG_VALID, CONDITION_DRIFTED];
    let mut out: Vec<NodeCondition> = node
        .and_then(|n| n.status.as_ref())
        .and_then(|s| s.conditions.clone())
        .unwrap_or_else(|| {
            old.iter()
                .filter(|c| !ours.contains(&c.type_.as_str()))
                .cloned()
                .collect()
        });
    for c in &mut out {
        c.last_heartbeat_time = None;
    }
    let (status, reason, message) = match config_problem {
        Some(msg) => ("False", "InvalidConfiguration", msg.to_string()),
        None => (
            "True",
            "Valid",
            "The MachineClass and its Secrets are valid".to_string(),
        ),
    };
    out.push(stable_condition(
        old,
        CONDITION_CONFIG_VALID,
        status,
        reason,
        message,
    ));
    match drift {
        Some((status, reason, message)) => {
            out.push(stable_condition(
                old,
                CONDITION_DRIFTED,
                status,
                reason,
                message,
            ));
        }
        None => out.extend(old.iter().find(|c| c.type_ == CONDITION_DRIFTED).cloned()),
    }
    out
}

/// A condition of ours: the previous one when nothing changed, so that the
/// status stays the same from one pass to the next.
fn stable_condition(
    old: &[NodeCondition],
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
) -> NodeCondition {
    let previous = old.iter().find(|c| c.type_ == type_);
    match previous {
        Some(p) if p.status == status && p.message.as_deref() == Some(message.as_str()) => {
            p.clone()
        }
        _ => NodeCondition {
            type_: type_.into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(message),
            last_transition_time: Some(Time(Timestamp::now())),
            last_heartbeat_time: None,
        },
    }
}

/// Writes a failure into `lastOperation` (and the configuration condition when
/// `invalid`), with a Warning Event when the message is new.
async fn report_failure(
    m: &Machine,
    ctx: &Context,
    op: MachineOperationType,
    code: &str,
    description: &str,
    invalid: bool,
) -> Result<()> {
    let old = m.status.clone().unwrap_or_default();
    let mut status = old.clone();
    let same = old.last_operation.description == description
        && old.last_operation.state == Some(MachineState::Failed);
    if !same {
        status.last_operation = LastOperation {
            description: description.to_string(),
            error_code: Some(code.to_string()),
            last_update_time: Some(Time(Timestamp::now())),
            state: Some(MachineState::Failed),
            type_: Some(op),
        };
    }
    // A deletion is Terminating whatever this pass's snapshot still says.
    if op == MachineOperationType::Delete
        && old.current_status.phase != Some(MachinePhase::Terminating)
    {
        status.current_status = entered(&old.current_status, MachinePhase::Terminating, false);
    }
    if op == MachineOperationType::Create {
        let phase = old.current_status.phase;
        if phase.is_none() || phase == Some(MachinePhase::Pending) {
            status.current_status =
                entered(&old.current_status, MachinePhase::CrashLoopBackOff, true);
        }
    }
    status.conditions =
        merged_conditions(&old.conditions, None, invalid.then_some(description), None);
    write_status(m, ctx, &old, status).await?;
    if !same {
        publish(
            ctx,
            m,
            EventType::Warning,
            match (invalid, op) {
                (true, _) => "InvalidConfiguration",
                (false, MachineOperationType::Delete) => "DeleteFailed",
                (false, _) => "CreateFailed",
            },
            match op {
                MachineOperationType::Delete => "Delete",
                _ => "Create",
            },
            description.to_string(),
        )
        .await;
    }
    Ok(())
}

async fn write_status(
    m: &Machine,
    ctx: &Context,
    old: &MachineStatus,
    new: MachineStatus,
) -> Result<()> {
    if m.status.is_some() && old == &new {
        return Ok(());
    }
    let patch = json!({
        "apiVersion": crate::api::API_VERSION,
        "kind": "Machine",
        "status": new,
    });
    machines(ctx, m)
        .patch_status(
            &m.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    Ok(())
}

fn machines(ctx: &Context, m: &Machine) -> Api<Machine> {
    Api::namespaced(ctx.client.clone(), &m.namespace().unwrap_or_default())
}

// ---------------------------------------------------------------- cleanup

async fn cleanup(m: &Machine, ctx: &Context) -> Result<Action> {
    let name = m.name_any();
    let uid = m.uid().unwrap_or_default();
    // Entering deletion; later steps describe their progress, and a failure
    // reported by an earlier pass stays visible until a step moves on.
    if m.status.as_ref().and_then(|s| s.current_status.phase) != Some(MachinePhase::Terminating) {
        mark_terminating(m, ctx, "Deleting the machine").await?;
    }

    // Where its instance lives, as recorded at launch: neither a class edit
    // (Region, credentials) nor a class gone bad sends the termination
    // elsewhere or blocks it.
    let handle = match home(m, ctx, None).await? {
        Some((handle, _)) => Some(handle),
        // Never launched: nothing in EC2 can belong to it.
        None if never_launched(m) => None,
        // Launched by a version that kept no record and crashed before the
        // providerID: the class tells where.
        None => Some(resolve(m, ctx).await?.handle),
    };

    // 1. Cordon and drain the Node, if there is one.
    let node_name = m.labels().get(NODE_LABEL).cloned();
    if let Some(node) = node_name
        .as_deref()
        .and_then(|n| node_by_name(ctx, n))
        .filter(|n| node_belongs(n, m))
    {
        drain(m, ctx, &node).await?;
    }

    // 2. Terminate every instance of this Machine and wait for EC2 to agree.
    if let Some(handle) = &handle {
        let mut found = instances::by_machine_uid(handle, &uid).await?;
        if let Some(id) = m
            .spec
            .provider_id
            .as_deref()
            .and_then(instance_id_from_provider_id)
            && !found.iter().any(|i| i.id == id)
            && let Some(i) = instances::by_id(handle, id).await?
        {
            found.push(i);
        }
        // Nothing visible is not nothing there: EC2's reads lag its writes.
        // Gone means EC2 says `terminated`, or nothing shows up long after
        // the last launch call.
        if found.is_empty() && launch_may_be_pending(m) {
            mark_terminating(m, ctx, "Waiting for EC2 to show the instance launched last").await?;
            return Err(Error::Waiting {
                what: "waiting for a just-launched instance to become visible".into(),
                retry_after: RECHECK_SOON,
            });
        }
        let alive: Vec<String> = found
            .iter()
            .filter(|i| !i.state.is_gone())
            .map(|i| i.id.clone())
            .collect();
        if !alive.is_empty() {
            let req = handle
                .client
                .terminate_instances()
                .set_instance_ids(Some(alive.clone()));
            match handle
                .call_instances("TerminateInstances", alive.len(), req.send())
                .await
            {
                Ok(_) => {}
                Err(e) if e.class == ErrorClass::NotFound => {}
                Err(e) => return Err(e.into()),
            }
            info!(machine = %name, instances = ?alive, "terminating");
            publish(
                ctx,
                m,
                EventType::Normal,
                "Terminating",
                "Delete",
                format!("Terminating instance(s) {}", alive.join(", ")),
            )
            .await;
            mark_terminating(
                m,
                ctx,
                &format!("Waiting for EC2 to terminate {}", alive.join(", ")),
            )
            .await?;
            return Err(Error::Waiting {
                what: format!("waiting for EC2 to terminate {}", alive.join(", ")),
                retry_after: RECHECK_SOON,
            });
        }
        // `shutting-down` is not `terminated` yet: EC2 may still hold the
        // instance's volumes and addresses, and a restart of the operator
        // must still find something to wait for.
        let shutting_down: Vec<&str> = found
            .iter()
            .filter(|i| i.state == InstanceState::ShuttingDown)
            .map(|i| i.id.as_str())
            .collect();
        if !shutting_down.is_empty() {
            wait_for_shutting_down(m, ctx, &shutting_down).await?;
            return Err(Error::Waiting {
                what: format!(
                    "waiting for EC2 to finish terminating {}",
                    shutting_down.join(", ")
                ),
                retry_after: SHUTTING_DOWN_RECHECK,
            });
        }
    }

    // 3. Delete the Node object, if it is still this instance's. The cached
    // Node may be stale: the UID precondition makes sure a Node that a newer
    // instance registered under the same name in the meantime survives.
    let nodes = Api::<Node>::all(ctx.target.clone());
    if let Some(name) = node_name
        && let Some(node) = node_by_name(ctx, &name)
        && node_belongs(&node, m)
    {
        let params = kube::api::DeleteParams {
            preconditions: Some(kube::api::Preconditions {
                uid: node.uid(),
                resource_version: None,
            }),
            ..Default::default()
        };
        match nodes.delete(&name, &params).await {
            Ok(_) => {}
            Err(e) if drain::is_not_found(&e) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    publish(
        ctx,
        m,
        EventType::Normal,
        "Deleted",
        "Delete",
        "Instance terminated and node removed".into(),
    )
    .await;
    ctx.orphan_wakeup.notify_one();
    Ok(Action::await_change())
}

/// An instance of this Machine may exist that EC2 does not show yet: its
/// last launch call is less than [`launch_record::VISIBILITY_GRACE`] old and
/// was not refused since (a refusal answered after the call means nothing
/// was launched).
fn launch_may_be_pending(m: &Machine) -> bool {
    let Some(record) = LaunchRecord::from_annotations(m.annotations()) else {
        return false;
    };
    if !record.within_grace(Timestamp::now()) {
        return false;
    }
    let refused_since = m.status.as_ref().is_some_and(|s| {
        let op = &s.last_operation;
        op.type_ == Some(MachineOperationType::Create)
            && op.state == Some(MachineState::Failed)
            && matches!(
                op.error_code.as_deref(),
                Some(
                    "InvalidArgument"
                        | "ResourceExhausted"
                        | "Unauthenticated"
                        | "PermissionDenied"
                )
            )
            && op
                .last_update_time
                .as_ref()
                .is_some_and(|t| t.0 >= record.started)
    });
    !refused_since
}

/// No create was ever attempted for this Machine: no launch record, and no
/// phase beyond an invalid configuration report.
fn never_launched(m: &Machine) -> bool {
    if LaunchRecord::from_annotations(m.annotations()).is_some() {
        return false;
    }
    m.status.as_ref().is_none_or(|s| {
        s.current_status.phase.is_none()
            || (s.last_operation.type_ == Some(MachineOperationType::Create)
                && s.last_operation.error_code.as_deref() == Some("InvalidArgument"))
    })
}

async fn drain(m: &Machine, ctx: &Context, node: &Node) -> Result<()> {
    let node_name = node.name_any();
    ctx.drainer.cordon(&node_name).await?;
    let deleting_since = m
        .metadata
        .deletion_timestamp
        .as_ref()
        .map(|t| t.0)
        .unwrap_or_else(Timestamp::now);
    let elapsed =
        |t: Timestamp| Duration::try_from(Timestamp::now().duration_since(t)).unwrap_or_default();
    let drain_timeout = m
        .spec
        .configuration
        .drain_timeout
        .filter(|d| !d.is_negative())
        .map(Duration::from)
        .unwrap_or(ctx.config.drain_timeout);
    let not_ready_for = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .filter(|c| c.status != "True")
        .and_then(|c| c.last_transition_time.as_ref())
        .map(|t| elapsed(t.0));
    let force = elapsed(deleting_since) >= drain_timeout
        || not_ready_for.is_some_and(|d| d >= ctx.config.force_drain_not_ready_after);
    match ctx.drainer.drain_pass(&node_name, force).await? {
        DrainProgress::Done => Ok(()),
        DrainProgress::Waiting { remaining, blocked } => {
            let what = format!(
                "Draining node {node_name}: {remaining} pod(s) left{}{}",
                if blocked > 0 {
                    format!(", {blocked} blocked by a PodDisruptionBudget")
                } else {
                    String::new()
                },
                if force { " (forced)" } else { "" }
            );
            mark_terminating(m, ctx, &what).await?;
            Err(Error::Waiting {
                what,
                retry_after: RECHECK_SOON,
            })
        }
    }
}

/// How often a Machine whose instance is `shutting-down` looks again.
const SHUTTING_DOWN_RECHECK: Duration = Duration::from_secs(10);
/// EC2 normally finishes terminating within minutes; past this (counted
/// from the Machine's deletion) the wait is reported as a failure, and goes on.
const SHUTTING_DOWN_REPORT_AFTER: Duration = Duration::from_secs(15 * 60);

/// Describes the wait for `shutting-down` instances, as progress at first and
/// as a failure (Warning Event) once it has taken unusually long.
async fn wait_for_shutting_down(m: &Machine, ctx: &Context, ids: &[&str]) -> Result<()> {
    let waited = m
        .metadata
        .deletion_timestamp
        .as_ref()
        .and_then(|t| Duration::try_from(Timestamp::now().duration_since(t.0)).ok())
        .unwrap_or_default();
    if waited < SHUTTING_DOWN_REPORT_AFTER {
        let step = format!(
            "Waiting for EC2 to finish terminating {} (shutting-down)",
            ids.join(", ")
        );
        return mark_terminating(m, ctx, &step).await;
    }
    let description = format!(
        "Instance(s) {} still shutting-down {} minutes after the deletion; \
         waiting for EC2 to report them terminated before the finalizer is removed",
        ids.join(", "),
        SHUTTING_DOWN_REPORT_AFTER.as_secs() / 60
    );
    report_failure(
        m,
        ctx,
        MachineOperationType::Delete,
        "Internal",
        &description,
        false,
    )
    .await
}

/// Records a failed deletion step in `lastOperation` with a Warning Event
/// (e.g. TerminateInstances refused: UnauthorizedOperation, termination
/// protection; a drain the API server refused). The deletion is retried.
async fn report_delete_failure(m: &Machine, ctx: &Context, e: &Error) {
    let code = e.mcm_code();
    let description = format!("Deleting the machine failed: {e}");
    if let Err(status_err) = report_failure(
        m,
        ctx,
        MachineOperationType::Delete,
        code,
        &description,
        false,
    )
    .await
    {
        warn!(machine = %m.name_any(), error = %status_err, "could not report the deletion failure");
    }
}

/// `old` moved to `phase` now.
fn entered(old: &CurrentStatus, phase: MachinePhase, timeout_active: bool) -> CurrentStatus {
    CurrentStatus {
        phase: Some(phase),
        timeout_active,
        last_update_time: Some(Time(Timestamp::now())),
        ..old.clone()
    }
}

/// Phase Terminating with `lastOperation` describing the current step.
async fn mark_terminating(m: &Machine, ctx: &Context, step: &str) -> Result<()> {
    let old = m.status.clone().unwrap_or_default();
    if old.current_status.phase == Some(MachinePhase::Terminating)
        && old.last_operation.description == step
    {
        return Ok(());
    }
    let mut status = old.clone();
    if old.current_status.phase != Some(MachinePhase::Terminating) {
        status.current_status = entered(&old.current_status, MachinePhase::Terminating, false);
    }
    status.last_operation = LastOperation {
        description: step.to_string(),
        error_code: None,
        last_update_time: Some(Time(Timestamp::now())),
        state: Some(MachineState::Processing),
        type_: Some(MachineOperationType::Delete),
    };
    write_status(m, ctx, &old, status).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(json: serde_json::Value) -> Node {
        serde_json::from_value(json).unwrap()
    }

    fn conds() -> Vec<String> {
        crate::controller::config::DEFAULT_NODE_CONDITIONS
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    #[test]
    fn node_health_needs_ready_and_no_problem_condition() {
        assert_eq!(node_health(None, &conds()), NodeHealth::Missing);
        let ready = node(json!({"metadata": {"name": "n"}, "status": {"conditions": [
            {"type": "Ready", "status": "True"}, {"type": "DiskPressure", "status": "False"}]}}));
        assert_eq!(node_health(Some(&ready), &conds()), NodeHealth::Healthy);
        let pressure = node(json!({"metadata": {"name": "n"}, "status": {"conditions": [
            {"type": "Ready", "status": "True"}, {"type": "DiskPressure", "status": "True"}]}}));
        assert!(
            matches!(node_health(Some(&pressure), &conds()), NodeHealth::Unhealthy(r) if r.contains("DiskPressure"))
        );
        let not_ready = node(json!({"metadata": {"name": "n"}, "status": {"conditions": [
            {"type": "Ready", "status": "Unknown"}]}}));
        assert!(matches!(
            node_health(Some(&not_ready), &conds()),
            NodeHealth::Unhealthy(_)
        ));
    }

    #[test]
    fn drifted_condition_is_kept_between_passes_and_moves_only_on_change() {
        let drifted = || Some(("True", "ProviderSpecChanged", "ami changed".to_string()));
        let first = merged_conditions(&[], None, None, drifted());
        let c = first.iter().find(|c| c.type_ == CONDITION_DRIFTED).unwrap();
        assert_eq!(c.status, "True");
        // A pass that does not look at drift (a failure report) keeps it.
        let kept = merged_conditions(&first, None, Some("bad"), None);
        assert_eq!(kept.iter().find(|c| c.type_ == CONDITION_DRIFTED), Some(c));
        // Same drift again: the very same condition, timestamps included.
        let again = merged_conditions(&kept, None, None, drifted());
        assert_eq!(again.iter().find(|c| c.type_ == CONDITION_DRIFTED), Some(c));
        assert_eq!(
            again
                .iter()
                .filter(|c| c.type_ == CONDITION_DRIFTED)
                .count(),
            1
        );
    }

    #[test]
    fn a_node_whose_name_a_newer_instance_took_is_not_ours() {
        let mut m = Machine::new("m", Default::default());
        m.spec.provider_id = Some("aws:///eu-west-1/i-old".into());
        let of = |provider_id: Option<&str>| {
            node(json!({"metadata": {"name": "ip-10-0-0-4"}, "spec": {"providerID": provider_id}}))
        };
        assert!(node_belongs(&of(Some("aws:///eu-west-1a/i-old")), &m));
        assert!(!node_belongs(&of(Some("aws:///eu-west-1a/i-new")), &m));
        assert!(node_belongs(&of(None), &m), "no providerID: taken by name");
    }

    #[test]
    fn copied_node_conditions_drop_heartbeats_and_keep_config_condition_stable() {
        let n = node(json!({"metadata": {"name": "n"}, "status": {"conditions": [
            {"type": "Ready", "status": "True", "lastHeartbeatTime": "2026-01-01T00:00:00Z"}]}}));
        let first = merged_conditions(&[], Some(&n), None, None);
        assert!(first.iter().all(|c| c.last_heartbeat_time.is_none()));
        let second = merged_conditions(&first, Some(&n), None, None);
        assert_eq!(first, second, "a second pass changes nothing");
        let invalid = merged_conditions(&second, Some(&n), Some("bad"), None);
        let c = invalid
            .iter()
            .find(|c| c.type_ == CONDITION_CONFIG_VALID)
            .unwrap();
        assert_eq!(
            (c.status.as_str(), c.message.as_deref()),
            ("False", Some("bad"))
        );
    }
}
