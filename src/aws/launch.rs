//! The RunInstances request for a Machine, built without any I/O, and the
//! one-time actions that follow a launch.
//!
//! This is MCM's `CreateMachine` request building (`pkg/aws/core.go`,
//! `pkg/aws/core_util.go`) turned into a pure step of the reconcile pipeline:
//! the controller fetches the class, secret and AMI root device name, calls
//! [`build_run_instances`] on `client.run_instances()`, and sends it. Unit
//! tests inspect the produced input without a network.
//!
//! Rules that hold for every field: a field left unset in the spec stays
//! unset in the request, so EC2 (or the account's settings) decide its
//! default; no zero value is ever sent in place of "unset".
//!
//! Where this differs from MCM on purpose:
//! - the request carries a `ClientToken` and the Machine UID / name tags
//!   (idempotent creation, see DESIGN §3);
//! - `kmsKeyID`, `ebsOptimized` and `monitoring` are sent (MCM dropped them);
//! - empty `blockDevices` keep the AMI's own mapping (MCM refused to launch);
//! - `encrypted` is only sent when set (MCM sent `false` when unset);
//! - `coreCount` / `threadsPerCore` are sent as given (MCM silently dropped
//!   one without the other; validation rejects that combination);
//! - the spec's `placement` wins over the `awsPlacement` annotation, which is
//!   only read when the spec has none.

use aws_sdk_ec2::operation::run_instances::builders::RunInstancesFluentBuilder;
use aws_sdk_ec2::types::{
    AmdSevSnpSpecification, BlockDeviceMapping, CapacityReservationPreference,
    CapacityReservationSpecification, CapacityReservationTarget, CpuOptionsRequest, EbsBlockDevice,
    HttpTokensState, IamInstanceProfileSpecification, Instance, InstanceMarketOptionsRequest,
    InstanceMetadataEndpointState, InstanceMetadataOptionsRequest, InstanceMetadataProtocolState,
    InstanceNetworkInterfaceSpecification, InstanceType, MarketType as Ec2MarketType, Placement,
    ResourceType, RunInstancesMonitoringEnabled, SpotInstanceType, SpotMarketOptions, Tag,
    TagSpecification, Tenancy as Ec2Tenancy, VolumeType as Ec2VolumeType,
};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::Value;

use crate::api::provider_spec::{
    AWSBlockDeviceMappingSpec, AWSNetworkInterfaceSpec, AWSPlacementSpec, AWSProviderSpec,
    MarketType, ROOT_DEVICE_NAME,
};
use crate::aws::credentials::SecretString;
use crate::aws::tags;
use crate::aws::user_data::{self, Substitutions};

pub use crate::aws::user_data::MACHINE_NAME_PLACEHOLDER;

/// Annotation (on the Machine's `nodeTemplate`) through which MCM users pass an
/// EC2 placement as JSON, e.g. `{"availabilityZone":"eu-west-1a","tenancy":"host"}`.
pub const PLACEMENT_ANNOTATION: &str = "machine.sapcloud.io/awsPlacement";

/// EC2 rejects user data above 16 KiB (counted before base64 encoding, after
/// the placeholders are replaced); checking it here turns a launch-time API
/// error into a clear input error.
pub const MAX_USER_DATA_BYTES: usize = 16 * 1024;

/// Everything a launch needs besides the client: who the instance is for and
/// what the class, secret and AMI say.
#[derive(Clone, Copy, Debug)]
pub struct LaunchContext<'a> {
    /// Name of the Machine; becomes the `Name` tag and replaces
    /// [`MACHINE_NAME_PLACEHOLDER`] in the user data.
    pub machine_name: &'a str,
    /// The machine's bootstrap token, replacing
    /// [`user_data::BOOTSTRAP_TOKEN_PLACEHOLDER`] in the user data (`None`:
    /// the user data asks for none). Its `Debug` never shows it.
    pub bootstrap_token: Option<&'a SecretString>,
    /// Namespace of the Machine, for the [`tags::MACHINE_NAME_TAG`] tag.
    pub machine_namespace: &'a str,
    /// UID of the Machine: the [`tags::MACHINE_UID_TAG`] tag, which (with the
    /// `ClientToken`) makes creation idempotent.
    pub machine_uid: &'a str,
    /// The `ClientToken` of this launch attempt (derived from the Machine UID:
    /// see `controller::machine::launch_record`).
    pub client_token: &'a str,
    /// The class's provider spec (assumed to have passed validation; the
    /// builder still never panics on one that did not).
    pub spec: &'a AWSProviderSpec,
    /// Raw user data from the secret (not base64), if any.
    pub user_data: Option<&'a [u8]>,
    /// Root device name of the AMI (`DescribeImages`), e.g. `/dev/xvda`; the
    /// block device named `/root`, or the only one, is renamed to it.
    pub root_device_name: Option<&'a str>,
    /// Value of the Machine's [`PLACEMENT_ANNOTATION`] (from its
    /// `nodeTemplate` annotations), if any.
    pub placement_annotation: Option<&'a str>,
}

/// An input problem found while building the request. Each message names the
/// field (or annotation) to fix; none of them is worth a retry until the
/// input changes.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// A block device must take the AMI's root device name, but the AMI has none.
    #[error(
        "providerSpec.blockDevices[{index}].deviceName: {name:?} stands for the root device, \
         but AMI {ami} reports no root device name"
    )]
    MissingRootDeviceName {
        /// Position in `blockDevices`.
        index: usize,
        /// The device name given in the spec.
        name: String,
        /// The AMI that was looked up.
        ami: String,
    },
    /// With several block devices, every non-root one needs a device name.
    #[error(
        "providerSpec.blockDevices[{index}].deviceName: must not be empty when there are \
         several block devices"
    )]
    EmptyDeviceName {
        /// Position in `blockDevices`.
        index: usize,
    },
    /// The network interface list is longer than any EC2 device index.
    #[error(
        "providerSpec.networkInterfaces[{index}].deviceIndex: position too large for a device index"
    )]
    DeviceIndexOverflow {
        /// Position in `networkInterfaces`.
        index: usize,
    },
    /// Spot and Capacity Block were both asked for.
    #[error(
        "providerSpec.instanceMarketOptions.marketType: a Capacity Block instance \
         (capacityReservation.isMLCapacityBlock or marketType capacity-block) cannot be a Spot \
         Instance (spotPrice or marketType spot)"
    )]
    ConflictingMarketOptions,
    /// The user data is larger than EC2 accepts.
    #[error("secret key userData: {size} bytes exceed EC2's limit of {MAX_USER_DATA_BYTES} bytes")]
    UserDataTooLarge {
        /// Size of the user data after placeholder replacement.
        size: usize,
    },
    /// The placement annotation is not a JSON object.
    #[error("annotation {PLACEMENT_ANNOTATION}: not a JSON object: {source}")]
    PlacementAnnotationJson {
        /// The JSON parser's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// The placement annotation has a field of the wrong type or value.
    #[error("annotation {PLACEMENT_ANNOTATION}: field {field:?} {problem}")]
    PlacementAnnotationField {
        /// The JSON key as written in the annotation.
        field: String,
        /// What is wrong with it.
        problem: String,
    },
}

impl LaunchError {
    /// A short, static name for metric labels and Event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            Self::MissingRootDeviceName { .. } => "missing_root_device_name",
            Self::EmptyDeviceName { .. } => "empty_device_name",
            Self::DeviceIndexOverflow { .. } => "device_index_overflow",
            Self::ConflictingMarketOptions => "conflicting_market_options",
            Self::UserDataTooLarge { .. } => "user_data_too_large",
            Self::PlacementAnnotationJson { .. } | Self::PlacementAnnotationField { .. } => {
                "invalid_placement_annotation"
            }
        }
    }
}

