//! Deletion problems are visible: a TerminateInstances that EC2 refuses
//! (missing permission, termination protection) or a drain the API server
//! refuses shows in `lastOperation` and a Warning Event, the instance is kept
//! (never a Machine gone while its instance lives), and the deletion finishes
//! once the cause is fixed. An instance EC2 still reports `shutting-down`
//! keeps the finalizer and the Node.

use std::time::Duration;

use kube::ResourceExt;
use kube::api::DeleteParams;
use mcm_provider_aws::api::machine::NODE_LABEL;
use mcm_provider_aws::api::shared::{MachineOperationType, MachinePhase};
use mcm_provider_aws::controller::machine::FINALIZER;

use crate::support::proxy::{Fault, ProxyBehaviour, Rule};
use crate::support::scenario::Scenario;
use crate::support::wait::eventually_or;

const MINUTE: Duration = Duration::from_secs(60);

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
    let m = s
        .wait_failure("d1", MachineOperationType::Delete, "UnauthorizedOperation")
        .await;
    let status = m.status.unwrap();
    assert_eq!(
        status.last_operation.error_code.as_deref(),
        Some("PermissionDenied")
    );
    assert_eq!(status.current_status.phase, Some(MachinePhase::Terminating));
    s.wait_event("d1", "Warning DeleteFailed", "UnauthorizedOperation")
        .await;
    assert_eq!(s.live_instances().await.len(), 1, "the instance is kept");

    // The permission is granted: the deletion finishes.
    proxy.set_rules(vec![]);
    s.nudge("d1").await;
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
    let m = s
        .wait_failure("p1", MachineOperationType::Delete, "OperationNotPermitted")
        .await;
    assert_eq!(
        m.status.unwrap().last_operation.error_code.as_deref(),
        Some("InvalidArgument")
    );
    s.wait_event("p1", "Warning DeleteFailed", "OperationNotPermitted")
        .await;
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
    s.nudge("p1").await;
    s.wait_gone("p1", 2 * MINUTE).await;
    assert!(s.live_instances().await.is_empty());
}

/// EC2 reports the terminated instance `shutting-down` for a while (the
/// proxy: 60 s). The finalizer and the Node stay until EC2 says
/// `terminated`; past `--machine-termination-report-after` (20 s here) the
/// wait is reported (`lastOperation`, Warning `DeleteFailed`) and goes on;
/// then the Node is deleted, the Machine released, nothing left.
#[tokio::test]
async fn the_finalizer_waits_for_terminated_and_reports_a_long_shutdown() {
    let s = Scenario::start_with(
        "shutdown",
        true,
        &["--machine-termination-report-after=20s"],
    )
    .await;
    let proxy = s.proxy.as_ref().unwrap();
    proxy.set_behaviour(ProxyBehaviour::default().with_shutting_down(Duration::from_secs(60)));
    s.create_machine("sd").await;
    let m = s.wait_phase("sd", MachinePhase::Running, 2 * MINUTE).await;
    let node = m.labels().get(NODE_LABEL).cloned().expect("a node label");
    s.machines()
        .delete("sd", &DeleteParams::default())
        .await
        .unwrap();
    s.wait_description("sd", "(shutting-down)").await;
    assert_eq!(proxy.shutting_down(), 1, "EC2 says shutting-down");

    let m = s
        .wait_failure("sd", MachineOperationType::Delete, "still shutting-down")
        .await;
    assert!(m.finalizers().iter().any(|f| f == FINALIZER));
    s.wait_event("sd", "Warning DeleteFailed", "still shutting-down")
        .await;
    assert!(
        s.node(&node).await.is_some(),
        "the Node stays while shutting down"
    );
    assert_eq!(proxy.shutting_down(), 1, "the report came before the end");

    // Until EC2 says terminated the Machine and its Node stay; then both go.
    eventually_or(
        "the machine to be released after the shutdown",
        2 * MINUTE,
        || async {
            let still = proxy.shutting_down() > 0;
            let machine = s.machines().get_opt("sd").await.ok()?;
            assert!(
                !still || (machine.is_some() && s.node(&node).await.is_some()),
                "released while EC2 still says shutting-down"
            );
            machine.is_none().then_some(())
        },
        || s.op.log(),
    )
    .await;
    assert!(s.node(&node).await.is_none(), "the Node is deleted");
    assert!(s.live_instances().await.is_empty());
}
