//! A Machine's `spec.nodeTemplate` on its Node, as MCM's
//! `syncMachineNodeTemplates` keeps it: the template's labels, annotations
//! and taints are set on the Node (the template wins over a value someone
//! else set for the same key), and what the template no longer has is
//! removed — but only keys the template put there, which the Node records in
//! the annotation [`LAST_APPLIED_ANNOTATION`] (MCM's name and JSON shape, so
//! that Nodes MCM managed carry over). Keys others set are never touched.
//!
//! Taints are matched by key and effect, as in MCM. [`plan`] is pure and
//! says `None` when the Node already matches, so a Node event or a resync
//! costs no write; the patch is a JSON merge patch (labels and annotations
//! key by key), and carries the Node's `resourceVersion` when it rewrites
//! the taint list, so that a taint someone added meanwhile is never lost.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, NodeSpec, Taint};
use kube::ResourceExt;
use kube::api::{Api, ObjectMeta, Patch, PatchParams};
use serde_json::{Map, Value, json};
use tracing::{debug, info};

use crate::api::machine::Machine;
use crate::api::shared::NodeTemplateSpec;
use crate::controller::context::Context;
use crate::controller::error::{Error, Result};

/// Node annotation holding what the template last applied (MCM's
/// `machineutils.LastAppliedALTAnnotation`): a JSON `NodeTemplateSpec` with
/// `metadata.labels`, `metadata.annotations` and `spec.taints`.
pub const LAST_APPLIED_ANNOTATION: &str =
    "node.machine.sapcloud.io/last-applied-anno-labels-taints";

/// How soon to try again when the Node changed under the patch.
const CONFLICT_RETRY: Duration = Duration::from_secs(2);

/// The part of a node template that reaches the Node.
#[derive(Clone, Debug, Default, PartialEq)]
struct Applied {
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    taints: Vec<Taint>,
}

impl Applied {
    fn of(template: &NodeTemplateSpec) -> Applied {
        let mut annotations = template.metadata.annotations.clone().unwrap_or_default();
        // Our own bookkeeping is not the template's to set.
        annotations.remove(LAST_APPLIED_ANNOTATION);
        let mut taints: Vec<Taint> = Vec::new();
        for t in template.spec.taints.iter().flatten() {
            let t = Taint {
                time_added: None,
                ..t.clone()
            };
            match taints.iter_mut().find(|o| same_taint(o, &t)) {
                Some(o) => *o = t,
                None => taints.push(t),
            }
        }
        Applied {
            labels: template.metadata.labels.clone().unwrap_or_default(),
            annotations,
            taints,
        }
    }

    /// What the annotation says; absent or unreadable (hand-edited) reads
    /// as nothing applied, so nothing is removed on its account.
    fn recorded(node: &Node) -> Applied {
        node.annotations()
            .get(LAST_APPLIED_ANNOTATION)
            .and_then(|v| serde_json::from_str::<NodeTemplateSpec>(v).ok())
            .map(|t| Applied::of(&t))
            .unwrap_or_default()
    }

    fn to_annotation(&self) -> String {
        let non_empty = |m: &BTreeMap<String, String>| (!m.is_empty()).then(|| m.clone());
        let template = NodeTemplateSpec {
            metadata: ObjectMeta {
                labels: non_empty(&self.labels),
                annotations: non_empty(&self.annotations),
                ..ObjectMeta::default()
            },
            spec: NodeSpec {
                taints: (!self.taints.is_empty()).then(|| self.taints.clone()),
                ..NodeSpec::default()
            },
        };
        serde_json::to_string(&template).expect("a node template always serializes")
    }
}

/// MCM's identity of a taint: key and effect.
fn same_taint(a: &Taint, b: &Taint) -> bool {
    a.key == b.key && a.effect == b.effect
}

/// Equal for the template's purposes: `timeAdded` is the API server's.
fn same_value(a: &Taint, b: &Taint) -> bool {
    same_taint(a, b) && a.value == b.value
}

