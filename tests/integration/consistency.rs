//! Where an instance lives and when it is gone, against an EC2 that behaves
//! like EC2: new instances invisible for a while (the proxy's consistency
//! window), a class moved to another Region, a class edited into something
//! invalid. No instance is leaked, none is lost, no machine fails because its
//! class changed.

use std::collections::BTreeSet;
use std::time::Duration;

use kube::ResourceExt;
use kube::api::{DeleteParams, PostParams};
use mcm_provider_aws::api::machine::Machine;
use mcm_provider_aws::api::machine::MachineCondition;
use mcm_provider_aws::api::shared::MachinePhase;
use mcm_provider_aws::aws::tags::{MACHINE_NAME_TAG, MACHINE_UID_TAG};
use mcm_provider_aws::controller::machine::CONDITION_TAGS_APPLIED;
use mcm_provider_aws::controller::machine::launch_record::{LAUNCH_ANNOTATION, LaunchRecord};
use serde_json::json;

use crate::support::ec2;
use crate::support::fixtures::machine;
use crate::support::fleet::{apply_deployment, assert_instances_match, pool, wait_rolled_out};
use crate::support::proxy::{Ec2Request, Fault, ProxyBehaviour, Rule};
use crate::support::scenario::{CLASS, SECRET, Scenario};
use crate::support::wait::eventually_or;

const MINUTE: Duration = Duration::from_secs(60);

/// 10 machines deleted 0-5 s after their RunInstances returned, while EC2
/// still hides their instances: every instance is terminated by the
/// deletion itself (no orphan collection runs), none is left.
#[tokio::test]
async fn machines_deleted_right_after_launch_leave_no_instance() {
    let s = Scenario::start_with("consistency", true, &["--orphan-collection-interval=1h"]).await;
    let proxy = s.proxy.as_ref().unwrap();
    proxy.set_behaviour(
        ProxyBehaviour::default()
            .with_client_tokens()
            .with_consistency_window(Duration::from_secs(4)),
    );
    let names: Vec<String> = (0..10).map(|i| format!("e{i}")).collect();
    for n in &names {
        s.create_machine(n).await;
    }
    // Delete each one 0-5 s after its launch returned (the providerID is
    // written from the RunInstances response).
    let mut pending: Vec<(String, Duration)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.clone(), Duration::from_millis(i as u64 * 500)))
        .collect();
    let mut launched_at = std::collections::BTreeMap::new();
    let started = tokio::time::Instant::now();
    while !pending.is_empty() {
        assert!(
            started.elapsed() < 2 * MINUTE,
            "launches did not happen: {pending:?}\n{}",
            s.op.log()
        );
        let now = tokio::time::Instant::now();
        let mut left = Vec::new();
        for (n, delay) in pending {
            let m = s.machines().get(&n).await.unwrap();
            if m.spec.provider_id.is_some() {
                let at = *launched_at.entry(n.clone()).or_insert(now);
                if now.duration_since(at) >= delay {
                    s.machines()
                        .delete(&n, &DeleteParams::default())
                        .await
                        .unwrap();
                    continue;
                }
            }
            left.push((n, delay));
        }
        pending = left;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for n in &names {
        s.wait_gone(n, 2 * MINUTE).await;
    }
    let left = s.live_instances().await;
    assert!(left.is_empty(), "instances left behind: {left:?}");
    assert!(
        proxy.instances_launched() >= 10,
        "one launch per machine went through the proxy: {}",
        proxy.instances_launched()
    );
    assert!(
        !s.op.log().contains("terminating orphaned instances"),
        "orphan collection was needed:\n{}",
        s.op.log()
    );
}

