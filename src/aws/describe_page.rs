//! A slimmed DescribeInstances answer read straight into
//! [`InstanceInfo`]s, without the SDK's model of it.
//!
//! The SDK's `Instance` and `InstanceNetworkInterface` are large structs
//! (every field EC2 may send, most of them `None` here): even for the
//! slimmed answer of [`super::describe_slim`] their model of a 1,000
//! instance page took 4.9 MB, the largest transient the operator had.
//! [`read`] builds what the operator keeps of each instance from the XML
//! instead, with the SDK's own XML decoder, and reads each field as the
//! SDK's deserializer does (same element names, same parsing of numbers and
//! booleans, empty elements as empty strings), so that it gives what
//! `InstanceInfo::from(&Instance)` gives; the tests hold the two to that.

use std::borrow::Cow;

use aws_smithy_xml::decode::{Document, ScopedDecoder, XmlDecodeError, try_data};

use super::instances::{InstanceAddresses, InstanceInfo, InstanceState};
use super::launch::{AttachedInterface, PostLaunchState};
use crate::intern::IStr;

/// One page of a DescribeInstances answer.
#[derive(Debug, Default, PartialEq)]
pub struct Page {
    /// Where the next page starts; `None` on the last one.
    pub next_token: Option<String>,
    pub instances: Vec<InstanceInfo>,
}

