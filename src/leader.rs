//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several
//! replicas only one reconciles at a time.
//!
//! The Lease is held with [`kube_lease_manager`]: acquiring is a
//! server-side apply of `holderIdentity` (a second candidate's apply
//! conflicts), the holder renews when `renew_deadline` of the
//! `lease_duration` has passed, and a standby takes over a Lease that was
//! not renewed within `lease_duration` (a replica killed with SIGKILL).
//!
//! What this module adds is the safety rule of client-go's leader election:
//! a leader that cannot renew must stop acting *before* its Lease can expire
//! and someone else can take over. A failed renewal is retried every second;
//! if none succeeded within half the margin between the renew deadline and
//! the lease duration, leadership counts as lost and the process exits (the
//! Pod restarts as a standby), as controller-runtime's manager does. On a
//! graceful shutdown the leader releases the Lease after its controllers
//! stopped, so a standby takes over at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::Client;
use kube_lease_manager::{LeaseCreateMode, LeaseManager, LeaseManagerBuilder, LeaseParams};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::shutdown::Shutdown;

/// Settings of the leader election.
#[derive(Clone, Debug)]
pub struct LeaderElectionConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (unique per process).
    pub identity: String,
    /// How long a Lease stays valid without renewal: the longest a standby
    /// waits after the leader died.
    pub lease_duration: Duration,
    /// The leader renews when this much of `lease_duration` has passed.
    pub renew_deadline: Duration,
}

impl LeaderElectionConfig {
    /// Checks the durations: whole seconds (the Lease API's unit), and a
    /// renew deadline at least 2s shorter than the lease duration (the
    /// margin in which a leader that cannot renew stops acting).
    pub fn validate(&self) -> Result<(), String> {
        let (lease, renew) = (self.lease_duration, self.renew_deadline);
        if lease.subsec_nanos() != 0 || renew.subsec_nanos() != 0 {
            return Err("leader election durations must be whole seconds".into());
        }
        if renew.as_secs() == 0 || lease.as_secs() < renew.as_secs() + 2 {
            return Err(format!(
                "--leader-election-renew-deadline ({}s) must be at least 1s and 2s shorter than \
                 --leader-election-lease-duration ({}s)",
                renew.as_secs(),
                lease.as_secs()
            ));
        }
        Ok(())
    }

    /// Time before the Lease expires at which the leader renews.
    fn grace(&self) -> Duration {
        self.lease_duration - self.renew_deadline
    }

    /// How long failed renewals are tolerated before leadership counts as
    /// lost: half the grace, the other half covers clock skew and the
    /// process exit.
    fn give_up_after(&self) -> Duration {
        self.grace() / 2
    }
}

/// A unique identity: the Pod (or host) name and a random suffix, as
/// client-go does, so that a restarted Pod never mistakes its old Lease for
/// its own.
pub fn default_identity() -> String {
    let host = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "machine-controller".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let mut hash = Sha256::new();
    hash.update(nanos.to_le_bytes());
    hash.update(std::process::id().to_le_bytes());
    let suffix: String = hash
        .finalize()
        .iter()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{host}_{suffix}")
}

/// Where this replica stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Waiting for the Lease.
    Standby,
    /// Holding the Lease.
    Leader,
    /// Was leader and no longer is (or can no longer tell): stop acting.
    Lost(String),
}

/// A running election; see the module docs.
pub struct Election {
    config: LeaderElectionConfig,
    manager: Arc<LeaseManager>,
    role: watch::Receiver<Role>,
    task: JoinHandle<()>,
}

