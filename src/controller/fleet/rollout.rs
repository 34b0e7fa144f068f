//! Pure rollout math of a MachineDeployment: Kubernetes Deployment semantics
//! (rolling update within maxSurge/maxUnavailable, Recreate, scaling while
//! paused, status conditions), counted in machines rather than in the sets'
//! `replicas` alone.
//!
//! Why machines: a machine being drained and terminated still holds an
//! instance, and a set whose `replicas` was just lowered still has every
//! machine until it acts. So a set's *footprint* (what counts against
//! `replicas + maxSurge`) is `max(replicas, live machines) + terminating
//! machines`, and the availability a set is credited with is
//! `min(available machines, replicas)`: its scale-down removes unavailable
//! machines first. Both bounds then hold at every moment, not only once
//! everything settled.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;

use crate::api::machine_deployment::{
    MachineDeploymentCondition, MachineDeploymentConditionType, MachineDeploymentStatus,
    MachineDeploymentStrategy,
};
use crate::api::shared::ConditionStatus;

/// Default `maxSurge` and `maxUnavailable` (as documented on the CRD).
pub const DEFAULT_MAX_SURGE: i32 = 1;
pub const DEFAULT_MAX_UNAVAILABLE: i32 = 1;

/// `maxSurge` and `maxUnavailable` in machines for `replicas`: percentages
/// round up for surge and down for unavailable; both zero means one
/// unavailable; unavailable never exceeds `replicas`.
pub fn limits(strategy: &MachineDeploymentStrategy, replicas: i32) -> Result<(i32, i32), String> {
    let rolling = strategy.rolling_update.clone().unwrap_or_default();
    let surge = scaled(
        rolling.max_surge.as_ref(),
        DEFAULT_MAX_SURGE,
        replicas,
        true,
    )
    .map_err(|e| format!("strategy.rollingUpdate.maxSurge: {e}"))?;
    let mut unavailable = scaled(
        rolling.max_unavailable.as_ref(),
        DEFAULT_MAX_UNAVAILABLE,
        replicas,
        false,
    )
    .map_err(|e| format!("strategy.rollingUpdate.maxUnavailable: {e}"))?;
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    Ok((surge, unavailable.min(replicas.max(0))))
}

fn scaled(
    value: Option<&IntOrString>,
    default: i32,
    total: i32,
    round_up: bool,
) -> Result<i32, String> {
    let v = match value {
        None => return Ok(default),
        Some(IntOrString::Int(i)) if *i >= 0 => return Ok(*i),
        Some(IntOrString::Int(i)) => return Err(format!("{i} is negative")),
        Some(IntOrString::String(s)) => s,
    };
    let percent: i64 = v
        .strip_suffix('%')
        .and_then(|p| p.trim().parse().ok())
        .filter(|p| *p >= 0)
        .ok_or_else(|| format!("{v:?} is neither a number nor a percentage like \"25%\""))?;
    let product = percent.saturating_mul(i64::from(total.max(0)));
    let value = if round_up {
        product.saturating_add(99) / 100
    } else {
        product / 100
    };
    Ok(clamp(value))
}

/// One MachineSet of a deployment, as the rollout sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetView {
    pub name: String,
    /// Creation time: old sets are scaled down oldest first.
    pub created: Option<Timestamp>,
    /// `spec.replicas`.
    pub replicas: i32,
    /// Machines not being deleted.
    pub active: i32,
    /// Machines being deleted (drain, instance termination).
    pub terminating: i32,
    /// Active machines Running for at least `minReadySeconds`.
    pub available: i32,
    /// Active machines Running.
    pub ready: i32,
}

impl SetView {
    /// Machines this set has or is about to have.
    pub fn footprint(&self) -> i64 {
        i64::from(self.replicas.max(self.active)) + i64::from(self.terminating)
    }

    /// Availability the set keeps once it has reached `replicas`.
    pub fn settled_available(&self) -> i64 {
        i64::from(self.available.min(self.replicas))
    }

    /// Whether any of its machines still exists.
    pub fn has_machines(&self) -> bool {
        self.active > 0 || self.terminating > 0
    }
}

/// A count computed in `i64` (where sums of spec values cannot overflow) back
/// in the API's `i32`, saturating at its bounds.
fn clamp(v: i64) -> i32 {
    i32::try_from(v).unwrap_or(if v < 0 { i32::MIN } else { i32::MAX })
}

