//! Fleets against real components: MachineSets keep their replicas (and
//! replace Failed machines), MachineDeployments scale and roll within
//! maxSurge/maxUnavailable — for a template change and for a MachineClass
//! edit — recreate, pause, and take everything with them when deleted.
//!
//! Rollouts are watched by a sampler that lists the deployment's machines
//! continuously, so the availability and surge bounds are checked at every
//! observed moment, not only at the end.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kube::ResourceExt;
use kube::api::{DeleteParams, ListParams};
use mcm_provider_aws::api::machine::Machine;
use mcm_provider_aws::api::machine_deployment::{
    MACHINE_TEMPLATE_HASH_LABEL, MachineDeploymentConditionType,
};
use mcm_provider_aws::api::shared::{ConditionStatus, MachinePhase};
use mcm_provider_aws::controller::fleet::census::MACHINE_PRIORITY_ANNOTATION;
use mcm_provider_aws::controller::fleet::drift::{CONDITION_DRIFTED, REPLACE_ON_DRIFT_ANNOTATION};
use serde_json::{Value, json};

use crate::support::ec2::{self, tag};
use crate::support::env;
use crate::support::fleet::{
    apply, apply_deployment, assert_instances_match, condition_reason, deployments, fleet_json,
    hash_of, is_running, merge_patch, pool, revised, sets, wait_pool, wait_rolled_out,
};
use crate::support::scenario::{CLASS, Scenario};
use crate::support::wait::eventually_or;

const MINUTE: Duration = Duration::from_secs(60);

/// `assert!` that shows the operator's log when it fails.
macro_rules! ensure {
    ($s:expr, $cond:expr, $($arg:tt)+) => {
        if !$cond {
            panic!("{}\n--- operator log ---\n{}", format!($($arg)+), $s.op.log());
        }
    };
}

/// A template edit that rolls a deployment: a new machine label. (The node
/// template and the machine configuration change in place, see
/// `node_template::`.)
fn rolling_edit() -> Value {
    json!({"metadata": {"labels": {"rev": "2"}}})
}

/// What the sampler saw.
#[derive(Debug, Default)]
struct Samples {
    taken: usize,
    min_running: usize,
    max_total: usize,
    /// A sample held machines of more than one MachineSet.
    mixed_sets: bool,
    /// Drifted condition messages seen.
    drift_messages: BTreeSet<String>,
    /// The machines (name, set, phase) of the sample with the fewest Running.
    at_min: Vec<String>,
    /// The machines of the sample with the most machines.
    at_max: Vec<String>,
}

fn describe(ms: &[Machine]) -> Vec<String> {
    ms.iter()
        .map(|m| {
            format!(
                "{} {:?}{}",
                m.name_any(),
                m.phase(),
                if m.metadata.deletion_timestamp.is_some() {
                    " deleting"
                } else {
                    ""
                }
            )
        })
        .collect()
}

/// Lists pool `name` continuously until stopped.
struct Sampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Samples>,
}