/// Moving a class to another Region neither fails its machine nor loses its
/// instance: the machine is watched and terminated where it was launched, and
/// reports the class change as drift.
#[tokio::test]
async fn a_class_moved_to_another_region_keeps_its_machines_where_they_live() {
    let s = Scenario::start("moved").await;
    let m = s.create_machine("r1").await;
    s.wait_phase("r1", MachinePhase::Running, 2 * MINUTE).await;
    let record =
        LaunchRecord::from_annotations(s.machines().get("r1").await.unwrap().annotations())
            .unwrap_or_else(|| panic!("no {LAUNCH_ANNOTATION} on {}", m.name_any()));
    assert_eq!(record.region, crate::support::ec2::REGION);

    s.apply_class(CLASS, |c| {
        c["providerSpec"]["region"] = "eu-central-1".into()
    })
    .await;
    let drifted = eventually_or(
        "the region change reported as drift",
        MINUTE,
        || async {
            let m = s.machines().get("r1").await.ok()?;
            let status = m.status.clone()?;
            status
                .conditions
                .iter()
                .any(|c| c.text.type_ == "Drifted" && c.text.status == "True")
                .then_some(m)
        },
        || s.op.log(),
    )
    .await;
    // Several instance syncs later it is still Running where it was.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let m = s.machines().get("r1").await.unwrap();
    assert_eq!(m.phase(), Some(MachinePhase::Running), "{:?}", m.status);
    assert_eq!(m.spec.provider_id, drifted.spec.provider_id);
    assert_eq!(s.live_instances().await.len(), 1);

    s.machines()
        .delete("r1", &DeleteParams::default())
        .await
        .unwrap();
    s.wait_gone("r1", 2 * MINUTE).await;
    assert!(
        s.live_instances().await.is_empty(),
        "terminated in its own Region"
    );
}

/// Pointing a class at another credentials Secret (another account's keys)
/// rolls its deployment's machines as drift, a new machine first; the old
/// instances are terminated with the keys recorded at their launch, never
/// the new ones, and none is left behind.
#[tokio::test]
async fn a_class_pointed_at_other_credentials_rolls_its_machines() {
    const OTHER_KEY: &str = "AKIAOTHERACCOUNT";
    let s = Scenario::start_with("creds", true, &[]).await;
    let proxy = s.proxy.as_ref().unwrap();
    let spec = json!({
        "minReadySeconds": 1,
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
    });
    apply_deployment(&s, "web", 2, spec).await;
    let before = wait_rolled_out(&s, "web", 2, 3 * MINUTE).await;
    let old_names: BTreeSet<String> = before.iter().map(|m| m.name_any()).collect();
    let old_key = s.cloud.class_keys.id.clone();
    assert!(proxy.calls_by(&old_key, "RunInstances") >= 2);

    s.create_secret(
        "aws-other",
        json!({"providerAccessKeyId": OTHER_KEY, "providerSecretAccessKey": "other-secret"}),
    )
    .await;
    let ns = s.ns.clone();
    s.apply_class(CLASS, |c| {
        c["credentialsSecretRef"] = json!({"name": "aws-other", "namespace": ns})
    })
    .await;
    eventually_or(
        "an old machine to report the credentials change as drift",
        MINUTE,
        || async {
            pool(&s, "web").await.into_iter().find_map(|m| {
                let c = m.status.as_ref()?.condition("Drifted")?.clone();
                let says = c.text.status == "True"
                    && c.text
                        .message
                        .as_deref()
                        .is_some_and(|m| m.contains("credentials"));
                (old_names.contains(&m.name_any()) && says).then_some(())
            })
        },
        || s.op.log(),
    )
    .await;
    let after = eventually_or(
        "every machine to be replaced",
        4 * MINUTE,
        || async {
            let ms = wait_rolled_out(&s, "web", 2, 4 * MINUTE).await;
            ms.iter()
                .all(|m| !old_names.contains(&m.name_any()))
                .then_some(ms)
        },
        || s.op.log(),
    )
    .await;
    assert_instances_match(&s, &after).await;
    let all = ec2::instances_of_namespace(&s.ec2, &s.ns).await;
    assert_eq!(all.len(), 4, "two replaced, two new, none extra: {all:?}");
    assert!(
        proxy.calls_by(OTHER_KEY, "RunInstances") >= 2,
        "the new machines were launched with the new keys: {:?}",
        proxy.stats().calls_by_key
    );
    assert!(
        proxy.calls_by(&old_key, "TerminateInstances") >= 1
            && proxy.calls_by(OTHER_KEY, "TerminateInstances") == 0,
        "the old instances were terminated with the keys that launched them: {:?}",
        proxy.stats().calls_by_key
    );
    for m in &after {
        let record = LaunchRecord::from_annotations(m.annotations()).expect("a launch record");
        assert_eq!(
            record.secrets,
            [format!("{ns}/{SECRET}"), format!("{ns}/aws-other")]
        );
    }
}

