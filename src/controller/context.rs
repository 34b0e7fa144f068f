//! The context every reconcile gets: clients, caches and settings, built once
//! at startup.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use kube::Client;
use kube::runtime::events::Reporter;
use kube::runtime::reflector::Store;
use tokio::sync::Notify;

use super::caches::Watches;
use super::config::ControllerConfig;
use super::error::{Error, Result};
use super::fleet::expectations::Expectations;
use super::fleet::replacement::FailureGate;
use super::index::Index;
use super::machine::drain::Drainer;
use super::machine::launch_batch::LaunchBatches;
use super::machine::released::Released;
use super::nodes::Nodes;
use super::reads::Reads;
use super::recorder::Recorder;
use super::wakeups::Wakeups;
use crate::api::machine_set::MachineSet;
use crate::aws::batch::terminate::Terminations;
use crate::aws::clients::Ec2Clients;
use crate::aws::images::ImageCache;
use crate::aws::instances::InstanceView;
use crate::controller::cached_machine::CachedMachine;

/// Name under which the operator reports Events and applies fields.
pub const MANAGER: &str = "mcm-provider-aws";

/// Shared state of the reconcilers.
pub struct Context {
    /// Client of the control cluster (Machines, classes, Secrets).
    pub client: Client,
    /// Client of the target cluster (Nodes, Pods); the control cluster by default.
    pub target: Client,
    /// Events about Machines and classes (one recorder, shared).
    pub recorder: Recorder,
    /// Settings from the command line.
    pub config: ControllerConfig,
    /// EC2 clients per credentials + region, each with its rate limiter.
    pub ec2: Ec2Clients,
    /// AMI root device names per region + AMI.
    pub images: ImageCache,
    /// Batched, cached DescribeInstances per credentials + region.
    pub instances: InstanceView,
    /// Windows and answers of batched RunInstances.
    pub launches: LaunchBatches,
    /// Batched TerminateInstances per credentials + region.
    pub terminations: Terminations,
    /// Nodes of the target cluster (compact, see [`super::nodes`]).
    pub nodes: Arc<Nodes>,
    /// Machines, kept by the shared Machine watch.
    pub machines: Store<CachedMachine>,
    /// Machines by Node name, instance ID and class.
    pub machine_index: Arc<Index>,
    /// MachineClasses and Secrets from watch-backed caches.
    pub reads: Arc<Reads>,
    /// MachineSets, kept by the MachineSet controller's reflector; set once
    /// that controller is built (after this Context). A machine finds its
    /// deployment through it.
    pub sets: OnceLock<Store<MachineSet>>,
    /// Writes of sets and deployments their caches have not shown yet.
    pub expectations: Expectations,
    /// One Failed-for-health decision at a time per deployment.
    pub replacements: FailureGate,
    /// Cordons and drains nodes of the target cluster.
    pub drainer: Drainer,
    /// Wakes the orphan collector (after a machine is deleted).
    pub orphan_wakeup: Notify,
    /// Machines whose finalizer was released, until the cache shows them gone.
    pub released: Released,
    /// Timed rechecks of Machines (instead of kube's scheduler, see
    /// [`super::wakeups`]).
    pub wakeups: Arc<Wakeups>,
    /// Per-object retry backoff, reset when a reconcile succeeds.
    backoffs: Mutex<HashMap<String, ExponentialBackoff>>,
    /// Machines whose launch failed for a reason that takes time to change
    /// (capacity, invalid input): no new RunInstances before the deadline
    /// unless the class changed (its resourceVersion is recorded). Without
    /// it, the status write that reports the failure would trigger an
    /// immediate retry.
    creation_holds: Mutex<HashMap<String, (Instant, String)>>,
    /// Machines whose drain is blocked (every pod left refused eviction by a
    /// PodDisruptionBudget): no eviction pass before the instant, whatever
    /// event wakes the machine (its own status write, a Node update).
    drain_pauses: Mutex<HashMap<String, Instant>>,
}

