//! One pass of a live Machine: resolve where its instance lives, find it
//! (or create it, see [`super::create`]), keep its identity (providerID, node
//! label), tags and drift condition current, then observe (see
//! [`super::observe`]).

use std::collections::BTreeMap;

use kube::ResourceExt;

use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use serde_json::json;
use tracing::{debug, info, warn};

use super::create::{
    class_version, create, creation_timed_out, ensure_post_launch, launch_record,
    launch_within_grace, write_launch_record,
};
use super::launch_batch;
use super::launch_record::LaunchRecord;
use super::observe::{node_for, observe, report_invalid};
use super::{RECHECK_SOON, Resolved, annotate, merge_patch, reported, resolve};
use crate::api::machine::{Machine, NODE_LABEL};
use crate::api::machine_deployment::MACHINE_TEMPLATE_HASH_LABEL;
use crate::api::shared::MachinePhase;
use crate::aws::clients::Ec2Handle;
use crate::aws::instances::{self, InstanceInfo, InstanceState, instance_id_from_provider_id};
use crate::controller::context::Context;
use crate::controller::error::{Error, Result};
use crate::controller::events::publish;
use crate::controller::fleet::drift::{
    self, CLASS_TAG_KEYS_ANNOTATION, REPLACE_ON_DRIFT_ANNOTATION, Replacer, SPEC_FIELDS_ANNOTATION,
    SPEC_HASH_ANNOTATION,
};
use crate::controller::node::{bootstrap_token, template};
use crate::controller::ownership;

pub(super) async fn apply(m: &Machine, ctx: &Context) -> Result<Action> {
    let resolved = resolve(m, ctx).await;
    let home = match home(m, ctx, resolved.as_ref().ok()).await {
        // The Secrets of its launch are gone or refused: say so on the
        // Machine rather than only in the operator's log.
        Err(e @ Error::Invalid(_)) => {
            report_invalid(m, ctx, &e.to_string()).await?;
            return Err(e);
        }
        home => home?,
    };
    let (resolved, home) = match (resolved, home) {
        (Ok(r), home) => (r, home),
        // A class that went bad after the launch: the instance still lives
        // where it was launched, so health checks go on and the last good
        // status stays; only new launches wait for the class to be fixed.
        (Err(Error::Invalid(problem)), Some((handle, region))) => {
            warn!(machine = %m.name_any(), %problem, "class unusable; watching the existing instance only");
            let instance = reported(
                m,
                ctx,
                "Looking up the instance",
                locate(m, &handle, ctx).await,
            )
            .await?;
            if let Some(i) = &instance {
                tend_node(m, ctx, i).await;
            }
            return observe(m, ctx, instance.as_ref(), &region, None, None).await;
        }
        (Err(e @ Error::Invalid(_)), None) => {
            report_invalid(m, ctx, &e.to_string()).await?;
            return Err(e);
        }
        (Err(e), _) => return Err(e),
    };
    let (handle, region) = match home {
        Some(home) => home,
        None => (
            resolved.handle.clone(),
            resolved.class.provider_spec.region.clone(),
        ),
    };

    let instance = match reported(
        m,
        ctx,
        "Looking up the instance",
        locate(m, &handle, ctx).await,
    )
    .await?
    {
        Some(i) => i,
        None if m.spec.provider_id.is_some() => {
            // EC2's reads are eventually consistent: a just-launched instance
            // can be missing from DescribeInstances for a little while.
            if launch_within_grace(m) {
                return Ok(ctx.wakeups.recheck(m, RECHECK_SOON));
            }
            // The instance we launched is gone from EC2 altogether.
            return observe(m, ctx, None, &region, None, None).await;
        }
        // Failed without an instance (its creation timed out): the set
        // replaces it; nothing more to launch.
        None if m.phase() == Some(MachinePhase::Failed) => return Ok(Action::await_change()),
        None => {
            if let Some(action) = creation_timed_out(m, ctx).await? {
                return Ok(action);
            }
            let uid = m.uid().unwrap_or_default();
            let class_version = class_version(&resolved.class);
            if let Some(wait) = ctx.creation_held(&uid, &class_version) {
                return Ok(ctx.wakeups.recheck(m, wait));
            }
            return create(m, ctx, &resolved).await;
        }
    };
    // Machines from before drift bookkeeping (or whose launch record was
    // lost in a crash) take the class as it is now as their baseline.
    let recorded = launch_record(m, &resolved);
    ensure_identity(m, ctx, &instance, &region, &recorded).await?;
    let mut tags = None;
    let mut own_tags_pending = false;
    if !instance.state.is_gone() {
        // Tags are bookkeeping: a refused CreateTags/DeleteTags (e.g. a
        // policy without ec2:CreateTags) is reported (condition, Event,
        // lastOperation), and health checks and phases go on.
        own_tags_pending = match launch_batch::ensure_machine_tags(m, ctx, &handle, &instance).await
        {
            Ok(done) => !done,
            Err(e) => {
                debug!(machine = %m.name_any(), error = %e, "the machine's own tags follow later");
                true
            }
        };
        tags = Some(
            match sync_tags(m, ctx, &resolved, &handle, &instance, &recorded).await {
                Ok(()) => TagSync::Applied,
                Err(e) => {
                    warn!(machine = %m.name_any(), error = %e, "could not update the instance's tags");
                    let description =
                        format!("Updating the tags of instance {} failed: {e}", instance.id);
                    publish(
                        ctx,
                        m,
                        EventType::Warning,
                        "TagsFailed",
                        "Update",
                        description.clone(),
                    )
                    .await;
                    TagSync::Failed {
                        call: match &e {
                            Error::Ec2(e) => e.operation,
                            _ => "Update",
                        },
                        description,
                        code: e.mcm_code(),
                    }
                }
            },
        );
        if instance.state == InstanceState::Running {
            let post_launch =
                ensure_post_launch(ctx, &handle, &instance, &resolved.class.provider_spec).await;
            reported(
                m,
                ctx,
                "Applying the settings EC2 takes only after launch",
                post_launch,
            )
            .await?;
        }
    }
    tend_node(m, ctx, &instance).await;
    let drift = drift_condition(m, &resolved, &recorded);
    let action = observe(m, ctx, Some(&instance), &region, Some(drift), tags).await?;
    // A batched launch's instance without the machine's own tags yet: soon
    // again, not only after the next sync.
    Ok(if own_tags_pending {
        ctx.wakeups.recheck(m, RECHECK_SOON)
    } else {
        action
    })
}

