//! Replacing unhealthy machines safely (MCM's `canMarkMachineFailed`): a
//! machine whose health timeout ran out becomes Failed — and so is drained,
//! terminated and replaced — only while fewer than [`MAX_REPLACEMENTS`]
//! machines of its MachineDeployment are being replaced. A zone outage or
//! an expired kubelet certificate then replaces a pool one machine at a
//! time instead of draining all of it at once.
//!
//! The Machine reconciler decides Unknown → Failed; this room tells it
//! whether it may. The rule ([`in_progress`], [`may_mark_failed`]) is pure;
//! [`FailureGate`] serialises the decisions of one deployment (machines are
//! reconciled concurrently) and remembers the machines this process just
//! marked until the Machine cache shows them, so that two machines whose
//! timeouts run out together are never both marked.
//!
//! Counted as being replaced, as in MCM: every machine of the deployment
//! (all its sets) that is neither Running nor Unknown — Pending,
//! CrashLoopBackOff, Failed, no phase yet — and machines being deleted
//! twice (their replacement may not exist yet). A rollout's new machines
//! count too, so no machine is failed for health while a rollout creates
//! machines.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use tokio::sync::OwnedMutexGuard;
use tracing::{debug, info};

use super::census;
use crate::api::machine::Machine;
use crate::api::machine_deployment::MachineDeployment;
use crate::api::machine_set::MachineSet;
use crate::api::shared::MachinePhase;
use crate::controller::context::Context;
use crate::controller::events::publish;
use crate::controller::machine::phase::PhaseDecision;
use crate::controller::ownership;

/// Machines of one deployment being replaced at a time (MCM: 1).
pub const MAX_REPLACEMENTS: usize = 1;
/// A machine marked Failed by this process counts as being replaced until
/// the cache shows it, at most this long.
const REMEMBER: Duration = Duration::from_secs(30);
/// How soon a machine kept Unknown looks again.
pub const RECHECK: Duration = Duration::from_secs(5);

/// Weight of one machine in the count of machines being replaced.
fn weight(m: &Machine, just_marked: &BTreeSet<String>) -> usize {
    if census::is_terminating(m) {
        2
    } else if just_marked.contains(&m.name_any()) {
        1
    } else {
        match m.phase() {
            Some(MachinePhase::Running | MachinePhase::Unknown) => 0,
            // Preserved: kept, not replaced (its replacement, while it
            // comes up, counts on its own).
            Some(MachinePhase::Failed) if super::preserved::expiry(m).is_some() => 0,
            _ => 1,
        }
    }
}

/// How many of `machines` (a deployment's) count as being replaced;
/// `just_marked` are machines marked Failed that the cache may still show
/// otherwise.
pub fn in_progress(machines: &[&Machine], just_marked: &BTreeSet<String>) -> usize {
    machines.iter().map(|m| weight(m, just_marked)).sum()
}

/// `Ok` when a machine of the deployment whose `machines` these are may be
/// marked Failed now, else the number being replaced.
pub fn may_mark_failed(machines: &[&Machine], just_marked: &BTreeSet<String>) -> Result<(), usize> {
    match in_progress(machines, just_marked) {
        n if n < MAX_REPLACEMENTS => Ok(()),
        n => Err(n),
    }
}

/// The fleet a machine is replaced within: its MachineDeployment, or its
/// MachineSet when no deployment owns the set. `set_of` looks a set up by
/// name in the machine's namespace. `None` for a machine without set.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Group {
    /// `<namespace>/<kind>/<uid>`.
    pub key: String,
    /// `MachineDeployment web`, for messages.
    pub display: String,
}

pub fn group_of<K: Resource>(
    m: &K,
    set_of: impl Fn(&str) -> Option<Arc<MachineSet>>,
) -> Option<Group> {
    let ns = m.namespace().unwrap_or_default();
    let owner = ownership::controller_of(m.meta()).filter(|o| o.kind == MachineSet::kind(&()))?;
    let set = set_of(&owner.name).filter(|s| s.uid().as_deref() == Some(owner.uid.as_str()));
    let deployment = set.as_ref().and_then(|s| {
        ownership::controller_of(&s.metadata)
            .filter(|o| o.kind == MachineDeployment::kind(&()))
            .cloned()
    });
    Some(match deployment {
        Some(d) => Group {
            key: format!("{ns}/MachineDeployment/{}", d.uid),
            display: format!("MachineDeployment {}", d.name),
        },
        None => Group {
            key: format!("{ns}/MachineSet/{}", owner.uid),
            display: format!("MachineSet {}", owner.name),
        },
    })
}

