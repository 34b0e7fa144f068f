//! Batched launches and terminations against EC2's behaviour (ClientToken
//! memory, a consistency window, the account's token buckets): machines
//! whose launches are the same share one RunInstances, stay exactly-once
//! through kill -9 at either side of the call and through partial
//! launches, and are terminated together.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use kube::ResourceExt;
use mcm_provider_aws::api::machine::Machine;
use mcm_provider_aws::aws::tags::{LAUNCH_TAG, MACHINE_UID_TAG, NAME_TAG};
use mcm_provider_aws::controller::machine::launch_record::LaunchRecord;
use serde_json::{Value, json};

use crate::support::ec2::tag;
use crate::support::fleet::{apply_deployment, deployments, merge_patch, pool, wait_pool};
use crate::support::proxy::{Fault, ProxyBehaviour, Rule};
use crate::support::scenario::{Scenario, Setup};
use crate::support::wait::eventually_or;

const MINUTE: Duration = Duration::from_secs(60);

/// User data without placeholders: the same for every machine.
const SHARED_USER_DATA: &str = "#!/bin/sh\necho the same for every machine\n";

/// A scenario whose class's user data may be shared, behind a proxy that
/// behaves like EC2 (plus `behaviour`'s extras).
async fn scenario(prefix: &str, behaviour: ProxyBehaviour) -> Scenario {
    shared_user_data_scenario(prefix, behaviour, &[]).await
}

/// [`scenario`] with operator `flags` beyond the fast ones.
pub async fn shared_user_data_scenario(
    prefix: &str,
    behaviour: ProxyBehaviour,
    flags: &[&str],
) -> Scenario {
    let cloud = crate::support::scenario::Cloud::shared();
    let secret = json!({
        "providerAccessKeyId": cloud.class_keys.id,
        "providerSecretAccessKey": cloud.class_keys.secret,
        "userData": SHARED_USER_DATA,
    });
    let s = Scenario::start_setup(
        prefix,
        Setup {
            proxy: true,
            secret: Some(secret),
            cloud,
            flags,
            ..Setup::default()
        },
    )
    .await;
    s.proxy.as_ref().unwrap().set_behaviour(behaviour);
    s
}

fn run_instances_calls(s: &Scenario) -> u64 {
    let calls = s.proxy.as_ref().unwrap().calls();
    calls.get("RunInstances").copied().unwrap_or_default()
}

/// Every machine of `machines` has exactly one live instance, carrying its
/// UID and Name tags, and no live instance is without a machine.
async fn assert_one_tagged_instance_each(s: &Scenario, machines: &[Machine]) {
    let wanted: BTreeMap<String, String> = machines
        .iter()
        .map(|m| (m.uid().unwrap(), m.name_any()))
        .collect();
    eventually_or(
        "one live instance per machine, with its own tags",
        MINUTE,
        || async {
            let live = s.live_instances().await;
            let mut per_uid: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for i in &live {
                let uid = tag(i, MACHINE_UID_TAG).unwrap_or("<none>").to_string();
                per_uid
                    .entry(uid)
                    .or_default()
                    .push(tag(i, NAME_TAG).unwrap_or_default().to_string());
            }
            let ok = per_uid.len() == wanted.len()
                && wanted
                    .iter()
                    .all(|(uid, name)| per_uid.get(uid) == Some(&vec![name.clone()]));
            ok.then_some(())
        },
        || format!("{:?}\n{}", wanted, s.op.log()),
    )
    .await;
}

/// Waits until `n` machines of pool `name` recorded a slot in a batched
/// launch, and returns their records.
async fn wait_slots(s: &Scenario, name: &str, n: usize) -> Vec<LaunchRecord> {
    eventually_or(
        &format!("{n} machines of {name} to record their launch slot"),
        MINUTE,
        || async {
            let records: Vec<LaunchRecord> = pool(s, name)
                .await
                .iter()
                .filter_map(|m| LaunchRecord::from_annotations(m.annotations()))
                .filter(|r| r.batch.is_some())
                .collect();
            (records.len() >= n).then_some(records)
        },
        || s.op.log(),
    )
    .await
}