/// How this pass's in-place tag update went (see [`sync_tags`]).
pub(super) enum TagSync {
    /// The class's tags are on the instance (nothing to do, or done).
    Applied,
    /// `call` (`CreateTags`, `DeleteTags`, the lookup of the attached
    /// resources) failed; `description` and the MCM `code` go to
    /// `lastOperation`.
    Failed {
        call: &'static str,
        description: String,
        code: &'static str,
    },
}

impl TagSync {
    /// `(status, reason, message)` of the TagsApplied condition.
    pub(super) fn condition(&self) -> (&'static str, String, String) {
        match self {
            TagSync::Applied => (
                "True",
                "Applied".into(),
                "The MachineClass's tags are on the instance".into(),
            ),
            TagSync::Failed {
                call, description, ..
            } => ("False", format!("{call}Failed"), description.clone()),
        }
    }
}

/// What the machine owes its Node (see [`crate::controller::node`]): the
/// node template applied, and the bootstrap token deleted once the Node
/// joined (the machine was Running), as MCM does. Neither may hold up the
/// machine's health checks: failures are logged and retried next pass.
async fn tend_node(m: &Machine, ctx: &Context, instance: &InstanceInfo) {
    if let Some(node) = node_for(ctx, m, instance) {
        match template::sync(ctx, m, &node).await {
            Ok(()) => {}
            Err(e) if e.is_waiting() => debug!(machine = %m.name_any(), %e, "node template"),
            Err(e) => {
                warn!(machine = %m.name_any(), error = %e, "could not apply the node template")
            }
        }
    }
    let record = LaunchRecord::from_annotations(m.annotations());
    if m.phase() != Some(MachinePhase::Running) {
        return;
    }
    let Some(record) = record.filter(|r| r.bootstrap_token_id.is_some()) else {
        return;
    };
    let retired = async {
        bootstrap_token::delete(ctx, m, record.bootstrap_token_id.as_deref()).await?;
        let done = LaunchRecord {
            bootstrap_token_id: None,
            ..record
        };
        write_launch_record(m, ctx, &done).await
    };
    if let Err(e) = retired.await {
        warn!(machine = %m.name_any(), error = %e, "could not delete the bootstrap token of the joined node");
    }
}

