//! Pure helpers for fleets of machines, shared by the MachineSet and
//! MachineDeployment reconcilers: what state a machine is in (terminating,
//! ready, available after `minReadySeconds`, drifted), MCM's scale-down
//! order, what a MachineSet must create or delete, and its status.
//!
//! No client here: every function takes the machines as they were listed and
//! the clock, so each rule has a plain unit test.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use super::drift::{CONDITION_DRIFTED, REPLACE_ON_DRIFT_ANNOTATION};
use crate::api::machine::Machine;
use crate::api::machine_set::{MachineSetCondition, MachineSetConditionType, MachineSetStatus};
use crate::api::shared::{ConditionStatus, MachinePhase, MachineState, MachineSummary};

/// MCM's annotation ranking machines for scale-down: lower values are
/// deleted first (the cluster-autoscaler sets `1` on the machine it removes).
/// Default 3.
pub const MACHINE_PRIORITY_ANNOTATION: &str = "machinepriority.machine.sapcloud.io";
const DEFAULT_PRIORITY: i32 = 3;

/// Most machines a MachineSet creates or deletes in one pass (MCM: 100).
pub const BURST: usize = 100;

/// Being deleted: deletion requested or phase Terminating. Such machines are
/// on their way out and are not counted towards `replicas`.
pub fn is_terminating(m: &Machine) -> bool {
    m.metadata.deletion_timestamp.is_some() || m.phase() == Some(MachinePhase::Terminating)
}

/// Not terminating.
pub fn is_active(m: &Machine) -> bool {
    !is_terminating(m)
}

/// Phase Failed (and not yet being deleted).
pub fn is_failed(m: &Machine) -> bool {
    is_active(m) && m.phase() == Some(MachinePhase::Failed)
}

/// Running: its Node is Ready.
pub fn is_ready(m: &Machine) -> bool {
    is_active(m) && m.phase() == Some(MachinePhase::Running)
}

/// How long until a ready machine counts as available (`None`: not ready, or
/// already available). The Running phase's timestamp is when it became Running.
pub fn available_in(m: &Machine, min_ready_seconds: i32, now: Timestamp) -> Option<Duration> {
    if !is_ready(m) || min_ready_seconds <= 0 {
        return None;
    }
    let since = m
        .status
        .as_ref()
        .and_then(|s| s.current_status.last_update_time.timestamp())?;
    let needed = Duration::from_secs(u64::try_from(min_ready_seconds).unwrap_or_default());
    let elapsed = Duration::try_from(now.duration_since(since)).unwrap_or_default();
    needed.checked_sub(elapsed).filter(|d| !d.is_zero())
}

/// Ready for at least `min_ready_seconds`.
pub fn is_available(m: &Machine, min_ready_seconds: i32, now: Timestamp) -> bool {
    is_ready(m) && available_in(m, min_ready_seconds, now).is_none()
}

/// The machine's `Drifted` condition is True.
pub fn is_drifted(m: &Machine) -> bool {
    m.status
        .as_ref()
        .and_then(|s| s.condition(CONDITION_DRIFTED))
        .is_some_and(|c| c.text.status == "True")
}

/// The value of [`MACHINE_PRIORITY_ANNOTATION`], 3 when absent or not a number.
pub fn priority(m: &Machine) -> i32 {
    m.annotations()
        .get(MACHINE_PRIORITY_ANNOTATION)
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(DEFAULT_PRIORITY)
}

/// Rank of a phase in the scale-down order: lower goes first.
fn phase_rank(phase: Option<MachinePhase>) -> u8 {
    match phase {
        Some(MachinePhase::Terminating) => 0,
        Some(MachinePhase::Failed) => 1,
        Some(MachinePhase::CrashLoopBackOff) => 2,
        Some(MachinePhase::Unknown) => 3,
        Some(MachinePhase::Pending) | None => 4,
        Some(MachinePhase::Available) => 5,
        Some(MachinePhase::Running) => 6,
        // MCM's in-place phases never occur here; keep them with Running.
        Some(_) => 6,
    }
}

