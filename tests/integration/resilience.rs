//! The operator survives being killed at any point and a misbehaving EC2 API:
//! in the end there is exactly one instance per Machine and none for deleted
//! Machines, and the number of EC2 calls stays bounded.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams};
use kube::runtime::{WatchStreamExt, watcher};
use mcm_provider_aws::api::machine_class::MachineClass;
use mcm_provider_aws::api::shared::MachinePhase;
use mcm_provider_aws::aws::tags::MACHINE_UID_TAG;
use mcm_provider_aws::controller::class::SECRET_FINALIZER;
use mcm_provider_aws::controller::machine::FINALIZER;

use crate::support::ec2::{self, tag};
use crate::support::proxy::{Fault, ProxyBehaviour, Rule};
use crate::support::scenario::{CLASS, SECRET, Scenario};
use crate::support::wait::eventually_or;

const MINUTE: Duration = Duration::from_secs(60);

/// Instances per Machine UID among the live instances of the namespace.
async fn live_per_uid(s: &Scenario) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for i in s.live_instances().await {
        *out.entry(tag(&i, MACHINE_UID_TAG).unwrap_or("<none>").to_string())
            .or_default() += 1;
    }
    out
}

/// Exactly one live instance per Machine UID of `uids`, and none other.
async fn assert_one_instance_each(s: &Scenario, uids: &[String]) {
    let per_uid = live_per_uid(s).await;
    for uid in uids {
        assert_eq!(
            per_uid.get(uid),
            Some(&1),
            "exactly one instance for machine {uid}: {per_uid:?}"
        );
    }
    assert_eq!(
        per_uid.len(),
        uids.len(),
        "no instance without a machine: {per_uid:?}"
    );
}

/// A small deterministic pseudo-random sequence (no RNG crate needed).
fn delays(seed: u64, n: usize, max_ms: u64) -> Vec<Duration> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            Duration::from_millis((x >> 33) % max_ms)
        })
        .collect()
}

#[tokio::test]
async fn kill9_during_create_and_delete_never_duplicates_or_leaks() {
    let mut s = Scenario::start("chaos").await;
    let names = ["c1", "c2", "c3", "c4"];
    let mut uids = Vec::new();
    for n in names {
        uids.push(s.create_machine(n).await.uid().unwrap());
    }
    // Kill the operator at pseudo-random points while it creates.
    for d in delays(7, 6, 1500) {
        tokio::time::sleep(d).await;
        s.op.kill9();
        s.op.restart();
    }
    for n in names {
        s.wait_phase(n, MachinePhase::Running, 2 * MINUTE).await;
    }
    assert_one_instance_each(&s, &uids).await;

    // Delete them all and kill the operator while it drains and terminates.
    for n in names {
        s.machines()
            .delete(n, &DeleteParams::default())
            .await
            .unwrap();
    }
    for d in delays(11, 6, 1200) {
        tokio::time::sleep(d).await;
        s.op.kill9();
        s.op.restart();
    }
    for n in names {
        s.wait_gone(n, 2 * MINUTE).await;
    }
    let left = s.live_instances().await;
    assert!(left.is_empty(), "instances of deleted machines: {left:?}");
}