#[tokio::test]
async fn a_deployment_of_20_launches_in_at_most_3_calls_and_terminates_in_at_most_3() {
    let s = scenario("batch20", ProxyBehaviour::like_ec2()).await;
    apply_deployment(&s, "pool", 20, json!({})).await;
    let machines = wait_pool(&s, "pool", 20, 4 * MINUTE).await;
    let launches = run_instances_calls(&s);
    assert!(
        (1..=3).contains(&launches),
        "20 machines in {launches} RunInstances calls"
    );
    assert_one_tagged_instance_each(&s, &machines).await;
    let live = s.live_instances().await;
    let launch_tags: BTreeSet<&str> = live.iter().filter_map(|i| tag(i, LAUNCH_TAG)).collect();
    assert!(
        !launch_tags.is_empty() && launch_tags.len() as u64 <= launches,
        "instances name their launch: {launch_tags:?}"
    );

    let terminations = scale_to_zero(&s, "pool").await;
    assert!(
        (1..=3).contains(&terminations),
        "20 machines terminated in {terminations} TerminateInstances calls: {:?}",
        s.proxy.as_ref().unwrap().calls()
    );
}

/// Deleting machines does not wait for their TerminateInstances in the
/// reconcile: 40 machines deleted at once share calls although only 4
/// reconciles run at a time.
#[tokio::test]
async fn deleting_40_machines_with_4_reconciles_at_a_time_shares_terminations() {
    let s = shared_user_data_scenario(
        "batchdel40",
        ProxyBehaviour::like_ec2(),
        &["--concurrency=4"],
    )
    .await;
    apply_deployment(&s, "pool", 40, json!({})).await;
    wait_pool(&s, "pool", 40, 6 * MINUTE).await;
    let terminations = scale_to_zero(&s, "pool").await;
    // Batches bounded by the reconciles would need at least 10 calls (40 /
    // 4); 1 when the scale-down reaches every machine within one window,
    // a few more on a loaded machine, where deletions trickle in slower.
    assert!(
        (1..=6).contains(&terminations),
        "40 machines terminated in {terminations} TerminateInstances calls: {:?}",
        s.proxy.as_ref().unwrap().calls()
    );
}

/// Scales deployment `name` to 0, waits until its machines and instances
/// are gone, and returns how many TerminateInstances that took.
async fn scale_to_zero(s: &Scenario, name: &str) -> u64 {
    let proxy = s.proxy.as_ref().unwrap();
    proxy.reset_counts();
    merge_patch(&deployments(s), name, json!({"spec": {"replicas": 0}})).await;
    eventually_or(
        &format!("every machine of pool {name} to be gone"),
        3 * MINUTE,
        || async { pool(s, name).await.is_empty().then_some(()) },
        || s.op.log(),
    )
    .await;
    assert!(s.live_instances().await.is_empty());
    // The deletion of a machine's Node wakes it once more before the cache
    // shows the Machine gone; that stale copy must not be cleaned up again.
    let log = s.op.log();
    let again = log.matches("failed to remove finalizer").count();
    assert_eq!(again, 0, "{again} stale Machines cleaned up a second time");
    proxy
        .calls()
        .get("TerminateInstances")
        .copied()
        .unwrap_or_default()
}