/// The merge patch that brings `node` in line with `template`, or `None`
/// when it already is. See the module docs.
pub fn plan(node: &Node, template: &NodeTemplateSpec) -> Option<Value> {
    let wanted = Applied::of(template);
    let last = Applied::recorded(node);
    let labels = map_patch(node.labels(), &wanted.labels, &last.labels);
    let mut annotations = map_patch(node.annotations(), &wanted.annotations, &last.annotations);
    let taints = taint_list(node, &wanted.taints, &last.taints);
    // The record changes with the template; when other keys are written
    // anyway, it is also brought to this operator's spelling.
    let writing = !labels.is_empty() || !annotations.is_empty() || taints.is_some();
    let recorded = node.annotations().get(LAST_APPLIED_ANNOTATION);
    let value = wanted.to_annotation();
    if (last != wanted || writing) && recorded != Some(&value) {
        annotations.insert(LAST_APPLIED_ANNOTATION.into(), Value::String(value));
    }
    node_merge_patch(node, labels, annotations, taints)
}

/// A JSON merge patch of a Node's labels and annotations (key by key,
/// `null` removes) and, when given, its whole taint list, carrying the
/// Node's `resourceVersion` then, so that a taint someone added meanwhile is
/// never lost (the API server answers 409). `None` when there is nothing to
/// write.
pub(super) fn node_merge_patch(
    node: &Node,
    labels: Map<String, Value>,
    annotations: Map<String, Value>,
    taints: Option<Vec<Taint>>,
) -> Option<Value> {
    if labels.is_empty() && annotations.is_empty() && taints.is_none() {
        return None;
    }
    let mut metadata = Map::new();
    if !labels.is_empty() {
        metadata.insert("labels".into(), Value::Object(labels));
    }
    if !annotations.is_empty() {
        metadata.insert("annotations".into(), Value::Object(annotations));
    }
    let mut patch = json!({});
    if let Some(taints) = taints {
        metadata.insert(
            "resourceVersion".into(),
            json!(node.resource_version().unwrap_or_default()),
        );
        patch["spec"] = json!({"taints": taints});
    }
    patch["metadata"] = Value::Object(metadata);
    Some(patch)
}

/// Keys to set (template values that differ) and to remove (`null`: keys
/// the template applied before and no longer has).
fn map_patch(
    current: &BTreeMap<String, String>,
    wanted: &BTreeMap<String, String>,
    last: &BTreeMap<String, String>,
) -> Map<String, Value> {
    let mut out = Map::new();
    for key in last.keys() {
        if !wanted.contains_key(key) && current.contains_key(key) {
            out.insert(key.clone(), Value::Null);
        }
    }
    for (key, value) in wanted {
        if current.get(key) != Some(value) {
            out.insert(key.clone(), Value::String(value.clone()));
        }
    }
    out
}

/// The Node's taint list with the template's applied, when that changes
/// it: taints the template dropped are removed, its taints replace those
/// with the same key and effect in place, new ones are appended. Taints of
/// others keep their place.
fn taint_list(node: &Node, wanted: &[Taint], last: &[Taint]) -> Option<Vec<Taint>> {
    let current: &[Taint] = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default();
    let dropped = |t: &Taint| {
        last.iter().any(|l| same_taint(l, t)) && !wanted.iter().any(|w| same_taint(w, t))
    };
    let mut out: Vec<Taint> = current.iter().filter(|t| !dropped(t)).cloned().collect();
    for w in wanted {
        match out.iter_mut().find(|t| same_taint(t, w)) {
            Some(t) if same_value(t, w) => {}
            Some(t) => *t = w.clone(),
            None => out.push(w.clone()),
        }
    }
    let unchanged =
        out.len() == current.len() && out.iter().zip(current).all(|(a, b)| same_value(a, b));
    (!unchanged).then_some(out)
}

