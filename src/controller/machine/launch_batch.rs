//! Batched launches (see `aws::batch::launch`): Machines whose launches may
//! be shared join a window; when it closes, one task records each Machine's
//! slot (token, index, size) in its launch record and only then makes the
//! one RunInstances. Each Machine's reconcile then takes its instance from
//! the launch's answer, or — after a restart, when that answer is lost —
//! finds it by the launch tag or repeats the very same call, which EC2
//! answers with the same instances (same ClientToken, same parameters).
//!
//! A launch that answers with fewer instances than asked leaves the
//! Machines of the missing slots to join the next launch, under a new
//! token. A refused launch (capacity, invalid input) is every member's
//! failure; after its hold each member joins a new launch. A launch whose
//! outcome is unknown (timeout, 5xx) is repeated under the same token.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_ec2::operation::run_instances::builders::RunInstancesFluentBuilder;
use aws_sdk_ec2::types::Tag;
use futures::future::join_all;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Client, ResourceExt};
use serde_json::json;
use tracing::{debug, info, warn};

use super::apply::ensure_identity;
use super::create::{announce_launch, launch_failed, write_launch_record};
use super::launch_record::{BatchSlot, LAUNCH_ANNOTATION, LaunchRecord, StaleToken};
use super::{RECHECK_SOON, Resolved};
use crate::api::machine::Machine;
use crate::aws::batch::gather::Gather;
use crate::aws::batch::launch::{
    LAUNCH_WINDOW, batched, group_key, instance_at, launch_tag, launch_token, shareable,
};
use crate::aws::clients::Ec2Handle;
use crate::aws::errors::{Ec2Error, ErrorClass};
use crate::aws::instances::{self, InstanceInfo};
use crate::aws::tags::machine_tags;
use crate::controller::context::Context;
use crate::controller::error::Result;
use crate::controller::fleet::drift;

/// How soon a Machine waiting for its launch looks again.
const WAITING_RECHECK: Duration = Duration::from_secs(2);
/// How long a launch's answer is kept for its members.
const OUTCOME_TTL: Duration = Duration::from_secs(15 * 60);

/// What a launch answered.
#[derive(Clone, Debug)]
enum Outcome {
    Launched(Vec<InstanceInfo>),
    Failed {
        class: ErrorClass,
        code: Option<String>,
        message: String,
    },
}

impl Outcome {
    fn of(result: std::result::Result<Vec<InstanceInfo>, Ec2Error>) -> Outcome {
        match result {
            Ok(instances) => Outcome::Launched(instances),
            Err(e) => Outcome::Failed {
                class: e.class,
                code: e.code,
                message: e.message,
            },
        }
    }
}

/// A Machine waiting in a window.
struct Member {
    namespace: String,
    name: String,
    uid: String,
    /// Its launch record but for the slot (the attempt, Region, Secrets).
    base: LaunchRecord,
}

#[derive(Default)]
struct Book {
    /// Machine UIDs in a window or a launch not yet answered.
    waiting: HashSet<String>,
    /// Launch tokens whose call is being made.
    in_flight: HashSet<String>,
    /// Answers by launch token, with when they came.
    outcomes: HashMap<String, (Instant, Outcome)>,
    /// (token, Machine UID): refusals already reported to that member.
    reported: HashSet<(String, String)>,
    /// The slot records this process wrote, by Machine UID: the Machine
    /// cache may not show them yet, and a pass that read the Machine
    /// before them must not launch it again.
    written: HashMap<String, (Instant, LaunchRecord)>,
}

/// The windows and answers of batched launches. Cheap to clone.
#[derive(Clone)]
pub struct LaunchBatches {
    gather: Gather<String, Member>,
    book: Arc<Mutex<Book>>,
}

impl Default for LaunchBatches {
    fn default() -> Self {
        LaunchBatches {
            gather: Gather::new(LAUNCH_WINDOW),
            book: Arc::default(),
        }
    }
}

