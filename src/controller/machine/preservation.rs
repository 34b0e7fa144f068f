//! Machine preservation (MCM v0.62), the pure half: which preserve value is
//! in force for a machine, and whether it is preserved now, until when, and
//! what happens to the annotation when preservation ends.
//!
//! The annotation [`PRESERVE_ANNOTATION`] sits on the Node or on the Machine;
//! the Node wins whenever it has a value. Values: `now` (preserved in any
//! phase), `when-failed` (preserved while Failed), `auto-preserved` (written
//! by the MachineSet for `autoPreserveFailedMachineMax`, preserved while
//! Failed; dropped when the machine is no longer Failed), `false` or empty
//! (not preserved). Preservation ends at `status.currentStatus.preserveExpiryTime`,
//! set once when it starts; the annotation is then removed, and on a Failed
//! machine replaced by `false` on the Machine so that its set does not
//! auto-preserve it again before deleting it.
//!
//! The Machine reconciler applies [`plan`]'s answer: the Node's marks (see
//! [`crate::controller::node::preserve`]) and the expiry, which is written in
//! the same status update as the phase, so that a set never sees a Failed
//! machine that is about to be preserved without its expiry.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

/// The preserve annotation (Node or Machine), MCM's key.
pub const PRESERVE_ANNOTATION: &str = "node.machine.sapcloud.io/preserve";
/// Machine annotation: the invalid preserve value last reported in a Warning
/// Event, so that it is reported once per change, not on every pass.
pub const INVALID_REPORTED_ANNOTATION: &str = "node.machine.sapcloud.io/preserve-invalid-reported";

/// A valid value of [`PRESERVE_ANNOTATION`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preserve {
    Now,
    WhenFailed,
    AutoPreserved,
    False,
}

impl Preserve {
    /// The value as written; `None` for anything else.
    pub fn parse(value: &str) -> Option<Preserve> {
        match value {
            "now" => Some(Preserve::Now),
            "when-failed" => Some(Preserve::WhenFailed),
            "auto-preserved" => Some(Preserve::AutoPreserved),
            "false" => Some(Preserve::False),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Preserve::Now => "now",
            Preserve::WhenFailed => "when-failed",
            Preserve::AutoPreserved => "auto-preserved",
            Preserve::False => "false",
        }
    }
}

/// Which object the value in force came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Node,
    Machine,
}

/// The preserve value in force for one machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wish {
    /// No annotation, or an empty one.
    Unset,
    Value(Preserve, Source),
    /// A value that is not one of MCM's: ignored (nothing changes because
    /// of it) and reported.
    Invalid(String, Source),
}

impl Wish {
    /// The valid value, if any.
    pub fn value(&self) -> Option<Preserve> {
        match self {
            Wish::Value(v, _) => Some(*v),
            _ => None,
        }
    }
}

/// The value in force: the Node's when it has a value, else the Machine's.
/// (An empty value says nothing: as MCM documents, a machine whose
/// annotation was emptied may be auto-preserved again.)
pub fn wish(node: Option<&BTreeMap<String, String>>, machine: &BTreeMap<String, String>) -> Wish {
    let on_node = node
        .and_then(|n| n.get(PRESERVE_ANNOTATION))
        .filter(|v| !v.trim().is_empty());
    let (value, source) = match on_node {
        Some(v) => (v, Source::Node),
        None => match machine.get(PRESERVE_ANNOTATION) {
            Some(v) => (v, Source::Machine),
            None => return Wish::Unset,
        },
    };
    let value = value.trim();
    if value.is_empty() {
        return Wish::Unset;
    }
    match Preserve::parse(value) {
        Some(p) => Wish::Value(p, source),
        None => Wish::Invalid(value.to_string(), source),
    }
}

/// What to do with the preserve annotation when preservation ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnnotationChange {
    Keep,
    /// Remove it from the Node (when it came from there) and from the
    /// Machine; with `machine_false`, the Machine gets `false` instead.
    Remove {
        machine_false: bool,
    },
}

/// The state a machine's preservation should be in after this pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Preserved until `until`; a Failed machine's Node is also tainted and
    /// drained.
    Preserved { until: Timestamp, failed: bool },
    /// Not preserved: what we added goes (when `was_preserved`), the expiry
    /// is cleared last.
    Released {
        was_preserved: bool,
        annotation: AnnotationChange,
    },
}

