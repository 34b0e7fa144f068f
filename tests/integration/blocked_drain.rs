//! A drain that a PodDisruptionBudget blocks: the operator keeps the
//! instance, the Node and the Pod until the drain is forced (drain timeout),
//! across a `kill -9` and restart — a restarted process decides only from
//! synced caches — and it waits on a timer, at a few API writes a minute,
//! instead of looping on its own writes. A forced drain deletes Pods with
//! their own grace period and moves on after a bounded wait; termination
//! waits, bounded, for the Node's volumes to detach.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::storage::v1::VolumeAttachment;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::WatchStreamExt;
use mcm_provider_aws::api::machine::{Machine, NODE_LABEL};
use mcm_provider_aws::api::shared::MachinePhase;

use crate::support::env;
use crate::support::fixtures::machine;
use crate::support::kubelet::{guarded_pod_on_node, lingering_pod_on_node};
use crate::support::metrics::{delta, kube_requests, kube_writes, sample};
use crate::support::scenario::{CLASS, Scenario};
use crate::support::wait::eventually_or;

const MINUTE: Duration = Duration::from_secs(60);
const GUARDED: &str = "guarded";

/// Machine `m1`, edited by `edit`, created and Running: its Node's name.
async fn running_machine(s: &Scenario, edit: impl FnOnce(&mut Machine)) -> String {
    let mut m = machine(&s.ns, "m1", CLASS);
    edit(&mut m);
    s.machines()
        .create(&PostParams::default(), &m)
        .await
        .expect("create machine");
    let running = s.wait_phase("m1", MachinePhase::Running, 2 * MINUTE).await;
    running
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(NODE_LABEL))
        .cloned()
        .expect("a Running machine names its node")
}

/// A Running machine `m1` with `drain_timeout`, a Pod on its Node that a
/// PodDisruptionBudget protects, and the machine deleted: returns once the
/// operator reports the blocked drain, with the Node's name and the
/// Machine's deletion timestamp (the drain timeout counts from it).
async fn blocked_drain(s: &Scenario, drain_timeout: &str) -> (String, Timestamp) {
    let node = running_machine(s, |m| {
        m.spec.configuration.drain_timeout = Some(drain_timeout.parse().unwrap());
    })
    .await;
    guarded_pod_on_node(&s.client, &s.ns, GUARDED, &node).await;
    s.machines()
        .delete("m1", &DeleteParams::default())
        .await
        .unwrap();
    let deleted = eventually_or(
        "the drain to report the blocked eviction",
        MINUTE,
        || async {
            let m = s.machines().get_opt("m1").await.ok().flatten()?;
            let deleted = m.metadata.deletion_timestamp.clone()?;
            let op = m.status?.last_operation;
            op.description
                .contains("blocked by a PodDisruptionBudget")
                .then_some(deleted.0)
        },
        || s.op.log(),
    )
    .await;
    (node, deleted)
}

/// Time since `t`.
fn since(t: Timestamp) -> Duration {
    Duration::try_from(Timestamp::now().duration_since(t)).unwrap_or_default()
}

/// The instance, the Node and the guarded Pod (not being deleted) all exist.
async fn everything_kept(s: &Scenario, node: &str) -> Result<(), String> {
    let live = s.live_instances().await.len();
    if live != 1 {
        return Err(format!("{live} live instances, want 1"));
    }
    if s.node(node).await.is_none() {
        return Err(format!("Node {node} deleted"));
    }
    let pod = Api::<Pod>::namespaced(s.client.clone(), &s.ns)
        .get_opt(GUARDED)
        .await
        .map_err(|e| e.to_string())?;
    match pod {
        None => Err("the guarded Pod was deleted".into()),
        Some(p) if p.metadata.deletion_timestamp.is_some() => {
            Err("the guarded Pod is being deleted".into())
        }
        Some(_) => Ok(()),
    }
}

