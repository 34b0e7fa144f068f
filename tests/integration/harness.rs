//! The test support itself, without the operator: the kubelet stand-in
//! registers a Node the way a kubelet with cloud-provider-aws does for an
//! instance started straight in moto, finishes Pods being deleted on it, and
//! reports the Node as Unknown once the instance is terminated.

use std::time::Duration;

use aws_sdk_ec2::types::{InstanceType, ResourceType, Tag, TagSpecification};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, EvictParams};
use kube::{Client, ResourceExt};
use mcm_provider_aws::aws::tags::{MACHINE_NAME_TAG, MACHINE_UID_TAG, NAME_TAG};

use crate::support::ec2::{self, Network, ZONE};
use crate::support::kubelet::{Kubelet, daemonset_pod_on_node, pod_on_node, ready_status};
use crate::support::operator::Operator;
use crate::support::wait::eventually_or;
use crate::support::{env, namespace};

const WAIT: Duration = Duration::from_secs(30);

/// Starts an instance in moto tagged as the operator tags Machine `ns/name`.
async fn run_instance(ec2: &aws_sdk_ec2::Client, net: &Network, ns: &str, name: &str) -> String {
    let tag = |k: &str, v: &str| Tag::builder().key(k).value(v).build();
    let reservation = ec2
        .run_instances()
        .image_id(&net.ami)
        .instance_type(InstanceType::T3Micro)
        .min_count(1)
        .max_count(1)
        .subnet_id(&net.subnet_id)
        .security_group_ids(&net.security_group_id)
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Instance)
                .tags(tag(MACHINE_NAME_TAG, &format!("{ns}/{name}")))
                .tags(tag(MACHINE_UID_TAG, &format!("uid-of-{name}")))
                .tags(tag(NAME_TAG, name))
                .build(),
        )
        .send()
        .await
        .unwrap_or_else(|e| panic!("RunInstances: {e:?}"));
    reservation.instances()[0]
        .instance_id()
        .expect("instance id")
        .to_string()
}

async fn node_ready(nodes: &Api<Node>, node: &str) -> Option<String> {
    let node = nodes.get_opt(node).await.expect("get Node")?;
    ready_status(&node).map(str::to_string)
}

/// Waits until the Node's Ready condition is `want`.
async fn wait_ready(kubelet: &Kubelet, nodes: &Api<Node>, node: &str, want: &str) {
    eventually_or(
        &format!("Node {node} Ready={want}"),
        WAIT,
        || async { (node_ready(nodes, node).await.as_deref() == Some(want)).then_some(()) },
        || format!("kubelet stand-in: {:?}", kubelet.last_error()),
    )
    .await;
}

async fn wait_pod_gone(kubelet: &Kubelet, pods: &Api<Pod>, name: &str) {
    eventually_or(
        &format!("Pod {name} finished by the kubelet stand-in"),
        WAIT,
        || async {
            pods.get_opt(name)
                .await
                .expect("get Pod")
                .is_none()
                .then_some(())
        },
        || format!("kubelet stand-in: {:?}", kubelet.last_error()),
    )
    .await;
}

