//! Measurements, not tests: run with `make bench` (they are `#[ignore]`d so
//! `make test` stays fast). Each prints its numbers; nothing here asserts a
//! wall-clock limit.

use std::time::{Duration, Instant};

use kube::api::DeleteParams;
use mcm_provider_aws::api::shared::MachinePhase;

use crate::batch::shared_user_data_scenario;
use crate::support::fleet::{apply_deployment, deployments, merge_patch, pool};
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
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.reset_counts();
    let started = Instant::now();
    println!(
        "BENCH batched {n} machines: scale-up at {}",
        k8s_openapi::jiff::Timestamp::now()
    );
    apply_deployment(&s, "bench", n as i32, serde_json::json!({})).await;
    let (mut with_instance, mut running) = (None, None);
    let deadline = Duration::from_secs(1800);
    while running.is_none() && started.elapsed() < deadline {
        let machines = pool(&s, "bench").await;
        let launched = machines
            .iter()
            .filter(|m| m.spec.provider_id.is_some())
            .count();
        let up = machines
            .iter()
            .filter(|m| m.phase() == Some(MachinePhase::Running))
            .count();
        if launched >= n && with_instance.is_none() {
            with_instance = Some(started.elapsed());
        }
        if up >= n {
            running = Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let create_calls = proxy.calls();
    let create_total = proxy.total_calls();
    let throttled = proxy.throttled();
    let run_calls = create_calls
        .get("RunInstances")
        .copied()
        .unwrap_or_default();
    // What the operator's own buckets allow at this share: RunInstances
    // calls at 2/s × share after a burst of 5 × share, instances at
    // 2/s × share after a burst of 1000 × share.
    let one_per_machine = (n as f64 - (5.0 * share).floor()).max(0.0) / (2.0 * share);
    let resource_bound = (n as f64 - (1000.0 * share).floor()).max(0.0) / (2.0 * share);
    println!(
        "BENCH batched {n} machines (share {share}): all with instances after {with_instance:?}, all Running after {running:?}"
    );
    println!(
        "BENCH batched {n} machines: {run_calls} RunInstances calls; one RunInstances per machine would need ≥ {one_per_machine:.0} s of calls, the instance bucket allows all after {resource_bound:.0} s"
    );
    println!(
        "BENCH batched {n} machines: create→Running EC2 calls {create_calls:?} (total {create_total}), throttled by the proxy {throttled:?}"
    );
    assert_eq!(
        s.live_instances().await.len(),
        n,
        "one instance per machine"
    );

    proxy.reset_counts();
    let started = Instant::now();
    merge_patch(
        &deployments(&s),
        "bench",
        serde_json::json!({"spec": {"replicas": 0}}),
    )
    .await;
    while !pool(&s, "bench").await.is_empty() && started.elapsed() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let deleted = started.elapsed();
    let delete_total = proxy.total_calls();
    println!(
        "BENCH batched {n} machines: all deleted after {deleted:?}, EC2 calls {:?} (total {delete_total})",
        proxy.calls()
    );
    println!(
        "BENCH batched {n} machines: EC2 calls per machine over create→Running→delete: {:.2}",
        (create_total + delete_total) as f64 / n as f64
    );
}
