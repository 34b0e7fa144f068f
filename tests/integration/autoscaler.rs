//! cluster-autoscaler's `mcm` provider against real components: it lowers a
//! MachineDeployment's replicas and names the machines to remove in the
//! trigger-deletion annotation (one update, as the provider writes it);
//! exactly those go and their names leave the annotation. Malformed entries
//! are skipped and reported. During a rollout the deployment's Nodes carry
//! `cluster-autoscaler.kubernetes.io/scale-down-disabled`, removed after.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};
use mcm_provider_aws::api::machine::{Machine, NODE_LABEL};
use mcm_provider_aws::api::machine_deployment::MachineDeploymentConditionType;
use mcm_provider_aws::api::shared::ConditionStatus;
use mcm_provider_aws::controller::fleet::autoscaler::{
    SCALE_DOWN_DISABLED_ANNOTATION, SCALE_DOWN_DISABLED_BY_US, TRIGGER_DELETION_ANNOTATION,
};
use mcm_provider_aws::controller::fleet::census::MACHINE_PRIORITY_ANNOTATION;
use serde_json::json;

use crate::support::fleet::{
    apply_deployment, condition_reason, deployments, revised, wait_rolled_out,
};
use crate::support::scenario::Scenario;
use crate::support::wait::eventually_or;

const MINUTE: Duration = Duration::from_secs(60);

fn names(ms: &[Machine]) -> BTreeSet<String> {
    ms.iter().map(|m| m.name_any()).collect()
}

/// What the autoscaler's `scaleDownMachineDeployment` does: one Update of
/// the MachineDeployment with the annotation and the lowered replicas.
async fn scale_down_as_the_autoscaler(s: &Scenario, name: &str, value: &str, replicas: i32) {
    let api = deployments(s);
    let mut d = api.get(name).await.unwrap();
    d.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(TRIGGER_DELETION_ANNOTATION.into(), value.into());
    d.spec.replicas = replicas;
    api.replace(name, &PostParams::default(), &d)
        .await
        .unwrap_or_else(|e| panic!("update {name} as the autoscaler: {e}"));
}

/// Waits until the deployment no longer carries the trigger-deletion
/// annotation.
async fn wait_annotation_dropped(s: &Scenario, name: &str) {
    eventually_or(
        "the trigger-deletion annotation to be dropped",
        MINUTE,
        || async {
            let d = deployments(s).get(name).await.ok()?;
            (!d.annotations().contains_key(TRIGGER_DELETION_ANNOTATION)).then_some(())
        },
        || s.op.log(),
    )
    .await;
}

#[tokio::test]
async fn the_autoscaler_removes_exactly_the_machines_it_names() {
    let mut s = Scenario::start("ca-scale").await;
    apply_deployment(&s, "web", 3, json!({})).await;
    let three = wait_rolled_out(&s, "web", 3, 3 * MINUTE).await;
    for m in &three {
        assert_eq!(
            m.annotations()
                .get(MACHINE_PRIORITY_ANNOTATION)
                .map(String::as_str),
            Some("3"),
            "MCM's default priority on every machine"
        );
    }
    let d = deployments(&s).get("web").await.unwrap();
    assert_eq!(
        condition_reason(&d, MachineDeploymentConditionType::Progressing),
        Some((ConditionStatus::True, "NewMachineSetAvailable".into())),
        "the autoscaler scales down only after this"
    );

    // The oldest machine: without the annotation the newest would go.
    let chosen = three[0].name_any();
    scale_down_as_the_autoscaler(&s, "web", &chosen, 2).await;
    let two = wait_rolled_out(&s, "web", 2, 3 * MINUTE).await;
    assert_eq!(names(&two), names(&three[1..]), "exactly {chosen} went");
    wait_annotation_dropped(&s, "web").await;

    // The newer format, the gone machine still named, and junk: the valid
    // entry is honoured, the junk skipped and reported, nothing panics.
    let next = two[0].name_any();
    let value =
        format!(",{next}~2026-03-01T10:00:00Z,{chosen},bogus~not-a-time,~2026-03-01T10:00:00Z");
    scale_down_as_the_autoscaler(&s, "web", &value, 1).await;
    let one = wait_rolled_out(&s, "web", 1, 3 * MINUTE).await;
    assert_eq!(names(&one), names(&two[1..]), "exactly {next} went");
    wait_annotation_dropped(&s, "web").await;
    let events = s.events_of("web").await;
    let warning = events
        .iter()
        .find(|e| e.starts_with("Warning InvalidTriggerDeletion"))
        .unwrap_or_else(|| panic!("no Warning for the junk: {events:?}"));
    assert!(
        warning.contains("not-a-time") && warning.contains("empty entry"),
        "{warning}"
    );
    assert!(s.op.is_running(), "the operator survived the junk");
}

