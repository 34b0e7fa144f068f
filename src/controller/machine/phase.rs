//! The machine phase state machine (MCM semantics), as a pure function of what
//! was observed: the instance in EC2, the Node in the target cluster, the
//! current status and the clock.
//!
//! ```text
//! Pending ──node Ready──▶ Running ──node unhealthy/gone──▶ Unknown ──health timeout──▶ Failed
//!    │                       ▲                                │
//!    └─creation timeout─▶ Failed                              └──node healthy again──▶ Running
//! any ──instance terminated by EC2──▶ Failed (at once)
//! ```
//!
//! Timestamps move only on transitions, so the computed status is stable from
//! one reconcile to the next and never retriggers the controller by itself.
//!
//! A preserved Failed machine whose Node is healthy again is Running
//! ([`recovered`]); any other Failed machine stays Failed.
//!
//! `disableHealthTimeout` (MCM, for in-place update pools) keeps an unhealthy
//! machine Unknown for good. Whether a machine whose health timeout ran out
//! may actually become Failed now is not decided here: at most one machine
//! of a deployment is replaced at a time (see
//! [`crate::controller::fleet::replacement`]).

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use crate::api::shared::MachinePhase;

/// What EC2 says about the machine's instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InstanceHealth {
    /// pending or running.
    Up,
    /// stopping or stopped (e.g. a spot instance stopped by EC2).
    Stopped(String),
    /// shutting-down or terminated, or gone, while the Machine still exists.
    Gone(String),
}

/// What the target cluster says about the machine's Node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeHealth {
    /// No Node for the instance (yet).
    Missing,
    /// Ready, and none of the configured problem conditions is true.
    Healthy,
    /// Registered but not Ready, or a configured condition is true.
    Unhealthy(String),
}

/// Timeouts in force for one Machine (flags, overridden per Machine).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub creation: Duration,
    /// `None`: the machine's `disableHealthTimeout` is true.
    pub health: Option<Duration>,
}

/// The phase a machine should be in, why, and when to look again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PhaseDecision {
    pub phase: MachinePhase,
    /// When the machine entered `phase` (kept from the current status when the
    /// phase does not change).
    pub since: Timestamp,
    /// A timeout is running (Pending or Unknown).
    pub timeout_active: bool,
    /// One sentence for `lastOperation.description`.
    pub description: String,
    /// Re-check no later than this, e.g. when a timeout would expire.
    pub recheck_after: Option<Duration>,
    /// Failed because the health timeout ran out: the one transition that
    /// is limited per deployment (the instance still exists and may just be
    /// cut off).
    pub health_timeout: bool,
}

/// Decides the next phase of a machine whose instance exists.
///
/// `current` is the phase in the status and when it was entered; `created`
/// is when the Machine was created (the creation timeout counts from there, as
/// in MCM).
pub fn decide(
    current: Option<(MachinePhase, Timestamp)>,
    created: Timestamp,
    instance: &InstanceHealth,
    node: &NodeHealth,
    timeouts: Timeouts,
    now: Timestamp,
) -> PhaseDecision {
    let (phase, since) = current.unwrap_or((MachinePhase::Pending, created));
    let keep_or_enter = |p: MachinePhase| if p == phase { since } else { now };
    let elapsed = |from: Timestamp| -> Duration {
        Duration::try_from(now.duration_since(from)).unwrap_or_default()
    };
    let decision =
        |p: MachinePhase, description: String, recheck_after: Option<Duration>| PhaseDecision {
            phase: p,
            since: keep_or_enter(p),
            timeout_active: matches!(p, MachinePhase::Pending | MachinePhase::Unknown),
            description,
            recheck_after,
            health_timeout: false,
        };

    // Failed is terminal: the owning MachineSet replaces the machine.
    if phase == MachinePhase::Failed {
        return PhaseDecision {
            phase,
            since,
            timeout_active: false,
            description: String::new(),
            recheck_after: None,
            health_timeout: false,
        };
    }
    let never_ran = matches!(
        phase,
        MachinePhase::Pending | MachinePhase::CrashLoopBackOff
    );
    let problem = match (instance, node) {
        (InstanceHealth::Gone(reason), _) => {
            return decision(
                MachinePhase::Failed,
                format!("Instance is gone: {reason}"),
                None,
            );
        }
        (InstanceHealth::Stopped(reason), _) => Some(format!("Instance is stopped: {reason}")),
        (InstanceHealth::Up, NodeHealth::Missing) => Some("Node has not registered".to_string()),
        (InstanceHealth::Up, NodeHealth::Unhealthy(reason)) => {
            Some(format!("Node is unhealthy: {reason}"))
        }
        (InstanceHealth::Up, NodeHealth::Healthy) => None,
    };

    match problem {
        None => decision(
            MachinePhase::Running,
            "Machine is running and its node is healthy".into(),
            None,
        ),
        Some(problem) if never_ran => {
            let waited = elapsed(created);
            if waited >= timeouts.creation {
                decision(
                    MachinePhase::Failed,
                    format!(
                        "Machine did not join the cluster within the creation timeout of {}: {problem}",
                        human(timeouts.creation)
                    ),
                    None,
                )
            } else {
                decision(
                    MachinePhase::Pending,
                    format!("Waiting for the node to join: {problem}"),
                    Some(timeouts.creation - waited),
                )
            }
        }
        Some(problem) => {
            // Running (or Unknown) and unhealthy: the health timeout counts
            // from when the machine became Unknown.
            let unknown_since = if phase == MachinePhase::Unknown {
                since
            } else {
                now
            };
            let waited = elapsed(unknown_since);
            match timeouts.health {
                Some(limit) if waited >= limit => PhaseDecision {
                    health_timeout: true,
                    ..decision(
                        MachinePhase::Failed,
                        format!(
                            "Machine stayed unhealthy longer than the health timeout of {}: {problem}",
                            human(limit)
                        ),
                        None,
                    )
                },
                Some(limit) => decision(
                    MachinePhase::Unknown,
                    format!("Machine is unhealthy: {problem}"),
                    Some(limit - waited),
                ),
                None => decision(
                    MachinePhase::Unknown,
                    format!(
                        "Machine is unhealthy (disableHealthTimeout: never marked Failed for it): {problem}"
                    ),
                    None,
                ),
            }
        }
    }
}

