//! From what EC2 and the target cluster show to the Machine's status: which
//! Node is the machine's, node and instance health, the phase (see
//! [`super::phase`]), conditions copied from the Node, failure reports and the
//! status write.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;

use super::apply::TagSync;
use super::phase;
use super::phase::{InstanceHealth, NodeHealth, Timeouts};
use super::preserving;
use super::{CONDITION_CONFIG_VALID, CONDITION_TAGS_APPLIED, entered};
use crate::api::machine::{Machine, MachineCondition, MachineStatus, NODE_LABEL};
use crate::api::shared::{
    CurrentStatus, LastOperation, MachineOperationType, MachinePhase, MachineState,
};
use crate::api::stamp::Stamp;
use crate::aws::instances::{InstanceInfo, InstanceState, instance_id_from_provider_id};
use crate::controller::context::Context;
use crate::controller::error::Result;
use crate::controller::events::publish;
use crate::controller::fleet::drift::CONDITION_DRIFTED;
use crate::controller::fleet::replacement;
use crate::controller::status;
use crate::intern::IStr;

/// The target-cluster Node of an instance: matched on the instance ID in its
/// providerID (the kubelet writes the zone there, we write the region) or on
/// its name, never on the whole providerID string.
pub(super) fn node_for(ctx: &Context, m: &Machine, i: &InstanceInfo) -> Option<Arc<Node>> {
    ctx.nodes.with_instance(&i.id).or_else(|| {
        // A Node without providerID (not yet set by the kubelet) is taken by
        // the machine's node label or the instance's private DNS name.
        [
            m.labels().get(NODE_LABEL).map(String::as_str),
            i.private_dns_name.as_deref(),
        ]
        .into_iter()
        .flatten()
        .filter_map(|name| node_by_name(ctx, name))
        .find(|n| node_instance(n).is_none())
    })
}

