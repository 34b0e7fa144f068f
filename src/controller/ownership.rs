//! Controller ownership between deployments, sets and machines: the
//! controller ownerReference (which makes the garbage collector cascade
//! deletions), adoption of orphans that match a selector, release of
//! children that no longer match, and label selectors.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use kube::api::{Api, Patch, PatchParams};
use kube::core::{Selector, SelectorExt};
use kube::{Resource, ResourceExt};
use serde_json::json;
use std::collections::BTreeMap;

use super::error::Result;

/// A controller reference to `owner`, blocking its foreground deletion until
/// the child is gone (as ReplicaSets and MCM do).
pub fn controller_ref<K>(owner: &K) -> OwnerReference
where
    K: Resource<DynamicType = ()>,
{
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: owner.name_any(),
        uid: owner.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The controller ownerReference of an object, if any.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .as_ref()?
        .iter()
        .find(|o| o.controller == Some(true))
}

/// UID of the object's controller, if any.
pub fn controller_uid(meta: &ObjectMeta) -> Option<&str> {
    controller_of(meta).map(|o| o.uid.as_str())
}

/// The selector of a set or deployment. An absent or empty selector is an
/// error: it would select every machine of the namespace.
pub fn selector(selector: Option<&LabelSelector>) -> Result<Selector, String> {
    let parsed: Selector = selector.cloned().unwrap_or_default().try_into().map_err(
        |e: kube::core::ParseExpressionError| format!("spec.selector is invalid: {}", e.0),
    )?;
    if parsed.selects_all() {
        return Err(
            "spec.selector is empty; it must select the labels of spec.template.metadata".into(),
        );
    }
    Ok(parsed)
}

/// Whether the template labels are selected by the selector (else every
/// child created would immediately be orphaned).
pub fn template_matches(selector: &Selector, labels: Option<&BTreeMap<String, String>>) -> bool {
    selector.matches(&labels.cloned().unwrap_or_default())
}

/// What to do with a child listed under an owner's selector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// Already ours.
    Owned,
    /// Nobody's and alive: adopt it.
    Adopt,
    /// Someone else's, or an orphan being deleted.
    Ignore,
}

/// Decides about one child whose labels match the owner's selector.
pub fn claim(owner_uid: &str, child: &ObjectMeta) -> Claim {
    match controller_uid(child) {
        Some(uid) if uid == owner_uid => Claim::Owned,
        Some(_) => Claim::Ignore,
        None if child.deletion_timestamp.is_none() => Claim::Adopt,
        None => Claim::Ignore,
    }
}

/// Adds a controller reference to `owner` on `child`, guarded by the
/// child's resourceVersion (a concurrent change makes this fail, not clobber).
pub async fn adopt<C>(api: &Api<C>, child: &C, owner: OwnerReference) -> Result<()>
where
    C: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut refs = child.owner_references().to_vec();
    refs.push(owner);
    set_owner_references(api, child, refs).await
}

/// Removes the controller reference with `owner_uid` from `child`.
pub async fn release<C>(api: &Api<C>, child: &C, owner_uid: &str) -> Result<()>
where
    C: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let refs: Vec<OwnerReference> = child
        .owner_references()
        .iter()
        .filter(|o| o.uid != owner_uid)
        .cloned()
        .collect();
    set_owner_references(api, child, refs).await
}

async fn set_owner_references<C>(api: &Api<C>, child: &C, refs: Vec<OwnerReference>) -> Result<()>
where
    C: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    patch_metadata_guarded(api, child, "ownerReferences", json!(refs)).await
}

/// Replaces one metadata list (`ownerReferences`, `finalizers`) of `obj`,
/// guarded by the resourceVersion we read, so a concurrent change makes the
/// patch fail (and the reconcile retry) rather than being overwritten.
pub(crate) async fn patch_metadata_guarded<K>(
    api: &Api<K>,
    obj: &K,
    field: &str,
    value: serde_json::Value,
) -> Result<()>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let patch = json!({
        "metadata": {
            "resourceVersion": obj.resource_version(),
            field: value,
        }
    });
    api.patch(
        &obj.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::machine_set::MachineSet;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    #[test]
    fn empty_selectors_are_refused() {
        assert!(selector(None).is_err());
        assert!(selector(Some(&LabelSelector::default())).is_err());
        let sel = LabelSelector {
            match_labels: Some(BTreeMap::from([("pool".into(), "a".into())])),
            ..LabelSelector::default()
        };
        let parsed = selector(Some(&sel)).unwrap();
        assert_eq!(parsed.to_string(), "pool=a");
        assert!(template_matches(
            &parsed,
            Some(&BTreeMap::from([
                ("pool".into(), "a".into()),
                ("extra".into(), "x".into())
            ]))
        ));
        assert!(!template_matches(&parsed, None));
    }

    #[test]
    fn children_are_claimed_only_when_free_and_alive() {
        let mut owner = MachineSet::new("s", Default::default());
        owner.metadata.uid = Some("u1".into());
        let mine = ObjectMeta {
            owner_references: Some(vec![controller_ref(&owner)]),
            ..ObjectMeta::default()
        };
        assert_eq!(claim("u1", &mine), Claim::Owned);
        assert_eq!(claim("u2", &mine), Claim::Ignore);
        assert_eq!(claim("u1", &ObjectMeta::default()), Claim::Adopt);
        let dying = ObjectMeta {
            deletion_timestamp: Some(Time(k8s_openapi::jiff::Timestamp::now())),
            ..ObjectMeta::default()
        };
        assert_eq!(claim("u1", &dying), Claim::Ignore);
        let r = controller_ref(&owner);
        assert_eq!(
            (r.kind.as_str(), r.api_version.as_str(), r.uid.as_str()),
            ("MachineSet", "machine.sapcloud.io/v1alpha1", "u1")
        );
        assert_eq!(r.block_owner_deletion, Some(true));
    }
}