impl Sampler {
    fn start(s: &Scenario, name: &str) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let api = s.machines();
        let selector = format!("pool={name}");
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut samples = Samples {
                min_running: usize::MAX,
                ..Samples::default()
            };
            while !flag.load(Ordering::SeqCst) {
                if let Ok(list) = api.list(&ListParams::default().labels(&selector)).await {
                    let ms = list.items;
                    samples.taken += 1;
                    let running = ms.iter().filter(|m| is_running(m)).count();
                    if running < samples.min_running {
                        samples.min_running = running;
                        samples.at_min = describe(&ms);
                    }
                    if ms.len() > samples.max_total {
                        samples.max_total = ms.len();
                        samples.at_max = describe(&ms);
                    }
                    samples.mixed_sets |= ms.iter().map(hash_of).collect::<BTreeSet<_>>().len() > 1;
                    for m in &ms {
                        if let Some(c) = m
                            .status
                            .as_ref()
                            .and_then(|st| st.condition(CONDITION_DRIFTED))
                            && c.text.status == "True"
                        {
                            samples
                                .drift_messages
                                .insert(c.text.message.as_deref().unwrap_or_default().to_string());
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            samples
        });
        Sampler { stop, task }
    }

    async fn finish(self) -> Samples {
        self.stop.store(true, Ordering::SeqCst);
        let samples = self.task.await.expect("sampler task");
        assert!(samples.taken > 10, "too few samples: {samples:?}");
        samples
    }
}

#[tokio::test]
async fn deployment_scales_with_kubectl_and_removes_the_right_machines() {
    let s = Scenario::start("mcd-scale").await;
    apply_deployment(&s, "web", 3, json!({})).await;
    let first = wait_rolled_out(&s, "web", 3, 3 * MINUTE).await;
    let d = deployments(&s).get("web").await.unwrap();
    assert_eq!(
        condition_reason(&d, MachineDeploymentConditionType::Available),
        Some((ConditionStatus::True, "MinimumReplicasAvailable".into()))
    );
    assert_eq!(
        condition_reason(&d, MachineDeploymentConditionType::Progressing),
        Some((ConditionStatus::True, "NewMachineSetAvailable".into()))
    );
    let owned_sets = sets(&s).list(&ListParams::default()).await.unwrap().items;
    assert_eq!(owned_sets.len(), 1, "one MachineSet");
    let set = &owned_sets[0];
    assert_eq!(
        set.labels()[MACHINE_TEMPLATE_HASH_LABEL],
        hash_of(&first[0])
    );
    let set_status = set.status.clone().unwrap();
    assert_eq!(
        (
            set_status.replicas,
            set_status.ready_replicas,
            set_status.fully_labeled_replicas
        ),
        (3, 3, 3)
    );

    let (ok, out, err) = env().kubectl_run(&["scale", "mcd/web", "--replicas=5", "-n", &s.ns]);
    assert!(ok, "kubectl scale: {out}{err}");
    let five = wait_rolled_out(&s, "web", 5, 3 * MINUTE).await;
    let originals: BTreeSet<String> = first.iter().map(|m| m.name_any()).collect();
    let added: BTreeSet<String> = five
        .iter()
        .map(|m| m.name_any())
        .filter(|n| !originals.contains(n))
        .collect();
    assert_eq!(added.len(), 2, "scale-up adds machines, keeps the others");

    // The cluster-autoscaler's way of choosing: priority 1 goes first, then
    // the newest machines.
    let chosen = first[0].name_any();
    merge_patch(
        &s.machines(),
        &chosen,
        json!({"metadata": {"annotations": {MACHINE_PRIORITY_ANNOTATION: "1"}}}),
    )
    .await;
    let (ok, out, err) = env().kubectl_run(&["scale", "mcd/web", "--replicas=2", "-n", &s.ns]);
    assert!(ok, "kubectl scale: {out}{err}");
    let two = wait_rolled_out(&s, "web", 2, 3 * MINUTE).await;
    let kept: BTreeSet<String> = two.iter().map(|m| m.name_any()).collect();
    let expected: BTreeSet<String> = first[1..].iter().map(|m| m.name_any()).collect();
    assert_eq!(
        kept, expected,
        "priority 1 and the newest machines were removed"
    );
    assert_instances_match(&s, &two).await;
}

#[tokio::test]
async fn machine_set_replaces_a_failed_machine_and_scales_with_kubectl() {
    let s = Scenario::start("mcs-failed").await;
    apply(
        &sets(&s),
        "pool",
        &fleet_json("MachineSet", &s, "pool", 2, json!({})),
    )
    .await;
    let ms = wait_pool(&s, "pool", 2, 3 * MINUTE).await;
    let victim = ms[0].clone();
    let id = victim
        .spec
        .provider_id
        .as_deref()
        .and_then(|p| p.rsplit('/').next())
        .unwrap()
        .to_string();

    // The instance disappears behind the operator's back.
    s.ec2
        .terminate_instances()
        .instance_ids(&id)
        .send()
        .await
        .unwrap();
    eventually_or(
        "the machine to turn Failed or be replaced",
        MINUTE,
        || async {
            let m = s.machines().get_opt(&victim.name_any()).await.ok()?;
            match m {
                None => Some(()),
                Some(m)
                    if matches!(
                        m.phase(),
                        Some(MachinePhase::Failed | MachinePhase::Terminating)
                    ) =>
                {
                    Some(())
                }
                Some(_) => None,
            }
        },
        || s.op.log(),
    )
    .await;
    s.wait_gone(&victim.name_any(), 2 * MINUTE).await;
    let replaced = wait_pool(&s, "pool", 2, 3 * MINUTE).await;
    let names: BTreeSet<String> = replaced.iter().map(|m| m.name_any()).collect();
    assert!(!names.contains(&victim.name_any()));
    assert!(
        names.contains(&ms[1].name_any()),
        "the healthy machine stays"
    );
    let events = s.events_of("pool").await;
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("Normal SuccessfulDelete")),
        "{events:?}"
    );

    let (ok, out, err) = env().kubectl_run(&["scale", "mcs/pool", "--replicas=1", "-n", &s.ns]);
    assert!(ok, "kubectl scale: {out}{err}");
    let one = wait_pool(&s, "pool", 1, 2 * MINUTE).await;
    eventually_or(
        "the set's status to report one machine",
        MINUTE,
        || async {
            let st = sets(&s).get("pool").await.ok()?.status?;
            (st.replicas == 1 && st.ready_replicas == 1 && st.available_replicas == 1).then_some(())
        },
        || s.op.log(),
    )
    .await;
    assert_instances_match(&s, &one).await;
}

