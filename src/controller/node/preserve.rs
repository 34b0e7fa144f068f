//! What a preserved machine's Node carries (see
//! [`crate::controller::machine::preservation`] for when a machine is
//! preserved):
//!
//! - the autoscaler's [`SCALE_DOWN_DISABLED_ANNOTATION`], with the same
//!   "set by us" marker the rollout protection uses
//!   ([`autoscaler::scale_down_mark`]), so that only what we added is ever
//!   removed;
//! - while the machine is Failed, the taint [`PRESERVED_TAINT`]
//!   (`NoSchedule`), and a drain (DaemonSet and mirror pods stay, as in every
//!   drain);
//! - the Node condition [`PRESERVED_CONDITION`] (True while preserved, False
//!   once preservation stopped).
//!
//! [`node_patch`] and [`condition_patch`] are pure and say `None` when the
//! Node is already as wanted, so a pass over a preserved machine costs no
//! write.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, NodeCondition, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Map, Value, json};
use tracing::info;

use crate::api::machine::Machine;
use crate::controller::context::Context;
use crate::controller::error::{Error, Result};
use crate::controller::fleet::autoscaler::{
    self, NodeMark, SCALE_DOWN_DISABLED_ANNOTATION, SCALE_DOWN_DISABLED_BY_US,
};
use crate::controller::machine::drain::{DrainProgress, is_not_found};
use crate::controller::machine::preservation::{PRESERVE_ANNOTATION, Plan};
use crate::controller::node::template::node_merge_patch;

/// Taint on the Node of a preserved Failed machine (MCM's key).
pub const PRESERVED_TAINT: &str = "node.machine.sapcloud.io/preserved";
/// Node condition type saying whether the machine is preserved.
pub const PRESERVED_CONDITION: &str = "Preserved";

/// How soon to look again while a preserved Node's pods are leaving.
pub const DRAIN_RECHECK: Duration = Duration::from_secs(20);

fn taints(node: &Node) -> &[Taint] {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default()
}

/// The Node's `Preserved` condition, if any.
pub fn condition(node: &Node) -> Option<&NodeCondition> {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == PRESERVED_CONDITION))
}

/// The merge patch of the Node's metadata and taints that `plan` asks for:
/// scale-down protection while preserved (removed only when preservation
/// just stopped, `was_preserved`, and only ours), the taint while preserved
/// and Failed, and, with `drop_annotation`, the Node's preserve annotation
/// removed (preservation expired). `None` when nothing changes.
pub fn node_patch(node: &Node, plan: &Plan, drop_annotation: bool) -> Option<Value> {
    let (protect, tainted) = match plan {
        Plan::Preserved { failed, .. } => (Some(true), *failed),
        Plan::Released { was_preserved, .. } => (was_preserved.then_some(false), false),
    };
    let mut annotations = Map::new();
    if let Some(protect) = protect {
        match autoscaler::scale_down_mark(node.annotations(), protect) {
            Some(NodeMark::Add) => {
                annotations.insert(SCALE_DOWN_DISABLED_ANNOTATION.into(), json!("true"));
                annotations.insert(SCALE_DOWN_DISABLED_BY_US.into(), json!("true"));
            }
            Some(NodeMark::Remove) => {
                annotations.insert(SCALE_DOWN_DISABLED_ANNOTATION.into(), Value::Null);
                annotations.insert(SCALE_DOWN_DISABLED_BY_US.into(), Value::Null);
            }
            None => {}
        }
    }
    if drop_annotation && node.annotations().contains_key(PRESERVE_ANNOTATION) {
        annotations.insert(PRESERVE_ANNOTATION.into(), Value::Null);
    }
    let current = taints(node);
    let has_taint = current.iter().any(|t| t.key == PRESERVED_TAINT);
    let new_taints: Option<Vec<Taint>> = match (tainted, has_taint) {
        (true, false) => {
            let mut out = current.to_vec();
            out.push(Taint {
                key: PRESERVED_TAINT.into(),
                effect: "NoSchedule".into(),
                value: None,
                time_added: None,
            });
            Some(out)
        }
        (false, true) => Some(
            current
                .iter()
                .filter(|t| t.key != PRESERVED_TAINT)
                .cloned()
                .collect(),
        ),
        _ => None,
    };
    node_merge_patch(node, Map::new(), annotations, new_taints)
}

/// The strategic merge patch of the Node's status that sets the
/// `Preserved` condition as `plan` says: True while preserved (its message
/// naming the expiry), False once stopped; `None` when it already is, or
/// when the Node never had one and the machine is not preserved.
pub fn condition_patch(node: &Node, plan: &Plan, now: Timestamp) -> Option<Value> {
    let current = condition(node);
    let (status, reason, message) = match plan {
        Plan::Preserved { until, .. } => (
            "True",
            "Preserved",
            format!("The machine is preserved until {until}"),
        ),
        Plan::Released { .. } => {
            current?;
            (
                "False",
                "PreservationStopped",
                "The machine is no longer preserved".to_string(),
            )
        }
    };
    if current.is_some_and(|c| c.status == status && c.message.as_deref() == Some(&message)) {
        return None;
    }
    let transition = match current {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => Some(Time(now)),
    };
    let condition = NodeCondition {
        type_: PRESERVED_CONDITION.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_transition_time: transition,
        last_heartbeat_time: None,
    };
    Some(json!({"status": {"conditions": [condition]}}))
}

