//! Batched launches, the pure parts: which machines may share one
//! RunInstances, the shared request, its ClientToken and launch tag, and
//! which of the launched instances is whose.
//!
//! Machines share a launch when their RunInstances requests are the same
//! apart from what is per machine — the Name, Machine-UID and Machine tags
//! and the Machine name in the user data. The request then asks for
//! `MaxCount` = k (`MinCount` 1) and carries, instead of per-machine tags, the
//! launch tag ([`LAUNCH_TAG`], `<namespace>/<token>`); each Machine has
//! recorded its token and index before, and its instance is the one whose
//! `AmiLaunchIndex` is its index. Per-machine tags follow with CreateTags.
//! User data with a placeholder (`<<MACHINE_NAME>>`, `<<BOOTSTRAP_TOKEN>>`)
//! differs per machine once filled, so such machines launch alone.

use std::time::Duration;

use aws_sdk_ec2::operation::run_instances::builders::{
    RunInstancesFluentBuilder, RunInstancesInputBuilder,
};
use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};
use sha2::{Digest, Sha256};

use super::gather::Window;
use crate::aws::clients::ClientKey;
use crate::aws::instances::InstanceInfo;
use crate::aws::tags::{LAUNCH_TAG, MACHINE_NAME_TAG, MACHINE_UID_TAG, NAME_TAG};
use crate::aws::user_data::{MACHINE_NAME_PLACEHOLDER, needs_bootstrap_token, query_escape};

/// Launches are gathered until no machine joined for 1 s, for 5 s at most,
/// 100 machines per call at most.
pub const LAUNCH_WINDOW: Window = Window {
    idle: Duration::from_secs(1),
    max: Duration::from_secs(5),
    cap: 100,
};

/// Tags that differ per machine: on a shared launch they follow by
/// CreateTags.
const PER_MACHINE_TAGS: [&str; 3] = [NAME_TAG, MACHINE_UID_TAG, MACHINE_NAME_TAG];

/// Whether a launch with this user data may be shared: it holds no
/// placeholder (literal or URL-encoded), so it is the same for every
/// machine once filled.
pub fn shareable(user_data: Option<&[u8]>) -> bool {
    let Some(data) = user_data else {
        return true;
    };
    let name = MACHINE_NAME_PLACEHOLDER.as_bytes();
    let encoded = query_escape(MACHINE_NAME_PLACEHOLDER);
    !needs_bootstrap_token(data) && !contains(data, name) && !contains(data, encoded.as_bytes())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The key of the launches `request` may share: the namespace, the
/// credentials and Region, the request without its per-machine parts (token,
/// per-machine tags) and a digest of the user data (which the request's
/// `Debug` redacts).
pub fn group_key(
    namespace: &str,
    client: &ClientKey,
    request: &RunInstancesInputBuilder,
    user_data: Option<&[u8]>,
) -> String {
    let shared = request
        .clone()
        .set_client_token(None)
        .set_user_data(None)
        .set_tag_specifications(
            request
                .get_tag_specifications()
                .as_ref()
                .map(|specs| strip(specs, |key| PER_MACHINE_TAGS.contains(&key))),
        );
    let mut h = Sha256::new();
    for part in [
        namespace.as_bytes(),
        client.fingerprint.as_bytes(),
        client.region.as_bytes(),
        format!("{shared:?}").as_bytes(),
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    match user_data {
        Some(data) => h.update(data),
        None => h.update(b"\0no user data"),
    }
    format!("{:x}", h.finalize())
}

/// The ClientToken of a launch of `members` (Machine UID and attempt, in
/// index order): the same members at the same attempts always make the same
/// token, any other set another one. 54 characters (EC2 takes 64).
pub fn launch_token<'a>(members: impl IntoIterator<Item = (&'a str, u32)>) -> String {
    let mut h = Sha256::new();
    for (uid, attempt) in members {
        h.update(uid.as_bytes());
        h.update(b"/");
        h.update(attempt.to_le_bytes());
        h.update(b";");
    }
    let hex = format!("{:x}", h.finalize());
    format!("batch-{}", &hex[..48])
}

/// The value of the launch tag: `<namespace>/<token>`.
pub fn launch_tag(namespace: &str, token: &str) -> String {
    format!("{namespace}/{token}")
}

