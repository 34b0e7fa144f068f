//! What a Machine remembers about its launch: written (annotation
//! [`LAUNCH_ANNOTATION`]) *before* RunInstances is called, so that whatever
//! happens next — a crash, a timeout, EC2's eventual consistency hiding the
//! new instance, an edit of the class — the operator still knows
//!
//! - that a launch was attempted, and when (an instance may exist that no
//!   DescribeInstances shows yet: the Machine is not released before
//!   [`VISIBILITY_GRACE`] has passed since),
//! - where the instance lives: the Region and the Secrets whose credentials
//!   launched it (lookups and termination use those, not the class's current
//!   ones, so moving a class to another Region or account never loses an
//!   instance),
//! - which `ClientToken` the attempt used (`attempt` 0 is the Machine UID,
//!   as before this record existed; a token EC2 will not honour any more —
//!   `IdempotentInstanceTerminated`, `IdempotentParameterMismatch` — moves to
//!   the next attempt),
//! - which bootstrap token the user data carried (its public ID, see
//!   `controller::node::bootstrap_token`): a retry reuses it, so the same
//!   ClientToken goes with the same user data; a token that had to be made
//!   anew means new user data, and so the next attempt
//!   ([`LaunchRecord::after_new_user_data`]). The ID stays until the Secret
//!   is deleted once the Node joined.
//! - which batched launch the Machine belongs to, if any ([`BatchSlot`]:
//!   the launch's token, the Machine's index in it and the launch's size;
//!   see `aws::batch`): the launch's instances carry the launch tag, and
//!   the Machine's is the one whose `AmiLaunchIndex` is its index. A restart
//!   adopts it (or repeats the very same call, which EC2 answers with the
//!   same instances) instead of launching again.
//!
//! Pure: parsing, serializing and the decisions; the reconciler does the I/O.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::aws::tags::client_token;

/// Annotation on the Machine holding the JSON [`LaunchRecord`].
pub const LAUNCH_ANNOTATION: &str = "machine.sapcloud.io/launch";

/// How long an instance may stay invisible after its launch was attempted
/// before "nothing found" means "nothing there". EC2 documents its reads as
/// eventually consistent without a bound; seconds are usual, minutes happen.
pub const VISIBILITY_GRACE: Duration = Duration::from_secs(5 * 60);

/// See the module docs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LaunchRecord {
    /// Which attempt: selects the ClientToken ([`LaunchRecord::client_token`]).
    pub attempt: u32,
    /// The Region the instance was launched in.
    pub region: String,
    /// The Secrets (`namespace/name`) whose merged data held the credentials,
    /// in merge order (`secretRef`, then `credentialsSecretRef`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// When RunInstances was last called for this record (RFC 3339).
    pub started: Timestamp,
    /// No call before this time (after `IdempotentParameterMismatch`: the
    /// earlier call's instance, if any, gets the time to become visible and be
    /// adopted instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<Timestamp>,
    /// ID of the bootstrap token the user data of this attempt carries
    /// (`bootstrap-token-<id>` in the target cluster's `kube-system`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap_token_id: Option<String>,
    /// The batched launch this attempt is part of (its token replaces the
    /// per-machine one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchSlot>,
}

/// A Machine's place in a batched launch (one RunInstances with `MaxCount`
/// = `count`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchSlot {
    /// The launch's ClientToken (see `aws::batch::launch_token`).
    pub token: String,
    /// The Machine's instance is the one with this `AmiLaunchIndex`.
    pub index: u32,
    /// How many instances the launch asked for (`MaxCount`): repeating the
    /// call must ask for the same.
    pub count: u32,
}

impl LaunchRecord {
    /// The record on a Machine's annotations, if any. A malformed one reads
    /// as absent: the Machine then falls back to its providerID and class,
    /// as before records existed.
    pub fn from_annotations(annotations: &BTreeMap<String, String>) -> Option<LaunchRecord> {
        Self::from_annotation(annotations.get(LAUNCH_ANNOTATION).map(String::as_str))
    }

    /// The record in the value of [`LAUNCH_ANNOTATION`], read as
    /// [`Self::from_annotations`] does.
    pub fn from_annotation(value: Option<&str>) -> Option<LaunchRecord> {
        value.and_then(|v| serde_json::from_str(v).ok())
    }

    /// The record of a Machine's first launch attempt, starting `now`.
    pub fn first(region: String, secrets: Vec<String>, now: Timestamp) -> LaunchRecord {
        LaunchRecord {
            attempt: 0,
            region,
            secrets,
            started: now,
            not_before: None,
            bootstrap_token_id: None,
            batch: None,
        }
    }

    /// The annotation value.
    pub fn to_annotation(&self) -> String {
        serde_json::to_string(self).expect("a launch record always serializes")
    }