/// A preserved Failed machine whose instance runs and whose Node is healthy
/// again recovers to Running (MCM v0.62); Failed stays terminal otherwise.
/// `None` when this does not apply, and [`decide`] has the say.
pub fn recovered(
    current: Option<(MachinePhase, Timestamp)>,
    preserved: bool,
    instance: &InstanceHealth,
    node: &NodeHealth,
    now: Timestamp,
) -> Option<PhaseDecision> {
    let failed = current.is_some_and(|(p, _)| p == MachinePhase::Failed);
    (failed && preserved && *instance == InstanceHealth::Up && *node == NodeHealth::Healthy).then(
        || PhaseDecision {
            phase: MachinePhase::Running,
            since: now,
            timeout_active: false,
            description: "Preserved machine recovered: it is running and its node is healthy"
                .into(),
            recheck_after: None,
            health_timeout: false,
        },
    )
}

/// `1h30m`-style rendering for messages.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, 0, 0) => format!("{h}h"),
        (h, m, _) => format!("{h}h{m}m"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use MachinePhase::*;

    const T: Timeouts = Timeouts {
        creation: Duration::from_secs(20 * 60),
        health: Some(Duration::from_secs(10 * 60)),
    };

    fn at(mins: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + mins * 60).unwrap()
    }

    fn unhealthy() -> NodeHealth {
        NodeHealth::Unhealthy("Ready is False".into())
    }

    #[test]
    fn only_a_preserved_failed_machine_recovers() {
        let failed = Some((Failed, at(0)));
        let up = InstanceHealth::Up;
        let healthy = NodeHealth::Healthy;
        let d = recovered(failed, true, &up, &healthy, at(5)).unwrap();
        assert_eq!((d.phase, d.since), (Running, at(5)));
        assert_eq!(recovered(failed, false, &up, &healthy, at(5)), None);
        assert_eq!(recovered(failed, true, &up, &unhealthy(), at(5)), None);
        let gone = InstanceHealth::Gone("terminated".into());
        assert_eq!(recovered(failed, true, &gone, &healthy, at(5)), None);
        assert_eq!(
            recovered(Some((Unknown, at(0))), true, &up, &healthy, at(5)),
            None
        );
        // Not preserved, Failed stays Failed whatever the node says.
        assert_eq!(decide(failed, at(0), &up, &healthy, T, at(5)).phase, Failed);
    }

    #[test]
    fn new_machine_without_node_is_pending_until_creation_timeout() {
        let d = decide(
            None,
            at(0),
            &InstanceHealth::Up,
            &NodeHealth::Missing,
            T,
            at(5),
        );
        assert_eq!(d.phase, Pending);
        assert!(d.timeout_active);
        assert_eq!(d.recheck_after, Some(Duration::from_secs(15 * 60)));
        let d = decide(
            Some((Pending, at(0))),
            at(0),
            &InstanceHealth::Up,
            &NodeHealth::Missing,
            T,
            at(20),
        );
        assert_eq!(d.phase, Failed);
        assert!(
            d.description.contains("creation timeout of 20m"),
            "{}",
            d.description
        );
    }

    #[test]
    fn ready_node_makes_it_running_and_keeps_the_timestamp_stable() {
        let d = decide(
            Some((Pending, at(0))),
            at(0),
            &InstanceHealth::Up,
            &NodeHealth::Healthy,
            T,
            at(3),
        );
        assert_eq!(
            (d.phase, d.since, d.timeout_active),
            (Running, at(3), false)
        );
        let again = decide(
            Some((Running, at(3))),
            at(0),
            &InstanceHealth::Up,
            &NodeHealth::Healthy,
            T,
            at(50),
        );
        assert_eq!(again.since, at(3), "no churn while nothing changes");
        assert_eq!(again.description, d.description);
    }

    #[test]
    fn unhealthy_running_machine_goes_unknown_then_failed_after_health_timeout() {
        let d = decide(
            Some((Running, at(3))),
            at(0),
            &InstanceHealth::Up,
            &unhealthy(),
            T,
            at(30),
        );
        assert_eq!((d.phase, d.since), (Unknown, at(30)));
        assert_eq!(d.recheck_after, T.health);
        assert!(!d.health_timeout);
        let d = decide(
            Some((Unknown, at(30))),
            at(0),
            &InstanceHealth::Up,
            &NodeHealth::Missing,
            T,
            at(35),
        );
        assert_eq!((d.phase, d.since), (Unknown, at(30)));
        let d = decide(
            Some((Unknown, at(30))),
            at(0),
            &InstanceHealth::Up,
            &unhealthy(),
            T,
            at(40),
        );
        assert_eq!(d.phase, Failed);
        assert!(d.health_timeout, "the limited transition");
    }

    #[test]
    fn disabled_health_timeout_keeps_the_machine_unknown() {
        let disabled = Timeouts { health: None, ..T };
        let d = decide(
            Some((Unknown, at(30))),
            at(0),
            &InstanceHealth::Up,
            &unhealthy(),
            disabled,
            at(30 + 24 * 60),
        );
        assert_eq!((d.phase, d.since, d.recheck_after), (Unknown, at(30), None));
        assert!(
            d.description.contains("disableHealthTimeout"),
            "{}",
            d.description
        );
        // The creation timeout still holds, and so does a vanished instance.
        let pending = decide(
            None,
            at(0),
            &InstanceHealth::Up,
            &NodeHealth::Missing,
            disabled,
            at(20),
        );
        assert_eq!(pending.phase, Failed);
        assert!(!pending.health_timeout, "not limited per deployment");
        let gone = decide(
            Some((Unknown, at(30))),
            at(0),
            &InstanceHealth::Gone("terminated".into()),
            &unhealthy(),
            disabled,
            at(31),
        );
        assert_eq!(gone.phase, Failed);
    }

    #[test]
    fn unknown_machine_recovers_when_the_node_is_healthy_again() {
        let d = decide(
            Some((Unknown, at(30))),
            at(0),
            &InstanceHealth::Up,
            &NodeHealth::Healthy,
            T,
            at(33),
        );
        assert_eq!((d.phase, d.since), (Running, at(33)));
    }

    #[test]
    fn instance_terminated_by_ec2_fails_at_once() {
        let gone = InstanceHealth::Gone("Server.SpotInstanceTermination".into());
        let d = decide(
            Some((Running, at(3))),
            at(0),
            &gone,
            &NodeHealth::Healthy,
            T,
            at(4),
        );
        assert_eq!(d.phase, Failed);
        assert!(d.description.contains("SpotInstanceTermination"));
    }

    #[test]
    fn stopped_instance_is_reported_unknown_at_once() {
        let stopped = InstanceHealth::Stopped("User initiated".into());
        let d = decide(
            Some((Running, at(3))),
            at(0),
            &stopped,
            &NodeHealth::Healthy,
            T,
            at(4),
        );
        assert_eq!(d.phase, Unknown);
        assert!(d.description.contains("stopped"));
    }

    #[test]
    fn failed_is_terminal() {
        let d = decide(
            Some((Failed, at(9))),
            at(0),
            &InstanceHealth::Up,
            &NodeHealth::Healthy,
            T,
            at(10),
        );
        assert_eq!((d.phase, d.since), (Failed, at(9)));
    }

    #[test]
    fn durations_render_like_flags() {
        assert_eq!(human(Duration::from_secs(7200)), "2h");
        assert_eq!(human(Duration::from_secs(600)), "10m");
        assert_eq!(human(Duration::from_secs(90)), "1m30s");
        assert_eq!(human(Duration::from_secs(5400)), "1h30m");
    }
}