/// Per fleet: machines this process marked Failed lately, and the machines
/// told (once, by an Event) that they wait.
#[derive(Default)]
pub struct Marks {
    marked: HashMap<String, Instant>,
    told: BTreeSet<String>,
}

/// Serialises the Failed decisions of each fleet; see the module docs.
#[derive(Default)]
pub struct FailureGate {
    fleets: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Marks>>>>,
}

/// Held while a machine is marked Failed: no other machine of its fleet is
/// decided meanwhile. [`Permit::marked`] once the status is written.
pub struct Permit {
    marks: OwnedMutexGuard<Marks>,
    machine: String,
}

impl Permit {
    /// The machine's Failed status is written: count it as being replaced
    /// until the cache shows it.
    pub fn marked(mut self) {
        self.marks.told.remove(&self.machine);
        self.marks
            .marked
            .insert(std::mem::take(&mut self.machine), Instant::now());
    }
}

impl FailureGate {
    async fn lock(&self, key: &str) -> OwnedMutexGuard<Marks> {
        let fleet = self
            .fleets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.to_string())
            .or_default()
            .clone();
        fleet.lock_owned().await
    }
}

/// The siblings (the machine included) of `m` in `group`, from the cache.
fn fleet_machines(ctx: &Context, m: &Machine, group: &Group) -> Vec<Arc<Machine>> {
    let ns = m.namespace();
    ctx.machines
        .state()
        .into_iter()
        .filter(|o| o.namespace() == ns)
        .filter(|o| {
            group_of(o.as_ref(), |name| set_in(ctx, o.as_ref(), name)).as_ref() == Some(group)
        })
        .map(|o| Arc::new(o.to_machine()))
        .collect()
}

/// Set `name` in the namespace of `m` (a Machine, as cached or not).
fn set_in<K: Resource>(ctx: &Context, m: &K, name: &str) -> Option<Arc<MachineSet>> {
    let sets = ctx.sets.get()?;
    sets.get(&ObjectRef::new(name).within(&m.namespace().unwrap_or_default()))
}

