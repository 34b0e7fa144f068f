//! One pass of preservation for a live Machine: the plan of
//! [`super::preservation`] applied to its Node (see
//! [`crate::controller::node::preserve`]) and to its annotations, and the
//! `preserveExpiryTime` the status write of this pass carries.
//!
//! Order matters when preservation stops: the Node's marks and the
//! annotation go first, the expiry is cleared last, so that a failure in
//! between is retried by the next pass (which still sees the expiry) and a
//! MachineSet never deletes a Failed machine whose marks are still being
//! undone.

use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::events::EventType;
use serde_json::{Map, Value, json};
use tracing::warn;

use super::merge_patch;
use super::preservation::{
    self, AnnotationChange, INVALID_REPORTED_ANNOTATION, PRESERVE_ANNOTATION, Plan, Source, Wish,
};
use crate::api::machine::Machine;
use crate::controller::context::Context;
use crate::controller::events::publish;
use crate::controller::node::preserve::{self, DRAIN_RECHECK};

/// How soon to try again when a mark could not be written.
const RETRY: Duration = Duration::from_secs(5);

/// What the status write of this pass needs from preservation.
pub(super) struct Outcome {
    /// `preserveExpiryTime` to write.
    pub expiry: Option<Timestamp>,
    /// Look again no later than this (expiry, drain progress, a retry).
    pub recheck: Option<Duration>,
}

/// Applies preservation for `m`, whose phase after this pass is Failed when
/// `failed`, with its Node `node` (if it has one).
pub(super) async fn tend(m: &Machine, ctx: &Context, node: Option<&Node>, failed: bool) -> Outcome {
    let now = Timestamp::now();
    let old_expiry = m
        .status
        .as_ref()
        .and_then(|s| s.current_status.preserve_expiry_time.timestamp());
    let wish = preservation::wish(node.map(|n| n.annotations()), m.annotations());
    let timeout = preservation::timeout(
        m.spec.configuration.machine_preserve_timeout.as_ref(),
        ctx.config.preserve_timeout,
    );
    let plan = preservation::plan(&wish, failed, old_expiry, timeout, now);
    let removing = matches!(
        plan,
        Plan::Released {
            annotation: AnnotationChange::Remove { .. },
            ..
        }
    );
    let drop_node_annotation = removing && matches!(wish, Wish::Value(_, Source::Node));

    let mut marked = true;
    let mut draining = false;
    if let Some(node) = node {
        match preserve::sync(ctx, m, node, &plan, drop_node_annotation).await {
            Ok(d) => draining = d,
            Err(e) => {
                warn!(machine = %m.name_any(), error = %e, "could not update the preservation marks of the node");
                marked = false;
            }
        }
    }

    let mut annotations = Map::new();
    if let Plan::Released {
        annotation: AnnotationChange::Remove { machine_false },
        ..
    } = plan
    {
        let current = m.annotations().get(PRESERVE_ANNOTATION).map(String::as_str);
        if machine_false && current != Some("false") {
            annotations.insert(PRESERVE_ANNOTATION.into(), json!("false"));
        } else if !machine_false && current.is_some() {
            annotations.insert(PRESERVE_ANNOTATION.into(), Value::Null);
        }
    }
    let reported = m.annotations().get(INVALID_REPORTED_ANNOTATION);
    let invalid = match &wish {
        Wish::Invalid(value, source) if reported != Some(value) => {
            annotations.insert(INVALID_REPORTED_ANNOTATION.into(), json!(value));
            Some((value.clone(), *source))
        }
        Wish::Invalid(..) => None,
        _ => {
            if reported.is_some() {
                annotations.insert(INVALID_REPORTED_ANNOTATION.into(), Value::Null);
            }
            None
        }
    };
    if !annotations.is_empty() {
        let patch = json!({"metadata": {"annotations": annotations}});
        if let Err(e) = merge_patch(m, ctx, &patch).await {
            warn!(machine = %m.name_any(), error = %e, "could not update the preserve annotations");
            marked = false;
        }
    }
    if let Some((value, source)) = invalid {
        let on = match source {
            Source::Node => format!("Node {}", node.map(|n| n.name_any()).unwrap_or_default()),
            Source::Machine => "the Machine".to_string(),
        };
        publish(
            ctx,
            m,
            EventType::Warning,
            "InvalidPreserveValue",
            "Preserve",
            format!(
                "Ignoring {PRESERVE_ANNOTATION}={value:?} on {on}: the value must be now, when-failed or false"
            ),
        )
        .await;
    }

    let expiry = match plan {
        Plan::Preserved { until, .. } => Some(until),
        // Cleared last: only once everything we added is gone.
        Plan::Released { .. } if !marked => old_expiry,
        Plan::Released { .. } => None,
    };
    match (old_expiry, expiry) {
        (None, Some(until)) => {
            publish(
                ctx,
                m,
                EventType::Normal,
                "Preserved",
                "Preserve",
                format!(
                    "Machine is preserved until {until} ({PRESERVE_ANNOTATION}: {})",
                    wish.value().map(|v| v.as_str()).unwrap_or("?")
                ),
            )
            .await;
        }
        (Some(_), None) => {
            publish(
                ctx,
                m,
                EventType::Normal,
                "PreservationStopped",
                "Preserve",
                "Machine is no longer preserved".to_string(),
            )
            .await;
        }
        _ => {}
    }
    let recheck = [
        preservation::recheck(&plan, now),
        draining.then_some(DRAIN_RECHECK),
        (!marked).then_some(RETRY),
    ]
    .into_iter()
    .flatten()
    .min();
    Outcome { expiry, recheck }
}
