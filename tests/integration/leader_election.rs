//! Two replicas with `--leader-elect`: only the one holding the Lease
//! reconciles; when it is killed with SIGKILL the other takes over within
//! the lease duration and carries on; a replica stopped with SIGTERM
//! releases the Lease on its way out.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, DeleteParams};
use mcm_provider_aws::api::shared::MachinePhase;

use crate::support::operator::{Launch, Operator};
use crate::support::scenario::{FAST_FLAGS, Scenario};
use crate::support::wait::eventually_or;

const MINUTE: Duration = Duration::from_secs(60);
/// Short enough for a test, long enough for a loaded CI machine to renew.
const LEASE_SECONDS: u64 = 6;
const LEASE: &str = "mcm-leader-test";

fn leader_flags(ns: &str) -> Vec<String> {
    let mut flags: Vec<String> = FAST_FLAGS.iter().map(|f| f.to_string()).collect();
    flags.extend([
        "--leader-elect".to_string(),
        format!("--leader-election-namespace={ns}"),
        format!("--leader-election-id={LEASE}"),
        format!("--leader-election-lease-duration={LEASE_SECONDS}s"),
        "--leader-election-renew-deadline=4s".to_string(),
    ]);
    flags
}

/// `Some(true)` when the operator's `/metrics` says it leads, `Some(false)`
/// when it says it stands by, `None` while it does not answer.
fn leads(op: &Operator) -> Option<bool> {
    let (_, metrics) = op.http_get("/metrics")?;
    match metrics
        .lines()
        .find_map(|l| l.strip_prefix("mcm_leader_election_leader "))
    {
        Some("1") => Some(true),
        Some("0") => Some(false),
        _ => None,
    }
}

/// Whether the operator ran any reconcile (its reconcile counter exists).
fn reconciled(op: &Operator) -> bool {
    op.http_get("/metrics")
        .is_some_and(|(_, m)| m.contains("mcm_reconciles_total{"))
}

async fn holder(s: &Scenario) -> Option<String> {
    Api::<Lease>::namespaced(s.client.clone(), &s.ns)
        .get_opt(LEASE)
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec)
        .and_then(|l| l.holder_identity)
}

#[tokio::test]
async fn only_the_leader_acts_and_a_standby_takes_over_a_killed_leader() {
    let mut s = Scenario::start("leader").await;
    // Two replicas of our own replace the scenario's operator (nothing
    // exists yet for it to act on).
    s.op.kill9();
    let flags = leader_flags(&s.ns);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let launch = |name: &str| Launch {
        name: Some(name.into()),
        ..Launch::default()
    };
    let mut a = Operator::launch(&s.ns, &flags, launch("a"));
    let mut b = Operator::launch(&s.ns, &flags, launch("b"));
    let logs = |a: &Operator, b: &Operator| {
        format!(
            "--- replica a ---\n{}\n--- replica b ---\n{}",
            a.log(),
            b.log()
        )
    };

    // Exactly one leads; both are ready (a standby must not stall a rollout).
    let (mut leader, mut standby) = eventually_or(
        "one replica to lead and the other to stand by",
        MINUTE,
        || async {
            match (leads(&a), leads(&b)) {
                (Some(true), Some(false)) => Some(("a", "b")),
                (Some(false), Some(true)) => Some(("b", "a")),
                _ => None,
            }
        },
        || logs(&a, &b),
    )
    .await;
    for op in [&a, &b] {
        eventually_or(
            "both replicas to be ready",
            MINUTE,
            || async { op.http_get("/readyz").filter(|(code, _)| *code == 200) },
            || logs(&a, &b),
        )
        .await;
    }

    // The leader runs a machine to Running; the standby never reconciles.
    s.create_machine("m1").await;
    s.wait_phase("m1", MachinePhase::Running, 2 * MINUTE).await;
    {
        let (lead_op, standby_op) = if leader == "a" { (&a, &b) } else { (&b, &a) };
        assert!(reconciled(lead_op), "{}", logs(&a, &b));
        assert!(
            !reconciled(standby_op),
            "the standby reconciled:\n{}",
            logs(&a, &b)
        );
        assert!(
            !standby_op.log().contains("controllers started"),
            "the standby started its controllers:\n{}",
            logs(&a, &b)
        );
    }
    let old_holder = holder(&s).await.expect("the Lease has a holder");

    // kill -9 the leader: its Lease is not released, the standby waits for
    // it to expire and takes over.
    let killed_at = Instant::now();
    if leader == "a" {
        a.kill9();
    } else {
        b.kill9();
    }
    let survivor = if leader == "a" { &b } else { &a };
    eventually_or(
        "the standby to take over",
        2 * MINUTE,
        || async { (leads(survivor) == Some(true)).then_some(()) },
        || logs(&a, &b),
    )
    .await;
    let took = killed_at.elapsed();
    eprintln!("standby took over {took:?} after the leader was killed ({LEASE_SECONDS}s lease)");
    // Within the lease duration, plus kube-lease-manager's up-to-1s
    // jitter before grabbing an expired Lease and a little scheduling slack.
    assert!(
        took <= Duration::from_secs(LEASE_SECONDS + 3),
        "takeover took {took:?} with a {LEASE_SECONDS}s lease:\n{}",
        logs(&a, &b)
    );
    let new_holder = holder(&s).await.expect("the Lease has a holder");
    assert_ne!(new_holder, old_holder);
    std::mem::swap(&mut leader, &mut standby);

    // The new leader acts: a new machine runs, the old one is deleted.
    s.create_machine("m2").await;
    s.wait_phase("m2", MachinePhase::Running, 2 * MINUTE).await;
    s.machines()
        .delete("m1", &DeleteParams::default())
        .await
        .unwrap();
    s.wait_gone("m1", 2 * MINUTE).await;

    // SIGTERM: the leader stops its controllers, releases the Lease and
    // exits cleanly.
    let survivor = if leader == "a" { &mut a } else { &mut b };
    let status = survivor
        .terminate(Duration::from_secs(30))
        .expect("the operator exits on SIGTERM");
    assert!(
        status.success(),
        "exit status {status}:\n{}",
        survivor.log()
    );
    assert!(
        survivor
            .log()
            .contains("released the leader election Lease"),
        "{}",
        survivor.log()
    );
    assert_eq!(holder(&s).await, None, "the Lease was released");
}
