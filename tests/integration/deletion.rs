//! Deletion problems are visible: a TerminateInstances that EC2 refuses
//! (missing permission, termination protection) or a drain the API server
//! refuses shows in `lastOperation` and a Warning Event, the instance is kept
//! (never a Machine gone while its instance lives), and the deletion finishes
//! once the cause is fixed.

use std::time::Duration;

use kube::api::{DeleteParams, Patch, PatchParams};
use mcm_provider_aws::api::machine::Machine;
use mcm_provider_aws::api::shared::{MachineOperationType, MachinePhase, MachineState};
use serde_json::json;

use crate::support::proxy::{Fault, Rule};
use crate::support::scenario::Scenario;
use crate::support::wait::eventually_or;

const MINUTE: Duration = Duration::from_secs(60);

/// Waits until the Machine's `lastOperation` reports a failed deletion whose
/// description contains `needle`, and returns the Machine.
async fn wait_delete_failure(s: &Scenario, name: &str, needle: &str) -> Machine {
    eventually_or(
        &format!("a failed Delete mentioning {needle} in lastOperation"),
        MINUTE,
        || async {
            let m = s.machines().get_opt(name).await.ok().flatten()?;
            let op = &m.status.as_ref()?.last_operation;
            (op.type_ == Some(MachineOperationType::Delete)
                && op.state == Some(MachineState::Failed)
                && op.description.contains(needle))
            .then_some(m)
        },
        || s.op.log(),
    )
    .await
}

/// Waits for the Warning DeleteFailed Event mentioning `needle` (published
/// right after the status is written, so it may lag the status a little).
async fn wait_delete_event(s: &Scenario, name: &str, needle: &str) {
    eventually_or(
        &format!("a Warning DeleteFailed Event mentioning {needle}"),
        MINUTE,
        || async {
            s.events_of(name)
                .await
                .into_iter()
                .find(|e| e.starts_with("Warning DeleteFailed") && e.contains(needle))
        },
        || s.op.log(),
    )
    .await;
}

/// A change to the Machine, so that the operator looks again at once rather
/// than after the long back-off for permission errors.
async fn nudge(s: &Scenario, name: &str) {
    let patch = json!({"metadata": {"annotations": {"test/nudge": "1"}}});
    s.machines()
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

#[tokio::test]
async fn denied_termination_is_reported_and_the_instance_kept() {
    let s = Scenario::start_with("deny-term", true, &[]).await;
    let proxy = s.proxy.as_ref().unwrap();
    s.create_machine("d1").await;
    s.wait_phase("d1", MachinePhase::Running, 2 * MINUTE).await;

    // EC2's answer when the policy lacks ec2:TerminateInstances.
    proxy.set_rules(vec![Rule::on(
        "TerminateInstances",
        1,
        Fault::Error(403, "UnauthorizedOperation"),
    )]);
    s.machines()
        .delete("d1", &DeleteParams::default())
        .await
        .unwrap();
    let m = wait_delete_failure(&s, "d1", "UnauthorizedOperation").await;
    let status = m.status.unwrap();
    assert_eq!(
        status.last_operation.error_code.as_deref(),
        Some("PermissionDenied")
    );
    assert_eq!(status.current_status.phase, Some(MachinePhase::Terminating));
    wait_delete_event(&s, "d1", "UnauthorizedOperation").await;
    assert_eq!(s.live_instances().await.len(), 1, "the instance is kept");

    // The permission is granted: the deletion finishes.
    proxy.set_rules(vec![]);
    nudge(&s, "d1").await;
    s.wait_gone("d1", 2 * MINUTE).await;
    assert!(s.live_instances().await.is_empty());
}

#[tokio::test]
async fn termination_protection_is_reported_until_lifted() {
    let s = Scenario::start("protected").await;
    s.create_machine("p1").await;
    s.wait_phase("p1", MachinePhase::Running, 2 * MINUTE).await;
    let id = s.live_instances().await[0]
        .instance_id()
        .unwrap()
        .to_string();
    s.ec2
        .modify_instance_attribute()
        .instance_id(&id)
        .disable_api_termination(
            aws_sdk_ec2::types::AttributeBooleanValue::builder()
                .value(true)
                .build(),
        )
        .send()
        .await
        .expect("enable termination protection");

    s.machines()
        .delete("p1", &DeleteParams::default())
        .await
        .unwrap();
    let m = wait_delete_failure(&s, "p1", "OperationNotPermitted").await;
    assert_eq!(
        m.status.unwrap().last_operation.error_code.as_deref(),
        Some("InvalidArgument")
    );
    wait_delete_event(&s, "p1", "OperationNotPermitted").await;
    assert_eq!(s.live_instances().await.len(), 1, "the instance is kept");

    s.ec2
        .modify_instance_attribute()
        .instance_id(&id)
        .disable_api_termination(
            aws_sdk_ec2::types::AttributeBooleanValue::builder()
                .value(false)
                .build(),
        )
        .send()
        .await
        .expect("lift termination protection");
    nudge(&s, "p1").await;
    s.wait_gone("p1", 2 * MINUTE).await;
    assert!(s.live_instances().await.is_empty());
}
