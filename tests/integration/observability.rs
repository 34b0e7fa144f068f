//! What an SRE sees of a running operator: `/readyz` passing once the
//! caches synced and the class's EC2 credentials answered (and failing,
//! with the reason, when EC2 cannot be reached), `/metrics` counting EC2
//! calls, reconciles and machines by phase, and JSON logs.

use std::time::Duration;

use mcm_provider_aws::api::shared::MachinePhase;

use crate::support::metrics::sample;
use crate::support::operator::{Launch, Operator};
use crate::support::scenario::{FAST_FLAGS, Scenario};
use crate::support::wait::eventually_or;

const MINUTE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn metrics_readiness_and_json_logs_of_a_running_operator() {
    let s = Scenario::start_with("observe", false, &["--log-format=json"]).await;
    let ready = eventually_or(
        "/readyz to pass",
        MINUTE,
        || async { s.op.http_get("/readyz").filter(|(code, _)| *code == 200) },
        || s.op.log(),
    )
    .await
    .1;
    assert!(ready.contains("[+]caches ok: synced"), "{ready}");
    assert!(ready.contains("[+]ec2-credentials ok"), "{ready}");
    // Who the class's credentials are, from STS: the account and the ARN.
    assert!(
        ready.contains("answered GetCallerIdentity and DescribeInstances")
            && ready.contains(" as arn:aws:")
            && ready.contains("(account 123456789012)"),
        "{ready}"
    );
    let log = s.op.log();
    assert!(
        log.lines()
            .any(|l| l.contains("AWS identity of a MachineClass")
                && l.contains("123456789012")
                && l.contains("arn:aws:")),
        "the start-up log names the account and ARN:\n{log}"
    );
    assert!(
        ready.contains("[+]leader-election ok: leader election disabled"),
        "{ready}"
    );
    assert_eq!(s.op.http_get("/livez").map(|(code, _)| code), Some(200));

    s.create_machine("m1").await;
    s.wait_phase("m1", MachinePhase::Running, 2 * MINUTE).await;
    let ns = &s.ns;
    let metrics = eventually_or(
        "the machine to be counted as Running",
        MINUTE,
        || async {
            let (_, m) = s.op.http_get("/metrics")?;
            let series = format!("mcm_machines{{namespace=\"{ns}\",phase=\"Running\"}}");
            (sample(&m, &series) == Some(1.0)).then_some(m)
        },
        || s.op.log(),
    )
    .await;
    let ec2 = |op: &str| {
        format!(
            "mcm_cloud_api_requests_total{{provider=\"aws\",service=\"ec2\",operation=\"{op}\"}}"
        )
    };
    assert_eq!(
        sample(&metrics, &ec2("RunInstances")),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        sample(&metrics, &ec2("DescribeInstances")).unwrap_or(0.0) >= 1.0,
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "mcm_cloud_api_requests_total{provider=\"aws\",service=\"sts\",operation=\"GetCallerIdentity\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(sample(&metrics, "mcm_machine_items_total"), Some(1.0));
    assert_eq!(
        sample(
            &metrics,
            &format!("mcm_machines{{namespace=\"{ns}\",phase=\"Failed\"}}")
        ),
        Some(0.0)
    );
    assert!(
        sample(&metrics, "mcm_reconciles_total{controller=\"machine\"}").unwrap_or(0.0) >= 1.0,
        "{metrics}"
    );
    assert!(
        sample(
            &metrics,
            "mcm_reconciles_total{controller=\"machineclass\"}"
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{metrics}"
    );
    assert!(
        metrics.contains("mcm_reconcile_duration_seconds_bucket{controller=\"machine\",le=\""),
        "{metrics}"
    );
    assert_eq!(sample(&metrics, "mcm_leader_election_leader"), Some(1.0));

    // Every line the operator wrote is a JSON object with a level.
    let log = s.op.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| !l.starts_with("=== test harness"))
        .collect();
    assert!(lines.len() > 5, "{log}");
    for line in lines {
        let json: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(json["level"].is_string(), "{line}");
    }
}

#[tokio::test]
async fn readyz_fails_with_the_reason_while_ec2_is_unreachable() {
    let mut s = Scenario::start("unready").await;
    s.op.kill9();
    let mut flags: Vec<&str> = FAST_FLAGS.to_vec();
    flags.push("--log-format=text");
    // Nothing listens on port 1: every EC2 call fails to connect.
    s.op = Operator::launch(
        &s.ns,
        &flags,
        Launch {
            ec2_endpoint: Some("http://127.0.0.1:1".into()),
            name: Some("no-ec2".into()),
            ..Launch::default()
        },
    );
    let report = eventually_or(
        "/readyz to report the EC2 failure",
        MINUTE,
        || async {
            s.op.http_get("/readyz")
                .filter(|(code, body)| *code == 503 && body.contains("[-]ec2-credentials failed"))
                .map(|(_, body)| body)
        },
        || s.op.log(),
    )
    .await;
    assert!(report.contains("[+]caches ok"), "{report}");
    assert!(report.contains("class "), "names the class: {report}");
    assert!(report.contains("DescribeInstances"), "{report}");
    // Alive all the same: nothing a restart would fix.
    assert_eq!(s.op.http_get("/livez").map(|(code, _)| code), Some(200));
}
