//! Settles the `caches` and `ec2-credentials` readiness checks of a replica
//! that leads (see [`crate::health`]).
//!
//! EC2 credentials are checked the way they are used: every distinct
//! credentials + Region pair of the AWS MachineClasses present once the
//! caches synced says who it is (STS `GetCallerIdentity`, logged with the
//! account and ARN) and answers one small `DescribeInstances` (see
//! [`Ec2Handle::check_credentials`](crate::aws::clients::Ec2Handle::check_credentials)).
//! A pair that fails keeps the replica unready,
//! with the class and the AWS error in `/readyz`, and is retried with
//! backoff. Classes whose Secret is missing are skipped: that is a
//! configuration error reported on their Machines. With no class yet there
//! is nothing to check.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use kube::runtime::reflector::Store;
use tracing::{info, warn};

use super::context::{Context, store_ready};
use super::orphans::class_credentials;
use crate::api::machine_class::MachineClass;
use crate::aws::clients::ClientKey;
use crate::health::{CACHES, Check, EC2_CREDENTIALS, Health};

/// Longest pause between two credential checks.
const MAX_RETRY: Duration = Duration::from_secs(60);

/// Waits for the caches, then checks the EC2 credentials until they pass.
pub async fn run(ctx: Arc<Context>, health: Health) {
    let classes = ctx.reads.classes().clone();
    health.set(
        CACHES,
        Check::Pending("waiting for the Machine, MachineClass and Node caches to sync".into()),
    );
    let synced =
        store_ready(&ctx.machines).await && store_ready(&classes).await && ctx.nodes.ready().await;
    if !synced {
        return; // the controllers are shutting down
    }
    health.set(
        CACHES,
        Check::Passed(format!(
            "synced: {} machines, {} classes, {} nodes",
            ctx.machines.state().len(),
            classes.state().len(),
            ctx.nodes.len()
        )),
    );

    let mut delay = Duration::from_secs(2);
    loop {
        match check_credentials(&ctx, &classes).await {
            Ok(summary) => {
                info!(%summary, "EC2 credentials checked");
                health.set(EC2_CREDENTIALS, Check::Passed(summary));
                return;
            }
            Err(failures) => {
                warn!(%failures, retry_in = ?delay, "EC2 credentials check failed");
                health.set(EC2_CREDENTIALS, Check::Failed(failures));
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_RETRY);
            }
        }
    }
}

/// One pass over the classes; `Ok` with a summary when every pair answered,
/// `Err` naming each pair that did not.
async fn check_credentials(ctx: &Context, classes: &Store<MachineClass>) -> Result<String, String> {
    let mut pairs = BTreeMap::new();
    for class in classes.state().iter().filter(|c| c.is_aws()) {
        let Some(source) = class_credentials(ctx, class).await else {
            continue;
        };
        let region = class.provider_spec.region.clone();
        let name = format!(
            "{}/{}",
            class.namespace().unwrap_or_default(),
            class.name_any()
        );
        pairs
            .entry(ClientKey::new(&source, &region))
            .or_insert_with(|| (source, region, name));
    }
    if pairs.is_empty() {
        return Ok("no MachineClass with readable credentials yet: nothing to check".into());
    }
    let mut failures = Vec::new();
    let mut identities = Vec::new();
    for (source, region, class) in pairs.values() {
        let handle = ctx.ec2.get(source, region).await;
        let kind = source.kind();
        match handle.check_credentials().await {
            Ok(Some(who)) => {
                info!(%class, credentials = kind, %region, account = %who.account, arn = %who.arn, "AWS identity of a MachineClass");
                identities.push(format!("class {class} as {who}"));
            }
            Ok(None) => identities.push(format!(
                "class {class} (identity unknown: STS did not answer)"
            )),
            Err(e) => failures.push(format!("class {class} ({kind} credentials, {region}): {e}")),
        }
    }
    if failures.is_empty() {
        Ok(format!(
            "{} credentials + Region pair(s) answered GetCallerIdentity and DescribeInstances: {}",
            pairs.len(),
            identities.join("; ")
        ))
    } else {
        Err(failures.join("; "))
    }
}