/// Fills `b` (from `client.run_instances()`) with the launch request for the
/// Machine in `ctx`. Pure: no request is sent; the caller sends it.
pub fn build_run_instances(
    b: RunInstancesFluentBuilder,
    ctx: &LaunchContext<'_>,
) -> Result<RunInstancesFluentBuilder, LaunchError> {
    let spec = ctx.spec;
    let user_data = ctx
        .user_data
        .map(|data| {
            let with = Substitutions {
                machine_name: ctx.machine_name,
                bootstrap_token: ctx.bootstrap_token,
            };
            encode_user_data(data, &with)
        })
        .transpose()?
        .filter(|encoded| !encoded.is_empty());
    let placement = match spec.placement.as_ref().and_then(spec_placement) {
        Some(placement) => Some(placement),
        None => ctx
            .placement_annotation
            .map(parse_placement_annotation)
            .transpose()?
            .flatten(),
    };

    Ok(b.image_id(&spec.ami)
        .instance_type(InstanceType::from(spec.machine_type.as_str()))
        .min_count(1)
        .max_count(1)
        .client_token(ctx.client_token)
        .set_block_device_mappings(block_device_mappings(ctx)?)
        .set_network_interfaces(Some(network_interfaces(&spec.network_interfaces)?))
        .set_iam_instance_profile(iam_instance_profile(spec))
        .set_key_name(non_empty(spec.key_name.as_ref()))
        .set_user_data(user_data)
        .set_tag_specifications(Some(tag_specifications(ctx)))
        .set_instance_market_options(instance_market_options(spec)?)
        .set_capacity_reservation_specification(capacity_reservation(spec))
        .set_cpu_options(cpu_options(spec))
        .set_metadata_options(metadata_options(spec))
        .set_placement(placement)
        .set_ebs_optimized(spec.ebs_optimized)
        .set_monitoring(spec.monitoring.map(|enabled| {
            RunInstancesMonitoringEnabled::builder()
                .enabled(enabled)
                .build()
        })))
}

/// Base64 of the user data with its placeholders replaced (see
/// [`user_data`]), checked against EC2's size limit after the replacement.
pub fn encode_user_data(data: &[u8], with: &Substitutions<'_>) -> Result<String, LaunchError> {
    let replaced = user_data::substitute(data, with);
    if replaced.len() > MAX_USER_DATA_BYTES {
        return Err(LaunchError::UserDataTooLarge {
            size: replaced.len(),
        });
    }
    Ok(BASE64.encode(replaced))
}

/// `Some(value)` unless it is absent or empty: MCM treats an empty string as
/// "not set", and EC2 would reject an empty ID.
fn non_empty(value: Option<&String>) -> Option<String> {
    value.filter(|v| !v.is_empty()).cloned()
}

