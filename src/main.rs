//! `machine-controller`: the operator binary. It reconciles Machines and
//! MachineClasses (and their Secrets) against EC2.
//!
//! The control cluster comes from the usual kubeconfig resolution
//! (`KUBECONFIG`, `~/.kube/config`, in-cluster); the target cluster, where the
//! Nodes live, from `--target-kubeconfig` (default: the control cluster). AWS
//! endpoints follow the SDK's standard variables (`AWS_ENDPOINT_URL_EC2`,
//! `AWS_ENDPOINT_URL`, `AWS_REGION`).
//!
//! Start-up order: bind the metrics and health listeners, connect, join the
//! leader election (when enabled) and wait for the Lease, then run the
//! controllers. SIGTERM stops the controllers (reconciles in flight
//! finish), releases the Lease and stops the listeners. Losing the Lease
//! exits at once with an error, so the Pod restarts as a standby.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{ArgAction, Parser, ValueEnum};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::events::Reporter;
use kube::{Client, Config};
use mcm_provider_aws::admin::{Endpoints, parse_bind_address};
use mcm_provider_aws::aws::bucket_override::{BucketOverride, BucketOverrides};
use mcm_provider_aws::aws::credential_policy::{ArnPattern, CredentialPolicy};
use mcm_provider_aws::aws::rate_limit::RateLimitConfig;
use mcm_provider_aws::controller::{self, ControllerConfig};
use mcm_provider_aws::health::{CACHES, Check, EC2_CREDENTIALS, Health, LEADER_ELECTION};
use mcm_provider_aws::kube_client;
use mcm_provider_aws::leader::{Election, LeaderElectionConfig, default_identity};
use mcm_provider_aws::logging;
use mcm_provider_aws::metrics::Metrics;
use mcm_provider_aws::shutdown::Shutdown;
use tracing::{error, info, warn};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Command-line flags (each can also be set through the named environment variable).
#[derive(Debug, Parser)]
#[command(name = "machine-controller", version, about, args_override_self = true)]
struct Cli {
    /// Only reconcile objects in this namespace (default: all namespaces).
    #[arg(long, env = "MCM_NAMESPACE")]
    namespace: Option<String>,

    /// Kubeconfig of the cluster where the Nodes live (default: the control cluster).
    #[arg(long, env = "MCM_TARGET_KUBECONFIG")]
    target_kubeconfig: Option<PathBuf>,

    /// Pending machines whose node has not joined by then become Failed.
    #[arg(long, env = "MCM_MACHINE_CREATION_TIMEOUT", default_value = "20m", value_parser = duration)]
    machine_creation_timeout: Duration,

    /// Unknown (unhealthy) machines become Failed after this long.
    #[arg(long, env = "MCM_MACHINE_HEALTH_TIMEOUT", default_value = "10m", value_parser = duration)]
    machine_health_timeout: Duration,

    /// Drains are forced (pods deleted) after this long.
    #[arg(long, env = "MCM_MACHINE_DRAIN_TIMEOUT", default_value = "2h", value_parser = duration)]
    machine_drain_timeout: Duration,

    /// Termination waits at most this long for the Node's volumes to detach.
    #[arg(long, env = "MCM_MACHINE_PV_DETACH_TIMEOUT", default_value = "2m", value_parser = duration)]
    machine_pv_detach_timeout: Duration,

    /// A deletion whose instance is still shutting-down this long after the
    /// Machine's deletion is reported (lastOperation, Warning Event); the
    /// finalizer still waits for EC2 to say terminated.
    #[arg(long, env = "MCM_MACHINE_TERMINATION_REPORT_AFTER", default_value = "15m", value_parser = duration)]
    machine_termination_report_after: Duration,
    /// Preserved machines stay preserved this long unless the Machine sets
    /// `machinePreserveTimeout`.
    #[arg(long, env = "MCM_MACHINE_PRESERVE_TIMEOUT", default_value = "96h", value_parser = duration)]
    machine_preserve_timeout: Duration,

