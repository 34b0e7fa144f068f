//! Settings of the reconcilers, filled from the command line (see `main.rs`).

use std::time::Duration;

use crate::aws::credential_policy::CredentialPolicy;
use crate::aws::rate_limit::RateLimitConfig;

/// MCM's default node conditions that make a machine unhealthy when true.
pub const DEFAULT_NODE_CONDITIONS: &[&str] = &[
    "KernelDeadlock",
    "ReadonlyFilesystem",
    "DiskPressure",
    "NetworkUnavailable",
];

/// Settings shared by every reconciler.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// Only objects in this namespace are reconciled (default: all).
    pub namespace: Option<String>,
    /// Pending → Failed when the node has not joined by then (MCM: 20m).
    pub creation_timeout: Duration,
    /// Unknown → Failed when the node stays unhealthy this long (MCM: 10m).
    pub health_timeout: Duration,
    /// Drain is forced (pods deleted) after this long (MCM: 2h).
    pub drain_timeout: Duration,
    /// Drain is forced when the node has been NotReady this long (MCM: 5m).
    pub force_drain_not_ready_after: Duration,
    /// Termination waits at most this long for the Node's VolumeAttachments
    /// to go (MCM's `--machine-pv-detach-timeout`: 2m).
    pub pv_detach_timeout: Duration,
    /// A deletion whose instance is still `shutting-down` this long after
    /// the Machine's deletion is reported as failing (and goes on waiting
    /// for `terminated`).
    pub termination_report_after: Duration,
    /// How long a machine stays preserved when its own
    /// `machinePreserveTimeout` is unset (MCM's `--machine-preserve-timeout`:
    /// 96h).
    pub preserve_timeout: Duration,
    /// Node condition types that make a machine unhealthy when `True`.
    pub node_conditions: Vec<String>,
    /// How often a Running machine re-reads its instance from the shared,
    /// batched EC2 view (spot interruptions are seen within this period).
    pub instance_sync_period: Duration,
    /// How often instances without a Machine are looked for (MCM: 15m).
    pub orphan_collection_interval: Duration,
    /// Reconciles running at once per controller.
    pub concurrency: u16,
    /// How much of EC2's API limits the operator claims.
    pub rate_limits: RateLimitConfig,
    /// Which identities a MachineClass may make the operator act as
    /// (default: only credentials the class brings).
    pub credentials: CredentialPolicy,
    /// Groups written to bootstrap tokens' `auth-extra-groups` (MCM's
    /// `--bootstrap-token-auth-extra-groups`; default none).
    pub bootstrap_token_auth_extra_groups: Vec<String>,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            namespace: None,
            creation_timeout: Duration::from_secs(20 * 60),
            health_timeout: Duration::from_secs(10 * 60),
            drain_timeout: Duration::from_secs(2 * 3600),
            force_drain_not_ready_after: Duration::from_secs(5 * 60),
            pv_detach_timeout: Duration::from_secs(2 * 60),
            termination_report_after: Duration::from_secs(15 * 60),
            preserve_timeout: Duration::from_secs(96 * 3600),
            node_conditions: DEFAULT_NODE_CONDITIONS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            instance_sync_period: Duration::from_secs(30),
            orphan_collection_interval: Duration::from_secs(15 * 60),
            concurrency: 16,
            rate_limits: RateLimitConfig::default(),
            credentials: CredentialPolicy::default(),
            bootstrap_token_auth_extra_groups: Vec::new(),
        }
    }
}
