//! `kubectl scale` works on MachineSets and MachineDeployments through their
//! scale subresources.

use kube::api::{Api, PostParams};
use mcm_provider_aws::api::machine_deployment::MachineDeployment;
use mcm_provider_aws::api::machine_set::MachineSet;

use crate::support::{env, install_crds, namespace};

fn spec_json(replicas: i32) -> serde_json::Value {
    serde_json::json!({
        "replicas": replicas,
        "selector": {"matchLabels": {"pool": "p"}},
        "template": {
            "metadata": {"labels": {"pool": "p"}},
            "spec": {"class": {"kind": "MachineClass", "name": "aws-small"}}
        }
    })
}

#[tokio::test]
async fn kubectl_scale_changes_machine_set_replicas() {
    let client = env().client().await;
    install_crds(&client).await;
    let ns = namespace(&client, "scale-mcs").await;
    let api = Api::<MachineSet>::namespaced(client, &ns);
    let set: MachineSet = serde_json::from_value(serde_json::json!({
        "apiVersion": "machine.sapcloud.io/v1alpha1", "kind": "MachineSet",
        "metadata": {"name": "pool"}, "spec": spec_json(2),
    }))
    .unwrap();
    api.create(&PostParams::default(), &set).await.unwrap();

    let (ok, out, err) = env().kubectl_run(&["scale", "mcs/pool", "--replicas=5", "-n", &ns]);
    assert!(ok, "kubectl scale failed: {out}{err}");
    assert_eq!(api.get("pool").await.unwrap().spec.replicas, 5);
    let scale = api.get_scale("pool").await.unwrap();
    assert_eq!(scale.spec.and_then(|s| s.replicas), Some(5));
}

#[tokio::test]
async fn kubectl_scale_changes_machine_deployment_replicas() {
    let client = env().client().await;
    install_crds(&client).await;
    let ns = namespace(&client, "scale-mcd").await;
    let api = Api::<MachineDeployment>::namespaced(client, &ns);
    let mut spec = spec_json(3);
    spec["strategy"] = serde_json::json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": "25%"}});
    let mcd: MachineDeployment = serde_json::from_value(serde_json::json!({
        "apiVersion": "machine.sapcloud.io/v1alpha1", "kind": "MachineDeployment",
        "metadata": {"name": "workers"}, "spec": spec,
    }))
    .unwrap();
    api.create(&PostParams::default(), &mcd).await.unwrap();

    let (ok, out, err) = env().kubectl_run(&["scale", "mcd/workers", "--replicas=0", "-n", &ns]);
    assert!(ok, "kubectl scale failed: {out}{err}");
    assert_eq!(api.get("workers").await.unwrap().spec.replicas, 0);
}