/// A class edited into something invalid leaves a running machine's status
/// alone and does not block its deletion.
#[tokio::test]
async fn an_invalid_class_edit_blocks_neither_health_nor_deletion() {
    let s = Scenario::start("badedit").await;
    s.create_machine("b1").await;
    let before = s.wait_phase("b1", MachinePhase::Running, 2 * MINUTE).await;
    // No cluster tag: the operator's validation refuses the class (the
    // schema cannot say it).
    s.apply_class(CLASS, |c| {
        let tags = c["providerSpec"]["tags"].as_object_mut().unwrap();
        tags.retain(|k, _| !k.starts_with("kubernetes.io/cluster/"));
    })
    .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let m = s.machines().get("b1").await.unwrap();
    assert_eq!(m.phase(), Some(MachinePhase::Running), "{:?}", m.status);
    assert_eq!(
        m.status.as_ref().map(|s| &s.last_operation),
        before.status.as_ref().map(|s| &s.last_operation),
        "the last good status stays"
    );
    s.machines()
        .delete("b1", &DeleteParams::default())
        .await
        .unwrap();
    s.wait_gone("b1", 2 * MINUTE).await;
    assert!(s.live_instances().await.is_empty());
}

/// A refused CreateTags (a policy without ec2:CreateTags) is reported (a
/// Warning Event, the TagsApplied condition False naming the call), the
/// machine goes on being watched, the condition clears once the tags go on,
/// and the machine can be deleted.
#[tokio::test]
async fn refused_tag_updates_are_reported_and_do_not_stop_the_machine() {
    let s = Scenario::start_with("tagdeny", true, &[]).await;
    let proxy = s.proxy.as_ref().unwrap();
    s.create_machine("t1").await;
    s.wait_phase("t1", MachinePhase::Running, 2 * MINUTE).await;
    proxy.set_rules(vec![Rule::on(
        "CreateTags",
        1,
        Fault::Error(403, "UnauthorizedOperation"),
    )]);
    s.apply_class(CLASS, |c| {
        c["providerSpec"]["tags"]["team"] = "other".into()
    })
    .await;
    eventually_or(
        "a Warning about the refused tag update",
        MINUTE,
        || async {
            s.events_of("t1").await.into_iter().find(|e| {
                e.starts_with("Warning TagsFailed") && e.contains("UnauthorizedOperation")
            })
        },
        || s.op.log(),
    )
    .await;
    let refused = s
        .wait_machine(
            "a TagsApplied=False condition naming CreateTags",
            "t1",
            |m| tags_applied(m).is_some_and(|c| c.text.status == "False"),
        )
        .await;
    let c = tags_applied(&refused).unwrap();
    assert_eq!(c.text.reason.as_deref(), Some("CreateTagsFailed"), "{c:?}");
    assert!(
        c.text
            .message
            .as_deref()
            .is_some_and(|m| m.contains("UnauthorizedOperation")),
        "{c:?}"
    );
    let m = s.machines().get("t1").await.unwrap();
    assert_eq!(m.phase(), Some(MachinePhase::Running), "{:?}", m.status);

    // The policy is fixed: the tags go on and the condition clears.
    proxy.set_rules(vec![]);
    s.nudge("t1").await;
    s.wait_machine("TagsApplied=True once CreateTags works", "t1", |m| {
        tags_applied(m).is_some_and(|c| c.text.status == "True")
    })
    .await;
    let live = s.live_instances().await;
    assert_eq!(ec2::tag(&live[0], "team"), Some("other"), "the tag is on");
    s.machines()
        .delete("t1", &DeleteParams::default())
        .await
        .unwrap();
    s.wait_gone("t1", 2 * MINUTE).await;
    assert!(s.live_instances().await.is_empty());
}

/// The TagsApplied condition of `m`, if any.
fn tags_applied(m: &Machine) -> Option<&MachineCondition> {
    m.status.as_ref()?.condition(CONDITION_TAGS_APPLIED)
}

