//! Machine preservation (MCM v0.62): `node.machine.sapcloud.io/preserve`
//! on a Node or Machine, `machinePreserveTimeout`, a set's
//! `autoPreserveFailedMachineMax`, and what preserved machines mean for a
//! set's replacements and scale-down order, and recovery of a preserved
//! Failed machine.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use kube::api::Api;
use mcm_provider_aws::api::machine::{Machine, NODE_LABEL};
use mcm_provider_aws::api::shared::MachinePhase;
use serde_json::json;

use crate::support::fleet::{
    apply, apply_deployment, deployments, fleet_json, is_running, merge_patch, pool, sets,
    wait_pool, wait_rolled_out,
};
use crate::support::kubelet::{condition_status, daemonset_pod_on_node, pod_on_node};
use crate::support::scenario::Scenario;
use crate::support::wait::eventually_or;

const MINUTE: Duration = Duration::from_secs(60);
const PRESERVE: &str = "node.machine.sapcloud.io/preserve";
const SCALE_DOWN_DISABLED: &str = "cluster-autoscaler.kubernetes.io/scale-down-disabled";
const TAINT: &str = "node.machine.sapcloud.io/preserved";

fn expiry(m: &Machine) -> Option<Timestamp> {
    m.status
        .as_ref()?
        .current_status
        .preserve_expiry_time
        .timestamp()
}

fn preserved_condition(n: &Node) -> Option<String> {
    condition_status(n, "Preserved").map(str::to_string)
}

/// Applies MachineSet `name` of `replicas` machines with `extra` spec and
/// waits for them to run.
async fn running_set(
    s: &Scenario,
    name: &str,
    replicas: usize,
    extra: serde_json::Value,
) -> Vec<Machine> {
    let set = fleet_json("MachineSet", s, name, replicas as i32, extra);
    apply(&sets(s), name, &set).await;
    wait_pool(s, name, replicas, 3 * MINUTE).await
}

/// Sets the Machine's preserve annotation to `value`.
async fn preserve_machine(s: &Scenario, name: &str, value: &str) {
    merge_patch(
        &s.machines(),
        name,
        json!({"metadata": {"annotations": {PRESERVE: value}}}),
    )
    .await;
}

fn tainted(n: &Node) -> bool {
    n.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|ts| {
            ts.iter()
                .any(|t| t.key == TAINT && t.effect == "NoSchedule")
        })
}

fn protected(n: &Node) -> bool {
    n.annotations().get(SCALE_DOWN_DISABLED).map(String::as_str) == Some("true")
}

/// Waits for Machine `name` to satisfy `check` and returns it.
async fn wait_machine_until(
    s: &Scenario,
    name: &str,
    what: &str,
    timeout: Duration,
    check: impl Fn(&Machine) -> bool,
) -> Machine {
    eventually_or(
        what,
        timeout,
        || async {
            s.machines()
                .get_opt(name)
                .await
                .ok()
                .flatten()
                .filter(|m| check(m))
        },
        || s.op.log(),
    )
    .await
}

async fn wait_node_until(
    s: &Scenario,
    name: &str,
    what: &str,
    check: impl Fn(&Node) -> bool,
) -> Node {
    eventually_or(
        what,
        MINUTE,
        || async { s.node(name).await.filter(|n| check(n)) },
        || s.op.log(),
    )
    .await
}

