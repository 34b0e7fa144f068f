//! A worker pool as Gardener writes it: the MachineClass of
//! gardener-extension-provider-aws (root `/root` plus two gp3 data volumes
//! with iops, throughput and a snapshot — moto 5.2 keeps no io1 data volume — `cpuOptions` with Go's nulls, pool
//! labels as tags, a userData-only `secretRef` beside the
//! `credentialsSecretRef`, a `nodeTemplate` for the autoscaler) and the
//! MachineDeployment of Gardener's worker controller (`minReadySeconds:
//! 500`, `revisionHistoryLimit: 0`, the machine configuration inline, the
//! pool's node labels, annotations and taints, `autoPreserveFailedMachineMax`).
//! Its machines reach Running, their Nodes carry the pool, and the user
//! data EC2 holds carries each machine's name and bootstrap token.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Secret};
use kube::ResourceExt;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, PostParams};
use mcm_provider_aws::api::machine::Machine;
use mcm_provider_aws::api::machine_class::MachineClass;
use mcm_provider_aws::api::machine_deployment::MachineDeployment;
use mcm_provider_aws::api::shared::MachinePhase;
use mcm_provider_aws::aws::instances::instance_id_from_provider_id;
use mcm_provider_aws::controller::node::bootstrap_token::is_token;
use serde_json::{Value, json};

use crate::support::ec2::{self, tag, try_user_data};
use crate::support::fleet::apply;
use crate::support::kubelet::TOKEN_LINE;
use crate::support::scenario::Scenario;
use crate::support::wait::eventually_or;

const MINUTE: Duration = Duration::from_secs(60);
const POOL: &str = "shoot--core--gardener-worker-z1";
const CLASS: &str = "shoot--core--gardener-worker-z1-3a7e1";

/// gardener-node-agent's bootstrap, as the OperatingSystemConfig renders it
/// (shortened): the machine name and the bootstrap token go to files the
/// agent reads before the kubelet starts.
const GARDENER_USER_DATA: &str = r#"#!/bin/bash
mkdir -p /var/lib/gardener-node-agent/credentials
cat <<'EOF' > /var/lib/gardener-node-agent/credentials/config
machine-name: <<MACHINE_NAME>>
bootstrap-token: <<BOOTSTRAP_TOKEN>>
EOF
systemctl enable gardener-node-agent --now
"#;

async fn create_secret(s: &Scenario, secret: Value) {
    let secret: Secret = serde_json::from_value(secret).unwrap();
    Api::<Secret>::namespaced(s.client.clone(), &s.ns)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
}

/// The class gardener-extension-provider-aws writes for pool `worker` in
/// zone eu-west-1a, against the scenario's network.
fn gardener_class(s: &Scenario, snapshot: &str, key_name: &str) -> Value {
    json!({
        "apiVersion": "machine.sapcloud.io/v1alpha1", "kind": "MachineClass",
        "metadata": {"name": CLASS, "namespace": s.ns},
        "nodeTemplate": {
            "capacity": {"cpu": "2", "gpu": "0", "memory": "8Gi"},
            "instanceType": "m5.large",
            "region": ec2::REGION,
            "zone": ec2::ZONE,
            "architecture": "amd64",
        },
        "provider": "AWS",
        "providerSpec": {
            "ami": s.net.ami,
            "region": ec2::REGION,
            "machineType": "m5.large",
            "iam": {"name": format!("profile-{}", s.ns)},
            "keyName": key_name,
            "networkInterfaces": [{"subnetID": s.net.subnet_id, "securityGroupIDs": [s.net.security_group_id]}],
            "tags": {
                format!("kubernetes.io/cluster/{}", s.ns): "1",
                "kubernetes.io/role/node": "1",
                "node.kubernetes.io/role": "node",
                "worker.gardener.cloud/pool": "worker",
                "worker.gardener.cloud/system-components": "true",
                "networking.gardener.cloud/node-local-dns-enabled": "false",
            },
            "blockDevices": [
                {"deviceName": "/root", "ebs": {"volumeSize": 50, "volumeType": "gp3", "encrypted": true, "deleteOnTermination": true}},
                {"deviceName": "/dev/sdf", "ebs": {"volumeSize": 100, "volumeType": "gp3", "iops": 3000, "encrypted": true, "deleteOnTermination": true, "snapshotID": snapshot}},
                {"deviceName": "/dev/sdg", "ebs": {"volumeSize": 200, "volumeType": "gp3", "iops": 4000, "throughput": 250, "encrypted": true, "deleteOnTermination": true}},
            ],
            "cpuOptions": {"amdSevSnp": "enabled", "coreCount": null, "threadsPerCore": null},
            "instanceMetadataOptions": {"httpTokens": "required", "httpPutResponseHopLimit": 2},
        },
        "secretRef": {"name": CLASS, "namespace": s.ns},
        "credentialsSecretRef": {"name": "cloudprovider", "namespace": s.ns},
    })
}

