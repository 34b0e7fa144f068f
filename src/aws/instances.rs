//! The shared, batched view of instances.
//!
//! Machines do not each ask EC2 about their instance. Per credentials+region
//! the view keeps one snapshot of every instance carrying the machine-UID tag,
//! fetched with one paginated DescribeInstances; a read older than the sync
//! period refreshes it, and concurrent readers share that one refresh. The
//! snapshot also holds the instances of batched launches whose per-machine
//! tags have not followed yet (they carry the launch tag). Instances
//! outside the snapshot (adopted from MCM, or just launched) are looked up by
//! ID directly.
//!
//! EC2's reads lag its writes by seconds, so what operations learn is
//! recorded in the view: a launched instance stays although a refresh does
//! not show it yet, and an instance whose termination EC2 accepted shows
//! `shutting-down` although a refresh (or a direct lookup) still says
//! `running`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{Filter, Instance};
use k8s_openapi::api::core::v1::NodeAddress;

use super::clients::{ClientKey, Ec2Handle};
use super::describe_slim::{SlimDescribe, take_page};
use super::errors::{Ec2Error, ErrorClass};
use super::instance_table::InstanceTable;
use super::instance_tags::InstanceTags;
use super::launch::PostLaunchState;
use super::tags::{LAUNCH_TAG, MACHINE_NAME_TAG, MACHINE_UID_TAG};
use crate::intern::IStr;

/// EC2 instance states, as far as machines care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstanceState {
    Pending,
    Running,
    Stopping,
    Stopped,
    ShuttingDown,
    Terminated,
    Unknown,
}

impl InstanceState {
    pub(crate) fn parse(s: &str) -> Self {
        match s {
            "pending" => Self::Pending,
            "running" => Self::Running,
            "stopping" => Self::Stopping,
            "stopped" => Self::Stopped,
            "shutting-down" => Self::ShuttingDown,
            "terminated" => Self::Terminated,
            _ => Self::Unknown,
        }
    }

    /// shutting-down or terminated: the instance is on its way out for good.
    pub fn is_gone(self) -> bool {
        matches!(self, Self::ShuttingDown | Self::Terminated)
    }
}

/// What the operator needs to know about one instance.
#[derive(Clone, Debug, PartialEq)]
pub struct InstanceInfo {
    pub id: String,
    pub state: InstanceState,
    /// Why EC2 changed the state last (e.g. a spot interruption).
    pub state_reason: Option<String>,
    // Interned, as the strings a view of thousands of instances repeats
    // (types, zones) or shares with the Node cache (the private DNS name is
    // the Node's name, the private IP its InternalIP).
    pub instance_type: Option<IStr>,
    pub private_dns_name: Option<IStr>,
    /// Private and public IPv4 address and public DNS name, when EC2 shows them.
    pub addresses: InstanceAddresses,
    pub availability_zone: Option<IStr>,
    pub tags: InstanceTags,
    /// Source/destination check and IPv6 prefixes, as EC2 reports them.
    pub post_launch: PostLaunchState,
    /// Position in its launch (`AmiLaunchIndex`): which Machine of a
    /// batched launch it is.
    pub launch_index: Option<i32>,
}

/// Addresses of an instance besides its private DNS name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InstanceAddresses {
    pub private_ip: Option<IStr>,
    pub public_ip: Option<String>,
    pub public_dns_name: Option<String>,
}

