//! Cordon and drain a Node before its instance is terminated.
//!
//! Pods owned by a DaemonSet and mirror (static) pods are left alone, as
//! `kubectl drain` does; finished pods do not block. Evictions honour
//! PodDisruptionBudgets (a 429 means "try again later"); a forced drain
//! deletes the pods instead, each with its own grace period (MCM's
//! contract), once. Eviction is sent as `policy/v1`, the only version every
//! supported API server (1.33 and later) serves. Before the instance goes,
//! the Node's VolumeAttachments are listed so that termination can wait for
//! them to detach.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::storage::v1::VolumeAttachment;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;

/// Annotation the kubelet puts on mirror pods of static manifests.
const MIRROR_POD_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// Where a drain stands after one pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DrainProgress {
    /// No pod that must leave is left on the node.
    Done,
    /// Pods are still leaving; `blocked` of them were refused eviction (PDB).
    /// `longest_grace` is the longest termination grace period among them.
    Waiting {
        remaining: usize,
        blocked: usize,
        longest_grace: Duration,
    },
}

/// A Pod's grace period when it sets none (the API server's default).
const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// Drains nodes of one (target) cluster.
pub struct Drainer {
    client: Client,
}

impl Drainer {
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    /// Marks the node unschedulable. NotFound means there is nothing to cordon.
    pub async fn cordon(&self, node: &str) -> Result<(), kube::Error> {
        let api = Api::<Node>::all(self.client.clone());
        let patch = json!({"spec": {"unschedulable": true}});
        match api
            .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// One drain pass: evicts (or, when `force`, deletes with their own
    /// grace period) every pod that must leave the node and is not leaving
    /// yet, and reports how many are still there.
    pub async fn drain_pass(&self, node: &str, force: bool) -> Result<DrainProgress, kube::Error> {
        let pods = Api::<Pod>::all(self.client.clone())
            .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
            .await?;
        let mut remaining = 0;
        let mut blocked = 0;
        let mut longest_grace = Duration::ZERO;
        for pod in pods.items.iter().filter(|p| must_leave(p)) {
            remaining += 1;
            longest_grace = longest_grace.max(grace_period(pod));
            if pod.metadata.deletion_timestamp.is_some() {
                continue; // already on its way out
            }
            let ns = pod.namespace().unwrap_or_default();
            let name = pod.name_any();
            let result = if force {
                Api::<Pod>::namespaced(self.client.clone(), &ns)
                    .delete(&name, &DeleteParams::default())
                    .await
                    .map(|_| ())
            } else {
                self.evict(&ns, &name).await
            };
            match result {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => remaining -= 1,
                Err(e) if status_code(&e) == Some(429) => blocked += 1,
                Err(e) => return Err(e),
            }
        }
        Ok(if remaining == 0 {
            DrainProgress::Done
        } else {
            DrainProgress::Waiting {
                remaining,
                blocked,
                longest_grace,
            }
        })
    }

    /// Names of the VolumeAttachments of `node` (volumes a CSI driver has
    /// attached, or is detaching). Termination waits for them: a volume
    /// still attached when the instance goes makes its next Pod wait for
    /// EC2's forced detach (Multi-Attach errors).
    pub async fn volume_attachments(&self, node: &str) -> Result<Vec<String>, kube::Error> {
        let attachments = Api::<VolumeAttachment>::all(self.client.clone())
            .list(&ListParams::default())
            .await?;
        Ok(attachments
            .items
            .iter()
            .filter(|a| a.spec.node_name == node)
            .map(|a| a.name_any())
            .collect())
    }

    /// Asks for an eviction, which the server refuses with 429 while a
    /// PodDisruptionBudget does not allow it. (kube's `Api::evict` sends no
    /// apiVersion and a misspelt `delete_options`, hence the request by hand.)
    async fn evict(&self, ns: &str, name: &str) -> Result<(), kube::Error> {
        let body = json!({
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": name, "namespace": ns},
        });
        let mut req = http::Request::post(format!("/api/v1/namespaces/{ns}/pods/{name}/eviction"))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(&body).map_err(kube::Error::SerdeError)?)
            .map_err(kube::Error::HttpError)?;
        // The verb kube's request metrics and traces report (see kube_metrics).
        req.extensions_mut().insert("evict");
        self.client
            .request::<serde_json::Value>(req)
            .await
            .map(|_| ())
    }
}

/// The termination grace period a Pod asks for.
fn grace_period(pod: &Pod) -> Duration {
    pod.spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .and_then(|s| u64::try_from(s).ok())
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_GRACE)
}

/// Whether a pod has to leave the node before it goes away.
pub fn must_leave(pod: &Pod) -> bool {
    let daemonset = pod
        .owner_references()
        .iter()
        .any(|o| o.kind == "DaemonSet" && o.controller == Some(true));
    let mirror = pod.annotations().contains_key(MIRROR_POD_ANNOTATION);
    let finished = matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    );
    !(daemonset || mirror || finished)
}

fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

pub(crate) fn is_not_found(e: &kube::Error) -> bool {
    status_code(e) == Some(404)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn daemonset_mirror_and_finished_pods_stay() {
        let ds = pod(json!({"metadata": {"name": "a", "ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "ds", "uid": "u", "controller": true}]}}));
        let mirror =
            pod(json!({"metadata": {"name": "b", "annotations": {MIRROR_POD_ANNOTATION: "x"}}}));
        let done = pod(json!({"metadata": {"name": "c"}, "status": {"phase": "Succeeded"}}));
        let rs = pod(json!({"metadata": {"name": "d", "ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "u", "controller": true}]}}));
        let bare = pod(json!({"metadata": {"name": "e"}, "status": {"phase": "Running"}}));
        assert!(!must_leave(&ds));
        assert!(!must_leave(&mirror));
        assert!(!must_leave(&done));
        assert!(must_leave(&rs));
        assert!(must_leave(&bare));
    }
}