#[tokio::test]
async fn a_failed_machine_preserved_when_failed_is_kept_replaced_and_deleted_at_expiry() {
    let s = Scenario::start_with("keep", false, &["--machine-health-timeout=5s"]).await;
    let extra = json!({"template": {"spec": {"machinePreserveTimeout": "45s"}}});
    let ms = running_set(&s, "keep", 2, extra).await;
    let name = ms[0].name_any();
    let node = ms[0].labels()[NODE_LABEL].clone();
    let nodes = Api::<Node>::all(s.client.clone());
    merge_patch(
        &nodes,
        &node,
        json!({"metadata": {"annotations": {PRESERVE: "when-failed"}}}),
    )
    .await;
    let workload = pod_on_node(&s.client, &s.ns, "workload", &node).await;
    daemonset_pod_on_node(&s.client, &s.ns, "agent", &node).await;
    s.kubelet.set_ready(&node, false);

    let failed = wait_machine_until(&s, &name, "the machine Failed and preserved", MINUTE, |m| {
        m.phase() == Some(MachinePhase::Failed) && expiry(m).is_some()
    })
    .await;
    let until = expiry(&failed).unwrap();
    let lead = until.duration_since(Timestamp::now());
    assert!(
        lead > SignedDuration::from_secs(15) && lead <= SignedDuration::from_secs(45),
        "expiry {until} is machinePreserveTimeout (45s) after the failure"
    );
    let n = wait_node_until(&s, &node, "the node tainted, protected, Preserved", |n| {
        tainted(n) && protected(n) && preserved_condition(n).as_deref() == Some("True")
    })
    .await;
    assert_eq!(
        n.annotations()
            .get("cluster-autoscaler.kubernetes.io/scale-down-disabled-by-mcm")
            .map(String::as_str),
        Some("true"),
        "marked as ours"
    );
    // Drained, DaemonSet pods stay.
    let pods = Api::<Pod>::namespaced(s.client.clone(), &s.ns);
    eventually_or(
        "the workload pod drained from the preserved node",
        MINUTE,
        || async {
            let p = pods.get_opt(&workload.name_any()).await.ok()?;
            p.is_none_or(|p| p.metadata.deletion_timestamp.is_some())
                .then_some(())
        },
        || s.op.log(),
    )
    .await;
    let left = pods.list(&Default::default()).await.unwrap().items;
    assert!(
        left.iter()
            .any(|p| p.name_any().starts_with("agent-") && p.metadata.deletion_timestamp.is_none()),
        "the DaemonSet pod stays"
    );
    // Nobody finishes pods on a NotReady node: the test does, so that the
    // deletion at expiry needs no forced drain.
    let now = kube::api::DeleteParams {
        grace_period_seconds: Some(0),
        ..Default::default()
    };
    let _ = pods.delete(&workload.name_any(), &now).await;

    // Kept, and replaced: two Running machines besides the preserved one.
    eventually_or(
        "a replacement Running beside the preserved machine",
        2 * MINUTE,
        || async {
            let ms = pool(&s, "keep").await;
            let running = ms.iter().filter(|m| is_running(m)).count();
            let kept = ms.iter().any(|m| {
                m.name_any() == name
                    && m.metadata.deletion_timestamp.is_none()
                    && m.phase() == Some(MachinePhase::Failed)
            });
            (running == 2 && kept).then_some(())
        },
        || s.op.log(),
    )
    .await;
    let status = sets(&s).get("keep").await.unwrap().status.unwrap();
    assert_eq!(status.preserved_failed_replicas, 1, "{status:?}");
    assert!(
        Timestamp::now() < until,
        "the machine was kept before its expiry"
    );

    // At expiry preservation ends, and the set deletes the machine as usual.
    let wait = Duration::try_from(until.duration_since(Timestamp::now())).unwrap_or_default();
    eventually_or(
        "the preserved machine deleted after its expiry",
        wait + 2 * MINUTE,
        || async {
            match s.machines().get_opt(&name).await.ok()? {
                Some(m) if m.metadata.deletion_timestamp.is_none() => None,
                _ => Some(()),
            }
        },
        || s.op.log(),
    )
    .await;
    assert!(Timestamp::now() >= until, "not deleted before its expiry");
    s.wait_gone(&name, 2 * MINUTE).await;
    if let Some(n) = s.node(&node).await {
        assert!(
            !tainted(&n) && !protected(&n),
            "marks gone: {:?}",
            n.metadata
        );
    }
    let ms = wait_pool(&s, "keep", 2, 2 * MINUTE).await;
    assert!(ms.iter().all(|m| m.name_any() != name));
}

