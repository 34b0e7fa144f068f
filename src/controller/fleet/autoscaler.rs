//! cluster-autoscaler's protocol with MCM, the pure half: what the
//! autoscaler's `mcm` cloud provider writes and what it reads.
//!
//! - For a targeted scale-down it names the machines to remove in the
//!   MachineDeployment annotation [`TRIGGER_DELETION_ANNOTATION`] and lowers
//!   `spec.replicas` in the same update. Older providers write plain names
//!   (`a,b`, sorted), newer ones `name~RFC3339` entries. The deployment gives
//!   each named machine [`MACHINE_PRIORITY_ANNOTATION`] `"1"` before it
//!   scales its set down, so the set's scale-down order picks exactly those,
//!   and drops a name once its machine is gone, Failed or being deleted
//!   ([`plan_trigger_deletion`]). Malformed entries are dropped and reported.
//! - It does not scale a deployment down while a rollout runs and it skips
//!   Nodes annotated [`SCALE_DOWN_DISABLED_ANNOTATION`]: during a rolling
//!   update the deployment's Nodes carry that annotation, with
//!   [`SCALE_DOWN_DISABLED_BY_US`] beside it so that only what we added is
//!   ever removed ([`scale_down_mark`]).
//!
//! No client here; the deployment reconciler does the writes.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use super::census::{self, MACHINE_PRIORITY_ANNOTATION};
use crate::api::machine::Machine;
use crate::api::shared::MachinePhase;

/// MachineDeployment annotation: the machines the autoscaler wants gone,
/// comma-separated (`name` or `name~<RFC 3339 time>`).
pub const TRIGGER_DELETION_ANNOTATION: &str = "node.machine.sapcloud.io/trigger-deletion-by-mcm";
/// Machine annotation (MCM): when the autoscaler chose the machine.
pub const MARKED_FOR_DELETION_TIME_ANNOTATION: &str =
    "machine.sapcloud.io/marked-for-deletion-time";
/// MachineDeployment annotation (MCM): when a scaler last changed replicas;
/// the time of plain-name entries.
pub const LAST_SCALER_CHANGE_ANNOTATION: &str =
    "machine.sapcloud.io/last-deployment-replica-change-by-scaler-time";
/// Priority of a machine the autoscaler chose: deleted first.
pub const PRIORITY_CHOSEN: &str = "1";
/// Priority of every other machine (MCM's default, set at creation).
pub const PRIORITY_DEFAULT: &str = "3";

/// Node annotation the autoscaler honours: never scale this Node down.
pub const SCALE_DOWN_DISABLED_ANNOTATION: &str =
    "cluster-autoscaler.kubernetes.io/scale-down-disabled";
/// Node annotation saying that [`SCALE_DOWN_DISABLED_ANNOTATION`] was set by
/// the operator (MCM's key, so nodes marked by MCM are cleaned up too).
pub const SCALE_DOWN_DISABLED_BY_US: &str =
    "cluster-autoscaler.kubernetes.io/scale-down-disabled-by-mcm";

/// One entry of the trigger-deletion annotation that names a machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    /// The entry as written.
    pub raw: &'a str,
    pub machine: &'a str,
    /// The time after `~`, as written; `None` for a plain name.
    pub time: Option<&'a str>,
}

/// Splits the annotation's value into machine entries and the entries that
/// are not one (described for a Warning Event): empty entries, a `~` without
/// a name, more than one `~`, a time that is not RFC 3339. Never fails.
pub fn parse(value: &str) -> (Vec<Entry<'_>>, Vec<String>) {
    let mut entries = Vec::new();
    let mut problems = Vec::new();
    if value.trim().is_empty() {
        return (entries, problems);
    }
    for raw in value.split(',') {
        let raw = raw.trim();
        let mut parts = raw.split('~');
        let machine = parts.next().unwrap_or_default();
        let time = parts.next();
        if raw.is_empty() {
            problems.push("an empty entry".to_string());
        } else if parts.next().is_some() {
            problems.push(format!("{raw:?} (more than one '~')"));
        } else if machine.is_empty() {
            problems.push(format!("{raw:?} (no machine name)"));
        } else if let Some(t) = time.filter(|t| t.parse::<Timestamp>().is_err()) {
            problems.push(format!("{raw:?} ({t:?} is not an RFC 3339 time)"));
        } else {
            entries.push(Entry { raw, machine, time });
        }
    }
    (entries, problems)
}