/// `request` (built for one of the machines) as the launch of `count`
/// machines under `token`: `MaxCount` = `count`, `MinCount` 1, the launch tag
/// on every tagged resource, and — unless it is a launch of one — without
/// the per-machine tags.
pub fn batched(
    request: RunInstancesFluentBuilder,
    token: &str,
    launch_tag: &str,
    count: u32,
) -> RunInstancesFluentBuilder {
    let specs = request
        .as_input()
        .get_tag_specifications()
        .clone()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| {
            vec![
                TagSpecification::builder()
                    .resource_type(ResourceType::Instance)
                    .build(),
            ]
        });
    let per_machine = |key: &str| count != 1 && PER_MACHINE_TAGS.contains(&key);
    let tagged: Vec<TagSpecification> = strip(&specs, per_machine)
        .into_iter()
        .map(|spec| {
            let mut tags = spec.tags().to_vec();
            tags.push(Tag::builder().key(LAUNCH_TAG).value(launch_tag).build());
            TagSpecification::builder()
                .set_resource_type(spec.resource_type().cloned())
                .set_tags(Some(tags))
                .build()
        })
        .collect();
    request
        .set_tag_specifications(Some(tagged))
        .client_token(token)
        .min_count(1)
        .max_count(i32::try_from(count).unwrap_or(i32::MAX))
}

fn strip(specs: &[TagSpecification], drop: impl Fn(&str) -> bool) -> Vec<TagSpecification> {
    specs
        .iter()
        .map(|spec| {
            let tags = spec
                .tags()
                .iter()
                .filter(|t| !t.key().is_some_and(&drop))
                .cloned()
                .collect();
            TagSpecification::builder()
                .set_resource_type(spec.resource_type().cloned())
                .set_tags(Some(tags))
                .build()
        })
        .collect()
}

/// The instance of slot `index` among a launch's instances.
pub fn instance_at(instances: &[InstanceInfo], index: u32) -> Option<&InstanceInfo> {
    instances
        .iter()
        .find(|i| i.launch_index.and_then(|l| u32::try_from(l).ok()) == Some(index))
}

