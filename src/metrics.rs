//! Prometheus metrics of the operator, served on `/metrics`.
//!
//! Three kinds of sources:
//!
//! - reconciles are recorded as they happen, by wrapping each reconcile
//!   function with [`Metrics::instrument`] where the controllers are built;
//! - EC2 calls are read at scrape time from the clients' shared
//!   [`Ec2CallStats`] (the client layer already counts every call by
//!   operation and error class, so nothing is counted twice);
//! - machines by phase are counted at scrape time from the machine
//!   controller's cache.
//!
//! Names follow MCM where MCM has the same metric
//! (`mcm_cloud_api_requests_total`, `mcm_cloud_api_requests_failed_total`
//! with its `provider` and `service` labels, `mcm_machine_items_total`);
//! the rest use the same `mcm_` prefix. Every label has a small, fixed set
//! of values (controller names, EC2 operation names, error classes,
//! phases, namespaces): no object names, no error text. The full list is in
//! `docs/operations.md`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::api::shared::MachinePhase;
use crate::aws::clients::{Ec2CallStats, service_of};
use crate::controller::cached_machine::CachedMachine;
use crate::kube_metrics::KubeRequests;

/// `Content-Type` of the OpenMetrics text format.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// `Content-Type` of the classic Prometheus text format.
pub const PROMETHEUS_CONTENT_TYPE: &str =
    prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Reconcile-duration buckets: 5ms (a cache hit) to 2m (a call that waited
/// out EC2 retries).
const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

type ControllerLabel = [(&'static str, &'static str); 1];
type ErrorLabels = [(&'static str, &'static str); 2];

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// What a reconcile error tells the metrics: a static category, and whether
/// it is a plain wait (drain in progress, ...) rather than a failure.
pub trait ReconcileError {
    /// Low-cardinality label value.
    fn category(&self) -> &'static str;
    /// Waits are counted as reconciles, not as errors.
    fn is_wait(&self) -> bool;
}

impl ReconcileError for crate::controller::error::Error {
    fn category(&self) -> &'static str {
        crate::controller::error::Error::category(self)
    }
    fn is_wait(&self) -> bool {
        self.is_waiting()
    }
}

/// The registry and the metrics recorded directly; see the module docs.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ControllerLabel, Counter>,
    reconcile_errors: Family<ErrorLabels, Counter>,
    reconcile_duration: Family<ControllerLabel, Histogram, fn() -> Histogram>,
    leader: Gauge,
    kube_requests: KubeRequests,
    sources: Arc<Sources>,
}

