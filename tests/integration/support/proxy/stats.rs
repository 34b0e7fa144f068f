//! What the proxy counted, for tests' assertions and benchmarks' reports.

use std::collections::BTreeMap;

/// Counters since the proxy started or [`super::FaultProxy::reset_counts`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Requests seen per EC2 action (forwarded, faulted or answered by the
    /// proxy itself).
    pub calls: BTreeMap<String, u64>,
    /// Faults injected by the rules, per action.
    pub faults: BTreeMap<String, u64>,
    /// `RequestLimitExceeded` answered by the quota switch, per action.
    pub throttled: BTreeMap<String, u64>,
    /// Instances moto launched (in successful RunInstances responses that
    /// went through; replays launch nothing and do not count).
    pub instances_launched: u64,
    /// RunInstances answered with a remembered response (same ClientToken,
    /// same parameters).
    pub client_token_replays: u64,
    /// RunInstances answered `IdempotentParameterMismatch`.
    pub client_token_mismatches: u64,
    /// Calls answered `InvalidInstanceID.NotFound` because they named an
    /// instance still inside its consistency window.
    pub unseen_not_found: u64,
    /// Instances left out of DescribeInstances results for the same reason.
    pub unseen_hidden: u64,
    /// Requests seen per `access key id/action` (whose credentials made
    /// which calls; unsigned requests have an empty key).
    pub calls_by_key: BTreeMap<String, u64>,
}

impl ProxyStats {
    pub(super) fn count(map: &mut BTreeMap<String, u64>, action: &str) -> u64 {
        let n = map.entry(action.to_string()).or_default();
        *n += 1;
        *n
    }

    /// All `RequestLimitExceeded` answered by the quota switch.
    pub fn total_throttled(&self) -> u64 {
        self.throttled.values().sum()
    }
}