/// Where a launch stands, as this process knows it.
enum Known {
    Answered(Outcome),
    InFlight,
    Unknown,
}

impl LaunchBatches {
    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The Machine's launch record: the newer of its annotation and the one
    /// this process wrote last (which the cached Machine may lag).
    pub fn record_of(&self, m: &Machine) -> Option<LaunchRecord> {
        let annotated = LaunchRecord::from_annotations(m.annotations());
        let uid = m.uid().unwrap_or_default();
        let written = self.book().written.get(&uid).map(|(_, r)| r.clone());
        match (annotated, written) {
            (Some(a), Some(w)) if w.started > a.started => Some(w),
            (Some(a), _) => Some(a),
            (None, w) => w,
        }
    }

    /// Remembers the launch record just written for Machine `uid`, which
    /// [`Self::record_of`] prefers while the cached Machine lags it.
    pub fn remember(&self, uid: &str, record: &LaunchRecord) {
        let mut book = self.book();
        book.written.retain(|_, (at, _)| at.elapsed() < OUTCOME_TTL);
        book.written
            .insert(uid.to_string(), (Instant::now(), record.clone()));
    }

    fn known(&self, token: &str) -> Known {
        let book = self.book();
        if book.in_flight.contains(token) {
            return Known::InFlight;
        }
        match book.outcomes.get(token) {
            Some((_, outcome)) => Known::Answered(outcome.clone()),
            None => Known::Unknown,
        }
    }

    fn answer(&self, token: &str, outcome: Outcome) {
        let mut book = self.book();
        book.outcomes
            .retain(|_, (at, _)| at.elapsed() < OUTCOME_TTL);
        book.outcomes
            .insert(token.to_string(), (Instant::now(), outcome));
        book.in_flight.remove(token);
    }

    /// Adds `member` to the window of `key`; the first member of a window
    /// starts the task that launches it.
    fn join(
        &self,
        client: &Client,
        handle: &Ec2Handle,
        key: String,
        member: Member,
        request: RunInstancesFluentBuilder,
    ) {
        if !self.book().waiting.insert(member.uid.clone()) {
            return;
        }
        if let Some(closer) = self.gather.join(key, member) {
            let (this, client, handle) = (self.clone(), client.clone(), handle.clone());
            tokio::spawn(async move {
                let members = closer.await;
                this.launch(&client, &handle, request, members).await;
            });
        }
    }

    /// Records every member's slot, then makes the launch's one call.
    async fn launch(
        &self,
        client: &Client,
        handle: &Ec2Handle,
        request: RunInstancesFluentBuilder,
        members: Vec<Member>,
    ) {
        let count = u32::try_from(members.len()).unwrap_or(u32::MAX);
        let token = launch_token(members.iter().map(|m| (m.uid.as_str(), m.base.attempt)));
        self.book().in_flight.insert(token.clone());
        let started = Timestamp::now();
        let writes = members.iter().zip(0u32..).map(|(m, index)| {
            let record = LaunchRecord {
                started,
                batch: Some(BatchSlot {
                    token: token.clone(),
                    index,
                    count,
                }),
                ..m.base.clone()
            };
            async move { record_slot(client, m, &record).await.then_some(record) }
        });
        let records = join_all(writes).await;
        let written = records.iter().flatten().count();
        for (m, record) in members.iter().zip(&records) {
            if let Some(record) = record {
                self.remember(&m.uid, record);
            }
        }
        let namespace = members
            .first()
            .map(|m| m.namespace.clone())
            .unwrap_or_default();
        if written > 0 {
            let tag = launch_tag(&namespace, &token);
            let outcome = call(handle, batched(request, &token, &tag, count), count).await;
            match &outcome {
                Outcome::Launched(instances) => {
                    info!(launch = %tag, asked = count, launched = instances.len(), "batched launch")
                }
                Outcome::Failed { code, message, .. } => {
                    warn!(launch = %tag, asked = count, ?code, %message, "batched launch failed")
                }
            }
            self.answer(&token, outcome);
        } else {
            self.book().in_flight.remove(&token);
        }
        let mut book = self.book();
        for m in &members {
            book.waiting.remove(&m.uid);
        }
    }