/// The instance ID in a Node's providerID, if it has one.
pub(super) fn node_instance(node: &Node) -> Option<&str> {
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
pub(super) fn node_belongs(node: &Node, m: &Machine) -> bool {
    let ours = m
        .spec
        .provider_id
        .as_deref()
        .and_then(instance_id_from_provider_id);
    node_instance(node).is_none_or(|id| Some(id) == ours)
}

pub(super) fn node_by_name(ctx: &Context, name: &str) -> Option<Arc<Node>> {
    ctx.nodes.get(name)
}

pub(super) fn node_health(node: Option<&Node>, problem_conditions: &[String]) -> NodeHealth {
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

pub(super) fn instance_health(i: Option<&InstanceInfo>) -> InstanceHealth {
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

/// Timeouts in force: the Machine's own, else the flags; no health timeout
/// with `disableHealthTimeout: true`.
pub(super) fn timeouts(m: &Machine, ctx: &Context) -> Timeouts {
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
        health: (m.spec.configuration.disable_health_timeout != Some(true)).then(|| {
            pick(
                m.spec.configuration.health_timeout.as_ref(),
                ctx.config.health_timeout,
            )
        }),
    }
}

/// Phase from instance + Node, written to the status when it changed.
/// `failed_update` (description, MCM code) is an in-place update of this
/// pass that failed: it becomes `lastOperation` unless the phase changed. A
/// failure reported by an earlier pass is replaced by the phase's
/// description once a pass gets here without one.
pub(super) async fn observe(
    m: &Machine,
    ctx: &Context,
    instance: Option<&InstanceInfo>,
    _region: &str,
    drift: Option<(&'static str, &'static str, String)>,
    tags: Option<TagSync>,
) -> Result<Action> {
    let failed_update = match &tags {
        Some(TagSync::Failed {
            description, code, ..
        }) => Some((description.clone(), *code)),
        _ => None,
    };
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
            .timestamp()
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
    let (instance_now, node_now) = (
        instance_health(instance),
        node_health(node.as_deref(), &conditions),
    );
    let preserved_before = m
        .status
        .as_ref()
        .is_some_and(|s| s.current_status.preserve_expiry_time.is_some());
    let decision = phase::recovered(
        current,
        preserved_before,
        &instance_now,
        &node_now,
        Timestamp::now(),
    )
    .unwrap_or_else(|| {
        phase::decide(
            current,
            created,
            &instance_now,
            &node_now,
            timeouts(m, ctx),
            Timestamp::now(),
        )
    });
    let (decision, failure_permit) = replacement::gate(ctx, m, decision).await;
    // In the same write as the phase: a set must never see a machine Failed
    // that is about to be preserved without its expiry.
    let preserved = preserving::tend(
        m,
        ctx,
        node.as_deref(),
        decision.phase == MachinePhase::Failed,
    )
    .await;
    let old = m.status.clone().unwrap_or_default();
    let changed_phase = current.map(|c| c.0) != Some(decision.phase);
    let mut status = old.clone();
    status.current_status = CurrentStatus {
        phase: Some(decision.phase),
        timeout_active: decision.timeout_active,
        last_update_time: decision.since.into(),
        preserve_expiry_time: preserved.expiry.into(),
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
                description: description.as_str().into(),
                error_code: Some(code.to_string()),
                last_update_time: Stamp::now(),
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
            description: decision.description.as_str().into(),
            error_code: None,
            last_update_time: decision.since.into(),
            state: Some(state),
            type_: Some(type_),
        };
    }
    let drift_message = drift
        .as_ref()
        .filter(|(status, _, _)| *status == "True")
        .map(|(_, _, message)| message.clone());
    status.conditions = merged_conditions(
        &old.conditions,
        node.as_deref(),
        None,
        drift,
        tags.as_ref().map(TagSync::condition),
    );
    status.observed_generation = m.metadata.generation;
    // The last addresses EC2 showed stay when it shows none (terminated).
    if let Some(addresses) = instance
        .map(InstanceInfo::node_addresses)
        .filter(|a| !a.is_empty())
    {
        status.addresses = addresses.into_iter().map(Into::into).collect();
    }
    write_status(m, ctx, &old, status).await?;
    if let Some(permit) = failure_permit {
        permit.marked();
    }
    let was_drifted = old
        .condition(CONDITION_DRIFTED)
        .is_some_and(|c| c.text.status == "True");
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
    let recheck = [decision.recheck_after, preserved.recheck]
        .into_iter()
        .flatten()
        .min();
    Ok(ctx.wakeups.recheck(
        m,
        recheck
            .map_or(next, |d| d.min(next))
            .max(Duration::from_secs(1)),
    ))
}

/// Node conditions copied from the Node (without heartbeat times, which would
/// rewrite the status on every kubelet heartbeat) plus our own configuration
/// condition and, when `drift` (`tags`) is given, the Drifted (TagsApplied)
/// condition, else the previous one is kept.
pub(super) fn merged_conditions(
    old: &[MachineCondition],
    node: Option<&Node>,
    config_problem: Option<&str>,
    drift: Option<(&'static str, &'static str, String)>,
    tags: Option<(&'static str, String, String)>,
) -> Vec<MachineCondition> {
    let ours = [
        CONDITION_CONFIG_VALID,
        CONDITION_DRIFTED,
        CONDITION_TAGS_APPLIED,
    ];
    let mut out: Vec<MachineCondition> = node
        .and_then(|n| n.status.as_ref())
        .and_then(|s| s.conditions.as_ref())
        .map(|cs| cs.iter().map(MachineCondition::from).collect())
        .unwrap_or_else(|| {
            old.iter()
                .filter(|c| !ours.contains(&c.text.type_.as_str()))
                .cloned()
                .collect()
        });
    for c in &mut out {
        c.last_heartbeat_time = Stamp::NONE;
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
        None => out.extend(
            old.iter()
                .find(|c| c.text.type_ == CONDITION_DRIFTED)
                .cloned(),
        ),
    }
    match tags {
        Some((status, reason, message)) => out.push(stable_condition(
            old,
            CONDITION_TAGS_APPLIED,
            status,
            &reason,
            message,
        )),
        None => out.extend(
            old.iter()
                .find(|c| c.text.type_ == CONDITION_TAGS_APPLIED)
                .cloned(),
        ),
    }
    out
}

/// A condition of ours: the previous one when nothing changed, so that the
/// status stays the same from one pass to the next.
pub(super) fn stable_condition(
    old: &[MachineCondition],
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
) -> MachineCondition {
    let previous = old.iter().find(|c| c.text.type_ == type_);
    match previous {
        Some(p)
            if p.text.status == status && p.text.message.as_deref() == Some(message.as_str()) =>
        {
            p.clone()
        }
        _ => MachineCondition::new(type_, status, reason, &message),
    }
}

/// An invalid class, Secret or request: `lastOperation` (InvalidArgument),
/// the configuration condition and a Warning Event.
pub(super) async fn report_invalid(m: &Machine, ctx: &Context, msg: &str) -> Result<()> {
    report_failure(
        m,
        ctx,
        MachineOperationType::Create,
        "InvalidArgument",
        msg,
        true,
    )
    .await
}

/// Writes a failure into `lastOperation` (and the configuration condition when
/// `invalid`), with a Warning Event when the message is new.
pub(super) async fn report_failure(
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
            description: IStr::new(description),
            error_code: Some(code.to_string()),
            last_update_time: Stamp::now(),
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
    status.conditions = merged_conditions(
        &old.conditions,
        None,
        invalid.then_some(description),
        None,
        None,
    );
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

pub(super) async fn write_status(
    m: &Machine,
    ctx: &Context,
    old: &MachineStatus,
    new: MachineStatus,
) -> Result<()> {
    status::write(ctx, m, m.status.is_some(), old, &new).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
        let first = merged_conditions(&[], None, None, drifted(), None);
        let c = first
            .iter()
            .find(|c| c.text.type_ == CONDITION_DRIFTED)
            .unwrap();
        assert_eq!(c.text.status, "True");
        // A pass that does not look at drift (a failure report) keeps it.
        let kept = merged_conditions(&first, None, Some("bad"), None, None);
        assert_eq!(
            kept.iter().find(|c| c.text.type_ == CONDITION_DRIFTED),
            Some(c)
        );
        // Same drift again: the very same condition, timestamps included.
        let again = merged_conditions(&kept, None, None, drifted(), None);
        assert_eq!(
            again.iter().find(|c| c.text.type_ == CONDITION_DRIFTED),
            Some(c)
        );
        assert_eq!(
            again
                .iter()
                .filter(|c| c.text.type_ == CONDITION_DRIFTED)
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
        let first = merged_conditions(&[], Some(&n), None, None, None);
        assert!(first.iter().all(|c| c.last_heartbeat_time.is_none()));
        let second = merged_conditions(&first, Some(&n), None, None, None);
        assert_eq!(first, second, "a second pass changes nothing");
        let invalid = merged_conditions(&second, Some(&n), Some("bad"), None, None);
        let c = invalid
            .iter()
            .find(|c| c.text.type_ == CONDITION_CONFIG_VALID)
            .unwrap();
        assert_eq!(
            (c.text.status.as_str(), c.text.message.as_deref()),
            ("False", Some("bad"))
        );
    }

    #[test]
    fn a_refused_tag_update_is_a_false_condition_until_the_tags_apply() {
        let refused = TagSync::Failed {
            call: "CreateTags",
            description: "Updating the tags of instance i-1 failed: denied".into(),
            code: "PermissionDenied",
        };
        let failed = merged_conditions(&[], None, None, None, Some(refused.condition()));
        let c = failed
            .iter()
            .find(|c| c.text.type_ == CONDITION_TAGS_APPLIED)
            .unwrap();
        assert_eq!(
            (c.text.status.as_str(), c.text.reason.as_deref()),
            ("False", Some("CreateTagsFailed"))
        );
        // A pass that does not touch tags (a failure report) keeps it.
        let kept = merged_conditions(&failed, None, Some("bad"), None, None);
        assert_eq!(
            kept.iter().find(|c| c.text.type_ == CONDITION_TAGS_APPLIED),
            Some(c)
        );
        let applied =
            merged_conditions(&kept, None, None, None, Some(TagSync::Applied.condition()));
        let c = applied
            .iter()
            .find(|c| c.text.type_ == CONDITION_TAGS_APPLIED)
            .unwrap();
        assert_eq!(
            (c.text.status.as_str(), c.text.reason.as_deref()),
            ("True", Some("Applied"))
        );
    }
}
