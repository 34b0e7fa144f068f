//! A Node as a real kubelet registers it (~8.4 KB of JSON), for the
//! measurements of memory at scale: `tests/integration/memory.rs` creates
//! thousands of them, and `examples/cache_footprint.rs` (which includes
//! this file by path) feeds them to the caches directly.

use serde_json::{Value, json};

/// A Node shaped like a real kubelet's: labels, annotations, taints, five
/// conditions, addresses, capacity, node info and 20 container images.
pub fn real_node(name: &str, instance: &str, i: usize, region: &str, zone: &str) -> Value {
    let images: Vec<Value> = (0..20)
        .map(|k| {
            json!({
                "names": [
                    format!("registry.k8s.io/component-{k}@sha256:{:064x}", k * 7919 + i),
                    format!("registry.k8s.io/component-{k}:v1.{k}.{i}"),
                ],
                "sizeBytes": 10_000_000 + k * 1_000_000
            })
        })
        .collect();
    let condition = |t: &str, status: &str, reason: &str, message: &str| {
        json!({"type": t, "status": status, "reason": reason, "message": message,
               "lastHeartbeatTime": "2026-12-01T10:00:00Z",
               "lastTransitionTime": "2026-12-01T09:00:00Z"})
    };
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "beta.kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": "linux",
                "beta.kubernetes.io/instance-type": "m5.large",
                "failure-domain.beta.kubernetes.io/region": region,
                "failure-domain.beta.kubernetes.io/zone": zone,
                "kubernetes.io/arch": "amd64", "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "node.kubernetes.io/instance-type": "m5.large",
                "topology.kubernetes.io/region": region, "topology.kubernetes.io/zone": zone,
                "topology.ebs.csi.aws.com/zone": zone,
                "worker.gardener.cloud/pool": "pool-a",
                "worker.gardener.cloud/system-components": "true",
                "networking.gardener.cloud/node-local-dns-enabled": "true"
            },
            "annotations": {
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
                "csi.volume.kubernetes.io/nodeid": format!("{{\"ebs.csi.aws.com\":\"{instance}\"}}"),
                "node.machine.sapcloud.io/last-applied-anno-labels-taints": "{\"metadata\":{\"labels\":{\"worker.gardener.cloud/pool\":\"pool-a\"}}}",
                "projectcalico.org/IPv4Address": "10.250.0.10/19",
                "checksum/cloud-config-data": format!("{:064x}", i)
            }
        },
        "spec": {
            "providerID": format!("aws:///{zone}/{instance}"),
            "podCIDR": "100.96.0.0/24", "podCIDRs": ["100.96.0.0/24"],
            "taints": [{"key": "node.example.com/dedicated", "value": "pool-a", "effect": "NoSchedule"}]
        },
        "status": {
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                condition("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
                condition("NetworkUnavailable", "False", "CalicoIsUp", "Calico is running on this node")
            ],
            "addresses": [
                {"type": "InternalIP", "address": "10.250.0.10"},
                {"type": "InternalDNS", "address": name},
                {"type": "Hostname", "address": name}
            ],
            "capacity": {"cpu": "2", "memory": "7941076Ki", "pods": "110", "ephemeral-storage": "50620216Ki", "hugepages-1Gi": "0", "hugepages-2Mi": "0"},
            "allocatable": {"cpu": "1920m", "memory": "6708180Ki", "pods": "110", "ephemeral-storage": "49243193270", "hugepages-1Gi": "0", "hugepages-2Mi": "0"},
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "architecture": "amd64", "bootID": format!("{:032x}", i),
                "containerRuntimeVersion": "containerd://1.7.27", "kernelVersion": "6.6.87",
                "kubeProxyVersion": "", "kubeletVersion": "v1.33.1",
                "machineID": format!("{:032x}", i + 1), "operatingSystem": "linux",
                "osImage": "Garden Linux 1592.9", "systemUUID": format!("ec2{:029x}", i)
            },
            "images": images,
            "volumesInUse": ["kubernetes.io/csi/ebs.csi.aws.com^vol-0123456789abcdef0"],
            "volumesAttached": [{"name": "kubernetes.io/csi/ebs.csi.aws.com^vol-0123456789abcdef0", "devicePath": ""}]
        }
    })
}
