//! Writes `events.k8s.io/v1` Events and counts repeats in an Event's
//! `series`, remembering recent Events compactly.
//!
//! kube's `Recorder` remembers every Event it wrote in the last six minutes
//! as a whole object (the Event and its key, each with a copy of the
//! object reference and note: ~2 KB), and scans that memory on every
//! publish. With thousands of machines reporting at once (a scale-up, an
//! adoption after a restart) that is tens of MB and quadratic work. This
//! recorder remembers a hash of each Event's identity with its name, count
//! and time (~100 bytes), sweeps expired entries only once the memory has
//! doubled or a minute has passed, and writes the same objects: a new
//! Event, or a merge patch of `series` for a repeat within the window.
//!
//! An Event's identity is its type, reason, action, note, regarding object
//! and related object: a repeat with another note is a new Event (kube's
//! recorder would count it in the first Event's series, showing the first
//! note).

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Reporter};
use serde_json::json;

/// A repeat within this long of the last occurrence joins its series.
const SERIES_WINDOW: SignedDuration = SignedDuration::from_mins(6);

/// The memory is swept at least this often (when anything is published).
const SWEEP_EVERY: SignedDuration = SignedDuration::from_mins(1);

/// See the module docs.
pub struct Recorder {
    client: Client,
    reporter: Reporter,
    recent: Mutex<Recent>,
}

#[derive(Default)]
struct Recent {
    seen: HashMap<u64, Seen>,
    swept_at: usize,
    swept: Option<Timestamp>,
}

struct Seen {
    name: Box<str>,
    count: i32,
    last: Timestamp,
}

impl Recorder {
    pub fn new(client: Client, reporter: Reporter) -> Self {
        Self {
            client,
            reporter,
            recent: Mutex::default(),
        }
    }

    /// Writes `ev` about `regarding`: a new Event, or one more in the
    /// series of the same Event written less than six minutes ago.
    pub async fn publish(&self, ev: &Event, regarding: &ObjectReference) -> kube::Result<()> {
        let now = Timestamp::now();
        let key = identity(ev, regarding);
        let repeat = self.recent().repeat(key, now);
        let api: Api<K8sEvent> = Api::namespaced(
            self.client.clone(),
            regarding.namespace.as_deref().unwrap_or("default"),
        );
        let written = match repeat {
            Some((name, count)) => {
                let patch = json!({"series": {"count": count, "lastObservedTime": MicroTime(now)}});
                match api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => Seen {
                        name,
                        count,
                        last: now,
                    },
                    // The Event expired on the server (its TTL is an hour by
                    // default, but it may be shorter): start a new one.
                    Err(kube::Error::Api(e)) if e.code == 404 => {
                        self.create(&api, ev, regarding, now).await?
                    }
                    Err(e) => return Err(e),
                }
            }
            None => self.create(&api, ev, regarding, now).await?,
        };
        self.recent().seen.insert(key, written);
        Ok(())
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn create(
        &self,
        api: &Api<K8sEvent>,
        ev: &Event,
        regarding: &ObjectReference,
        now: Timestamp,
    ) -> kube::Result<Seen> {
        let event = new_event(&self.reporter, ev, regarding, now);
        api.create(&PostParams::default(), &event).await?;
        Ok(Seen {
            name: event.metadata.name.unwrap_or_default().into(),
            count: 1,
            last: now,
        })
    }
}

impl Recent {
    /// The name and next count of Event `key` when it is a repeat; sweeps
    /// the memory when due.
    fn repeat(&mut self, key: u64, now: Timestamp) -> Option<(Box<str>, i32)> {
        let due = self.seen.len() >= (2 * self.swept_at).max(256)
            || self.swept.is_none_or(|t| t + SWEEP_EVERY <= now);
        if due {
            self.seen.retain(|_, s| s.last + SERIES_WINDOW > now);
            self.seen.shrink_to_fit();
            self.swept_at = self.seen.len();
            self.swept = Some(now);
        }
        self.seen
            .get(&key)
            .filter(|s| s.last + SERIES_WINDOW > now)
            .map(|s| (s.name.clone(), s.count.saturating_add(1)))
    }
}

/// What makes two Events the same: see the module docs.
fn identity(ev: &Event, regarding: &ObjectReference) -> u64 {
    let mut h = DefaultHasher::new();
    let reference = |r: &ObjectReference, h: &mut DefaultHasher| {
        (
            &r.api_version,
            &r.kind,
            &r.namespace,
            &r.name,
            &r.uid,
            &r.field_path,
        )
            .hash(h);
    };
    matches!(ev.type_, EventType::Warning).hash(&mut h);
    (&ev.reason, &ev.action, &ev.note).hash(&mut h);
    reference(regarding, &mut h);
    if let Some(related) = &ev.secondary {
        reference(related, &mut h);
    }
    h.finish()
}