/// Where the Machine's instance lives, when a launch was ever attempted: the
/// Region and Secrets of its [`LaunchRecord`], else (machines launched before
/// records existed) the Region of its providerID with the class's Secrets.
/// `resolved`, when the class could be loaded, saves reading its Secrets again.
pub(super) async fn home(
    m: &Machine,
    ctx: &Context,
    resolved: Option<&Resolved>,
) -> Result<Option<(Ec2Handle, String)>> {
    let record = LaunchRecord::from_annotations(m.annotations());
    let provider_region = m
        .spec
        .provider_id
        .as_deref()
        .and_then(instances::region_from_provider_id);
    let Some(region) = record
        .as_ref()
        .map(|r| r.region.clone())
        .or_else(|| provider_region.map(str::to_string))
    else {
        return Ok(None);
    };
    let class_refs = match resolved {
        Some(r) => Some(drift::secret_refs(&r.class)),
        None => {
            let ns = m.namespace().unwrap_or_default();
            ctx.reads
                .class(&ns, &m.spec.class.name)
                .await?
                .map(|c| drift::secret_refs(&c))
        }
    };
    let refs = match (&record, class_refs) {
        (Some(r), _) => r.secrets.clone(),
        (None, Some(refs)) => refs,
        (None, None) => {
            return Err(Error::Invalid(format!(
                "MachineClass {} (spec.class.name) not found, and the Machine has no launch record",
                m.spec.class.name
            )));
        }
    };
    let data = match resolved {
        Some(r) if drift::secret_refs(&r.class) == refs => r.secret_data.clone(),
        _ => drift::load_secret_data(&ctx.reads, &refs).await?,
    };
    let source = ctx
        .config
        .credentials
        .credentials_for(&data, &refs)
        .map_err(|refused| Error::Invalid(refused.to_string()))?;
    Ok(Some((ctx.ec2.get(&source, &region).await, region)))
}

/// `(status, reason, message)` of the Drifted condition.
pub(super) fn drift_condition(
    m: &Machine,
    r: &Resolved,
    recorded: &BTreeMap<String, String>,
) -> (&'static str, &'static str, String) {
    let state = drift::assess(
        recorded
            .get(SPEC_HASH_ANNOTATION)
            .map(String::as_str)
            .unwrap_or_default(),
        recorded.get(SPEC_FIELDS_ANNOTATION).map(String::as_str),
        &r.effective,
    );
    let replacer = match ownership::controller_of(&m.metadata) {
        Some(o)
            if o.kind == "MachineSet" && m.labels().contains_key(MACHINE_TEMPLATE_HASH_LABEL) =>
        {
            Replacer::Deployment
        }
        Some(o) if o.kind == "MachineSet" => {
            if m.annotations()
                .get(REPLACE_ON_DRIFT_ANNOTATION)
                .map(String::as_str)
                == Some("true")
            {
                Replacer::SetOnDrift
            } else {
                Replacer::Set
            }
        }
        _ => Replacer::Nobody,
    };
    drift::condition(&state, &r.class.name_any(), replacer)
}