/// Brings the Node of `m` in line with `plan` (see the module docs), and
/// drains it while the machine is preserved and Failed. Returns whether pods
/// are still leaving.
pub async fn sync(
    ctx: &Context,
    m: &Machine,
    node: &Node,
    plan: &Plan,
    drop_annotation: bool,
) -> Result<bool> {
    let name = node.name_any();
    let nodes = Api::<Node>::all(ctx.target.clone());
    if let Some(patch) = node_patch(node, plan, drop_annotation) {
        match nodes
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                info!(machine = %m.name_any(), node = %name, preserved = plan.expiry().is_some(), "updated the preservation marks of the node")
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                return Err(Error::Waiting {
                    what: format!("Node {name} changed while its preservation marks were set"),
                    retry_after: Duration::from_secs(2),
                });
            }
            Err(e) if is_not_found(&e) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(patch) = condition_patch(node, plan, Timestamp::now()) {
        match nodes
            .patch_status(&name, &PatchParams::default(), &Patch::Strategic(patch))
            .await
        {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
    }
    if let Plan::Preserved { failed: true, .. } = plan {
        return match ctx.drainer.drain_pass(&name, false).await {
            Ok(DrainProgress::Done) => Ok(false),
            Ok(DrainProgress::Waiting { .. }) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(e.into()),
        };
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::fleet::in_place::apply_merge_patch;
    use crate::controller::machine::preservation::AnnotationChange;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).unwrap()
    }

    fn node(v: Value) -> Node {
        serde_json::from_value(v).unwrap()
    }

    fn after(node: &Node, patch: &Value) -> Node {
        let mut v = serde_json::to_value(node).unwrap();
        apply_merge_patch(&mut v, patch);
        serde_json::from_value(v).unwrap()
    }

    const FAILED: Plan = Plan::Preserved {
        until: Timestamp::UNIX_EPOCH,
        failed: true,
    };
    const STOPPED: Plan = Plan::Released {
        was_preserved: true,
        annotation: AnnotationChange::Keep,
    };

    #[test]
    fn a_preserved_failed_node_is_protected_and_tainted_once() {
        let n = node(json!({"metadata": {"name": "n", "resourceVersion": "7"},
            "spec": {"taints": [{"key": "other", "effect": "NoExecute"}]}}));
        let patch = node_patch(&n, &FAILED, false).unwrap();
        assert_eq!(patch["metadata"]["resourceVersion"], "7");
        let marked = after(&n, &patch);
        assert_eq!(marked.annotations()[SCALE_DOWN_DISABLED_ANNOTATION], "true");
        assert_eq!(marked.annotations()[SCALE_DOWN_DISABLED_BY_US], "true");
        let keys: Vec<&str> = taints(&marked).iter().map(|t| t.key.as_str()).collect();
        assert_eq!(keys, ["other", PRESERVED_TAINT]);
        assert_eq!(node_patch(&marked, &FAILED, false), None, "nothing more");

        // Released: only our marks go; the other taint stays.
        let released = after(&marked, &node_patch(&marked, &STOPPED, false).unwrap());
        assert!(
            released.annotations().is_empty(),
            "{:?}",
            released.annotations()
        );
        let keys: Vec<&str> = taints(&released).iter().map(|t| t.key.as_str()).collect();
        assert_eq!(keys, ["other"]);
        assert_eq!(node_patch(&released, &STOPPED, false), None);
    }

    #[test]
    fn a_running_preserved_node_is_protected_not_tainted() {
        let n = node(json!({"metadata": {"name": "n"}}));
        let running = Plan::Preserved {
            until: at(0),
            failed: false,
        };
        let marked = after(&n, &node_patch(&n, &running, false).unwrap());
        assert!(taints(&marked).is_empty());
        assert_eq!(marked.annotations()[SCALE_DOWN_DISABLED_ANNOTATION], "true");
    }

    #[test]
    fn protection_someone_else_set_is_never_removed() {
        let theirs = node(json!({"metadata": {"name": "n", "annotations": {
            SCALE_DOWN_DISABLED_ANNOTATION: "true"}}}));
        assert_eq!(node_patch(&theirs, &STOPPED, false), None);
        // Not preserved before: nothing is touched even if our marker is
        // there (a rollout's protection).
        let rollout = node(json!({"metadata": {"name": "n", "annotations": {
            SCALE_DOWN_DISABLED_ANNOTATION: "true", SCALE_DOWN_DISABLED_BY_US: "true"}}}));
        let never = Plan::Released {
            was_preserved: false,
            annotation: AnnotationChange::Keep,
        };
        assert_eq!(node_patch(&rollout, &never, false), None);
    }

    #[test]
    fn an_expired_node_annotation_is_removed() {
        let n =
            node(json!({"metadata": {"name": "n", "annotations": {PRESERVE_ANNOTATION: "now"}}}));
        let never = Plan::Released {
            was_preserved: false,
            annotation: AnnotationChange::Keep,
        };
        let gone = after(&n, &node_patch(&n, &never, true).unwrap());
        assert!(!gone.annotations().contains_key(PRESERVE_ANNOTATION));
    }

    #[test]
    fn the_condition_is_written_on_change_only() {
        let n = node(json!({"metadata": {"name": "n"}}));
        assert_eq!(
            condition_patch(&n, &STOPPED, at(0)),
            None,
            "never preserved"
        );
        let preserved = Plan::Preserved {
            until: at(100),
            failed: true,
        };
        let patch = condition_patch(&n, &preserved, at(0)).unwrap();
        let c: NodeCondition =
            serde_json::from_value(patch["status"]["conditions"][0].clone()).unwrap();
        assert_eq!((c.type_.as_str(), c.status.as_str()), ("Preserved", "True"));
        let with = node(json!({"metadata": {"name": "n"}, "status": {"conditions": [c]}}));
        assert_eq!(condition_patch(&with, &preserved, at(5)), None);
        let stopped = condition_patch(&with, &STOPPED, at(9)).unwrap();
        assert_eq!(stopped["status"]["conditions"][0]["status"], "False");
    }
}
