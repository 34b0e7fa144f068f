//! Kubernetes Events about the objects the reconcilers own, through the
//! Context's one [`Recorder`](super::recorder::Recorder).
//!
//! Notes are cut to the API server's limit (an Event's `note` may hold at most
//! 1 kB; a longer one is refused, and the failure it reports would be lost).
//! A failure to publish is logged, never returned: an Event is a courtesy,
//! not a step of the reconcile.

use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use tracing::warn;

use super::Context;

/// The API server refuses Events whose `note` is longer than this (bytes).
pub const MAX_NOTE_BYTES: usize = 1024;

/// Publishes an Event about `obj` (a Machine, MachineSet, MachineDeployment, ...).
pub async fn publish<K>(
    ctx: &Context,
    obj: &K,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) where
    K: Resource<DynamicType = ()>,
{
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(truncate_note(note)),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &obj.object_ref(&())).await {
        warn!(kind = %K::kind(&()), name = %obj.name_any(), error = %e, "could not publish event");
    }
}

/// `note` cut to [`MAX_NOTE_BYTES`] at a character boundary, ending in `…`
/// when something was cut.
pub fn truncate_note(mut note: String) -> String {
    if note.len() <= MAX_NOTE_BYTES {
        return note;
    }
    const MARK: &str = "…";
    let mut end = MAX_NOTE_BYTES - MARK.len();
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    note.truncate(end);
    note.push_str(MARK);
    note
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_notes_stay_as_they_are() {
        assert_eq!(truncate_note("drain blocked".into()), "drain blocked");
        let exact = "x".repeat(MAX_NOTE_BYTES);
        assert_eq!(truncate_note(exact.clone()), exact);
    }

    #[test]
    fn long_notes_are_cut_to_the_limit_at_a_character_boundary() {
        let ascii = truncate_note("e".repeat(5000));
        assert_eq!(ascii.len(), MAX_NOTE_BYTES);
        assert!(ascii.ends_with('…'));
        // Multi-byte characters are never split.
        let wide = truncate_note("ü".repeat(1000));
        assert!(wide.len() <= MAX_NOTE_BYTES);
        assert!(wide.ends_with('…'));
        assert!(wide.trim_end_matches('…').chars().all(|c| c == 'ü'));
    }
}