/// What the deployment does about the annotation in one pass.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TriggerPlan {
    /// The annotation's new value when it changes; `Some(None)` removes it.
    pub annotation: Option<Option<String>>,
    /// Machines still chosen (named by a kept entry).
    pub chosen: Vec<String>,
    /// Machines to annotate with priority 1, and the marked-for-deletion
    /// time to add (`None`: the machine has one already).
    pub mark: Vec<(String, Option<String>)>,
    /// Entries that were dropped as malformed.
    pub problems: Vec<String>,
}

/// A machine the autoscaler's entry no longer needs to name: gone from the
/// deployment, Failed, or being deleted (MCM's `IsFailedOrTerminating`).
fn done(m: &Machine) -> bool {
    census::is_terminating(m) || m.phase() == Some(MachinePhase::Failed)
}

/// Plans one pass over the annotation `value` of a deployment whose machines
/// are `machines`: entries naming a live machine stay, and the machine is
/// marked unless it already is; entries of machines that are gone, Failed or
/// being deleted, of machines of other deployments, repeated names and
/// malformed entries go. `fallback_time` (RFC 3339) is the marked time of a
/// plain-name entry: the deployment's last scaler change, or now.
pub fn plan_trigger_deletion(
    value: Option<&str>,
    machines: &[&Machine],
    fallback_time: &str,
) -> TriggerPlan {
    let Some(value) = value else {
        return TriggerPlan::default();
    };
    let (entries, problems) = parse(value);
    let by_name: BTreeMap<String, &Machine> = machines.iter().map(|m| (m.name_any(), *m)).collect();
    let mut seen = BTreeSet::new();
    let mut kept = Vec::new();
    let mut chosen = Vec::new();
    let mut mark = Vec::new();
    for e in entries {
        let Some(m) = by_name.get(e.machine) else {
            continue;
        };
        if done(m) || !seen.insert(e.machine) {
            continue;
        }
        kept.push(e.raw);
        chosen.push(e.machine.to_string());
        let annotations = m.annotations();
        let prioritised = annotations
            .get(MACHINE_PRIORITY_ANNOTATION)
            .map(String::as_str)
            == Some(PRIORITY_CHOSEN);
        let timed = annotations.contains_key(MARKED_FOR_DELETION_TIME_ANNOTATION);
        if !(prioritised && timed) {
            let time = (!timed).then(|| e.time.unwrap_or(fallback_time).to_string());
            mark.push((e.machine.to_string(), time));
        }
    }
    let new_value = kept.join(",");
    let annotation = (new_value != value).then(|| (!new_value.is_empty()).then_some(new_value));
    TriggerPlan {
        annotation,
        chosen,
        mark,
        problems,
    }
}

/// How a Node's scale-down annotations must change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeMark {
    /// Add both [`SCALE_DOWN_DISABLED_ANNOTATION`] and our marker.
    Add,
    /// Remove both (only on Nodes carrying our marker).
    Remove,
}

/// The change a Node with `annotations` needs: while `rolling`, every Node
/// of the deployment is protected from scale-down; afterwards only Nodes
/// carrying our marker lose the protection. A Node protected by someone
/// else is never touched.
pub fn scale_down_mark(annotations: &BTreeMap<String, String>, rolling: bool) -> Option<NodeMark> {
    let protected = annotations.contains_key(SCALE_DOWN_DISABLED_ANNOTATION);
    let ours = annotations.contains_key(SCALE_DOWN_DISABLED_BY_US);
    match (rolling, protected, ours) {
        (true, false, _) => Some(NodeMark::Add),
        (false, _, true) => Some(NodeMark::Remove),
        _ => None,
    }
}

/// Orders sets for a scale-down by [`super::rollout::scale_without_rollout`]
/// (which shrinks from the last): sets holding machines the autoscaler chose
/// go last, so that they shrink first; the order is kept otherwise.
pub fn chosen_last<T>(sets: &mut [T], has_chosen: impl Fn(&T) -> bool) {
    sets.sort_by_key(|s| has_chosen(s));
}

#[cfg(test)]
mod tests {
    use super::super::census::fixtures::*;
    use super::*;
    use MachinePhase::*;

