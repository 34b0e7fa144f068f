//! Machine health through the Node: Running → Unknown when the node is
//! unhealthy → Failed after the (per-machine) health timeout; recovery before
//! it; an instance terminated by EC2 is reported at once; an outage replaces
//! one machine of a deployment at a time; `disableHealthTimeout` is honoured.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use kube::ResourceExt;
use kube::api::{Patch, PatchParams};
use mcm_provider_aws::api::machine::{Machine, NODE_LABEL};
use mcm_provider_aws::api::shared::MachinePhase;
use serde_json::json;

use crate::support::fleet::{apply_deployment, is_running, pool, wait_rolled_out};
use crate::support::scenario::Scenario;

const MINUTE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn unhealthy_node_makes_the_machine_unknown_then_failed() {
    let s = Scenario::start("health").await;
    s.create_machine("h1").await;
    s.create_machine("h2").await;
    // h1 gets a short health timeout of its own; h2 keeps the 10m default.
    let short = serde_json::json!({"spec": {"healthTimeout": "6s"}});
    s.machines()
        .patch("h1", &PatchParams::default(), &Patch::Merge(&short))
        .await
        .unwrap();
    let h1 = s.wait_phase("h1", MachinePhase::Running, 2 * MINUTE).await;
    let h2 = s.wait_phase("h2", MachinePhase::Running, 2 * MINUTE).await;

    let node1 = h1.labels()[NODE_LABEL].clone();
    let node2 = h2.labels()[NODE_LABEL].clone();
    s.kubelet.set_ready(&node1, false);
    s.kubelet.set_ready(&node2, false);
    let unknown = s.wait_phase("h1", MachinePhase::Unknown, MINUTE).await;
    assert!(unknown.status.unwrap().current_status.timeout_active);
    s.wait_phase("h2", MachinePhase::Unknown, MINUTE).await;

    // h2 recovers before its timeout; h1 does not and fails.
    s.kubelet.set_ready(&node2, true);
    s.wait_phase("h2", MachinePhase::Running, MINUTE).await;
    let failed = s.wait_phase("h1", MachinePhase::Failed, MINUTE).await;
    let op = failed.status.unwrap().last_operation;
    assert!(op.description.contains("health timeout of 6s"), "{op:?}");
    let events = s.events_of("h1").await;
    assert!(
        events.iter().any(|e| e.starts_with("Warning Unhealthy")),
        "{events:?}"
    );
    assert!(
        events.iter().any(|e| e.starts_with("Warning Failed")),
        "{events:?}"
    );
}

#[tokio::test]
async fn instance_terminated_by_ec2_is_reported_at_once() {
    let s = Scenario::start("spot").await;
    s.create_machine("s1").await;
    let m = s.wait_phase("s1", MachinePhase::Running, 2 * MINUTE).await;
    let id = m
        .spec
        .provider_id
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    // Behind the operator's back, like a spot interruption.
    s.ec2
        .terminate_instances()
        .instance_ids(&id)
        .send()
        .await
        .unwrap();
    // Within a few sync periods (2s in tests), far below the 10m health timeout.
    let failed = s
        .wait_phase("s1", MachinePhase::Failed, 30 * Duration::from_secs(1))
        .await;
    let op = failed.status.unwrap().last_operation;
    assert!(op.description.contains("Instance is gone"), "{op:?}");
}

