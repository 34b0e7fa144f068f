//! Machine health through the Node: Running → Unknown when the node is
//! unhealthy → Failed after the (per-machine) health timeout; recovery before
//! it; an instance terminated by EC2 is reported at once.

use std::time::Duration;

use kube::ResourceExt;
use kube::api::{Patch, PatchParams};
use mcm_provider_aws::api::machine::NODE_LABEL;
use mcm_provider_aws::api::shared::MachinePhase;

use crate::support::scenario::Scenario;

const MINUTE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn unhealthy_node_makes_the_machine_unknown_then_failed() {
    let s = Scenario::start("health").await;
    s.create_machine("h1").await;
    s.create_machine("h2").await;
    // h1 gets a short health timeout of its own; h2 keeps the 10m default.
    let short = serde_json::json!({"spec": {"healthTimeout": "6s"}});
    s.machines()
        .patch("h1", &PatchParams::default(), &Patch::Merge(&short))
        .await
        .unwrap();
    let h1 = s.wait_phase("h1", MachinePhase::Running, 2 * MINUTE).await;
    let h2 = s.wait_phase("h2", MachinePhase::Running, 2 * MINUTE).await;

    let node1 = h1.labels()[NODE_LABEL].clone();
    let node2 = h2.labels()[NODE_LABEL].clone();
    s.kubelet.set_ready(&node1, false);
    s.kubelet.set_ready(&node2, false);
    let unknown = s.wait_phase("h1", MachinePhase::Unknown, MINUTE).await;
    assert!(unknown.status.unwrap().current_status.timeout_active);
    s.wait_phase("h2", MachinePhase::Unknown, MINUTE).await;

    // h2 recovers before its timeout; h1 does not and fails.
    s.kubelet.set_ready(&node2, true);
    s.wait_phase("h2", MachinePhase::Running, MINUTE).await;
    let failed = s.wait_phase("h1", MachinePhase::Failed, MINUTE).await;
    let op = failed.status.unwrap().last_operation;
    assert!(op.description.contains("health timeout of 6s"), "{op:?}");
    let events = s.events_of("h1").await;
    assert!(
        events.iter().any(|e| e.starts_with("Warning Unhealthy")),
        "{events:?}"
    );
    assert!(
        events.iter().any(|e| e.starts_with("Warning Failed")),
        "{events:?}"
    );
}

#[tokio::test]
async fn instance_terminated_by_ec2_is_reported_at_once() {
    let s = Scenario::start("spot").await;
    s.create_machine("s1").await;
    let m = s.wait_phase("s1", MachinePhase::Running, 2 * MINUTE).await;
    let id = m
        .spec
        .provider_id
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    // Behind the operator's back, like a spot interruption.
    s.ec2
        .terminate_instances()
        .instance_ids(&id)
        .send()
        .await
        .unwrap();
    // Within a few sync periods (2s in tests), far below the 10m health timeout.
    let failed = s
        .wait_phase("s1", MachinePhase::Failed, 30 * Duration::from_secs(1))
        .await;
    let op = failed.status.unwrap().last_operation;
    assert!(op.description.contains("Instance is gone"), "{op:?}");
}
