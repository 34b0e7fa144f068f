//! Tearing a Machine down behind its finalizer: mark it Terminating, drain
//! its Node, terminate every instance that is the machine's, wait until EC2
//! shows them gone, delete the Node, report what blocks.

use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use tracing::{info, warn};

use super::apply::home;
use super::drain;
use super::drain::DrainProgress;
use super::drain_clock::{DrainClock, DrainTimes, may_leave_lingering};
use super::launch_record::LaunchRecord;
use super::observe::{node_belongs, node_by_name, report_failure, write_status};
use super::{RECHECK_SOON, entered, humantime_minutes, resolve};
use crate::api::machine::{Machine, NODE_LABEL};
use crate::api::shared::{LastOperation, MachineOperationType, MachinePhase, MachineState};
use crate::api::stamp::Stamp;
use crate::aws::batch::launch::launch_tag;
use crate::aws::clients::Ec2Handle;
use crate::aws::instances::{self, InstanceInfo, InstanceState, instance_id_from_provider_id};
use crate::controller::context::Context;
use crate::controller::error::{Error, Result};
use crate::controller::events::publish;
use crate::controller::node::bootstrap_token;
use crate::intern::IStr;

pub(super) async fn cleanup(m: &Machine, ctx: &Context) -> Result<Action> {
    let name = m.name_any();
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

    // Every instance of this Machine, as the shared view shows it.
    let mut found = Vec::new();
    if let Some(handle) = &handle {
        found = instances_of(m, ctx, handle).await?;
    }
    // Once every instance is on its way out (or its termination handed
    // in), draining is moot.
    let termination_started = !found.is_empty()
        && handle.as_ref().is_some_and(|h| {
            found
                .iter()
                .all(|i| i.state.is_gone() || ctx.terminations.handed_in(&h.key, &i.id))
        });

    // 1. Cordon and drain the Node, if there is one, and let its volumes
    // detach.
    let node_name = m.labels().get(NODE_LABEL).cloned();
    if !termination_started
        && let Some(node) = node_name
            .as_deref()
            .and_then(|n| node_by_name(ctx, n))
            .filter(|n| node_belongs(n, m))
    {
        drain(m, ctx, &node).await?;
        wait_for_detach(m, ctx, &node.name_any()).await?;
    }

    // 2. Terminate every instance of this Machine and wait for EC2 to agree.
    if let Some(handle) = &handle {
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
        // Handed to the batched termination (one call per credentials +
        // Region for every machine deleted at the same time, however many
        // reconciles run at once); a later pass learns what EC2 said.
        let report = ctx.terminations.request(handle, &ctx.instances, &found);
        if !report.accepted.is_empty() {
            info!(machine = %name, instances = ?report.accepted, "terminating");
            publish(
                ctx,
                m,
                EventType::Normal,
                "Terminating",
                "Delete",
                format!("Terminating instance(s) {}", report.accepted.join(", ")),
            )
            .await;
        }
        if let Some(e) = report.refused {
            return Err(e.into());
        }
        let under_way = report.in_progress();
        if !under_way.is_empty() {
            let ids = under_way.join(", ");
            mark_terminating(m, ctx, &format!("Waiting for EC2 to terminate {ids}")).await?;
            return Err(Error::Waiting {
                what: format!("waiting for EC2 to terminate {ids}"),
                retry_after: if report.pending.is_empty() {
                    RECHECK_SOON
                } else {
                    TERMINATION_RECHECK
                },
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

    // 3. The bootstrap token, unless it went when the Node joined. Without
    // the right to read Secrets there, and none recorded, there is nothing
    // to leave behind but a token that expires with the creation timeout.
    let recorded =
        LaunchRecord::from_annotations(m.annotations()).and_then(|r| r.bootstrap_token_id);
    match bootstrap_token::delete(ctx, m, recorded.as_deref()).await {
        Ok(()) => {}
        Err(Error::Kube(kube::Error::Api(s))) if s.code == 403 && recorded.is_none() => {
            warn!(machine = %name, reason = %s.message, "cannot look for a bootstrap token to delete");
        }
        Err(e) => return Err(e),
    }

    // 4. Delete the Node object, if it is still this instance's. The cached
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

/// Every instance of this Machine: those with its UID tag or in its slot of
/// a batched launch, and the one its providerID names, from the shared view
/// (one DescribeInstances per sync period for all deletions, not one per
/// machine and pass). When the view shows none although a launch was
/// recorded, EC2 is asked directly: a stale view must never leak one.
async fn instances_of(m: &Machine, ctx: &Context, handle: &Ec2Handle) -> Result<Vec<InstanceInfo>> {
    let uid = m.uid().unwrap_or_default();
    let ns = m.namespace().unwrap_or_default();
    let slot = ctx
        .launches
        .record_of(m)
        .and_then(|r| r.batch)
        .map(|s| (launch_tag(&ns, &s.token), s.index));
    let ours = |i: &InstanceInfo| {
        i.machine_uid() == Some(uid.as_str())
            || slot
                .as_ref()
                .is_some_and(|(tag, index)| i.is_launch_slot(tag, *index))
    };
    let max_age = ctx.config.instance_sync_period;
    let mut found = ctx.instances.find(handle, max_age, ours).await?;
    if found.is_empty() && !never_launched(m) {
        found = instances::by_machine_uid(handle, &uid).await?;
        if let Some((tag, _)) = &slot {
            found.extend(
                instances::by_launch(handle, tag)
                    .await?
                    .into_iter()
                    .filter(|i| ours(i)),
            );
        }
    }
    if let Some(id) = m
        .spec
        .provider_id
        .as_deref()
        .and_then(instance_id_from_provider_id)
        && !found.iter().any(|i| i.id == id)
        && let Some(i) = ctx.instances.get(handle, id, max_age).await?
    {
        found.push(i);
    }
    Ok(found)
}

/// An instance of this Machine may exist that EC2 does not show yet: its
/// last launch call is less than [`launch_record::VISIBILITY_GRACE`] old and
/// was not refused since (a refusal answered after the call means nothing
/// was launched).
pub(super) fn launch_may_be_pending(m: &Machine) -> bool {
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
                .timestamp()
                .is_some_and(|t| t >= record.started)
    });
    !refused_since
}

/// No create was ever attempted for this Machine: no launch record, and no
/// phase beyond an invalid configuration report.
pub(super) fn never_launched(m: &Machine) -> bool {
    if LaunchRecord::from_annotations(m.annotations()).is_some() {
        return false;
    }
    m.status.as_ref().is_none_or(|s| {
        s.current_status.phase.is_none()
            || (s.last_operation.type_ == Some(MachineOperationType::Create)
                && s.last_operation.error_code.as_deref() == Some("InvalidArgument"))
    })
}

/// How long a drain whose every remaining pod was refused eviction (by a
/// PodDisruptionBudget) waits before asking again — unless the drain is
/// forced sooner. Evictions are API writes: a blocked drain costs two a
/// minute, not one per wake-up (MCM retries every 20 s).
pub(super) const DRAIN_BLOCKED_RECHECK: Duration = Duration::from_secs(30);

pub(super) async fn drain(m: &Machine, ctx: &Context, node: &Node) -> Result<()> {
    let node_name = node.name_any();
    let uid = m.uid().unwrap_or_default();
    // The cached Node says whether it is cordoned already: no PATCH per pass.
    if node.spec.as_ref().and_then(|s| s.unschedulable) != Some(true) {
        ctx.drainer.cordon(&node_name).await?;
    }
    let elapsed =
        |t: Timestamp| Duration::try_from(Timestamp::now().duration_since(t)).unwrap_or_default();
    let times = DrainTimes {
        deleting_for: m
            .metadata
            .deletion_timestamp
            .as_ref()
            .map(|t| elapsed(t.0))
            .unwrap_or_default(),
        drain_timeout: m
            .spec
            .configuration
            .drain_timeout
            .filter(|d| !d.is_negative())
            .map(Duration::from)
            .unwrap_or(ctx.config.drain_timeout),
        max_evict_retries: m.spec.configuration.max_evict_retries,
        not_ready_for: node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .filter(|c| c.status != "True")
            .and_then(|c| c.last_transition_time.as_ref())
            .map(|t| elapsed(t.0)),
        force_not_ready_after: ctx.config.force_drain_not_ready_after,
    };
    let clock = times.clock();
    let force = matches!(clock, DrainClock::Forced { .. });
    if let DrainClock::Evicting { until_forced } = clock
        && let Some(wait) = ctx.drain_paused(&uid)
    {
        return Err(Error::Waiting {
            what: format!("drain of node {node_name} blocked, asking again later"),
            retry_after: wait.min(until_forced),
        });
    }
    match ctx.drainer.drain_pass(&node_name, force).await? {
        DrainProgress::Done => Ok(()),
        DrainProgress::Waiting {
            remaining,
            blocked,
            longest_grace,
        } => {
            let retry_after = match clock {
                DrainClock::Evicting { until_forced } if blocked == remaining => {
                    ctx.pause_drain(&uid, DRAIN_BLOCKED_RECHECK);
                    DRAIN_BLOCKED_RECHECK.min(until_forced)
                }
                DrainClock::Forced { since } if may_leave_lingering(since, longest_grace) => {
                    // Deleted, given their grace period and more: the
                    // instance goes now, whatever keeps them.
                    let note = format!(
                        "Drain of node {node_name} forced {} s ago: {remaining} pod(s) still \
                         terminating past their grace period; terminating the instance anyway",
                        since.as_secs()
                    );
                    if m.status
                        .as_ref()
                        .map(|s| s.last_operation.description.as_str())
                        != Some(note.as_str())
                    {
                        warn!(machine = %m.name_any(), node = %node_name, remaining, "moving on with lingering pods");
                        publish(
                            ctx,
                            m,
                            EventType::Warning,
                            "DrainIncomplete",
                            "Delete",
                            note.clone(),
                        )
                        .await;
                    }
                    mark_terminating(m, ctx, &note).await?;
                    return Ok(());
                }
                _ => RECHECK_SOON,
            };
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
            Err(Error::Waiting { what, retry_after })
        }
    }
}

/// Waits, at most `--machine-pv-detach-timeout` (counted from the first
/// pass that saw them, as recorded in `lastOperation`), for the Node's
/// VolumeAttachments to go before the instance is terminated.
pub(super) async fn wait_for_detach(m: &Machine, ctx: &Context, node: &str) -> Result<()> {
    let attachments = ctx.drainer.volume_attachments(node).await?;
    if attachments.is_empty() {
        return Ok(());
    }
    let step = format!("Waiting for the volumes attached to node {node} to detach");
    let op = m.status.as_ref().map(|s| &s.last_operation);
    let waited = op
        .filter(|op| op.description == step)
        .and_then(|op| op.last_update_time.timestamp())
        .map(|t| Duration::try_from(Timestamp::now().duration_since(t)).unwrap_or_default())
        .unwrap_or_default();
    if waited >= ctx.config.pv_detach_timeout {
        let note = format!(
            "{} VolumeAttachment(s) of node {node} still there after {} s ({}); terminating the instance anyway",
            attachments.len(),
            waited.as_secs(),
            attachments.join(", ")
        );
        warn!(machine = %m.name_any(), %node, "volumes not detached in time");
        publish(
            ctx,
            m,
            EventType::Warning,
            "VolumesNotDetached",
            "Delete",
            note,
        )
        .await;
        return Ok(());
    }
    mark_terminating(m, ctx, &step).await?;
    Err(Error::Waiting {
        what: step,
        retry_after: RECHECK_SOON,
    })
}

/// How soon a Machine whose termination is pending in the batch looks
/// again (such a pass makes no API call while nothing changed).
const TERMINATION_RECHECK: Duration = Duration::from_secs(2);

/// How often a Machine whose instance is `shutting-down` looks again.
pub(super) const SHUTTING_DOWN_RECHECK: Duration = Duration::from_secs(10);

/// Describes the wait for `shutting-down` instances, as progress at first and
/// as a failure (Warning Event) once it has taken unusually long: EC2
/// normally finishes terminating within minutes; past
/// `--machine-termination-report-after` (counted from the Machine's
/// deletion) the wait is reported, and goes on.
pub(super) async fn wait_for_shutting_down(m: &Machine, ctx: &Context, ids: &[&str]) -> Result<()> {
    let waited = m
        .metadata
        .deletion_timestamp
        .as_ref()
        .and_then(|t| Duration::try_from(Timestamp::now().duration_since(t.0)).ok())
        .unwrap_or_default();
    let report_after = ctx.config.termination_report_after;
    if waited < report_after {
        let step = format!(
            "Waiting for EC2 to finish terminating {} (shutting-down)",
            ids.join(", ")
        );
        return mark_terminating(m, ctx, &step).await;
    }
    let description = format!(
        "Instance(s) {} still shutting-down {} after the deletion; \
         waiting for EC2 to report them terminated before the finalizer is removed",
        ids.join(", "),
        if report_after.as_secs().is_multiple_of(60) {
            humantime_minutes(report_after)
        } else {
            format!("{}s", report_after.as_secs())
        }
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
pub(super) async fn report_delete_failure(m: &Machine, ctx: &Context, e: &Error) {
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

/// Phase Terminating with `lastOperation` describing the current step.
pub(super) async fn mark_terminating(m: &Machine, ctx: &Context, step: &str) -> Result<()> {
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
        description: IStr::new(step),
        error_code: None,
        last_update_time: Stamp::now(),
        state: Some(MachineState::Processing),
        type_: Some(MachineOperationType::Delete),
    };
    write_status(m, ctx, &old, status).await
}