/// A zone outage: every Node of a deployment of 4 goes NotReady. Sampled
/// four times a second, never more than one of its machines is Failed or being
/// deleted, while the lone unhealthy machine of another deployment is
/// replaced meanwhile (the limit is per deployment).
#[tokio::test]
async fn an_outage_replaces_one_machine_of_a_deployment_at_a_time() {
    let s = Scenario::start_with("outage", false, &["--machine-health-timeout=5s"]).await;
    apply_deployment(&s, "big", 4, json!({})).await;
    apply_deployment(&s, "small", 1, json!({})).await;
    let big = wait_rolled_out(&s, "big", 4, 3 * MINUTE).await;
    let small = wait_rolled_out(&s, "small", 1, 3 * MINUTE).await;
    let originals: BTreeSet<String> = big.iter().map(|m| m.name_any()).collect();
    let node_of = |m: &Machine| m.labels()[NODE_LABEL].clone();
    let mut down: BTreeMap<String, String> =
        big.iter().map(|m| (m.name_any(), node_of(m))).collect();
    down.insert(small[0].name_any(), node_of(&small[0]));
    for node in down.values() {
        s.kubelet.set_ready(node, false);
    }

    let started = Instant::now();
    let leaving = |m: &Machine| {
        m.metadata.deletion_timestamp.is_some()
            || matches!(
                m.phase(),
                Some(MachinePhase::Failed | MachinePhase::Terminating)
            )
    };
    let (mut worst, mut worst_at) = (0, Vec::new());
    let (mut small_failed_at, mut big_waiting_until) = (None, Duration::ZERO);
    let mut replaced_at = Vec::new();
    loop {
        let ms = pool(&s, "big").await;
        let now = started.elapsed();
        let out: Vec<&Machine> = ms.iter().filter(|m| leaving(m)).collect();
        if out.len() > worst {
            worst = out.len();
            worst_at = out.iter().map(|m| m.name_any()).collect();
        }
        if ms
            .iter()
            .any(|m| originals.contains(&m.name_any()) && m.phase() == Some(MachinePhase::Unknown))
        {
            big_waiting_until = now;
        }
        let gone = originals
            .iter()
            .filter(|n| !ms.iter().any(|m| &m.name_any() == *n))
            .count();
        if gone > replaced_at.len() {
            replaced_at.push(now);
        }
        // A node name freed by a machine on its way out may come back with a
        // new instance (EC2 reuses private IPs): that one is healthy. (A
        // replacement that never joins would hold up the others until its
        // creation timeout, as in MCM.)
        let small_now = pool(&s, "small").await;
        let present = |name: &String| {
            ms.iter()
                .chain(small_now.iter())
                .any(|m| &m.name_any() == name && !leaving(m))
        };
        for (machine, node) in down.clone() {
            if !present(&machine) {
                down.remove(&machine);
                s.kubelet.set_ready(&node, true);
            }
        }
        if small_failed_at.is_none()
            && small_now
                .iter()
                .all(|m| m.name_any() != small[0].name_any() || leaving(m))
        {
            small_failed_at = Some(now);
        }
        let fresh = ms
            .iter()
            .filter(|m| !originals.contains(&m.name_any()) && is_running(m))
            .count();
        if gone == 4 && fresh == 4 {
            break;
        }
        assert!(
            now < 4 * MINUTE,
            "the outage was not over after {now:?}: {ms:#?}\n{}",
            s.op.log()
        );
        // At least every second (the replacements here take one or two).
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!(
        "outage of 4: replaced one at a time, originals gone at {replaced_at:?}; at most {worst} Failed/deleting at once ({worst_at:?}); the other deployment's machine failed at {small_failed_at:?}"
    );
    assert!(
        worst <= 1,
        "{worst} machines out at once: {worst_at:?}\n{}",
        s.op.log()
    );
    let small_failed_at = small_failed_at.expect("the other deployment's machine was replaced");
    assert!(
        small_failed_at < big_waiting_until,
        "the other deployment's machine was replaced while this one still waited ({small_failed_at:?} vs {big_waiting_until:?})"
    );
    let replaced = wait_rolled_out(&s, "small", 1, 2 * MINUTE).await;
    assert_ne!(replaced[0].name_any(), small[0].name_any());
    let deferred = {
        let mut n = 0;
        for name in &originals {
            n += s
                .events_of(name)
                .await
                .iter()
                .filter(|e| e.starts_with("Normal ReplacementDeferred"))
                .count();
        }
        n
    };
    assert!(deferred >= 1, "the waiting machines said why");
}

/// `disableHealthTimeout: true` keeps an unhealthy machine Unknown past its
/// health timeout.
#[tokio::test]
async fn a_disabled_health_timeout_keeps_the_machine_unknown() {
    let s = Scenario::start_with("nohealth", false, &["--machine-health-timeout=3s"]).await;
    s.create_machine("keep").await;
    let patch = serde_json::json!({"spec": {"disableHealthTimeout": true}});
    s.machines()
        .patch("keep", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let m = s
        .wait_phase("keep", MachinePhase::Running, 2 * MINUTE)
        .await;
    s.kubelet.set_ready(&m.labels()[NODE_LABEL], false);
    s.wait_phase("keep", MachinePhase::Unknown, MINUTE).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let still = s.machines().get("keep").await.unwrap();
    assert_eq!(still.phase(), Some(MachinePhase::Unknown), "{}", s.op.log());
}
