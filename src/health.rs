//! Readiness of the process as `/readyz` reports it: a few named checks,
//! each pending, passed or failed with a message, shared between the tasks
//! that settle them and the HTTP handler that reads them.
//!
//! The checks (see `docs/operations.md`):
//!
//! - `leader-election`: this replica leads, or it is a standby waiting for
//!   the Lease. A standby is ready: it serves metrics and must not stall a
//!   rolling update; it does nothing else until it leads.
//! - `caches`: the Machine, MachineClass and Node caches have synced (only
//!   asked of a replica that leads).
//! - `ec2-credentials`: every credentials + Region pair used by the
//!   MachineClasses present at startup said who it is (STS
//!   `GetCallerIdentity`, which needs no permission) and answered one
//!   `DescribeInstances` (only asked of a replica that leads). Once passed it stays passed: later
//!   credential trouble is reported on the Machines and in the metrics, never
//!   by flapping readiness.
//!
//! Liveness (`/livez`) asks nothing of these: it answers while the runtime
//! serves requests.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};

/// Leadership: leader or standby.
pub const LEADER_ELECTION: &str = "leader-election";
/// Informer caches synced.
pub const CACHES: &str = "caches";
/// AWS credentials answered STS and EC2 once.
pub const EC2_CREDENTIALS: &str = "ec2-credentials";

/// State of one check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    /// Not settled yet; the message says what it waits for.
    Pending(String),
    /// Passed; the message says what was found.
    Passed(String),
    /// Failed; the message says why and what to do.
    Failed(String),
}

impl Check {
    fn is_passed(&self) -> bool {
        matches!(self, Check::Passed(_))
    }
}

/// The checks of this process; cheap to clone (shared).
#[derive(Clone, Debug, Default)]
pub struct Health {
    checks: Arc<Mutex<BTreeMap<&'static str, Check>>>,
}

impl Health {
    /// Health with the three checks pending.
    pub fn new() -> Self {
        let health = Health::default();
        health.set(
            LEADER_ELECTION,
            Check::Pending("waiting for the leader election to start".into()),
        );
        health.set(CACHES, Check::Pending("caches not synced yet".into()));
        health.set(
            EC2_CREDENTIALS,
            Check::Pending("EC2 credentials not checked yet".into()),
        );
        health
    }

    /// Sets check `name`.
    pub fn set(&self, name: &'static str, check: Check) {
        self.lock().insert(name, check);
    }

    /// The state of check `name`, if it exists.
    pub fn get(&self, name: &str) -> Option<Check> {
        self.lock().get(name).cloned()
    }

    /// Whether every check passed, and a report with one line per check
    /// (`[+]name: message` or `[-]name: message`, the format of the
    /// Kubernetes components' `/readyz?verbose`).
    pub fn readiness(&self) -> (bool, String) {
        let checks = self.lock();
        let mut report = String::new();
        for (name, check) in checks.iter() {
            let (mark, state, message) = match check {
                Check::Passed(m) => ('+', "ok", m),
                Check::Pending(m) => ('-', "pending", m),
                Check::Failed(m) => ('-', "failed", m),
            };
            let _ = writeln!(report, "[{mark}]{name} {state}: {message}");
        }
        let ready = checks.values().all(Check::is_passed);
        let _ = writeln!(
            report,
            "readyz check {}",
            if ready { "passed" } else { "failed" }
        );
        (ready, report)
    }

    /// Checks are plain values; a panic while holding the lock cannot leave
    /// one half-written, so poisoning is ignored.
    fn lock(&self) -> MutexGuard<'_, BTreeMap<&'static str, Check>> {
        self.checks.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_check_passed() {
        let health = Health::new();
        let (ready, report) = health.readiness();
        assert!(!ready);
        assert!(report.contains("[-]caches pending"), "{report}");

        health.set(LEADER_ELECTION, Check::Passed("leading".into()));
        health.set(CACHES, Check::Passed("synced".into()));
        health.set(
            EC2_CREDENTIALS,
            Check::Failed("eu-west-1: AuthFailure".into()),
        );
        let (ready, report) = health.readiness();
        assert!(!ready);
        assert!(
            report.contains("[-]ec2-credentials failed: eu-west-1: AuthFailure"),
            "{report}"
        );
        assert!(report.contains("[+]caches ok: synced"), "{report}");

        health.set(EC2_CREDENTIALS, Check::Passed("1 of 1".into()));
        let (ready, report) = health.readiness();
        assert!(ready, "{report}");
        assert!(report.ends_with("readyz check passed\n"), "{report}");
    }
}
