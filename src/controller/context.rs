//! The context every reconcile gets: clients, caches and settings, built once
//! at startup.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::Store;
use tokio::sync::Notify;

use super::config::ControllerConfig;
use super::machine::drain::Drainer;
use crate::api::machine::Machine;
use crate::aws::clients::Ec2Clients;
use crate::aws::images::ImageCache;
use crate::aws::instances::InstanceView;

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
    /// Nodes of the target cluster, kept by a reflector.
    pub nodes: Store<Node>,
    /// Machines, kept by the machine controller's reflector.
    pub machines: Store<Machine>,
    /// Cordons and drains nodes of the target cluster.
    pub drainer: Drainer,
    /// Wakes the orphan collector (after a machine is deleted).
    pub orphan_wakeup: Notify,
    /// Per-object retry backoff, reset when a reconcile succeeds.
    backoffs: Mutex<HashMap<String, ExponentialBackoff>>,
    /// Machines whose launch failed for a reason that takes time to change
    /// (capacity, invalid input): no new RunInstances before the deadline
    /// unless the class changed (its resourceVersion is recorded). Without
    /// it, the status write that reports the failure would trigger an
    /// immediate retry.
    creation_holds: Mutex<HashMap<String, (Instant, String)>>,
}

impl Context {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: Client,
        target: Client,
        config: ControllerConfig,
        ec2: Ec2Clients,
        nodes: Store<Node>,
        machines: Store<Machine>,
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
            nodes,
            machines,
            orphan_wakeup: Notify::new(),
            backoffs: Mutex::new(HashMap::new()),
            creation_holds: Mutex::new(HashMap::new()),
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

    /// Forgets the backoff of `key` after a successful reconcile.
    pub fn reset_backoff(&self, key: &str) {
        self.backoffs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}