/// The MachineDeployment of Gardener's worker controller for that pool.
fn gardener_deployment(s: &Scenario) -> Value {
    json!({
        "apiVersion": "machine.sapcloud.io/v1alpha1", "kind": "MachineDeployment",
        "metadata": {
            "name": POOL, "namespace": s.ns,
            "labels": {"worker.gardener.cloud/name": "worker"},
        },
        "spec": {
            "replicas": 2,
            "minReadySeconds": 500,
            "revisionHistoryLimit": 0,
            "autoPreserveFailedMachineMax": 0,
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "selector": {"matchLabels": {"name": POOL}},
            "template": {
                "metadata": {"labels": {"name": POOL}},
                "spec": {
                    "class": {"kind": "MachineClass", "name": CLASS},
                    "nodeTemplate": {
                        "metadata": {
                            "labels": {
                                "node.kubernetes.io/role": "node",
                                "worker.gardener.cloud/pool": "worker",
                                "worker.gardener.cloud/system-components": "true",
                                "worker.garden.sapcloud.io/group": "worker",
                                "topology.ebs.csi.aws.com/zone": ec2::ZONE,
                            },
                            "annotations": {
                                "worker.gardener.cloud/gardener-node-agent-secret-name": "gardener-node-agent-worker-b8c1c",
                            },
                        },
                        "spec": {"taints": [{"key": "dedicated", "value": "worker", "effect": "NoSchedule"}]},
                    },
                    "creationTimeout": "20m",
                    "drainTimeout": "2h",
                    "healthTimeout": "10m",
                    "maxEvictRetries": 30,
                    "nodeConditions": "KernelDeadlock,ReadonlyFilesystem,DiskPressure,NetworkUnavailable",
                    "inPlaceUpdateTimeout": "20m",
                    "disableHealthTimeout": false,
                },
            },
        },
    })
}

