//! A Machine's `spec.nodeTemplate` on its Node (MCM-CONTRACT §1): labels,
//! annotations and taints applied once the Node registers, kept in sync
//! when the template changes — on the Machine, or on its MachineDeployment,
//! in place, without replacing machines — and removed when removed from the
//! template, while what others put on the Node stays. No write once the
//! Node matches.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Taint};
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use mcm_provider_aws::api::machine::Machine;
use mcm_provider_aws::api::machine_deployment::MachineDeployment;
use mcm_provider_aws::api::machine_set::MachineSet;
use mcm_provider_aws::api::shared::MachinePhase;
use mcm_provider_aws::controller::node::template::LAST_APPLIED_ANNOTATION;
use serde_json::{Value, json};

use crate::support::fleet::{apply, merge_patch};
use crate::support::fleet::{fleet_json, wait_pool};
use crate::support::scenario::{CLASS, Scenario};
use crate::support::target_env;
use crate::support::wait::eventually_or;

const MINUTE: Duration = Duration::from_secs(60);

/// The Node's taints but those of Kubernetes itself (the API server taints
/// a new Node `node.kubernetes.io/not-ready`; no lifecycle controller runs
/// here to lift it), sorted.
fn taints(n: &Node) -> Vec<(String, Option<String>, String)> {
    let mut out: Vec<_> = n
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|t| !t.key.starts_with("node.kubernetes.io/"))
        .map(|t| (t.key, t.value, t.effect))
        .collect();
    out.sort();
    out
}

fn taint(key: &str, value: Option<&str>, effect: &str) -> (String, Option<String>, String) {
    (key.into(), value.map(str::to_string), effect.into())
}

/// Waits until Node `name` satisfies `ok`, and returns it.
async fn wait_node(
    s: &Scenario,
    nodes: &Api<Node>,
    name: &str,
    what: &str,
    ok: impl Fn(&Node) -> bool,
) -> Node {
    eventually_or(
        &format!("Node {name}: {what}"),
        MINUTE,
        || async {
            let n = nodes.get_opt(name).await.ok().flatten()?;
            ok(&n).then_some(n)
        },
        || s.op.log(),
    )
    .await
}

#[tokio::test]
async fn the_template_reaches_the_target_node_follows_edits_and_leaves_others_keys() {
    let target = target_env();
    let s = Scenario::start_with_target("nt-target", target).await;
    let nodes = Api::<Node>::all(target.client().await);
    let machine: Machine = serde_json::from_value(json!({
        "apiVersion": "machine.sapcloud.io/v1alpha1", "kind": "Machine",
        "metadata": {"name": "t1", "namespace": s.ns},
        "spec": {
            "class": {"kind": "MachineClass", "name": CLASS},
            "nodeTemplate": {
                "metadata": {
                    "labels": {"worker.gardener.cloud/pool": "a", "tier": "gold"},
                    "annotations": {"example.com/owner": "team-a"},
                },
                "spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]},
            },
        },
    }))
    .unwrap();
    s.machines()
        .create(&PostParams::default(), &machine)
        .await
        .unwrap();
    let m = s.wait_phase("t1", MachinePhase::Running, 2 * MINUTE).await;
    let name = m.node_name().expect("node label").to_string();

    let node = wait_node(&s, &nodes, &name, "the template applied", |n| {
        n.labels()
            .get("worker.gardener.cloud/pool")
            .map(String::as_str)
            == Some("a")
    })
    .await;
    assert_eq!(node.labels()["tier"], "gold");
    assert_eq!(
        node.labels()["kubernetes.io/hostname"],
        name,
        "the kubelet's labels stay"
    );
    assert_eq!(node.annotations()["example.com/owner"], "team-a");
    assert_eq!(
        taints(&node),
        [taint("dedicated", Some("gpu"), "NoSchedule")]
    );
    let record: Value = serde_json::from_str(&node.annotations()[LAST_APPLIED_ANNOTATION]).unwrap();
    assert_eq!(record["metadata"]["labels"]["tier"], "gold");

    // Once the Node matches, nothing writes it: three instance syncs later
    // it is the same version.
    let version = node.resource_version();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let same = nodes.get(&name).await.unwrap();
    assert_eq!(same.resource_version(), version, "no write per reconcile");

    // Someone else labels and taints the Node.
    let mut theirs = same
        .spec
        .clone()
        .unwrap_or_default()
        .taints
        .unwrap_or_default();
    theirs.push(Taint {
        key: "example.com/theirs".into(),
        effect: "NoSchedule".into(),
        ..Taint::default()
    });
    let patch = json!({
        "metadata": {"labels": {"example.com/other": "kept"}, "resourceVersion": version},
        "spec": {"taints": theirs},
    });
    nodes
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();

    // The template loses `tier` and the annotation, changes a value and a
    // taint, gains a taint.
    merge_patch(
        &s.machines(),
        "t1",
        json!({"spec": {"nodeTemplate": {
            "metadata": {"labels": {"worker.gardener.cloud/pool": "b", "tier": null}, "annotations": null},
            "spec": {"taints": [
                {"key": "dedicated", "value": "tpu", "effect": "NoSchedule"},
                {"key": "example.com/batch", "effect": "PreferNoSchedule"},
            ]},
        }}}),
    )
    .await;
    let node = wait_node(&s, &nodes, &name, "the edited template applied", |n| {
        n.labels()
            .get("worker.gardener.cloud/pool")
            .map(String::as_str)
            == Some("b")
            && !n.labels().contains_key("tier")
            && taints(n).len() == 3
    })
    .await;
    assert_eq!(
        node.labels()["example.com/other"],
        "kept",
        "others' label stays"
    );
    assert!(!node.annotations().contains_key("example.com/owner"));
    assert_eq!(
        taints(&node),
        [
            taint("dedicated", Some("tpu"), "NoSchedule"),
            taint("example.com/batch", None, "PreferNoSchedule"),
            taint("example.com/theirs", None, "NoSchedule"),
        ]
    );
    // Nor is the Node of the control cluster touched (it has none).
    assert!(s.node(&name).await.is_none());
}

