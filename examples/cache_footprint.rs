//! What the operator's caches cost per object, measured in this process:
//! N Nodes shaped like a real kubelet's and N Machines as the operator
//! leaves them once Running, each fed through the cache that holds it, and
//! the growth of the resident set reported per object. Machines arrive as
//! the watch hands them over: deserialized from bytes, converted to the
//! [`CachedMachine`] the store holds (trimmed and compacted), into a
//! reflector store (its keys included).
//!
//! `make bench` runs it (release build); `cargo run --release --example
//! cache_footprint -- 10000` alone takes seconds, which makes it the quick
//! loop for memory work, while `bench_memory_and_steady_state_at_scale`
//! measures the whole operator. Each part runs in a fresh process (the
//! program starts itself again per part), so that one part's freed memory
//! does not hide the next one's growth.

use std::process::Command;

use k8s_openapi::api::core::v1::Node;
use kube::runtime::reflector;
use kube::runtime::watcher::Event;
use mcm_provider_aws::api::machine::Machine;
use mcm_provider_aws::controller::cached_machine::CachedMachine;
use mcm_provider_aws::controller::caches::trim_machine;
use mcm_provider_aws::controller::index::Index;
use mcm_provider_aws::controller::nodes::{Nodes, trim_node};
use serde_json::{Value, json};

/// The integration tests' real-sized Node, shared by path.
#[path = "../tests/integration/support/real_node.rs"]
mod fixture;

const PARTS: &[&str] = &[
    "nodes-as-objects",
    "nodes-cache",
    "machines-as-objects",
    "machines",
    "index",
];

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    match args.next() {
        Some(part) => measure(n, &part),
        None => {
            let me = std::env::current_exe().expect("own path");
            for part in PARTS {
                let status = Command::new(&me)
                    .args([n.to_string(), part.to_string()])
                    .status()
                    .expect("run a part");
                assert!(status.success(), "part {part} failed");
            }
        }
    }
}

fn measure(n: usize, part: &str) {
    let mut kept_cached: Vec<CachedMachine> = Vec::new();
    if part == "index" {
        kept_cached = (0..n)
            .map(|i| {
                let (name, instance) = names(i);
                let node_json = real_node(&name, &instance, i);
                let m = running_machine(i, &name, &instance, &node_json);
                serde_json::from_value::<Machine>(m).unwrap().into()
            })
            .collect();
    }
    let before = rss_kib();
    let nodes = Nodes::default();
    let machine_index = Index::new();
    let mut kept_nodes: Vec<Node> = Vec::new();
    let mut kept_machines: Vec<Machine> = Vec::new();
    let (machines, mut machine_writer) = reflector::store::<CachedMachine>();
    for i in 0..n {
        let (name, instance) = names(i);
        let node_json = real_node(&name, &instance, i);
        match part {
            "nodes-as-objects" => {
                let mut node: Node = serde_json::from_value(node_json).unwrap();
                trim_node(&mut node);
                kept_nodes.push(node);
            }
            "nodes-cache" => {
                nodes.apply(Event::Apply(serde_json::from_value(node_json).unwrap()));
            }
            "machines-as-objects" => {
                let bytes =
                    serde_json::to_vec(&running_machine(i, &name, &instance, &node_json)).unwrap();
                let mut m: Machine = serde_json::from_slice(&bytes).unwrap();
                trim_machine(&mut m);
                kept_machines.push(m);
            }
            "machines" => {
                let bytes =
                    serde_json::to_vec(&running_machine(i, &name, &instance, &node_json)).unwrap();
                let m: Machine = serde_json::from_slice(&bytes).unwrap();
                machine_writer.apply_watcher_event(&Event::Apply(m.into()));
            }
            "index" => {
                // The index's own cost: the Machines it refers to were
                // made before the count started (the store pays for them).
                let m = kept_cached.get(i).expect("made above");
                machine_index.observe(&Event::Apply(m.clone()));
            }
            other => panic!("unknown part {other}; one of {PARTS:?}"),
        }
    }
    let grown = rss_kib().saturating_sub(before);
    println!(
        "FOOTPRINT {part}: {n} objects, {:.1} MiB, {:.0} bytes each",
        grown as f64 / 1024.0,
        grown as f64 * 1024.0 / n as f64
    );
    std::hint::black_box((
        &nodes,
        &machine_index,
        &kept_nodes,
        &kept_machines,
        &machines,
        &machine_writer,
    ));
}

