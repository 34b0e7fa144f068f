//! Drift: does a machine's instance still match its MachineClass?
//!
//! The *effective provider spec* of a class is everything that needs a new
//! instance when it changes: every `providerSpec` field except `tags`, plus
//! the `userData` of the class's Secrets, plus which Secrets hold the
//! credentials (`secretRef`, `credentialsSecretRef`: their namespaces and
//! names, never their contents). The credentials say which account an
//! instance lives in, as `region` says which Region: pointing a class at
//! another Secret rolls its machines, and the old instances are looked up
//! and terminated with the Secrets recorded at their launch. Editing a
//! Secret in place is a key rotation, not a move: it rolls nothing. Its hash is recorded on each Machine
//! when its instance is launched (annotation [`SPEC_HASH_ANNOTATION`], with a
//! digest per field in [`SPEC_FIELDS_ANNOTATION`] so that the `Drifted`
//! condition can say *what* changed). A MachineDeployment folds the hash into
//! the identity of its MachineSets, so a class edit produces a new MachineSet
//! and the normal rolling update replaces the machines.
//!
//! Tags do not need a new instance: the machine reconciler applies them in
//! place (CreateTags/DeleteTags), remembering which keys came from the class
//! in [`CLASS_TAG_KEYS_ANNOTATION`] so that it only ever removes its own.
//!
//! Machines that existed before this bookkeeping (or whose launch record was
//! lost) take the class as it is now as their baseline: upgrading the operator
//! never rolls a fleet.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Secret, SecretReference};
use kube::ResourceExt;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::api::machine_class::MachineClass;
use crate::api::provider_spec::AWSProviderSpec;
use crate::api::validation::{validate_provider_spec, validate_secret_data};
use crate::aws::credentials::{merge_secret_data, user_data};
use crate::aws::instance_tags::InstanceTags;
use crate::aws::tags;
use crate::controller::error::{Error, Result};
use crate::controller::reads::Reads;

/// Annotation on a Machine: hash of the effective provider spec its instance
/// was launched from. On a MachineSet of a MachineDeployment: the class
/// version the set was created for.
pub const SPEC_HASH_ANNOTATION: &str = "machine.sapcloud.io/provider-spec-hash";
/// Annotation on a Machine: `field=digest` pairs of the effective provider
/// spec at launch, so that drift can be explained field by field.
pub const SPEC_FIELDS_ANNOTATION: &str = "machine.sapcloud.io/provider-spec-fields";
/// Annotation on a Machine: the class tag keys last applied to its instance
/// (comma-separated; EC2 tag keys cannot contain commas).
pub const CLASS_TAG_KEYS_ANNOTATION: &str = "machine.sapcloud.io/class-tag-keys";
/// Annotation (value `"true"`) on a MachineSet that no MachineDeployment owns,
/// or on one of its Machines: drifted machines are replaced one at a time, a
/// new machine Running before the drifted one is deleted. Without it, such
/// machines are only reported drifted. Machines of a MachineDeployment are
/// always replaced, by its rolling update.
pub const REPLACE_ON_DRIFT_ANNOTATION: &str = "machine.sapcloud.io/replace-on-drift";
/// Condition type in a Machine's `status.conditions`.
pub const CONDITION_DRIFTED: &str = "Drifted";

/// Name of the pseudo-field for the Secret's user data.
const USER_DATA_FIELD: &str = "userData";
/// Name of the pseudo-field for the Secrets the credentials come from.
/// Launches recorded before it existed lack it; their hash is compared
/// without it ([`EffectiveSpec::legacy_hash`]), so an upgrade rolls nothing.
const CREDENTIALS_FIELD: &str = "credentials";
/// `providerSpec` fields that never need a new instance.
const IN_PLACE_FIELDS: &[&str] = &["tags", "apiVersion"];

/// The effective provider spec of a class, as a hash and per-field digests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EffectiveSpec {
    /// 16 hex digits; changes whenever a field that needs a new instance does.
    pub hash: String,
    /// Top-level `providerSpec` field (or `userData`, `credentials`) →
    /// 8-hex-digit digest.
    pub fields: BTreeMap<String, String>,
    /// The hash without the `credentials` field, as recorded before it
    /// was part of the spec.
    pub legacy_hash: String,
}

