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
//! of its launch), [`preservation`] (which machines are preserved, pure).

mod apply;
mod cleanup;
mod create;
pub mod drain;
pub mod drain_clock;
pub mod launch_batch;
pub mod launch_record;
mod observe;
pub mod phase;
pub mod preservation;
mod preserving;
pub mod released;

use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event, finalizer};
use serde_json::json;
use tracing::warn;

use super::context::Context;
use super::error::{Error, Result};
use crate::api::machine::Machine;
use crate::api::machine_class::MachineClass;
use crate::api::shared::{CurrentStatus, MachineOperationType, MachinePhase};
use crate::api::stamp::Stamp;
use crate::aws::clients::Ec2Handle;
use crate::aws::credentials::user_data;
use crate::aws::errors::ErrorClass;
use crate::controller::cached_machine::CachedMachine;
use crate::controller::fleet::drift::{self, EffectiveSpec, LoadedClass};

use self::apply::apply;
use self::cleanup::{cleanup, report_delete_failure};
use self::observe::report_failure;

/// Finalizer on Machines (and on classes in use), as MCM names it.
pub const FINALIZER: &str = "machine.sapcloud.io/machine-controller-manager";
/// MCM's annotation with a JSON placement for the instance.
pub const PLACEMENT_ANNOTATION: &str = "machine.sapcloud.io/awsPlacement";
/// Condition type we add to `status.conditions` for configuration problems.
pub const CONDITION_CONFIG_VALID: &str = "MachineConfigurationValid";
/// Condition type we add to `status.conditions`: whether the class's tags
/// are on the instance (False, with the refused call as reason, while
/// CreateTags/DeleteTags fail; the machine goes on regardless).
pub const CONDITION_TAGS_APPLIED: &str = "TagsApplied";

const RECHECK_SOON: Duration = Duration::from_secs(5);

/// Entry point of the controller: everything happens behind the finalizer.
/// The cached Machine becomes the API type here, for this reconcile only.
pub async fn reconcile(machine: Arc<CachedMachine>, ctx: Arc<Context>) -> Result<Action> {
    let machine = Arc::new(machine.to_machine());
    let ns = machine
        .namespace()
        .ok_or_else(|| Error::Invalid("Machine has no namespace".into()))?;
    let api = Api::<Machine>::namespaced(ctx.client.clone(), &ns);
    let key = machine.uid().unwrap_or_default();
    let deleting = machine.metadata.deletion_timestamp.is_some();
    if deleting && ctx.released.contains(&key) {
        // A stale copy: its finalizer went, its deletion event is on its way.
        return Ok(Action::await_change());
    }
    ctx.caches_synced().await?;
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
        if deleting {
            // Cleanup finished and the finalizer is gone (or was not ours).
            ctx.released.remember(&key);
        }
    }
    result
}

/// Requeue policy after an error: waits are plain requeues, EC2 errors follow
/// their class, everything else backs off per object.
pub fn error_policy(machine: Arc<CachedMachine>, error: &Error, ctx: Arc<Context>) -> Action {
    if let Error::Waiting { retry_after, .. } = error.inner() {
        return ctx.wakeups.recheck(&*machine, *retry_after);
    }
    let key = machine.uid().unwrap_or_default();
    warn!(machine = %machine.name_any(), error = %error, category = error.category(), "reconcile failed");
    if let Error::Ec2(e) = error.inner()
        && e.class == ErrorClass::ResourceExhausted
    {
        return ctx.wakeups.recheck(&*machine, e.retry_after());
    }
    match error.ec2_class() {
        Some(ErrorClass::InvalidInput) | Some(ErrorClass::Unauthorized) => ctx.wakeups.recheck(
            &*machine,
            Duration::from_secs(600).max(ctx.next_backoff(&key)),
        ),
        _ if matches!(error.inner(), Error::Invalid(_)) => {
            ctx.wakeups.recheck(&*machine, Duration::from_secs(600))
        }
        _ => ctx.wakeups.recheck(&*machine, ctx.next_backoff(&key)),
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
        drift::load_class(&ctx.reads, &ns, &m.spec.class.name).await?;
    let source = ctx
        .config
        .credentials
        .credentials_for(&secret_data, &drift::secret_refs(&class))
        .map_err(|refused| Error::Invalid(refused.to_string()))?;
    let handle = ctx.ec2.get(&source, &class.provider_spec.region).await;
    let effective = EffectiveSpec::of(
        &class.provider_spec,
        user_data(&secret_data).as_deref(),
        &drift::secret_refs(&class),
    );
    Ok(Resolved {
        class,
        secret_data,
        handle,
        effective,
    })
}

// ---------------------------------------------------------------- apply

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

/// `20m`, `1h30m`: a timeout as users write it.
fn humantime_minutes(d: Duration) -> String {
    let minutes = d.as_secs() / 60;
    match (minutes / 60, minutes % 60) {
        (0, m) => format!("{m}m"),
        (h, 0) => format!("{h}h"),
        (h, m) => format!("{h}h{m}m"),
    }
}

/// Sets one annotation on the Machine (merge patch).
async fn annotate(m: &Machine, ctx: &Context, key: &str, value: &str) -> Result<()> {
    merge_patch(m, ctx, &json!({"metadata": {"annotations": {key: value}}})).await
}

/// A JSON merge patch of the Machine (metadata and spec; never status).
async fn merge_patch(m: &Machine, ctx: &Context, patch: &serde_json::Value) -> Result<()> {
    machines(ctx, m)
        .patch(&m.name_any(), &PatchParams::default(), &Patch::Merge(patch))
        .await?;
    Ok(())
}

fn machines(ctx: &Context, m: &Machine) -> Api<Machine> {
    Api::namespaced(ctx.client.clone(), &m.namespace().unwrap_or_default())
}

// ---------------------------------------------------------------- cleanup

/// `old` moved to `phase` now.
fn entered(old: &CurrentStatus, phase: MachinePhase, timeout_active: bool) -> CurrentStatus {
    CurrentStatus {
        phase: Some(phase),
        timeout_active,
        last_update_time: Stamp::now(),
        ..old.clone()
    }
}
