//! Orphan collection: instances carrying a class's cluster and role tags but
//! belonging to no Machine are terminated — periodically and after machine
//! deletions (one pass for a burst of them, see [`DELETIONS_SETTLE`]).
//!
//! Safety rules: it only runs once the Machine cache has synced; an instance
//! is kept when any known Machine carries its UID tag or its ID in the
//! providerID (so a Machine being created is never touched); instances without
//! the cluster and role tags are never considered; right before terminating,
//! the Machines are listed from the API server once more (the cache may lag
//! a Machine created a moment ago), and only instances still unclaimed go;
//! in a namespace-scoped
//! deployment, instances tagged for another namespace's Machines are left alone.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ec2::types::Filter;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use tracing::{debug, info, warn};

use super::context::{Context, store_ready};
use super::error::Result;
use super::machine::launch_record::{LAUNCH_ANNOTATION, LaunchRecord};
use crate::api::machine::Machine;
use crate::api::machine_class::MachineClass;
use crate::aws::batch::launch::launch_tag;
use crate::aws::credentials::{CredentialSource, merge_secret_data};
use crate::aws::instances::{self, InstanceInfo, instance_id_from_provider_id};
use crate::controller::cached_machine::CachedMachine;

/// Runs the collector until the process stops.
pub async fn run(ctx: Arc<Context>) {
    if !store_ready(&ctx.machines).await {
        return;
    }
    loop {
        match collect_once(&ctx).await {
            Ok(0) => {}
            Ok(n) => info!(
                terminated = n,
                "orphan collection terminated instances without a Machine"
            ),
            Err(e) => warn!(error = %e, "orphan collection failed"),
        }
        let interval = ctx.config.orphan_collection_interval;
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = ctx.orphan_wakeup.notified() => {
                // Deletions come in bursts (a scale-down): the wake-ups
                // of the next seconds fold into one pass.
                tokio::time::sleep(DELETIONS_SETTLE.min(interval)).await;
            }
        }
    }
}

/// How long the collector waits after a machine deletion woke it, so that
/// a scale-down of a thousand machines costs a pass (a DescribeInstances of
/// everything in the cluster) every 10 s, not one per machine.
pub const DELETIONS_SETTLE: Duration = Duration::from_secs(10);

/// One pass; returns how many instances it terminated.
pub async fn collect_once(ctx: &Context) -> Result<usize> {
    ctx.caches_synced().await?;
    let classes = ctx.reads.classes().state();

    // One search per credentials + region + cluster/role tag pair.
    let mut searches: BTreeMap<(String, String, String, String), (CredentialSource, String)> =
        BTreeMap::new();
    for class in classes.iter().filter(|c| c.is_aws()) {
        let spec = &class.provider_spec;
        let (Some(cluster), Some(role)) = (spec.cluster_tag_key(), spec.role_tag_key()) else {
            continue;
        };
        let Some(source) = class_credentials(ctx, class).await else {
            continue;
        };
        searches.insert(
            (
                source.fingerprint(),
                spec.region.clone(),
                cluster.to_string(),
                role.to_string(),
            ),
            (source, spec.region.clone()),
        );
    }

    let cached = ctx.machines.state();
    let (known_uids, known_ids) = claims(cached.iter().map(|m| m.as_ref()));

    let mut terminated = 0;
    for ((_, _, cluster, role), (source, region)) in searches {
        let handle = ctx.ec2.get(&source, &region).await;
        let filters = vec![
            Filter::builder().name("tag-key").values(&cluster).build(),
            Filter::builder()
                .name("instance-state-name")
                .set_values(Some(
                    ["pending", "running", "stopping", "stopped"]
                        .map(String::from)
                        .to_vec(),
                ))
                .build(),
        ];
        // Only the candidates are kept as the pages arrive: a fleet's
        // every instance would be ~3 MB at 10,000.
        let mut candidates: Vec<InstanceInfo> = Vec::new();
        instances::describe_each(&handle, filters, vec![], |i| {
            if i.tags.contains_key(&role)
                && is_orphan(&i, &known_uids, &known_ids, ctx.config.namespace.as_deref())
            {
                candidates.push(i);
            }
        })
        .await?;
        if candidates.is_empty() {
            continue;
        }
        // The cache may lag a Machine created a moment ago (or be behind
        // after a restart): ask the API server itself before terminating.
        let (live_uids, live_ids) = live_claims(ctx).await?;
        let orphans: Vec<String> = candidates
            .into_iter()
            .filter(|i| is_orphan(i, &live_uids, &live_ids, ctx.config.namespace.as_deref()))
            .map(|i| i.id)
            .collect();
        if orphans.is_empty() {
            continue;
        }
        warn!(instances = ?orphans, region = %region, "terminating orphaned instances");
        let req = handle
            .client
            .terminate_instances()
            .set_instance_ids(Some(orphans.clone()));
        handle
            .call_instances("TerminateInstances", orphans.len(), req.send())
            .await?;
        terminated += orphans.len();
    }
    Ok(terminated)
}