#[tokio::test]
async fn template_change_rolls_within_max_surge_and_max_unavailable() {
    let s = Scenario::start("mcd-roll").await;
    let spec = json!({
        "minReadySeconds": 2,
        "revisionHistoryLimit": 0,
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 1}},
    });
    apply_deployment(&s, "web", 3, spec.clone()).await;
    let before = wait_rolled_out(&s, "web", 3, 3 * MINUTE).await;

    let sampler = Sampler::start(&s, "web");
    apply_deployment(&s, "web", 3, revised(&spec, "2")).await;
    let after = wait_rolled_out(&s, "web", 3, 4 * MINUTE).await;
    let samples = sampler.finish().await;

    ensure!(
        s,
        samples.min_running >= 2,
        "below replicas - maxUnavailable: {samples:?}"
    );
    ensure!(
        s,
        samples.max_total <= 4,
        "above replicas + maxSurge: {samples:?}"
    );
    assert_ne!(hash_of(&before[0]), hash_of(&after[0]));
    assert!(
        after
            .iter()
            .all(|m| m.labels().get("rev").map(String::as_str) == Some("2"))
    );
    // revisionHistoryLimit 0: the old set is gone once the rollout is done.
    eventually_or(
        "the old MachineSet to be cleaned up",
        MINUTE,
        || async {
            let list = sets(&s).list(&ListParams::default()).await.ok()?;
            (list.items.len() == 1).then_some(())
        },
        || s.op.log(),
    )
    .await;
    assert_instances_match(&s, &after).await;
}