#[tokio::test]
async fn kubelet_stand_in_registers_nodes_finishes_pods_and_notices_termination() {
    let client: Client = env().client().await;
    let ec2 = ec2::client().await;
    let ns = namespace(&client, "harness").await;
    let net = ec2::network(&ec2).await;
    let nodes = Api::<Node>::all(client.clone());
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    let kubelet = Kubelet::start(client.clone(), ec2.clone(), &ns);

    // An instance of this namespace gets a Node, one of another namespace
    // (whose name merely starts with this one's) does not.
    let id = run_instance(&ec2, &net, &ns, "worker-0").await;
    let stranger = run_instance(&ec2, &net, &format!("{ns}-other"), "worker-0").await;
    let node = eventually_or(
        "a Node for the instance",
        WAIT,
        || async { kubelet.node_of(&id) },
        || format!("kubelet stand-in: {:?}", kubelet.last_error()),
    )
    .await;
    wait_ready(&kubelet, &nodes, &node, "True").await;
    assert_eq!(
        kubelet.nodes(),
        vec![node.clone()],
        "only this namespace's instance"
    );
    assert_eq!(kubelet.node_of(&stranger), None);

    // Named and labelled as cloud-provider-aws does, with the zone in the providerID.
    let instance = ec2::instances_of_namespace(&ec2, &ns)
        .await
        .into_iter()
        .find(|i| i.instance_id() == Some(id.as_str()))
        .expect("the instance is listed for its namespace");
    assert_eq!(ec2::state(&instance), "running");
    assert_eq!(ec2::tag(&instance, NAME_TAG), Some("worker-0"));
    assert_eq!(Some(node.as_str()), instance.private_dns_name());
    assert!(
        node.starts_with(&format!(
            "ip-{}-",
            net.cidr.split('.').take(2).collect::<Vec<_>>().join("-")
        )),
        "node {node} is named after a private IP in {}",
        net.cidr
    );
    let registered = nodes.get(&node).await.expect("get Node");
    assert_eq!(
        registered
            .spec
            .as_ref()
            .and_then(|s| s.provider_id.as_deref()),
        Some(format!("aws:///{ZONE}/{id}").as_str())
    );
    let labels = registered.labels();
    assert_eq!(
        labels
            .get("topology.kubernetes.io/zone")
            .map(String::as_str),
        Some(ZONE)
    );
    assert_eq!(
        labels
            .get("node.kubernetes.io/instance-type")
            .map(String::as_str),
        Some("t3.micro")
    );
    assert_eq!(labels.get("kubernetes.io/hostname"), Some(&node));

    // A Pod bound to the Node is not deleted by the API server alone: it waits
    // for the kubelet, which the stand-in plays.
    pod_on_node(&client, &ns, "web", &node).await;
    let deleting = pods
        .delete("web", &DeleteParams::default())
        .await
        .expect("delete Pod")
        .left()
        .expect("a bound Pod is deleted gracefully, not at once");
    assert!(deleting.metadata.deletion_timestamp.is_some());
    wait_pod_gone(&kubelet, &pods, "web").await;

    // The same for an evicted Pod, as a drain evicts them.
    pod_on_node(&client, &ns, "evictee", &node).await;
    pods.evict("evictee", &EvictParams::default())
        .await
        .expect("evict Pod");
    wait_pod_gone(&kubelet, &pods, "evictee").await;

    // A DaemonSet Pod has a real controller reference.
    let daemon = daemonset_pod_on_node(&client, &ns, "agent", &node).await;
    let owner = &daemon.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("DaemonSet", "agent", Some(true))
    );
    assert_eq!(
        daemon.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        Some(node.as_str())
    );

    // An unhealthy kubelet reports NotReady and finishes nothing until it recovers.
    kubelet.set_ready(&node, false);
    wait_ready(&kubelet, &nodes, &node, "False").await;
    pod_on_node(&client, &ns, "stuck", &node).await;
    pods.delete("stuck", &DeleteParams::default())
        .await
        .expect("delete Pod");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stuck = pods.get_opt("stuck").await.expect("get Pod");
    assert!(
        stuck.is_some_and(|p| p.metadata.deletion_timestamp.is_some()),
        "a Pod on a NotReady Node stays Terminating"
    );
    kubelet.set_ready(&node, true);
    wait_ready(&kubelet, &nodes, &node, "True").await;
    wait_pod_gone(&kubelet, &pods, "stuck").await;

    // Terminated: the kubelet is gone, so the Node turns Unknown; deleting it
    // is left to the operator.
    ec2.terminate_instances()
        .instance_ids(&id)
        .instance_ids(&stranger)
        .send()
        .await
        .expect("TerminateInstances");
    wait_ready(&kubelet, &nodes, &node, "Unknown").await;
    assert!(ec2::live_instances_of_namespace(&ec2, &ns).await.is_empty());
    assert!(nodes.get_opt(&node).await.expect("get Node").is_some());

    drop(kubelet);
    nodes
        .delete(&node, &DeleteParams::default())
        .await
        .expect("delete Node");
}

#[tokio::test]
async fn operator_runs_as_a_child_process_that_can_be_killed_and_restarted() {
    let client = env().client().await;
    let ns = namespace(&client, "harness-op").await;
    let mut operator = Operator::start(&ns, &[]);
    let first = operator.pid().expect("started");
    operator.kill9();
    assert!(!operator.is_running());
    operator.restart();
    assert_ne!(operator.pid(), Some(first), "a new process");
    let log = operator.log();
    let starts = log
        .lines()
        .filter(|l| {
            l.starts_with("=== test harness: starting") && l.ends_with(&format!("--namespace {ns}"))
        })
        .count();
    assert_eq!(starts, 2, "both runs log to one file:\n{log}");
    assert!(operator.log_path().ends_with(format!("operator-{ns}.log")));
}