/// How many Machines one page of [`live_claims`] lists.
const LIVE_PAGE: u32 = 500;

/// [`claims`] of every Machine as the API server has them, listed a page at
/// a time: one list of 10,000 Machines would be ~40 MB of JSON, and the
/// Machines of a page are dropped once their claims are taken.
async fn live_claims(ctx: &Context) -> Result<(BTreeSet<String>, BTreeSet<String>)> {
    let api = machines_api(ctx);
    let (mut uids, mut ids) = (BTreeSet::new(), BTreeSet::new());
    let mut params = ListParams::default().limit(LIVE_PAGE);
    loop {
        let page = api.list(&params).await?;
        let next = page.metadata.continue_.filter(|c| !c.is_empty());
        let machines: Vec<CachedMachine> =
            page.items.into_iter().map(CachedMachine::from).collect();
        let (u, i) = claims(machines.iter());
        uids.extend(u);
        ids.extend(i);
        match next {
            Some(token) => params = params.continue_token(&token),
            None => return Ok((uids, ids)),
        }
    }
}

fn machines_api(ctx: &Context) -> Api<Machine> {
    match &ctx.config.namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    }
}

/// The Machine UIDs and instance IDs (from providerIDs) that `machines`
/// claim; the UIDs include the slots of batched launches the machines
/// recorded (see [`launch_slot_claim`]).
fn claims<'a>(
    machines: impl Iterator<Item = &'a CachedMachine>,
) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut uids = BTreeSet::new();
    let mut ids = BTreeSet::new();
    for m in machines {
        uids.extend(m.uid());
        let record = LaunchRecord::from_annotation(m.annotations().get(LAUNCH_ANNOTATION));
        if let Some(slot) = record.and_then(|r| r.batch) {
            let tag = launch_tag(&m.namespace().unwrap_or_default(), &slot.token);
            uids.insert(launch_slot_claim(&tag, i64::from(slot.index)));
        }
        if let Some(id) = m
            .spec
            .provider_id
            .as_deref()
            .and_then(instance_id_from_provider_id)
        {
            ids.insert(id.to_string());
        }
    }
    (uids, ids)
}

/// The credentials of a class, or `None` when its Secrets are unreadable or
/// the credential policy refuses them (its Machines say why).
pub(crate) async fn class_credentials(
    ctx: &Context,
    class: &MachineClass,
) -> Option<CredentialSource> {
    let ns = class.namespace().unwrap_or_default();
    let mut secrets = Vec::new();
    for r in [
        class.secret_ref.as_ref(),
        class.credentials_secret_ref.as_ref(),
    ] {
        let secret = match r {
            Some(r) => {
                let secret_ns = r
                    .namespace
                    .as_deref()
                    .filter(|n| !n.is_empty())
                    .unwrap_or(&ns);
                let name = r.name.as_deref().unwrap_or_default();
                match ctx.reads.secret(secret_ns, name).await {
                    Ok(Some(s)) => Some(s),
                    _ => return None,
                }
            }
            None => None,
        };
        secrets.push(secret);
    }
    let data = merge_secret_data(secrets[0].as_ref(), secrets[1].as_ref());
    match ctx
        .config
        .credentials
        .credentials_for(&data, &super::fleet::drift::secret_refs(class))
    {
        Ok(source) => Some(source),
        Err(refused) => {
            debug!(class = %class.name_any(), %refused, "skipping a class whose credentials are refused");
            None
        }
    }
}

