//! Measurements, not tests: run with `make bench` (they are `#[ignore]`d so
//! `make test` stays fast). Each prints its numbers; nothing here asserts a
//! wall-clock limit.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{Api, DeleteParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use mcm_provider_aws::api::machine::Machine;
use mcm_provider_aws::api::shared::MachinePhase;
use mcm_provider_aws::aws::rate_limit::{BucketSpec, RequestBucket, ResourceBucket};

use crate::batch::shared_user_data_scenario;
use crate::support::fleet::{apply_deployment, deployments, merge_patch};
use crate::support::metrics::{delta, kube_requests};
use crate::support::proxy::ProxyBehaviour;
use crate::support::scenario::Scenario;

/// Flags as in production (30s instance sync, 15m orphan collection), so the
/// counts show what a real lifecycle costs.
const PRODUCTION_FLAGS: &[&str] = &[
    "--instance-sync-period=30s",
    "--orphan-collection-interval=15m",
];

#[tokio::test]
#[ignore = "measurement; run with `make bench`"]
async fn bench_ec2_calls_per_machine_lifecycle() {
    let s = Scenario::start_with("bench-calls", true, PRODUCTION_FLAGS).await;
    let proxy = s.proxy.as_ref().unwrap();
    // Let startup work (first orphan pass) settle, then count one lifecycle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.reset_counts();
    let started = Instant::now();
    s.create_machine("b1").await;
    s.wait_phase("b1", MachinePhase::Running, Duration::from_secs(120))
        .await;
    let to_running = started.elapsed();
    let create_calls = proxy.calls();
    proxy.reset_counts();
    let started = Instant::now();
    s.machines()
        .delete("b1", &DeleteParams::default())
        .await
        .unwrap();
    s.wait_gone("b1", Duration::from_secs(120)).await;
    let to_gone = started.elapsed();
    let delete_calls = proxy.calls();
    println!("BENCH lifecycle: create→Running {to_running:?}, calls {create_calls:?}");
    println!("BENCH lifecycle: delete→gone {to_gone:?}, calls {delete_calls:?}");
}

