//! The context every reconcile gets: clients, caches and settings, built once
//! at startup.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::Store;
use tokio::sync::Notify;

use super::config::ControllerConfig;
use super::drain::Drainer;
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

    /// Forgets the backoff of `key` after a successful reconcile.
    pub fn reset_backoff(&self, key: &str) {
        self.backoffs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}
