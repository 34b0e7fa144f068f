//! The parts of a machine template that change in place, as in MCM: the
//! `nodeTemplate` and the machine configuration (`drainTimeout`,
//! `healthTimeout`, `creationTimeout`, `maxEvictRetries`, ...). MCM leaves
//! them out when it compares a deployment's template with its sets'
//! (`EqualIgnoreHash`): editing them rolls nothing. Instead the deployment
//! copies them into its new MachineSet, and a set copies them into its
//! machines; the node template then reaches the Nodes (see
//! `controller::node::template`).
//!
//! Pure: [`without`] for template comparison, [`patch`] for the merge patch
//! that brings a spec's in-place fields to another's.

use serde_json::{Map, Value};

use crate::api::machine::MachineSpec;
use crate::api::shared::MachineTemplateSpec;

/// `template` with its in-place fields cleared, for comparing templates.
pub fn without(template: &MachineTemplateSpec) -> MachineTemplateSpec {
    let mut t = template.clone();
    t.spec.node_template = Default::default();
    t.spec.configuration = Default::default();
    t
}

/// The in-place fields of a spec as they appear on the wire (the machine
/// configuration sits inline in the spec).
fn fields(spec: &MachineSpec) -> Value {
    let only = MachineSpec {
        node_template: spec.node_template.clone(),
        configuration: spec.configuration.clone(),
        ..MachineSpec::default()
    };
    serde_json::to_value(only).unwrap_or_default()
}

/// The JSON merge patch of a spec (`{"nodeTemplate": ..., "drainTimeout":
/// ...}`, to nest under the object's spec path) that gives `current` the
/// in-place fields of `wanted`; `None` when they are equal.
pub fn patch(current: &MachineSpec, wanted: &MachineSpec) -> Option<Value> {
    if current.node_template == wanted.node_template
        && current.configuration == wanted.configuration
    {
        return None;
    }
    merge_diff(&fields(current), &fields(wanted))
}

/// The RFC 7386 merge patch from `from` to `to` (objects key by key,
/// `null` for removed keys, anything else replaced whole).
fn merge_diff(from: &Value, to: &Value) -> Option<Value> {
    match (from, to) {
        (Value::Object(a), Value::Object(b)) => {
            let mut out = Map::new();
            for key in a.keys().filter(|k| !b.contains_key(*k)) {
                out.insert(key.clone(), Value::Null);
            }
            for (key, value) in b {
                let diff = match a.get(key) {
                    Some(old) => merge_diff(old, value),
                    None => Some(value.clone()),
                };
                if let Some(diff) = diff {
                    out.insert(key.clone(), diff);
                }
            }
            (!out.is_empty()).then_some(Value::Object(out))
        }
        (a, b) if a == b => None,
        (_, b) => Some(b.clone()),
    }
}

/// `into` after the merge patch `patch`, as the API server applies it (for
/// tests of code that makes merge patches).
#[cfg(test)]
pub(crate) fn apply_merge_patch(into: &mut Value, patch: &Value) {
    match (into, patch) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                if v.is_null() {
                    a.remove(k);
                } else {
                    apply_merge_patch(a.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (slot, v) => *slot = v.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: Value) -> MachineSpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn node_template_and_configuration_are_patched_to_match() {
        let current = spec(json!({
            "class": {"kind": "MachineClass", "name": "c"},
            "nodeTemplate": {"metadata": {"labels": {"a": "1", "b": "2"}}},
            "drainTimeout": "2h",
            "maxEvictRetries": 3,
        }));
        let wanted = spec(json!({
            "class": {"kind": "MachineClass", "name": "other"},
            "nodeTemplate": {"metadata": {"labels": {"a": "1", "c": "3"}},
                             "spec": {"taints": [{"key": "k", "effect": "NoSchedule"}]}},
            "drainTimeout": "30m",
        }));
        let p = patch(&current, &wanted).unwrap();
        assert_eq!(
            p["nodeTemplate"]["metadata"]["labels"],
            json!({"b": null, "c": "3"})
        );
        assert_eq!(p["maxEvictRetries"], Value::Null);
        assert!(p.get("class").is_none(), "only in-place fields: {p}");
        let mut after = serde_json::to_value(&current).unwrap();
        apply_merge_patch(&mut after, &p);
        let after: MachineSpec = serde_json::from_value(after).unwrap();
        assert_eq!(after.node_template, wanted.node_template);
        assert_eq!(after.configuration, wanted.configuration);
        assert_eq!(after.class, current.class);
        assert_eq!(patch(&after, &wanted), None);
    }

    #[test]
    fn equal_durations_in_other_spellings_need_no_patch() {
        let a = spec(json!({"drainTimeout": "2h"}));
        let b = spec(json!({"drainTimeout": "7200s"}));
        assert_eq!(patch(&a, &b), None);
    }

    #[test]
    fn templates_compare_without_in_place_fields() {
        let mut t = MachineTemplateSpec::default();
        t.spec.class.name = "c".into();
        let mut edited = t.clone();
        edited.spec.node_template.metadata.labels = Some([("a".into(), "1".into())].into());
        edited.spec.configuration.max_evict_retries = Some(3);
        assert_eq!(without(&t), without(&edited));
        edited.spec.class.name = "d".into();
        assert_ne!(without(&t), without(&edited));
    }
}