/// Sorts machines into the order they are deleted on scale-down: preserved
/// machines (`preserveExpiryTime` set) last, then lower
/// `machinepriority` first (MCM ranks it above the phase), then Failed,
/// CrashLoopBackOff, Unknown, Pending before Running, then drifted before
/// up-to-date, then newest first; the name breaks ties.
pub fn sort_for_deletion(machines: &mut [&Machine]) {
    machines.sort_by_key(|m| {
        (
            super::preserved::expiry(m).is_some(),
            priority(m),
            phase_rank(m.phase()),
            !is_drifted(m),
            Reverse(m.creation_timestamp().map(|t| t.0)),
            m.name_any(),
        )
    });
}

/// What a MachineSet does in one pass.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetPlan {
    /// Machines to create.
    pub create: usize,
    /// Machines to delete, by name, in deletion order.
    pub delete: Vec<String>,
}

/// Plans one pass of a MachineSet with `replicas` over its `machines`:
///
/// - Failed machines are deleted (and replaced: they no longer count);
/// - too few healthy machines → create the difference;
/// - too many → delete the surplus in [`sort_for_deletion`] order;
/// - with `replace_on_drift` (or the annotation on a machine), drifted
///   machines are replaced one at a time: one extra machine is created while
///   every up-to-date machine is available, and a drifted machine is deleted
///   once the extra one is available.
///
/// At most [`BURST`] creations and deletions per pass.
pub fn plan_set(
    replicas: i32,
    machines: &[&Machine],
    replace_on_drift: bool,
    min_ready_seconds: i32,
    now: Timestamp,
) -> SetPlan {
    let replicas = usize::try_from(replicas).unwrap_or_default();
    let mut delete: Vec<String> = machines
        .iter()
        .filter(|m| is_failed(m))
        .map(|m| m.name_any())
        .collect();
    let healthy: Vec<&Machine> = machines
        .iter()
        .copied()
        .filter(|m| is_active(m) && !is_failed(m))
        .collect();
    let replaceable = |m: &Machine| {
        is_drifted(m)
            && (replace_on_drift
                || m.annotations()
                    .get(REPLACE_ON_DRIFT_ANNOTATION)
                    .map(String::as_str)
                    == Some("true"))
    };
    let drifted = healthy.iter().filter(|m| replaceable(m)).count();
    let fresh_settled = healthy
        .iter()
        .filter(|m| !replaceable(m))
        .all(|m| is_available(m, min_ready_seconds, now));

    let mut create = 0;
    let mut surplus = healthy.len().saturating_sub(replicas);
    if healthy.len() < replicas {
        create = replicas - healthy.len();
    } else if drifted > 0 && replicas > 0 {
        if healthy.len() == replicas && fresh_settled {
            // Surge one machine for a drifted one.
            create = 1;
        } else if !fresh_settled {
            // A replacement is on its way: keep the drifted machine until it
            // is available.
            surplus = surplus.saturating_sub(1);
        }
    }
    if surplus > 0 {
        let mut candidates = healthy.clone();
        sort_for_deletion(&mut candidates);
        delete.extend(candidates.iter().take(surplus).map(|m| m.name_any()));
    }
    delete.truncate(BURST);
    SetPlan {
        create: create.min(BURST),
        delete,
    }
}

/// Batch sizes for `count` creations: 1, 2, 4, ... (MCM's slow start), so a
/// failing creation (quota, invalid template) costs one call, not `count`.
pub fn slow_start_batches(count: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut left = count;
    let mut size = 1;
    while left > 0 {
        let batch = size.min(left);
        out.push(batch);
        left -= batch;
        size *= 2;
    }
    out
}