impl Election {
    /// Joins the election, retrying until the Lease API answers (creating
    /// the Lease when it is missing). `None` when `shutdown` came first.
    pub async fn join(
        client: Client,
        config: LeaderElectionConfig,
        shutdown: &Shutdown,
    ) -> Option<Election> {
        let mut delay = Duration::from_secs(1);
        let manager = loop {
            let build = LeaseManagerBuilder::new(client.clone(), &config.name)
                .with_namespace(&config.namespace)
                // Durations were validated: duration > grace > 0.
                .with_parameters(LeaseParams::new(
                    &config.identity,
                    config.lease_duration.as_secs(),
                    config.grace().as_secs(),
                ))
                .with_create_mode(LeaseCreateMode::AutoCreate)
                .build();
            let error = tokio::select! {
                built = build => match built {
                    Ok(m) => break Arc::new(m),
                    Err(e) => e,
                },
                _ = shutdown.triggered() => return None,
            };
            warn!(error = %error, lease = %config.name, namespace = %config.namespace, "cannot reach the leader election Lease; retrying");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.triggered() => return None,
            }
            delay = (delay * 2).min(Duration::from_secs(30));
        };
        let (tx, role) = watch::channel(Role::Standby);
        let task = tokio::spawn(keep(Arc::clone(&manager), config.clone(), tx));
        info!(identity = %config.identity, lease = %config.name, namespace = %config.namespace, "joined the leader election");
        Some(Election {
            config,
            manager,
            role,
            task,
        })
    }

    /// Resolves once this replica leads (`true`), or with `false` when
    /// `shutdown` came first.
    pub async fn leading(&mut self, shutdown: &Shutdown) -> bool {
        tokio::select! {
            role = self.role.wait_for(|r| *r != Role::Standby) => {
                matches!(role.as_deref(), Ok(Role::Leader))
            }
            _ = shutdown.triggered() => false,
        }
    }

    /// Resolves when leadership is lost, with the reason.
    pub async fn lost(&mut self) -> String {
        match self
            .role
            .wait_for(|r| matches!(r, Role::Lost(_) | Role::Standby))
            .await
        {
            Ok(role) => match &*role {
                Role::Lost(why) => why.clone(),
                _ => "another replica holds the Lease".into(),
            },
            Err(_) => "the leader election task stopped".into(),
        }
    }

    /// This replica's identity.
    pub fn identity(&self) -> &str {
        &self.config.identity
    }

    /// Stops renewing and releases the Lease if held, so that a standby
    /// takes over without waiting for it to expire.
    pub async fn release(self) {
        self.task.abort();
        let _ = self.task.await;
        match self.manager.release().await {
            Ok(()) => info!(identity = %self.config.identity, "released the leader election Lease"),
            Err(e) => {
                warn!(error = %e, "could not release the leader election Lease; it expires on its own")
            }
        }
    }
}

/// Follows the Lease: acquires it when free, renews it while held, and
/// reports the role. See the module docs for the give-up rule.
async fn keep(manager: Arc<LeaseManager>, config: LeaderElectionConfig, tx: watch::Sender<Role>) {
    let mut failing_since: Option<Instant> = None;
    let mut standby_delay = Duration::from_secs(1);
    loop {
        let leading = *tx.borrow() == Role::Leader;
        match manager.changed().await {
            Ok(true) => {
                failing_since = None;
                info!(identity = %config.identity, "became the leader");
                tx.send_replace(Role::Leader);
            }
            Ok(false) if leading => {
                tx.send_replace(Role::Lost("another replica took the Lease".into()));
                return;
            }
            Ok(false) => {
                failing_since = None;
                tx.send_replace(Role::Standby);
            }
            Err(e) if leading => {
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= config.give_up_after() {
                    tx.send_replace(Role::Lost(format!(
                        "could not renew the Lease for {:?}: {e}",
                        since.elapsed()
                    )));
                    return;
                }
                warn!(error = %e, "renewing the leader election Lease failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => {
                warn!(error = %e, "leader election: cannot read the Lease; retrying");
                tokio::time::sleep(standby_delay).await;
                standby_delay = (standby_delay * 2).min(Duration::from_secs(15));
                continue;
            }
        }
        standby_delay = Duration::from_secs(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(lease: u64, renew: u64) -> LeaderElectionConfig {
        LeaderElectionConfig {
            namespace: "ns".into(),
            name: "lease".into(),
            identity: "me".into(),
            lease_duration: Duration::from_secs(lease),
            renew_deadline: Duration::from_secs(renew),
        }
    }

    #[test]
    fn durations_leave_a_margin_to_stop_acting() {
        assert!(config(15, 10).validate().is_ok());
        assert_eq!(config(15, 10).give_up_after(), Duration::from_millis(2500));
        assert!(config(10, 10).validate().is_err());
        assert!(config(10, 9).validate().is_err());
        assert!(config(10, 0).validate().is_err());
        let mut fractional = config(15, 10);
        fractional.lease_duration = Duration::from_millis(15500);
        assert!(fractional.validate().is_err());
    }

    #[test]
    fn identities_are_unique_per_process_start() {
        let a = default_identity();
        let b = default_identity();
        assert_ne!(a, b);
        assert!(a.contains('_'), "{a}");
    }
}
