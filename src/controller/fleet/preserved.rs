//! Preserved machines as a MachineSet counts them (pure): which Failed
//! machines it keeps instead of deleting, which Failed machines it
//! auto-preserves for `spec.autoPreserveFailedMachineMax`, and the status
//! counts.
//!
//! A kept machine does not count towards `replicas` (it is Failed), so the
//! set creates its replacement at once; it is deleted as usual once its
//! preservation ends. Preserved machines of any phase go last in a
//! scale-down ([`super::census::sort_for_deletion`]).

use std::cmp::Reverse;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use super::census::is_failed;
use crate::api::machine::Machine;
use crate::controller::machine::preservation::{Preserve, Wish};

/// `status.currentStatus.preserveExpiryTime`, if set.
pub fn expiry(m: &Machine) -> Option<Timestamp> {
    m.status
        .as_ref()
        .and_then(|s| s.current_status.preserve_expiry_time.timestamp())
}

/// Whether the set keeps the Failed machine `m` (preserve value `wish`):
/// preserved until later than `now`, or asked to be and not yet marked by
/// the machine reconciler (which sets the expiry in the same write as the
/// Failed phase, so this covers only a value added after the failure, such
/// as the set's own `auto-preserved`).
pub fn keeps(m: &Machine, wish: &Wish, now: Timestamp) -> bool {
    if !is_failed(m) {
        return false;
    }
    match expiry(m) {
        Some(until) => until > now,
        None => matches!(
            wish.value(),
            Some(Preserve::Now | Preserve::WhenFailed | Preserve::AutoPreserved)
        ),
    }
}

/// The Failed machines to annotate `auto-preserved` now: up to `max` minus
/// those auto-preserved already, newest failure first, among Failed machines
/// without a preserve value (`false` opts out, `now`/`when-failed` are
/// preserved anyway).
pub fn to_auto_preserve(machines: &[(&Machine, Wish)], max: i32, now: Timestamp) -> Vec<String> {
    let taken = auto_preserved(machines, now);
    let capacity = usize::try_from(max)
        .unwrap_or_default()
        .saturating_sub(taken);
    let mut candidates: Vec<&Machine> = machines
        .iter()
        .filter(|(m, wish)| is_failed(m) && *wish == Wish::Unset)
        .map(|(m, _)| *m)
        .collect();
    candidates.sort_by_key(|m| {
        let failed_at = m
            .status
            .as_ref()
            .and_then(|s| s.current_status.last_update_time.timestamp());
        (
            Reverse(failed_at),
            Reverse(m.creation_timestamp().map(|t| t.0)),
            m.name_any(),
        )
    });
    candidates
        .into_iter()
        .take(capacity)
        .map(|m| m.name_any())
        .collect()
}

/// Kept Failed machines whose value is the set's `auto-preserved`
/// (`status.autoPreserveFailedMachineCount`).
pub fn auto_preserved(machines: &[(&Machine, Wish)], now: Timestamp) -> usize {
    machines
        .iter()
        .filter(|(m, wish)| wish.value() == Some(Preserve::AutoPreserved) && keeps(m, wish, now))
        .count()
}

/// Kept Failed machines (`status.preservedFailedReplicas`).
pub fn preserved_failed(machines: &[(&Machine, Wish)], now: Timestamp) -> usize {
    machines
        .iter()
        .filter(|(m, wish)| keeps(m, wish, now))
        .count()
}

#[cfg(test)]
mod tests {
    use super::super::census::fixtures::*;
    use super::*;
    use crate::api::shared::MachinePhase::*;
    use crate::controller::machine::preservation::Source;

    fn preserved_until(mut m: Machine, secs: i64) -> Machine {
        if let Some(s) = m.status.as_mut() {
            s.current_status.preserve_expiry_time = at(secs).into();
        }
        m
    }

    fn failed_at(name: &str, secs: i64) -> Machine {
        let mut m = machine(name).phase(Failed).build();
        if let Some(s) = m.status.as_mut() {
            s.current_status.last_update_time = at(secs).into();
        }
        m
    }

    const AUTO: Wish = Wish::Value(Preserve::AutoPreserved, Source::Machine);

    #[test]
    fn failed_machines_are_kept_while_preserved_or_about_to_be() {
        let failed = machine("f").phase(Failed).build();
        assert!(!keeps(&failed, &Wish::Unset, at(0)));
        assert!(
            keeps(&failed, &AUTO, at(0)),
            "marked by the set, not yet preserved"
        );
        let until_10 = preserved_until(failed.clone(), 10);
        assert!(keeps(&until_10, &Wish::Unset, at(5)));
        assert!(
            !keeps(&until_10, &AUTO, at(10)),
            "expired: deleted as usual"
        );
        let running = preserved_until(machine("r").running_since(0).build(), 10);
        assert!(
            !keeps(&running, &AUTO, at(0)),
            "only Failed machines are kept"
        );
        let leaving = preserved_until(machine("d").phase(Failed).deleting().build(), 10);
        assert!(!keeps(&leaving, &AUTO, at(0)));
        let opted_out = Wish::Value(Preserve::False, Source::Node);
        assert!(!keeps(&failed, &opted_out, at(0)));
    }

    #[test]
    fn auto_preservation_takes_the_newest_failures_up_to_the_limit() {
        let old = failed_at("old", 1);
        let new = failed_at("new", 5);
        let opted_out = failed_at("out", 9);
        let running = machine("run").running_since(0).build();
        let ms = [
            (&old, Wish::Unset),
            (&new, Wish::Unset),
            (&opted_out, Wish::Value(Preserve::False, Source::Machine)),
            (&running, Wish::Unset),
        ];
        assert_eq!(to_auto_preserve(&ms, 1, at(10)), ["new"]);
        assert_eq!(to_auto_preserve(&ms, 5, at(10)), ["new", "old"]);
        assert!(to_auto_preserve(&ms, 0, at(10)).is_empty());
        assert!(to_auto_preserve(&ms, -3, at(10)).is_empty());

        // One auto-preserved already: the limit of 1 is used up.
        let ms = [(&old, Wish::Unset), (&new, AUTO)];
        assert!(to_auto_preserve(&ms, 1, at(10)).is_empty());
        assert_eq!(auto_preserved(&ms, at(10)), 1);
        assert_eq!(preserved_failed(&ms, at(10)), 1);
    }
}