fn oldest_first(old: &[SetView]) -> Vec<SetView> {
    let mut sorted = old.to_vec();
    sorted.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
    sorted
}

/// `replicas` changes of one rolling-update step: scale the new set up as far
/// as `replicas + surge` allows, else scale old sets down as far as
/// `replicas - unavailable` available machines allow (unhealthy machines of
/// old sets first). Empty when nothing can move now.
pub fn rolling_step(
    replicas: i32,
    surge: i32,
    unavailable: i32,
    new: &SetView,
    old: &[SetView],
) -> Vec<(String, i32)> {
    if new.replicas > replicas {
        return vec![(new.name.clone(), replicas)];
    }
    // Sums of spec values are taken in i64: `replicas + maxSurge` of two
    // i32::MAX must not overflow.
    let (replicas_64, new_replicas) = (i64::from(replicas), i64::from(new.replicas));
    if new.replicas < replicas {
        let max_total = replicas_64 + i64::from(surge);
        let current: i64 = new.footprint() + old.iter().map(SetView::footprint).sum::<i64>();
        if current < max_total {
            let target = (new_replicas + max_total - current).min(replicas_64);
            return vec![(new.name.clone(), clamp(target))];
        }
    }

    let old_total: i64 = old.iter().map(|s| i64::from(s.replicas)).sum();
    if old_total == 0 {
        return Vec::new();
    }
    let min_available = replicas_64 - i64::from(unavailable);
    let new_unavailable = new_replicas - new.settled_available();
    let max_scaled_down = new_replicas + old_total - min_available - new_unavailable;
    if max_scaled_down <= 0 {
        return Vec::new();
    }
    let mut sets = oldest_first(old);
    let original: Vec<i32> = sets.iter().map(|s| s.replicas).collect();

    // Unhealthy machines of old sets go first: removing them costs nothing.
    let mut cleaned: i64 = 0;
    for s in &mut sets {
        if cleaned >= max_scaled_down {
            break;
        }
        let unhealthy = i64::from(s.replicas) - s.settled_available();
        if s.replicas == 0 || unhealthy <= 0 {
            continue;
        }
        let n = unhealthy.min(max_scaled_down - cleaned);
        s.replicas = clamp(i64::from(s.replicas) - n);
        cleaned += n;
    }

    // Then available ones, as long as enough stay available.
    let available: i64 =
        new.settled_available() + sets.iter().map(SetView::settled_available).sum::<i64>();
    if available > min_available {
        let mut left = available - min_available;
        for s in &mut sets {
            if left == 0 {
                break;
            }
            let n = i64::from(s.replicas).min(left);
            s.replicas = clamp(i64::from(s.replicas) - n);
            left -= n;
        }
    }
    sets.iter()
        .zip(original)
        .filter(|(s, before)| s.replicas != *before)
        .map(|(s, _)| (s.name.clone(), s.replicas))
        .collect()
}

/// One step of a `Recreate` rollout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecreateStep {
    /// Scale these old sets to zero.
    ScaleOldToZero(Vec<String>),
    /// Old machines are still being deleted.
    WaitForOldMachines,
    /// Create the new set (with `replicas`) or scale it to `replicas`.
    ScaleNew(i32),
    Done,
}

/// All old machines are gone before the new set gets any.
pub fn recreate_step(replicas: i32, new: Option<&SetView>, old: &[SetView]) -> RecreateStep {
    let to_zero: Vec<String> = old
        .iter()
        .filter(|s| s.replicas > 0)
        .map(|s| s.name.clone())
        .collect();
    if !to_zero.is_empty() {
        return RecreateStep::ScaleOldToZero(to_zero);
    }
    if old.iter().any(SetView::has_machines) {
        return RecreateStep::WaitForOldMachines;
    }
    match new {
        Some(n) if n.replicas == replicas => RecreateStep::Done,
        _ => RecreateStep::ScaleNew(replicas),
    }
}

