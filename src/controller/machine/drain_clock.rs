//! When a drain is forced, and how long a forced drain may wait for Pods
//! that linger (pure, from the Machine's and the Node's timestamps, so a
//! restarted process reaches the same answer).
//!
//! A drain is forced (Pods deleted instead of evicted) when either holds:
//! - the Machine has been deleting for `drainTimeout`, or for
//!   `maxEvictRetries` × 20 s (MCM retries a refused eviction every 20 s, so
//!   that is the time `maxEvictRetries` stands for) if that is shorter;
//! - the Node has been NotReady for 5 minutes (nothing on it runs anyway).
//!
//! A forced drain deletes each Pod with its own grace period, then waits for
//! them at most their longest grace period plus [`LINGER_MARGIN`] (MCM: 3
//! minutes); after that the instance is terminated even if Pods linger.

use std::time::Duration;

/// MCM's pause between two eviction attempts of a refused Pod.
pub const EVICTION_RETRY_INTERVAL: Duration = Duration::from_secs(20);
/// How long past their grace period forced-out Pods may linger.
pub const LINGER_MARGIN: Duration = Duration::from_secs(3 * 60);

/// What the clock says about one drain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrainClock {
    /// Not forced; it will be after this long (at least 1 s).
    Evicting { until_forced: Duration },
    /// Forced for this long already.
    Forced { since: Duration },
}

/// The inputs, as durations up to now.
#[derive(Clone, Copy, Debug, Default)]
pub struct DrainTimes {
    /// Since the Machine's deletion timestamp.
    pub deleting_for: Duration,
    /// The Machine's drain timeout (its own, else the flag's).
    pub drain_timeout: Duration,
    /// The Machine's `maxEvictRetries`, if set.
    pub max_evict_retries: Option<i32>,
    /// How long the Node has been NotReady, if it is.
    pub not_ready_for: Option<Duration>,
    /// NotReady this long forces the drain.
    pub force_not_ready_after: Duration,
}

impl DrainTimes {
    /// Where the drain stands.
    pub fn clock(&self) -> DrainClock {
        let by_retries = self
            .max_evict_retries
            .and_then(|n| u32::try_from(n).ok())
            .map(|n| EVICTION_RETRY_INTERVAL.saturating_mul(n))
            .unwrap_or(Duration::MAX);
        let limit = self.drain_timeout.min(by_retries);
        let forced_by_time = self.deleting_for.checked_sub(limit);
        let forced_by_node = self
            .not_ready_for
            .and_then(|d| d.checked_sub(self.force_not_ready_after));
        match (forced_by_time, forced_by_node) {
            (None, None) => {
                let until_node = self
                    .not_ready_for
                    .map(|d| self.force_not_ready_after.saturating_sub(d))
                    .unwrap_or(Duration::MAX);
                DrainClock::Evicting {
                    until_forced: limit
                        .saturating_sub(self.deleting_for)
                        .min(until_node)
                        .max(Duration::from_secs(1)),
                }
            }
            (a, b) => DrainClock::Forced {
                since: a.unwrap_or_default().max(b.unwrap_or_default()),
            },
        }
    }
}

/// Whether a drain forced `since` ago may stop waiting for Pods whose
/// longest grace period is `longest_grace`.
pub fn may_leave_lingering(since: Duration, longest_grace: Duration) -> bool {
    since >= longest_grace.saturating_add(LINGER_MARGIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn times() -> DrainTimes {
        DrainTimes {
            deleting_for: 10 * S,
            drain_timeout: 60 * S,
            max_evict_retries: None,
            not_ready_for: None,
            force_not_ready_after: 300 * S,
        }
    }

    #[test]
    fn the_drain_timeout_forces_the_drain() {
        assert_eq!(
            times().clock(),
            DrainClock::Evicting {
                until_forced: 50 * S
            }
        );
        let late = DrainTimes {
            deleting_for: 75 * S,
            ..times()
        };
        assert_eq!(late.clock(), DrainClock::Forced { since: 15 * S });
    }

    #[test]
    fn max_evict_retries_shorten_the_wait_at_20s_each() {
        let t = DrainTimes {
            max_evict_retries: Some(2),
            ..times()
        };
        assert_eq!(
            t.clock(),
            DrainClock::Evicting {
                until_forced: 30 * S
            }
        );
        let t = DrainTimes {
            deleting_for: 41 * S,
            ..t
        };
        assert_eq!(t.clock(), DrainClock::Forced { since: S });
        // Negative or absurd values change nothing; a large count never
        // overflows.
        for n in [-1, i32::MAX] {
            let t = DrainTimes {
                max_evict_retries: Some(n),
                ..times()
            };
            assert_eq!(
                t.clock(),
                DrainClock::Evicting {
                    until_forced: 50 * S
                }
            );
        }
    }

    #[test]
    fn a_node_notready_for_five_minutes_forces_the_drain() {
        let t = DrainTimes {
            not_ready_for: Some(290 * S),
            ..times()
        };
        assert_eq!(
            t.clock(),
            DrainClock::Evicting {
                until_forced: 10 * S
            }
        );
        let t = DrainTimes {
            not_ready_for: Some(310 * S),
            ..times()
        };
        assert_eq!(t.clock(), DrainClock::Forced { since: 10 * S });
    }

    #[test]
    fn lingering_pods_are_waited_for_their_grace_plus_three_minutes() {
        assert!(!may_leave_lingering(200 * S, 30 * S));
        assert!(may_leave_lingering(210 * S, 30 * S));
        assert!(may_leave_lingering(180 * S, Duration::ZERO));
    }
}