#[tokio::test]
async fn preserve_now_protects_a_running_machine_and_false_undoes_it() {
    let s = Scenario::start("now").await;
    s.create_machine("p1").await;
    let m = s.wait_phase("p1", MachinePhase::Running, 2 * MINUTE).await;
    let node = m.labels()[NODE_LABEL].clone();
    preserve_machine(&s, "p1", "now").await;
    let preserved = wait_machine_until(&s, "p1", "preserveExpiryTime set", MINUTE, |m| {
        expiry(m).is_some()
    })
    .await;
    let lead = expiry(&preserved).unwrap().duration_since(Timestamp::now());
    assert!(
        lead > SignedDuration::from_hours(95),
        "the flag's 96h default: {lead}"
    );
    let n = wait_node_until(&s, &node, "the node protected and Preserved", |n| {
        protected(n) && preserved_condition(n).as_deref() == Some("True")
    })
    .await;
    assert!(!tainted(&n), "a Running machine's node is not tainted");
    assert_eq!(preserved.phase(), Some(MachinePhase::Running));
    let first = expiry(&preserved);

    // Other passes leave the expiry alone.
    s.nudge("p1").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let again = s.machines().get("p1").await.unwrap();
    assert_eq!(expiry(&again), first, "set once");

    preserve_machine(&s, "p1", "false").await;
    wait_machine_until(&s, "p1", "preserveExpiryTime cleared", MINUTE, |m| {
        expiry(m).is_none()
    })
    .await;
    let n = wait_node_until(&s, &node, "the protection gone, Preserved False", |n| {
        !protected(n) && preserved_condition(n).as_deref() == Some("False")
    })
    .await;
    assert!(
        !n.annotations()
            .contains_key("cluster-autoscaler.kubernetes.io/scale-down-disabled-by-mcm")
    );

    // A value MCM does not know is ignored, with a Warning naming it.
    preserve_machine(&s, "p1", "forever").await;
    s.wait_event("p1", "Warning InvalidPreserveValue", "\"forever\"")
        .await;
    let m = s.machines().get("p1").await.unwrap();
    assert_eq!(expiry(&m), None, "not preserved");
    assert_eq!(m.phase(), Some(MachinePhase::Running));

    // Another unknown value is another Warning, with its own note; passes
    // that change nothing add none.
    preserve_machine(&s, "p1", "sometimes").await;
    s.wait_event("p1", "Warning InvalidPreserveValue", "\"sometimes\"")
        .await;
    s.nudge("p1").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let warnings: Vec<String> = s
        .events_of("p1")
        .await
        .into_iter()
        .filter(|e| e.starts_with("Warning InvalidPreserveValue"))
        .collect();
    assert_eq!(warnings.len(), 2, "one Warning per value: {warnings:?}");
}

#[tokio::test]
async fn auto_preserve_failed_machine_max_preserves_one_of_two_failed_machines() {
    let s = Scenario::start_with("auto", false, &["--machine-health-timeout=5s"]).await;
    let extra = json!({"autoPreserveFailedMachineMax": 1,
                       "template": {"spec": {"machinePreserveTimeout": "10m"}}});
    let ms = running_set(&s, "auto", 2, extra).await;
    let originals: Vec<String> = ms.iter().map(|m| m.name_any()).collect();
    for m in &ms {
        s.kubelet.set_ready(&m.labels()[NODE_LABEL], false);
    }

    let kept = eventually_or(
        "one original auto-preserved, the other gone, two replacements Running",
        3 * MINUTE,
        || async {
            let ms = pool(&s, "auto").await;
            let originals: Vec<&Machine> = ms
                .iter()
                .filter(|m| originals.contains(&m.name_any()))
                .collect();
            let running = ms.iter().filter(|m| is_running(m)).count();
            match originals.as_slice() {
                [one]
                    if one.phase() == Some(MachinePhase::Failed)
                        && expiry(one).is_some()
                        && running == 2 =>
                {
                    Some((*one).clone())
                }
                _ => None,
            }
        },
        || s.op.log(),
    )
    .await;
    assert_eq!(
        kept.annotations().get(PRESERVE).map(String::as_str),
        Some("auto-preserved")
    );
    let status = eventually_or(
        "the set's status counts the preserved machine",
        MINUTE,
        || async {
            let st = sets(&s).get("auto").await.ok()?.status?;
            (st.auto_preserve_failed_machine_count == Some(1) && st.preserved_failed_replicas == 1)
                .then_some(st)
        },
        || s.op.log(),
    )
    .await;
    assert_eq!(status.replicas, 3, "two Running and the preserved one");
    // Exactly one: no other machine carries the annotation.
    let annotated = pool(&s, "auto")
        .await
        .iter()
        .filter(|m| m.annotations().get(PRESERVE).map(String::as_str) == Some("auto-preserved"))
        .count();
    assert_eq!(annotated, 1);
}