fn new_event(
    reporter: &Reporter,
    ev: &Event,
    regarding: &ObjectReference,
    now: Timestamp,
) -> K8sEvent {
    let base = regarding.name.as_deref().unwrap_or(&reporter.controller);
    K8sEvent {
        metadata: ObjectMeta {
            name: Some(format!("{base}.{:x}", now.as_nanosecond())),
            namespace: regarding.namespace.clone(),
            ..ObjectMeta::default()
        },
        action: Some(ev.action.clone()),
        reason: Some(ev.reason.clone()),
        note: ev.note.clone(),
        event_time: Some(MicroTime(now)),
        regarding: Some(regarding.clone()),
        related: ev.secondary.clone(),
        reporting_controller: Some(reporter.controller.clone()),
        reporting_instance: Some(
            reporter
                .instance
                .clone()
                .unwrap_or_else(|| reporter.controller.clone()),
        ),
        type_: Some(
            match ev.type_ {
                EventType::Normal => "Normal",
                EventType::Warning => "Warning",
            }
            .into(),
        ),
        ..K8sEvent::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(reason: &str, note: &str) -> Event {
        Event {
            type_: EventType::Warning,
            reason: reason.into(),
            note: Some(note.into()),
            action: "Reconcile".into(),
            secondary: None,
        }
    }

    fn machine(name: &str) -> ObjectReference {
        ObjectReference {
            api_version: Some("machine.sapcloud.io/v1alpha1".into()),
            kind: Some("Machine".into()),
            namespace: Some("ns".into()),
            name: Some(name.into()),
            uid: Some(format!("uid-{name}")),
            ..ObjectReference::default()
        }
    }

    #[test]
    fn the_same_event_about_the_same_object_is_one_identity() {
        let a = identity(&event("DrainFailed", "pod p"), &machine("m"));
        assert_eq!(a, identity(&event("DrainFailed", "pod p"), &machine("m")));
        assert_ne!(a, identity(&event("DrainFailed", "pod q"), &machine("m")));
        assert_ne!(a, identity(&event("DrainStarted", "pod p"), &machine("m")));
        assert_ne!(a, identity(&event("DrainFailed", "pod p"), &machine("n")));
        let mut normal = event("DrainFailed", "pod p");
        normal.type_ = EventType::Normal;
        assert_ne!(a, identity(&normal, &machine("m")));
    }

    fn seen(name: &str, count: i32, last: Timestamp) -> Seen {
        Seen {
            name: name.into(),
            count,
            last,
        }
    }

    #[test]
    fn a_repeat_within_the_window_continues_the_series_and_later_starts_anew() {
        let t0 = Timestamp::from_second(1_800_000_000).unwrap();
        let mut recent = Recent::default();
        assert_eq!(recent.repeat(1, t0), None);
        recent.seen.insert(1, seen("m.1", 1, t0));
        let at = |mins: i64| t0 + SignedDuration::from_mins(mins);
        assert_eq!(recent.repeat(1, at(5)), Some(("m.1".into(), 2)));
        assert_eq!(recent.repeat(2, at(5)), None);
        recent.seen.insert(1, seen("m.1", 2, at(5)));
        assert_eq!(recent.repeat(1, at(10)), Some(("m.1".into(), 3)));
        assert_eq!(recent.repeat(1, at(12)), None, "six minutes after the last");
    }

    #[test]
    fn expired_events_are_forgotten() {
        let t0 = Timestamp::from_second(1_800_000_000).unwrap();
        let mut recent = Recent::default();
        for k in 0..10_000 {
            recent.repeat(k, t0);
            recent.seen.insert(k, seen("e", 1, t0));
        }
        let later = t0 + SignedDuration::from_mins(7);
        recent.repeat(0, later);
        recent.seen.insert(0, seen("e", 1, later));
        assert_eq!(recent.seen.len(), 1);
    }

    #[test]
    fn a_new_event_names_its_object_reporter_and_time() {
        let reporter = Reporter {
            controller: "mcm-provider-aws".into(),
            instance: Some("pod-1".into()),
        };
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let e = new_event(
            &reporter,
            &event("DrainFailed", "pod p"),
            &machine("m"),
            now,
        );
        assert_eq!(e.metadata.namespace.as_deref(), Some("ns"));
        assert!(e.metadata.name.as_deref().unwrap().starts_with("m."));
        assert_eq!(e.type_.as_deref(), Some("Warning"));
        assert_eq!(e.reason.as_deref(), Some("DrainFailed"));
        assert_eq!(e.note.as_deref(), Some("pod p"));
        assert_eq!(e.reporting_controller.as_deref(), Some("mcm-provider-aws"));
        assert_eq!(e.reporting_instance.as_deref(), Some("pod-1"));
        assert_eq!(e.regarding.unwrap().name.as_deref(), Some("m"));
        assert_eq!(e.event_time.unwrap().0, now);
        assert!(e.series.is_none());
    }
}