/// A launch token EC2 already used — for other parameters, an instance since
/// terminated — does not stick a machine: the operator moves to a new
/// attempt (a new token) and launches once. After a mismatch the new attempt
/// waits out the visibility grace (5 minutes: an instance of the earlier call
/// could still show up and be adopted), so this test takes that long.
#[tokio::test]
async fn a_stale_client_token_leads_to_a_fresh_attempt() {
    let mut s = Scenario::start_with("stale", true, &[]).await;
    let proxy = s.proxy.as_ref().unwrap();
    proxy.set_behaviour(ProxyBehaviour::default().with_client_tokens());
    // The Machine exists before any operator sees it; its first token
    // (its UID) is spent on a launch with other parameters, since
    // terminated.
    s.op.kill9();
    let uid = s.create_machine("st").await.uid().unwrap();
    let spent = ec2::run_one(
        &proxy.client("testing"),
        &s.net,
        Some(&uid),
        aws_sdk_ec2::types::InstanceType::T3Micro,
    )
    .await
    .expect("the launch that spends the token");
    let spent_id = spent.instances()[0].instance_id().unwrap().to_string();
    s.ec2
        .terminate_instances()
        .instance_ids(&spent_id)
        .send()
        .await
        .unwrap();

    s.op.restart();
    let m = s.wait_phase("st", MachinePhase::Running, 8 * MINUTE).await;
    let record = LaunchRecord::from_annotations(m.annotations()).expect("a launch record");
    assert!(record.attempt >= 1, "a new attempt: {record:?}");
    let live = s.live_instances().await;
    assert_eq!(live.len(), 1, "one instance: {live:?}");
    assert_eq!(
        ec2::tag(&live[0], mcm_provider_aws::aws::tags::MACHINE_UID_TAG),
        Some(uid.as_str())
    );
    assert_ne!(live[0].instance_id(), Some(spent_id.as_str()));
}

/// The live instance tagged with Machine UID `uid`, as moto shows it.
async fn instance_of(s: &Scenario, uid: &str) -> Option<aws_sdk_ec2::types::Instance> {
    s.live_instances()
        .await
        .into_iter()
        .find(|i| ec2::tag(i, MACHINE_UID_TAG) == Some(uid))
}

/// Waits until the instance of Machine `uid` shows the source/destination
/// check off in EC2 itself.
async fn wait_source_dest_check_off(s: &Scenario, uid: &str) {
    eventually_or(
        &format!("the source/dest check off on the instance of {uid}"),
        2 * MINUTE,
        || async {
            instance_of(s, uid)
                .await
                .filter(|i| i.source_dest_check() == Some(false))
        },
        || s.op.log(),
    )
    .await;
}

/// Settings EC2 takes only after launch hold when EC2 does not know the new
/// instance yet (the consistency window on, and a ModifyInstanceAttribute
/// answered `InvalidInstanceID.NotFound`) and when the operator dies right
/// after RunInstances (the response lost, then kill -9): EC2 shows them in
/// the end. Only the source/destination check: moto 5.2.5 ignores
/// `Ipv6PrefixCount` in AssignIpv6Addresses, so IPv6 prefixes cannot be read
/// back here.
#[tokio::test]
async fn post_launch_settings_survive_an_unknown_instance_and_a_kill() {
    let mut s = Scenario::start_with("postlaunch-lag", true, &[]).await;
    s.apply_class(CLASS, |c| {
        c["providerSpec"]["srcAndDstChecksEnabled"] = false.into()
    })
    .await;
    let proxy = s.proxy.as_ref().unwrap();
    proxy.set_behaviour(
        ProxyBehaviour::default()
            .with_client_tokens()
            .with_consistency_window(ProxyBehaviour::TYPICAL_WINDOW),
    );

    // 1. EC2 does not know the instance when the setting is first applied.
    proxy.set_rules(vec![Rule::on(
        "ModifyInstanceAttribute",
        1,
        Fault::Error(400, "InvalidInstanceID.NotFound"),
    )]);
    let first = s.create_machine("pl1").await.uid().unwrap();
    wait_fault(
        &s,
        "ModifyInstanceAttribute",
        "a ModifyInstanceAttribute answered NotFound",
    )
    .await;
    proxy.set_rules(vec![]);
    s.wait_phase("pl1", MachinePhase::Running, 2 * MINUTE).await;
    wait_source_dest_check_off(&s, &first).await;
    assert!(
        proxy.stats().unseen_hidden + proxy.stats().unseen_not_found > 0,
        "the consistency window hid the new instance: {:?}",
        proxy.stats()
    );

    // 2. The operator never hears back from RunInstances and dies.
    proxy.set_rules(vec![Rule::on("RunInstances", 1, Fault::LoseResponse)]);
    let second = s.create_machine("pl2").await.uid().unwrap();
    wait_fault(&s, "RunInstances", "a RunInstances whose response is lost").await;
    s.op.kill9();
    proxy.set_rules(vec![]);
    s.op.restart();
    s.wait_phase("pl2", MachinePhase::Running, 2 * MINUTE).await;
    wait_source_dest_check_off(&s, &second).await;
    let live = s.live_instances().await;
    assert_eq!(live.len(), 2, "one instance per machine: {live:?}");
}