impl Plan {
    pub fn expiry(&self) -> Option<Timestamp> {
        match self {
            Plan::Preserved { until, .. } => Some(*until),
            Plan::Released { .. } => None,
        }
    }
}

/// Decides one pass: `wish` in force, whether the machine is (about to be
/// written) Failed, the current `preserveExpiryTime`, the machine's preserve
/// timeout and the clock.
pub fn plan(
    wish: &Wish,
    failed: bool,
    expiry: Option<Timestamp>,
    timeout: Duration,
    now: Timestamp,
) -> Plan {
    let was_preserved = expiry.is_some();
    let keep = Plan::Released {
        was_preserved,
        annotation: AnnotationChange::Keep,
    };
    if expiry.is_some_and(|t| t <= now) {
        // Expired: stop, and see that the same annotation does not start it
        // again right away.
        return match wish {
            Wish::Value(Preserve::False, _) | Wish::Unset => keep,
            _ => Plan::Released {
                was_preserved,
                annotation: AnnotationChange::Remove {
                    machine_false: failed,
                },
            },
        };
    }
    let start = || Plan::Preserved {
        until: expiry.unwrap_or_else(|| after(now, timeout)),
        failed,
    };
    match wish {
        Wish::Unset | Wish::Value(Preserve::False, _) => keep,
        // An invalid value changes nothing: a preservation running goes on
        // until its expiry, none starts.
        Wish::Invalid(..) => match expiry {
            Some(until) => Plan::Preserved { until, failed },
            None => keep,
        },
        Wish::Value(Preserve::Now, _) => start(),
        Wish::Value(Preserve::WhenFailed, _) if failed => start(),
        Wish::Value(Preserve::WhenFailed, _) => keep,
        Wish::Value(Preserve::AutoPreserved, _) if failed => start(),
        // The set's annotation goes with the failure, so that a later
        // failure is counted against the set's limit afresh.
        Wish::Value(Preserve::AutoPreserved, source) => Plan::Released {
            was_preserved,
            annotation: if *source == Source::Machine {
                AnnotationChange::Remove {
                    machine_false: false,
                }
            } else {
                AnnotationChange::Keep
            },
        },
    }
}

/// How long a machine is preserved: its own `machinePreserveTimeout`, else
/// the flag.
pub fn timeout(own: Option<&kube::core::Duration>, default: Duration) -> Duration {
    own.filter(|d| !d.is_negative())
        .map(|d| Duration::from(*d))
        .unwrap_or(default)
}

/// `now + d`, saturating at the end of time rather than failing.
fn after(now: Timestamp, d: Duration) -> Timestamp {
    let d = SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX);
    now.checked_add(d).unwrap_or(Timestamp::MAX)
}