/// Reads a (slimmed) DescribeInstances answer.
pub fn read(xml: &str) -> Result<Page, XmlDecodeError> {
    let mut doc = Document::new(xml);
    let mut root = doc.root_element()?;
    if !root.start_el().matches("DescribeInstancesResponse") {
        return Err(XmlDecodeError::custom("not a DescribeInstancesResponse"));
    }
    let mut page = Page::default();
    while let Some(mut tag) = root.next_tag() {
        match tag.start_el().local() {
            "nextToken" => page.next_token = Some(text(&mut tag)?),
            "reservationSet" => {
                while let Some(mut reservation) = tag.next_tag() {
                    if reservation.start_el().local() != "item" {
                        continue;
                    }
                    while let Some(mut r) = reservation.next_tag() {
                        if r.start_el().local() != "instancesSet" {
                            continue;
                        }
                        while let Some(mut i) = r.next_tag() {
                            if i.start_el().local() == "item" {
                                page.instances.push(instance(&mut i)?);
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Ok(page)
}

/// Reads one instance: an `<item>` of an `instancesSet`, alone (the
/// slimmer hands each over as it closes, see
/// [`super::describe_slim`]).
pub fn read_instance(xml: &str) -> Result<InstanceInfo, XmlDecodeError> {
    let mut doc = Document::new(xml);
    let mut item = doc.root_element()?;
    if !item.start_el().matches("item") {
        return Err(XmlDecodeError::custom("not an instance item"));
    }
    instance(&mut item)
}

fn text(tag: &mut ScopedDecoder<'_, '_>) -> Result<String, XmlDecodeError> {
    try_data(tag).map(Cow::into_owned)
}

fn number(tag: &mut ScopedDecoder<'_, '_>) -> Result<i32, XmlDecodeError> {
    let t = try_data(tag)?;
    t.trim()
        .parse()
        .map_err(|_| XmlDecodeError::custom(format!("{t:?} is not an integer")))
}

fn boolean(tag: &mut ScopedDecoder<'_, '_>) -> Result<bool, XmlDecodeError> {
    match &*try_data(tag)? {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(XmlDecodeError::custom(format!(
            "{other:?} is not a boolean"
        ))),
    }
}

fn instance(tag: &mut ScopedDecoder<'_, '_>) -> Result<InstanceInfo, XmlDecodeError> {
    let (mut reason_code, mut reason_message, mut transition) = (None, None, None);
    let mut info = InstanceInfo {
        id: String::new(),
        state: InstanceState::Unknown,
        state_reason: None,
        instance_type: None,
        private_dns_name: None,
        addresses: InstanceAddresses::default(),
        availability_zone: None,
        tags: Default::default(),
        post_launch: PostLaunchState::default(),
        launch_index: None,
    };
    let mut tags: Vec<(String, String)> = Vec::new();
    while let Some(mut t) = tag.next_tag() {
        match t.start_el().local() {
            "instanceId" => info.id = text(&mut t)?,
            "instanceState" => {
                while let Some(mut s) = t.next_tag() {
                    if s.start_el().local() == "name" {
                        info.state = InstanceState::parse(&text(&mut s)?);
                    }
                }
            }
            "stateReason" => {
                while let Some(mut s) = t.next_tag() {
                    match s.start_el().local() {
                        "code" => reason_code = Some(text(&mut s)?),
                        "message" => reason_message = Some(text(&mut s)?),
                        _ => {}
                    }
                }
            }
            "reason" => transition = Some(text(&mut t)?),
            "instanceType" => info.instance_type = Some(text(&mut t)?.into()),
            "privateDnsName" => info.private_dns_name = non_empty(text(&mut t)?).map(IStr::from),
            "privateIpAddress" => {
                info.addresses.private_ip = non_empty(text(&mut t)?).map(IStr::from)
            }
            "ipAddress" => info.addresses.public_ip = non_empty(text(&mut t)?),
            "dnsName" => info.addresses.public_dns_name = non_empty(text(&mut t)?),
            "placement" => {
                while let Some(mut p) = t.next_tag() {
                    if p.start_el().local() == "availabilityZone" {
                        info.availability_zone = Some(text(&mut p)?.into());
                    }
                }
            }
            "amiLaunchIndex" => info.launch_index = Some(number(&mut t)?),
            "sourceDestCheck" => info.post_launch.source_dest_check = Some(boolean(&mut t)?),
            "tagSet" => {
                while let Some(mut item) = t.next_tag() {
                    if item.start_el().local() != "item" {
                        continue;
                    }
                    let (mut key, mut value) = (None, None);
                    while let Some(mut kv) = item.next_tag() {
                        match kv.start_el().local() {
                            "key" => key = Some(text(&mut kv)?),
                            "value" => value = Some(text(&mut kv)?),
                            _ => {}
                        }
                    }
                    if let Some(key) = key {
                        tags.push((key, value.unwrap_or_default()));
                    }
                }
            }
            "networkInterfaceSet" => {
                while let Some(mut item) = t.next_tag() {
                    if item.start_el().local() == "item"
                        && let Some(nic) = interface(&mut item)?
                    {
                        info.post_launch.interfaces.push(nic);
                    }
                }
            }
            _ => {}
        }
    }
    info.state_reason = reason_message
        .or(reason_code)
        .or(transition.filter(|s| !s.is_empty()));
    info.tags = tags.into_iter().collect();
    Ok(info)
}

/// An attached network interface (`None` without a device index, as the
/// SDK's model gives it).
fn interface(
    item: &mut ScopedDecoder<'_, '_>,
) -> Result<Option<AttachedInterface>, XmlDecodeError> {
    let mut id = None;
    let (mut attached, mut card, mut device) = (false, None, None);
    let mut prefixes = 0i32;
    while let Some(mut t) = item.next_tag() {
        match t.start_el().local() {
            "networkInterfaceId" => id = Some(text(&mut t)?),
            "attachment" => {
                attached = true;
                while let Some(mut a) = t.next_tag() {
                    match a.start_el().local() {
                        "networkCardIndex" => card = Some(number(&mut a)?),
                        "deviceIndex" => device = Some(number(&mut a)?),
                        _ => {}
                    }
                }
            }
            "ipv6PrefixSet" => {
                while let Some(p) = t.next_tag() {
                    if p.start_el().local() == "item" {
                        prefixes = prefixes.saturating_add(1);
                    }
                }
            }
            _ => {}
        }
    }
    Ok(attached
        .then_some(device)
        .flatten()
        .map(|device_index| AttachedInterface {
            network_card_index: card.unwrap_or(0),
            device_index,
            id: id.unwrap_or_default(),
            ipv6_prefixes: prefixes,
        }))
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}