    /// The launch's answer, asking EC2 again with the same call when this
    /// process does not know it (after a restart). `None`: another pass
    /// is asking right now.
    async fn answer_of(
        &self,
        handle: &Ec2Handle,
        slot: &BatchSlot,
        namespace: &str,
        request: RunInstancesFluentBuilder,
    ) -> Option<Outcome> {
        match self.known(&slot.token) {
            Known::Answered(outcome) => return Some(outcome),
            Known::InFlight => return None,
            Known::Unknown => {}
        }
        if !self.book().in_flight.insert(slot.token.clone()) {
            return None;
        }
        let tag = launch_tag(namespace, &slot.token);
        info!(launch = %tag, count = slot.count, "repeating a launch whose answer was lost");
        let outcome = call(
            handle,
            batched(request, &slot.token, &tag, slot.count),
            slot.count,
        )
        .await;
        self.answer(&slot.token, outcome.clone());
        Some(outcome)
    }

    /// Forgets an answer that did not settle anything (the call may or may
    /// not have launched): the next pass repeats the call.
    fn forget(&self, token: &str) {
        self.book().outcomes.remove(token);
    }

    /// Whether `uid` was told of the refusal of launch `token` already;
    /// marks it told.
    fn told(&self, token: &str, uid: &str) -> bool {
        !self
            .book()
            .reported
            .insert((token.to_string(), uid.to_string()))
    }
}

/// Writes a member's launch record with its slot; false when that failed
/// (its slot's instance then belongs to nobody and is collected as an
/// orphan).
async fn record_slot(client: &Client, m: &Member, record: &LaunchRecord) -> bool {
    let patch = json!({"metadata": {"annotations": {LAUNCH_ANNOTATION: record.to_annotation()}}});
    match Api::<Machine>::namespaced(client.clone(), &m.namespace)
        .patch(&m.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => true,
        Err(e) => {
            warn!(machine = %m.name, error = %e, "could not record the machine's launch slot; it joins a later launch");
            false
        }
    }
}

/// The RunInstances of a launch, without SDK retries (see `create.rs`),
/// drawing `count` tokens from the instance bucket.
async fn call(handle: &Ec2Handle, request: RunInstancesFluentBuilder, count: u32) -> Outcome {
    let once = aws_sdk_ec2::config::Builder::default()
        .retry_config(aws_sdk_ec2::config::retry::RetryConfig::standard().with_max_attempts(1));
    let sent = request.customize().config_override(once).send();
    let result = handle
        .call_instances("RunInstances", count as usize, sent)
        .await
        .map(|out| out.instances().iter().map(InstanceInfo::from).collect());
    Outcome::of(result)
}

/// Whether this Machine's launch goes through a window: its user data is
/// the same for every machine, and no single launch of it may still show
/// up (a recent launch record without a slot continues as it started).
pub(super) fn applies(m: &Machine, ctx: &Context, user_data: Option<&[u8]>) -> bool {
    shareable(user_data)
        && ctx
            .launches
            .record_of(m)
            .is_none_or(|r| r.batch.is_some() || !r.within_grace(Timestamp::now()))
}