/// Sources read at scrape time, attached once the controllers exist.
#[derive(Debug, Default)]
struct Sources {
    ec2: Mutex<Option<Arc<Ec2CallStats>>>,
    machines: Mutex<Option<Store<CachedMachine>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric registered (EC2 and machine metrics stay
    /// empty until [`observe_ec2`](Self::observe_ec2) and
    /// [`observe_machines`](Self::observe_machines) attach their sources).
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let reconciles = Family::<ControllerLabel, Counter>::default();
        registry.register(
            "mcm_reconciles",
            "Reconciles run, by controller",
            reconciles.clone(),
        );
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "mcm_reconcile_errors",
            "Reconciles that failed, by controller and error category (waits such as a drain in progress are not errors)",
            reconcile_errors.clone(),
        );
        let reconcile_duration =
            Family::<ControllerLabel, Histogram, fn() -> Histogram>::new_with_constructor(
                duration_histogram,
            );
        registry.register(
            "mcm_reconcile_duration_seconds",
            "Time a reconcile took, by controller",
            reconcile_duration.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "mcm_leader_election_leader",
            "1 while this replica holds the leader Lease (or runs without leader election), else 0",
            leader.clone(),
        );
        let kube_requests = KubeRequests::default();
        registry.register(
            "mcm_kube_requests",
            "Requests sent to the Kubernetes API servers, by cluster (control, target), verb and resource",
            kube_requests.clone(),
        );
        let sources = Arc::new(Sources::default());
        registry.register_collector(Box::new(ScrapeTime(Arc::clone(&sources))));
        Metrics {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            leader,
            kube_requests,
            sources,
        }
    }

    /// Reads EC2 call counters from `stats` at every scrape.
    pub fn observe_ec2(&self, stats: Arc<Ec2CallStats>) {
        *self.sources.ec2.lock().unwrap_or_else(|p| p.into_inner()) = Some(stats);
    }

    /// Counts machines by phase from `store` at every scrape.
    pub fn observe_machines(&self, store: Store<CachedMachine>) {
        *self
            .sources
            .machines
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(store);
    }

    /// The counters a kube client's [`counting_layer`](crate::kube_metrics::counting_layer) feeds.
    pub fn kube_requests(&self) -> KubeRequests {
        self.kube_requests.clone()
    }

    /// Sets the leader gauge.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// Records one reconcile of `controller`.
    pub fn record_reconcile<E: ReconcileError>(
        &self,
        controller: &'static str,
        took: Duration,
        error: Option<&E>,
    ) {
        let label = [("controller", controller)];
        self.reconciles.get_or_create(&label).inc();
        self.reconcile_duration
            .get_or_create(&label)
            .observe(took.as_secs_f64());
        if let Some(e) = error.filter(|e| !e.is_wait()) {
            self.reconcile_errors
                .get_or_create(&[("controller", controller), ("category", e.category())])
                .inc();
        }
    }

    /// Wraps a reconcile function so that every run is counted and timed
    /// under `controller`; the reconciler itself stays unaware of metrics.
    pub fn instrument<K, C, E, F, Fut>(
        self: &Arc<Self>,
        controller: &'static str,
        reconcile: F,
    ) -> impl Fn(Arc<K>, Arc<C>) -> BoxFuture<'static, Result<Action, E>> + use<K, C, E, F, Fut>
    where
        F: Fn(Arc<K>, Arc<C>) -> Fut,
        Fut: Future<Output = Result<Action, E>> + Send + 'static,
        E: ReconcileError + Send + 'static,
    {
        let metrics = Arc::clone(self);
        move |object, ctx| {
            let run = reconcile(object, ctx);
            let metrics = Arc::clone(&metrics);
            async move {
                let started = Instant::now();
                let result = run.await;
                metrics.record_reconcile(controller, started.elapsed(), result.as_ref().err());
                result
            }
            .boxed()
        }
    }

    /// The metrics in the OpenMetrics text format (`openmetrics`) or the
    /// classic Prometheus text format, with the matching `Content-Type`.
    pub fn encode(&self, openmetrics: bool) -> (&'static str, String) {
        let mut out = String::new();
        // Writing into a String only fails if an encoder rejects a name,
        // which the unit tests would catch.
        if openmetrics {
            let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
            (OPENMETRICS_CONTENT_TYPE, out)
        } else {
            let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
            (PROMETHEUS_CONTENT_TYPE, out)
        }
    }
}

/// Encodes the scrape-time metrics.
#[derive(Debug)]
struct ScrapeTime(Arc<Sources>);

impl Collector for ScrapeTime {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let version = ConstGauge::new(1i64);
        let mut info = encoder.encode_descriptor(
            "mcm_build_info",
            "Version of the running operator (always 1)",
            None,
            version.metric_type(),
        )?;
        version.encode(info.encode_family(&[("version", env!("CARGO_PKG_VERSION"))])?)?;

        let stats = self.0.ec2.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(stats) = stats {
            encode_ec2(&stats, &mut encoder)?;
        }
        let machines = self
            .0
            .machines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(store) = machines {
            encode_machines(&store, &mut encoder)?;
        }
        Ok(())
    }
}

/// `provider` as MCM's AWS provider sets it; `service` is `ec2` (MCM's
/// value) or, for GetCallerIdentity, `sts` ([`service_of`]).
const PROVIDER: (&str, &str) = ("provider", "aws");