/// The spec's block devices as EC2 mappings; `None` (the AMI's own mapping)
/// when the spec lists none.
fn block_device_mappings(
    ctx: &LaunchContext<'_>,
) -> Result<Option<Vec<BlockDeviceMapping>>, LaunchError> {
    let devices = &ctx.spec.block_devices;
    if devices.is_empty() {
        return Ok(None);
    }
    devices
        .iter()
        .enumerate()
        .map(|(index, device)| {
            let name = device_name(ctx, devices.len(), index, device)?;
            Ok(BlockDeviceMapping::builder()
                .device_name(name)
                .ebs(ebs_block_device(device))
                .build())
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// MCM's rule: `/root`, or the only device whatever its name, is the root
/// volume and takes the AMI's root device name.
fn device_name(
    ctx: &LaunchContext<'_>,
    count: usize,
    index: usize,
    device: &AWSBlockDeviceMappingSpec,
) -> Result<String, LaunchError> {
    if device.device_name == ROOT_DEVICE_NAME || count == 1 {
        return ctx
            .root_device_name
            .filter(|root| !root.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| LaunchError::MissingRootDeviceName {
                index,
                name: device.device_name.clone(),
                ami: ctx.spec.ami.clone(),
            });
    }
    if device.device_name.is_empty() {
        return Err(LaunchError::EmptyDeviceName { index });
    }
    Ok(device.device_name.clone())
}

fn ebs_block_device(device: &AWSBlockDeviceMappingSpec) -> EbsBlockDevice {
    // noDevice and virtualName are accepted for MCM compatibility but, as in
    // MCM, never sent: they describe instance-store or suppressed devices,
    // which this EBS-only mapping cannot express together with `ebs`.
    let ebs = &device.ebs;
    EbsBlockDevice::builder()
        .volume_size(ebs.volume_size)
        .volume_type(Ec2VolumeType::from(ebs.volume_type.as_str()))
        .delete_on_termination(ebs.delete_on_termination.unwrap_or(true))
        .set_encrypted(ebs.encrypted)
        .set_iops(ebs.iops.filter(|iops| *iops > 0))
        .set_throughput(ebs.throughput.filter(|throughput| *throughput > 0))
        .set_kms_key_id(non_empty(ebs.kms_key_id.as_ref()))
        .set_snapshot_id(non_empty(ebs.snapshot_id.as_ref()))
        .build()
}

fn network_interfaces(
    interfaces: &[AWSNetworkInterfaceSpec],
) -> Result<Vec<InstanceNetworkInterfaceSpecification>, LaunchError> {
    interfaces
        .iter()
        .enumerate()
        .map(|(index, nic)| {
            let device_index = device_index(index, nic)?;
            // MCM makes the first IPv6 address primary whenever it asks for
            // IPv6 addresses; an explicit primaryIpv6 overrides that.
            let primary_ipv6 = nic
                .primary_ipv6
                .or_else(|| nic.ipv6_address_count.filter(|c| *c > 0).map(|_| true));
            // ipv6PrefixCount is not part of the launch: MCM assigns the
            // prefixes after launch (see `post_launch_actions`).
            Ok(InstanceNetworkInterfaceSpecification::builder()
                .device_index(device_index)
                .subnet_id(&nic.subnet_id)
                .set_groups(Some(nic.security_group_ids.clone()))
                .delete_on_termination(nic.delete_on_termination.unwrap_or(true))
                .set_associate_public_ip_address(nic.associate_public_ip_address)
                .set_ipv6_address_count(nic.ipv6_address_count)
                .set_primary_ipv6(primary_ipv6)
                .set_description(non_empty(nic.description.as_ref()))
                .set_interface_type(nic.interface_type.map(|t| t.as_str().to_owned()))
                .set_network_card_index(nic.network_card_index)
                .build())
        })
        .collect()
}

/// The interface's device index: as given, else its position in the list
/// (what MCM always used).
fn device_index(index: usize, nic: &AWSNetworkInterfaceSpec) -> Result<i32, LaunchError> {
    match nic.device_index {
        Some(device_index) => Ok(device_index),
        None => i32::try_from(index).map_err(|_| LaunchError::DeviceIndexOverflow { index }),
    }
}

fn iam_instance_profile(spec: &AWSProviderSpec) -> Option<IamInstanceProfileSpecification> {
    let iam = &spec.iam;
    if !iam.name.is_empty() {
        Some(
            IamInstanceProfileSpecification::builder()
                .name(&iam.name)
                .build(),
        )
    } else if !iam.arn.is_empty() {
        Some(
            IamInstanceProfileSpecification::builder()
                .arn(&iam.arn)
                .build(),
        )
    } else {
        None
    }
}

/// The tags of the instance, its volumes and its network interfaces: the
/// class's tags plus `Name` (MCM finds machines by it) and the Machine UID and
/// name tags (this operator finds machines by them). The operator's own keys
/// always win over same-named class tags.
fn tag_specifications(ctx: &LaunchContext<'_>) -> Vec<TagSpecification> {
    let reserved = [
        tags::NAME_TAG,
        tags::MACHINE_UID_TAG,
        tags::MACHINE_NAME_TAG,
        tags::LAUNCH_TAG,
    ];
    let machine_tags = tags::machine_tags(ctx.machine_name, ctx.machine_namespace, ctx.machine_uid);
    let all_tags: Vec<Tag> = ctx
        .spec
        .tags
        .iter()
        .filter(|(key, _)| !reserved.contains(&key.as_str()))
        .map(|(key, value)| (key.as_str(), value.clone()))
        .chain(machine_tags)
        .map(|(key, value)| Tag::builder().key(key).value(value).build())
        .collect();
    [
        ResourceType::Instance,
        ResourceType::Volume,
        ResourceType::NetworkInterface,
    ]
    .into_iter()
    .map(|resource| {
        TagSpecification::builder()
            .resource_type(resource)
            .set_tags(Some(all_tags.clone()))
            .build()
    })
    .collect()
}

/// Spot or Capacity Block, from `instanceMarketOptions`, MCM's `spotPrice`
/// (set, even empty, means Spot) and MCM's `isMLCapacityBlock`.
fn instance_market_options(
    spec: &AWSProviderSpec,
) -> Result<Option<InstanceMarketOptionsRequest>, LaunchError> {
    let requested = spec.instance_market_options.as_ref().map(|m| m.market_type);
    let spot_price = spec.spot_price.is_some();
    let ml_block = spec
        .capacity_reservation
        .as_ref()
        .is_some_and(|c| c.is_ml_capacity_block == Some(true));
    let market = match (requested, spot_price, ml_block) {
        (Some(MarketType::Spot), _, true)
        | (Some(MarketType::CapacityBlock), true, _)
        | (None, true, true) => return Err(LaunchError::ConflictingMarketOptions),
        (Some(market), _, _) => market,
        (None, true, false) => MarketType::Spot,
        (None, false, true) => MarketType::CapacityBlock,
        (None, false, false) => return Ok(None),
    };
    let options = match market {
        // One-time Spot; without a price EC2 caps at the On-Demand price.
        MarketType::Spot => InstanceMarketOptionsRequest::builder()
            .market_type(Ec2MarketType::Spot)
            .spot_options(
                SpotMarketOptions::builder()
                    .spot_instance_type(SpotInstanceType::OneTime)
                    .set_max_price(non_empty(spec.spot_price.as_ref()))
                    .build(),
            )
            .build(),
        MarketType::CapacityBlock => InstanceMarketOptionsRequest::builder()
            .market_type(Ec2MarketType::CapacityBlock)
            .build(),
    };
    Ok(Some(options))
}

fn capacity_reservation(spec: &AWSProviderSpec) -> Option<CapacityReservationSpecification> {
    let reservation = spec.capacity_reservation.as_ref()?;
    let id = non_empty(reservation.capacity_reservation_id.as_ref());
    let arn = non_empty(reservation.capacity_reservation_resource_group_arn.as_ref());
    let target = (id.is_some() || arn.is_some()).then(|| {
        CapacityReservationTarget::builder()
            .set_capacity_reservation_id(id)
            .set_capacity_reservation_resource_group_arn(arn)
            .build()
    });
    let preference = reservation
        .capacity_reservation_preference
        .map(|p| CapacityReservationPreference::from(p.as_str()));
    if target.is_none() && preference.is_none() {
        return None;
    }
    Some(
        CapacityReservationSpecification::builder()
            .set_capacity_reservation_preference(preference)
            .set_capacity_reservation_target(target)
            .build(),
    )
}

fn cpu_options(spec: &AWSProviderSpec) -> Option<CpuOptionsRequest> {
    let cpu = spec.cpu_options.as_ref()?;
    if cpu.core_count.is_none() && cpu.threads_per_core.is_none() && cpu.amd_sev_snp.is_none() {
        return None;
    }
    Some(
        CpuOptionsRequest::builder()
            .set_core_count(cpu.core_count)
            .set_threads_per_core(cpu.threads_per_core)
            .set_amd_sev_snp(
                cpu.amd_sev_snp
                    .map(|s| AmdSevSnpSpecification::from(s.as_str())),
            )
            .build(),
    )
}

fn metadata_options(spec: &AWSProviderSpec) -> Option<InstanceMetadataOptionsRequest> {
    let imds = spec.instance_metadata_options.as_ref()?;
    // A hop limit of 0 is MCM's "unset"; EC2 only accepts 1-64.
    let hop_limit = imds.http_put_response_hop_limit.filter(|h| *h > 0);
    if imds.http_endpoint.is_none()
        && hop_limit.is_none()
        && imds.http_tokens.is_none()
        && imds.http_protocol_ipv6.is_none()
    {
        return None;
    }
    Some(
        InstanceMetadataOptionsRequest::builder()
            .set_http_endpoint(
                imds.http_endpoint
                    .map(|s| InstanceMetadataEndpointState::from(s.as_str())),
            )
            .set_http_put_response_hop_limit(hop_limit)
            .set_http_tokens(imds.http_tokens.map(|t| HttpTokensState::from(t.as_str())))
            .set_http_protocol_ipv6(
                imds.http_protocol_ipv6
                    .map(|s| InstanceMetadataProtocolState::from(s.as_str())),
            )
            .build(),
    )
}

/// The spec's placement, or `None` when it sets nothing.
fn spec_placement(spec: &AWSPlacementSpec) -> Option<Placement> {
    let placement = Placement::builder()
        .set_group_id(non_empty(spec.group_id.as_ref()))
        .set_tenancy(spec.tenancy.map(|t| Ec2Tenancy::from(t.as_str())))
        .set_host_id(non_empty(spec.host_id.as_ref()))
        .set_partition_number(spec.partition_number)
        .set_affinity(spec.affinity.map(|a| a.as_str().to_owned()))
        .build();
    (placement != Placement::builder().build()).then_some(placement)
}

/// Parses the [`PLACEMENT_ANNOTATION`] value the way MCM does (Go's
/// `json.Unmarshal` into EC2's `Placement`): keys are EC2's field names,
/// matched case-insensitively (`availabilityZone`, `AvailabilityZone`);
/// unknown keys are ignored; `null` fields are unset. An empty annotation, or
/// one that sets nothing, means no placement. Stricter than MCM: empty strings
/// count as unset, a key given twice (in any case) is an error, and `tenancy`
/// must be a value EC2 knows.
pub fn parse_placement_annotation(value: &str) -> Result<Option<Placement>, LaunchError> {
    if value.trim().is_empty() {
        return Ok(None);
    }
    let json: Value = serde_json::from_str(value)
        .map_err(|source| LaunchError::PlacementAnnotationJson { source })?;
    let object = match json {
        Value::Null => return Ok(None),
        Value::Object(object) => object,
        other => {
            return Err(LaunchError::PlacementAnnotationField {
                field: String::new(),
                problem: format!("(the whole value) must be a JSON object, not {other}"),
            });
        }
    };

    let mut seen: Vec<&'static str> = Vec::new();
    let mut b = Placement::builder();
    for (key, value) in &object {
        let Some(field) = PLACEMENT_FIELDS
            .iter()
            .copied()
            .find(|f| f.eq_ignore_ascii_case(key))
        else {
            continue;
        };
        if seen.contains(&field) {
            return Err(field_error(key, "is given more than once"));
        }
        seen.push(field);
        if field == "partitionNumber" {
            b = b.set_partition_number(annotation_i32(key, value)?);
            continue;
        }
        let text = annotation_string(key, value)?;
        b = match field {
            "affinity" => b.set_affinity(text),
            "availabilityZone" => b.set_availability_zone(text),
            "availabilityZoneId" => b.set_availability_zone_id(text),
            "groupId" => b.set_group_id(text),
            "groupName" => b.set_group_name(text),
            "hostId" => b.set_host_id(text),
            "hostResourceGroupArn" => b.set_host_resource_group_arn(text),
            "spreadDomain" => b.set_spread_domain(text),
            "tenancy" => b.set_tenancy(annotation_tenancy(key, text)?),
            _ => b,
        };
    }
    let placement = b.build();
    Ok((placement != Placement::builder().build()).then_some(placement))
}

/// EC2 `Placement` fields the annotation may set.
const PLACEMENT_FIELDS: [&str; 10] = [
    "affinity",
    "availabilityZone",
    "availabilityZoneId",
    "groupId",
    "groupName",
    "hostId",
    "hostResourceGroupArn",
    "partitionNumber",
    "spreadDomain",
    "tenancy",
];

fn field_error(key: &str, problem: impl Into<String>) -> LaunchError {
    LaunchError::PlacementAnnotationField {
        field: key.to_owned(),
        problem: problem.into(),
    }
}

fn annotation_string(key: &str, value: &Value) -> Result<Option<String>, LaunchError> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) if s.is_empty() => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        other => Err(field_error(key, format!("must be a string, not {other}"))),
    }
}