/// Applies the rule to `decision` for machine `m`: a decision other than
/// "Failed by health timeout" passes unchanged. Otherwise the machine's
/// fleet is locked; if it may fail, the decision passes with a [`Permit`]
/// to hold until its status is written; if not, the machine stays Unknown
/// (told once by a Normal Event) and looks again after [`RECHECK`].
pub async fn gate(
    ctx: &Context,
    m: &Machine,
    decision: PhaseDecision,
) -> (PhaseDecision, Option<Permit>) {
    if !decision.health_timeout {
        return (decision, None);
    }
    let Some(group) = group_of(m, |name| set_in(ctx, m, name)) else {
        return (decision, None);
    };
    let mut marks = ctx.replacements.lock(&group.key).await;
    let machines = fleet_machines(ctx, m, &group);
    let shown = |name: &String| {
        machines
            .iter()
            .find(|o| &o.name_any() == name)
            .is_none_or(|o| census::is_terminating(o) || o.phase() == Some(MachinePhase::Failed))
    };
    marks
        .marked
        .retain(|name, at| at.elapsed() < REMEMBER && !shown(name));
    let waiting = |name: &String| {
        machines
            .iter()
            .any(|o| &o.name_any() == name && o.phase() == Some(MachinePhase::Unknown))
    };
    marks.told.retain(waiting);
    let just_marked: BTreeSet<String> = marks.marked.keys().cloned().collect();
    let refs: Vec<&Machine> = machines.iter().map(Arc::as_ref).collect();
    let name = m.name_any();
    match may_mark_failed(&refs, &just_marked) {
        Ok(()) => {
            info!(machine = %name, fleet = %group.display, "health timeout: marking the machine Failed");
            let permit = Permit {
                marks,
                machine: name,
            };
            (decision, Some(permit))
        }
        Err(busy) => {
            debug!(machine = %name, fleet = %group.display, busy, "health timeout: not marked Failed while others are replaced");
            let first = marks.told.insert(name);
            drop(marks);
            let message = format!(
                "{} Not marked Failed yet: {} is replacing machines ({busy} counted), and replaces at most {MAX_REPLACEMENTS} at a time.",
                decision.description, group.display
            );
            if first {
                publish(
                    ctx,
                    m,
                    EventType::Normal,
                    "ReplacementDeferred",
                    "HealthCheck",
                    message.clone(),
                )
                .await;
            }
            let status = m.status.as_ref().map(|s| &s.current_status);
            let since = status
                .filter(|s| s.phase == Some(MachinePhase::Unknown))
                .and_then(|s| s.last_update_time.timestamp())
                .unwrap_or(decision.since);
            let kept = PhaseDecision {
                phase: MachinePhase::Unknown,
                since,
                timeout_active: true,
                description: message,
                recheck_after: Some(RECHECK),
                health_timeout: false,
            };
            (kept, None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::census::fixtures::*;
    use super::*;
    use MachinePhase::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn none() -> BTreeSet<String> {
        BTreeSet::new()
    }

    #[test]
    fn one_replacement_at_a_time_counting_like_mcm() {
        let healthy_outage = [
            machine("a").phase(Unknown).build(),
            machine("b").phase(Unknown).build(),
            machine("c").running_since(0).build(),
        ];
        let refs: Vec<&Machine> = healthy_outage.iter().collect();
        assert_eq!(may_mark_failed(&refs, &none()), Ok(()));

        for busy in [
            machine("f").phase(Failed).build(),
            machine("p").phase(Pending).build(),
            machine("x").phase(CrashLoopBackOff).build(),
            machine("new").build(),
        ] {
            let with: Vec<&Machine> = refs.iter().copied().chain([&busy]).collect();
            assert_eq!(
                may_mark_failed(&with, &none()),
                Err(1),
                "{}",
                busy.name_any()
            );
        }
        let leaving = machine("t").running_since(0).deleting().build();
        let with: Vec<&Machine> = refs.iter().copied().chain([&leaving]).collect();
        assert_eq!(
            may_mark_failed(&with, &none()),
            Err(2),
            "a machine being deleted counts twice: its replacement may not exist yet"
        );
        let terminating = machine("t").phase(Terminating).build();
        let with: Vec<&Machine> = refs.iter().copied().chain([&terminating]).collect();
        assert_eq!(in_progress(&with, &none()), 2);
    }

    #[test]
    fn a_preserved_failed_machine_is_not_being_replaced() {
        let mut kept = machine("kept").phase(Failed).build();
        if let Some(s) = kept.status.as_mut() {
            s.current_status.preserve_expiry_time = at(100).into();
        }
        let ms = [kept, machine("b").phase(Unknown).build()];
        let refs: Vec<&Machine> = ms.iter().collect();
        assert_eq!(may_mark_failed(&refs, &none()), Ok(()));
    }

    #[test]
    fn a_machine_just_marked_counts_before_the_cache_shows_it() {
        let ms = [
            machine("a").phase(Unknown).build(),
            machine("b").phase(Unknown).build(),
        ];
        let refs: Vec<&Machine> = ms.iter().collect();
        let marked = BTreeSet::from(["a".to_string()]);
        assert_eq!(may_mark_failed(&refs, &marked), Err(1));
    }

    fn owned_by(mut m: Machine, kind: &str, name: &str, uid: &str) -> Machine {
        m.metadata.namespace = Some("ns".into());
        m.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "machine.sapcloud.io/v1alpha1".into(),
            kind: kind.into(),
            name: name.into(),
            uid: uid.into(),
            controller: Some(true),
            ..OwnerReference::default()
        }]);
        m
    }

    #[test]
    fn the_fleet_is_the_deployment_of_the_set_else_the_set() {
        let mut set = MachineSet::new("web-abc", Default::default());
        set.metadata.uid = Some("set-1".into());
        let mut d = MachineDeployment::new("web", Default::default());
        d.metadata.uid = Some("d-1".into());
        let mut owned_set = set.clone();
        owned_set.metadata.owner_references = Some(vec![ownership::controller_ref(&d)]);

        let m = owned_by(machine("m").build(), "MachineSet", "web-abc", "set-1");
        let of_deployment = group_of(&m, |_| Some(Arc::new(owned_set.clone()))).unwrap();
        assert_eq!(of_deployment.key, "ns/MachineDeployment/d-1");
        assert_eq!(of_deployment.display, "MachineDeployment web");

        let of_set = group_of(&m, |_| Some(Arc::new(set.clone()))).unwrap();
        assert_eq!(of_set.key, "ns/MachineSet/set-1");
        // A set of that name with another UID (re-created) is not the owner.
        let mut other = owned_set.clone();
        other.metadata.uid = Some("set-2".into());
        assert_eq!(
            group_of(&m, |_| Some(Arc::new(other.clone()))),
            Some(of_set)
        );

        assert_eq!(group_of(&machine("solo").build(), |_| None), None);
    }
}
