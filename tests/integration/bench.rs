//! Measurements, not tests: run with `make bench` (they are `#[ignore]`d so
//! `make test` stays fast). Each prints its numbers; nothing here asserts a
//! wall-clock limit.

use std::time::{Duration, Instant};

use kube::api::DeleteParams;
use mcm_provider_aws::api::shared::MachinePhase;

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