fn annotation_i32(key: &str, value: &Value) -> Result<Option<i32>, LaunchError> {
    match value {
        Value::Null => Ok(None),
        Value::Number(n) => n
            .as_i64()
            .and_then(|n| i32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| field_error(key, format!("must be a 32-bit integer, not {n}"))),
        other => Err(field_error(key, format!("must be an integer, not {other}"))),
    }
}

fn annotation_tenancy(key: &str, value: Option<String>) -> Result<Option<Ec2Tenancy>, LaunchError> {
    let Some(value) = value else {
        return Ok(None);
    };
    if Ec2Tenancy::values().contains(&value.as_str()) {
        Ok(Some(Ec2Tenancy::from(value.as_str())))
    } else {
        Err(field_error(
            key,
            format!(
                "must be one of {}, not {value:?}",
                Ec2Tenancy::values().join(", ")
            ),
        ))
    }
}

/// What must happen to an instance after launch, as MCM's `InitializeMachine`
/// does it. Declarative: [`PostLaunch::pending`] compares it with what
/// `DescribeInstances` reports, so the controller only calls what is missing
/// and a retry after a crash is harmless.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PostLaunch {
    /// `srcAndDstChecksEnabled: false`: turn source/destination checking off
    /// (ModifyInstanceAttribute `SourceDestCheck=false`), e.g. for NAT
    /// instances. EC2 cannot set it at launch.
    pub disable_src_dst_check: bool,
    /// `ipv6PrefixCount` of the interfaces that ask for prefixes: MCM assigns
    /// them with AssignIpv6Addresses after launch rather than in RunInstances.
    pub ipv6_prefixes: Vec<Ipv6PrefixTarget>,
}

/// The IPv6 prefixes one network interface of the spec should carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipv6PrefixTarget {
    /// Position of the interface in `networkInterfaces`.
    pub interface: usize,
    /// Network card the interface is attached to (default 0).
    pub network_card_index: i32,
    /// Device index the interface is attached at (default its position).
    pub device_index: i32,
    /// Number of /80 prefixes it should have.
    pub prefix_count: i32,
}

/// One call the controller still has to make for an instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PostLaunchAction {
    /// ModifyInstanceAttribute(InstanceId, SourceDestCheck=false).
    DisableSourceDestCheck,
    /// AssignIpv6Addresses(NetworkInterfaceId, Ipv6PrefixCount=count).
    AssignIpv6Prefixes {
        /// Position of the interface in `networkInterfaces`.
        interface: usize,
        /// The attached interface's ID.
        network_interface_id: String,
        /// How many more prefixes to assign.
        count: i32,
    },
}

/// The post-launch state the spec asks for.
pub fn post_launch_actions(spec: &AWSProviderSpec) -> PostLaunch {
    let ipv6_prefixes = spec
        .network_interfaces
        .iter()
        .enumerate()
        .filter_map(|(interface, nic)| {
            let prefix_count = nic.ipv6_prefix_count.filter(|c| *c > 0)?;
            let device_index = device_index(interface, nic).ok()?;
            Some(Ipv6PrefixTarget {
                interface,
                network_card_index: nic.network_card_index.unwrap_or(0),
                device_index,
                prefix_count,
            })
        })
        .collect();
    PostLaunch {
        disable_src_dst_check: spec.src_and_dst_checks_enabled == Some(false),
        ipv6_prefixes,
    }
}

impl PostLaunch {
    /// Nothing to do after launch, whatever the instance looks like.
    pub fn is_empty(&self) -> bool {
        !self.disable_src_dst_check && self.ipv6_prefixes.is_empty()
    }

    /// The calls still needed for `instance` (as `DescribeInstances` reports
    /// it). An interface is found by its attachment's network card and device
    /// index; one that is not attached (yet) yields no action.
    pub fn pending(&self, instance: &PostLaunchState) -> Vec<PostLaunchAction> {
        let mut actions = Vec::new();
        // EC2 reports true when unset, and MCM assumes so too.
        if self.disable_src_dst_check && instance.source_dest_check.unwrap_or(true) {
            actions.push(PostLaunchAction::DisableSourceDestCheck);
        }
        for target in &self.ipv6_prefixes {
            let Some(nic) = instance.interface(target) else {
                continue;
            };
            if nic.id.is_empty() {
                continue;
            }
            if nic.ipv6_prefixes < target.prefix_count {
                actions.push(PostLaunchAction::AssignIpv6Prefixes {
                    interface: target.interface,
                    network_interface_id: nic.id.clone(),
                    count: target.prefix_count - nic.ipv6_prefixes,
                });
            }
        }
        actions
    }

    /// Whether `instance` is fully initialized: no call pending and every
    /// interface that needs prefixes is attached. Until then the Machine is
    /// not Running (MCM's `Uninitialized`).
    pub fn is_complete(&self, instance: &PostLaunchState) -> bool {
        self.pending(instance).is_empty()
            && self
                .ipv6_prefixes
                .iter()
                .all(|target| instance.interface(target).is_some())
    }
}

/// What EC2 reports of an instance's post-launch settings: kept in the shared
/// instance view, so checking them costs no call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PostLaunchState {
    /// `sourceDestCheck` (EC2 omits it for some instance kinds: true).
    pub source_dest_check: Option<bool>,
    /// The attached network interfaces.
    pub interfaces: Vec<AttachedInterface>,
}

/// One attached network interface, as far as IPv6 prefixes go.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AttachedInterface {
    pub network_card_index: i32,
    pub device_index: i32,
    pub id: String,
    /// IPv6 prefixes assigned to it.
    pub ipv6_prefixes: i32,
}

impl From<&Instance> for PostLaunchState {
    fn from(i: &Instance) -> Self {
        let interfaces = i
            .network_interfaces()
            .iter()
            .filter_map(|nic| {
                let a = nic.attachment()?;
                Some(AttachedInterface {
                    network_card_index: a.network_card_index().unwrap_or(0),
                    device_index: a.device_index()?,
                    id: nic.network_interface_id().unwrap_or_default().to_string(),
                    ipv6_prefixes: i32::try_from(nic.ipv6_prefixes().len()).unwrap_or(i32::MAX),
                })
            })
            .collect();
        PostLaunchState {
            source_dest_check: i.source_dest_check(),
            interfaces,
        }
    }
}

impl PostLaunchState {
    fn interface(&self, target: &Ipv6PrefixTarget) -> Option<&AttachedInterface> {
        self.interfaces.iter().find(|nic| {
            nic.device_index == target.device_index
                && nic.network_card_index == target.network_card_index
        })
    }