    #[test]
    fn plain_and_timed_entries_parse_and_junk_is_reported() {
        let (entries, problems) = parse("a,b~2026-01-02T03:04:05Z");
        assert_eq!(
            entries,
            [
                Entry {
                    raw: "a",
                    machine: "a",
                    time: None
                },
                Entry {
                    raw: "b~2026-01-02T03:04:05Z",
                    machine: "b",
                    time: Some("2026-01-02T03:04:05Z")
                }
            ]
        );
        assert!(problems.is_empty());

        let (entries, problems) = parse(",c~not-a-time,~2026-01-02T03:04:05Z,d~x~y, e ,");
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].machine, "e");
        assert_eq!(problems.len(), 5, "{problems:?}");
        assert!(problems[1].contains("not-a-time"), "{problems:?}");
        assert!(problems[2].contains("no machine name"), "{problems:?}");
        assert!(problems[3].contains("more than one"), "{problems:?}");

        assert_eq!(parse(""), (vec![], vec![]));
        // Whatever bytes come, nothing panics.
        for junk in [
            "~",
            "~~",
            ",,,",
            "\u{0}~\u{0}",
            "ä~ö,ü",
            "a~2026-13-45T99:99:99Z",
        ] {
            let _ = parse(junk);
        }
    }

    #[test]
    fn named_machines_are_marked_once_and_dropped_when_gone_or_failed() {
        let ms = [
            machine("a").running_since(0).build(),
            machine("b").running_since(0).build(),
            machine("failed").phase(Failed).build(),
            machine("leaving").running_since(0).deleting().build(),
            machine("marked")
                .running_since(0)
                .annotated(MACHINE_PRIORITY_ANNOTATION, "1")
                .annotated(MARKED_FOR_DELETION_TIME_ANNOTATION, "2026-01-01T00:00:00Z")
                .build(),
        ];
        let refs: Vec<&Machine> = ms.iter().collect();
        let now = "2026-02-02T00:00:00Z";

        let plan = plan_trigger_deletion(Some("a"), &refs, now);
        assert_eq!(plan.annotation, None, "unchanged");
        assert_eq!(plan.mark, [("a".to_string(), Some(now.to_string()))]);
        assert_eq!(plan.chosen, ["a"]);

        let plan = plan_trigger_deletion(
            Some("a~2026-01-05T00:00:00Z,failed,gone,leaving,marked,a"),
            &refs,
            now,
        );
        assert_eq!(
            plan.annotation,
            Some(Some("a~2026-01-05T00:00:00Z,marked".into()))
        );
        assert_eq!(
            plan.mark,
            [("a".to_string(), Some("2026-01-05T00:00:00Z".to_string()))],
            "marked machines are not written again"
        );
        assert_eq!(plan.chosen, ["a", "marked"]);

        // Priority reset by someone (the autoscaler resets it when it changes
        // its mind): set again, the first time kept.
        let reset = [machine("r")
            .running_since(0)
            .annotated(MACHINE_PRIORITY_ANNOTATION, "3")
            .annotated(MARKED_FOR_DELETION_TIME_ANNOTATION, "2026-01-01T00:00:00Z")
            .build()];
        let reset: Vec<&Machine> = reset.iter().collect();
        let plan = plan_trigger_deletion(Some("r"), &reset, now);
        assert_eq!(plan.mark, [("r".to_string(), None)]);

        let plan = plan_trigger_deletion(Some("failed,gone"), &refs, now);
        assert_eq!(plan.annotation, Some(None), "nothing left: removed");
        assert!(plan.mark.is_empty());

        let plan = plan_trigger_deletion(Some("b~yesterday,,a"), &refs, now);
        assert_eq!(plan.annotation, Some(Some("a".into())));
        assert_eq!(plan.problems.len(), 2, "{:?}", plan.problems);

        assert_eq!(
            plan_trigger_deletion(None, &refs, now),
            TriggerPlan::default()
        );
    }

    #[test]
    fn nodes_are_protected_during_a_rollout_and_only_our_marks_are_removed() {
        let none = BTreeMap::new();
        let ours = BTreeMap::from([
            (
                SCALE_DOWN_DISABLED_ANNOTATION.to_string(),
                "true".to_string(),
            ),
            (SCALE_DOWN_DISABLED_BY_US.to_string(), "true".to_string()),
        ]);
        let theirs = BTreeMap::from([(
            SCALE_DOWN_DISABLED_ANNOTATION.to_string(),
            "true".to_string(),
        )]);
        assert_eq!(scale_down_mark(&none, true), Some(NodeMark::Add));
        assert_eq!(scale_down_mark(&ours, true), None);
        assert_eq!(scale_down_mark(&theirs, true), None, "someone else's");
        assert_eq!(scale_down_mark(&ours, false), Some(NodeMark::Remove));
        assert_eq!(scale_down_mark(&theirs, false), None, "never removed");
        assert_eq!(scale_down_mark(&none, false), None);
    }

    #[test]
    fn sets_with_chosen_machines_shrink_first() {
        let mut three = ["new", "old-chosen", "older"];
        chosen_last(&mut three, |s| s.ends_with("chosen"));
        assert_eq!(three, ["new", "older", "old-chosen"]);
        let mut plain = ["new", "old"];
        chosen_last(&mut plain, |_| false);
        assert_eq!(plain, ["new", "old"]);
    }
}
