//! A Machine round-trips through a real API server, and its status lives in
//! the status subresource: spec writes cannot touch it, status writes cannot
//! touch the spec.

use kube::api::{Api, Patch, PatchParams, PostParams};
use mcm_provider_aws::api::machine::{Machine, MachineStatus};
use mcm_provider_aws::api::shared::{
    CurrentStatus, LastOperation, MachineOperationType, MachinePhase, MachineState,
};

use crate::support::fixtures::machine;
use crate::support::{TEST_MANAGER, env, install_crds, namespace};

fn running_status() -> MachineStatus {
    MachineStatus {
        last_operation: LastOperation {
            description: "Machine worker-0 successfully joined the cluster".into(),
            state: Some(MachineState::Successful),
            type_: Some(MachineOperationType::Create),
            ..LastOperation::default()
        },
        current_status: CurrentStatus {
            phase: Some(MachinePhase::Running),
            ..CurrentStatus::default()
        },
        ..MachineStatus::default()
    }
}

#[tokio::test]
async fn machine_round_trips_with_its_status_subresource() {
    let client = env().client().await;
    install_crds(&client).await;
    let ns = namespace(&client, "status").await;
    let api = Api::<Machine>::namespaced(client, &ns);

    let mut sent = machine(&ns, "worker-0", "aws-small");
    sent.spec.provider_id = Some("aws:///eu-west-1/i-0123456789abcdef0".into());
    sent.spec.configuration.drain_timeout = Some("30m".parse().unwrap());
    let created = api
        .create(&PostParams::default(), &sent)
        .await
        .expect("create Machine");
    assert_eq!(
        created.spec, sent.spec,
        "the API server kept the spec as sent"
    );
    assert!(created.status.is_none(), "a new Machine has no status");

    // Status goes through the subresource ...
    let status = running_status();
    let patch = serde_json::json!({
        "apiVersion": "machine.sapcloud.io/v1alpha1", "kind": "Machine",
        "status": status,
    });
    let patched = api
        .patch_status(
            "worker-0",
            &PatchParams::apply(TEST_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .expect("apply status");
    assert_eq!(patched.status.as_ref(), Some(&status));
    assert_eq!(
        patched.spec, sent.spec,
        "a status write leaves the spec alone"
    );

    // ... and a write of the main resource cannot change it.
    let mut edited = patched.clone();
    edited.status = None;
    edited.spec.provider_id = Some("aws:///eu-west-1/i-0fedcba9876543210".into());
    let replaced = api
        .replace("worker-0", &PostParams::default(), &edited)
        .await
        .expect("replace");
    assert_eq!(
        replaced.status.as_ref(),
        Some(&status),
        "a spec write leaves the status alone"
    );

    let fetched = api.get("worker-0").await.unwrap();
    assert_eq!(
        fetched.spec.provider_id.as_deref(),
        Some("aws:///eu-west-1/i-0fedcba9876543210")
    );
    assert_eq!(
        fetched.status.and_then(|s| s.current_status.phase),
        Some(MachinePhase::Running)
    );
}

#[tokio::test]
async fn printer_columns_show_phase_provider_id_and_node() {
    let client = env().client().await;
    install_crds(&client).await;
    let ns = namespace(&client, "columns").await;
    let api = Api::<Machine>::namespaced(client, &ns);
    let mut m = machine(&ns, "m1", "aws-small");
    m.spec.provider_id = Some("aws:///eu-west-1/i-0aaaabbbbccccdddd".into());
    m.metadata.labels = Some([("node".to_string(), "ip-10-0-0-1.ec2.internal".to_string())].into());
    api.create(&PostParams::default(), &m).await.unwrap();
    let patch = serde_json::json!({"apiVersion": "machine.sapcloud.io/v1alpha1", "kind": "Machine", "status": running_status()});
    api.patch_status(
        "m1",
        &PatchParams::apply(TEST_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .unwrap();

    let (ok, out, err) = env().kubectl_run(&["get", "mc", "m1", "-n", &ns]);
    assert!(ok, "{err}");
    let header = out.lines().next().unwrap_or_default();
    for col in ["PHASE", "PROVIDERID", "NODE", "AGE"] {
        assert!(header.contains(col), "column {col} missing: {out}");
    }
    let row = out.lines().nth(1).unwrap_or_default();
    for cell in [
        "Running",
        "aws:///eu-west-1/i-0aaaabbbbccccdddd",
        "ip-10-0-0-1.ec2.internal",
    ] {
        assert!(row.contains(cell), "{cell} missing from: {out}");
    }
}