/// `replicas` changes to reach `replicas` machines without rolling (paused
/// deployments): growth goes to the first set (the newest), shrinking takes
/// from the oldest sets first. `sets` is ordered newest first.
pub fn scale_without_rollout(replicas: i32, sets: &[SetView]) -> Vec<(String, i32)> {
    let total: i64 = sets.iter().map(|s| i64::from(s.replicas)).sum();
    let Some(first) = sets.first() else {
        return Vec::new();
    };
    let replicas = i64::from(replicas);
    if total < replicas {
        let grown = i64::from(first.replicas) + replicas - total;
        return vec![(first.name.clone(), clamp(grown))];
    }
    let mut excess = total - replicas;
    let mut out = Vec::new();
    for s in sets.iter().rev() {
        if excess == 0 {
            break;
        }
        let n = i64::from(s.replicas).min(excess);
        if n > 0 {
            out.push((s.name.clone(), clamp(i64::from(s.replicas) - n)));
            excess -= n;
        }
    }
    out
}

/// Old sets to delete under `revisionHistoryLimit` (`None`: keep all):
/// scaled to zero, without machines, oldest first.
pub fn history_to_delete(old: &[SetView], limit: Option<i32>) -> Vec<String> {
    let Some(limit) = limit else {
        return Vec::new();
    };
    let idle: Vec<SetView> = oldest_first(old)
        .into_iter()
        .filter(|s| s.replicas == 0 && !s.has_machines())
        .collect();
    let excess = idle
        .len()
        .saturating_sub(usize::try_from(limit).unwrap_or_default());
    idle.into_iter().take(excess).map(|s| s.name).collect()
}

/// Machine counts of a deployment over all its sets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Active machines of all sets.
    pub replicas: i32,
    /// Active machines of the new set.
    pub updated: i32,
    pub ready: i32,
    pub available: i32,
    /// Sum of the sets' `spec.replicas`.
    pub desired: i32,
}

impl Counts {
    pub fn of(new: Option<&SetView>, old: &[SetView]) -> Self {
        let all = || new.into_iter().chain(old.iter());
        Counts {
            replicas: all().map(|s| s.active).sum(),
            updated: new.map_or(0, |s| s.active),
            ready: all().map(|s| s.ready).sum(),
            available: all().map(|s| s.available).sum(),
            desired: all().map(|s| s.replicas).sum(),
        }
    }

    /// Every machine is from the new template and available.
    pub fn complete(&self, replicas: i32) -> bool {
        self.updated == replicas && self.replicas == replicas && self.available >= replicas
    }

    /// Progress compared with the last status (Kubernetes' definition).
    pub fn progressed_since(&self, old: &MachineDeploymentStatus) -> bool {
        self.updated > old.updated_replicas
            || self.replicas - self.updated < old.replicas - old.updated_replicas
            || self.ready > old.ready_replicas
            || self.available > old.available_replicas
    }
}

/// Progressing reason of a paused deployment (the autoscaler treats it as
/// not rolling).
pub const PAUSED: &str = "DeploymentPaused";
/// Progressing reason (Unknown) right after a paused deployment resumed.
pub const RESUMED: &str = "DeploymentResumed";
/// Progressing reason once the rollout is complete: the only one under
/// which the cluster-autoscaler scales the deployment down.
pub const COMPLETE: &str = "NewMachineSetAvailable";
/// Progressing reason (False) when the new MachineSet cannot be created.
pub const SET_CREATE_ERROR: &str = "MachineSetCreateError";

/// Everything the conditions are computed from.
#[derive(Clone, Debug)]
pub struct ConditionInputs<'a> {
    pub previous: &'a [MachineDeploymentCondition],
    pub counts: Counts,
    pub replicas: i32,
    /// `maxUnavailable` (0 for Recreate: every machine must be available).
    pub max_unavailable: i32,
    pub progressed: bool,
    /// Name of the new set, and whether this pass created it.
    pub new_set: Option<&'a str>,
    pub created_new_set: bool,
    pub paused: bool,
    /// Why the rollout cannot proceed as asked (reason, message), e.g. the
    /// InPlaceUpdate strategy: Progressing is False with it.
    pub blocked: Option<(&'a str, &'a str)>,
    pub progress_deadline_seconds: Option<i32>,
    /// A failure creating or deleting machines (reason, message).
    pub failure: Option<(&'a str, &'a str)>,
    pub now: Timestamp,
}

fn condition(
    type_: MachineDeploymentConditionType,
    status: ConditionStatus,
    reason: &str,
    message: String,
    now: Timestamp,
) -> MachineDeploymentCondition {
    MachineDeploymentCondition {
        type_,
        status,
        last_update_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
        reason: Some(reason.to_string()),
        message: Some(message),
    }
}