    /// Node condition types that make a machine unhealthy when True (comma-separated).
    #[arg(
        long,
        env = "MCM_NODE_CONDITIONS",
        value_delimiter = ',',
        default_value = "KernelDeadlock,ReadonlyFilesystem,DiskPressure,NetworkUnavailable"
    )]
    node_conditions: Vec<String>,

    /// Groups for the `auth-extra-groups` of the bootstrap tokens made for
    /// user data with `<<BOOTSTRAP_TOKEN>>` (comma-separated, each
    /// `system:bootstrappers:...`; MCM's flag and default: none).
    #[arg(
        long,
        env = "MCM_BOOTSTRAP_TOKEN_AUTH_EXTRA_GROUPS",
        value_delimiter = ',',
        value_parser = bootstrap_group
    )]
    bootstrap_token_auth_extra_groups: Vec<String>,

    /// How often running machines re-read their instance from the shared EC2 view.
    #[arg(long, env = "MCM_INSTANCE_SYNC_PERIOD", default_value = "30s", value_parser = duration)]
    instance_sync_period: Duration,

    /// How often instances without a Machine are collected.
    #[arg(long, env = "MCM_ORPHAN_COLLECTION_INTERVAL", default_value = "15m", value_parser = duration)]
    orphan_collection_interval: Duration,

    /// Machines reconciled at once.
    #[arg(long, env = "MCM_CONCURRENCY", default_value_t = 16)]
    concurrency: u16,

    /// Share of each of EC2's API token buckets (per account and Region)
    /// the operator claims, leaving the rest to other tools (0.5: half;
    /// 1: all of it).
    #[arg(long, env = "MCM_EC2_API_SHARE", default_value_t = RateLimitConfig::DEFAULT_FRACTION, value_parser = api_share)]
    ec2_api_share: f64,

    /// An account's raised EC2 limit for one bucket,
    /// `<bucket>=<capacity>:<refill per second>` (comma-separated or
    /// repeated), e.g. `RunInstances=20:10` or `RunInstances.instances=2000:4`;
    /// the API share applies to it too.
    #[arg(long, env = "MCM_EC2_BUCKET_OVERRIDE", value_delimiter = ',', value_parser = bucket_override)]
    ec2_bucket_override: Vec<Option<BucketOverride>>,

    /// Log format.
    #[arg(long, env = "MCM_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    /// Log level or filter (`info`, `debug`, `info,mcm_provider_aws=debug`);
    /// `RUST_LOG`, when set, wins.
    #[arg(long, env = "MCM_LOG_LEVEL", default_value = "info")]
    log_level: String,

    /// Where `/metrics` is served: `host:port`, `:port`, or `0` to disable.
    #[arg(long, env = "MCM_METRICS_BIND_ADDRESS", default_value = ":8080", value_parser = bind_address)]
    metrics_bind_address: BindAddress,

    /// Where `/livez` and `/readyz` are served: `host:port`, `:port`, or `0`
    /// to disable. The same address as the metrics serves all three.
    #[arg(long, env = "MCM_HEALTH_BIND_ADDRESS", default_value = ":8081", value_parser = bind_address)]
    health_bind_address: BindAddress,

    /// Elect a leader among replicas through a Lease before reconciling.
    /// Required whenever more than one replica runs.
    #[arg(long, env = "MCM_LEADER_ELECT")]
    leader_elect: bool,

    /// Namespace of the leader election Lease (default: the namespace the
    /// operator runs in: POD_NAMESPACE, the in-cluster namespace, or the
    /// kubeconfig context's).
    #[arg(long, env = "MCM_LEADER_ELECTION_NAMESPACE")]
    leader_election_namespace: Option<String>,

    /// Name of the leader election Lease.
    #[arg(
        long,
        env = "MCM_LEADER_ELECTION_ID",
        default_value = "mcm-provider-aws"
    )]
    leader_election_id: String,

    /// How long the Lease stays valid without renewal; a standby takes over
    /// at most this long after the leader died.
    #[arg(long, env = "MCM_LEADER_ELECTION_LEASE_DURATION", default_value = "15s", value_parser = duration)]
    leader_election_lease_duration: Duration,

    /// The leader renews the Lease when this much of the lease duration has
    /// passed; a leader that cannot renew stops before the Lease expires.
    #[arg(long, env = "MCM_LEADER_ELECTION_RENEW_DEADLINE", default_value = "10s", value_parser = duration)]
    leader_election_renew_deadline: Duration,

    /// Let a MachineClass whose Secret holds no credentials use the
    /// operator's own AWS identity (default chain: IRSA, instance profile,
    /// environment). Off: such classes are refused, so that whoever may
    /// create a class cannot act with the operator's identity.
    #[arg(
        long,
        env = "MCM_ALLOW_OPERATOR_CREDENTIALS",
        num_args = 0..=1,
        default_missing_value = "true",
        default_value_t = false,
        action = ArgAction::Set
    )]
    allow_operator_credentials: bool,

    /// Role ARNs the operator's own identity may assume for a MachineClass
    /// whose Secret holds only a roleARN (comma-separated globs, `*` and
    /// `?`, e.g. `arn:aws:iam::123456789012:role/mcm-*`). Needs
    /// --allow-operator-credentials; empty: no such role.
    #[arg(long, env = "MCM_ASSUME_ROLE_ARN_PATTERNS", value_delimiter = ',', value_parser = arn_pattern)]
    assume_role_arn_patterns: Vec<String>,
}