#[tokio::test]
async fn kill9_while_a_budget_blocks_the_drain_keeps_instance_node_and_pod() {
    let mut s = Scenario::start("pdbkill").await;
    let drain_timeout = Duration::from_secs(45);
    let (node, deleted) = blocked_drain(&s, "45s").await;

    s.op.restart();
    // Until the drain timeout, whatever the restarted process sees first:
    // nothing is terminated, deleted or forced. (Checked every second; the
    // margin keeps the last checks clear of the forced drain.)
    let mut checks = 0;
    while since(deleted) < drain_timeout - Duration::from_secs(5) {
        if let Err(what) = everything_kept(&s, &node).await {
            panic!(
                "{what} {:?} after the deletion, before the drain timeout\n{}",
                since(deleted),
                s.op.log()
            );
        }
        checks += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(checks >= 15, "only {checks} checks");

    // Then the drain is forced: the Pod goes, then the instance and Node.
    let status = || {
        let (_, machine, _) =
            env().kubectl_run(&["get", "machine", "m1", "-n", &s.ns, "-o", "yaml"]);
        let (_, pods, _) = env().kubectl_run(&["get", "pods", "-n", &s.ns, "-o", "yaml"]);
        let metrics =
            s.op.http_get("/metrics")
                .map(|(_, m)| m)
                .unwrap_or_default()
                .lines()
                .filter(|l| {
                    l.starts_with("mcm_reconcile")
                        || l.starts_with("mcm_kube")
                        || l.starts_with("mcm_cloud")
                })
                .filter(|l| !l.contains("_bucket"))
                .collect::<Vec<_>>()
                .join("\n");
        format!("{machine}\n{pods}\n{metrics}\n{}", s.op.log())
    };
    eventually_or(
        "the forced drain to finish and the machine to go",
        2 * MINUTE,
        || async {
            let gone = s.machines().get_opt("m1").await.ok()?.is_none();
            gone.then_some(())
        },
        status,
    )
    .await;
    assert!(s.live_instances().await.is_empty(), "instance terminated");
    assert!(s.node(&node).await.is_none(), "Node deleted");
    assert!(
        Api::<Pod>::namespaced(s.client.clone(), &s.ns)
            .get_opt(GUARDED)
            .await
            .unwrap()
            .is_none(),
        "the forced drain removed the Pod"
    );
}

/// What one machine whose drain is blocked costs over `window`: API writes
/// (by verb and resource), all requests, and machine reconciles. Lifts the
/// block afterwards and checks the drain then finishes.
async fn cost_of_a_blocked_drain(
    prefix: &str,
    window: Duration,
) -> (BTreeMap<String, f64>, BTreeMap<String, f64>, f64) {
    let s = Scenario::start(prefix).await;
    blocked_drain(&s, "1h").await;
    // The reconciles that reported the block settle first.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let metrics = || {
        s.op.http_get("/metrics")
            .map(|(_, m)| m)
            .expect("the operator serves /metrics")
    };
    let reconciles =
        |m: &str| sample(m, "mcm_reconciles_total{controller=\"machine\"}").unwrap_or(0.0);
    let before = metrics();
    tokio::time::sleep(window).await;
    let after = metrics();
    let writes = delta(&kube_writes(&before), &kube_writes(&after));
    let requests = delta(&kube_requests(&before), &kube_requests(&after));
    let reconciled = reconciles(&after) - reconciles(&before);

    // Lift the block: the next eviction goes through and the machine goes.
    Api::<PodDisruptionBudget>::namespaced(s.client.clone(), &s.ns)
        .delete(GUARDED, &DeleteParams::default())
        .await
        .unwrap();
    s.wait_gone("m1", 2 * MINUTE).await;
    assert!(s.live_instances().await.is_empty(), "instance terminated");
    (writes, requests, reconciled)
}

#[tokio::test]
async fn a_blocked_drain_waits_on_a_timer_with_few_writes() {
    let (writes, requests, reconciles) = cost_of_a_blocked_drain("pdbquiet", MINUTE).await;
    let total: f64 = writes.values().sum();
    // One eviction every 30 s (two, or three at the window's edges), no
    // status write, no cordon again: the machine is not woken by its own
    // writes.
    assert!(
        total <= 4.0,
        "{total} API writes in a minute of a blocked drain: {writes:?}"
    );
    assert!(
        writes.get("evict pods/eviction").copied().unwrap_or(0.0) >= 1.0,
        "the drain still asks for the eviction: {writes:?}"
    );
    assert!(
        reconciles <= 12.0,
        "{reconciles} machine reconciles in a minute; requests {requests:?}"
    );
}

#[tokio::test]
#[ignore = "benchmark: `make bench`"]
async fn bench_blocked_drain_api_cost() {
    let minutes = 5.0;
    let (writes, requests, reconciles) =
        cost_of_a_blocked_drain("benchpdb", Duration::from_secs(300)).await;
    let per_minute = |v: f64| v / minutes;
    println!("one machine, drain blocked by a PodDisruptionBudget for 5 minutes:");
    println!(
        "  API writes per minute: {:.1}",
        per_minute(writes.values().sum())
    );
    for (what, n) in &writes {
        println!("    {what}: {:.1}/min", per_minute(*n));
    }
    println!(
        "  API requests per minute (reads included): {:.1}",
        per_minute(requests.values().sum())
    );
    for (what, n) in &requests {
        println!("    {what}: {:.1}/min", per_minute(*n));
    }
    println!(
        "  machine reconciles per minute: {:.1}",
        per_minute(reconciles)
    );
}