/// 30 machines, 30 kills: the operator is killed 15 times while it
/// launches them and 15 times while it deletes them, with EC2 behaving as
/// EC2 (ClientToken memory, a 4 s consistency window, the account's token
/// buckets) and one call in five throttled on top. Exactly one instance per
/// machine, none left after the deletion — without orphan collection.
#[tokio::test]
async fn thirty_kills_under_throttling_and_lag_leave_one_instance_per_machine() {
    let mut s = Scenario::start_with("chaos30", true, &["--orphan-collection-interval=1h"]).await;
    let proxy = s.proxy.as_ref().unwrap();
    proxy.set_behaviour(ProxyBehaviour::like_ec2());
    proxy.set_rules(vec![Rule::every(5, Fault::Throttle)]);
    let names: Vec<String> = (0..30).map(|i| format!("k{i:02}")).collect();
    let mut uids = Vec::new();
    for n in &names {
        uids.push(s.create_machine(n).await.uid().unwrap());
    }
    for d in delays(31, 15, 2500) {
        tokio::time::sleep(d).await;
        s.op.restart();
    }
    for n in &names {
        s.wait_phase(n, MachinePhase::Running, 6 * MINUTE).await;
    }
    assert_one_instance_each(&s, &uids).await;

    for n in &names {
        s.machines()
            .delete(n, &DeleteParams::default())
            .await
            .unwrap();
    }
    for d in delays(37, 15, 2000) {
        tokio::time::sleep(d).await;
        s.op.restart();
    }
    for n in &names {
        s.wait_gone(n, 6 * MINUTE).await;
    }
    let left = s.live_instances().await;
    assert!(left.is_empty(), "instances of deleted machines: {left:?}");
    let throttled: u64 = s.proxy.as_ref().unwrap().faults().values().sum();
    assert!(throttled > 0, "the proxy throttled calls");
}

#[tokio::test]
async fn converges_through_throttling_errors_resets_and_delays_with_bounded_calls() {
    let s = Scenario::start_with("faults", true, &[]).await;
    let proxy = s.proxy.as_ref().unwrap();
    proxy.set_rules(vec![
        Rule::every(4, Fault::Throttle),
        Rule::every(8, Fault::ServerError),
        Rule::every(10, Fault::Reset),
        Rule::every(5, Fault::Delay(Duration::from_millis(300))),
    ]);
    for n in ["f1", "f2"] {
        s.create_machine(n).await;
    }
    for n in ["f1", "f2"] {
        s.wait_phase(n, MachinePhase::Running, 3 * MINUTE).await;
    }
    assert_eq!(
        live_per_uid(&s).await.len(),
        2,
        "one instance per machine despite retries"
    );
    for n in ["f1", "f2"] {
        s.machines()
            .delete(n, &DeleteParams::default())
            .await
            .unwrap();
    }
    for n in ["f1", "f2"] {
        s.wait_gone(n, 3 * MINUTE).await;
    }
    assert!(s.live_instances().await.is_empty());
    let calls = proxy.calls();
    let faults = proxy.faults();
    assert!(
        faults.values().sum::<u64>() > 0,
        "faults were injected: {calls:?}"
    );
    // Two machines' lifecycles plus retries and a few orphan passes; a
    // runaway retry loop would be in the thousands.
    assert!(
        proxy.total_calls() < 400,
        "EC2 calls stay bounded: {calls:?}"
    );
    eprintln!("EC2 calls with faults, 2 machines: {calls:?}, faults: {faults:?}");
}