/// The batched counterpart of `create::create`: join a window, or take the
/// instance of the launch the Machine recorded. `request` is the Machine's
/// own RunInstances request (built for it alone).
pub(super) async fn create(
    m: &Machine,
    ctx: &Context,
    r: &Resolved,
    request: RunInstancesFluentBuilder,
    user_data: Option<&[u8]>,
) -> Result<Action> {
    let now = Timestamp::now();
    let record = ctx.launches.record_of(m);
    if let Some(wait) = record.as_ref().and_then(|rec| rec.wait_before_call(now)) {
        return Ok(ctx.wakeups.recheck(m, wait.min(RECHECK_SOON * 6)));
    }
    let region = r.class.provider_spec.region.clone();
    let secrets = drift::secret_refs(&r.class);
    let base = match record {
        Some(rec) if rec.region == region && rec.secrets == secrets && rec.batch.is_some() => {
            match member(m, ctx, r, &rec, request.clone()).await? {
                Step::Done(action) => return Ok(action),
                Step::Rejoin => rec.next_attempt(now),
            }
        }
        // Launched elsewhere (another Region or account) lately: its
        // instance may still show up there.
        Some(rec) if rec.within_grace(now) && (rec.region != region || rec.secrets != secrets) => {
            return Ok(ctx.wakeups.recheck(m, RECHECK_SOON));
        }
        Some(rec) => LaunchRecord {
            region,
            secrets,
            bootstrap_token_id: None,
            ..rec.next_attempt(now)
        },
        None => LaunchRecord::first(region, secrets, now),
    };
    let namespace = m.namespace().unwrap_or_default();
    let key = group_key(&namespace, &r.handle.key, request.as_input(), user_data);
    let member = Member {
        namespace,
        name: m.name_any(),
        uid: m.uid().unwrap_or_default(),
        base,
    };
    debug!(machine = %member.name, "waiting for a batched launch");
    ctx.launches
        .join(&ctx.client, &r.handle, key, member, request);
    Ok(ctx.wakeups.recheck(m, WAITING_RECHECK))
}

enum Step {
    Done(Action),
    /// The Machine's slot got no instance: it joins the next launch.
    Rejoin,
}

/// A Machine with a slot in launch `rec.batch`: takes its instance, or
/// learns that it has none.
async fn member(
    m: &Machine,
    ctx: &Context,
    r: &Resolved,
    rec: &LaunchRecord,
    request: RunInstancesFluentBuilder,
) -> Result<Step> {
    let Some(slot) = rec.batch.as_ref() else {
        return Ok(Step::Rejoin);
    };
    let namespace = m.namespace().unwrap_or_default();
    let Some(outcome) = ctx
        .launches
        .answer_of(&r.handle, slot, &namespace, request)
        .await
    else {
        return Ok(Step::Done(ctx.wakeups.recheck(m, WAITING_RECHECK)));
    };
    let uid = m.uid().unwrap_or_default();
    match outcome {
        Outcome::Launched(launched) => match instance_at(&launched, slot.index) {
            Some(instance) => adopt(m, ctx, r, instance).await.map(Step::Done),
            None => {
                info!(machine = %m.name_any(), asked = slot.count, launched = launched.len(), "partial launch: the machine joins the next one");
                Ok(Step::Rejoin)
            }
        },
        Outcome::Failed {
            class,
            code,
            message,
        } => {
            let e = Ec2Error::new("RunInstances", class, code, message);
            if let Some(stale) = StaleToken::of(e.code.as_deref()) {
                let next = stale.next_record(rec, Timestamp::now());
                info!(machine = %m.name_any(), code = ?e.code, "stale launch token: next launch attempt");
                write_launch_record(m, ctx, &next).await?;
                return Ok(Step::Done(ctx.wakeups.recheck(m, RECHECK_SOON)));
            }
            if matches!(e.class, ErrorClass::Transient | ErrorClass::Throttled) {
                // Launched or not: the same call will tell.
                ctx.launches.forget(&slot.token);
                return Err(launch_failed(m, ctx, r, e).await);
            }
            if ctx.launches.told(&slot.token, &uid) {
                return Ok(Step::Rejoin);
            }
            Err(launch_failed(m, ctx, r, e).await)
        }
    }
}