/// Puts `new` in place of the condition of its type in `previous`: an
/// identical one is kept as it was; one with the same status keeps its
/// `lastTransitionTime`.
fn merge(
    previous: Option<&MachineDeploymentCondition>,
    mut new: MachineDeploymentCondition,
) -> MachineDeploymentCondition {
    match previous {
        Some(p) if p.status == new.status && p.reason == new.reason && p.message == new.message => {
            p.clone()
        }
        Some(p) if p.status == new.status => {
            new.last_transition_time = p.last_transition_time.clone();
            new
        }
        _ => new,
    }
}

/// The deployment's conditions (Available, Progressing, ReplicaFailure, as a
/// Kubernetes Deployment reports them; others kept), and when to look again
/// for the progress deadline.
pub fn conditions(i: &ConditionInputs<'_>) -> (Vec<MachineDeploymentCondition>, Option<Duration>) {
    use MachineDeploymentConditionType::{Available, Progressing, ReplicaFailure};
    let previous = |t| i.previous.iter().find(|c| c.type_ == t);
    let mut out: Vec<MachineDeploymentCondition> = i
        .previous
        .iter()
        .filter(|c| !matches!(c.type_, Available | Progressing | ReplicaFailure))
        .cloned()
        .collect();

    let available = if i.counts.available >= i.replicas.saturating_sub(i.max_unavailable) {
        condition(
            Available,
            ConditionStatus::True,
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.".into(),
            i.now,
        )
    } else {
        condition(
            Available,
            ConditionStatus::False,
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.".into(),
            i.now,
        )
    };
    out.push(merge(previous(Available), available));

    let set = i.new_set.unwrap_or("<none>");
    let prev = previous(Progressing);
    let mut recheck = None;
    let progressing = if let Some((reason, message)) = i.blocked {
        merge(
            prev,
            condition(
                Progressing,
                ConditionStatus::False,
                reason,
                message.into(),
                i.now,
            ),
        )
    } else if i.paused {
        merge(
            prev,
            condition(
                Progressing,
                ConditionStatus::Unknown,
                PAUSED,
                "Deployment is paused".into(),
                i.now,
            ),
        )
    } else if i.counts.complete(i.replicas) {
        merge(
            prev,
            condition(
                Progressing,
                ConditionStatus::True,
                COMPLETE,
                format!("MachineSet {set:?} has successfully progressed."),
                i.now,
            ),
        )
    } else if i.created_new_set {
        merge(
            prev,
            condition(
                Progressing,
                ConditionStatus::True,
                "NewMachineSetCreated",
                format!("Created new MachineSet {set:?}"),
                i.now,
            ),
        )
    } else if i.progressed {
        // Progress moves lastUpdateTime even when nothing else changes: the
        // deadline counts from the last progress.
        let mut c = condition(
            Progressing,
            ConditionStatus::True,
            "MachineSetUpdated",
            format!("MachineSet {set:?} is progressing."),
            i.now,
        );
        if let Some(p) = prev.filter(|p| p.status == ConditionStatus::True) {
            c.last_transition_time = p.last_transition_time.clone();
        }
        c
    } else if prev.is_some_and(|p| p.reason.as_deref() == Some(PAUSED)) {
        // As MCM does on resume, so that the time spent paused never counts
        // against the deadline.
        condition(
            Progressing,
            ConditionStatus::Unknown,
            RESUMED,
            "Deployment is resumed".into(),
            i.now,
        )
    } else if prev.is_none() {
        // First look at a rollout already under way (an adopted set, an
        // upgrade from MCM): MCM's FoundNewMachineSet.
        match i.new_set {
            Some(set) => condition(
                Progressing,
                ConditionStatus::True,
                "FoundNewMachineSet",
                format!("Found new MachineSet {set:?}"),
                i.now,
            ),
            None => condition(
                Progressing,
                ConditionStatus::True,
                "MachineSetUpdated",
                "Machine deployment is progressing.".into(),
                i.now,
            ),
        }
    } else {
        let p = prev.cloned().unwrap_or_else(|| {
            condition(
                Progressing,
                ConditionStatus::True,
                "MachineSetUpdated",
                String::new(),
                i.now,
            )
        });
        let counting = p.status == ConditionStatus::True || p.reason.as_deref() == Some(RESUMED);
        match (i.progress_deadline_seconds, &p.last_update_time) {
            (Some(deadline), Some(since)) if counting => {
                let deadline = Duration::from_secs(u64::try_from(deadline).unwrap_or_default());
                let waited = Duration::try_from(i.now.duration_since(since.0)).unwrap_or_default();
                if waited >= deadline {
                    merge(
                        Some(&p),
                        condition(
                            Progressing,
                            ConditionStatus::False,
                            "ProgressDeadlineExceeded",
                            format!("MachineSet {set:?} has timed out progressing."),
                            i.now,
                        ),
                    )
                } else {
                    recheck = Some(deadline - waited);
                    p
                }
            }
            _ => p,
        }
    };
    // A fresh rollout step restarts the deadline clock.
    if (progressing.status == ConditionStatus::True
        || progressing.reason.as_deref() == Some(RESUMED))
        && progressing.reason.as_deref() != Some(COMPLETE)
        && recheck.is_none()
        && let Some(deadline) = i.progress_deadline_seconds
    {
        recheck = Some(Duration::from_secs(
            u64::try_from(deadline).unwrap_or_default(),
        ));
    }
    out.push(progressing);

    if let Some((reason, message)) = i.failure {
        out.push(merge(
            previous(ReplicaFailure),
            condition(
                ReplicaFailure,
                ConditionStatus::True,
                reason,
                message.into(),
                i.now,
            ),
        ));
    }
    out.sort_by_key(|c| c.type_ as u8);
    (out, recheck)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::machine_deployment::RollingUpdateMachineDeployment;

    fn strategy(surge: IntOrString, unavailable: IntOrString) -> MachineDeploymentStrategy {
        MachineDeploymentStrategy {
            rolling_update: Some(RollingUpdateMachineDeployment {
                max_surge: Some(surge),
                max_unavailable: Some(unavailable),
            }),
            ..Default::default()
        }
    }

    fn pct(s: &str) -> IntOrString {
        IntOrString::String(s.into())
    }

    #[test]
    fn limits_round_surge_up_and_unavailable_down() {
        assert_eq!(limits(&strategy(pct("25%"), pct("25%")), 10), Ok((3, 2)));
        assert_eq!(limits(&MachineDeploymentStrategy::default(), 3), Ok((1, 1)));
        assert_eq!(
            limits(&strategy(IntOrString::Int(0), IntOrString::Int(0)), 5),
            Ok((0, 1)),
            "both zero: one unavailable"
        );
        assert_eq!(
            limits(&strategy(IntOrString::Int(2), IntOrString::Int(9)), 3),
            Ok((2, 3)),
            "unavailable capped at replicas"
        );
        assert!(limits(&strategy(pct("lots"), IntOrString::Int(0)), 3).is_err());
        assert!(limits(&strategy(IntOrString::Int(-1), IntOrString::Int(0)), 3).is_err());
    }

    /// Extreme spec values (the schema allows any i32) neither overflow nor
    /// panic: they saturate at the API's bounds.
    #[test]
    fn extreme_values_saturate() {
        let max = IntOrString::Int(i32::MAX);
        assert_eq!(
            limits(&strategy(max.clone(), max.clone()), i32::MAX),
            Ok((i32::MAX, i32::MAX))
        );
        assert_eq!(
            limits(
                &strategy(pct("9223372036854775807%"), pct("200%")),
                i32::MAX
            ),
            Ok((i32::MAX, i32::MAX)),
            "a percentage of i64::MAX saturates"
        );
        assert_eq!(
            limits(&strategy(pct("100%"), pct("0%")), i32::MAX),
            Ok((i32::MAX, 0))
        );

        // replicas + maxSurge beyond i32: the new set grows to replicas.
        let new = set("new", 9, 0, 0, 0);
        let old = [set("old", 1, i32::MAX, i32::MAX, i32::MAX)];
        assert_eq!(
            rolling_step(i32::MAX, i32::MAX, i32::MAX, &new, &old),
            [("new".to_string(), i32::MAX)]
        );
        // Old sets whose replicas sum beyond i32 are scaled down without overflow.
        let full = set("new", 9, i32::MAX, i32::MAX, i32::MAX);
        let olds = [
            set("a", 1, i32::MAX, i32::MAX, 0),
            set("b", 2, i32::MAX, 0, 0),
        ];
        assert_eq!(
            rolling_step(i32::MAX, 0, i32::MAX, &full, &olds),
            [("a".to_string(), 0), ("b".to_string(), 0)]
        );
        let mut terminating = set("t", 3, i32::MAX, i32::MAX, i32::MAX);
        terminating.terminating = i32::MAX;
        // Footprints beyond i32 block the surge instead of wrapping negative;
        // the new set's one available machine lets one old one go.
        assert_eq!(
            rolling_step(i32::MAX, 1, 0, &set("new", 9, 1, 1, 1), &[terminating]),
            [("t".to_string(), i32::MAX - 1)]
        );

        let sets = [
            set("newer", 9, i32::MAX, 0, 0),
            set("older", 1, i32::MAX, 0, 0),
        ];
        assert_eq!(
            scale_without_rollout(i32::MAX, &sets),
            [("older".to_string(), 0)],
            "the excess over i32::MAX comes off the oldest"
        );
        assert_eq!(
            scale_without_rollout(i32::MAX, &[set("only", 1, 1, 0, 0)]),
            [("only".to_string(), i32::MAX)]
        );
    }

    fn set(name: &str, created: i64, replicas: i32, active: i32, available: i32) -> SetView {
        SetView {
            name: name.into(),
            created: Some(Timestamp::from_second(1_700_000_000 + created).unwrap()),
            replicas,
            active,
            terminating: 0,
            available,
            ready: available,
        }
    }

    /// Simulates a rollout to the end, checking both bounds at every moment.
    /// Machines become available one tick after being created; deleted
    /// machines (unavailable ones first) terminate one tick later. With
    /// `lag`, the sets act only every other tick, so the deployment also
    /// sees sets that have not caught up with their new `replicas`.
    fn simulate(replicas: i32, surge: i32, unavailable: i32, old_size: i32, lag: bool) {
        let mut new = set("new", 9, 0, 0, 0);
        let mut old = vec![set("old", 1, old_size, old_size, old_size)];
        for tick in 0..400 {
            let total = new.footprint() + old.iter().map(SetView::footprint).sum::<i64>();
            let available: i32 = new.available + old.iter().map(|s| s.available).sum::<i32>();
            assert!(
                total <= i64::from(replicas.max(old_size) + surge),
                "tick {tick}: {total} machines"
            );
            assert!(
                available >= (replicas - unavailable).min(old_size),
                "tick {tick}: {available} available"
            );
            if new.available == replicas && old.iter().all(|s| !s.has_machines()) {
                return;
            }
            for (name, r) in rolling_step(replicas, surge, unavailable, &new, &old) {
                if name == "new" {
                    new.replicas = r;
                } else {
                    old[0].replicas = r;
                }
            }
            for s in std::iter::once(&mut new).chain(old.iter_mut()) {
                s.terminating = 0;
                s.available = s.active;
                if lag && tick % 2 == 1 {
                    continue;
                }
                if s.active < s.replicas {
                    s.active = s.replicas;
                } else if s.active > s.replicas {
                    let gone = s.active - s.replicas;
                    let unavailable = s.active - s.available;
                    s.available -= (gone - unavailable).max(0);
                    s.active = s.replicas;
                    s.terminating = gone;
                }
            }
        }
        panic!("rollout {replicas}/{surge}/{unavailable} from {old_size} did not finish");
    }

    #[test]
    fn rolling_update_respects_both_bounds_and_finishes() {
        for (replicas, surge, unavailable) in [
            (3, 1, 0),
            (3, 1, 1),
            (3, 0, 1),
            (10, 3, 0),
            (10, 2, 2),
            (1, 1, 0),
        ] {
            for lag in [false, true] {
                simulate(replicas, surge, unavailable, replicas, lag);
            }
        }
        // Scaling up and down during a rollout converges too.
        simulate(5, 1, 1, 3, true);
        simulate(2, 1, 0, 4, true);
    }

    #[test]
    fn a_terminating_machine_blocks_the_surge() {
        let new = set("new", 9, 1, 1, 1);
        let mut old = set("old", 1, 2, 2, 2);
        old.terminating = 1;
        assert!(rolling_step(3, 1, 0, &new, &[old.clone()]).is_empty());
        old.terminating = 0;
        assert_eq!(
            rolling_step(3, 1, 0, &new, &[old]),
            [("new".to_string(), 2)]
        );
    }

    #[test]
    fn a_lowered_set_is_credited_only_with_its_replicas() {
        // The old set was told to go to 2 but has not deleted yet.
        let new = set("new", 9, 1, 1, 1);
        let old = set("old", 1, 2, 3, 3);
        assert!(rolling_step(3, 1, 0, &new, &[old]).is_empty());
    }

    #[test]
    fn unhealthy_old_machines_go_first() {
        let new = set("new", 9, 1, 1, 0);
        let old = set("old", 1, 3, 3, 2);
        // 4 machines, need 2 available, new one not available: only the
        // unhealthy old machine can go.
        assert_eq!(
            rolling_step(3, 1, 1, &new, &[old]),
            [("old".to_string(), 2)]
        );
    }

    #[test]
    fn recreate_empties_old_sets_first() {
        let old = [set("old", 1, 3, 3, 3)];
        assert_eq!(
            recreate_step(3, None, &old),
            RecreateStep::ScaleOldToZero(vec!["old".into()])
        );
        let draining = [set("old", 1, 0, 1, 1)];
        assert_eq!(
            recreate_step(3, None, &draining),
            RecreateStep::WaitForOldMachines
        );
        let gone = [set("old", 1, 0, 0, 0)];
        assert_eq!(recreate_step(3, None, &gone), RecreateStep::ScaleNew(3));
        let new = set("new", 9, 3, 3, 3);
        assert_eq!(recreate_step(3, Some(&new), &gone), RecreateStep::Done);
    }

    #[test]
    fn paused_scaling_grows_the_newest_and_shrinks_the_oldest() {
        let sets = [set("newer", 9, 2, 2, 2), set("older", 1, 2, 2, 2)];
        assert_eq!(scale_without_rollout(6, &sets), [("newer".to_string(), 4)]);
        assert_eq!(
            scale_without_rollout(1, &sets),
            [("older".to_string(), 0), ("newer".to_string(), 1)]
        );
        assert!(scale_without_rollout(4, &sets).is_empty());
    }

    #[test]
    fn history_keeps_the_newest_idle_sets() {
        let old = [
            set("b", 2, 0, 0, 0),
            set("a", 1, 0, 0, 0),
            set("busy", 0, 0, 1, 0),
            set("c", 3, 0, 0, 0),
        ];
        assert_eq!(history_to_delete(&old, Some(1)), ["a", "b"]);
        assert!(history_to_delete(&old, None).is_empty());
        assert_eq!(
            history_to_delete(&old, Some(0)).len(),
            3,
            "never a set with machines"
        );
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).unwrap()
    }

    fn inputs<'a>(
        previous: &'a [MachineDeploymentCondition],
        counts: Counts,
        now: i64,
    ) -> ConditionInputs<'a> {
        ConditionInputs {
            previous,
            counts,
            replicas: 3,
            max_unavailable: 1,
            progressed: false,
            new_set: Some("web-abc"),
            created_new_set: false,
            paused: false,
            blocked: None,
            progress_deadline_seconds: Some(60),
            failure: None,
            now: at(now),
        }
    }

    fn find(
        cs: &[MachineDeploymentCondition],
        t: MachineDeploymentConditionType,
    ) -> &MachineDeploymentCondition {
        cs.iter().find(|c| c.type_ == t).unwrap()
    }

    /// A rollout under way: one new machine of three.
    const ROLLING: Counts = Counts {
        replicas: 4,
        updated: 1,
        ready: 3,
        available: 3,
        desired: 4,
    };

    #[test]
    fn conditions_follow_kubernetes_deployments() {
        use MachineDeploymentConditionType::*;
        let rolling = ROLLING;
        let mut i = inputs(&[], rolling, 0);
        i.created_new_set = true;
        let (cs, recheck) = conditions(&i);
        assert_eq!(find(&cs, Available).status, ConditionStatus::True);
        let p = find(&cs, Progressing);
        assert_eq!(p.reason.as_deref(), Some("NewMachineSetCreated"));
        assert_eq!(recheck, Some(Duration::from_secs(60)));

        // No progress for 30s: unchanged, re-check at the deadline.
        let (later, recheck) = conditions(&inputs(&cs, rolling, 30));
        assert_eq!(later, cs, "no change, no status write");
        assert_eq!(recheck, Some(Duration::from_secs(30)));

        // Past the deadline: Progressing=False.
        let (stuck, _) = conditions(&inputs(&later, rolling, 61));
        let p = find(&stuck, Progressing);
        assert_eq!(
            (p.status, p.reason.as_deref()),
            (ConditionStatus::False, Some("ProgressDeadlineExceeded"))
        );

        // Progress again: True, and the clock restarts.
        let mut i = inputs(&stuck, rolling, 70);
        i.progressed = true;
        let (moving, _) = conditions(&i);
        let p = find(&moving, Progressing);
        assert_eq!(
            (p.status, p.reason.as_deref(), p.last_update_time.clone()),
            (
                ConditionStatus::True,
                Some("MachineSetUpdated"),
                Some(Time(at(70)))
            )
        );

        // Complete.
        let done = Counts {
            replicas: 3,
            updated: 3,
            ready: 3,
            available: 3,
            desired: 3,
        };
        let (cs, recheck) = conditions(&inputs(&moving, done, 80));
        assert_eq!(
            find(&cs, Progressing).reason.as_deref(),
            Some("NewMachineSetAvailable")
        );
        assert_eq!(recheck, None);

        // Too few available: Available=False.
        let (cs, _) = conditions(&inputs(
            &cs,
            Counts {
                available: 1,
                ..done
            },
            90,
        ));
        assert_eq!(find(&cs, Available).status, ConditionStatus::False);
    }

    #[test]
    fn resumed_and_found_sets_use_mcm_reasons() {
        use MachineDeploymentConditionType::*;
        let rolling = ROLLING;
        // A rollout found under way: FoundNewMachineSet, deadline running.
        let (found, recheck) = conditions(&inputs(&[], rolling, 0));
        let p = find(&found, Progressing);
        assert_eq!(
            (p.status, p.reason.as_deref()),
            (ConditionStatus::True, Some("FoundNewMachineSet"))
        );
        assert_eq!(recheck, Some(Duration::from_secs(60)));

        let mut i = inputs(&found, rolling, 10);
        i.paused = true;
        let (paused, _) = conditions(&i);
        assert_eq!(find(&paused, Progressing).reason.as_deref(), Some(PAUSED));
        // Resumed without progress yet: Unknown/DeploymentResumed, and the
        // deadline counts from the resume.
        let (resumed, recheck) = conditions(&inputs(&paused, rolling, 500));
        let p = find(&resumed, Progressing);
        assert_eq!(
            (p.status, p.reason.as_deref()),
            (ConditionStatus::Unknown, Some(RESUMED))
        );
        assert_eq!(recheck, Some(Duration::from_secs(60)));
        let (stuck, _) = conditions(&inputs(&resumed, rolling, 561));
        assert_eq!(
            find(&stuck, Progressing).reason.as_deref(),
            Some("ProgressDeadlineExceeded")
        );
        let mut i = inputs(&resumed, rolling, 520);
        i.progressed = true;
        let (moving, _) = conditions(&i);
        assert_eq!(
            find(&moving, Progressing).reason.as_deref(),
            Some("MachineSetUpdated")
        );
    }

    #[test]
    fn paused_blocked_and_failures_are_reported() {
        use MachineDeploymentConditionType::*;
        let mut i = inputs(&[], Counts::default(), 0);
        i.paused = true;
        let (cs, recheck) = conditions(&i);
        assert_eq!(find(&cs, Progressing).status, ConditionStatus::Unknown);
        assert_eq!(recheck, None);

        let mut i = inputs(&[], Counts::default(), 0);
        i.blocked = Some(("InPlaceUpdateNotSupported", "not supported"));
        i.failure = Some(("FailedCreate", "quota"));
        let (cs, _) = conditions(&i);
        assert_eq!(
            find(&cs, Progressing).reason.as_deref(),
            Some("InPlaceUpdateNotSupported")
        );
        assert_eq!(find(&cs, ReplicaFailure).status, ConditionStatus::True);
        let mut i = inputs(&cs, Counts::default(), 5);
        i.blocked = Some(("InPlaceUpdateNotSupported", "not supported"));
        let (cs, _) = conditions(&i);
        assert!(cs.iter().all(|c| c.type_ != ReplicaFailure), "cleared");
    }
}