/// When to look again so that preservation ends on time.
pub fn recheck(plan: &Plan, now: Timestamp) -> Option<Duration> {
    let until = plan.expiry()?;
    Some(
        Duration::try_from(now.duration_until(until))
            .unwrap_or_default()
            .max(Duration::from_secs(1)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use Preserve::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).unwrap()
    }

    fn ann(v: &str) -> BTreeMap<String, String> {
        BTreeMap::from([(PRESERVE_ANNOTATION.to_string(), v.to_string())])
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn the_node_wins_when_it_has_the_key() {
        let none = BTreeMap::new();
        assert_eq!(wish(None, &none), Wish::Unset);
        assert_eq!(wish(None, &ann("now")), Wish::Value(Now, Source::Machine));
        assert_eq!(
            wish(Some(&ann("when-failed")), &ann("now")),
            Wish::Value(WhenFailed, Source::Node)
        );
        assert_eq!(
            wish(Some(&none), &ann("false")),
            Wish::Value(False, Source::Machine)
        );
        // An empty Node value says nothing.
        assert_eq!(
            wish(Some(&ann("")), &ann("now")),
            Wish::Value(Now, Source::Machine)
        );
        assert_eq!(wish(None, &ann(" ")), Wish::Unset);
        assert_eq!(
            wish(Some(&ann("forever")), &ann("now")),
            Wish::Invalid("forever".into(), Source::Node)
        );
        assert_eq!(
            wish(None, &ann(" auto-preserved ")),
            Wish::Value(AutoPreserved, Source::Machine)
        );
        for junk in ["NOW", "true", "\u{0}", "when_failed"] {
            assert!(
                matches!(wish(None, &ann(junk)), Wish::Invalid(..)),
                "{junk}"
            );
        }
    }

    #[test]
    fn expiry_is_set_once_from_the_timeout() {
        let now_wish = Wish::Value(Now, Source::Machine);
        let p = plan(&now_wish, false, None, HOUR, at(0));
        assert_eq!(
            p,
            Plan::Preserved {
                until: at(3600),
                failed: false
            }
        );
        // Later passes keep the expiry, whatever the timeout says now.
        let again = plan(&now_wish, true, Some(at(3600)), 2 * HOUR, at(10));
        assert_eq!(
            again,
            Plan::Preserved {
                until: at(3600),
                failed: true
            }
        );
        assert_eq!(recheck(&again, at(10)), Some(Duration::from_secs(3590)));
        // A huge timeout saturates instead of failing.
        let far = plan(&now_wish, false, None, Duration::MAX, at(0));
        assert!(far.expiry().is_some());
    }

    #[test]
    fn what_each_value_does_per_phase() {
        let w = |p| Wish::Value(p, Source::Machine);
        let released = |was, annotation| Plan::Released {
            was_preserved: was,
            annotation,
        };
        // when-failed: only while Failed.
        assert_eq!(
            plan(&w(WhenFailed), false, None, HOUR, at(0)),
            released(false, AnnotationChange::Keep)
        );
        assert!(matches!(
            plan(&w(WhenFailed), true, None, HOUR, at(0)),
            Plan::Preserved { failed: true, .. }
        ));
        // Recovered: released, the annotation stays for the next failure.
        assert_eq!(
            plan(&w(WhenFailed), false, Some(at(100)), HOUR, at(0)),
            released(true, AnnotationChange::Keep)
        );
        // auto-preserved: while Failed; the set's annotation goes with it.
        assert!(matches!(
            plan(&w(AutoPreserved), true, None, HOUR, at(0)),
            Plan::Preserved { .. }
        ));
        assert_eq!(
            plan(&w(AutoPreserved), false, Some(at(100)), HOUR, at(0)),
            released(
                true,
                AnnotationChange::Remove {
                    machine_false: false
                }
            )
        );
        // false and unset: stop.
        for stop in [w(False), Wish::Unset] {
            assert_eq!(
                plan(&stop, true, Some(at(100)), HOUR, at(0)),
                released(true, AnnotationChange::Keep)
            );
            assert_eq!(
                plan(&stop, true, None, HOUR, at(0)),
                released(false, AnnotationChange::Keep)
            );
        }
        // An invalid value changes nothing.
        let bad = Wish::Invalid("x".into(), Source::Node);
        assert_eq!(
            plan(&bad, true, None, HOUR, at(0)),
            released(false, AnnotationChange::Keep)
        );
        assert_eq!(
            plan(&bad, true, Some(at(100)), HOUR, at(0)),
            Plan::Preserved {
                until: at(100),
                failed: true
            }
        );
    }

    #[test]
    fn at_expiry_the_annotation_goes_and_failed_machines_are_not_preserved_again() {
        let removed = |machine_false| Plan::Released {
            was_preserved: true,
            annotation: AnnotationChange::Remove { machine_false },
        };
        let now_on_node = Wish::Value(Now, Source::Node);
        let running = plan(&now_on_node, false, Some(at(100)), HOUR, at(100));
        assert_eq!(running, removed(false));
        let auto = Wish::Value(AutoPreserved, Source::Machine);
        let failed = plan(&auto, true, Some(at(100)), HOUR, at(200));
        assert_eq!(failed, removed(true));
        assert_eq!(recheck(&failed, at(200)), None);
    }

    #[test]
    fn the_timeout_is_the_machines_own_else_the_flag() {
        let own: kube::core::Duration = "10s".parse().unwrap();
        assert_eq!(timeout(Some(&own), HOUR), Duration::from_secs(10));
        assert_eq!(timeout(None, HOUR), HOUR);
        let negative: kube::core::Duration = "-10s".parse().unwrap();
        assert_eq!(timeout(Some(&negative), HOUR), HOUR);
    }
}