/// Makes `instance` the Machine's: providerID and drift baseline at once.
/// Its own tags follow on the next passes ([`ensure_machine_tags`]): EC2
/// does not know a just-launched instance to other calls for a few
/// seconds, and a CreateTags now would only be refused.
async fn adopt(
    m: &Machine,
    ctx: &Context,
    r: &Resolved,
    instance: &InstanceInfo,
) -> Result<Action> {
    let spec = &r.class.provider_spec;
    info!(machine = %m.name_any(), instance = %instance.id, "launched instance (batched)");
    ctx.instances.record(&r.handle.key, instance.clone()).await;
    let launched_from = r.effective.annotations(&spec.tags);
    ensure_identity(m, ctx, instance, &spec.region, &launched_from).await?;
    announce_launch(ctx, m, instance, spec).await;
    Ok(ctx.wakeups.recheck(m, RECHECK_SOON))
}

/// Gives an instance of a batched launch the Machine's own tags (Name,
/// Machine UID, Machine) when it lacks them; nothing for other instances.
/// Only when CreateTags' bucket has a token now: tags never hold up a
/// reconcile. EC2 refuses them for a few seconds after the launch (it does
/// not know the instance to other calls yet); a later pass sets them.
///
/// Returns whether the tags are in place (or not this function's to set).
pub(super) async fn ensure_machine_tags(
    m: &Machine,
    ctx: &Context,
    handle: &Ec2Handle,
    instance: &InstanceInfo,
) -> Result<bool> {
    if instance.launch().is_none() || instance.state.is_gone() {
        return Ok(true);
    }
    let wanted = machine_tags(
        &m.name_any(),
        &m.namespace().unwrap_or_default(),
        &m.uid().unwrap_or_default(),
    );
    if wanted
        .iter()
        .all(|(k, v)| instance.tags.get(k) == Some(v.as_str()))
    {
        return Ok(true);
    }
    let tags: Vec<Tag> = wanted
        .iter()
        .map(|(k, v)| Tag::builder().key(*k).value(v).build())
        .collect();
    let req = handle
        .client
        .create_tags()
        .resources(&instance.id)
        .set_tags(Some(tags));
    match handle.call_if_ready("CreateTags", req.send()).await {
        Some(result) => result?,
        None => return Ok(false),
    };
    let mut tagged = instance.clone();
    tagged.tags = instance.tags.updated(wanted, Vec::<&str>::new());
    ctx.instances.record(&handle.key, tagged).await;
    Ok(true)
}

/// The Machine's instance when it has no providerID yet: from its launch's
/// answer when this process has it, else by its UID tag (from the shared
/// view when it never recorded a launch, from EC2 when it did) or by its
/// launch tag and index.
pub(super) async fn find(
    m: &Machine,
    handle: &Ec2Handle,
    ctx: &Context,
) -> Result<Option<InstanceInfo>> {
    let uid = m.uid().unwrap_or_default();
    let record = ctx.launches.record_of(m);
    let slot = record.as_ref().and_then(|r| r.batch.clone());
    if let Some(slot) = &slot {
        match ctx.launches.known(&slot.token) {
            Known::Answered(Outcome::Launched(launched)) => {
                let mine = instance_at(&launched, slot.index).cloned();
                if let Some(i) = &mine {
                    ctx.instances.record(&handle.key, i.clone()).await;
                }
                return Ok(mine);
            }
            Known::InFlight => return Ok(None),
            _ => {}
        }
    }
    let mut found = match &record {
        // Never launched by this operator (every launch is recorded
        // first): the shared view tells of an instance from elsewhere.
        None => {
            let max_age = ctx.config.instance_sync_period;
            ctx.instances
                .find(handle, max_age, |i| i.machine_uid() == Some(uid.as_str()))
                .await?
        }
        Some(_) => instances::by_machine_uid(handle, &uid).await?,
    };
    if found.is_empty()
        && let Some(slot) = &slot
    {
        let tag = launch_tag(&m.namespace().unwrap_or_default(), &slot.token);
        found = instances::by_launch(handle, &tag)
            .await?
            .into_iter()
            .filter(|i| i.is_launch_slot(&tag, slot.index))
            .collect();
    }
    // Prefer a live instance; a terminated one only explains what happened.
    found.sort_by_key(|i| i.state.is_gone());
    Ok(found.into_iter().next())
}