#[tokio::test]
#[ignore = "measurement; run with `make bench`"]
async fn bench_100_machines_to_running() {
    let n: usize = std::env::var("BENCH_MACHINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let s = Scenario::start_with("bench-100", true, PRODUCTION_FLAGS).await;
    let proxy = s.proxy.as_ref().unwrap();
    let started = Instant::now();
    for i in 0..n {
        s.create_machine(&format!("w{i:03}")).await;
    }
    let created = started.elapsed();
    for i in 0..n {
        s.wait_phase(
            &format!("w{i:03}"),
            MachinePhase::Running,
            Duration::from_secs(900),
        )
        .await;
    }
    let running = started.elapsed();
    let calls = proxy.calls();
    println!("BENCH {n} machines: objects created in {created:?}, all Running after {running:?}");
    println!(
        "BENCH {n} machines: EC2 calls {calls:?} (total {})",
        proxy.total_calls()
    );
    assert_eq!(
        s.live_instances().await.len(),
        n,
        "one instance per machine"
    );
    proxy.reset_counts();
    let started = Instant::now();
    for i in 0..n {
        s.machines()
            .delete(&format!("w{i:03}"), &DeleteParams::default())
            .await
            .unwrap();
    }
    for i in 0..n {
        s.wait_gone(&format!("w{i:03}"), Duration::from_secs(900))
            .await;
    }
    println!(
        "BENCH {n} machines: all deleted after {:?}, EC2 calls {:?}",
        started.elapsed(),
        proxy.calls()
    );
}

/// Batched launches under EC2's quotas (the proxy's request and resource
/// buckets at a default account's sizes): a MachineDeployment of N
/// (`BENCH_MACHINES`, default 100) machines whose user data may be shared,
/// scaled up, then down to 0. `BENCH_API_SHARE` sets `--ec2-api-share`.
/// Prints progress every 15 s (where the time goes), the milestones, the
/// EC2 calls by action, and what EC2's buckets allow at that share.
#[tokio::test]
#[ignore = "measurement; run with `make bench`"]
async fn bench_batched_launch() {
    let n: usize = std::env::var("BENCH_MACHINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let share: f64 = std::env::var("BENCH_API_SHARE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.5);
    let share_flag = format!("--ec2-api-share={share}");
    let mut flags = PRODUCTION_FLAGS.to_vec();
    flags.push(&share_flag);
    let s = shared_user_data_scenario("bench-batch", ProxyBehaviour::like_ec2(), &flags).await;
    let proxy = s.proxy.as_ref().unwrap();
    let machines = watched_machines(&s);
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.reset_counts();
    let requests = kube_requests_of(&s);
    let started = Instant::now();
    println!(
        "BENCH batched {n} machines (share {share}): scale-up at {}",
        k8s_openapi::jiff::Timestamp::now()
    );
    apply_deployment(&s, "bench", n as i32, serde_json::json!({})).await;
    let (mut created, mut with_instance, mut running) = (None, None, None);
    let mut progress = Progress::every(Duration::from_secs(15));
    while running.is_none() && started.elapsed() < DEADLINE {
        let machines = machines.state();
        let launched = machines
            .iter()
            .filter(|m| m.spec.provider_id.is_some())
            .count();
        let up = machines
            .iter()
            .filter(|m| m.phase() == Some(MachinePhase::Running))
            .count();
        let now = Some(started.elapsed());
        if machines.len() >= n && created.is_none() {
            created = now;
        }
        if launched >= n && with_instance.is_none() {
            with_instance = now;
        }
        if up >= n {
            running = now;
        }
        progress.print(started, || {
            format!(
                "{} machines, {launched} with an instance, {} Nodes, {up} Running; EC2 calls {:?}; kubelet pass {:?}",
                machines.len(),
                s.kubelet.nodes().len(),
                proxy.calls(),
                s.kubelet.last_pass(),
            )
        });
        tokio::time::sleep(POLL).await;
    }
    let create_calls = proxy.calls();
    let create_total = proxy.total_calls();
    let throttled = proxy.throttled();
    let count = |calls: &BTreeMap<String, u64>, action: &str| {
        calls.get(action).copied().unwrap_or_default()
    };
    let bounds = Bounds::at(n, share);
    println!(
        "BENCH batched {n} machines (share {share}): all Machines created after {created:?}, all with an instance after {with_instance:?}, all Running after {running:?}"
    );
    println!(
        "BENCH batched {n} machines: RunInstances {}, CreateTags {}, DescribeInstances {}, TerminateInstances {} (create→Running total {create_total}: {create_calls:?}), throttled by the proxy {throttled:?}",
        count(&create_calls, "RunInstances"),
        count(&create_calls, "CreateTags"),
        count(&create_calls, "DescribeInstances"),
        count(&create_calls, "TerminateInstances"),
    );
    println!(
        "BENCH batched {n} machines: create→Running Kubernetes API requests of the operator {:?}",
        delta(&requests, &kube_requests_of(&s))
    );
    println!(
        "BENCH batched {n} machines: one RunInstances per machine would need ≥ {:.0} s of RunInstances calls; the instance bucket at share {share} allows all {n} after {:.0} s; CreateTags (one per instance) allows all after {:.0} s",
        bounds.one_call_per_machine, bounds.instance_bucket, bounds.create_tags
    );
    assert_eq!(
        s.live_instances().await.len(),
        n,
        "one instance per machine"
    );

    proxy.reset_counts();
    let requests = kube_requests_of(&s);
    let started = Instant::now();
    merge_patch(
        &deployments(&s),
        "bench",
        serde_json::json!({"spec": {"replicas": 0}}),
    )
    .await;
    let mut progress = Progress::every(Duration::from_secs(15));
    loop {
        let left = machines.state();
        if left.is_empty() || started.elapsed() >= DEADLINE {
            break;
        }
        progress.print(started, || {
            format!(
                "{} machines left, {} Terminating; EC2 calls {:?}",
                left.len(),
                left.iter()
                    .filter(|m| m.phase() == Some(MachinePhase::Terminating))
                    .count(),
                proxy.calls()
            )
        });
        tokio::time::sleep(POLL).await;
    }
    let deleted = started.elapsed();
    let delete_calls = proxy.calls();
    let delete_total = proxy.total_calls();
    println!(
        "BENCH batched {n} machines: all deleted after {deleted:?}, TerminateInstances {}, DescribeInstances {} (total {delete_total}: {delete_calls:?})",
        count(&delete_calls, "TerminateInstances"),
        count(&delete_calls, "DescribeInstances"),
    );
    println!(
        "BENCH batched {n} machines: delete Kubernetes API requests of the operator {:?}",
        delta(&requests, &kube_requests_of(&s))
    );
    println!(
        "BENCH batched {n} machines: EC2 calls per machine over create→Running→delete: {:.2}",
        (create_total + delete_total) as f64 / n as f64
    );
    // The test environment goes with the test; the operator's log stays.
    let kept = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-batched-operator.log");
    if std::fs::copy(s.op.log_path(), &kept).is_ok() {
        println!(
            "BENCH batched {n} machines: operator log in {}",
            kept.display()
        );
    }
}

/// The scenario's Machines as a watch shows them: polling a store instead
/// of listing a thousand Machines a second, which is itself work for the
/// API server that the operator shares.
fn watched_machines(s: &Scenario) -> Store<Machine> {
    let (reader, writer) = reflector::store();
    let api: Api<Machine> = Api::namespaced(s.client.clone(), &s.ns);
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .applied_objects();
    tokio::spawn(stream.for_each(|_| futures::future::ready(())));
    reader
}

/// The operator's Kubernetes API requests so far, by verb and resource.
fn kube_requests_of(s: &Scenario) -> BTreeMap<String, f64> {
    s.op.http_get("/metrics")
        .map(|(_, body)| kube_requests(&body))
        .unwrap_or_default()
}

/// How long a benchmark waits for each half.
const DEADLINE: Duration = Duration::from_secs(1800);
/// How often it looks at the watched machines.
const POLL: Duration = Duration::from_millis(250);

/// What EC2's buckets (AWS's defaults, from `rate_limit.rs`) allow at the
/// operator's share, in seconds until the last of `n` machines.
struct Bounds {
    /// One RunInstances per machine: its request bucket.
    one_call_per_machine: f64,
    /// The RunInstances instance (resource) bucket.
    instance_bucket: f64,
    /// One CreateTags per instance: its request bucket.
    create_tags: f64,
}

impl Bounds {
    fn at(n: usize, share: f64) -> Bounds {
        let after_burst = |aws: BucketSpec| {
            (n as f64 - (f64::from(aws.capacity) * share).floor()).max(0.0)
                / (aws.refill_per_sec * share)
        };
        Bounds {
            one_call_per_machine: after_burst(RequestBucket::RunInstances.aws_limit()),
            instance_bucket: after_burst(ResourceBucket::RunInstances.aws_limit()),
            create_tags: after_burst(RequestBucket::CreateTags.aws_limit()),
        }
    }
}

/// Prints a progress line at most once per period.
struct Progress {
    every: Duration,
    last: Option<Instant>,
}

impl Progress {
    fn every(every: Duration) -> Progress {
        Progress { every, last: None }
    }

    fn print(&mut self, started: Instant, line: impl FnOnce() -> String) {
        if self.last.is_some_and(|t| t.elapsed() < self.every) {
            return;
        }
        self.last = Some(Instant::now());
        println!(
            "BENCH   {:>6.1} s: {}",
            started.elapsed().as_secs_f64(),
            line()
        );
    }
}