    /// The state after `actions` succeeded (until EC2's next report).
    pub fn apply(&mut self, actions: &[PostLaunchAction]) {
        for action in actions {
            match action {
                PostLaunchAction::DisableSourceDestCheck => self.source_dest_check = Some(false),
                PostLaunchAction::AssignIpv6Prefixes {
                    network_interface_id,
                    count,
                    ..
                } => {
                    if let Some(nic) = self
                        .interfaces
                        .iter_mut()
                        .find(|n| &n.id == network_interface_id)
                    {
                        nic.ipv6_prefixes = nic.ipv6_prefixes.saturating_add(*count);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use aws_sdk_ec2::config::{BehaviorVersion, Region};
    use aws_sdk_ec2::operation::run_instances::RunInstancesInput;
    use aws_sdk_ec2::types::{
        InstanceIpv6Prefix, InstanceNetworkInterface, InstanceNetworkInterfaceAttachment,
    };

    use super::*;
    use crate::api::provider_spec::{
        AWSCapacityReservationTargetSpec, AWSEbsBlockDeviceSpec, AWSIAMProfileSpec, Affinity,
        CPUOptions, CapacityReservationPreference as SpecPreference, FeatureState, HttpTokens,
        InstanceMarketOptions, InstanceMetadataOptions, InterfaceType, Tenancy, VolumeType,
    };

    const UID: &str = "6f1c2a9e-3b1d-4c8e-9a57-0d2b6c1e4f70";

    fn client() -> aws_sdk_ec2::Client {
        aws_sdk_ec2::Client::from_conf(
            aws_sdk_ec2::Config::builder()
                .behavior_version(BehaviorVersion::latest())
                .region(Region::new("eu-west-1"))
                .build(),
        )
    }

    fn nic(subnet: &str) -> AWSNetworkInterfaceSpec {
        AWSNetworkInterfaceSpec {
            subnet_id: subnet.into(),
            security_group_ids: vec!["sg-1".into()],
            ..Default::default()
        }
    }

    fn disk(name: &str, volume_type: VolumeType) -> AWSBlockDeviceMappingSpec {
        AWSBlockDeviceMappingSpec {
            device_name: name.into(),
            ebs: AWSEbsBlockDeviceSpec {
                delete_on_termination: None,
                encrypted: None,
                iops: None,
                throughput: None,
                kms_key_id: None,
                snapshot_id: None,
                volume_size: 50,
                volume_type,
            },
            no_device: None,
            virtual_name: None,
        }
    }

    /// The smallest spec a class can have: AMI, type, region, IAM, one NIC.
    fn minimal() -> AWSProviderSpec {
        AWSProviderSpec {
            ami: "ami-1".into(),
            machine_type: "m5.large".into(),
            region: "eu-west-1".into(),
            iam: AWSIAMProfileSpec {
                name: "nodes".into(),
                arn: String::new(),
            },
            network_interfaces: vec![nic("subnet-1")],
            tags: BTreeMap::from([
                ("kubernetes.io/cluster/shoot".to_owned(), "1".to_owned()),
                ("kubernetes.io/role/node".to_owned(), "1".to_owned()),
            ]),
            ..Default::default()
        }
    }

    fn ctx(spec: &AWSProviderSpec) -> LaunchContext<'_> {
        LaunchContext {
            machine_name: "worker-a",
            bootstrap_token: None,
            machine_namespace: "shoot--x",
            machine_uid: UID,
            client_token: UID,
            spec,
            user_data: None,
            root_device_name: Some("/dev/xvda"),
            placement_annotation: None,
        }
    }

    fn try_build(ctx: &LaunchContext<'_>) -> Result<RunInstancesInput, LaunchError> {
        let builder = build_run_instances(client().run_instances(), ctx)?;
        Ok(builder.as_input().clone().build().expect("input builds"))
    }

    fn build(ctx: &LaunchContext<'_>) -> RunInstancesInput {
        try_build(ctx).expect("launch request builds")
    }

    fn ebs(input: &RunInstancesInput, i: usize) -> &EbsBlockDevice {
        input.block_device_mappings()[i].ebs().expect("ebs")
    }

    #[test]
    fn identity_fields_and_client_token() {
        let spec = minimal();
        let input = build(&ctx(&spec));
        assert_eq!(input.image_id(), Some("ami-1"));
        assert_eq!(input.instance_type(), Some(&InstanceType::M5Large));
        assert_eq!(input.min_count(), Some(1));
        assert_eq!(input.max_count(), Some(1));
        assert_eq!(input.client_token(), Some(UID));
    }

    #[test]
    fn unset_fields_stay_unset() {
        let spec = minimal();
        let input = build(&ctx(&spec));
        assert!(input.block_device_mappings().is_empty());
        assert_eq!(input.block_device_mappings, None);
        assert_eq!(input.key_name(), None);
        assert_eq!(input.user_data(), None);
        assert_eq!(input.instance_market_options(), None);
        assert_eq!(input.capacity_reservation_specification(), None);
        assert_eq!(input.cpu_options(), None);
        assert_eq!(input.metadata_options(), None);
        assert_eq!(input.placement(), None);
        assert_eq!(input.ebs_optimized(), None);
        assert_eq!(input.monitoring(), None);
        assert_eq!(input.security_group_ids, None);
        assert_eq!(input.subnet_id, None);
        let nic = &input.network_interfaces()[0];
        assert_eq!(nic.associate_public_ip_address(), None);
        assert_eq!(nic.ipv6_address_count(), None);
        assert_eq!(nic.ipv6_prefix_count(), None);
        assert_eq!(nic.primary_ipv6(), None);
        assert_eq!(nic.description(), None);
        assert_eq!(nic.interface_type(), None);
        assert_eq!(nic.network_card_index(), None);

        // Empty option blocks send nothing either.
        let mut spec = minimal();
        spec.key_name = Some(String::new());
        spec.cpu_options = Some(CPUOptions::default());
        spec.instance_metadata_options = Some(InstanceMetadataOptions {
            http_put_response_hop_limit: Some(0),
            ..Default::default()
        });
        spec.placement = Some(AWSPlacementSpec::default());
        spec.capacity_reservation = Some(AWSCapacityReservationTargetSpec::default());
        let input = build(&ctx(&spec));
        assert_eq!(input.key_name(), None);
        assert_eq!(input.cpu_options(), None);
        assert_eq!(input.metadata_options(), None);
        assert_eq!(input.placement(), None);
        assert_eq!(input.capacity_reservation_specification(), None);
        assert_eq!(input.instance_market_options(), None);
    }

    #[test]
    fn root_device_takes_the_ami_root_device_name() {
        let mut spec = minimal();
        spec.block_devices = vec![
            disk("/dev/sdb", VolumeType::Gp2),
            disk(ROOT_DEVICE_NAME, VolumeType::Gp3),
        ];
        let input = build(&ctx(&spec));
        let names: Vec<_> = input
            .block_device_mappings()
            .iter()
            .map(|m| m.device_name().unwrap_or_default())
            .collect();
        assert_eq!(names, ["/dev/sdb", "/dev/xvda"]);
        assert_eq!(ebs(&input, 1).volume_type(), Some(&Ec2VolumeType::Gp3));
        assert_eq!(ebs(&input, 1).volume_size(), Some(50));
        assert!(input.block_device_mappings()[1].no_device().is_none());
        assert!(input.block_device_mappings()[1].virtual_name().is_none());
    }

    #[test]
    fn a_single_device_is_the_root_whatever_its_name() {
        for name in ["/dev/sdf", "", ROOT_DEVICE_NAME] {
            let mut spec = minimal();
            spec.block_devices = vec![disk(name, VolumeType::Gp3)];
            let input = build(&ctx(&spec));
            assert_eq!(
                input.block_device_mappings()[0].device_name(),
                Some("/dev/xvda"),
                "{name:?}"
            );
        }
    }

    #[test]
    fn root_device_without_ami_root_name_is_an_input_error() {
        let mut spec = minimal();
        spec.block_devices = vec![disk(ROOT_DEVICE_NAME, VolumeType::Gp3)];
        let mut c = ctx(&spec);
        c.root_device_name = None;
        let err = try_build(&c).expect_err("no root device name");
        assert!(matches!(
            err,
            LaunchError::MissingRootDeviceName { index: 0, .. }
        ));
        assert!(err.to_string().contains("blockDevices[0].deviceName"));

        spec.block_devices = vec![
            disk(ROOT_DEVICE_NAME, VolumeType::Gp3),
            disk("", VolumeType::Gp2),
        ];
        let err = try_build(&ctx(&spec)).expect_err("empty device name");
        assert!(err.to_string().contains("blockDevices[1].deviceName"));
    }

    #[test]
    fn ebs_fields_are_sent_as_given() {
        let mut spec = minimal();
        let mut root = disk(ROOT_DEVICE_NAME, VolumeType::Io2);
        root.ebs.iops = Some(4000);
        root.ebs.encrypted = Some(true);
        root.ebs.kms_key_id = Some("alias/ebs".into());
        root.ebs.snapshot_id = Some("snap-1".into());
        root.ebs.delete_on_termination = Some(false);
        root.no_device = Some(String::new());
        root.virtual_name = Some("ephemeral0".into());
        let mut data = disk("/dev/sdb", VolumeType::Gp3);
        data.ebs.throughput = Some(250);
        data.ebs.iops = Some(0);
        spec.block_devices = vec![root, data];
        let input = build(&ctx(&spec));

        let root = ebs(&input, 0);
        assert_eq!(root.volume_type(), Some(&Ec2VolumeType::Io2));
        assert_eq!(root.iops(), Some(4000));
        assert_eq!(root.encrypted(), Some(true));
        assert_eq!(root.kms_key_id(), Some("alias/ebs"));
        assert_eq!(root.snapshot_id(), Some("snap-1"));
        assert_eq!(root.delete_on_termination(), Some(false));
        assert_eq!(root.throughput(), None);
        // noDevice / virtualName are never sent.
        assert_eq!(input.block_device_mappings()[0].no_device(), None);
        assert_eq!(input.block_device_mappings()[0].virtual_name(), None);

        let data = ebs(&input, 1);
        assert_eq!(data.throughput(), Some(250));
        assert_eq!(data.iops(), None, "iops 0 means unset");
        assert_eq!(data.encrypted(), None);
        assert_eq!(data.kms_key_id(), None);
        assert_eq!(data.snapshot_id(), None);
    }

    #[test]
    fn delete_on_termination_defaults_to_true() {
        let mut spec = minimal();
        spec.block_devices = vec![disk(ROOT_DEVICE_NAME, VolumeType::Gp3)];
        spec.network_interfaces = vec![nic("subnet-1"), nic("subnet-2")];
        spec.network_interfaces[1].delete_on_termination = Some(false);
        let input = build(&ctx(&spec));
        assert_eq!(ebs(&input, 0).delete_on_termination(), Some(true));
        let nics = input.network_interfaces();
        assert_eq!(nics[0].delete_on_termination(), Some(true));
        assert_eq!(nics[1].delete_on_termination(), Some(false));
    }

    #[test]
    fn network_interfaces_and_device_index_defaults() {
        let mut spec = minimal();
        let mut primary = nic("subnet-1");
        primary.security_group_ids = vec!["sg-1".into(), "sg-2".into()];
        primary.associate_public_ip_address = Some(true);
        primary.description = Some("primary".into());
        primary.interface_type = Some(InterfaceType::Efa);
        let mut second = nic("subnet-2");
        second.ipv6_address_count = Some(2);
        second.ipv6_prefix_count = Some(1);
        let mut efa = nic("subnet-3");
        efa.network_card_index = Some(1);
        efa.device_index = Some(0);
        efa.interface_type = Some(InterfaceType::EfaOnly);
        efa.ipv6_address_count = Some(1);
        efa.primary_ipv6 = Some(false);
        spec.network_interfaces = vec![primary, second, efa];
        let input = build(&ctx(&spec));
        let nics = input.network_interfaces();

        assert_eq!(nics[0].device_index(), Some(0));
        assert_eq!(nics[0].subnet_id(), Some("subnet-1"));
        assert_eq!(nics[0].groups(), ["sg-1", "sg-2"]);
        assert_eq!(nics[0].associate_public_ip_address(), Some(true));
        assert_eq!(nics[0].description(), Some("primary"));
        assert_eq!(nics[0].interface_type(), Some("efa"));

        assert_eq!(nics[1].device_index(), Some(1), "position");
        assert_eq!(nics[1].ipv6_address_count(), Some(2));
        assert_eq!(
            nics[1].primary_ipv6(),
            Some(true),
            "MCM: IPv6 addresses → primary"
        );
        assert_eq!(
            nics[1].ipv6_prefix_count(),
            None,
            "prefixes come after launch"
        );

        assert_eq!(nics[2].device_index(), Some(0), "explicit");
        assert_eq!(nics[2].network_card_index(), Some(1));
        assert_eq!(nics[2].interface_type(), Some("efa-only"));
        assert_eq!(nics[2].primary_ipv6(), Some(false), "explicit wins");
    }

    #[test]
    fn iam_profile_by_name_or_arn() {
        let spec = minimal();
        let profile = build(&ctx(&spec)).iam_instance_profile().cloned();
        assert_eq!(profile.as_ref().and_then(|p| p.name()), Some("nodes"));
        assert_eq!(profile.as_ref().and_then(|p| p.arn()), None);

        let mut spec = minimal();
        spec.iam = AWSIAMProfileSpec {
            name: String::new(),
            arn: "arn:aws:iam::1:instance-profile/x".into(),
        };
        let profile = build(&ctx(&spec)).iam_instance_profile().cloned();
        assert_eq!(profile.as_ref().and_then(|p| p.name()), None);
        assert_eq!(
            profile.as_ref().and_then(|p| p.arn()),
            Some("arn:aws:iam::1:instance-profile/x")
        );

        spec.iam.arn.clear();
        assert_eq!(build(&ctx(&spec)).iam_instance_profile(), None);
    }

    #[test]
    fn key_name_is_sent_when_set() {
        let mut spec = minimal();
        spec.key_name = Some("ops".into());
        assert_eq!(build(&ctx(&spec)).key_name(), Some("ops"));
    }

    #[test]
    fn user_data_is_base64_with_machine_name() {
        let spec = minimal();
        let mut c = ctx(&spec);
        let raw = b"#!/bin/sh\nhostname <<MACHINE_NAME>>; echo <<MACHINE_NAME>>\n";
        c.user_data = Some(raw);
        let input = build(&c);
        let decoded = BASE64
            .decode(input.user_data().expect("user data"))
            .expect("base64");
        assert_eq!(decoded, b"#!/bin/sh\nhostname worker-a; echo worker-a\n");

        // Binary user data without the placeholder passes through unchanged.
        let binary = [0x1f, 0x8b, 0x08, 0x00, 0xff, b'<', b'<'];
        c.user_data = Some(&binary);
        let decoded = BASE64
            .decode(build(&c).user_data().expect("user data"))
            .expect("base64");
        assert_eq!(decoded, binary);

        // Empty user data is not sent.
        c.user_data = Some(b"");
        assert_eq!(build(&c).user_data(), None);

        let big = vec![b'x'; MAX_USER_DATA_BYTES + 1];
        c.user_data = Some(&big);
        let err = try_build(&c).expect_err("too large");
        assert!(err.to_string().contains("userData"));
    }

    #[test]
    fn user_data_carries_the_bootstrap_token_and_is_measured_after_substitution() {
        let spec = minimal();
        let mut c = ctx(&spec);
        let token = SecretString::new("abc123.0123456789abcdef");
        c.bootstrap_token = Some(&token);
        let raw = b"kubeadm join --token <<BOOTSTRAP_TOKEN>> --node-name <<MACHINE_NAME>>";
        c.user_data = Some(raw);
        let decoded = BASE64
            .decode(build(&c).user_data().expect("user data"))
            .expect("base64");
        assert_eq!(
            decoded,
            b"kubeadm join --token abc123.0123456789abcdef --node-name worker-a"
        );

        // 16 KiB before substitution, more after: rejected.
        let placeholder = b"<<BOOTSTRAP_TOKEN>>";
        let mut fits_raw = vec![b'x'; MAX_USER_DATA_BYTES - placeholder.len()];
        fits_raw.extend_from_slice(placeholder);
        assert_eq!(fits_raw.len(), MAX_USER_DATA_BYTES);
        c.user_data = Some(&fits_raw);
        let err = try_build(&c).expect_err("too large once the token is in");
        assert!(
            err.to_string()
                .contains(&format!("{} bytes", MAX_USER_DATA_BYTES + 4)),
            "{err}"
        );
    }

    #[test]
    fn tags_on_instance_volume_and_interface() {
        let mut spec = minimal();
        spec.tags.insert("Name".into(), "ignored".into());
        spec.tags
            .insert(tags::MACHINE_UID_TAG.into(), "forged".into());
        spec.tags.insert("team".into(), "infra".into());
        let input = build(&ctx(&spec));
        let specs = input.tag_specifications();
        let resources: Vec<_> = specs.iter().filter_map(|s| s.resource_type()).collect();
        assert_eq!(
            resources,
            [
                &ResourceType::Instance,
                &ResourceType::Volume,
                &ResourceType::NetworkInterface
            ]
        );
        for spec in specs {
            let tags: BTreeMap<_, _> = spec
                .tags()
                .iter()
                .map(|t| (t.key().unwrap_or_default(), t.value().unwrap_or_default()))
                .collect();
            assert_eq!(
                tags,
                BTreeMap::from([
                    ("Name", "worker-a"),
                    (tags::MACHINE_UID_TAG, UID),
                    (tags::MACHINE_NAME_TAG, "shoot--x/worker-a"),
                    ("kubernetes.io/cluster/shoot", "1"),
                    ("kubernetes.io/role/node", "1"),
                    ("team", "infra"),
                ])
            );
            assert_eq!(spec.tags().len(), 6, "no duplicate keys");
        }
    }

    #[test]
    fn spot_price_set_is_the_max_price() {
        let mut spec = minimal();
        spec.spot_price = Some("0.05".into());
        let input = build(&ctx(&spec));
        let market = input.instance_market_options().expect("market options");
        assert_eq!(market.market_type(), Some(&Ec2MarketType::Spot));
        let spot = market.spot_options().expect("spot options");
        assert_eq!(spot.spot_instance_type(), Some(&SpotInstanceType::OneTime));
        assert_eq!(spot.max_price(), Some("0.05"));
    }

    #[test]
    fn empty_spot_price_or_spot_market_means_on_demand_cap() {
        let mut by_price = minimal();
        by_price.spot_price = Some(String::new());
        let mut by_market = minimal();
        by_market.instance_market_options = Some(InstanceMarketOptions {
            market_type: MarketType::Spot,
        });
        for spec in [by_price, by_market] {
            let input = build(&ctx(&spec));
            let market = input.instance_market_options().expect("market options");
            assert_eq!(market.market_type(), Some(&Ec2MarketType::Spot));
            let spot = market.spot_options().expect("spot options");
            assert_eq!(spot.spot_instance_type(), Some(&SpotInstanceType::OneTime));
            assert_eq!(spot.max_price(), None);
        }
    }

    #[test]
    fn capacity_block_and_capacity_reservation() {
        let mut spec = minimal();
        spec.capacity_reservation = Some(AWSCapacityReservationTargetSpec {
            capacity_reservation_id: Some("cr-1".into()),
            is_ml_capacity_block: Some(true),
            ..Default::default()
        });
        let input = build(&ctx(&spec));
        let market = input.instance_market_options().expect("market options");
        assert_eq!(market.market_type(), Some(&Ec2MarketType::CapacityBlock));
        assert_eq!(market.spot_options(), None);
        let reservation = input
            .capacity_reservation_specification()
            .expect("reservation");
        assert_eq!(reservation.capacity_reservation_preference(), None);
        let target = reservation.capacity_reservation_target().expect("target");
        assert_eq!(target.capacity_reservation_id(), Some("cr-1"));
        assert_eq!(target.capacity_reservation_resource_group_arn(), None);

        spec.capacity_reservation = Some(AWSCapacityReservationTargetSpec {
            capacity_reservation_resource_group_arn: Some("arn:group".into()),
            ..Default::default()
        });
        let input = build(&ctx(&spec));
        assert_eq!(input.instance_market_options(), None);
        let target = input
            .capacity_reservation_specification()
            .and_then(|r| r.capacity_reservation_target())
            .expect("target");
        assert_eq!(
            target.capacity_reservation_resource_group_arn(),
            Some("arn:group")
        );

        spec.capacity_reservation = Some(AWSCapacityReservationTargetSpec {
            capacity_reservation_preference: Some(SpecPreference::CapacityReservationsOnly),
            ..Default::default()
        });
        let reservation = build(&ctx(&spec))
            .capacity_reservation_specification()
            .cloned()
            .expect("reservation");
        assert_eq!(
            reservation.capacity_reservation_preference(),
            Some(&CapacityReservationPreference::CapacityReservationsOnly)
        );
        assert_eq!(reservation.capacity_reservation_target(), None);
    }

    #[test]
    fn spot_and_capacity_block_conflict() {
        let mut spec = minimal();
        spec.spot_price = Some(String::new());
        spec.capacity_reservation = Some(AWSCapacityReservationTargetSpec {
            capacity_reservation_id: Some("cr-1".into()),
            is_ml_capacity_block: Some(true),
            ..Default::default()
        });
        let err = try_build(&ctx(&spec)).expect_err("conflict");
        assert!(matches!(err, LaunchError::ConflictingMarketOptions));
    }

    #[test]
    fn cpu_metadata_ebs_optimized_and_monitoring() {
        let mut spec = minimal();
        spec.cpu_options = Some(CPUOptions {
            core_count: Some(2),
            threads_per_core: Some(1),
            amd_sev_snp: Some(FeatureState::Enabled),
        });
        spec.instance_metadata_options = Some(InstanceMetadataOptions {
            http_endpoint: Some(FeatureState::Enabled),
            http_put_response_hop_limit: Some(2),
            http_tokens: Some(HttpTokens::Required),
            http_protocol_ipv6: Some(FeatureState::Disabled),
        });
        spec.ebs_optimized = Some(true);
        spec.monitoring = Some(false);
        let input = build(&ctx(&spec));

        let cpu = input.cpu_options().expect("cpu options");
        assert_eq!(cpu.core_count(), Some(2));
        assert_eq!(cpu.threads_per_core(), Some(1));
        assert_eq!(cpu.amd_sev_snp(), Some(&AmdSevSnpSpecification::Enabled));

        let imds = input.metadata_options().expect("metadata options");
        assert_eq!(
            imds.http_endpoint(),
            Some(&InstanceMetadataEndpointState::Enabled)
        );
        assert_eq!(imds.http_put_response_hop_limit(), Some(2));
        assert_eq!(imds.http_tokens(), Some(&HttpTokensState::Required));
        assert_eq!(
            imds.http_protocol_ipv6(),
            Some(&InstanceMetadataProtocolState::Disabled)
        );

        assert_eq!(input.ebs_optimized(), Some(true));
        assert_eq!(input.monitoring().and_then(|m| m.enabled()), Some(false));

        // Only what is set: a hop limit of 0 is unset.
        spec.instance_metadata_options = Some(InstanceMetadataOptions {
            http_tokens: Some(HttpTokens::Optional),
            http_put_response_hop_limit: Some(0),
            ..Default::default()
        });
        spec.cpu_options = Some(CPUOptions {
            amd_sev_snp: Some(FeatureState::Disabled),
            ..Default::default()
        });
        let input = build(&ctx(&spec));
        let imds = input.metadata_options().expect("metadata options");
        assert_eq!(imds.http_put_response_hop_limit(), None);
        assert_eq!(imds.http_endpoint(), None);
        assert_eq!(imds.http_tokens(), Some(&HttpTokensState::Optional));
        let cpu = input.cpu_options().expect("cpu options");
        assert_eq!(cpu.core_count(), None);
        assert_eq!(cpu.threads_per_core(), None);
    }

    #[test]
    fn placement_from_annotation() {
        let spec = minimal();
        let mut c = ctx(&spec);
        c.placement_annotation = Some(
            r#"{"availabilityZone":"eu-west-1a","Tenancy":"host","hostId":"h-1",
                "affinity":"host","partitionNumber":null,"groupName":"","unknown":1}"#,
        );
        let input = build(&c);
        let placement = input.placement().expect("placement");
        assert_eq!(placement.availability_zone(), Some("eu-west-1a"));
        assert_eq!(placement.tenancy(), Some(&Ec2Tenancy::Host));
        assert_eq!(placement.host_id(), Some("h-1"));
        assert_eq!(placement.affinity(), Some("host"));
        assert_eq!(placement.partition_number(), None);
        assert_eq!(placement.group_name(), None);

        for nothing in ["", "  ", "null", "{}", r#"{"unknown":"x"}"#] {
            c.placement_annotation = Some(nothing);
            assert_eq!(build(&c).placement(), None, "{nothing:?}");
        }
    }

    #[test]
    fn spec_placement_wins_over_annotation() {
        let mut spec = minimal();
        spec.placement = Some(AWSPlacementSpec {
            group_id: Some("pg-1".into()),
            tenancy: Some(Tenancy::Host),
            host_id: Some("h-2".into()),
            partition_number: Some(3),
            affinity: Some(Affinity::Default),
        });
        let mut c = ctx(&spec);
        // Not even parsed: the spec decides.
        c.placement_annotation = Some("not json");
        let input = build(&c);
        let placement = input.placement().expect("placement");
        assert_eq!(placement.group_id(), Some("pg-1"));
        assert_eq!(placement.tenancy(), Some(&Ec2Tenancy::Host));
        assert_eq!(placement.host_id(), Some("h-2"));
        assert_eq!(placement.partition_number(), Some(3));
        assert_eq!(placement.affinity(), Some("default"));
        assert_eq!(placement.availability_zone(), None);
    }

    #[test]
    fn malformed_placement_annotation_is_an_input_error() {
        let spec = minimal();
        for bad in [
            "{",
            "[]",
            r#"{"availabilityZone":1}"#,
            r#"{"partitionNumber":"2"}"#,
            r#"{"partitionNumber":2.5}"#,
            r#"{"partitionNumber":4294967296}"#,
            r#"{"tenancy":"shared"}"#,
            r#"{"hostId":"h-1","HostId":"h-2"}"#,
        ] {
            let mut c = ctx(&spec);
            c.placement_annotation = Some(bad);
            let err = try_build(&c).expect_err(bad);
            assert!(
                err.to_string().contains(PLACEMENT_ANNOTATION),
                "{bad}: {err}"
            );
            assert_eq!(err.category(), "invalid_placement_annotation");
        }
    }

    fn instance_with(
        source_dest_check: Option<bool>,
        nics: Vec<InstanceNetworkInterface>,
    ) -> Instance {
        Instance::builder()
            .set_source_dest_check(source_dest_check)
            .set_network_interfaces(Some(nics))
            .build()
    }

    fn attached(
        id: &str,
        card: Option<i32>,
        device: i32,
        prefixes: usize,
    ) -> InstanceNetworkInterface {
        InstanceNetworkInterface::builder()
            .network_interface_id(id)
            .attachment(
                InstanceNetworkInterfaceAttachment::builder()
                    .set_network_card_index(card)
                    .device_index(device)
                    .build(),
            )
            .set_ipv6_prefixes(Some(
                (0..prefixes)
                    .map(|i| {
                        InstanceIpv6Prefix::builder()
                            .ipv6_prefix(format!("2001:db8:{i}::/80"))
                            .build()
                    })
                    .collect(),
            ))
            .build()
    }

    #[test]
    fn post_launch_disables_source_dest_check_once() {
        assert!(post_launch_actions(&minimal()).is_empty());

        let mut spec = minimal();
        spec.src_and_dst_checks_enabled = Some(true);
        assert!(post_launch_actions(&spec).is_empty());

        spec.src_and_dst_checks_enabled = Some(false);
        let post = post_launch_actions(&spec);
        assert!(post.disable_src_dst_check);
        for unknown_or_on in [None, Some(true)] {
            let instance = instance_with(unknown_or_on, vec![]);
            assert_eq!(
                post.pending(&PostLaunchState::from(&instance)),
                [PostLaunchAction::DisableSourceDestCheck]
            );
            assert!(!post.is_complete(&PostLaunchState::from(&instance)));
        }
        let done = instance_with(Some(false), vec![]);
        assert!(post.pending(&PostLaunchState::from(&done)).is_empty());
        assert!(post.is_complete(&PostLaunchState::from(&done)));
    }

    #[test]
    fn post_launch_assigns_missing_ipv6_prefixes() {
        let mut spec = minimal();
        let mut second = nic("subnet-2");
        second.ipv6_prefix_count = Some(2);
        let mut on_card_one = nic("subnet-3");
        on_card_one.network_card_index = Some(1);
        on_card_one.device_index = Some(0);
        on_card_one.ipv6_prefix_count = Some(1);
        let mut zero = nic("subnet-4");
        zero.ipv6_prefix_count = Some(0);
        spec.network_interfaces = vec![nic("subnet-1"), second, on_card_one, zero];
        let post = post_launch_actions(&spec);
        assert!(!post.disable_src_dst_check);
        assert_eq!(
            post.ipv6_prefixes,
            [
                Ipv6PrefixTarget {
                    interface: 1,
                    network_card_index: 0,
                    device_index: 1,
                    prefix_count: 2
                },
                Ipv6PrefixTarget {
                    interface: 2,
                    network_card_index: 1,
                    device_index: 0,
                    prefix_count: 1
                },
            ]
        );

        let fresh = instance_with(
            Some(true),
            vec![
                attached("eni-0", None, 0, 0),
                attached("eni-1", Some(0), 1, 1),
                attached("eni-2", Some(1), 0, 0),
            ],
        );
        assert_eq!(
            post.pending(&PostLaunchState::from(&fresh)),
            [
                PostLaunchAction::AssignIpv6Prefixes {
                    interface: 1,
                    network_interface_id: "eni-1".into(),
                    count: 1
                },
                PostLaunchAction::AssignIpv6Prefixes {
                    interface: 2,
                    network_interface_id: "eni-2".into(),
                    count: 1
                },
            ]
        );

        let done = instance_with(
            Some(true),
            vec![
                attached("eni-0", None, 0, 0),
                attached("eni-1", None, 1, 3),
                attached("eni-2", Some(1), 0, 1),
            ],
        );
        assert!(
            post.pending(&PostLaunchState::from(&done)).is_empty(),
            "never a negative count"
        );
        assert!(post.is_complete(&PostLaunchState::from(&done)));

        let not_attached = instance_with(Some(true), vec![attached("eni-0", None, 0, 0)]);
        assert!(
            post.pending(&PostLaunchState::from(&not_attached))
                .is_empty()
        );
        assert!(!post.is_complete(&PostLaunchState::from(&not_attached)));
    }
}