fn encode_ec2(stats: &Ec2CallStats, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
    let snapshot = stats.snapshot();
    let probe = ConstCounter::new(0u64);
    let mut total = encoder.encode_descriptor(
        "mcm_cloud_api_requests",
        "EC2 API calls made, by operation (every call: failed ones are also counted in mcm_cloud_api_requests_failed_total)",
        None,
        probe.metric_type(),
    )?;
    for (operation, op) in &snapshot {
        let all = op.ok + op.failed.values().sum::<u64>();
        ConstCounter::new(all).encode(total.encode_family(&[
            PROVIDER,
            ("service", service_of(operation)),
            ("operation", operation),
        ])?)?;
    }
    let mut failed = encoder.encode_descriptor(
        "mcm_cloud_api_requests_failed",
        "EC2 API calls that failed (after the SDK's retries), by operation and error class",
        None,
        probe.metric_type(),
    )?;
    for (operation, op) in &snapshot {
        for (class, n) in &op.failed {
            ConstCounter::new(*n).encode(failed.encode_family(&[
                PROVIDER,
                ("service", service_of(operation)),
                ("operation", operation),
                ("error_class", class.category()),
            ])?)?;
        }
    }
    let mut waited = encoder.encode_descriptor(
        "mcm_cloud_api_rate_limit_wait_seconds",
        "Time EC2 calls waited for the client-side rate limiter, by operation",
        None,
        ConstCounter::new(0f64).metric_type(),
    )?;
    for (operation, op) in &snapshot {
        ConstCounter::new(op.rate_limit_wait.as_secs_f64()).encode(waited.encode_family(&[
            PROVIDER,
            ("service", service_of(operation)),
            ("operation", operation),
        ])?)?;
    }
    Ok(())
}

/// Machines per namespace and phase; a machine without status yet counts
/// as `Pending`.
fn count_machines(store: &Store<CachedMachine>) -> BTreeMap<String, BTreeMap<&'static str, i64>> {
    let mut counts: BTreeMap<String, BTreeMap<&'static str, i64>> = BTreeMap::new();
    for m in store.state() {
        let phase = m.phase().unwrap_or(MachinePhase::Pending);
        *counts
            .entry(m.namespace().unwrap_or_default())
            .or_default()
            .entry(phase.as_str())
            .or_default() += 1;
    }
    counts
}