    /// The `ClientToken` of this attempt (at most 64 characters, as EC2 asks).
    pub fn client_token(&self, machine_uid: &str) -> String {
        if let Some(batch) = &self.batch {
            return batch.token.clone();
        }
        attempt_token(machine_uid, self.attempt)
    }

    /// Whether the attempt is recent enough that its instance may still be
    /// invisible to EC2's reads.
    pub fn within_grace(&self, now: Timestamp) -> bool {
        since(self.started, now) < VISIBILITY_GRACE
    }

    /// The record of the next attempt (a fresh token, outside any batch),
    /// starting `now`.
    pub fn next_attempt(&self, now: Timestamp) -> LaunchRecord {
        LaunchRecord {
            attempt: self.attempt.saturating_add(1),
            started: now,
            not_before: None,
            batch: None,
            ..self.clone()
        }
    }

    /// The record to continue with when the user data changed since the
    /// last call (a bootstrap token made anew): EC2 would refuse the old
    /// ClientToken with other parameters, so a new attempt — once an
    /// instance of the last call, if any, had the time to become visible
    /// and be adopted instead.
    pub fn after_new_user_data(&self, now: Timestamp) -> LaunchRecord {
        let visible_by = self
            .started
            .checked_add(VISIBILITY_GRACE)
            .unwrap_or(Timestamp::MAX);
        LaunchRecord {
            not_before: (visible_by > now).then_some(visible_by),
            ..self.next_attempt(now)
        }
    }

    /// How long to wait before the next call, if at all.
    pub fn wait_before_call(&self, now: Timestamp) -> Option<Duration> {
        let until = self.not_before?;
        let wait = since(now, until);
        (!wait.is_zero()).then_some(wait)
    }
}

/// The `ClientToken` of attempt `attempt` for a Machine UID.
pub fn attempt_token(machine_uid: &str, attempt: u32) -> String {
    if attempt == 0 {
        return client_token(machine_uid);
    }
    let suffix = format!("-{attempt}");
    let keep = 64usize.saturating_sub(suffix.len());
    let mut token: String = machine_uid.chars().take(keep).collect();
    token.push_str(&suffix);
    token
}

/// Time from `t` to `now`, zero when `t` is in the future.
pub fn since(t: Timestamp, now: Timestamp) -> Duration {
    Duration::try_from(now.duration_since(t)).unwrap_or_default()
}

/// What an EC2 error answer to RunInstances means for the token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StaleToken {
    /// The instance launched with this token was terminated: a new attempt
    /// can start at once.
    Terminated,
    /// This token went with other parameters (the class changed after an
    /// attempt whose outcome was unknown). That attempt's instance, if any,
    /// carries the Machine's UID tag and is adopted once visible; a new token
    /// only after [`VISIBILITY_GRACE`].
    Mismatch,
}

impl StaleToken {
    /// The stale-token case of an EC2 error code, if it is one.
    pub fn of(code: Option<&str>) -> Option<StaleToken> {
        match code? {
            "IdempotentInstanceTerminated" => Some(StaleToken::Terminated),
            "IdempotentParameterMismatch" => Some(StaleToken::Mismatch),
            _ => None,
        }
    }