#[tokio::test]
async fn capacity_errors_are_reported_and_retried() {
    let s = Scenario::start_with("capacity", true, &[]).await;
    let proxy = s.proxy.as_ref().unwrap();
    proxy.set_rules(vec![Rule::on(
        "RunInstances",
        1,
        Fault::Error(500, "InsufficientInstanceCapacity"),
    )]);
    s.create_machine("cap").await;
    let m = eventually_or(
        "the capacity error in the status",
        MINUTE,
        || async {
            let m = s.machines().get_opt("cap").await.ok().flatten()?;
            let op = m.status.clone()?.last_operation;
            op.description
                .contains("InsufficientInstanceCapacity")
                .then_some(m)
        },
        || s.op.log(),
    )
    .await;
    let status = m.status.clone().unwrap();
    assert_eq!(
        status.last_operation.error_code.as_deref(),
        Some("ResourceExhausted")
    );
    assert_eq!(m.phase(), Some(MachinePhase::CrashLoopBackOff));
    // The Event follows the status write: wait for it, do not read once.
    eventually_or(
        "the Warning Event about the capacity error",
        MINUTE,
        || async {
            let events = s.events_of("cap").await;
            events
                .iter()
                .any(|e| e.starts_with("Warning") && e.contains("InsufficientInstanceCapacity"))
                .then_some(())
        },
        || s.op.log(),
    )
    .await;
    assert!(s.live_instances().await.is_empty());
    // No instance, no retry storm: resource exhaustion waits minutes.
    let runs = proxy.calls().get("RunInstances").copied().unwrap_or(0);
    assert!(
        runs <= 2,
        "RunInstances retried {runs} times within a minute"
    );

    // The user moves to another instance type (the capacity is back, too):
    // the class change releases the hold at once.
    proxy.set_rules(vec![]);
    s.apply_class(crate::support::scenario::CLASS, |c| {
        c["providerSpec"]["machineType"] = serde_json::json!("m5.xlarge");
    })
    .await;
    s.wait_phase("cap", MachinePhase::Running, MINUTE).await;
    let live = s.live_instances().await;
    assert_eq!(live.len(), 1);
    assert_eq!(
        live[0].instance_type().map(|t| t.as_str()),
        Some("m5.xlarge")
    );
    let _ = ec2::REGION;
}

/// Every update of `K` named `name` seen while `run` runs, as "missing" when
/// it lacked `finalizer` (watched, so a removal undone a moment later still
/// shows).
async fn finalizer_gaps<K, F>(api: Api<K>, name: &str, finalizer: &str, run: F) -> Vec<String>
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + Send + 'static,
    K: serde::de::DeserializeOwned,
    F: std::future::Future<Output = ()>,
{
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let finalizer = finalizer.to_string();
    let gaps = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = gaps.clone();
    let watch = tokio::spawn(async move {
        let mut events = std::pin::pin!(watcher(api, config).default_backoff().touched_objects());
        while let Some(Ok(obj)) = events.next().await {
            if !obj.finalizers().contains(&finalizer) {
                seen.lock().unwrap().push(format!(
                    "resourceVersion {:?}: finalizers {:?}",
                    obj.resource_version(),
                    obj.finalizers()
                ));
            }
        }
    });
    run.await;
    watch.abort();
    std::mem::take(&mut *gaps.lock().unwrap())
}

#[tokio::test]
async fn restarts_never_drop_class_or_secret_protection() {
    let mut s = Scenario::start("protect").await;
    s.create_machine("m1").await;
    s.wait_phase("m1", MachinePhase::Running, 2 * MINUTE).await;
    let classes = Api::<MachineClass>::namespaced(s.client.clone(), &s.ns);
    let secrets = Api::<Secret>::namespaced(s.client.clone(), &s.ns);
    eventually_or(
        "the class and its Secret to be protected",
        MINUTE,
        || async {
            let class = classes.get(CLASS).await.ok()?;
            let secret = secrets.get(SECRET).await.ok()?;
            (class.finalizers().iter().any(|f| f == FINALIZER)
                && secret.finalizers().iter().any(|f| f == SECRET_FINALIZER))
            .then_some(())
        },
        || s.op.log(),
    )
    .await;

    // Restarts, each given time to start and look at everything.
    let restarts = async {
        for _ in 0..6 {
            s.op.restart();
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
    };
    let (class_gaps, secret_gaps) = {
        let class_watch = finalizer_gaps(classes.clone(), CLASS, FINALIZER, restarts);
        let secret_watch = finalizer_gaps(
            secrets.clone(),
            SECRET,
            SECRET_FINALIZER,
            tokio::time::sleep(Duration::from_secs(19)),
        );
        tokio::join!(class_watch, secret_watch)
    };
    assert!(
        class_gaps.is_empty() && secret_gaps.is_empty(),
        "protection dropped while a Machine uses them: class {class_gaps:?}, secret {secret_gaps:?}\n{}",
        s.op.log()
    );
}