#[tokio::test]
async fn class_edit_updates_tags_in_place_and_rolls_the_instance_type() {
    let s = Scenario::start("mcd-class").await;
    let spec = json!({
        "minReadySeconds": 1,
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
    });
    apply_deployment(&s, "web", 3, spec).await;
    let before = wait_rolled_out(&s, "web", 3, 3 * MINUTE).await;
    let before_names: BTreeSet<String> = before.iter().map(|m| m.name_any()).collect();

    // A tag edit needs no new instance: the tags change in place.
    let team_ops = |c: &mut Value| c["providerSpec"]["tags"]["team"] = json!("ops");
    s.apply_class(CLASS, team_ops).await;
    eventually_or(
        "every instance to carry the new tag",
        MINUTE,
        || async {
            let live = s.live_instances().await;
            (live.len() == 3 && live.iter().all(|i| tag(i, "team") == Some("ops"))).then_some(())
        },
        || s.op.log(),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let same: BTreeSet<String> = pool(&s, "web").await.iter().map(|m| m.name_any()).collect();
    assert_eq!(same, before_names, "a tag edit rolls nothing");
    assert_eq!(
        sets(&s)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );

    // A new instance type rolls every machine, a new one first.
    let sampler = Sampler::start(&s, "web");
    s.apply_class(CLASS, |c| {
        team_ops(c);
        c["providerSpec"]["machineType"] = json!("m5.xlarge");
    })
    .await;
    let after = eventually_or(
        "every machine to be replaced",
        4 * MINUTE,
        || async {
            let ms = wait_rolled_out(&s, "web", 3, 4 * MINUTE).await;
            ms.iter()
                .all(|m| !before_names.contains(&m.name_any()))
                .then_some(ms)
        },
        || s.op.log(),
    )
    .await;
    let samples = sampler.finish().await;
    ensure!(
        s,
        samples.min_running >= 3,
        "maxUnavailable 0 was not held: {samples:?}"
    );
    ensure!(
        s,
        samples.max_total <= 4,
        "maxSurge 1 was exceeded: {samples:?}"
    );
    assert!(
        samples
            .drift_messages
            .iter()
            .any(|m| m.contains("providerSpec.machineType")),
        "the old machines said why they are replaced: {samples:?}"
    );

    let live = assert_instances_match(&s, &after).await;
    assert!(
        live.iter()
            .all(|i| i.instance_type().map(|t| t.as_str()) == Some("m5.xlarge")),
        "{live:?}"
    );
    assert!(live.iter().all(|i| tag(i, "team") == Some("ops")));
    for m in &after {
        let drifted = m
            .status
            .as_ref()
            .and_then(|st| st.condition(CONDITION_DRIFTED))
            .unwrap();
        assert_eq!(drifted.text.status, "False", "{drifted:?}");
    }
    let all = ec2::instances_of_namespace(&s.ec2, &s.ns).await;
    assert_eq!(
        all.len(),
        6,
        "three replaced, three new, none extra: {all:?}"
    );
}

#[tokio::test]
async fn recreate_deletes_every_old_machine_before_creating_new_ones() {
    let s = Scenario::start("mcd-recreate").await;
    let spec = json!({"strategy": {"type": "Recreate"}});
    apply_deployment(&s, "web", 2, spec.clone()).await;
    let before = wait_rolled_out(&s, "web", 2, 3 * MINUTE).await;

    let sampler = Sampler::start(&s, "web");
    apply_deployment(&s, "web", 2, revised(&spec, "2")).await;
    let after = wait_rolled_out(&s, "web", 2, 4 * MINUTE).await;
    let samples = sampler.finish().await;
    ensure!(
        s,
        !samples.mixed_sets,
        "old and new machines coexisted: {samples:?}"
    );
    assert_eq!(samples.min_running, 0, "Recreate goes through zero");
    assert_ne!(hash_of(&before[0]), hash_of(&after[0]));
    assert_instances_match(&s, &after).await;
}

#[tokio::test]
async fn paused_deployment_scales_but_rolls_only_when_resumed() {
    let s = Scenario::start("mcd-paused").await;
    apply_deployment(&s, "web", 2, json!({})).await;
    let before = wait_rolled_out(&s, "web", 2, 3 * MINUTE).await;
    let old_hash = hash_of(&before[0]);

    let paused = json!({
        "paused": true,
        "template": rolling_edit(),
    });
    apply_deployment(&s, "web", 3, paused).await;
    let three = wait_pool(&s, "web", 3, 3 * MINUTE).await;
    assert!(
        three.iter().all(|m| hash_of(m) == old_hash),
        "paused: scaled, not rolled"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        sets(&s)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    let d = deployments(&s).get("web").await.unwrap();
    assert_eq!(
        condition_reason(&d, MachineDeploymentConditionType::Progressing),
        Some((ConditionStatus::Unknown, "DeploymentPaused".into()))
    );

    merge_patch(&deployments(&s), "web", json!({"spec": {"paused": false}})).await;
    let after = wait_rolled_out(&s, "web", 3, 4 * MINUTE).await;
    assert!(
        after.iter().all(|m| hash_of(m) != old_hash),
        "resumed: rolled"
    );
}

#[tokio::test]
async fn in_place_update_strategy_is_reported_and_not_rolled() {
    let s = Scenario::start("mcd-inplace").await;
    let spec = json!({"strategy": {"type": "InPlaceUpdate"}});
    apply_deployment(&s, "web", 1, spec.clone()).await;
    let before = wait_pool(&s, "web", 1, 3 * MINUTE).await;
    apply_deployment(&s, "web", 1, revised(&spec, "2")).await;
    let d = eventually_or(
        "the deployment to say InPlaceUpdate is not supported",
        MINUTE,
        || async {
            let d = deployments(&s).get("web").await.ok()?;
            let observed =
                d.status.as_ref()?.observed_generation == d.metadata.generation.unwrap_or_default();
            (observed
                && condition_reason(&d, MachineDeploymentConditionType::Progressing)
                    == Some((ConditionStatus::False, "InPlaceUpdateNotSupported".into())))
            .then_some(d)
        },
        || s.op.log(),
    )
    .await;
    assert!(d.status.unwrap().conditions.iter().any(|c| {
        c.message
            .as_deref()
            .unwrap_or_default()
            .contains("RollingUpdate")
    }));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let now = wait_pool(&s, "web", 1, MINUTE).await;
    assert_eq!(now[0].name_any(), before[0].name_any(), "nothing rolled");
    let events = s.events_of("web").await;
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("Warning InPlaceUpdateNotSupported")),
        "{events:?}"
    );
}