/// A group the API server's bootstrap token authenticator accepts
/// (`system:bootstrappers:[a-z0-9:-]{0,255}[a-z0-9]`); it rejects a token
/// with any other, so a typo would stop every Node from joining.
/// Empty stands for none (the chart passes `--...-groups=` by default).
fn bootstrap_group(s: &str) -> Result<String, String> {
    const PREFIX: &str = "system:bootstrappers:";
    if s.is_empty() {
        return Ok(String::new());
    }
    let rest = s.strip_prefix(PREFIX).unwrap_or_default();
    let valid = s.starts_with(PREFIX)
        && !rest.is_empty()
        && rest.len() <= 256
        && rest
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b':' || b == b'-')
        && rest
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if valid {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not a bootstrap group: system:bootstrappers: followed by [a-z0-9:-], ending in [a-z0-9]"
        ))
    }
}

/// A listen address, or `None` when disabled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct BindAddress(Option<SocketAddr>);

fn bind_address(s: &str) -> Result<BindAddress, String> {
    parse_bind_address(s).map(BindAddress)
}

/// A share of EC2's buckets: above 0, at most 1.
fn api_share(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 1.0 => Ok(v),
        _ => Err(format!(
            "{s:?} is not a share above 0 and at most 1 (e.g. 0.5)"
        )),
    }
}

/// A bucket override, or nothing for the empty string (an empty list, as
/// the chart passes it).
fn bucket_override(s: &str) -> Result<Option<BucketOverride>, String> {
    if s.trim().is_empty() {
        return Ok(None);
    }
    s.parse().map(Some)
}

/// A role ARN pattern, or the empty string (an empty list, as the chart
/// passes it).
fn arn_pattern(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        return Ok(String::new());
    }
    s.parse::<ArnPattern>().map(|p| p.to_string())
}

/// Parses Go-style durations (`30s`, `20m`, `2h`, `1h30m`).
fn duration(s: &str) -> Result<Duration, String> {
    s.parse::<kube::core::Duration>()
        .map_err(|e| format!("{s:?} is not a duration like 30s, 20m or 2h: {e}"))
        .and_then(|d| {
            if d.is_negative() {
                Err(format!("{s:?} is negative"))
            } else {
                Ok(Duration::from(d))
            }
        })
}

