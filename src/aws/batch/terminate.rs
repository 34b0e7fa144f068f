//! Batched terminations: machines being deleted at the same time are
//! terminated with one TerminateInstances per credentials + Region (up to
//! 1000 IDs a call), gathered over [`TERMINATE_WINDOW`].
//!
//! Callers do not wait for the call. [`Terminations::request`] hands the
//! IDs it has not been handed before to the window and tells where those
//! handed in earlier stand (pending, accepted, unknown, refused), so a
//! reconcile returns at once and looks again shortly: the deletions of any
//! number of machines share calls, however few reconciles run at a time.
//! An ID is never handed to EC2 twice while its termination is pending or
//! its outcome untold. An accepted termination is recorded in the shared
//! instance view at once (`shutting-down` before EC2's reads show it); a
//! refusal (a missing permission, throttling) is told to the next request
//! naming the ID, which hands it in again on the request after.
//!
//! EC2 refuses a whole call when one of its IDs is unknown
//! (`InvalidInstanceID.NotFound`, e.g. an instance too new to be visible)
//! and names the unknown IDs in its message: the call is repeated without
//! them, so that one caller's ID never fails another's termination. When
//! the message names none, each caller's IDs go in a call of their own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tracing::{debug, info};

use super::gather::{Gather, Window};
use crate::aws::clients::{ClientKey, Ec2Handle};
use crate::aws::errors::{Ec2Error, ErrorClass};
use crate::aws::instances::{InstanceInfo, InstanceView};

/// Terminations are gathered until none came for 1 s, for 10 s at most:
/// the machines of a large scale-down reach their termination at the pace
/// of the reconciles (a status write, a cordon, two lists each), and a
/// termination waits for nothing but the window.
pub const TERMINATE_WINDOW: Window = Window {
    idle: Duration::from_secs(1),
    max: Duration::from_secs(10),
    cap: 1000,
};

/// EC2 takes at most this many IDs per TerminateInstances.
pub const MAX_IDS: usize = 1000;

/// How long an outcome nobody asked for (or a pending termination whose
/// call never came back) is kept.
const KEPT: Duration = Duration::from_secs(10 * 60);

/// How often EC2 may answer "unknown" to one batch before each caller
/// gets a call of its own.
const NOT_FOUND_ROUNDS: usize = 3;

/// What EC2 answered for one instance.
#[derive(Debug)]
enum Outcome {
    Accepted,
    /// EC2 did not know the instance (too new, or long gone).
    Unknown,
    Refused(Ec2Error),
}

#[derive(Debug)]
enum Entry {
    Pending,
    Settled(Outcome),
}

/// Where the terminations of one request's instances stand.
#[derive(Debug, Default)]
pub struct Report {
    /// Accepted by EC2 since the last request that named them.
    pub accepted: Vec<String>,
    /// Unknown to EC2 (counted as terminated, as EC2 will say once it
    /// knows them; the view shows them `shutting-down` until then).
    pub unknown: Vec<String>,
    /// Handed in and not answered yet (including those handed in now).
    pub pending: Vec<String>,
    /// A refusal of one of them since the last request; they are handed in
    /// again by the next request.
    pub refused: Option<Ec2Error>,
}

impl Report {
    /// Every ID whose termination was under way or answered (all but those
    /// named already gone and never handed in).
    pub fn in_progress(&self) -> Vec<String> {
        let mut ids: Vec<String> = [&self.pending, &self.accepted, &self.unknown]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        ids.sort();
        ids
    }
}

/// Per credentials + Region and instance ID: pending or answered.
#[derive(Default)]
struct Book {
    entries: HashMap<(ClientKey, String), (Instant, Entry)>,
}

impl Book {
    /// Takes the outcomes of `instances` (ID, whether the caller still sees
    /// it alive) and marks the alive ones without an entry pending; returns
    /// the report and the IDs to hand to EC2.
    fn request<'a>(
        &mut self,
        key: &ClientKey,
        instances: impl IntoIterator<Item = (&'a str, bool)>,
    ) -> (Report, Vec<String>) {
        self.entries.retain(|_, (at, _)| at.elapsed() < KEPT);
        let mut report = Report::default();
        let mut submit = Vec::new();
        for (id, alive) in instances {
            let k = (key.clone(), id.to_string());
            match self.entries.get(&k) {
                Some((_, Entry::Pending)) => report.pending.push(id.to_string()),
                Some((_, Entry::Settled(_))) => {
                    if let Some((_, Entry::Settled(outcome))) = self.entries.remove(&k) {
                        match outcome {
                            Outcome::Accepted => report.accepted.push(id.to_string()),
                            Outcome::Unknown => report.unknown.push(id.to_string()),
                            Outcome::Refused(e) => {
                                report.refused.get_or_insert(e);
                            }
                        }
                    }
                }
                None if alive => {
                    self.entries.insert(k, (Instant::now(), Entry::Pending));
                    report.pending.push(id.to_string());
                    submit.push(id.to_string());
                }
                None => {}
            }
        }
        (report, submit)
    }