/// Applies the Machine's node template to `node` in the target cluster when
/// they differ (see [`plan`]).
pub async fn sync(ctx: &Context, m: &Machine, node: &Node) -> Result<()> {
    let Some(patch) = plan(node, &m.spec.node_template) else {
        return Ok(());
    };
    let name = node.name_any();
    let nodes = Api::<Node>::all(ctx.target.clone());
    match nodes
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {
            info!(machine = %m.name_any(), node = %name, "applied the node template");
            Ok(())
        }
        // The Node changed since the cache saw it; its watch event brings
        // the machine back with the new version.
        Err(kube::Error::Api(s)) if s.code == 409 => {
            debug!(machine = %m.name_any(), node = %name, "node changed meanwhile; template applied on the next pass");
            Err(Error::Waiting {
                what: format!("Node {name} changed while its template was applied"),
                retry_after: CONFLICT_RETRY,
            })
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::fleet::in_place::apply_merge_patch;

    fn node(v: Value) -> Node {
        serde_json::from_value(v).unwrap()
    }

    fn template(v: Value) -> NodeTemplateSpec {
        serde_json::from_value(v).unwrap()
    }

    fn pool_template() -> NodeTemplateSpec {
        template(json!({
            "metadata": {
                "labels": {"worker.gardener.cloud/pool": "a", "zone": "eu-west-1a"},
                "annotations": {"team": "ops"},
            },
            "spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]},
        }))
    }

    /// `node` after a merge patch, as the API server would leave it.
    fn apply(node: &Node, patch: &Value) -> Node {
        let mut v = serde_json::to_value(node).unwrap();
        apply_merge_patch(&mut v, patch);
        serde_json::from_value(v).unwrap()
    }

    fn taints(n: &Node) -> Vec<(String, Option<String>, String)> {
        n.spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|t| (t.key, t.value, t.effect))
            .collect()
    }

    fn fresh_node() -> Node {
        node(json!({
            "metadata": {"name": "n", "resourceVersion": "7",
                         "labels": {"kubernetes.io/hostname": "n"},
                         "annotations": {"node.alpha.kubernetes.io/ttl": "0"}},
            "spec": {"taints": [{"key": "node.kubernetes.io/not-ready", "effect": "NoExecute",
                                 "timeAdded": "2026-01-01T00:00:00Z"}]},
        }))
    }

    #[test]
    fn a_fresh_node_gets_the_template_and_the_record() {
        let n = fresh_node();
        let patch = plan(&n, &pool_template()).expect("something to apply");
        assert_eq!(patch["metadata"]["resourceVersion"], "7");
        let after = apply(&n, &patch);
        assert_eq!(after.labels()["worker.gardener.cloud/pool"], "a");
        assert_eq!(
            after.labels()["kubernetes.io/hostname"],
            "n",
            "others' labels stay"
        );
        assert_eq!(after.annotations()["team"], "ops");
        assert_eq!(after.annotations()["node.alpha.kubernetes.io/ttl"], "0");
        assert_eq!(
            taints(&after),
            [
                (
                    "node.kubernetes.io/not-ready".into(),
                    None,
                    "NoExecute".into()
                ),
                ("dedicated".into(), Some("gpu".into()), "NoSchedule".into()),
            ]
        );
        let record: Value =
            serde_json::from_str(&after.annotations()[LAST_APPLIED_ANNOTATION]).unwrap();
        assert_eq!(record["metadata"]["labels"]["zone"], "eu-west-1a");
        assert_eq!(record["spec"]["taints"][0]["key"], "dedicated");
        assert_eq!(plan(&after, &pool_template()), None, "then nothing to do");
    }

    #[test]
    fn removed_keys_go_but_keys_of_others_stay() {
        let synced = apply(
            &fresh_node(),
            &plan(&fresh_node(), &pool_template()).unwrap(),
        );
        // Someone else labels and taints the Node.
        let mut theirs = synced.clone();
        theirs
            .labels_mut()
            .insert("autoscaler/owned".into(), "yes".into());
        theirs
            .spec
            .as_mut()
            .unwrap()
            .taints
            .as_mut()
            .unwrap()
            .push(Taint {
                key: "theirs".into(),
                effect: "NoSchedule".into(),
                ..Taint::default()
            });
        let smaller = template(json!({
            "metadata": {"labels": {"worker.gardener.cloud/pool": "a"}},
        }));
        let patch = plan(&theirs, &smaller).unwrap();
        assert_eq!(patch["metadata"]["labels"]["zone"], Value::Null);
        assert_eq!(patch["metadata"]["annotations"]["team"], Value::Null);
        let after = apply(&theirs, &patch);
        assert!(!after.labels().contains_key("zone"));
        assert_eq!(after.labels()["autoscaler/owned"], "yes");
        assert!(!after.annotations().contains_key("team"));
        assert_eq!(
            taints(&after),
            [
                (
                    "node.kubernetes.io/not-ready".into(),
                    None,
                    "NoExecute".into()
                ),
                ("theirs".into(), None, "NoSchedule".into()),
            ]
        );
        assert_eq!(plan(&after, &smaller), None);
    }

    #[test]
    fn a_key_the_template_never_applied_is_not_removed() {
        // The Node has `zone` from someone else; the record says the
        // template never set it.
        let mut n = fresh_node();
        n.labels_mut().insert("zone".into(), "theirs".into());
        let t = template(json!({"metadata": {"labels": {"a": "1"}}}));
        let after = apply(&n, &plan(&n, &t).unwrap());
        assert_eq!(after.labels()["zone"], "theirs");
        assert_eq!(plan(&after, &t), None);
    }

    #[test]
    fn changed_values_and_taint_values_are_updated_in_place() {
        let synced = apply(
            &fresh_node(),
            &plan(&fresh_node(), &pool_template()).unwrap(),
        );
        let edited = template(json!({
            "metadata": {
                "labels": {"worker.gardener.cloud/pool": "b", "zone": "eu-west-1a"},
                "annotations": {"team": "ops"},
            },
            "spec": {"taints": [{"key": "dedicated", "value": "cpu", "effect": "NoSchedule"}]},
        }));
        let patch = plan(&synced, &edited).unwrap();
        let labels = patch["metadata"]["labels"].as_object().unwrap();
        assert_eq!(labels.len(), 1, "only what changed: {patch}");
        let after = apply(&synced, &patch);
        assert_eq!(after.labels()["worker.gardener.cloud/pool"], "b");
        assert_eq!(
            taints(&after)[1],
            ("dedicated".into(), Some("cpu".into()), "NoSchedule".into())
        );
        assert_eq!(plan(&after, &edited), None);
    }

    #[test]
    fn an_empty_template_on_a_fresh_node_writes_nothing() {
        assert_eq!(plan(&fresh_node(), &NodeTemplateSpec::default()), None);
        // Nor does the API server's timeAdded on a template taint.
        let t = template(json!({"spec": {"taints": [
            {"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"}]}}));
        let after = apply(&fresh_node(), &plan(&fresh_node(), &t).unwrap());
        assert_eq!(taints(&after).len(), 1, "the existing taint is taken over");
        assert_eq!(plan(&after, &t), None);
    }

    #[test]
    fn labels_alone_need_no_resource_version() {
        let t = template(json!({"metadata": {"labels": {"a": "1"}}}));
        let patch = plan(&fresh_node(), &t).unwrap();
        assert!(
            patch["metadata"].get("resourceVersion").is_none(),
            "{patch}"
        );
        assert!(patch.get("spec").is_none());
    }

    #[test]
    fn reads_the_record_mcm_writes() {
        // MCM marshals the whole NodeTemplateSpec, Go zero values included.
        let mut n = fresh_node();
        n.labels_mut().insert("old".into(), "1".into());
        n.annotations_mut().insert(
            LAST_APPLIED_ANNOTATION.into(),
            r#"{"metadata":{"creationTimestamp":null,"labels":{"old":"1"}},"spec":{}}"#.into(),
        );
        let patch = plan(&n, &NodeTemplateSpec::default()).unwrap();
        assert_eq!(patch["metadata"]["labels"]["old"], Value::Null);
        let after = apply(&n, &patch);
        assert_eq!(after.annotations()[LAST_APPLIED_ANNOTATION], "{}");
        assert_eq!(plan(&after, &NodeTemplateSpec::default()), None);
    }
}
