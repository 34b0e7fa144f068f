//! A drain that a PodDisruptionBudget blocks: the operator keeps the
//! instance, the Node and the Pod until the drain is forced (drain timeout),
//! across a `kill -9` and restart — a restarted process decides only from
//! synced caches — and it waits on a timer, at a few API writes a minute,
//! instead of looping on its own writes.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, PostParams};
use mcm_provider_aws::api::machine::NODE_LABEL;
use mcm_provider_aws::api::shared::MachinePhase;

use crate::support::env;
use crate::support::fixtures::machine;
use crate::support::kubelet::guarded_pod_on_node;
use crate::support::metrics::{delta, kube_requests, kube_writes, sample};
use crate::support::scenario::{CLASS, Scenario};
use crate::support::wait::eventually_or;

const MINUTE: Duration = Duration::from_secs(60);
const GUARDED: &str = "guarded";

/// A Running machine `m1` with `drain_timeout`, a Pod on its Node that a
/// PodDisruptionBudget protects, and the machine deleted: returns once the
/// operator reports the blocked drain, with the Node's name and the
/// Machine's deletion timestamp (the drain timeout counts from it).
async fn blocked_drain(s: &Scenario, drain_timeout: &str) -> (String, Timestamp) {
    let mut m = machine(&s.ns, "m1", CLASS);
    m.spec.configuration.drain_timeout = Some(drain_timeout.parse().unwrap());
    s.machines()
        .create(&PostParams::default(), &m)
        .await
        .expect("create machine");
    let running = s.wait_phase("m1", MachinePhase::Running, 2 * MINUTE).await;
    let node = running
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(NODE_LABEL))
        .cloned()
        .expect("a Running machine names its node");
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
