//! Launching a Machine's instance exactly once: the launch record written
//! before RunInstances, the call itself, post-launch settings, the creation
//! timeout and the launch-failure report.

use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use tracing::info;

use super::apply::ensure_identity;
use super::launch_batch;
use super::launch_record;
use super::launch_record::{LaunchRecord, StaleToken};
use super::observe::{report_failure, report_invalid, timeouts, write_status};
use super::{PLACEMENT_ANNOTATION, RECHECK_SOON, Resolved, annotate, entered, humantime_minutes};
use crate::api::machine::Machine;
use crate::api::machine_class::MachineClass;
use crate::api::shared::{LastOperation, MachineOperationType, MachinePhase, MachineState};
use crate::api::stamp::Stamp;
use aws_sdk_ec2::operation::run_instances::builders::RunInstancesFluentBuilder;

use crate::aws::clients::Ec2Handle;
use crate::aws::credentials::user_data;
use crate::aws::errors::{Ec2Error, ErrorClass};
use crate::aws::instances::InstanceInfo;
use crate::aws::launch::{
    LaunchContext, PostLaunchAction, build_run_instances, post_launch_actions,
};
use crate::aws::user_data::needs_bootstrap_token;
use crate::controller::context::Context;
use crate::controller::error::{Error, Result};
use crate::controller::events::publish;
use crate::controller::fleet::drift::{self};
use crate::controller::node::bootstrap_token::{self, MachineToken};