/// Orphan collection re-checks against the API server before terminating:
/// a Machine created after the collector took its snapshot of the Machine
/// cache (here: while the proxy holds the collector's DescribeInstances)
/// claims its instance (by providerID), and the instance survives.
#[tokio::test]
async fn orphan_collection_spares_an_instance_claimed_after_its_snapshot() {
    let s = Scenario::start_with("orphan-lag", true, &[]).await;
    let proxy = s.proxy.as_ref().unwrap();
    let cluster = (format!("kubernetes.io/cluster/{}", s.ns), "1".to_string());
    let role = ("kubernetes.io/role/node".to_string(), "1".to_string());
    let name = (MACHINE_NAME_TAG.to_string(), format!("{}/late", s.ns));
    let id = s.run_tagged_instance(vec![cluster, role, name]).await;

    // The collector's search (a `tag-key` filter) waits at the proxy: its
    // snapshot of the Machine cache is taken, without a Machine for `id`.
    let is_orphan_search = |r: &Ec2Request| {
        r.params
            .iter()
            .any(|(k, v)| k.starts_with("Filter.") && k.ends_with(".Name") && v == "tag-key")
    };
    let mut search = proxy.hold_next("DescribeInstances", is_orphan_search);
    assert!(
        search.arrived(MINUTE).await,
        "no orphan collection pass within a minute\n{}",
        s.op.log()
    );
    let mut late = machine(&s.ns, "late", CLASS);
    late.spec.provider_id = Some(format!("aws:///{}/{id}", ec2::REGION));
    s.machines()
        .create(&PostParams::default(), &late)
        .await
        .unwrap();
    search.release();

    // The next pass has started once its own search arrives: the held
    // pass is over.
    let mut next = proxy.hold_next("DescribeInstances", is_orphan_search);
    assert!(next.arrived(MINUTE).await, "a second pass\n{}", s.op.log());
    next.release();
    let live = s.live_instance_ids().await;
    assert!(
        live.contains(&id),
        "the instance of Machine late survives: {live:?}\n{}",
        s.op.log()
    );
    assert!(
        !s.op.log().contains("terminating orphaned instances"),
        "{}",
        s.op.log()
    );

    s.machines()
        .delete("late", &DeleteParams::default())
        .await
        .unwrap();
    s.wait_gone("late", 2 * MINUTE).await;
    assert!(s.live_instances().await.is_empty());
}

/// EC2 refusing a launch token because the instance launched under it was
/// terminated (`IdempotentInstanceTerminated`) moves the machine to a new
/// attempt at once (no grace: nothing of that token can still appear): one
/// instance, launched under the new token, and the machine Running.
#[tokio::test]
async fn a_token_whose_instance_was_terminated_leads_to_a_fresh_attempt_at_once() {
    let s = Scenario::start_with("stale-term", true, &[]).await;
    let proxy = s.proxy.as_ref().unwrap();
    proxy.set_behaviour(ProxyBehaviour::default().with_client_tokens());
    proxy.set_rules(vec![Rule::on(
        "RunInstances",
        1,
        Fault::Error(400, "IdempotentInstanceTerminated"),
    )]);
    let uid = s.create_machine("it").await.uid().unwrap();
    wait_fault(
        &s,
        "RunInstances",
        "a RunInstances refused as IdempotentInstanceTerminated",
    )
    .await;
    proxy.set_rules(vec![]);
    let m = s.wait_phase("it", MachinePhase::Running, 2 * MINUTE).await;
    let record = LaunchRecord::from_annotations(m.annotations()).expect("a launch record");
    assert!(record.attempt >= 1, "a new attempt: {record:?}");
    assert_eq!(record.not_before, None, "no wait after a terminated token");
    let live = s.live_instances().await;
    assert_eq!(live.len(), 1, "one instance: {live:?}");
    assert_eq!(ec2::tag(&live[0], MACHINE_UID_TAG), Some(uid.as_str()));
    assert_eq!(
        live[0].client_token(),
        Some(record.client_token(&uid).as_str()),
        "launched under the new token"
    );
}

/// Waits (at most two minutes) until the proxy injected a fault into a
/// request of `action`; `what` says which, for the timeout message.
async fn wait_fault(s: &Scenario, action: &str, what: &str) {
    let proxy = s.proxy.as_ref().unwrap();
    eventually_or(
        what,
        2 * MINUTE,
        || async { proxy.faults().get(action).copied().filter(|n| *n >= 1) },
        || s.op.log(),
    )
    .await;
}