#[tokio::test]
async fn kill9_on_either_side_of_the_batched_call_leaves_one_instance_per_machine() {
    let mut s = scenario("batchkill", ProxyBehaviour::like_ec2()).await;

    // Killed after every machine recorded its slot, before the call took
    // effect: the call is held, then dropped unanswered and unseen by EC2.
    s.proxy.as_ref().unwrap().set_rules(vec![Rule::on(
        "RunInstances",
        1,
        Fault::Hold(Duration::from_secs(5)),
    )]);
    apply_deployment(&s, "before", 6, json!({})).await;
    wait_slots(&s, "before", 6).await;
    s.op.kill9();
    s.proxy.as_ref().unwrap().set_rules(vec![]);
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(s.live_instances().await.is_empty(), "nothing launched yet");
    s.op.restart();
    let before = wait_pool(&s, "before", 6, 4 * MINUTE).await;
    assert_one_tagged_instance_each(&s, &before).await;

    // Killed while the call is under way: EC2 launches, the answer is lost.
    s.proxy.as_ref().unwrap().set_rules(vec![Rule::on(
        "RunInstances",
        1,
        Fault::Delay(Duration::from_secs(3)),
    )]);
    apply_deployment(&s, "after", 6, json!({})).await;
    wait_slots(&s, "after", 6).await;
    s.op.kill9();
    s.proxy.as_ref().unwrap().set_rules(vec![]);
    tokio::time::sleep(Duration::from_secs(4)).await;
    s.op.restart();
    let after = wait_pool(&s, "after", 6, 4 * MINUTE).await;
    let all: Vec<Machine> = before.into_iter().chain(after).collect();
    assert_one_tagged_instance_each(&s, &all).await;
}

#[tokio::test]
async fn a_partial_launch_launches_only_the_rest_under_a_new_token() {
    let s = scenario(
        "batchpart",
        ProxyBehaviour::like_ec2().with_launch_at_most(4),
    )
    .await;
    apply_deployment(&s, "pool", 10, json!({})).await;
    let machines = wait_pool(&s, "pool", 10, 4 * MINUTE).await;
    assert_one_tagged_instance_each(&s, &machines).await;
    let proxy = s.proxy.as_ref().unwrap();
    assert_eq!(proxy.instances_launched(), 10, "{:?}", proxy.stats());
    let live = s.live_instances().await;
    let launch_tags: BTreeSet<&str> = live.iter().filter_map(|i| tag(i, LAUNCH_TAG)).collect();
    assert!(
        launch_tags.len() >= 3,
        "10 machines at most 4 a call: {launch_tags:?}"
    );
}

#[tokio::test]
async fn machines_whose_user_data_is_their_own_launch_alone() {
    let s = scenario("batchmixed", ProxyBehaviour::like_ec2()).await;
    let cloud = &s.cloud;
    s.create_secret(
        "aws-named",
        json!({
            "providerAccessKeyId": cloud.class_keys.id,
            "providerSecretAccessKey": cloud.class_keys.secret,
            "userData": "#!/bin/sh\nhostnamectl set-hostname <<MACHINE_NAME>>\n",
        }),
    )
    .await;
    s.apply_class("named", |c: &mut Value| {
        c["secretRef"]["name"] = json!("aws-named");
    })
    .await;
    apply_deployment(&s, "shared", 6, json!({})).await;
    apply_deployment(
        &s,
        "own",
        3,
        json!({"template": {"spec": {"class": {"name": "named"}}}}),
    )
    .await;
    let shared = wait_pool(&s, "shared", 6, 4 * MINUTE).await;
    let own = wait_pool(&s, "own", 3, 4 * MINUTE).await;
    let all: Vec<Machine> = shared.iter().chain(&own).cloned().collect();
    assert_one_tagged_instance_each(&s, &all).await;
    let own_uids: BTreeSet<String> = own.iter().filter_map(|m| m.uid()).collect();
    let live = s.live_instances().await;
    let mut shared_launches = BTreeSet::new();
    for i in &live {
        let uid = tag(i, MACHINE_UID_TAG).unwrap_or_default();
        if own_uids.contains(uid) {
            assert_eq!(tag(i, LAUNCH_TAG), None, "launched alone: {i:?}");
        } else {
            shared_launches.insert(tag(i, LAUNCH_TAG).expect("a shared launch").to_string());
        }
    }
    assert!(shared_launches.len() <= 2, "{shared_launches:?}");
    assert!(
        run_instances_calls(&s) <= 3 + 2,
        "3 alone, the 6 others together: {:?}",
        s.proxy.as_ref().unwrap().calls()
    );
}
