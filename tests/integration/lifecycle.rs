//! The Machine lifecycle against real components: a Machine becomes a
//! running EC2 instance (in moto) whose Node (registered by the kubelet
//! stand-in) makes it Running; deleting it drains the Node, terminates the
//! instance, deletes the Node and releases the finalizer.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use mcm_provider_aws::api::machine::NODE_LABEL;
use mcm_provider_aws::api::shared::MachinePhase;
use mcm_provider_aws::aws::tags::{MACHINE_UID_TAG, NAME_TAG};

use crate::support::ec2::{self, REGION, tag};
use crate::support::kubelet::{daemonset_pod_on_node, pod_on_node};
use crate::support::scenario::Scenario;
use crate::support::wait::eventually_or;

const MINUTE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn machine_runs_then_drains_terminates_and_releases() {
    let s = Scenario::start("life").await;
    let created = s.create_machine("m1").await;
    let m = s.wait_phase("m1", MachinePhase::Running, 2 * MINUTE).await;

    // EC2 has exactly one instance for it, built from the class.
    let live = s.live_instances().await;
    assert_eq!(live.len(), 1, "one instance per machine: {live:?}");
    let i = &live[0];
    let id = i.instance_id().unwrap();
    assert_eq!(
        m.spec.provider_id.as_deref(),
        Some(format!("aws:///{REGION}/{id}").as_str())
    );
    assert_eq!(i.instance_type().map(|t| t.as_str()), Some("m5.large"));
    assert_eq!(tag(i, NAME_TAG), Some("m1"));
    assert_eq!(tag(i, MACHINE_UID_TAG), created.uid().as_deref());
    assert_eq!(
        tag(i, &format!("kubernetes.io/cluster/{}", s.ns)),
        Some("1")
    );
    assert_eq!(tag(i, "team"), Some("test"));
    let imds = i.metadata_options().unwrap();
    assert_eq!(imds.http_tokens().map(|t| t.as_str()), Some("required"));
    assert_eq!(imds.http_put_response_hop_limit(), Some(2));
    let volumes = s
        .ec2
        .describe_volumes()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("attachment.instance-id")
                .values(id)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let root = volumes.volumes().first().expect("a root volume");
    assert_eq!(
        (root.size(), root.volume_type().map(|t| t.as_str())),
        (Some(30), Some("gp3"))
    );

    // The Machine names its Node, which the kubelet registered under the
    // instance's private DNS name.
    let node_name = m.labels().get(NODE_LABEL).cloned().expect("node label");
    assert_eq!(Some(node_name.as_str()), i.private_dns_name());
    let status = m.status.clone().unwrap();
    assert!(
        status.last_operation.description.contains("running"),
        "{:?}",
        status.last_operation
    );
    assert!(
        s.events_of("m1")
            .await
            .iter()
            .any(|e| e.starts_with("Normal Created"))
    );

    // Workload on the node: a normal pod is evicted, a DaemonSet pod stays.
    // The app pod carries a finalizer, so the drain is held until the test
    // lets it go: that makes the order of the steps observable.
    let pods = Api::<Pod>::namespaced(s.client.clone(), &s.ns);
    pod_on_node(&s.client, &s.ns, "app", &node_name).await;
    let hold = serde_json::json!({"metadata": {"finalizers": ["test.example/hold"]}});
    pods.patch("app", &PatchParams::default(), &Patch::Merge(&hold))
        .await
        .unwrap();
    let ds_pod = daemonset_pod_on_node(&s.client, &s.ns, "agent", &node_name).await;

    s.machines()
        .delete("m1", &DeleteParams::default())
        .await
        .unwrap();
    let draining = eventually_or(
        "the machine to wait for the node's pods",
        MINUTE,
        || async {
            let m = s.machines().get_opt("m1").await.ok().flatten()?;
            let op = m.status.clone()?.last_operation;
            op.description.starts_with("Draining node").then_some(m)
        },
        || s.op.log(),
    )
    .await;
    assert_eq!(draining.phase(), Some(MachinePhase::Terminating));
    let node = s
        .node(&node_name)
        .await
        .expect("node still there while draining");
    assert_eq!(
        node.spec.and_then(|sp| sp.unschedulable),
        Some(true),
        "cordoned"
    );
    let app = pods.get("app").await.unwrap();
    assert!(
        app.metadata.deletion_timestamp.is_some(),
        "the app pod was evicted"
    );
    assert_eq!(
        s.live_instances().await.len(),
        1,
        "no termination before the drain ends"
    );

    // Let the pod go: the drain finishes, the instance is terminated, the
    // Node deleted and the Machine released.
    let release = serde_json::json!({"metadata": {"finalizers": null}});
    pods.patch("app", &PatchParams::default(), &Patch::Merge(&release))
        .await
        .unwrap();
    s.wait_gone("m1", 2 * MINUTE).await;
    assert!(
        s.live_instances().await.is_empty(),
        "the instance is terminated"
    );
    assert!(
        s.node(&node_name).await.is_none(),
        "the Node object is deleted"
    );
    let instance = ec2::instances_of_namespace(&s.ec2, &s.ns).await;
    assert!(
        instance.iter().all(|i| ec2::state(i) == "terminated"),
        "{instance:?}"
    );
    assert!(
        pods.get_opt(&ds_pod.name_any()).await.unwrap().is_some(),
        "DaemonSet pods are not evicted"
    );
}

#[tokio::test]
async fn machine_without_instance_is_released_at_once() {
    let s = Scenario::start("never").await;
    // A class that fails validation: the machine never gets an instance.
    s.apply_class("broken", |c| {
        c["providerSpec"]["tags"] = serde_json::json!({"team": "test"});
    })
    .await;
    let mut m = crate::support::fixtures::machine(&s.ns, "m0", "broken");
    m.metadata.namespace = Some(s.ns.clone());
    s.machines().create(&Default::default(), &m).await.unwrap();
    eventually_or(
        "the machine to report the invalid class",
        MINUTE,
        || async {
            let m = s.machines().get_opt("m0").await.ok().flatten()?;
            let op = m.status?.last_operation;
            op.description
                .contains("kubernetes.io/cluster/")
                .then_some(())
        },
        || s.op.log(),
    )
    .await;
    s.machines()
        .delete("m0", &DeleteParams::default())
        .await
        .unwrap();
    s.wait_gone("m0", MINUTE).await;
    assert!(s.live_instances().await.is_empty());
}

#[tokio::test]
async fn settings_ec2_takes_only_after_launch_are_applied() {
    let s = Scenario::start("postlaunch").await;
    s.apply_class(crate::support::scenario::CLASS, |c| {
        c["providerSpec"]["srcAndDstChecksEnabled"] = serde_json::json!(false);
    })
    .await;
    s.create_machine("nat").await;
    s.wait_phase("nat", MachinePhase::Running, 2 * MINUTE).await;
    // Applied once the shared instance view shows the instance running
    // (within one sync period), which may be after the Node joined.
    eventually_or(
        "the source/dest check to be disabled",
        MINUTE,
        || async {
            let live = s.live_instances().await;
            (live.len() == 1 && live[0].source_dest_check() == Some(false)).then_some(())
        },
        || s.op.log(),
    )
    .await;
    assert_eq!(s.live_instances().await.len(), 1);
}