/// Node name and instance ID of the `i`th pair.
fn names(i: usize) -> (String, String) {
    let name = format!(
        "ip-10-250-{}-{}.eu-west-1.compute.internal",
        i / 256,
        i % 256
    );
    (name, format!("i-{i:017x}"))
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .expect("/proc/self/status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// A real-sized Node, with what the API server adds (uid,
/// resourceVersion, managedFields).
fn real_node(name: &str, instance: &str, i: usize) -> Value {
    let mut node = fixture::real_node(name, instance, i, "eu-west-1", "eu-west-1a");
    let meta = node["metadata"].as_object_mut().unwrap();
    meta.insert(
        "uid".into(),
        json!(format!("{i:08x}-aaaa-bbbb-cccc-{i:012x}")),
    );
    meta.insert("resourceVersion".into(), json!(format!("{}", 100_000 + i)));
    meta.insert("creationTimestamp".into(), json!("2026-12-01T09:00:00Z"));
    meta.insert(
        "managedFields".into(),
        json!([{"manager": "kubelet", "operation": "Update", "apiVersion": "v1",
                "time": "2026-12-01T09:00:00Z", "fieldsType": "FieldsV1",
                "fieldsV1": {"f:status": {"f:conditions": {}}}}]),
    );
    node
}

/// A Machine of a MachineSet as the operator leaves it once Running: node
/// label, launch record, finalizer, owner, the Node's conditions and
/// addresses copied into its status plus the operator's own conditions.
fn running_machine(i: usize, node: &str, instance: &str, node_json: &Value) -> Value {
    let mut conditions = node_json["status"]["conditions"].clone();
    for c in conditions.as_array_mut().unwrap() {
        c.as_object_mut().unwrap().remove("lastHeartbeatTime");
    }
    for (t, reason, message) in [
        (
            "ConfigValid",
            "Valid",
            "The MachineClass and its Secrets are valid",
        ),
        (
            "TagsApplied",
            "TagsApplied",
            "The class's tags are on the instance",
        ),
    ] {
        conditions.as_array_mut().unwrap().push(json!({
            "type": t, "status": "True", "reason": reason, "message": message,
            "lastTransitionTime": "2026-12-01T09:00:00Z"}));
    }
    json!({
        "apiVersion": "machine.sapcloud.io/v1alpha1", "kind": "Machine",
        "metadata": {
            "name": format!("pool-a-7d9f8c6b5-{i:05}"), "namespace": "shoot--proj--name",
            "uid": format!("{i:08x}-1111-2222-3333-{i:012x}"),
            "resourceVersion": format!("{}", 200_000 + i), "generation": 1,
            "creationTimestamp": "2026-12-01T09:00:00Z",
            "labels": {"node": node, "name": "pool-a"},
            "annotations": {"machine.sapcloud.io/launch":
                "{\"token\":\"abcdef0123456789abcdef0123456789\",\"attempt\":0,\"started\":\"2026-12-01T09:00:00Z\"}"},
            "finalizers": ["machine.sapcloud.io/machine-controller-manager"],
            "ownerReferences": [{"apiVersion": "machine.sapcloud.io/v1alpha1", "kind": "MachineSet",
                                 "name": "pool-a-7d9f8c6b5", "uid": "99999999-1111-2222-3333-444444444444",
                                 "controller": true, "blockOwnerDeletion": true}]
        },
        "spec": {
            "class": {"kind": "MachineClass", "name": "pool-a-7d9f8"},
            "providerID": format!("aws:///eu-west-1/{instance}"),
            "nodeTemplate": {"metadata": {"labels": {"worker.gardener.cloud/pool": "pool-a"}}},
            "drainTimeout": "2h", "healthTimeout": "10m", "creationTimeout": "20m"
        },
        "status": {
            "node": node, "addresses": node_json["status"]["addresses"].clone(),
            "conditions": conditions,
            "lastOperation": {"description": "Machine is running", "lastUpdateTime": "2026-12-01T09:00:00Z",
                              "state": "Successful", "type": "Create"},
            "currentStatus": {"phase": "Running", "lastUpdateTime": "2026-12-01T09:00:00Z"},
            "observedGeneration": 1
        }
    })
}