fn hex_digest(bytes: &[u8], len: usize) -> String {
    let digest = Sha256::digest(bytes);
    digest
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        .chars()
        .take(len)
        .collect()
}

impl EffectiveSpec {
    /// The effective spec of `spec` with the Secrets' `user_data`, the
    /// credentials coming from the Secrets `secrets` (as [`secret_refs`]
    /// names them).
    pub fn of(spec: &AWSProviderSpec, user_data: Option<&[u8]>, secrets: &[String]) -> Self {
        let mut fields = BTreeMap::new();
        // serde_json's maps are ordered by key, so this rendering is canonical.
        if let Ok(Value::Object(map)) = serde_json::to_value(spec) {
            for (key, value) in map {
                if IN_PLACE_FIELDS.contains(&key.as_str()) {
                    continue;
                }
                let rendered = value.to_string();
                fields.insert(key, hex_digest(rendered.as_bytes(), 8));
            }
        }
        if let Some(data) = user_data {
            fields.insert(USER_DATA_FIELD.to_string(), hex_digest(data, 8));
        }
        let legacy_hash = hex_digest(render_fields(&fields).as_bytes(), 16);
        fields.insert(
            CREDENTIALS_FIELD.to_string(),
            hex_digest(secrets.join(",").as_bytes(), 8),
        );
        let hash = hex_digest(render_fields(&fields).as_bytes(), 16);
        Self {
            hash,
            fields,
            legacy_hash,
        }
    }

    /// The effective spec of a loaded class.
    pub fn of_class(class: &LoadedClass) -> Self {
        Self::of(
            &class.class.provider_spec,
            user_data(&class.secret_data).as_deref(),
            &secret_refs(&class.class),
        )
    }

    /// The value of [`SPEC_FIELDS_ANNOTATION`].
    pub fn fields_annotation(&self) -> String {
        render_fields(&self.fields)
    }

    /// The annotations a Machine launched from this spec carries.
    pub fn annotations(&self, class_tags: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        BTreeMap::from([
            (SPEC_HASH_ANNOTATION.to_string(), self.hash.clone()),
            (SPEC_FIELDS_ANNOTATION.to_string(), self.fields_annotation()),
            (
                CLASS_TAG_KEYS_ANNOTATION.to_string(),
                class_tag_keys(class_tags).join(","),
            ),
        ])
    }
}

fn render_fields(fields: &BTreeMap<String, String>) -> String {
    fields
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn parse_fields(annotation: &str) -> BTreeMap<String, String> {
    annotation
        .split(',')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Whether a machine's instance matches the class as it is now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Drift {
    UpToDate,
    /// The class changed; `changed` names the fields (`providerSpec.ami`,
    /// `userData (secret)`), empty when the launch record has no field digests.
    Drifted {
        changed: Vec<String>,
    },
}

/// Compares what a machine was launched from (its annotations) with `current`.
pub fn assess(
    recorded_hash: &str,
    recorded_fields: Option<&str>,
    current: &EffectiveSpec,
) -> Drift {
    if recorded_hash == current.hash {
        return Drift::UpToDate;
    }
    let recorded = recorded_fields.map(parse_fields);
    // Recorded before the credentials were part of the spec.
    let legacy = recorded
        .as_ref()
        .is_none_or(|r| !r.contains_key(CREDENTIALS_FIELD));
    if legacy && recorded_hash == current.legacy_hash {
        return Drift::UpToDate;
    }
    let changed = match recorded {
        None => Vec::new(),
        Some(recorded) => {
            let keys: BTreeSet<&String> = recorded.keys().chain(current.fields.keys()).collect();
            keys.into_iter()
                .filter(|k| !(legacy && *k == CREDENTIALS_FIELD))
                .filter(|k| recorded.get(*k) != current.fields.get(*k))
                .map(|k| match k.as_str() {
                    USER_DATA_FIELD => "userData (secret)".to_string(),
                    CREDENTIALS_FIELD => "secretRef/credentialsSecretRef (credentials)".to_string(),
                    _ => format!("providerSpec.{k}"),
                })
                .collect()
        }
    };
    Drift::Drifted { changed }
}

/// Who replaces a drifted machine, for the condition message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replacer {
    /// A MachineSet of a MachineDeployment: its rolling update.
    Deployment,
    /// A MachineSet that replaces drifted machines (replace-on-drift).
    SetOnDrift,
    /// A MachineSet without replace-on-drift.
    Set,
    /// Nobody: a standalone Machine.
    Nobody,
}