/// Whether the Machine's launch (its record, else its creation) is recent
/// enough that its instance may still be invisible to EC2's reads.
pub(super) fn launch_within_grace(m: &Machine) -> bool {
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
pub(super) async fn creation_timed_out(m: &Machine, ctx: &Context) -> Result<Option<Action>> {
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
        description: description.as_str().into(),
        error_code: old.last_operation.error_code.clone(),
        last_update_time: Stamp::now(),
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

/// The drift annotations the Machine has, or, where missing, those of the
/// class as it is now.
pub(super) fn launch_record(m: &Machine, r: &Resolved) -> BTreeMap<String, String> {
    let mut record = r.effective.annotations(&r.class.provider_spec.tags);
    for (key, value) in record.iter_mut() {
        if let Some(existing) = m.annotations().get(key) {
            value.clone_from(existing);
        }
    }
    record
}

pub(super) async fn create(m: &Machine, ctx: &Context, r: &Resolved) -> Result<Action> {
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
    let bootstrap = match user_data.as_deref().filter(|d| needs_bootstrap_token(d)) {
        Some(_) => Some(bootstrap_token(m, ctx).await?),
        None => None,
    };
    let placement = m
        .spec
        .node_template
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(PLACEMENT_ANNOTATION))
        .or_else(|| m.annotations().get(PLACEMENT_ANNOTATION))
        .map(String::as_str);
    let launch = LaunchContext {
        machine_name: &name,
        bootstrap_token: None,
        machine_namespace: &ns,
        machine_uid: &uid,
        client_token: &uid,
        spec,
        user_data: user_data.as_deref(),
        root_device_name: root.as_deref(),
        placement_annotation: placement,
    };
    if launch_batch::applies(m, ctx, user_data.as_deref()) {
        let request = request_for(m, ctx, r, &launch).await?;
        return launch_batch::create(m, ctx, r, request, user_data.as_deref()).await;
    }
    let Some(record) = record_launch(m, ctx, r, bootstrap.as_ref()).await? else {
        return Ok(ctx.wakeups.recheck(m, RECHECK_SOON));
    };
    if let Some(wait) = record.wait_before_call(Timestamp::now()) {
        return Ok(ctx.wakeups.recheck(m, wait.min(RECHECK_SOON * 6)));
    }
    let token = record.client_token(&uid);
    let launch = LaunchContext {
        bootstrap_token: bootstrap.as_ref().map(|t| &t.token),
        client_token: &token,
        ..launch
    };
    let request = request_for(m, ctx, r, &launch).await?;
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
                return Ok(ctx.wakeups.recheck(m, RECHECK_SOON));
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
    announce_launch(ctx, m, &instance, spec).await;

    // Settings EC2 only takes after launch (MCM's InitializeMachine) follow
    // on the next passes, from what EC2 reports (`ensure_post_launch`).
    Ok(ctx.wakeups.recheck(m, RECHECK_SOON))
}

/// The RunInstances request of `launch`; a request that cannot be built
/// is an invalid configuration, reported on the Machine.
async fn request_for(
    m: &Machine,
    ctx: &Context,
    r: &Resolved,
    launch: &LaunchContext<'_>,
) -> Result<RunInstancesFluentBuilder> {
    match build_run_instances(r.handle.client.run_instances(), launch) {
        Ok(req) => Ok(req),
        Err(e) => {
            let msg = e.to_string();
            report_invalid(m, ctx, &msg).await?;
            Err(Error::Invalid(msg))
        }
    }
}

/// The Normal Event of a launch.
pub(super) async fn announce_launch(
    ctx: &Context,
    m: &Machine,
    instance: &InstanceInfo,
    spec: &crate::api::provider_spec::AWSProviderSpec,
) {
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
}

/// The machine's bootstrap token for its user data (see
/// [`bootstrap_token`](crate::controller::node::bootstrap_token)): the one
/// its launch record names when that Secret is still there. A failure is
/// reported in the status, as a launch failure would be.
async fn bootstrap_token(m: &Machine, ctx: &Context) -> Result<MachineToken> {
    let recorded =
        LaunchRecord::from_annotations(m.annotations()).and_then(|r| r.bootstrap_token_id);
    let creation_timeout = timeouts(m, ctx).creation;
    match bootstrap_token::ensure(ctx, m, recorded.as_deref(), creation_timeout).await {
        Ok(token) => Ok(token),
        Err(e) if e.is_waiting() => Err(e),
        Err(e) => {
            let description = format!(
                "Creating the bootstrap token in the target cluster's {} failed: {e}",
                bootstrap_token::NAMESPACE
            );
            report_failure(
                m,
                ctx,
                MachineOperationType::Create,
                "Internal",
                &description,
                false,
            )
            .await?;
            Err(e)
        }
    }
}

/// The launch record for the call about to be made, written to the Machine
/// *before* the call (see [`launch_record`]): the same token as the last
/// call when the class still launches in the same Region with the same
/// Secrets and the user data carries the same bootstrap token, a new
/// attempt otherwise. `None`: an attempt elsewhere may still have an
/// invisible instance; wait.
pub(super) async fn record_launch(
    m: &Machine,
    ctx: &Context,
    r: &Resolved,
    token: Option<&MachineToken>,
) -> Result<Option<LaunchRecord>> {
    let now = Timestamp::now();
    let region = r.class.provider_spec.region.clone();
    let secrets = drift::secret_refs(&r.class);
    // The newer of the annotation and what this process wrote last: a pass
    // right after a write may read a Machine the cache has not updated yet,
    // and must not call again under a token it just gave up.
    let mut record = match ctx.launches.record_of(m) {
        Some(rec) if rec.region == region && rec.secrets == secrets => {
            if rec.wait_before_call(now).is_some() {
                return Ok(Some(rec));
            }
            // The last call carried a token that is gone: its user data
            // cannot be sent again under its ClientToken.
            let carried = rec.bootstrap_token_id.as_deref();
            let token_changed = token.is_some_and(|t| {
                carried.is_some() && (t.created || carried != Some(t.id.as_str()))
            });
            if token_changed {
                rec.after_new_user_data(now)
            } else {
                LaunchRecord {
                    started: now,
                    ..rec
                }
            }
        }
        Some(rec) if rec.within_grace(now) => return Ok(None),
        Some(rec) => LaunchRecord {
            region,
            secrets,
            ..rec.next_attempt(now)
        },
        None => LaunchRecord::first(region, secrets, now),
    };
    record.bootstrap_token_id = token.map(|t| t.id.clone());
    write_launch_record(m, ctx, &record).await?;
    Ok(Some(record))
}

pub(super) async fn write_launch_record(
    m: &Machine,
    ctx: &Context,
    record: &LaunchRecord,
) -> Result<()> {
    annotate(
        m,
        ctx,
        launch_record::LAUNCH_ANNOTATION,
        &record.to_annotation(),
    )
    .await?;
    ctx.launches.remember(&m.uid().unwrap_or_default(), record);
    Ok(())
}

/// Applies what EC2 only accepts after launch (source/destination check,
/// IPv6 prefixes) until EC2 shows it, from the shared instance view: no call
/// when it already holds. The view is updated with what was applied, so a
/// pass before the next refresh does not assign prefixes twice.
pub(super) async fn ensure_post_launch(
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
pub(super) fn class_version(class: &MachineClass) -> String {
    class.metadata.generation.unwrap_or_default().to_string()
}

/// Applies what EC2 only accepts after launch (source/destination check,
/// IPv6 prefixes), comparing the spec with the launched instance so that a
/// repeat does nothing twice.
pub(super) async fn initialize(
    handle: &Ec2Handle,
    id: &str,
    actions: &[PostLaunchAction],
) -> Result<()> {
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
pub(super) async fn launch_failed(m: &Machine, ctx: &Context, r: &Resolved, e: Ec2Error) -> Error {
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