#[tokio::test]
async fn scale_down_removes_a_machine_that_is_not_preserved_first() {
    let s = Scenario::start("shrink").await;
    let ms = running_set(&s, "shrink", 2, json!({})).await;
    // The newest machine would go first; preserved, it goes last.
    let newest = ms[1].name_any();
    preserve_machine(&s, &newest, "now").await;
    wait_machine_until(&s, &newest, "the newest machine preserved", MINUTE, |m| {
        expiry(m).is_some()
    })
    .await;
    merge_patch(&sets(&s), "shrink", json!({"spec": {"replicas": 1}})).await;
    let left = wait_pool(&s, "shrink", 1, 2 * MINUTE).await;
    assert_eq!(left[0].name_any(), newest, "the preserved machine stays");
}

#[tokio::test]
async fn a_preserved_failed_machine_whose_node_recovers_runs_again() {
    let s = Scenario::start_with("back", false, &["--machine-health-timeout=5s"]).await;
    s.create_machine("r1").await;
    let m = s.wait_phase("r1", MachinePhase::Running, 2 * MINUTE).await;
    let node = m.labels()[NODE_LABEL].clone();
    preserve_machine(&s, "r1", "when-failed").await;
    s.kubelet.set_ready(&node, false);
    wait_machine_until(&s, "r1", "the machine Failed and preserved", MINUTE, |m| {
        m.phase() == Some(MachinePhase::Failed) && expiry(m).is_some()
    })
    .await;
    wait_node_until(&s, &node, "the node tainted", tainted).await;

    s.kubelet.set_ready(&node, true);
    let back = wait_machine_until(
        &s,
        "r1",
        "Running again, no longer preserved",
        MINUTE,
        |m| m.phase() == Some(MachinePhase::Running) && expiry(m).is_none(),
    )
    .await;
    assert_eq!(
        back.annotations().get(PRESERVE).map(String::as_str),
        Some("when-failed"),
        "kept for the next failure"
    );
    wait_node_until(
        &s,
        &node,
        "taint and protection gone, Preserved False",
        |n| !tainted(n) && !protected(n) && preserved_condition(n).as_deref() == Some("False"),
    )
    .await;
}

#[tokio::test]
async fn a_deployment_passes_its_limit_to_its_set_and_counts_preserved_machines() {
    let s = Scenario::start_with("mcd", false, &["--machine-health-timeout=5s"]).await;
    let extra = json!({"autoPreserveFailedMachineMax": 1,
                       "template": {"spec": {"machinePreserveTimeout": "10m"}}});
    apply_deployment(&s, "mcd", 1, extra).await;
    let ms = wait_rolled_out(&s, "mcd", 1, 3 * MINUTE).await;
    let original = ms[0].name_any();
    let owned = sets(&s).list(&Default::default()).await.unwrap().items;
    assert_eq!(owned.len(), 1);
    assert_eq!(owned[0].spec.auto_preserve_failed_machine_max, Some(1));
    s.kubelet.set_ready(&ms[0].labels()[NODE_LABEL], false);

    wait_machine_until(&s, &original, "the machine auto-preserved", MINUTE, |m| {
        m.phase() == Some(MachinePhase::Failed) && expiry(m).is_some()
    })
    .await;
    eventually_or(
        "the deployment counts the preserved machine beside a Running replacement",
        2 * MINUTE,
        || async {
            let st = deployments(&s).get("mcd").await.ok()?.status?;
            let running = pool(&s, "mcd")
                .await
                .iter()
                .filter(|m| is_running(m))
                .count();
            (st.preserved_failed_replicas == 1 && running == 1).then_some(())
        },
        || s.op.log(),
    )
    .await;
}