#[tokio::test]
async fn a_gardener_worker_pool_runs_and_its_nodes_carry_the_pool() {
    let s = Scenario::start("gardener").await;
    let volume = s
        .ec2
        .create_volume()
        .availability_zone(ec2::ZONE)
        .size(100)
        .send()
        .await
        .unwrap()
        .volume_id
        .unwrap();
    let snapshot = s
        .ec2
        .create_snapshot()
        .volume_id(&volume)
        .send()
        .await
        .unwrap()
        .snapshot_id
        .unwrap();
    let key_name = format!("{}-ssh-publickey", s.ns);
    s.ec2
        .create_key_pair()
        .key_name(&key_name)
        .send()
        .await
        .unwrap();
    create_secret(
        &s,
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "cloudprovider", "namespace": s.ns},
            "stringData": {"accessKeyID": "testing", "secretAccessKey": "testing-secret"},
        }),
    )
    .await;
    create_secret(
        &s,
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": CLASS, "namespace": s.ns,
                         "labels": {"gardener.cloud/purpose": "machineclass"}},
            "stringData": {"userData": GARDENER_USER_DATA},
        }),
    )
    .await;
    // Created as Gardener's chart applier does (a POST with Go's nulls),
    // not server-side applied: there a null asks to remove the field.
    let class: DynamicObject =
        serde_json::from_value(gardener_class(&s, &snapshot, &key_name)).unwrap();
    Api::<DynamicObject>::namespaced_with(
        s.client.clone(),
        &s.ns,
        &ApiResource::erase::<MachineClass>(&()),
    )
    .create(&PostParams::default(), &class)
    .await
    .unwrap();
    apply(
        &Api::<MachineDeployment>::namespaced(s.client.clone(), &s.ns),
        POOL,
        &gardener_deployment(&s),
    )
    .await;

    let machines: Vec<Machine> = eventually_or(
        "the pool's two machines to be Running",
        3 * MINUTE,
        || async {
            let list = s
                .machines()
                .list(&ListParams::default().labels(&format!("name={POOL}")))
                .await
                .ok()?;
            (list.items.len() == 2
                && list
                    .items
                    .iter()
                    .all(|m| m.phase() == Some(MachinePhase::Running)))
            .then_some(list.items)
        },
        || s.op.log(),
    )
    .await;

    let nodes = Api::<Node>::all(s.client.clone());
    for m in &machines {
        let name = m.name_any();
        let id = instance_id_from_provider_id(m.spec.provider_id.as_deref().unwrap()).unwrap();
        // The user data: this machine's name and a token it joined with.
        let user_data = try_user_data(&s.ec2, id).await.unwrap();
        assert!(
            user_data.contains(&format!("machine-name: {name}\n")),
            "{user_data}"
        );
        for placeholder in ["<<MACHINE_NAME>>", "<<BOOTSTRAP_TOKEN>>"] {
            assert!(!user_data.contains(placeholder), "{user_data}");
        }
        let token = user_data
            .lines()
            .find_map(|l| l.strip_prefix(TOKEN_LINE))
            .unwrap();
        assert!(is_token(token), "{token}");
        assert_eq!(
            s.kubelet.joined_with(id).map(|j| j.token).as_deref(),
            Some(token),
            "the node agent joined with it"
        );
        // The Node carries the pool.
        let node_name = m.node_name().unwrap().to_string();
        let node = eventually_or(
            &format!("Node {node_name} to carry the pool"),
            MINUTE,
            || async {
                let n = nodes.get_opt(&node_name).await.ok().flatten()?;
                let taints = n.spec.as_ref()?.taints.clone().unwrap_or_default();
                (n.labels()
                    .get("worker.gardener.cloud/pool")
                    .map(String::as_str)
                    == Some("worker")
                    && taints.iter().any(|t| t.key == "dedicated"))
                .then_some(n)
            },
            || s.op.log(),
        )
        .await;
        assert_eq!(node.labels()["topology.ebs.csi.aws.com/zone"], ec2::ZONE);
        assert_eq!(
            node.annotations()["worker.gardener.cloud/gardener-node-agent-secret-name"],
            "gardener-node-agent-worker-b8c1c"
        );
        // The machine configuration reached the machine.
        assert_eq!(m.spec.configuration.max_evict_retries, Some(30));
        assert!(!m.status.as_ref().unwrap().addresses.is_empty());
    }

    // The instances: pool labels as tags, the root and both data volumes.
    let live = s.live_instances().await;
    assert_eq!(live.len(), 2, "{live:?}");
    for i in &live {
        assert_eq!(tag(i, "worker.gardener.cloud/pool"), Some("worker"));
        let devices: Vec<&str> = i
            .block_device_mappings()
            .iter()
            .filter_map(|b| b.device_name())
            .collect();
        assert!(
            devices.contains(&"/dev/sdf") && devices.contains(&"/dev/sdg"),
            "{devices:?}"
        );
        assert_eq!(devices.len(), 3, "{devices:?}");
    }
}
