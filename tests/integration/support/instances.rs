//! Which EC2 instances belong to a test namespace, and what state they are
//! in: the queries the kubelet stand-in needs. Kept apart from `ec2.rs`
//! (which needs the test environment) so that `examples/kubelet-standin.rs`
//! can reuse the stand-in as it is.

use aws_sdk_ec2::types::{Filter, Instance, InstanceStateName};
use mcm_provider_aws::aws::tags::{LAUNCH_TAG, MACHINE_NAME_TAG};

/// Every instance (in any state) of namespace `ns`: those whose
/// `MACHINE_NAME_TAG` names a Machine of it (the value `<ns>/<name>`) and
/// those of its batched launches (`LAUNCH_TAG` `<ns>/<token>`), whose
/// per-machine tags may not have followed yet. EC2 errors are returned,
/// for background tasks.
pub async fn try_instances_of_namespace(
    ec2: &aws_sdk_ec2::Client,
    ns: &str,
) -> Result<Vec<Instance>, aws_sdk_ec2::Error> {
    of_namespace(ec2, ns, None).await
}

/// [`try_instances_of_namespace`] without the terminated ones, which EC2
/// (and moto, for ever) keeps listing: far fewer to list once many came
/// and went.
pub async fn try_current_instances_of_namespace(
    ec2: &aws_sdk_ec2::Client,
    ns: &str,
) -> Result<Vec<Instance>, aws_sdk_ec2::Error> {
    let current = Filter::builder()
        .name("instance-state-name")
        .set_values(Some(
            ["pending", "running", "stopping", "stopped", "shutting-down"]
                .map(String::from)
                .to_vec(),
        ))
        .build();
    of_namespace(ec2, ns, Some(current)).await
}

/// One paginated DescribeInstances for the instances with a tag value
/// `<ns>/...` (both tags above have one; EC2 filters take `*` wildcards),
/// kept when one of those two tags names the namespace.
async fn of_namespace(
    ec2: &aws_sdk_ec2::Client,
    ns: &str,
    also: Option<Filter>,
) -> Result<Vec<Instance>, aws_sdk_ec2::Error> {
    let prefix = format!("{ns}/");
    let ours = |i: &Instance| {
        [MACHINE_NAME_TAG, LAUNCH_TAG]
            .iter()
            .any(|key| tag(i, key).is_some_and(|v| v.starts_with(&prefix)))
    };
    let in_namespace = Filter::builder()
        .name("tag-value")
        .values(format!("{prefix}*"))
        .build();
    let mut pages = ec2
        .describe_instances()
        .set_filters(Some(
            [Some(in_namespace), also].into_iter().flatten().collect(),
        ))
        .into_paginator()
        .send();
    let mut out = Vec::new();
    while let Some(page) = pages.next().await {
        out.extend(
            page?
                .reservations()
                .iter()
                .flat_map(|r| r.instances())
                .filter(|i| ours(i))
                .cloned(),
        );
    }
    Ok(out)
}

/// The value of tag `key` on instance `i`.
pub fn tag<'a>(i: &'a Instance, key: &str) -> Option<&'a str> {
    i.tags()
        .iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

/// The instance's state name (`pending`, `running`, `terminated`, ...), or ""
/// when EC2 did not say.
pub fn state(i: &Instance) -> &str {
    i.state()
        .and_then(|s| s.name())
        .map(InstanceStateName::as_str)
        .unwrap_or("")
}

/// The user data of instance `id`, read back from EC2
/// (DescribeInstanceAttribute `userData`) and base64-decoded.
pub async fn try_user_data(ec2: &aws_sdk_ec2::Client, id: &str) -> Result<String, String> {
    use base64::Engine as _;
    let out = ec2
        .describe_instance_attribute()
        .instance_id(id)
        .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
        .send()
        .await
        .map_err(|e| format!("DescribeInstanceAttribute userData of {id}: {e:?}"))?;
    let encoded = out.user_data().and_then(|v| v.value()).unwrap_or_default();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|e| format!("user data of {id} is not base64: {e}"))?;
    Ok(String::from_utf8_lossy(&raw).into_owned())
}