#[tokio::test]
async fn a_forced_drain_deletes_pods_with_their_grace_period_and_moves_on() {
    let s = Scenario::start("linger").await;
    // Forced after one refused eviction's worth of time (20 s), not the
    // drain timeout.
    let node = running_machine(&s, |m| {
        m.spec.configuration.drain_timeout = Some("1h".parse().unwrap());
        m.spec.configuration.max_evict_retries = Some(1);
    })
    .await;
    guarded_pod_on_node(&s.client, &s.ns, GUARDED, &node).await;
    lingering_pod_on_node(&s.client, &s.ns, "slow", &node, 7).await;
    // Under the same budget, and Running: evictions of both are refused
    // until the drain is forced.
    let pods = Api::<Pod>::namespaced(s.client.clone(), &s.ns);
    let params = kube::api::PatchParams::default();
    let label = serde_json::json!({"metadata": {"labels": {"guarded-by": GUARDED}}});
    pods.patch("slow", &params, &kube::api::Patch::Merge(&label))
        .await
        .unwrap();
    let running = serde_json::json!({"status": {"phase": "Running"}});
    pods.patch_status("slow", &params, &kube::api::Patch::Merge(&running))
        .await
        .unwrap();
    s.machines()
        .delete("m1", &DeleteParams::default())
        .await
        .unwrap();

    // Forced: the Pods are deleted, each with its own grace period, not 0.
    // Watched, not polled: the kubelet stand-in finishes a deleted Pod with
    // grace 0 moments later, as a kubelet does once its containers stopped.
    let config = kube::runtime::watcher::Config::default().fields("metadata.name=slow");
    let first_deletion = tokio::time::timeout(MINUTE, async {
        let mut events =
            std::pin::pin!(kube::runtime::watcher(pods.clone(), config).applied_objects());
        while let Some(Ok(p)) = events.next().await {
            if p.metadata.deletion_timestamp.is_some() {
                return p;
            }
        }
        panic!("the Pod watch ended")
    });
    let slow = first_deletion.await.unwrap_or_else(|_| {
        panic!(
            "the forced drain did not delete the lingering Pod\n{}",
            s.op.log()
        )
    });
    assert_eq!(slow.metadata.deletion_grace_period_seconds, Some(7));
    // The Pod lingers (its finalizer): the instance waits for it, for its
    // grace period and three minutes more, then goes anyway.
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(
        s.live_instances().await.len(),
        1,
        "a lingering Pod holds the instance for a while"
    );
    s.wait_gone("m1", 5 * MINUTE).await;
    assert!(s.live_instances().await.is_empty(), "instance terminated");
    assert!(
        s.events_of("m1")
            .await
            .iter()
            .any(|e| e.starts_with("Warning DrainIncomplete")),
        "{:?}",
        s.events_of("m1").await
    );
    let release = serde_json::json!({"metadata": {"finalizers": null}});
    pods.patch("slow", &params, &kube::api::Patch::Merge(&release))
        .await
        .unwrap();
}

#[tokio::test]
async fn termination_waits_a_bounded_time_for_volumes_to_detach() {
    let s = Scenario::start_with("detach", false, &["--machine-pv-detach-timeout=20s"]).await;
    let node = running_machine(&s, |_| {}).await;
    let attachment: VolumeAttachment = serde_json::from_value(serde_json::json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "VolumeAttachment",
        "metadata": {"name": format!("csi-{}", s.ns)},
        "spec": {
            "attacher": "ebs.csi.aws.com",
            "nodeName": node,
            "source": {"persistentVolumeName": format!("pv-{}", s.ns)},
        },
    }))
    .unwrap();
    let attachments = Api::<VolumeAttachment>::all(s.client.clone());
    attachments
        .create(&PostParams::default(), &attachment)
        .await
        .unwrap();
    s.machines()
        .delete("m1", &DeleteParams::default())
        .await
        .unwrap();
    eventually_or(
        "the machine to wait for the volumes",
        MINUTE,
        || async {
            let m = s.machines().get_opt("m1").await.ok().flatten()?;
            let op = m.status?.last_operation;
            op.description.contains("to detach").then_some(())
        },
        || s.op.log(),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        s.live_instances().await.len(),
        1,
        "the instance waits while a volume is attached"
    );
    // The attachment never goes (no CSI driver here): after 20 s the
    // instance is terminated anyway, with a Warning.
    s.wait_gone("m1", 2 * MINUTE).await;
    assert!(s.live_instances().await.is_empty());
    assert!(
        s.events_of("m1")
            .await
            .iter()
            .any(|e| e.starts_with("Warning VolumesNotDetached")),
        "{:?}",
        s.events_of("m1").await
    );
    attachments
        .delete(
            &attachment.metadata.name.clone().unwrap(),
            &DeleteParams::default(),
        )
        .await
        .unwrap();
}