impl InstanceInfo {
    /// The instance's addresses in the shape and order of a Node's
    /// `status.addresses` as cloud-provider-aws reports them: `InternalIP`,
    /// `ExternalIP`, `InternalDNS`, `Hostname` (the private DNS name, which
    /// is the Node's name), `ExternalDNS`.
    pub fn node_addresses(&self) -> Vec<NodeAddress> {
        let address = |type_: &str, value: Option<&str>| {
            value.map(|a| NodeAddress {
                type_: type_.to_string(),
                address: a.to_string(),
            })
        };
        let dns = self.private_dns_name.as_deref();
        [
            address("InternalIP", self.addresses.private_ip.as_deref()),
            address("ExternalIP", self.addresses.public_ip.as_deref()),
            address("InternalDNS", dns),
            address("Hostname", dns),
            address("ExternalDNS", self.addresses.public_dns_name.as_deref()),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    pub fn machine_uid(&self) -> Option<&str> {
        self.tags.get(MACHINE_UID_TAG)
    }

    /// `<namespace>/<name>` of the Machine, from the tag.
    pub fn machine_name(&self) -> Option<&str> {
        self.tags.get(MACHINE_NAME_TAG)
    }

    /// The batched launch it came from (`<namespace>/<token>`), if any.
    pub fn launch(&self) -> Option<&str> {
        self.tags.get(LAUNCH_TAG)
    }

    /// Whether it is the instance of slot `index` of launch `launch_tag`.
    pub fn is_launch_slot(&self, launch_tag: &str, index: u32) -> bool {
        self.launch() == Some(launch_tag)
            && self.launch_index.and_then(|i| u32::try_from(i).ok()) == Some(index)
    }
}

impl From<&Instance> for InstanceInfo {
    fn from(i: &Instance) -> Self {
        let state = i
            .state()
            .and_then(|s| s.name())
            .map(|n| InstanceState::parse(n.as_str()))
            .unwrap_or(InstanceState::Unknown);
        let state_reason = i
            .state_reason()
            .and_then(|r| r.message().or(r.code()))
            .map(str::to_string)
            .or_else(|| {
                i.state_transition_reason()
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
            });
        Self {
            id: i.instance_id().unwrap_or_default().to_string(),
            state,
            state_reason,
            instance_type: i.instance_type().map(|t| IStr::new(t.as_str())),
            private_dns_name: non_empty(i.private_dns_name()).map(IStr::from),
            addresses: InstanceAddresses {
                private_ip: non_empty(i.private_ip_address()).map(IStr::from),
                public_ip: non_empty(i.public_ip_address()),
                public_dns_name: non_empty(i.public_dns_name()),
            },
            availability_zone: i
                .placement()
                .and_then(|p| p.availability_zone())
                .map(IStr::new),
            post_launch: PostLaunchState::from(i),
            launch_index: i.ami_launch_index(),
            tags: i
                .tags()
                .iter()
                .filter_map(|t| Some((t.key()?, t.value().unwrap_or_default())))
                .collect(),
        }
    }
}

#[cfg(test)]
impl InstanceInfo {
    /// An instance with an ID and a state and nothing else (for tests).
    pub(crate) fn bare(id: &str, state: InstanceState) -> Self {
        InstanceInfo {
            id: id.into(),
            state,
            state_reason: None,
            instance_type: None,
            private_dns_name: None,
            addresses: Default::default(),
            availability_zone: None,
            tags: Default::default(),
            post_launch: Default::default(),
            launch_index: None,
        }
    }
}

fn non_empty(s: Option<&str>) -> Option<String> {
    s.filter(|s| !s.is_empty()).map(str::to_string)
}

/// Instance ID from a providerID `aws:///<region-or-zone>/<instance-id>`.
pub fn instance_id_from_provider_id(provider_id: &str) -> Option<&str> {
    let id = provider_id.rsplit('/').next()?;
    id.starts_with("i-").then_some(id)
}

/// The Region of a providerID this operator wrote (`aws:///<region>/<id>`);
/// `None` for other shapes (a kubelet writes the zone there, not the Region).
pub fn region_from_provider_id(provider_id: &str) -> Option<&str> {
    let rest = provider_id.strip_prefix("aws:///")?;
    let (region, id) = rest.split_once('/')?;
    let is_region = region
        .rsplit_once('-')
        .is_some_and(|(_, n)| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
    (is_region && id.starts_with("i-")).then_some(region)
}

/// Runs DescribeInstances with `filters` (or `ids`), following every page.
pub async fn describe(
    handle: &Ec2Handle,
    filters: Vec<Filter>,
    ids: Vec<String>,
) -> Result<Vec<InstanceInfo>, Ec2Error> {
    let mut out = Vec::new();
    describe_each(handle, filters, ids, |i| out.push(i)).await?;
    Ok(out)
}

/// [`describe`], handing each instance to `each` as its page arrives: a
/// page (slimmed to what [`InstanceInfo`] reads and read into
/// `InstanceInfo`s as it arrives, [`SlimDescribe`]; the SDK's model of it is
/// never built) is gone before the next is asked for, and the caller need
/// not hold every instance twice.
pub async fn describe_each(
    handle: &Ec2Handle,
    filters: Vec<Filter>,
    ids: Vec<String>,
    mut each: impl FnMut(InstanceInfo),
) -> Result<(), Ec2Error> {
    let mut token: Option<String> = None;
    loop {
        let req = handle
            .client
            .describe_instances()
            .set_filters((!filters.is_empty()).then(|| filters.clone()))
            .set_instance_ids((!ids.is_empty()).then(|| ids.clone()))
            .set_max_results(ids.is_empty().then_some(1000))
            .set_next_token(token.take());
        let slim = SlimDescribe::default();
        let slot = slim.slot();
        let send = req.customize().interceptor(slim).send();
        let out = if filters.is_empty() && !ids.is_empty() {
            handle.call("DescribeInstances", send).await?
        } else {
            handle.call_filtered("DescribeInstances", send).await?
        };
        // The interceptor read the instances; the SDK's answer holds them
        // only if it did not run.
        let next = match take_page(&slot) {
            Some(page) => {
                page.instances.into_iter().for_each(&mut each);
                page.next_token
            }
            None => {
                for r in out.reservations() {
                    r.instances()
                        .iter()
                        .map(InstanceInfo::from)
                        .for_each(&mut each);
                }
                out.next_token().map(str::to_string)
            }
        };
        match next {
            Some(t) if !t.is_empty() => token = Some(t),
            _ => return Ok(()),
        }
    }
}

/// Every instance tagged with the Machine UID `uid` (all states), asked of
/// EC2 directly: used before creating and while deleting, where a stale
/// answer could start a second instance or leak one.
pub async fn by_machine_uid(handle: &Ec2Handle, uid: &str) -> Result<Vec<InstanceInfo>, Ec2Error> {
    let filter = Filter::builder()
        .name(format!("tag:{MACHINE_UID_TAG}"))
        .values(uid)
        .build();
    describe(handle, vec![filter], vec![]).await
}

/// Every instance of the batched launch tagged `launch_tag` (all states),
/// asked of EC2 directly.
pub async fn by_launch(
    handle: &Ec2Handle,
    launch_tag: &str,
) -> Result<Vec<InstanceInfo>, Ec2Error> {
    let filter = Filter::builder()
        .name(format!("tag:{LAUNCH_TAG}"))
        .values(launch_tag)
        .build();
    describe(handle, vec![filter], vec![]).await
}

/// One instance by ID, asked of EC2 directly; `None` when EC2 does not know it.
pub async fn by_id(handle: &Ec2Handle, id: &str) -> Result<Option<InstanceInfo>, Ec2Error> {
    match describe(handle, vec![], vec![id.to_string()]).await {
        Ok(found) => Ok(found.into_iter().find(|i| i.id == id)),
        Err(e) if e.class == ErrorClass::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// How old a snapshot may be served when refreshing it fails.
fn stale_limit(max_age: Duration) -> Duration {
    (max_age * 10).max(Duration::from_secs(60))
}

/// Refreshes `snap` when it is older than `max_age`: every instance with the
/// Machine-UID tag or the launch tag (one paginated, filtered call).
async fn refresh_if_older(
    handle: &Ec2Handle,
    snap: &mut Snapshot,
    max_age: Duration,
) -> Result<(), Ec2Error> {
    if snap.fetched.is_some_and(|t| t.elapsed() <= max_age) {
        return Ok(());
    }
    let filter = Filter::builder()
        .name("tag-key")
        .values(MACHINE_UID_TAG)
        .values(LAUNCH_TAG)
        .build();
    // Merged page by page: the snapshot is never held twice (10,000
    // instances are ~8 MB). A refresh that fails half-way leaves the pages
    // it read merged, no older than before, and the snapshot still due.
    let refresh = snap.start_refresh();
    let read = describe_each(handle, vec![filter], vec![], |info| {
        snap.merge(info, refresh);
    })
    .await;
    match read {
        Ok(()) => {
            snap.finish_refresh(refresh);
            Ok(())
        }
        // While EC2 throttles or fails, a somewhat older snapshot is
        // better than failing every machine's reconcile.
        Err(e)
            if snap
                .fetched
                .is_some_and(|t| t.elapsed() < stale_limit(max_age)) =>
        {
            tracing::debug!(error = %e, "serving a stale instance snapshot");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// How long a recorded instance outlives refreshes that do not show it, and
/// an accepted termination overrides reads that show the instance alive.
const RECORDED_KEPT: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Snapshot {
    fetched: Option<Instant>,
    by_id: InstanceTable,
    /// The number of the last refresh started (1 for the first).
    refreshes: u32,
    /// When [`InstanceView::record`] last recorded each instance.
    recorded: HashMap<String, Instant>,
    /// When EC2 accepted the termination of each instance
    /// ([`InstanceView::record_termination`]).
    terminating: HashMap<String, Instant>,
}

impl Snapshot {
    /// The number of a new refresh, for [`Self::merge`] and
    /// [`Self::finish_refresh`].
    fn start_refresh(&mut self) -> u32 {
        self.refreshes = self.refreshes.wrapping_add(1).max(1);
        self.refreshes
    }

    /// Takes one instance of refresh `refresh` in, as far as this view
    /// knows better (see [`Self::seen_through`]).
    fn merge(&mut self, info: InstanceInfo, refresh: u32) {
        let info = self.seen_through(info);
        self.by_id.put(info, refresh);
    }

    /// Ends refresh `refresh`: the instances it did not [`Self::merge`]
    /// are gone from the snapshot, except what operations recorded lately
    /// (EC2 may not show those yet).
    fn finish_refresh(&mut self, refresh: u32) {
        self.recorded.retain(|_, at| at.elapsed() < RECORDED_KEPT);
        self.terminating
            .retain(|_, at| at.elapsed() < RECORDED_KEPT);
        let recorded = &self.recorded;
        self.by_id
            .retain(|info, seen_in| seen_in == refresh || recorded.contains_key(&info.id));
        self.fetched = Some(Instant::now());
    }

    /// A whole refresh at once: `all` merged, then finished.
    #[cfg(test)]
    fn replace(&mut self, all: Vec<InstanceInfo>) {
        let refresh = self.start_refresh();
        for info in all {
            self.merge(info, refresh);
        }
        self.finish_refresh(refresh);
    }

    /// See [`InstanceView::record`].
    fn record(&mut self, info: InstanceInfo) {
        self.recorded.insert(info.id.clone(), Instant::now());
        let info = self.seen_through(info);
        self.by_id.put(info, 0);
    }

    /// See [`InstanceView::record_termination`].
    fn record_termination(&mut self, ids: &[String], accepted: bool) {
        let now = Instant::now();
        for id in ids {
            if accepted {
                self.terminating.insert(id.clone(), now);
            }
            if let Some(info) = self.by_id.get_mut(id) {
                shutting_down(info);
                self.recorded.insert(id.clone(), now);
            }
        }
    }

    /// `info` as far as this view knows better than the read it came from.
    fn seen_through(&self, mut info: InstanceInfo) -> InstanceInfo {
        if self
            .terminating
            .get(&info.id)
            .is_some_and(|at| at.elapsed() < RECORDED_KEPT)
        {
            shutting_down(&mut info);
        }
        info
    }
}

/// An instance whose termination EC2 accepted: `shutting-down`, unless a
/// read already shows it further along.
fn shutting_down(info: &mut InstanceInfo) {
    if !info.state.is_gone() {
        info.state = InstanceState::ShuttingDown;
    }
}

/// See the module docs. Cheap to clone (shared state).
#[derive(Clone, Default)]
pub struct InstanceView {
    snapshots: Arc<Mutex<HashMap<ClientKey, Arc<tokio::sync::Mutex<Snapshot>>>>>,
}

impl InstanceView {
    fn slot(&self, key: &ClientKey) -> Arc<tokio::sync::Mutex<Snapshot>> {
        self.snapshots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.clone())
            .or_default()
            .clone()
    }

    /// The instance `id` as of at most `max_age` ago. Instances outside the
    /// tagged snapshot are asked for directly.
    pub async fn get(
        &self,
        handle: &Ec2Handle,
        id: &str,
        max_age: Duration,
    ) -> Result<Option<InstanceInfo>, Ec2Error> {
        let slot = self.slot(&handle.key);
        let mut snap = slot.lock().await;
        refresh_if_older(handle, &mut snap, max_age).await?;
        if let Some(found) = snap.by_id.get(id) {
            return Ok(Some(found.clone()));
        }
        drop(snap);
        let found = by_id(handle, id).await?;
        let snap = slot.lock().await;
        Ok(found.map(|i| snap.seen_through(i)))
    }

    /// Every instance of the snapshot (at most `max_age` old) for which
    /// `pick` holds: one shared DescribeInstances for all machines asking,
    /// instead of one each.
    pub async fn find(
        &self,
        handle: &Ec2Handle,
        max_age: Duration,
        pick: impl Fn(&InstanceInfo) -> bool,
    ) -> Result<Vec<InstanceInfo>, Ec2Error> {
        let slot = self.slot(&handle.key);
        let mut snap = slot.lock().await;
        refresh_if_older(handle, &mut snap, max_age).await?;
        Ok(snap.by_id.values().filter(|i| pick(i)).cloned().collect())
    }

    /// Records what an operation just learned (a launch, a termination), so
    /// readers see it before the next refresh — and, for a minute, after
    /// refreshes that do not show it yet.
    pub async fn record(&self, key: &ClientKey, info: InstanceInfo) {
        let slot = self.slot(key);
        let mut snap = slot.lock().await;
        snap.record(info);
    }

    /// Records the outcome of a TerminateInstances for `ids`: `accepted`,
    /// they show `shutting-down` from now on, whatever reads of the next
    /// minute say; else (EC2 did not know them) they show `shutting-down`
    /// until a refresh shows them otherwise.
    pub async fn record_termination(&self, key: &ClientKey, ids: &[String], accepted: bool) {
        let slot = self.slot(key);
        slot.lock().await.record_termination(ids, accepted);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_addresses_follow_cloud_provider_aws() {
        let i = InstanceInfo::from(
            &Instance::builder()
                .instance_id("i-1")
                .private_ip_address("10.1.2.3")
                .private_dns_name("ip-10-1-2-3.eu-west-1.compute.internal")
                .public_dns_name("")
                .build(),
        );
        let got: Vec<(String, String)> = i
            .node_addresses()
            .into_iter()
            .map(|a| (a.type_, a.address))
            .collect();
        let dns = "ip-10-1-2-3.eu-west-1.compute.internal".to_string();
        assert_eq!(
            got,
            [
                ("InternalIP".into(), "10.1.2.3".into()),
                ("InternalDNS".into(), dns.clone()),
                ("Hostname".into(), dns),
            ]
        );
        let public = InstanceInfo {
            addresses: InstanceAddresses {
                public_ip: Some("34.1.1.1".into()),
                public_dns_name: Some("ec2-34-1-1-1.compute.amazonaws.com".into()),
                ..i.addresses.clone()
            },
            ..i
        };
        let types: Vec<String> = public
            .node_addresses()
            .into_iter()
            .map(|a| a.type_)
            .collect();
        assert_eq!(
            types,
            [
                "InternalIP",
                "ExternalIP",
                "InternalDNS",
                "Hostname",
                "ExternalDNS"
            ]
        );
    }

    #[test]
    fn instance_id_comes_from_region_or_zone_provider_ids() {
        assert_eq!(
            instance_id_from_provider_id("aws:///eu-west-1/i-0abc"),
            Some("i-0abc")
        );
        assert_eq!(
            instance_id_from_provider_id("aws:///eu-west-1a/i-0abc"),
            Some("i-0abc")
        );
        assert_eq!(instance_id_from_provider_id("gce://p/z/vm"), None);
        assert_eq!(instance_id_from_provider_id(""), None);
    }

    fn running(id: &str) -> InstanceInfo {
        InstanceInfo::from(
            &Instance::builder()
                .instance_id(id)
                .state(
                    aws_sdk_ec2::types::InstanceState::builder()
                        .name(aws_sdk_ec2::types::InstanceStateName::Running)
                        .build(),
                )
                .build(),
        )
    }

    fn state_of(snap: &Snapshot, id: &str) -> Option<InstanceState> {
        snap.by_id.get(id).map(|i| i.state)
    }

    #[test]
    fn an_accepted_termination_outlasts_reads_that_lag_it() {
        let mut snap = Snapshot::default();
        snap.replace(vec![running("i-1"), running("i-2")]);
        snap.record_termination(&["i-1".into(), "i-9".into()], true);
        assert_eq!(state_of(&snap, "i-1"), Some(InstanceState::ShuttingDown));
        assert_eq!(state_of(&snap, "i-2"), Some(InstanceState::Running));

        // EC2's next read still says running, or nothing at all.
        snap.replace(vec![running("i-1"), running("i-2")]);
        assert_eq!(state_of(&snap, "i-1"), Some(InstanceState::ShuttingDown));
        snap.replace(vec![running("i-2")]);
        assert_eq!(state_of(&snap, "i-1"), Some(InstanceState::ShuttingDown));
        // An instance outside the snapshot, read directly.
        assert_eq!(
            snap.seen_through(running("i-9")).state,
            InstanceState::ShuttingDown
        );
        assert_eq!(
            snap.seen_through(running("i-3")).state,
            InstanceState::Running
        );
        // A later write of what a reconcile knew does not bring it back.
        snap.record(running("i-1"));
        assert_eq!(state_of(&snap, "i-1"), Some(InstanceState::ShuttingDown));
        // Further along is further along.
        let mut gone = running("i-1");
        gone.state = InstanceState::Terminated;
        snap.replace(vec![gone]);
        assert_eq!(state_of(&snap, "i-1"), Some(InstanceState::Terminated));
    }

    #[test]
    fn an_unknown_instance_shows_shutting_down_until_ec2_says_otherwise() {
        let mut snap = Snapshot::default();
        snap.record(running("i-1"));
        snap.record_termination(&["i-1".into()], false);
        assert_eq!(state_of(&snap, "i-1"), Some(InstanceState::ShuttingDown));
        snap.replace(vec![]);
        assert_eq!(
            state_of(&snap, "i-1"),
            Some(InstanceState::ShuttingDown),
            "not shown yet: kept as recorded"
        );
        snap.replace(vec![running("i-1")]);
        assert_eq!(
            state_of(&snap, "i-1"),
            Some(InstanceState::Running),
            "EC2 knows it now, alive: it is terminated again"
        );
    }

    #[test]
    fn a_refresh_drops_what_it_did_not_see_only_once_it_finished() {
        let mut snap = Snapshot::default();
        snap.replace(vec![running("i-1"), running("i-2")]);
        // A refresh that read one page and then failed: merged, not finished.
        let mut gone = running("i-1");
        gone.state = InstanceState::Terminated;
        let failed = snap.start_refresh();
        snap.merge(gone, failed);
        assert_eq!(state_of(&snap, "i-1"), Some(InstanceState::Terminated));
        assert_eq!(state_of(&snap, "i-2"), Some(InstanceState::Running));
        // A whole refresh that shows only i-1: i-2 is gone (nothing recorded it).
        let whole = snap.start_refresh();
        snap.merge(running("i-1"), whole);
        snap.finish_refresh(whole);
        assert_eq!(state_of(&snap, "i-2"), None);
        assert_eq!(snap.by_id.len(), 1);
        assert!(snap.fetched.is_some());
    }

    #[test]
    fn states_parse_and_gone_means_shutting_down_or_terminated() {
        assert_eq!(InstanceState::parse("running"), InstanceState::Running);
        assert!(InstanceState::parse("terminated").is_gone());
        assert_eq!(
            region_from_provider_id("aws:///eu-west-1/i-0123"),
            Some("eu-west-1")
        );
        assert_eq!(
            region_from_provider_id("aws:///eu-west-1a/i-0123"),
            None,
            "a zone"
        );
        assert_eq!(
            region_from_provider_id("aws:///us-gov-west-1/i-1"),
            Some("us-gov-west-1")
        );
        assert_eq!(region_from_provider_id("gce:///x/i-1"), None);
        assert!(InstanceState::parse("shutting-down").is_gone());
        assert!(!InstanceState::parse("stopped").is_gone());
        assert_eq!(InstanceState::parse("weird"), InstanceState::Unknown);
    }
}