/// How a Machine's slot in a batched launch is claimed among the UIDs:
/// `<launch tag>#<index>` (no UID has a `#`).
fn launch_slot_claim(launch_tag: &str, index: i64) -> String {
    format!("{launch_tag}#{index}")
}

/// Whether an instance (already known to carry the cluster and role tags)
/// belongs to no Machine we know of.
pub fn is_orphan(
    i: &InstanceInfo,
    known_uids: &BTreeSet<String>,
    known_ids: &BTreeSet<String>,
    namespace: Option<&str>,
) -> bool {
    let slot = i
        .launch()
        .zip(i.launch_index)
        .map(|(tag, index)| launch_slot_claim(tag, i64::from(index)));
    if known_ids.contains(&i.id)
        || i.machine_uid().is_some_and(|u| known_uids.contains(u))
        || slot.is_some_and(|s| known_uids.contains(&s))
    {
        return false;
    }
    // A batched launch's instance names its namespace in the launch tag
    // until the Machine's own tags follow.
    let owner = i.machine_name().or(i.launch());
    match (namespace, owner.and_then(|n| n.split_once('/'))) {
        (Some(ours), Some((theirs, _))) => ours == theirs,
        // Namespace-scoped and no name tag: not provably ours.
        (Some(_), None) => false,
        (None, _) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::instances::InstanceState;
    use crate::aws::tags::{MACHINE_NAME_TAG, MACHINE_UID_TAG};

    fn instance(id: &str, tags: &[(&str, &str)]) -> InstanceInfo {
        InstanceInfo {
            id: id.into(),
            state: InstanceState::Running,
            state_reason: None,
            instance_type: None,
            private_dns_name: None,
            addresses: Default::default(),
            availability_zone: None,
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            post_launch: Default::default(),
            launch_index: None,
        }
    }

    #[test]
    fn instances_of_known_machines_are_kept() {
        let uids = BTreeSet::from(["u1".to_string()]);
        let ids = BTreeSet::from(["i-2".to_string()]);
        assert!(!is_orphan(
            &instance("i-1", &[(MACHINE_UID_TAG, "u1")]),
            &uids,
            &ids,
            None
        ));
        assert!(
            !is_orphan(&instance("i-2", &[]), &uids, &ids, None),
            "adopted by providerID"
        );
        assert!(is_orphan(
            &instance("i-3", &[(MACHINE_UID_TAG, "gone")]),
            &uids,
            &ids,
            None
        ));
    }

    #[test]
    fn a_batched_instance_is_kept_while_a_machine_claims_its_slot() {
        use crate::aws::tags::LAUNCH_TAG;
        let slot = |index| InstanceInfo {
            launch_index: Some(index),
            ..instance("i-9", &[(LAUNCH_TAG, "team-a/batch-1")])
        };
        let claimed = BTreeSet::from([launch_slot_claim("team-a/batch-1", 0)]);
        let none = BTreeSet::new();
        assert!(!is_orphan(&slot(0), &claimed, &none, Some("team-a")));
        assert!(
            is_orphan(&slot(1), &claimed, &none, Some("team-a")),
            "a slot no machine recorded"
        );
        assert!(
            !is_orphan(&slot(1), &claimed, &none, Some("team-b")),
            "the launch tag names the namespace"
        );
    }

    #[test]
    fn a_namespaced_operator_only_collects_its_own_namespace() {
        let none = BTreeSet::new();
        let ours = instance("i-1", &[(MACHINE_NAME_TAG, "team-a/m1")]);
        let theirs = instance("i-2", &[(MACHINE_NAME_TAG, "team-b/m1")]);
        let untagged = instance("i-3", &[]);
        assert!(is_orphan(&ours, &none, &none, Some("team-a")));
        assert!(!is_orphan(&theirs, &none, &none, Some("team-a")));
        assert!(!is_orphan(&untagged, &none, &none, Some("team-a")));
        assert!(is_orphan(&untagged, &none, &none, None));
    }
}