/// Whether `labels` contain every template label.
pub fn has_labels(labels: &BTreeMap<String, String>, wanted: &BTreeMap<String, String>) -> bool {
    wanted.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The MachineSet status for `machines`. `failure` is a create/delete error
/// of this pass (reason, message): it sets `ReplicaFailure`, and a pass
/// without one clears it. Conditions of other types (`Frozen`) and fields this
/// reconciler does not own are kept from `old`; timestamps move only on
/// transitions.
pub fn set_status(
    old: &MachineSetStatus,
    generation: Option<i64>,
    template_labels: &BTreeMap<String, String>,
    machines: &[&Machine],
    min_ready_seconds: i32,
    failure: Option<(&str, &str)>,
    now: Timestamp,
) -> MachineSetStatus {
    let active: Vec<&Machine> = machines.iter().copied().filter(|m| is_active(m)).collect();
    let count = |pred: &dyn Fn(&Machine) -> bool| -> i32 {
        i32::try_from(active.iter().filter(|m| pred(m)).count()).unwrap_or(i32::MAX)
    };
    let mut failed_machines: Vec<MachineSummary> = machines
        .iter()
        .filter_map(|m| {
            let status = m.status.as_ref()?;
            (status.last_operation.state == Some(MachineState::Failed)).then(|| MachineSummary {
                name: m.name_any(),
                provider_id: m.spec.provider_id.clone(),
                last_operation: status.last_operation.clone(),
                owner_ref: m
                    .owner_references()
                    .iter()
                    .find(|o| o.controller == Some(true))
                    .map(|o| o.name.clone()),
            })
        })
        .collect();
    failed_machines.sort_by(|a, b| a.name.cmp(&b.name));

    let mut conditions: Vec<MachineSetCondition> = old
        .conditions
        .iter()
        .filter(|c| c.type_ != MachineSetConditionType::ReplicaFailure)
        .cloned()
        .collect();
    if let Some((reason, message)) = failure {
        let previous = old.condition(MachineSetConditionType::ReplicaFailure);
        let same = previous.is_some_and(|p| {
            p.status == ConditionStatus::True && p.message.as_deref() == Some(message)
        });
        conditions.push(match previous {
            Some(p) if same => p.clone(),
            _ => MachineSetCondition {
                type_: MachineSetConditionType::ReplicaFailure,
                status: ConditionStatus::True,
                last_transition_time: Some(Time(now)),
                reason: Some(reason.to_string()),
                message: Some(message.to_string()),
            },
        });
    }

    MachineSetStatus {
        replicas: i32::try_from(active.len()).unwrap_or(i32::MAX),
        fully_labeled_replicas: count(&|m| has_labels(m.labels(), template_labels)),
        ready_replicas: count(&is_ready),
        available_replicas: count(&|m| is_available(m, min_ready_seconds, now)),
        observed_generation: generation.unwrap_or_default(),
        conditions,
        last_operation: old.last_operation.clone(),
        failed_machines,
        auto_preserve_failed_machine_count: old.auto_preserve_failed_machine_count,
        preserved_failed_replicas: old.preserved_failed_replicas,
    }
}

/// When the next machine becomes available (for a timed re-check).
pub fn next_available(
    machines: &[&Machine],
    min_ready_seconds: i32,
    now: Timestamp,
) -> Option<Duration> {
    machines
        .iter()
        .filter_map(|m| available_in(m, min_ready_seconds, now))
        .min()
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! `machine("m1").phase(Running).since(10).created(3)`-style builders.
    use super::*;
    use crate::api::machine::{ConditionText, MachineCondition, MachineSpec, MachineStatus};
    use crate::api::shared::{CurrentStatus, LastOperation};

    pub fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).unwrap()
    }

    pub struct M(pub Machine);

    pub fn machine(name: &str) -> M {
        let mut m = Machine::new(name, MachineSpec::default());
        m.metadata.creation_timestamp = Some(Time(at(0)));
        M(m)
    }

    impl M {
        pub fn phase(mut self, phase: MachinePhase) -> Self {
            let status = self.0.status.get_or_insert_with(MachineStatus::default);
            status.current_status = CurrentStatus {
                phase: Some(phase),
                last_update_time: at(0).into(),
                ..CurrentStatus::default()
            };
            self
        }
        /// Running since `secs`.
        pub fn running_since(mut self, secs: i64) -> Self {
            self = self.phase(MachinePhase::Running);
            if let Some(s) = self.0.status.as_mut() {
                s.current_status.last_update_time = at(secs).into();
            }
            self
        }
        pub fn created(mut self, secs: i64) -> Self {
            self.0.metadata.creation_timestamp = Some(Time(at(secs)));
            self
        }
        pub fn annotated(mut self, key: &str, value: &str) -> Self {
            self.0
                .metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(key.into(), value.into());
            self
        }
        pub fn drifted(mut self) -> Self {
            let status = self.0.status.get_or_insert_with(MachineStatus::default);
            status.conditions.push(MachineCondition {
                text: ConditionText {
                    type_: CONDITION_DRIFTED.into(),
                    status: "True".into(),
                    ..ConditionText::default()
                }
                .into(),
                ..MachineCondition::default()
            });
            self
        }
        pub fn deleting(mut self) -> Self {
            self.0.metadata.deletion_timestamp = Some(Time(at(0)));
            self
        }
        pub fn failed_op(mut self, description: &str) -> Self {
            let status = self.0.status.get_or_insert_with(MachineStatus::default);
            status.last_operation = LastOperation {
                description: description.into(),
                state: Some(MachineState::Failed),
                ..LastOperation::default()
            };
            self
        }
        pub fn build(self) -> Machine {
            self.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;
    use MachinePhase::*;

    fn names(ms: &[&Machine]) -> Vec<String> {
        ms.iter().map(|m| m.name_any()).collect()
    }

    #[test]
    fn scale_down_order_is_priority_then_phase_then_newest() {
        let ms = [
            machine("old-running").running_since(0).created(1).build(),
            machine("new-running").running_since(0).created(9).build(),
            machine("pending").phase(Pending).created(2).build(),
            machine("unknown").phase(Unknown).created(3).build(),
            machine("crashing")
                .phase(CrashLoopBackOff)
                .created(4)
                .build(),
            machine("failed").phase(Failed).created(5).build(),
            machine("chosen")
                .running_since(0)
                .created(0)
                .annotated(MACHINE_PRIORITY_ANNOTATION, "1")
                .build(),
            machine("kept")
                .phase(Failed)
                .annotated(MACHINE_PRIORITY_ANNOTATION, "5")
                .build(),
        ];
        let mut refs: Vec<&Machine> = ms.iter().collect();
        sort_for_deletion(&mut refs);
        assert_eq!(
            names(&refs),
            [
                "chosen",
                "failed",
                "crashing",
                "unknown",
                "pending",
                "new-running",
                "old-running",
                "kept"
            ]
        );
    }

    #[test]
    fn preserved_machines_go_last_in_a_scale_down() {
        let mut preserved = machine("preserved").running_since(0).created(9).build();
        if let Some(s) = preserved.status.as_mut() {
            s.current_status.preserve_expiry_time = at(100).into();
        }
        let ms = [
            preserved,
            machine("old").running_since(0).created(1).build(),
            machine("new").running_since(0).created(5).build(),
        ];
        let mut refs: Vec<&Machine> = ms.iter().collect();
        sort_for_deletion(&mut refs);
        assert_eq!(names(&refs), ["new", "old", "preserved"]);
        assert_eq!(
            plan_set(2, &refs, false, 0, at(9)).delete,
            ["new".to_string()]
        );
    }

    #[test]
    fn unparsable_priority_counts_as_default() {
        let m = machine("m")
            .annotated(MACHINE_PRIORITY_ANNOTATION, "high")
            .build();
        assert_eq!(priority(&m), 3);
    }

    #[test]
    fn availability_waits_min_ready_seconds_after_running() {
        let m = machine("m").running_since(10).build();
        assert!(is_ready(&m));
        assert!(!is_available(&m, 30, at(20)));
        assert_eq!(available_in(&m, 30, at(20)), Some(Duration::from_secs(20)));
        assert!(is_available(&m, 30, at(40)));
        assert!(is_available(&m, 0, at(10)));
        let gone = machine("g").running_since(0).deleting().build();
        assert!(!is_ready(&gone) && !is_available(&gone, 0, at(10)));
    }

    #[test]
    fn set_creates_missing_and_deletes_surplus_in_order() {
        let ms = [
            machine("a").running_since(0).created(1).build(),
            machine("b").running_since(0).created(2).build(),
            machine("c").phase(Pending).created(3).build(),
        ];
        let refs: Vec<&Machine> = ms.iter().collect();
        assert_eq!(plan_set(5, &refs, false, 0, at(9)).create, 2);
        assert_eq!(
            plan_set(1, &refs, false, 0, at(9)).delete,
            ["c".to_string(), "b".to_string()]
        );
        assert_eq!(plan_set(3, &refs, false, 0, at(9)), SetPlan::default());
    }

    #[test]
    fn failed_machines_are_deleted_and_replaced_in_the_same_pass() {
        let ms = [
            machine("a").running_since(0).build(),
            machine("f").phase(Failed).build(),
            machine("t").phase(Failed).deleting().build(),
        ];
        let refs: Vec<&Machine> = ms.iter().collect();
        let plan = plan_set(2, &refs, false, 0, at(9));
        assert_eq!(plan.delete, ["f".to_string()]);
        assert_eq!(plan.create, 1, "terminating machines do not count");
    }

    #[test]
    fn drifted_machines_are_surged_one_at_a_time_only_when_asked() {
        let two_drifted = [
            machine("a").running_since(0).created(1).drifted().build(),
            machine("b").running_since(0).created(2).drifted().build(),
        ];
        let refs: Vec<&Machine> = two_drifted.iter().collect();
        assert_eq!(plan_set(2, &refs, false, 0, at(9)), SetPlan::default());
        assert_eq!(plan_set(2, &refs, true, 0, at(9)).create, 1);

        // The surge machine is not available yet: nothing is deleted.
        let surging = [
            machine("a").running_since(0).created(1).drifted().build(),
            machine("b").running_since(0).created(2).drifted().build(),
            machine("c").phase(Pending).created(3).build(),
        ];
        let refs: Vec<&Machine> = surging.iter().collect();
        assert_eq!(plan_set(2, &refs, true, 0, at(9)), SetPlan::default());

        // Available: the newest drifted machine goes, nothing new is created.
        let settled = [
            machine("a").running_since(0).created(1).drifted().build(),
            machine("b").running_since(0).created(2).drifted().build(),
            machine("c").running_since(5).created(3).build(),
        ];
        let refs: Vec<&Machine> = settled.iter().collect();
        assert_eq!(
            plan_set(2, &refs, true, 0, at(9)),
            SetPlan {
                create: 0,
                delete: vec!["b".into()]
            }
        );
        // minReadySeconds is honoured before deleting.
        assert_eq!(plan_set(2, &refs, true, 10, at(9)), SetPlan::default());

        // The annotation on a single machine is enough.
        let one = [machine("a")
            .running_since(0)
            .drifted()
            .annotated(REPLACE_ON_DRIFT_ANNOTATION, "true")
            .build()];
        let refs: Vec<&Machine> = one.iter().collect();
        assert_eq!(plan_set(1, &refs, false, 0, at(9)).create, 1);
    }

    #[test]
    fn slow_start_doubles() {
        assert_eq!(slow_start_batches(0), Vec::<usize>::new());
        assert_eq!(slow_start_batches(1), [1]);
        assert_eq!(slow_start_batches(10), [1, 2, 4, 3]);
    }

    #[test]
    fn status_counts_and_keeps_timestamps_stable() {
        let labels = BTreeMap::from([("pool".to_string(), "a".to_string())]);
        let mut labeled = machine("a").running_since(0).build();
        labeled.metadata.labels = Some(labels.clone());
        let ms = [
            labeled,
            machine("b").running_since(8).build(),
            machine("c").phase(Pending).failed_op("quota").build(),
            machine("d").running_since(0).deleting().build(),
        ];
        let refs: Vec<&Machine> = ms.iter().collect();
        let s = set_status(
            &MachineSetStatus::default(),
            Some(4),
            &labels,
            &refs,
            5,
            Some(("FailedCreate", "boom")),
            at(10),
        );
        assert_eq!(
            (
                s.replicas,
                s.fully_labeled_replicas,
                s.ready_replicas,
                s.available_replicas,
                s.observed_generation
            ),
            (3, 1, 2, 1, 4)
        );
        assert_eq!(s.failed_machines.len(), 1);
        assert_eq!(s.failed_machines[0].name, "c");
        let failure = s
            .condition(MachineSetConditionType::ReplicaFailure)
            .unwrap();
        assert_eq!(failure.last_transition_time, Some(Time(at(10))));
        let again = set_status(
            &s,
            Some(4),
            &labels,
            &refs,
            5,
            Some(("FailedCreate", "boom")),
            at(20),
        );
        assert_eq!(
            again
                .condition(MachineSetConditionType::ReplicaFailure)
                .unwrap()
                .last_transition_time,
            Some(Time(at(10))),
            "same failure, same timestamp"
        );
        let cleared = set_status(&again, Some(4), &labels, &refs, 5, None, at(30));
        assert!(cleared.conditions.is_empty());
        assert_eq!(
            next_available(&refs, 5, at(10)),
            Some(Duration::from_secs(3))
        );
    }
}