/// Applies the class's tags to the instance, its volumes and its network
/// interfaces in place (tags never need a new instance) and records which
/// keys came from the class, so that only those are ever removed.
pub(super) async fn sync_tags(
    m: &Machine,
    ctx: &Context,
    r: &Resolved,
    handle: &Ec2Handle,
    instance: &InstanceInfo,
    recorded: &BTreeMap<String, String>,
) -> Result<()> {
    let class_tags = &r.class.provider_spec.tags;
    let applied = recorded.get(CLASS_TAG_KEYS_ANNOTATION).map(String::as_str);
    let plan = drift::tag_plan(&instance.tags, class_tags, applied);
    if !plan.is_empty() {
        let mut resources = vec![instance.id.clone()];
        resources.extend(attached_resources(handle, &instance.id).await?);
        if !plan.set.is_empty() {
            let tags: Vec<aws_sdk_ec2::types::Tag> = plan
                .set
                .iter()
                .map(|(k, v)| aws_sdk_ec2::types::Tag::builder().key(k).value(v).build())
                .collect();
            let req = handle
                .client
                .create_tags()
                .set_resources(Some(resources.clone()))
                .set_tags(Some(tags));
            handle.call("CreateTags", req.send()).await?;
        }
        if !plan.remove.is_empty() {
            let tags: Vec<aws_sdk_ec2::types::Tag> = plan
                .remove
                .iter()
                .map(|k| aws_sdk_ec2::types::Tag::builder().key(k).build())
                .collect();
            let req = handle
                .client
                .delete_tags()
                .set_resources(Some(resources))
                .set_tags(Some(tags));
            handle.call("DeleteTags", req.send()).await?;
        }
        let mut updated = instance.clone();
        updated.tags = instance.tags.updated(&plan.set, &plan.remove);
        ctx.instances.record(&handle.key, updated).await;
        info!(machine = %m.name_any(), set = ?plan.set.keys().collect::<Vec<_>>(), removed = ?plan.remove, "updated instance tags in place");
        publish(
            ctx,
            m,
            EventType::Normal,
            "TagsUpdated",
            "Update",
            format!(
                "Updated the tags of instance {} in place (set: {}; removed: {})",
                instance.id,
                plan.set.keys().cloned().collect::<Vec<_>>().join(", "),
                plan.remove.join(", ")
            ),
        )
        .await;
    }
    let keys = drift::class_tag_keys(class_tags).join(",");
    if m.annotations().get(CLASS_TAG_KEYS_ANNOTATION) != Some(&keys) {
        annotate(m, ctx, CLASS_TAG_KEYS_ANNOTATION, &keys).await?;
    }
    Ok(())
}

/// IDs of the volumes and network interfaces attached to an instance, which
/// carry the class's tags too. Asked only when tags change.
pub(super) async fn attached_resources(handle: &Ec2Handle, id: &str) -> Result<Vec<String>> {
    let req = handle.client.describe_instances().instance_ids(id);
    let out = handle.call("DescribeInstances", req.send()).await?;
    Ok(out
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .flat_map(|i| {
            let volumes = i
                .block_device_mappings()
                .iter()
                .filter_map(|b| b.ebs()?.volume_id().map(str::to_string));
            let interfaces = i
                .network_interfaces()
                .iter()
                .filter_map(|n| n.network_interface_id().map(str::to_string));
            volumes.chain(interfaces).collect::<Vec<_>>()
        })
        .collect())
}

/// Finds the Machine's instance: by providerID through the shared view, else
/// (never launched, or launched by a process that died before recording it)
/// by the Machine-UID tag or its batched launch (see [`launch_batch::find`]).
pub(super) async fn locate(
    m: &Machine,
    handle: &Ec2Handle,
    ctx: &Context,
) -> Result<Option<InstanceInfo>> {
    if let Some(id) = m
        .spec
        .provider_id
        .as_deref()
        .and_then(instance_id_from_provider_id)
    {
        return Ok(ctx
            .instances
            .get(handle, id, ctx.config.instance_sync_period)
            .await?);
    }
    launch_batch::find(m, handle, ctx).await
}

/// Sets `spec.providerID` and the `node` label once the instance is known.
/// Also records `launch` (the drift annotations of what the instance was
/// launched from) where the Machine's annotations differ.
pub(super) async fn ensure_identity(
    m: &Machine,
    ctx: &Context,
    i: &InstanceInfo,
    region: &str,
    launch: &BTreeMap<String, String>,
) -> Result<()> {
    let provider_id = format!("aws:///{region}/{}", i.id);
    let node_name = node_for(ctx, m, i)
        .map(|n| n.name_any())
        .or_else(|| i.private_dns_name.as_deref().map(str::to_string));
    let wants_id = m.spec.provider_id.as_deref() != Some(provider_id.as_str());
    let wants_label = node_name.is_some() && m.labels().get(NODE_LABEL) != node_name.as_ref();
    let annotations: BTreeMap<&String, &String> = launch
        .iter()
        .filter(|(k, v)| m.annotations().get(*k) != Some(*v))
        .collect();
    if !wants_id && !wants_label && annotations.is_empty() {
        return Ok(());
    }
    let mut patch = json!({});
    if wants_id {
        patch["spec"] = json!({"providerID": provider_id});
    }
    patch["metadata"] = json!({});
    if let (true, Some(node)) = (wants_label, node_name) {
        patch["metadata"]["labels"] = json!({NODE_LABEL: node});
    }
    if !annotations.is_empty() {
        patch["metadata"]["annotations"] = json!(annotations);
    }
    merge_patch(m, ctx, &patch).await
}