fn encode_machines(
    store: &Store<CachedMachine>,
    encoder: &mut DescriptorEncoder,
) -> std::fmt::Result {
    let counts = count_machines(store);
    let all: i64 = counts.values().flat_map(|c| c.values()).sum();
    let gauge = ConstGauge::new(all);
    let total = encoder.encode_descriptor(
        "mcm_machine_items_total",
        "Machines known to the operator (MCM's name; a gauge)",
        None,
        gauge.metric_type(),
    )?;
    gauge.encode(total)?;
    let mut by_phase = encoder.encode_descriptor(
        "mcm_machines",
        "Machines by namespace and status.currentStatus.phase (every phase is reported, 0 included)",
        None,
        gauge.metric_type(),
    )?;
    for (namespace, phases) in &counts {
        for phase in MachinePhase::ALL {
            let n = phases.get(phase.as_str()).copied().unwrap_or(0);
            ConstGauge::new(n).encode(by_phase.encode_family(&[
                ("namespace", namespace.as_str()),
                ("phase", phase.as_str()),
            ])?)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::errors::ErrorClass;
    use kube::runtime::reflector::store::Writer;
    use kube::runtime::watcher::Event;

    #[derive(Debug)]
    struct Fail(&'static str, bool);
    impl ReconcileError for Fail {
        fn category(&self) -> &'static str {
            self.0
        }
        fn is_wait(&self) -> bool {
            self.1
        }
    }

    fn machine(ns: &str, name: &str, phase: Option<&str>) -> CachedMachine {
        let mut json = serde_json::json!({
            "apiVersion": "machine.sapcloud.io/v1alpha1", "kind": "Machine",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"class": {"kind": "MachineClass", "name": "c"}},
        });
        if let Some(p) = phase {
            json["status"] = serde_json::json!({"currentStatus": {"phase": p}});
        }
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn reconciles_are_counted_and_waits_are_not_errors() {
        let m = Metrics::new();
        m.record_reconcile::<Fail>("machine", Duration::from_millis(30), None);
        m.record_reconcile(
            "machine",
            Duration::from_secs(2),
            Some(&Fail("Throttled", false)),
        );
        m.record_reconcile(
            "machine",
            Duration::from_secs(1),
            Some(&Fail("Waiting", true)),
        );
        let (_, text) = m.encode(false);
        assert!(
            text.contains("mcm_reconciles_total{controller=\"machine\"} 3"),
            "{text}"
        );
        assert!(
            text.contains(
                "mcm_reconcile_errors_total{controller=\"machine\",category=\"Throttled\"} 1"
            ),
            "{text}"
        );
        assert!(!text.contains("category=\"Waiting\""), "{text}");
        assert!(
            text.contains("mcm_reconcile_duration_seconds_count{controller=\"machine\"} 3"),
            "{text}"
        );
    }

    #[test]
    fn ec2_calls_use_mcm_names_and_labels() {
        let m = Metrics::new();
        let stats = Arc::new(Ec2CallStats::default());
        stats.record_ok("RunInstances", Duration::ZERO);
        stats.record_ok("RunInstances", Duration::from_millis(500));
        stats.record_failure(
            "RunInstances",
            ErrorClass::ResourceExhausted,
            Duration::ZERO,
        );
        m.observe_ec2(stats);
        let (content_type, text) = m.encode(false);
        assert_eq!(content_type, PROMETHEUS_CONTENT_TYPE);
        assert!(
            text.contains("mcm_cloud_api_requests_total{provider=\"aws\",service=\"ec2\",operation=\"RunInstances\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("mcm_cloud_api_requests_failed_total{provider=\"aws\",service=\"ec2\",operation=\"RunInstances\",error_class=\"ResourceExhausted\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("mcm_cloud_api_rate_limit_wait_seconds_total{provider=\"aws\",service=\"ec2\",operation=\"RunInstances\"} 0.5"),
            "{text}"
        );
        let (content_type, open) = m.encode(true);
        assert_eq!(content_type, OPENMETRICS_CONTENT_TYPE);
        assert!(open.ends_with("# EOF\n"), "{open}");
        assert!(open.contains("mcm_cloud_api_requests_total{"), "{open}");
    }

    #[test]
    fn machines_are_counted_by_namespace_and_phase() {
        let (store, mut writer) = kube::runtime::reflector::store::<CachedMachine>();
        let writer: &mut Writer<CachedMachine> = &mut writer;
        writer.apply_watcher_event(&Event::Init);
        for m in [
            machine("a", "m1", Some("Running")),
            machine("a", "m2", Some("Running")),
            machine("a", "m3", None),
            machine("b", "m4", Some("Failed")),
        ] {
            writer.apply_watcher_event(&Event::InitApply(m));
        }
        writer.apply_watcher_event(&Event::InitDone);
        let m = Metrics::new();
        m.observe_machines(store);
        m.set_leader(true);
        let (_, text) = m.encode(false);
        for line in [
            "mcm_machine_items_total 4",
            "mcm_machines{namespace=\"a\",phase=\"Running\"} 2",
            "mcm_machines{namespace=\"a\",phase=\"Pending\"} 1",
            "mcm_machines{namespace=\"a\",phase=\"Failed\"} 0",
            "mcm_machines{namespace=\"b\",phase=\"Failed\"} 1",
            "mcm_leader_election_leader 1",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
        assert!(text.contains("mcm_build_info{version=\""), "{text}");
    }
}