#[tokio::test]
async fn machine_sets_replace_drifted_machines_only_when_annotated() {
    let s = Scenario::start("mcs-drift").await;
    apply(
        &sets(&s),
        "kept",
        &fleet_json("MachineSet", &s, "kept", 1, json!({})),
    )
    .await;
    let mut replaced = fleet_json("MachineSet", &s, "swap", 1, json!({}));
    replaced["metadata"]["annotations"] = json!({REPLACE_ON_DRIFT_ANNOTATION: "true"});
    apply(&sets(&s), "swap", &replaced).await;
    s.create_machine("solo").await;
    let kept = wait_pool(&s, "kept", 1, 3 * MINUTE).await;
    let swap = wait_pool(&s, "swap", 1, 3 * MINUTE).await;
    s.wait_phase("solo", MachinePhase::Running, 2 * MINUTE)
        .await;

    s.apply_class(CLASS, |c| {
        c["providerSpec"]["machineType"] = json!("m5.xlarge")
    })
    .await;
    let swapped = eventually_or(
        "the annotated set to replace its machine",
        3 * MINUTE,
        || async {
            let ms = pool(&s, "swap").await;
            (ms.len() == 1 && is_running(&ms[0]) && ms[0].name_any() != swap[0].name_any())
                .then_some(ms)
        },
        || s.op.log(),
    )
    .await;
    let drifted = |name: String| {
        let api = s.machines();
        async move {
            let m = api.get(&name).await.ok()?;
            let c = m.status?.condition(CONDITION_DRIFTED)?.clone();
            (c.text.status == "True").then_some(c.text.message.clone().unwrap_or_default())
        }
    };
    let kept_message = eventually_or(
        "the unannotated set's machine to report drift",
        MINUTE,
        || drifted(kept[0].name_any()),
        || s.op.log(),
    )
    .await;
    assert!(
        kept_message.contains(REPLACE_ON_DRIFT_ANNOTATION),
        "{kept_message}"
    );
    let solo_message = eventually_or(
        "the standalone machine to report drift",
        MINUTE,
        || drifted("solo".into()),
        || s.op.log(),
    )
    .await;
    assert!(solo_message.contains("standalone"), "{solo_message}");
    assert_eq!(
        pool(&s, "kept").await[0].name_any(),
        kept[0].name_any(),
        "not replaced"
    );

    let live = s.live_instances().await;
    let types: BTreeMap<String, String> = live
        .iter()
        .filter_map(|i| {
            Some((
                tag(i, "Name")?.to_string(),
                i.instance_type()?.as_str().to_string(),
            ))
        })
        .collect();
    assert_eq!(types[&swapped[0].name_any()], "m5.xlarge");
    assert_eq!(types[&kept[0].name_any()], "m5.large");
    assert_eq!(types["solo"], "m5.large");
    assert_eq!(
        live.len(),
        3,
        "the drifted machine's instance is gone: {types:?}"
    );
}