    /// The record to continue with after this answer to `record`'s call.
    pub fn next_record(self, record: &LaunchRecord, now: Timestamp) -> LaunchRecord {
        let next = record.next_attempt(now);
        match self {
            StaleToken::Terminated => next,
            StaleToken::Mismatch => LaunchRecord {
                not_before: Some(now.checked_add(VISIBILITY_GRACE).unwrap_or(Timestamp::MAX)),
                ..next
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "6f1c2a9e-3b1d-4c8e-9a57-0d2b6c1e4f70";

    fn record(started: Timestamp) -> LaunchRecord {
        LaunchRecord {
            attempt: 0,
            region: "eu-west-1".into(),
            secrets: vec!["ns/aws".into()],
            started,
            not_before: None,
            bootstrap_token_id: None,
            batch: None,
        }
    }

    #[test]
    fn a_batch_slot_round_trips_and_its_token_wins() {
        let r = LaunchRecord {
            batch: Some(BatchSlot {
                token: "batch-0123".into(),
                index: 3,
                count: 20,
            }),
            ..record(Timestamp::from_second(1_700_000_000).unwrap())
        };
        let mut a = BTreeMap::new();
        a.insert(LAUNCH_ANNOTATION.to_string(), r.to_annotation());
        assert!(
            r.to_annotation()
                .contains(r#""batch":{"token":"batch-0123","index":3,"count":20}"#)
        );
        assert_eq!(LaunchRecord::from_annotations(&a), Some(r.clone()));
        assert_eq!(r.client_token(UID), "batch-0123");
        let next = r.next_attempt(Timestamp::now());
        assert_eq!(next.batch, None, "the next attempt is a launch of its own");
        assert_eq!(next.client_token(UID), format!("{UID}-1"));
        // Records written before batching read as single launches.
        a.insert(
            LAUNCH_ANNOTATION.to_string(),
            r#"{"attempt":0,"region":"eu-west-1","started":"2023-11-14T22:13:20Z"}"#.into(),
        );
        assert_eq!(
            LaunchRecord::from_annotations(&a).map(|r| r.batch),
            Some(None)
        );
    }

    #[test]
    fn round_trips_through_the_annotation() {
        let r = record(Timestamp::from_second(1_700_000_000).unwrap());
        let mut a = BTreeMap::new();
        a.insert(LAUNCH_ANNOTATION.to_string(), r.to_annotation());
        assert_eq!(LaunchRecord::from_annotations(&a), Some(r));
        a.insert(LAUNCH_ANNOTATION.to_string(), "{not json".into());
        assert_eq!(
            LaunchRecord::from_annotations(&a),
            None,
            "malformed reads as absent"
        );
    }

    #[test]
    fn the_first_attempt_keeps_the_uid_token_later_ones_differ_and_fit() {
        let r = record(Timestamp::now());
        assert_eq!(
            r.client_token(UID),
            UID,
            "compatible with machines launched before"
        );
        let next = r.next_attempt(Timestamp::now());
        assert_eq!(next.attempt, 1);
        assert_eq!(next.client_token(UID), format!("{UID}-1"));
        let long = "u".repeat(100);
        let t = attempt_token(&long, u32::MAX);
        assert!(t.len() <= 64 && t.ends_with(&format!("-{}", u32::MAX)));
        assert_eq!(
            LaunchRecord {
                attempt: u32::MAX,
                ..r
            }
            .next_attempt(Timestamp::now())
            .attempt,
            u32::MAX,
            "saturates"
        );
    }

    #[test]
    fn grace_counts_from_the_attempt() {
        let start = Timestamp::from_second(1_700_000_000).unwrap();
        let r = record(start);
        let at = |secs: i64| Timestamp::from_second(1_700_000_000 + secs).unwrap();
        assert!(r.within_grace(at(0)));
        assert!(r.within_grace(at(299)));
        assert!(!r.within_grace(at(300)));
        assert!(r.within_grace(at(-60)), "a clock behind the record waits");
    }

    #[test]
    fn new_user_data_moves_to_a_new_attempt_after_the_grace() {
        let start = Timestamp::from_second(1_700_000_000).unwrap();
        let r = LaunchRecord {
            bootstrap_token_id: Some("abc123".into()),
            ..record(start)
        };
        let soon = Timestamp::from_second(1_700_000_010).unwrap();
        let next = r.after_new_user_data(soon);
        assert_eq!(next.attempt, 1, "a fresh ClientToken");
        assert_eq!(
            next.wait_before_call(soon),
            Some(VISIBILITY_GRACE - Duration::from_secs(10)),
            "the last call's instance may still show up"
        );
        let late = Timestamp::from_second(1_700_000_400).unwrap();
        assert_eq!(r.after_new_user_data(late).wait_before_call(late), None);
        // The record reads and writes the token ID.
        let mut a = BTreeMap::new();
        a.insert(LAUNCH_ANNOTATION.to_string(), r.to_annotation());
        assert!(
            r.to_annotation()
                .contains("\"bootstrapTokenId\":\"abc123\"")
        );
        assert_eq!(LaunchRecord::from_annotations(&a), Some(r));
    }

    #[test]
    fn stale_tokens_retry_at_once_or_after_the_grace() {
        let start = Timestamp::from_second(1_700_000_000).unwrap();
        let r = record(start);
        let soon = Timestamp::from_second(1_700_000_010).unwrap();
        let later = Timestamp::from_second(1_700_000_400).unwrap();
        assert_eq!(
            StaleToken::of(Some("IdempotentInstanceTerminated")),
            Some(StaleToken::Terminated)
        );
        assert_eq!(
            StaleToken::of(Some("IdempotentParameterMismatch")),
            Some(StaleToken::Mismatch)
        );
        assert_eq!(StaleToken::of(Some("InvalidAMIID.NotFound")), None);
        assert_eq!(StaleToken::of(None), None);
        let fresh = StaleToken::Terminated.next_record(&r, soon);
        assert_eq!((fresh.attempt, fresh.wait_before_call(soon)), (1, None));
        let deferred = StaleToken::Mismatch.next_record(&r, soon);
        assert_eq!(deferred.attempt, 1);
        assert_eq!(deferred.wait_before_call(soon), Some(VISIBILITY_GRACE));
        assert_eq!(deferred.wait_before_call(later), None);
        assert!(
            deferred.within_grace(soon),
            "a deletion meanwhile waits too"
        );
    }
}
