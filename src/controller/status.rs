//! Writing the `status` of the objects the operator owns (Machines,
//! MachineSets, MachineDeployments): server-side apply of the status
//! subresource as [`MANAGER`], and only when it changed.

use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::context::{Context, MANAGER};
use super::error::Result;

/// Applies `new` as the status of `obj` unless it equals `old` and `obj`
/// already has a status (`has_status`): a pass that changes nothing writes
/// nothing, so it does not wake the object's controller again.
pub async fn write<K, S>(ctx: &Context, obj: &K, has_status: bool, old: &S, new: &S) -> Result<()>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    S: Serialize + PartialEq,
{
    if has_status && old == new {
        return Ok(());
    }
    let patch = json!({
        "apiVersion": crate::api::API_VERSION,
        "kind": K::kind(&()),
        "status": new,
    });
    Api::<K>::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default())
        .patch_status(
            &obj.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    Ok(())
}