fn init_logging(format: LogFormat, level: &str) {
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = logging::filter(rust_log.as_deref(), level);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// A client for `kubeconfig` (default: the usual resolution), its requests
/// counted under `cluster` in `mcm_kube_requests_total`. With
/// `retry_throttled`, kube's client retries 429/503/504 answers itself (for
/// minutes, with backoff).
async fn client_for(
    kubeconfig: Option<&PathBuf>,
    retry_throttled: bool,
    metrics: &Metrics,
    cluster: &'static str,
) -> Result<Client, String> {
    let mut config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .map_err(|e| format!("reading {}: {e}", path.display()))?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?
        }
        None => Config::infer()
            .await
            .map_err(|e| format!("no Kubernetes configuration: {e}"))?,
    };
    config.default_retry = retry_throttled;
    kube_client::build(config, metrics.kube_requests(), cluster)
}

/// The credential policy of the flags, logged once: which identities a
/// MachineClass may make the operator act as.
fn credential_policy(allow_operator_credentials: bool, patterns: &[String]) -> CredentialPolicy {
    let patterns: Vec<ArnPattern> = patterns.iter().filter_map(|p| p.parse().ok()).collect();
    if !allow_operator_credentials && !patterns.is_empty() {
        warn!("--assume-role-arn-patterns has no effect without --allow-operator-credentials");
    }
    let shown: Vec<String> = patterns.iter().map(ToString::to_string).collect();
    info!(
        allow_operator_credentials,
        assume_role_arn_patterns = %shown.join(","),
        "MachineClasses may use the credentials in their Secrets{}",
        if allow_operator_credentials {
            " and the operator's own AWS identity"
        } else {
            " only"
        }
    );
    CredentialPolicy::from_flags(allow_operator_credentials, patterns)
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format, &cli.log_level);
    // kube and the AWS SDK share rustls; pick its crypto provider once.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    match operate(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn operate(cli: Cli) -> Result<(), String> {
    let shutdown = Shutdown::on_signals();
    let metrics = Arc::new(Metrics::new());
    let health = Health::new();
    let endpoints = Endpoints::bind(
        cli.metrics_bind_address.0,
        cli.health_bind_address.0,
        Arc::clone(&metrics),
        health.clone(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let server = tokio::spawn(endpoints.serve(shutdown.clone()));

    let result = reconcile(cli, &shutdown, metrics, health).await;
    // Whatever ended the run, the listeners stop with it.
    shutdown.trigger();
    if tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .is_err()
    {
        error!("HTTP listeners did not stop within 5s");
    }
    result
}

/// Connects, waits for the Lease (when electing) and runs the controllers
/// until shutdown.
async fn reconcile(
    cli: Cli,
    shutdown: &Shutdown,
    metrics: Arc<Metrics>,
    health: Health,
) -> Result<(), String> {
    let control = client_for(None, true, &metrics, "control").await?;
    // The target cluster's client (Nodes, Pods, drains) must not retry 429:
    // an eviction refused by a PodDisruptionBudget answers 429, and the
    // drain has to see that at once (to report it, and to force the drain
    // after the drain timeout) rather than wait minutes in kube's retries.
    // Its callers retry on their own schedule.
    let target = client_for(cli.target_kubeconfig.as_ref(), false, &metrics, "target")
        .await
        .map_err(|e| format!("target cluster: {e}"))?;
    let credentials = credential_policy(
        cli.allow_operator_credentials,
        &cli.assume_role_arn_patterns,
    );
    let config = ControllerConfig {
        credentials,
        namespace: cli.namespace,
        creation_timeout: cli.machine_creation_timeout,
        health_timeout: cli.machine_health_timeout,
        drain_timeout: cli.machine_drain_timeout,
        pv_detach_timeout: cli.machine_pv_detach_timeout,
        termination_report_after: cli.machine_termination_report_after,
        preserve_timeout: cli.machine_preserve_timeout,
        node_conditions: cli.node_conditions,
        instance_sync_period: cli.instance_sync_period,
        orphan_collection_interval: cli.orphan_collection_interval,
        concurrency: cli.concurrency,
        rate_limits: RateLimitConfig {
            fraction: cli.ec2_api_share,
            overrides: BucketOverrides::of(cli.ec2_bucket_override.into_iter().flatten()),
        },
        bootstrap_token_auth_extra_groups: cli
            .bootstrap_token_auth_extra_groups
            .into_iter()
            .filter(|g| !g.is_empty())
            .collect(),
        ..ControllerConfig::default()
    };
    let reporter = Reporter {
        controller: "mcm-provider-aws".into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let run = |metrics: Arc<Metrics>, health: Health| {
        controller::run(control.clone(), target, config, reporter, metrics, health)
    };

    if !cli.leader_elect {
        health.set(
            LEADER_ELECTION,
            Check::Passed("leader election disabled: this replica reconciles".into()),
        );
        metrics.set_leader(true);
        run(metrics, health).await;
        return Ok(());
    }

    let election_config = LeaderElectionConfig {
        namespace: cli
            .leader_election_namespace
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .unwrap_or_else(|| control.default_namespace().to_string()),
        name: cli.leader_election_id,
        identity: default_identity(),
        lease_duration: cli.leader_election_lease_duration,
        renew_deadline: cli.leader_election_renew_deadline,
    };
    election_config.validate()?;
    let lease = format!("{}/{}", election_config.namespace, election_config.name);
    // A standby is ready: it serves metrics and can take over at any time.
    let standby = format!("standby: waits for Lease {lease}");
    health.set(LEADER_ELECTION, Check::Passed(standby.clone()));
    for check in [CACHES, EC2_CREDENTIALS] {
        health.set(
            check,
            Check::Passed(format!("{standby}; checked once leading")),
        );
    }
    metrics.set_leader(false);
    let Some(mut election) = Election::join(control.clone(), election_config, shutdown).await
    else {
        return Ok(());
    };
    if !election.leading(shutdown).await {
        election.release().await;
        return Ok(());
    }
    info!(identity = election.identity(), lease = %lease, "leading: starting the controllers");
    health.set(
        LEADER_ELECTION,
        Check::Passed(format!(
            "leading as {} (Lease {lease})",
            election.identity()
        )),
    );
    for check in [CACHES, EC2_CREDENTIALS] {
        health.set(check, Check::Pending("leading: not checked yet".into()));
    }
    metrics.set_leader(true);
    tokio::select! {
        _ = run(Arc::clone(&metrics), health) => {
            metrics.set_leader(false);
            election.release().await;
            Ok(())
        }
        why = election.lost() => {
            metrics.set_leader(false);
            Err(format!("leader election lost, exiting so that only the new leader acts: {why}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(duration("20m"), Ok(Duration::from_secs(1200)));
        assert_eq!(duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert!(duration("two hours").is_err());
        assert!(duration("-5s").is_err());
    }

    #[test]
    fn the_ec2_api_share_and_bucket_overrides_parse() {
        let cli = Cli::parse_from(["machine-controller"]);
        assert_eq!(cli.ec2_api_share, 0.5);
        assert!(cli.ec2_bucket_override.is_empty());
        let cli = Cli::parse_from([
            "machine-controller",
            "--ec2-api-share=1",
            "--ec2-bucket-override=RunInstances=20:10,RunInstances.instances=2000:4",
            "--ec2-bucket-override=",
        ]);
        assert_eq!(cli.ec2_api_share, 1.0);
        let set: Vec<String> = cli
            .ec2_bucket_override
            .iter()
            .flatten()
            .map(ToString::to_string)
            .collect();
        assert_eq!(set, ["RunInstances=20:10", "RunInstances.instances=2000:4"]);
        for bad in ["0", "1.5", "-0.1", "half"] {
            assert!(
                Cli::try_parse_from(["machine-controller", &format!("--ec2-api-share={bad}")])
                    .is_err(),
                "{bad}"
            );
        }
        assert!(
            Cli::try_parse_from(["machine-controller", "--ec2-bucket-override=Nope=1:1"]).is_err()
        );
    }

    #[test]
    fn defaults_match_mcm() {
        let cli = Cli::parse_from(["machine-controller"]);
        assert_eq!(cli.machine_creation_timeout, Duration::from_secs(1200));
        assert_eq!(cli.machine_health_timeout, Duration::from_secs(600));
        assert_eq!(cli.machine_drain_timeout, Duration::from_secs(7200));
        assert_eq!(cli.machine_pv_detach_timeout, Duration::from_secs(120));
        assert_eq!(
            cli.machine_termination_report_after,
            Duration::from_secs(900)
        );
        assert_eq!(cli.machine_preserve_timeout, Duration::from_secs(96 * 3600));
        assert_eq!(cli.orphan_collection_interval, Duration::from_secs(900));
        assert_eq!(cli.node_conditions.len(), 4);
        assert_eq!(
            cli.metrics_bind_address,
            BindAddress(Some("0.0.0.0:8080".parse().unwrap()))
        );
        assert_eq!(
            cli.health_bind_address,
            BindAddress(Some("0.0.0.0:8081".parse().unwrap()))
        );
        assert!(!cli.leader_elect);
        assert_eq!(cli.leader_election_lease_duration, Duration::from_secs(15));
        assert!(
            !cli.allow_operator_credentials,
            "the operator's identity is opt-in"
        );
        assert!(cli.assume_role_arn_patterns.is_empty());
        assert!(cli.bootstrap_token_auth_extra_groups.is_empty());
    }

    #[test]
    fn operator_credentials_and_role_patterns_are_opt_in_flags() {
        let cli = Cli::parse_from([
            "machine-controller",
            "--allow-operator-credentials",
            "--assume-role-arn-patterns=arn:aws:iam::123456789012:role/mcm-*,arn:aws:iam::*:role/x",
        ]);
        assert!(cli.allow_operator_credentials);
        let policy = credential_policy(true, &cli.assume_role_arn_patterns);
        assert_eq!(policy.assume_role_arn_patterns.len(), 2);
        // As the chart passes them when unset.
        let chart = Cli::parse_from([
            "machine-controller",
            "--allow-operator-credentials=false",
            "--assume-role-arn-patterns=",
        ]);
        assert!(!chart.allow_operator_credentials);
        let policy = credential_policy(false, &chart.assume_role_arn_patterns);
        assert!(policy.assume_role_arn_patterns.is_empty());
        assert!(
            Cli::try_parse_from(["machine-controller", "--assume-role-arn-patterns=mcm-*"])
                .is_err(),
            "a pattern must be an ARN"
        );
    }

    #[test]
    fn bootstrap_groups_must_be_bootstrappers() {
        let cli = Cli::parse_from([
            "machine-controller",
            "--bootstrap-token-auth-extra-groups=system:bootstrappers:a,system:bootstrappers:b-1",
        ]);
        assert_eq!(
            cli.bootstrap_token_auth_extra_groups,
            ["system:bootstrappers:a", "system:bootstrappers:b-1"]
        );
        let none = Cli::parse_from(["machine-controller", "--bootstrap-token-auth-extra-groups="]);
        assert!(
            none.bootstrap_token_auth_extra_groups
                .iter()
                .all(String::is_empty)
        );
        for bad in [
            "system:masters",
            "system:bootstrappers:",
            "system:bootstrappers:Workers",
            "system:bootstrappers:a-",
        ] {
            assert!(
                Cli::try_parse_from([
                    "machine-controller",
                    &format!("--bootstrap-token-auth-extra-groups={bad}"),
                ])
                .is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn endpoints_can_be_disabled_or_put_on_a_free_port() {
        let cli = Cli::parse_from([
            "machine-controller",
            "--metrics-bind-address=0",
            "--health-bind-address=127.0.0.1:0",
            "--leader-elect",
        ]);
        assert_eq!(cli.metrics_bind_address, BindAddress(None));
        assert_eq!(
            cli.health_bind_address,
            BindAddress(Some("127.0.0.1:0".parse().unwrap()))
        );
        assert!(cli.leader_elect);
        assert!(
            Cli::try_parse_from(["machine-controller", "--metrics-bind-address=8080"]).is_err()
        );
    }
}