#[tokio::test]
async fn a_stalled_rollout_reports_the_progress_deadline_and_the_failed_machine() {
    let s = Scenario::start("mcd-stalled").await;
    // Valid for the API server and the operator, refused by EC2.
    s.apply_class("broken", |c| {
        c["providerSpec"]["ami"] = json!("ami-00000000000000bad")
    })
    .await;
    let mut d = fleet_json(
        "MachineDeployment",
        &s,
        "web",
        1,
        json!({"progressDeadlineSeconds": 5}),
    );
    d["spec"]["template"]["spec"]["class"]["name"] = json!("broken");
    apply(&deployments(&s), "web", &d).await;
    let d = eventually_or(
        "Progressing=False with ProgressDeadlineExceeded and the failed machine listed",
        2 * MINUTE,
        || async {
            let d = deployments(&s).get("web").await.ok()?;
            let stalled = condition_reason(&d, MachineDeploymentConditionType::Progressing)
                == Some((ConditionStatus::False, "ProgressDeadlineExceeded".into()));
            let listed = !d.status.as_ref()?.failed_machines.is_empty();
            (stalled && listed).then_some(d)
        },
        || s.op.log(),
    )
    .await;
    let failed = &d.status.unwrap().failed_machines[0];
    assert!(
        failed.last_operation.description.contains("InvalidAMIID"),
        "{failed:?}"
    );
    let events = s.events_of("web").await;
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("Warning ProgressDeadlineExceeded")),
        "{events:?}"
    );
    assert!(s.live_instances().await.is_empty());
}

#[tokio::test]
async fn deleting_a_deployment_removes_sets_machines_and_instances() {
    let s = Scenario::start("mcd-delete").await;
    apply_deployment(&s, "web", 2, json!({})).await;
    wait_rolled_out(&s, "web", 2, 3 * MINUTE).await;
    assert_eq!(s.live_instances().await.len(), 2);

    deployments(&s)
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    let started = Instant::now();
    eventually_or(
        "sets, machines and instances to be gone",
        3 * MINUTE,
        || async {
            let sets_left = sets(&s)
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .len();
            let machines_left = s
                .machines()
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .len();
            let instances_left = s.live_instances().await.len();
            (sets_left + machines_left + instances_left == 0).then_some(())
        },
        || s.op.log(),
    )
    .await;
    eprintln!(
        "deployment of 2 deleted completely in {:?}",
        started.elapsed()
    );
}

/// Measurement, not a test: how long a rolling replacement of 10 machines
/// (MachineClass instance type edit, maxSurge 3, maxUnavailable 0) takes in
/// this environment and which EC2 calls it costs, counted by the fault proxy
/// in front of moto. Run with `make bench`.
#[tokio::test]
#[ignore = "measurement; run with `make bench`"]
async fn bench_rolling_replacement_of_ten_machines() {
    let flags = [
        "--instance-sync-period=30s",
        "--orphan-collection-interval=15m",
    ];
    let s = Scenario::start_with("bench-roll", true, &flags).await;
    let proxy = s.proxy.as_ref().unwrap();
    let spec = json!({
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 3, "maxUnavailable": 0}},
    });
    apply_deployment(&s, "web", 10, spec).await;
    let before = wait_rolled_out(&s, "web", 10, 5 * MINUTE).await;
    let before_names: BTreeSet<String> = before.iter().map(|m| m.name_any()).collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.reset_counts();

    let sampler = Sampler::start(&s, "web");
    let started = Instant::now();
    s.apply_class(CLASS, |c| {
        c["providerSpec"]["machineType"] = json!("m5.xlarge")
    })
    .await;
    let after = eventually_or(
        "every machine to be replaced",
        10 * MINUTE,
        || async {
            let ms = wait_rolled_out(&s, "web", 10, 10 * MINUTE).await;
            ms.iter()
                .all(|m| !before_names.contains(&m.name_any()))
                .then_some(ms)
        },
        || s.op.log(),
    )
    .await;
    let rolled = started.elapsed();
    assert_instances_match(&s, &after).await;
    let settled = started.elapsed();
    let samples = sampler.finish().await;
    let calls = proxy.calls();
    let total: u64 = calls.values().sum();
    eprintln!("rolling replacement of 10 machines (maxSurge 3, maxUnavailable 0):");
    eprintln!("  all 10 new machines Running, old ones deleted: {rolled:?}");
    eprintln!("  old instances terminated as seen by EC2:        {settled:?}");
    eprintln!(
        "  min Running {} / max machines {} over {} samples",
        samples.min_running, samples.max_total, samples.taken
    );
    eprintln!("  EC2 calls: {total} in all");
    for (op, n) in &calls {
        eprintln!("    {op:<28} {n}");
    }
}