impl Context {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: Client,
        target: Client,
        config: ControllerConfig,
        ec2: Ec2Clients,
        watches: &Watches,
        reads: Arc<Reads>,
        reporter: Reporter,
    ) -> Arc<Self> {
        Arc::new(Self {
            recorder: Recorder::new(client.clone(), reporter),
            drainer: Drainer::new(target.clone()),
            client,
            target,
            config,
            ec2,
            images: ImageCache::default(),
            instances: InstanceView::default(),
            launches: LaunchBatches::default(),
            terminations: Terminations::default(),
            nodes: watches.nodes.clone(),
            machines: watches.machines.clone(),
            machine_index: watches.machine_index.clone(),
            reads,
            sets: OnceLock::new(),
            expectations: Expectations::default(),
            replacements: FailureGate::default(),
            orphan_wakeup: Notify::new(),
            released: Released::default(),
            wakeups: Arc::new(Wakeups::new()),
            backoffs: Mutex::new(HashMap::new()),
            creation_holds: Mutex::new(HashMap::new()),
            drain_pauses: Mutex::new(HashMap::new()),
        })
    }

    /// The next retry delay for `key` (jittered exponential, 2s → 5m).
    pub fn next_backoff(&self, key: &str) -> Duration {
        let mut map = self.backoffs.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(key.to_string())
            .or_insert_with(|| {
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_secs(2))
                    .with_max_delay(Duration::from_secs(300))
                    .with_jitter()
                    .without_max_times()
                    .build()
            })
            .next()
            .unwrap_or(Duration::from_secs(300))
    }

    /// Holds launches of machine `uid` for `wait` unless the class moves away
    /// from `class_version`.
    pub fn hold_creation(&self, uid: &str, class_version: &str, wait: Duration) {
        self.creation_holds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                uid.to_string(),
                (Instant::now() + wait, class_version.to_string()),
            );
    }

    /// How long launches of `uid` are still held with the class at
    /// `class_version`; `None` when a launch may go ahead.
    pub fn creation_held(&self, uid: &str, class_version: &str) -> Option<Duration> {
        let mut holds = self
            .creation_holds
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match holds.get(uid) {
            Some((until, version)) if version == class_version && *until > Instant::now() => {
                Some(until.saturating_duration_since(Instant::now()))
            }
            Some(_) => {
                holds.remove(uid);
                None
            }
            None => None,
        }
    }

    /// Pauses the drain of machine `uid` for `wait` (see `drain_pauses`).
    pub fn pause_drain(&self, uid: &str, wait: Duration) {
        self.drain_pauses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(uid.to_string(), Instant::now() + wait);
    }

    /// How long the drain of `uid` is still paused; `None` when a pass may
    /// run (the pause is then forgotten).
    pub fn drain_paused(&self, uid: &str) -> Option<Duration> {
        let mut pauses = self.drain_pauses.lock().unwrap_or_else(|p| p.into_inner());
        match pauses.get(uid) {
            Some(until) if *until > Instant::now() => {
                Some(until.saturating_duration_since(Instant::now()))
            }
            Some(_) => {
                pauses.remove(uid);
                None
            }
            None => None,
        }
    }

    /// Waits until the Machine, Node and MachineClass caches hold a complete first list.
    ///
    /// Every reconcile that decides from them calls this first: after a
    /// restart, an empty store means "not read yet", not "nothing there" —
    /// a drain would be skipped for a Node not yet seen, a class finalizer
    /// dropped for Machines not yet seen. Returns at once after the first
    /// sync; fails only when the stores' writers are gone (shutting down).
    pub async fn caches_synced(&self) -> Result<()> {
        let synced = store_ready(&self.machines).await
            && self.nodes.ready().await
            && store_ready(self.reads.classes()).await;
        if synced {
            Ok(())
        } else {
            Err(Error::Waiting {
                what: "caches are shutting down".into(),
                retry_after: Duration::from_secs(5),
            })
        }
    }

    /// Forgets the backoff of `key` after a successful reconcile.
    pub fn reset_backoff(&self, key: &str) {
        self.backoffs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

/// How often a wait for a store's first sync looks again by itself.
const STORE_READY_RECHECK: Duration = Duration::from_millis(250);

/// Waits until `store` holds its first complete list; `false` when its
/// writer is gone (shutting down).
///
/// Every wait for a store's readiness goes through here. kube's
/// `Store::wait_until_ready` keeps a single waker (a oneshot receiver shared
/// by all callers): with several tasks waiting at once — reconciles, the
/// readiness check, the orphan collector, kube's own runner — only the last
/// to poll is woken, and the others would wait forever (seen: no reconcile
/// at all after a restart). Re-polling on a short timer makes a lost wake-up
/// cost at most [`STORE_READY_RECHECK`]; once synced, it returns at once.
pub async fn store_ready<K>(store: &Store<K>) -> bool
where
    K: kube::runtime::reflector::Lookup + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    loop {
        match tokio::time::timeout(STORE_READY_RECHECK, store.wait_until_ready()).await {
            Ok(result) => return result.is_ok(),
            Err(_elapsed) => continue,
        }
    }
}