/// The Nodes of pool `name` in namespace `ns` right now, by machine (EC2
/// reuses private IPs, and so node names): machine → (protected from
/// scale-down, by us).
async fn pool_nodes(client: &Client, ns: &str, name: &str) -> BTreeMap<String, (bool, bool)> {
    let nodes = Api::<Node>::all(client.clone());
    let machines = Api::<Machine>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("pool={name}")))
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    let mut out = BTreeMap::new();
    for m in machines {
        let Some(node) = m.labels().get(NODE_LABEL) else {
            continue;
        };
        if let Ok(Some(n)) = nodes.get_opt(node).await {
            let a = n.annotations();
            out.insert(
                m.name_any(),
                (
                    a.contains_key(SCALE_DOWN_DISABLED_ANNOTATION),
                    a.contains_key(SCALE_DOWN_DISABLED_BY_US),
                ),
            );
        }
    }
    out
}

#[tokio::test]
async fn nodes_are_protected_from_scale_down_only_while_a_rollout_runs() {
    let s = Scenario::start("ca-rollout").await;
    let spec = json!({
        "minReadySeconds": 3,
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
    });
    apply_deployment(&s, "web", 2, spec.clone()).await;
    wait_rolled_out(&s, "web", 2, 3 * MINUTE).await;
    let before = pool_nodes(&s.client, &s.ns, "web").await;
    assert_eq!(before.len(), 2, "{before:?}");
    assert!(
        before.values().all(|(protected, _)| !protected),
        "no rollout, no protection: {before:?}"
    );

    // Watch every Node of the pool while it rolls.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (client, ns, stop) = (s.client.clone(), s.ns.clone(), stop.clone());
        tokio::spawn(async move {
            let mut seen: BTreeMap<String, bool> = BTreeMap::new();
            while !stop.load(Ordering::SeqCst) {
                for (machine, (protected, ours)) in pool_nodes(&client, &ns, "web").await {
                    *seen.entry(machine).or_default() |= protected && ours;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            seen
        })
    };
    apply_deployment(&s, "web", 2, revised(&spec, "2")).await;
    wait_rolled_out(&s, "web", 2, 4 * MINUTE).await;
    stop.store(true, Ordering::SeqCst);
    let seen = sampler.await.unwrap();

    let old: BTreeSet<&String> = before.keys().collect();
    assert!(
        old.iter().all(|n| seen.get(*n) == Some(&true)),
        "every old machine's Node was protected during the rollout: {seen:?}\n{}",
        s.op.log()
    );
    assert!(
        seen.len() >= 4 && seen.values().all(|p| *p),
        "the new machines' Nodes too, as they joined: {seen:?}"
    );
    let after = eventually_or(
        "the protection to be removed once the rollout is complete",
        MINUTE,
        || async {
            let now = pool_nodes(&s.client, &s.ns, "web").await;
            (now.len() == 2 && now.values().all(|(p, o)| !p && !o)).then_some(now)
        },
        || s.op.log(),
    )
    .await;
    assert!(after.keys().all(|n| !old.contains(n)), "{after:?}");
    let d = deployments(&s).get("web").await.unwrap();
    assert_eq!(
        condition_reason(&d, MachineDeploymentConditionType::Progressing),
        Some((ConditionStatus::True, "NewMachineSetAvailable".into()))
    );
}