/// `(status, reason, message)` of the `Drifted` condition.
pub fn condition(
    drift: &Drift,
    class: &str,
    replacer: Replacer,
) -> (&'static str, &'static str, String) {
    match drift {
        Drift::UpToDate => (
            "False",
            "UpToDate",
            format!("The instance matches MachineClass {class}"),
        ),
        Drift::Drifted { changed } => {
            let what = if changed.is_empty() {
                String::new()
            } else {
                format!(" ({})", changed.join(", "))
            };
            let next = match replacer {
                Replacer::Deployment => {
                    "the MachineDeployment replaces this machine within its maxSurge/maxUnavailable"
                }
                Replacer::SetOnDrift => {
                    "its MachineSet replaces it (replace-on-drift), a new machine first"
                }
                Replacer::Set => {
                    "it is not replaced automatically: annotate the Machine or its MachineSet with machine.sapcloud.io/replace-on-drift=true, or delete the Machine"
                }
                Replacer::Nobody => {
                    "a standalone Machine is never replaced automatically: delete and re-create it to get an instance of the new spec"
                }
            };
            (
                "True",
                "ProviderSpecChanged",
                format!(
                    "MachineClass {class} changed in a way that needs a new instance{what}; {next}"
                ),
            )
        }
    }
}

/// The class tag keys the operator manages: the class's keys except the
/// operator's own (which launch always sets itself).
pub fn class_tag_keys(class_tags: &BTreeMap<String, String>) -> Vec<String> {
    class_tags
        .keys()
        .filter(|k| !is_reserved_tag(k))
        .cloned()
        .collect()
}

fn is_reserved_tag(key: &str) -> bool {
    [
        tags::NAME_TAG,
        tags::MACHINE_UID_TAG,
        tags::MACHINE_NAME_TAG,
    ]
    .contains(&key)
}

/// What to change on an instance so its tags follow the class.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TagPlan {
    /// Tags to create or overwrite.
    pub set: BTreeMap<String, String>,
    /// Tag keys to remove: class keys applied before and gone from the class.
    pub remove: Vec<String>,
}

impl TagPlan {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }
}

