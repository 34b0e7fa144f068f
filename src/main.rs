//! `machine-controller`: the operator binary. It reconciles Machines and
//! MachineClasses (and their Secrets) against EC2.
//!
//! The control cluster comes from the usual kubeconfig resolution
//! (`KUBECONFIG`, `~/.kube/config`, in-cluster); the target cluster, where the
//! Nodes live, from `--target-kubeconfig` (default: the control cluster). AWS
//! endpoints follow the SDK's standard variables (`AWS_ENDPOINT_URL_EC2`,
//! `AWS_ENDPOINT_URL`, `AWS_REGION`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::events::Reporter;
use kube::{Client, Config};
use mcm_provider_aws::controller::{self, ControllerConfig};
use tracing::error;
use tracing_subscriber::EnvFilter;

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

    /// Node condition types that make a machine unhealthy when True (comma-separated).
    #[arg(
        long,
        env = "MCM_NODE_CONDITIONS",
        value_delimiter = ',',
        default_value = "KernelDeadlock,ReadonlyFilesystem,DiskPressure,NetworkUnavailable"
    )]
    node_conditions: Vec<String>,

    /// How often running machines re-read their instance from the shared EC2 view.
    #[arg(long, env = "MCM_INSTANCE_SYNC_PERIOD", default_value = "30s", value_parser = duration)]
    instance_sync_period: Duration,

    /// How often instances without a Machine are collected.
    #[arg(long, env = "MCM_ORPHAN_COLLECTION_INTERVAL", default_value = "15m", value_parser = duration)]
    orphan_collection_interval: Duration,

    /// Machines reconciled at once.
    #[arg(long, env = "MCM_CONCURRENCY", default_value_t = 16)]
    concurrency: u16,

    /// Log format.
    #[arg(long, env = "MCM_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
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

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn client_for(kubeconfig: Option<&PathBuf>) -> Result<Client, String> {
    let config = match kubeconfig {
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
    Client::try_from(config).map_err(|e| format!("Kubernetes client: {e}"))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    // kube and the AWS SDK share rustls; pick its crypto provider once.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();

    let control = match client_for(None).await {
        Ok(c) => c,
        Err(e) => {
            error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let target = match cli.target_kubeconfig.as_ref() {
        Some(path) => match client_for(Some(path)).await {
            Ok(c) => c,
            Err(e) => {
                error!("target cluster: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => control.clone(),
    };
    let config = ControllerConfig {
        namespace: cli.namespace,
        creation_timeout: cli.machine_creation_timeout,
        health_timeout: cli.machine_health_timeout,
        drain_timeout: cli.machine_drain_timeout,
        node_conditions: cli.node_conditions,
        instance_sync_period: cli.instance_sync_period,
        orphan_collection_interval: cli.orphan_collection_interval,
        concurrency: cli.concurrency,
        ..ControllerConfig::default()
    };
    let reporter = Reporter {
        controller: "mcm-provider-aws".into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    controller::run(control, target, config, reporter).await;
    ExitCode::SUCCESS
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
    fn defaults_match_mcm() {
        let cli = Cli::parse_from(["machine-controller"]);
        assert_eq!(cli.machine_creation_timeout, Duration::from_secs(1200));
        assert_eq!(cli.machine_health_timeout, Duration::from_secs(600));
        assert_eq!(cli.machine_drain_timeout, Duration::from_secs(7200));
        assert_eq!(cli.orphan_collection_interval, Duration::from_secs(900));
        assert_eq!(cli.node_conditions.len(), 4);
    }
}