    /// Records what EC2 answered for `ids`.
    fn settle(&mut self, key: &ClientKey, ids: &[String], outcome: impl Fn() -> Outcome) {
        for id in ids {
            self.entries.insert(
                (key.clone(), id.clone()),
                (Instant::now(), Entry::Settled(outcome())),
            );
        }
    }
}

/// See the module docs. Cheap to clone (shared state).
#[derive(Clone)]
pub struct Terminations {
    gather: Gather<ClientKey, Vec<String>>,
    book: Arc<Mutex<Book>>,
}

impl Default for Terminations {
    fn default() -> Self {
        Terminations {
            gather: Gather::new(TERMINATE_WINDOW),
            book: Arc::default(),
        }
    }
}

impl Terminations {
    fn book(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the termination of `id` was handed in and its outcome not
    /// told yet.
    pub fn handed_in(&self, key: &ClientKey, id: &str) -> bool {
        self.book()
            .entries
            .contains_key(&(key.clone(), id.to_string()))
    }

    /// Hands the alive ones of `instances` (of `handle`'s credentials and
    /// Region) to the window, unless they were handed in already, and
    /// reports where each stands; outcomes are told once. Accepted
    /// terminations are recorded in `view`.
    pub fn request(
        &self,
        handle: &Ec2Handle,
        view: &InstanceView,
        instances: &[InstanceInfo],
    ) -> Report {
        let (report, submit) = self.book().request(
            &handle.key,
            instances
                .iter()
                .map(|i| (i.id.as_str(), !i.state.is_gone())),
        );
        if !submit.is_empty()
            && let Some(closer) = self.gather.join(handle.key.clone(), submit)
        {
            let (this, handle, view) = (self.clone(), handle.clone(), view.clone());
            tokio::spawn(async move { this.run(&handle, &view, closer.await).await });
        }
        report
    }

    /// Terminates one window's requests and records the outcomes.
    async fn run(&self, handle: &Ec2Handle, view: &InstanceView, requests: Vec<Vec<String>>) {
        let mut ids: Vec<String> = requests.iter().flatten().cloned().collect();
        ids.sort();
        ids.dedup();
        info!(
            instances = ids.len(),
            callers = requests.len(),
            "batched termination"
        );
        for chunk in ids.chunks(MAX_IDS) {
            let mut remaining = chunk.to_vec();
            for _ in 0..NOT_FOUND_ROUNDS {
                match call(handle, remaining.clone()).await {
                    Ok(()) => {
                        self.accepted(handle, view, &remaining).await;
                        remaining.clear();
                        break;
                    }
                    Err(e) if e.class == ErrorClass::NotFound => {
                        let (unknown, rest): (Vec<String>, Vec<String>) =
                            remaining.iter().cloned().partition(|id| names(&e, id));
                        if unknown.is_empty() {
                            // Named by one caller alone: its own answer.
                            if callers_of(&requests, &remaining) <= 1 {
                                self.unknown(handle, view, &remaining).await;
                                remaining.clear();
                            }
                            break;
                        }
                        debug!(
                            ?unknown,
                            "a batched termination named unknown instances; repeating it without them"
                        );
                        self.unknown(handle, view, &unknown).await;
                        remaining = rest;
                        if remaining.is_empty() {
                            break;
                        }
                    }
                    Err(e) => {
                        self.book()
                            .settle(&handle.key, &remaining, || Outcome::Refused(copy(&e)));
                        remaining.clear();
                        break;
                    }
                }
            }
            if !remaining.is_empty() {
                self.one_caller_at_a_time(handle, view, &requests, &remaining)
                    .await;
            }
        }
    }

    /// EC2 keeps answering "unknown" without saying which: each caller's
    /// IDs among `remaining` in a call of their own, so that one caller's
    /// unknown ID fails only its own termination.
    async fn one_caller_at_a_time(
        &self,
        handle: &Ec2Handle,
        view: &InstanceView,
        requests: &[Vec<String>],
        remaining: &[String],
    ) {
        for request in requests {
            let ids: Vec<String> = request
                .iter()
                .filter(|id| remaining.contains(id))
                .cloned()
                .collect();
            if ids.is_empty() {
                continue;
            }
            match call(handle, ids.clone()).await {
                Ok(()) => self.accepted(handle, view, &ids).await,
                Err(e) if e.class == ErrorClass::NotFound => self.unknown(handle, view, &ids).await,
                Err(e) => self
                    .book()
                    .settle(&handle.key, &ids, || Outcome::Refused(copy(&e))),
            }
        }
    }

    async fn accepted(&self, handle: &Ec2Handle, view: &InstanceView, ids: &[String]) {
        view.record_termination(&handle.key, ids, true).await;
        self.book().settle(&handle.key, ids, || Outcome::Accepted);
    }

    async fn unknown(&self, handle: &Ec2Handle, view: &InstanceView, ids: &[String]) {
        view.record_termination(&handle.key, ids, false).await;
        self.book().settle(&handle.key, ids, || Outcome::Unknown);
    }
}

/// How many of `requests` name one of `ids`.
fn callers_of(requests: &[Vec<String>], ids: &[String]) -> usize {
    requests
        .iter()
        .filter(|r| r.iter().any(|id| ids.contains(id)))
        .count()
}

/// Whether EC2's error message names instance `id` (EC2: "The instance IDs
/// 'i-1, i-2' do not exist").
fn names(e: &Ec2Error, id: &str) -> bool {
    e.message
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .any(|word| word == id)
}

/// One TerminateInstances.
async fn call(handle: &Ec2Handle, ids: Vec<String>) -> Result<(), Ec2Error> {
    let n = ids.len();
    let req = handle
        .client
        .terminate_instances()
        .set_instance_ids(Some(ids));
    handle
        .call_instances("TerminateInstances", n, req.send())
        .await
        .map(|_| ())
}

fn copy(e: &Ec2Error) -> Ec2Error {
    Ec2Error::new(e.operation, e.class, e.code.clone(), e.message.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ClientKey {
        ClientKey {
            fingerprint: "f".into(),
            region: "eu-west-1".into(),
        }
    }

    fn refusal() -> Outcome {
        Outcome::Refused(Ec2Error::new(
            "TerminateInstances",
            ErrorClass::Unauthorized,
            Some("UnauthorizedOperation".into()),
            "no",
        ))
    }

    #[test]
    fn an_id_is_handed_in_once_until_its_outcome_is_told() {
        let mut book = Book::default();
        let (report, submit) = book.request(&key(), [("i-1", true), ("i-2", false)]);
        assert_eq!(submit, ["i-1"], "only the alive one");
        assert_eq!(report.pending, ["i-1"]);

        let (report, submit) = book.request(&key(), [("i-1", true)]);
        assert!(submit.is_empty(), "pending: not again");
        assert_eq!(report.pending, ["i-1"]);

        book.settle(&key(), &["i-1".into()], || Outcome::Accepted);
        let (report, submit) = book.request(&key(), [("i-1", true)]);
        assert!(
            submit.is_empty(),
            "accepted, although the caller's read still shows it alive"
        );
        assert_eq!(report.accepted, ["i-1"]);
        assert_eq!(report.in_progress(), ["i-1"]);

        let (report, submit) = book.request(&key(), [("i-1", false)]);
        assert!(submit.is_empty() && report.in_progress().is_empty());
    }

    #[test]
    fn a_refusal_is_told_once_and_the_next_request_hands_the_id_in_again() {
        let mut book = Book::default();
        book.request(&key(), [("i-1", true), ("i-2", true)]);
        book.settle(&key(), &["i-1".into()], refusal);
        book.settle(&key(), &["i-2".into()], || Outcome::Unknown);
        let (report, submit) = book.request(&key(), [("i-1", true), ("i-2", true)]);
        assert!(submit.is_empty());
        assert_eq!(
            report.refused.as_ref().and_then(|e| e.code.as_deref()),
            Some("UnauthorizedOperation")
        );
        assert_eq!(report.unknown, ["i-2"]);
        let (report, submit) = book.request(&key(), [("i-1", true)]);
        assert_eq!(submit, ["i-1"], "retried");
        assert!(report.refused.is_none());
    }

    #[test]
    fn other_credentials_are_other_instances() {
        let mut book = Book::default();
        book.request(&key(), [("i-1", true)]);
        let other = ClientKey {
            region: "us-east-1".into(),
            ..key()
        };
        let (_, submit) = book.request(&other, [("i-1", true)]);
        assert_eq!(submit, ["i-1"]);
    }

    #[test]
    fn the_unknown_ids_are_read_from_ec2s_message() {
        let e = Ec2Error::new(
            "TerminateInstances",
            ErrorClass::NotFound,
            Some("InvalidInstanceID.NotFound".into()),
            "The instance IDs 'i-0a1, i-0b2' do not exist",
        );
        assert!(names(&e, "i-0a1") && names(&e, "i-0b2"));
        assert!(!names(&e, "i-0a"), "whole IDs only");
        assert!(!names(&e, "i-0c3"));
    }
}
