//! Machines in the control cluster, Nodes and Pods in a separate target
//! cluster (`--target-kubeconfig`), as in MCM's seed/shoot split.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams};
use mcm_provider_aws::api::machine::NODE_LABEL;
use mcm_provider_aws::api::shared::MachinePhase;

use crate::support::kubelet::pod_on_node;
use crate::support::scenario::Scenario;
use crate::support::wait::eventually_or;
use crate::support::{namespace, target_env};

const MINUTE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn nodes_live_in_the_target_cluster() {
    let target = target_env();
    let s = Scenario::start_with_target("target", target).await;
    let target_client = target.client().await;
    s.create_machine("t1").await;
    let m = s.wait_phase("t1", MachinePhase::Running, 2 * MINUTE).await;
    let node = m.labels()[NODE_LABEL].clone();
    let target_nodes = Api::<Node>::all(target_client.clone());
    assert!(
        target_nodes.get_opt(&node).await.unwrap().is_some(),
        "the Node is in the target cluster"
    );
    let control_nodes = Api::<Node>::all(s.client.clone());
    assert!(
        control_nodes.get_opt(&node).await.unwrap().is_none(),
        "and not in the control cluster"
    );

    // Drain happens in the target cluster too.
    let ns = namespace(&target_client, "workload").await;
    pod_on_node(&target_client, &ns, "app", &node).await;
    s.machines()
        .delete("t1", &DeleteParams::default())
        .await
        .unwrap();
    s.wait_gone("t1", 2 * MINUTE).await;
    let pods = Api::<Pod>::namespaced(target_client.clone(), &ns);
    eventually_or(
        "the target cluster's pod to be evicted",
        MINUTE,
        || async {
            pods.get_opt("app")
                .await
                .ok()
                .flatten()
                .is_none()
                .then_some(())
        },
        || s.op.log(),
    )
    .await;
    assert!(
        target_nodes.get_opt(&node).await.unwrap().is_none(),
        "the target Node is deleted"
    );
    assert!(s.live_instances().await.is_empty());
}