/// The slots of a launch of `count` that got no instance (EC2 launched
/// fewer than asked): those machines launch again, under a new token.
pub fn missing(instances: &[InstanceInfo], count: u32) -> Vec<u32> {
    (0..count)
        .filter(|i| instance_at(instances, *i).is_none())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::instances::InstanceState;
    use aws_sdk_ec2::types::InstanceType;

    fn client() -> aws_sdk_ec2::Client {
        let conf = aws_sdk_ec2::Config::builder()
            .behavior_version(aws_sdk_ec2::config::BehaviorVersion::latest())
            .region(aws_sdk_ec2::config::Region::new("eu-west-1"))
            .build();
        aws_sdk_ec2::Client::from_conf(conf)
    }

    fn key() -> ClientKey {
        ClientKey {
            fingerprint: "f1".into(),
            region: "eu-west-1".into(),
        }
    }

    /// A request as `launch::build_run_instances` makes it for `machine`.
    fn request(machine: &str, machine_type: InstanceType) -> RunInstancesFluentBuilder {
        let tags: Vec<Tag> = [
            ("kubernetes.io/cluster/c", "1".to_string()),
            (NAME_TAG, machine.to_string()),
            (MACHINE_UID_TAG, format!("uid-{machine}")),
            (MACHINE_NAME_TAG, format!("ns/{machine}")),
        ]
        .into_iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect();
        client()
            .run_instances()
            .image_id("ami-1")
            .instance_type(machine_type)
            .client_token(format!("uid-{machine}"))
            .min_count(1)
            .max_count(1)
            .user_data("c2FtZQ==")
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::Instance)
                    .set_tags(Some(tags))
                    .build(),
            )
    }

    fn instance(id: &str, index: i32) -> InstanceInfo {
        InstanceInfo {
            launch_index: Some(index),
            ..InstanceInfo::bare(id, InstanceState::Pending)
        }
    }

    #[test]
    fn machines_share_a_launch_when_only_their_own_parts_differ() {
        let data = Some(b"#!/bin/sh\necho hi\n".as_slice());
        let a = group_key(
            "ns",
            &key(),
            request("a", InstanceType::M5Large).as_input(),
            data,
        );
        let b = group_key(
            "ns",
            &key(),
            request("b", InstanceType::M5Large).as_input(),
            data,
        );
        assert_eq!(a, b, "name, UID tags and token are per machine");
        let other_type = group_key(
            "ns",
            &key(),
            request("c", InstanceType::M6iLarge).as_input(),
            data,
        );
        assert_ne!(a, other_type);
        let other_data = group_key(
            "ns",
            &key(),
            request("c", InstanceType::M5Large).as_input(),
            Some(b"other"),
        );
        assert_ne!(a, other_data, "user data is compared though Debug hides it");
        let other_ns = group_key(
            "ns2",
            &key(),
            request("a", InstanceType::M5Large).as_input(),
            data,
        );
        assert_ne!(a, other_ns);
        let other_account = ClientKey {
            fingerprint: "f2".into(),
            ..key()
        };
        assert_ne!(
            a,
            group_key(
                "ns",
                &other_account,
                request("a", InstanceType::M5Large).as_input(),
                data
            )
        );
    }

    #[test]
    fn user_data_with_placeholders_launches_alone() {
        assert!(shareable(None));
        assert!(shareable(Some(b"#!/bin/sh\necho same for all\n")));
        assert!(!shareable(Some(b"hostname: <<MACHINE_NAME>>")));
        assert!(!shareable(Some(b"data:,%3C%3CMACHINE_NAME%3E%3E")));
        assert!(!shareable(Some(b"token: <<BOOTSTRAP_TOKEN>>")));
        assert!(!shareable(Some(b"data:,%3C%3CBOOTSTRAP_TOKEN%3E%3E")));
    }

    #[test]
    fn tokens_are_derived_from_the_members_and_fit_ec2() {
        let t = launch_token([("u1", 0), ("u2", 0)]);
        assert_eq!(t, launch_token([("u1", 0), ("u2", 0)]), "stable");
        assert_ne!(t, launch_token([("u1", 0), ("u2", 1)]), "another attempt");
        assert_ne!(t, launch_token([("u2", 0), ("u1", 0)]), "another order");
        assert_ne!(t, launch_token([("u1", 0)]), "another set");
        assert!(t.len() <= 64 && t.is_ascii() && t.starts_with("batch-"));
        assert_eq!(launch_tag("ns", &t), format!("ns/{t}"));
    }

    #[test]
    fn the_batched_request_asks_for_k_with_the_launch_tag_instead_of_machine_tags() {
        let input = batched(request("a", InstanceType::M5Large), "tok", "ns/tok", 20)
            .as_input()
            .clone()
            .build()
            .unwrap();
        assert_eq!((input.min_count(), input.max_count()), (Some(1), Some(20)));
        assert_eq!(input.client_token(), Some("tok"));
        let keys: Vec<(&str, &str)> = input.tag_specifications()[0]
            .tags()
            .iter()
            .map(|t| (t.key().unwrap(), t.value().unwrap()))
            .collect();
        assert_eq!(
            keys,
            [("kubernetes.io/cluster/c", "1"), (LAUNCH_TAG, "ns/tok")]
        );
        // A launch of one keeps the machine's own tags: nothing to follow.
        let one = batched(request("a", InstanceType::M5Large), "tok", "ns/tok", 1)
            .as_input()
            .clone()
            .build()
            .unwrap();
        assert_eq!(one.max_count(), Some(1));
        assert_eq!(one.tag_specifications()[0].tags().len(), 5);
    }

    #[test]
    fn instances_are_matched_by_launch_index_and_the_rest_is_missing() {
        let launched = [instance("i-b", 1), instance("i-a", 0), instance("i-c", 2)];
        assert_eq!(
            instance_at(&launched, 0).map(|i| i.id.as_str()),
            Some("i-a")
        );
        assert_eq!(
            instance_at(&launched, 2).map(|i| i.id.as_str()),
            Some("i-c")
        );
        assert_eq!(instance_at(&launched, 3), None);
        assert_eq!(
            missing(&launched, 5),
            [3, 4],
            "a partial launch of 3 out of 5"
        );
        assert!(missing(&launched, 3).is_empty());
        assert_eq!(missing(&[], 2), [0, 1]);
    }
}