/// Plans the in-place tag update of an instance. `applied` is the value of
/// [`CLASS_TAG_KEYS_ANNOTATION`] (the keys applied before); tags the class
/// never set (added by people or other tools) are never removed.
pub fn tag_plan(
    instance_tags: &InstanceTags,
    class_tags: &BTreeMap<String, String>,
    applied: Option<&str>,
) -> TagPlan {
    let set = class_tags
        .iter()
        .filter(|(k, v)| !is_reserved_tag(k) && instance_tags.get(k) != Some(v.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let remove = applied
        .unwrap_or_default()
        .split(',')
        .filter(|k| !k.is_empty() && !is_reserved_tag(k))
        .filter(|k| !class_tags.contains_key(*k) && instance_tags.contains_key(k))
        .map(str::to_string)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    TagPlan { set, remove }
}

// ---------------------------------------------------------------- loading

/// A MachineClass with the merged data of its Secrets.
pub struct LoadedClass {
    pub class: MachineClass,
    pub secret_data: BTreeMap<String, ByteString>,
}

/// Reads class `name` in `ns` and its Secrets and validates them. A missing
/// or invalid class or Secret is [`Error::Invalid`] with a message for users.
pub async fn load_class(reads: &Reads, ns: &str, name: &str) -> Result<LoadedClass> {
    let class = reads.class(ns, name).await?.ok_or_else(|| {
        Error::Invalid(format!(
            "MachineClass {ns}/{name} (spec.class.name) not found"
        ))
    })?;
    if !class.is_aws() {
        return Err(Error::Invalid(format!(
            "MachineClass {name} has provider {:?}; this operator serves AWS",
            class.provider.as_deref().unwrap_or_default()
        )));
    }
    let secret_ref = get_secret(reads, ns, class.secret_ref.as_ref(), "secretRef").await?;
    let creds_ref = get_secret(
        reads,
        ns,
        class.credentials_secret_ref.as_ref(),
        "credentialsSecretRef",
    )
    .await?;
    let secret_data = merge_secret_data(secret_ref.as_ref(), creds_ref.as_ref());

    let mut findings: Vec<String> = validate_provider_spec(&class.provider_spec)
        .iter()
        .map(ToString::to_string)
        .collect();
    findings.extend(
        validate_secret_data(&secret_data)
            .iter()
            .map(ToString::to_string),
    );
    if !findings.is_empty() {
        return Err(Error::Invalid(format!(
            "MachineClass {} is invalid: {}",
            class.name_any(),
            findings.join("; ")
        )));
    }
    Ok(LoadedClass { class, secret_data })
}

/// The Secrets (`namespace`, `name`) a class references, in merge order
/// (`secretRef`, then `credentialsSecretRef`; the latter wins); a reference
/// without a namespace means the class's own.
pub fn secret_ref_pairs(class: &MachineClass) -> Vec<(String, String)> {
    let ns = class.namespace().unwrap_or_default();
    [
        class.secret_ref.as_ref(),
        class.credentials_secret_ref.as_ref(),
    ]
    .into_iter()
    .flatten()
    .filter_map(|r| {
        let name = r.name.clone().filter(|n| !n.is_empty())?;
        let secret_ns = r
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| ns.clone());
        Some((secret_ns, name))
    })
    .collect()
}

/// [`secret_ref_pairs`] as `namespace/name` (how a launch record keeps them).
pub fn secret_refs(class: &MachineClass) -> Vec<String> {
    secret_ref_pairs(class)
        .into_iter()
        .map(|(ns, name)| format!("{ns}/{name}"))
        .collect()
}

/// The merged data of Secrets named as [`secret_refs`] names them (later
/// ones win). A missing Secret is [`Error::Invalid`] naming it.
pub async fn load_secret_data(
    reads: &Reads,
    refs: &[String],
) -> Result<BTreeMap<String, ByteString>> {
    let mut merged = BTreeMap::new();
    for r in refs {
        let (ns, name) = r.split_once('/').unwrap_or(("", r));
        let secret = reads
            .secret(ns, name)
            .await?
            .ok_or_else(|| Error::Invalid(format!("Secret {r} (recorded at launch) not found")))?;
        merged.extend(merge_secret_data(Some(&secret), None));
    }
    Ok(merged)
}

async fn get_secret(
    reads: &Reads,
    default_ns: &str,
    reference: Option<&SecretReference>,
    field: &str,
) -> Result<Option<Secret>> {
    let Some(r) = reference else { return Ok(None) };
    let name = r.name.as_deref().unwrap_or_default();
    let ns = r
        .namespace
        .as_deref()
        .filter(|s| !s.is_empty())
        .unwrap_or(default_ns);
    reads
        .secret(ns, name)
        .await?
        .map(Some)
        .ok_or_else(|| Error::Invalid(format!("Secret {ns}/{name} ({field}) not found")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> AWSProviderSpec {
        serde_json::from_value(serde_json::json!({
            "ami": "ami-1", "machineType": "m5.large", "region": "eu-west-1",
            "iam": {"name": "p"},
            "networkInterfaces": [{"subnetID": "subnet-1", "securityGroupIDs": ["sg-1"]}],
            "tags": {"kubernetes.io/cluster/c": "1", "kubernetes.io/role/node": "1", "team": "a"},
        }))
        .unwrap()
    }

    #[test]
    fn hash_is_stable_and_ignores_tags() {
        let a = EffectiveSpec::of(&spec(), Some(b"#cloud-config"), &refs());
        assert_eq!(
            a,
            EffectiveSpec::of(&spec(), Some(b"#cloud-config"), &refs())
        );
        assert_eq!(a.hash.len(), 16);
        let mut tagged = spec();
        tagged.tags.insert("team".into(), "b".into());
        tagged.tags.insert("cost-center".into(), "42".into());
        assert_eq!(
            EffectiveSpec::of(&tagged, Some(b"#cloud-config"), &refs()),
            a
        );
    }

    #[test]
    fn instance_fields_and_user_data_change_the_hash_and_are_named() {
        let before = EffectiveSpec::of(&spec(), Some(b"v1"), &refs());
        let mut edited = spec();
        edited.machine_type = "m6i.large".into();
        let after = EffectiveSpec::of(&edited, Some(b"v2"), &refs());
        assert_ne!(before.hash, after.hash);
        let drift = assess(&before.hash, Some(&before.fields_annotation()), &after);
        assert_eq!(
            drift,
            Drift::Drifted {
                changed: vec![
                    "providerSpec.machineType".to_string(),
                    "userData (secret)".to_string()
                ]
            }
        );
        assert_eq!(
            assess(&after.hash, Some("garbage"), &after),
            Drift::UpToDate
        );
        // No field record: drifted, without details.
        assert_eq!(
            assess(&before.hash, None, &after),
            Drift::Drifted { changed: vec![] }
        );
    }

    fn refs() -> Vec<String> {
        vec!["ns/aws".into()]
    }

    #[test]
    fn other_secrets_change_the_hash_and_old_records_do_not_drift() {
        let before = EffectiveSpec::of(&spec(), Some(b"v1"), &refs());
        let moved = EffectiveSpec::of(&spec(), Some(b"v1"), &["ns/aws".into(), "ns/other".into()]);
        assert_ne!(before.hash, moved.hash);
        assert_eq!(
            assess(&before.hash, Some(&before.fields_annotation()), &moved),
            Drift::Drifted {
                changed: vec!["secretRef/credentialsSecretRef (credentials)".to_string()]
            }
        );
        // Recorded before the credentials counted: the same spec is up to
        // date whatever its Secrets, with or without field digests.
        let mut old_fields = before.fields.clone();
        old_fields.remove(CREDENTIALS_FIELD);
        let old_fields = render_fields(&old_fields);
        for fields in [Some(old_fields.as_str()), None] {
            assert_eq!(assess(&before.legacy_hash, fields, &moved), Drift::UpToDate);
        }
        let mut edited = spec();
        edited.machine_type = "m6i.large".into();
        let edited = EffectiveSpec::of(&edited, Some(b"v1"), &refs());
        assert_eq!(
            assess(&before.legacy_hash, Some(&old_fields), &edited),
            Drift::Drifted {
                changed: vec!["providerSpec.machineType".to_string()]
            },
            "no credentials change read into an old record"
        );
    }

    #[test]
    fn new_optional_fields_left_unset_do_not_change_the_hash() {
        // An absent optional field is not serialized: a hash taken before a
        // field existed stays valid while nobody sets it.
        let plain = EffectiveSpec::of(&spec(), None, &refs());
        let mut with_none = spec();
        with_none.monitoring = None;
        assert_eq!(EffectiveSpec::of(&with_none, None, &refs()), plain);
        with_none.monitoring = Some(true);
        assert_ne!(
            EffectiveSpec::of(&with_none, None, &refs()).hash,
            plain.hash
        );
    }

    #[test]
    fn condition_says_why_and_who_replaces() {
        let drift = Drift::Drifted {
            changed: vec!["providerSpec.ami".into()],
        };
        let (status, reason, msg) = condition(&drift, "workers", Replacer::Deployment);
        assert_eq!((status, reason), ("True", "ProviderSpecChanged"));
        assert!(msg.contains("providerSpec.ami"), "{msg}");
        assert!(msg.contains("MachineDeployment"), "{msg}");
        let (_, _, msg) = condition(&drift, "workers", Replacer::Set);
        assert!(msg.contains(REPLACE_ON_DRIFT_ANNOTATION), "{msg}");
        let (status, _, _) = condition(&Drift::UpToDate, "workers", Replacer::Nobody);
        assert_eq!(status, "False");
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn tag_plan_sets_changed_tags_and_removes_only_its_own() {
        let instance: InstanceTags = [
            ("Name", "m1"),
            ("team", "a"),
            ("old", "x"),
            ("backup-policy", "daily"),
        ]
        .into_iter()
        .collect();
        let class = map(&[("team", "b"), ("new", "y"), ("Name", "ignored")]);
        let plan = tag_plan(&instance, &class, Some("team,old"));
        assert_eq!(plan.set, map(&[("new", "y"), ("team", "b")]));
        assert_eq!(plan.remove, vec!["old".to_string()]);
        // Without a record of applied keys nothing is removed.
        assert!(tag_plan(&instance, &class, None).remove.is_empty());
        // Converged: nothing to do.
        let done: InstanceTags = [("Name", "m1"), ("team", "b"), ("new", "y")]
            .into_iter()
            .collect();
        assert!(tag_plan(&done, &class, Some("team,new")).is_empty());
        assert_eq!(class_tag_keys(&class), vec!["new", "team"]);
    }
}