#[tokio::test]
async fn a_deployment_edit_of_node_template_and_configuration_changes_machines_in_place() {
    let s = Scenario::start("nt-mcd").await;
    let deployments = Api::<MachineDeployment>::namespaced(s.client.clone(), &s.ns);
    let spec = |role: &str, taints: Value, drain: &str| {
        json!({
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {"spec": {
                "nodeTemplate": {"metadata": {"labels": {"role": role}}, "spec": {"taints": taints}},
                "drainTimeout": drain,
            }},
        })
    };
    let first = fleet_json(
        "MachineDeployment",
        &s,
        "web",
        2,
        spec("web", json!([]), "2h"),
    );
    apply(&deployments, "web", &first).await;
    let before = wait_pool(&s, "web", 2, 3 * MINUTE).await;
    let nodes = Api::<Node>::all(s.client.clone());
    for m in &before {
        let name = m.node_name().unwrap();
        wait_node(&s, &nodes, name, "role=web", |n| {
            n.labels().get("role").map(String::as_str) == Some("web")
        })
        .await;
    }

    let dedicated = json!([{"key": "dedicated", "value": "api", "effect": "NoSchedule"}]);
    let edited = fleet_json(
        "MachineDeployment",
        &s,
        "web",
        2,
        spec("api", dedicated, "30m"),
    );
    apply(&deployments, "web", &edited).await;
    for m in &before {
        let name = m.node_name().unwrap();
        let node = wait_node(&s, &nodes, name, "role=api and the taint", |n| {
            n.labels().get("role").map(String::as_str) == Some("api") && taints(n).len() == 1
        })
        .await;
        assert_eq!(
            taints(&node),
            [taint("dedicated", Some("api"), "NoSchedule")]
        );
    }
    // The same machines, of the same set, with the new configuration.
    let after = wait_pool(&s, "web", 2, MINUTE).await;
    let names = |ms: &[Machine]| ms.iter().map(|m| m.name_any()).collect::<BTreeSet<_>>();
    assert_eq!(names(&after), names(&before), "nothing was replaced");
    let sets = Api::<MachineSet>::namespaced(s.client.clone(), &s.ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    assert_eq!(sets.len(), 1, "no new MachineSet");
    eventually_or(
        "the machines to take drainTimeout 30m",
        MINUTE,
        || async {
            let ms = wait_pool(&s, "web", 2, MINUTE).await;
            ms.iter()
                .all(|m| {
                    m.spec
                        .configuration
                        .drain_timeout
                        .is_some_and(|d| d == Duration::from_secs(1800))
                })
                .then_some(())
        },
        || s.op.log(),
    )
    .await;
}
