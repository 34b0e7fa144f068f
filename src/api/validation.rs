//! Validation the CRD schema cannot express: mutual exclusions, the cluster
//! and role tags, the `/root` device rule, iops for provisioned-IOPS volumes,
//! and the Secret keys.
//!
//! Pure functions, no client: they return every violation with its field path
//! (`providerSpec.blockDevices[1].ebs.iops`) so the controller can put all of
//! them in one status condition and Event. The rules follow MCM's
//! `pkg/aws/apis/validation/validation.go`, including those the schema also
//! enforces (a MachineClass may predate the CRD schema), plus EC2 rules that
//! MCM left for EC2 to reject at launch time.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use k8s_openapi::ByteString;

use crate::aws::tags::{MACHINE_NAME_TAG, MACHINE_UID_TAG, NAME_TAG};

use super::provider_spec::{
    AWSBlockDeviceMappingSpec, AWSCapacityReservationTargetSpec, AWSNetworkInterfaceSpec,
    AWSPlacementSpec, AWSProviderSpec, Affinity, CLUSTER_TAG_PREFIX, CPUOptions,
    InstanceMetadataOptions, MarketType, ROLE_TAG_PREFIX, ROOT_DEVICE_NAME, Tenancy,
};

/// Root of every provider spec field path.
const SPEC: &str = "providerSpec";
/// Root of every secret field path: the merged data of `secretRef` and
/// `credentialsSecretRef`.
const SECRET: &str = "secret.data";

/// What is wrong with a field; rendered like Kubernetes' `field.ErrorType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FieldErrorKind {
    /// A required value is missing or empty.
    Required,
    /// The value is malformed or out of range.
    Invalid,
    /// The value must be unique but is used more than once.
    Duplicate,
    /// The field must not be set in this combination.
    Forbidden,
}

impl fmt::Display for FieldErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Required => "Required value",
            Self::Invalid => "Invalid value",
            Self::Duplicate => "Duplicate value",
            Self::Forbidden => "Forbidden",
        })
    }
}

/// One violation: `providerSpec.iam: Invalid value: exactly one of name or arn must be set`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {kind}: {message}")]
pub struct FieldError {
    /// JSON path of the offending field, e.g. `providerSpec.blockDevices[1].ebs.iops`.
    pub path: String,
    /// Class of the violation.
    pub kind: FieldErrorKind,
    /// What is wrong and what to do, for users.
    pub message: String,
}

impl FieldError {
    fn new(path: impl Into<String>, kind: FieldErrorKind, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            kind,
            message: message.into(),
        }
    }
}

/// Collects errors; keeps the rule functions short.
#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn required(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0
            .push(FieldError::new(path, FieldErrorKind::Required, message));
    }
    fn invalid(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0
            .push(FieldError::new(path, FieldErrorKind::Invalid, message));
    }
    fn duplicate(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0
            .push(FieldError::new(path, FieldErrorKind::Duplicate, message));
    }
    fn forbidden(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0
            .push(FieldError::new(path, FieldErrorKind::Forbidden, message));
    }
}

/// Checks an [`AWSProviderSpec`] for everything the CRD schema cannot (or,
/// for objects created before the schema was installed, did not) enforce.
/// Returns every violation, in field order; empty means valid.
pub fn validate_provider_spec(spec: &AWSProviderSpec) -> Vec<FieldError> {
    let mut errs = Errors::default();

    if spec.ami.is_empty() {
        errs.required(format!("{SPEC}.ami"), "the AMI ID is required");
    }
    if spec.machine_type.is_empty() {
        errs.required(
            format!("{SPEC}.machineType"),
            "the EC2 instance type is required",
        );
    }
    if spec.region.is_empty() {
        errs.required(format!("{SPEC}.region"), "the AWS region is required");
    }
    if spec.iam.name.is_empty() == spec.iam.arn.is_empty() {
        errs.invalid(
            format!("{SPEC}.iam"),
            "exactly one of name or arn must be set",
        );
    }
    validate_block_devices(&spec.block_devices, &mut errs);
    validate_capacity_reservation(spec, &mut errs);
    validate_network_interfaces(&spec.network_interfaces, &mut errs);
    validate_spot_price(spec, &mut errs);
    validate_tags(&spec.tags, &mut errs);
    if let Some(imds) = &spec.instance_metadata_options {
        validate_instance_metadata(imds, &mut errs);
    }
    if let Some(cpu) = &spec.cpu_options {
        validate_cpu_options(cpu, &mut errs);
    }
    if let Some(placement) = &spec.placement {
        validate_placement(placement, &mut errs);
    }
    errs.0
}

/// MCM's data device name format, `^/dev/(sd[a-z]|xvd[a-c][a-z]?)$`, without
/// pulling in a regex engine.
pub fn is_data_device_name(name: &str) -> bool {
    let is_lower = |b: u8| b.is_ascii_lowercase();
    if let Some(rest) = name.strip_prefix("/dev/sd") {
        return matches!(rest.as_bytes(), [c] if is_lower(*c));
    }
    if let Some(rest) = name.strip_prefix("/dev/xvd") {
        return match rest.as_bytes() {
            [c] => (b'a'..=b'c').contains(c),
            [c, d] => (b'a'..=b'c').contains(c) && is_lower(*d),
            _ => false,
        };
    }
    false
}

fn validate_block_devices(devices: &[AWSBlockDeviceMappingSpec], errs: &mut Errors) {
    let base = format!("{SPEC}.blockDevices");
    let several = devices.len() > 1;
    let mut seen = BTreeSet::new();
    let mut roots = 0;

    for (i, device) in devices.iter().enumerate() {
        let path = format!("{base}[{i}]");
        let name = device.device_name.as_str();
        if name == ROOT_DEVICE_NAME {
            roots += 1;
        } else if several && !is_data_device_name(name) {
            errs.invalid(
                format!("{path}.deviceName"),
                format!(
                    "{name:?} must be {ROOT_DEVICE_NAME} (the root volume) or match \
                     ^/dev/(sd[a-z]|xvd[a-c][a-z]?)$ when several block devices are given"
                ),
            );
        }
        if !seen.insert(name) {
            let message = if name == ROOT_DEVICE_NAME {
                format!("only one block device can be the root device ({ROOT_DEVICE_NAME})")
            } else {
                format!("device name {name:?} is used more than once")
            };
            errs.duplicate(format!("{path}.deviceName"), message);
        }

        let ebs = &device.ebs;
        let volume_type = ebs.volume_type;
        if ebs.volume_size <= 0 {
            errs.invalid(
                format!("{path}.ebs.volumeSize"),
                "volume size must be at least 1 GiB",
            );
        }
        match ebs.iops {
            Some(iops) if iops < 0 => {
                errs.invalid(format!("{path}.ebs.iops"), "iops must not be negative")
            }
            Some(iops) if iops > 0 && !volume_type.accepts_iops() => errs.forbidden(
                format!("{path}.ebs.iops"),
                format!(
                    "iops can only be set for io1, io2 and gp3 volumes, not {}",
                    volume_type.as_str()
                ),
            ),
            None | Some(0) if volume_type.requires_iops() => errs.required(
                format!("{path}.ebs.iops"),
                format!(
                    "iops (greater than 0) is required for {} volumes",
                    volume_type.as_str()
                ),
            ),
            _ => {}
        }
        match ebs.throughput {
            Some(throughput) if throughput <= 0 => errs.invalid(
                format!("{path}.ebs.throughput"),
                "throughput must be a positive number of MiB/s",
            ),
            Some(_) if !volume_type.accepts_throughput() => errs.forbidden(
                format!("{path}.ebs.throughput"),
                format!(
                    "throughput can only be set for gp3 volumes, not {}",
                    volume_type.as_str()
                ),
            ),
            _ => {}
        }
        let has_kms_key = ebs.kms_key_id.as_deref().is_some_and(|k| !k.is_empty());
        if has_kms_key && ebs.encrypted != Some(true) {
            errs.required(
                format!("{path}.ebs.encrypted"),
                "encrypted must be true when kmsKeyID is set",
            );
        }
    }

    // A single device is the root volume whatever its name (MCM's backward
    // compatibility); with several, exactly one must say so.
    if several && roots == 0 {
        errs.required(
            base,
            format!("exactly one block device must have deviceName {ROOT_DEVICE_NAME}"),
        );
    }
}

fn validate_capacity_reservation(spec: &AWSProviderSpec, errs: &mut Errors) {
    let base = format!("{SPEC}.capacityReservation");
    let target = spec.capacity_reservation.as_ref();
    if let Some(AWSCapacityReservationTargetSpec {
        capacity_reservation_preference: preference,
        capacity_reservation_id: id,
        capacity_reservation_resource_group_arn: arn,
        ..
    }) = target
    {
        if preference.is_some() {
            if id.is_some() {
                errs.forbidden(
                    format!("{base}.capacityReservationId"),
                    "must not be set together with capacityReservationPreference",
                );
            }
            if arn.is_some() {
                errs.forbidden(
                    format!("{base}.capacityReservationResourceGroupArn"),
                    "must not be set together with capacityReservationPreference",
                );
            }
        } else if id.is_some() && arn.is_some() {
            errs.forbidden(
                format!("{base}.capacityReservationResourceGroupArn"),
                "must not be set together with capacityReservationId; use one of them",
            );
        }
    }

    // Capacity Blocks for ML: MCM's isMLCapacityBlock or our marketType.
    let ml_block = target.is_some_and(|t| t.is_ml_capacity_block == Some(true));
    let market = spec.instance_market_options.as_ref().map(|m| m.market_type);
    if ml_block && market == Some(MarketType::Spot) {
        errs.invalid(
            format!("{SPEC}.instanceMarketOptions.marketType"),
            "must not be spot when capacityReservation.isMLCapacityBlock is true",
        );
    }
    let capacity_block = ml_block || market == Some(MarketType::CapacityBlock);
    if capacity_block {
        if spec.spot_price.is_some() {
            errs.forbidden(
                format!("{SPEC}.spotPrice"),
                "a Capacity Block instance cannot be a Spot Instance; remove spotPrice",
            );
        }
        if target
            .and_then(|t| t.capacity_reservation_id.as_ref())
            .is_none()
        {
            errs.required(
                format!("{base}.capacityReservationId"),
                "a Capacity Block for ML is launched into by its capacity reservation ID",
            );
        }
    }
}

fn validate_network_interfaces(interfaces: &[AWSNetworkInterfaceSpec], errs: &mut Errors) {
    let base = format!("{SPEC}.networkInterfaces");
    if interfaces.is_empty() {
        errs.required(base, "at least one network interface is required");
        return;
    }
    let mut slots = BTreeSet::new();
    for (i, nic) in interfaces.iter().enumerate() {
        let path = format!("{base}[{i}]");
        if nic.subnet_id.is_empty() {
            errs.required(format!("{path}.subnetID"), "the subnet ID is required");
        }
        if nic.security_group_ids.is_empty() {
            errs.required(
                format!("{path}.securityGroupIDs"),
                "at least one security group ID is required",
            );
        }
        for (j, group) in nic.security_group_ids.iter().enumerate() {
            if group.is_empty() {
                errs.required(
                    format!("{path}.securityGroupIDs[{j}]"),
                    "security group IDs must not be empty",
                );
            }
        }
        for (field, value) in [
            ("ipv6AddressCount", nic.ipv6_address_count),
            ("ipv6PrefixCount", nic.ipv6_prefix_count),
            ("networkCardIndex", nic.network_card_index),
            ("deviceIndex", nic.device_index),
        ] {
            if value.is_some_and(|v| v < 0) {
                errs.invalid(format!("{path}.{field}"), "must not be negative");
            }
        }
        let card = nic.network_card_index.unwrap_or(0);
        let device = nic
            .device_index
            .unwrap_or_else(|| i32::try_from(i).unwrap_or(i32::MAX));
        if !slots.insert((card, device)) {
            errs.duplicate(
                format!("{path}.deviceIndex"),
                format!(
                    "device index {device} on network card {card} is used by another \
                     interface (deviceIndex defaults to the interface's position)"
                ),
            );
        }
        if interfaces.len() > 1 && nic.associate_public_ip_address.is_some() {
            errs.forbidden(
                format!("{path}.associatePublicIPAddress"),
                "EC2 does not accept associatePublicIPAddress when launching with \
                 several network interfaces",
            );
        }
    }
}

/// EC2 takes a decimal string as the Spot maximum price; "" means no maximum.
fn is_spot_price(price: &str) -> bool {
    let (whole, fraction) = price.split_once('.').unwrap_or((price, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    digits(whole)
        && digits(fraction)
        && !(whole.is_empty() && fraction.is_empty())
        && !(price.contains('.') && fraction.is_empty())
}

fn validate_spot_price(spec: &AWSProviderSpec, errs: &mut Errors) {
    if let Some(price) = spec.spot_price.as_deref()
        && !price.is_empty()
        && !is_spot_price(price)
    {
        errs.invalid(
            format!("{SPEC}.spotPrice"),
            format!(
                "{price:?} is not a price: use a decimal number of USD per hour such as \
                 \"0.05\", or \"\" for no maximum"
            ),
        );
    }
}

/// EC2's limit of tags on one resource (instance, volume, interface).
pub const MAX_TAGS_PER_RESOURCE: usize = 50;

/// The tags the operator puts on every instance besides the class's
/// (`Name`, `machine.sapcloud.io/machine-uid`, `machine.sapcloud.io/machine`).
const OPERATOR_TAGS: [&str; 3] = [NAME_TAG, MACHINE_UID_TAG, MACHINE_NAME_TAG];

fn validate_tags(tags: &BTreeMap<String, String>, errs: &mut Errors) {
    let base = format!("{SPEC}.tags");
    // MCM's lookup: a key counts as the role tag only if it is not a cluster tag.
    let cluster = tags.keys().any(|k| k.contains(CLUSTER_TAG_PREFIX));
    let role = tags
        .keys()
        .any(|k| !k.contains(CLUSTER_TAG_PREFIX) && k.contains(ROLE_TAG_PREFIX));
    if !cluster {
        errs.required(
            base.clone(),
            format!(
                "a tag whose key contains {CLUSTER_TAG_PREFIX} is required \
                 (e.g. {CLUSTER_TAG_PREFIX}<cluster-name>: \"1\")"
            ),
        );
    }
    if !role {
        errs.required(
            base.clone(),
            format!(
                "a tag whose key contains {ROLE_TAG_PREFIX} is required \
                 (e.g. {ROLE_TAG_PREFIX}node: \"1\")"
            ),
        );
    }
    // EC2's tag limits: 50 tags per resource, the operator's own included.
    let own = OPERATOR_TAGS.len();
    let user = tags
        .keys()
        .filter(|k| !OPERATOR_TAGS.contains(&k.as_str()))
        .count();
    if user + own > MAX_TAGS_PER_RESOURCE {
        errs.invalid(
            base.clone(),
            format!(
                "at most {} tags: EC2 allows {MAX_TAGS_PER_RESOURCE} per resource and the \
                 operator adds {} itself (found {user})",
                MAX_TAGS_PER_RESOURCE - own,
                OPERATOR_TAGS.join(", ")
            ),
        );
    }
    for (key, value) in tags {
        let path = format!("{base}[{key}]");
        if key.is_empty() || key.chars().count() > 128 {
            errs.invalid(path.clone(), "tag keys must be 1 to 128 characters long");
        }
        if key.to_ascii_lowercase().starts_with("aws:") {
            errs.invalid(
                path.clone(),
                "tag keys starting with aws: are reserved by AWS",
            );
        }
        if value.chars().count() > 256 {
            errs.invalid(path, "tag values must be at most 256 characters long");
        }
    }
}

fn validate_instance_metadata(imds: &InstanceMetadataOptions, errs: &mut Errors) {
    if let Some(limit) = imds.http_put_response_hop_limit
        && !(0..=64).contains(&limit)
    {
        errs.invalid(
            format!("{SPEC}.instanceMetadataOptions.httpPutResponseHopLimit"),
            "must be between 0 and 64",
        );
    }
}

fn validate_cpu_options(cpu: &CPUOptions, errs: &mut Errors) {
    let base = format!("{SPEC}.cpuOptions");
    match (cpu.core_count, cpu.threads_per_core) {
        (Some(_), None) => errs.required(
            format!("{base}.threadsPerCore"),
            "threadsPerCore must be set together with coreCount",
        ),
        (None, Some(_)) => errs.required(
            format!("{base}.coreCount"),
            "coreCount must be set together with threadsPerCore",
        ),
        // MCM requires both; we also accept cpuOptions with only amdSevSnp.
        (None, None) if cpu.amd_sev_snp.is_none() => {
            errs.required(
                format!("{base}.coreCount"),
                "set coreCount and threadsPerCore (or amdSevSnp), or remove cpuOptions",
            );
            errs.required(
                format!("{base}.threadsPerCore"),
                "set coreCount and threadsPerCore (or amdSevSnp), or remove cpuOptions",
            );
        }
        _ => {}
    }
    if cpu.core_count.is_some_and(|c| c < 1) {
        errs.invalid(format!("{base}.coreCount"), "must be at least 1");
    }
    if cpu.threads_per_core.is_some_and(|t| !(1..=2).contains(&t)) {
        errs.invalid(
            format!("{base}.threadsPerCore"),
            "must be 1 (no simultaneous multithreading) or 2",
        );
    }
}

fn validate_placement(placement: &AWSPlacementSpec, errs: &mut Errors) {
    let base = format!("{SPEC}.placement");
    let on_host = placement.tenancy == Some(Tenancy::Host);
    if placement.host_id.is_some() && !on_host {
        errs.forbidden(
            format!("{base}.hostId"),
            "a Dedicated Host ID requires tenancy: host",
        );
    }
    if placement.affinity == Some(Affinity::Host) && !on_host {
        errs.forbidden(
            format!("{base}.affinity"),
            "affinity: host requires tenancy: host",
        );
    }
    if let Some(partition) = placement.partition_number {
        if partition < 1 {
            errs.invalid(format!("{base}.partitionNumber"), "must be at least 1");
        }
        if placement.group_id.is_none() {
            errs.required(
                format!("{base}.groupId"),
                "partitionNumber needs the ID of a partition placement group",
            );
        }
    }
}

/// Key names in the Secret(s) of a MachineClass.
pub mod secret_keys {
    /// Access key ID (MCM's primary name).
    pub const ACCESS_KEY_ID: &str = "providerAccessKeyId";
    /// Secret access key (MCM's primary name).
    pub const SECRET_ACCESS_KEY: &str = "providerSecretAccessKey";
    /// Access key ID (alternative name).
    pub const ALT_ACCESS_KEY_ID: &str = "accessKeyID";
    /// Secret access key (alternative name).
    pub const ALT_SECRET_ACCESS_KEY: &str = "secretAccessKey";
    /// Path of a web identity token file (STS AssumeRoleWithWebIdentity).
    pub const WORKLOAD_IDENTITY_TOKEN_FILE: &str = "workloadIdentityTokenFile";
    /// Role to assume, with the token file or from the default chain.
    pub const ROLE_ARN: &str = "roleARN";
    /// Raw user data (cloud-init etc.) for the instance.
    pub const USER_DATA: &str = "userData";
}

/// Checks the merged data of a MachineClass's `secretRef` and
/// `credentialsSecretRef` (the latter wins on conflicts).
///
/// Rules, following MCM where the design keeps its behaviour:
/// - `userData` is required and non-empty (MCM);
/// - when `workloadIdentityTokenFile` is present it must be non-empty and
///   `roleARN` is required (MCM); static keys are then not checked, as MCM
///   ignores them;
/// - otherwise an access key ID (`providerAccessKeyId` or `accessKeyID`) and a
///   secret access key (`providerSecretAccessKey` or `secretAccessKey`) come as
///   a pair. Unlike MCM, having neither is valid: the AWS default credential
///   chain is used (optionally with `roleARN` for AssumeRole);
/// - a non-empty `roleARN` must be an ARN (start with `arn:`).
pub fn validate_secret_data(data: &BTreeMap<String, ByteString>) -> Vec<FieldError> {
    use secret_keys::*;
    let mut errs = Errors::default();
    let present = |key: &str| data.get(key).is_some_and(|v| !v.0.is_empty());

    if !present(USER_DATA) {
        errs.required(
            format!("{SECRET}.{USER_DATA}"),
            "the instance user data is required",
        );
    }

    if data.contains_key(WORKLOAD_IDENTITY_TOKEN_FILE) {
        if !present(WORKLOAD_IDENTITY_TOKEN_FILE) {
            errs.required(
                format!("{SECRET}.{WORKLOAD_IDENTITY_TOKEN_FILE}"),
                "the workload identity token file path must not be empty",
            );
        }
        if !present(ROLE_ARN) {
            errs.required(
                format!("{SECRET}.{ROLE_ARN}"),
                "the role ARN is required with workloadIdentityTokenFile",
            );
        }
    } else {
        let key_id = present(ACCESS_KEY_ID) || present(ALT_ACCESS_KEY_ID);
        let secret = present(SECRET_ACCESS_KEY) || present(ALT_SECRET_ACCESS_KEY);
        if key_id && !secret {
            errs.required(
                format!("{SECRET}.{SECRET_ACCESS_KEY}"),
                format!(
                    "an access key ID is set but no secret access key: set \
                     {SECRET_ACCESS_KEY} or {ALT_SECRET_ACCESS_KEY}"
                ),
            );
        }
        if secret && !key_id {
            errs.required(
                format!("{SECRET}.{ACCESS_KEY_ID}"),
                format!(
                    "a secret access key is set but no access key ID: set \
                     {ACCESS_KEY_ID} or {ALT_ACCESS_KEY_ID}"
                ),
            );
        }
    }

    if present(ROLE_ARN) && !data.get(ROLE_ARN).is_some_and(|v| v.0.starts_with(b"arn:")) {
        errs.invalid(
            format!("{SECRET}.{ROLE_ARN}"),
            "must be an IAM role ARN such as arn:aws:iam::123456789012:role/name",
        );
    }
    errs.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::provider_spec::{
        AWSEbsBlockDeviceSpec, AWSIAMProfileSpec, CapacityReservationPreference, FeatureState,
        InstanceMarketOptions, VolumeType,
    };

    /// A valid spec using most features; every case mutates it.
    fn valid() -> AWSProviderSpec {
        let device = |name: &str, volume_type| AWSBlockDeviceMappingSpec {
            device_name: name.into(),
            ebs: AWSEbsBlockDeviceSpec {
                delete_on_termination: Some(true),
                encrypted: Some(true),
                iops: None,
                throughput: None,
                kms_key_id: None,
                snapshot_id: None,
                volume_size: 50,
                volume_type,
            },
            no_device: None,
            virtual_name: None,
        };
        let mut root = device(ROOT_DEVICE_NAME, VolumeType::Gp3);
        root.ebs.iops = Some(3000);
        root.ebs.throughput = Some(125);
        root.ebs.kms_key_id = Some("alias/ebs".into());
        let mut fast = device("/dev/xvdba", VolumeType::Io2);
        fast.ebs.iops = Some(10_000);
        AWSProviderSpec {
            ami: "ami-123456".into(),
            machine_type: "m5.large".into(),
            region: "eu-west-1".into(),
            block_devices: vec![root, device("/dev/sdb", VolumeType::Gp2), fast],
            iam: AWSIAMProfileSpec {
                name: "nodes".into(),
                arn: String::new(),
            },
            network_interfaces: vec![
                AWSNetworkInterfaceSpec {
                    subnet_id: "subnet-1".into(),
                    security_group_ids: vec!["sg-1".into(), "sg-2".into()],
                    ipv6_address_count: Some(1),
                    ..Default::default()
                },
                AWSNetworkInterfaceSpec {
                    subnet_id: "subnet-2".into(),
                    security_group_ids: vec!["sg-1".into()],
                    network_card_index: Some(1),
                    device_index: Some(0),
                    ..Default::default()
                },
            ],
            spot_price: Some("0.05".into()),
            tags: [
                ("Name", "ignored"),
                ("kubernetes.io/cluster/shoot", "1"),
                ("kubernetes.io/role/node", "1"),
            ]
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect(),
            instance_metadata_options: Some(InstanceMetadataOptions {
                http_put_response_hop_limit: Some(2),
                ..Default::default()
            }),
            cpu_options: Some(CPUOptions {
                core_count: Some(2),
                threads_per_core: Some(1),
                amd_sev_snp: None,
            }),
            placement: Some(AWSPlacementSpec {
                tenancy: Some(Tenancy::Host),
                host_id: Some("h-1".into()),
                affinity: Some(Affinity::Host),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn paths(spec: &AWSProviderSpec) -> Vec<String> {
        let mut p: Vec<String> = validate_provider_spec(spec)
            .into_iter()
            .map(|e| format!("{:?} {}", e.kind, e.path))
            .collect();
        p.sort();
        p
    }

    type Mutation = fn(&mut AWSProviderSpec);

    #[test]
    fn valid_specs_have_no_errors() {
        let cases: &[(&str, Mutation)] = &[
            ("full spec", |_| {}),
            ("minimal spec without block devices", |s| {
                s.block_devices.clear();
                s.spot_price = None;
                s.cpu_options = None;
                s.placement = None;
                s.instance_metadata_options = None;
                s.network_interfaces.truncate(1);
            }),
            ("iam by arn", |s| {
                s.iam = AWSIAMProfileSpec {
                    name: String::new(),
                    arn: "arn:aws:iam::1:instance-profile/n".into(),
                }
            }),
            ("single device with any name is the root", |s| {
                s.block_devices.truncate(2);
                s.block_devices.remove(0);
                s.block_devices[0].device_name = String::new();
            }),
            ("single device named /root", |s| s.block_devices.truncate(1)),
            ("xvd names", |s| {
                s.block_devices[1].device_name = "/dev/xvdc".into();
                s.block_devices[2].device_name = "/dev/xvdaz".into();
            }),
            ("iops 0 on gp2 means unset", |s| {
                s.block_devices[1].ebs.iops = Some(0)
            }),
            ("io1 with iops", |s| {
                s.block_devices[2].ebs.volume_type = VolumeType::Io1
            }),
            ("kms key with encryption", |s| {
                s.block_devices[1].ebs.kms_key_id = Some("k".into());
                s.block_devices[1].ebs.encrypted = Some(true);
            }),
            ("empty kms key is ignored", |s| {
                s.block_devices[1].ebs.kms_key_id = Some(String::new());
                s.block_devices[1].ebs.encrypted = None;
            }),
            ("capacity reservation preference", |s| {
                s.capacity_reservation = Some(AWSCapacityReservationTargetSpec {
                    capacity_reservation_preference: Some(CapacityReservationPreference::None),
                    ..Default::default()
                })
            }),
            ("capacity reservation id", |s| {
                s.capacity_reservation = Some(AWSCapacityReservationTargetSpec {
                    capacity_reservation_id: Some("cr-1".into()),
                    ..Default::default()
                })
            }),
            ("capacity block by MCM flag", |s| {
                s.spot_price = None;
                s.capacity_reservation = Some(AWSCapacityReservationTargetSpec {
                    capacity_reservation_id: Some("cr-1".into()),
                    is_ml_capacity_block: Some(true),
                    ..Default::default()
                })
            }),
            ("capacity block by market type", |s| {
                s.spot_price = None;
                s.instance_market_options = Some(InstanceMarketOptions {
                    market_type: MarketType::CapacityBlock,
                });
                s.capacity_reservation = Some(AWSCapacityReservationTargetSpec {
                    capacity_reservation_id: Some("cr-1".into()),
                    ..Default::default()
                })
            }),
            ("spot price with spot market", |s| {
                s.instance_market_options = Some(InstanceMarketOptions {
                    market_type: MarketType::Spot,
                })
            }),
            ("empty spot price", |s| s.spot_price = Some(String::new())),
            ("integer spot price", |s| s.spot_price = Some("1".into())),
            ("leading-dot spot price", |s| {
                s.spot_price = Some(".5".into())
            }),
            ("cluster and role tags anywhere in the key", |s| {
                s.tags = [
                    ("prefix-kubernetes.io/cluster/x", ""),
                    ("kubernetes.io/role/worker", ""),
                ]
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect()
            }),
            ("hop limit 0 as MCM allows", |s| {
                s.instance_metadata_options = Some(InstanceMetadataOptions {
                    http_put_response_hop_limit: Some(0),
                    ..Default::default()
                })
            }),
            ("cpu options with only amdSevSnp", |s| {
                s.cpu_options = Some(CPUOptions {
                    amd_sev_snp: Some(FeatureState::Enabled),
                    ..Default::default()
                })
            }),
            ("threadsPerCore 2", |s| {
                s.cpu_options = Some(CPUOptions {
                    core_count: Some(4),
                    threads_per_core: Some(2),
                    amd_sev_snp: None,
                })
            }),
            ("partition placement", |s| {
                s.placement = Some(AWSPlacementSpec {
                    group_id: Some("pg-1".into()),
                    partition_number: Some(3),
                    ..Default::default()
                })
            }),
            ("default affinity without host tenancy", |s| {
                s.placement = Some(AWSPlacementSpec {
                    affinity: Some(Affinity::Default),
                    tenancy: Some(Tenancy::Dedicated),
                    ..Default::default()
                })
            }),
            ("public IP with a single interface", |s| {
                s.network_interfaces.truncate(1);
                s.network_interfaces[0].associate_public_ip_address = Some(true);
            }),
            ("explicit distinct device indexes", |s| {
                s.network_interfaces[0].device_index = Some(1);
                s.network_interfaces[1].network_card_index = None;
                s.network_interfaces[1].device_index = Some(0);
            }),
        ];
        for (name, mutate) in cases {
            let mut spec = valid();
            mutate(&mut spec);
            assert_eq!(paths(&spec), Vec::<String>::new(), "case: {name}");
        }
    }

    #[test]
    fn invalid_specs_report_every_violation_with_its_path() {
        let cases: &[(&str, Mutation, &[&str])] = &[
            (
                "required strings empty",
                |s| {
                    s.ami.clear();
                    s.machine_type.clear();
                    s.region.clear();
                },
                &[
                    "Required providerSpec.ami",
                    "Required providerSpec.machineType",
                    "Required providerSpec.region",
                ],
            ),
            (
                "iam with neither",
                |s| s.iam = AWSIAMProfileSpec::default(),
                &["Invalid providerSpec.iam"],
            ),
            (
                "iam with both",
                |s| s.iam.arn = "arn:aws:iam::1:instance-profile/n".into(),
                &["Invalid providerSpec.iam"],
            ),
            (
                "several devices without root",
                |s| s.block_devices[0].device_name = "/dev/sdc".into(),
                &["Required providerSpec.blockDevices"],
            ),
            (
                "two roots",
                |s| s.block_devices[1].device_name = ROOT_DEVICE_NAME.into(),
                &["Duplicate providerSpec.blockDevices[1].deviceName"],
            ),
            (
                "duplicate data device",
                |s| s.block_devices[2].device_name = "/dev/sdb".into(),
                &["Duplicate providerSpec.blockDevices[2].deviceName"],
            ),
            (
                "bad data device names",
                |s| {
                    s.block_devices[1].device_name = "/dev/xvdd".into();
                    s.block_devices[2].device_name = String::new();
                },
                &[
                    "Invalid providerSpec.blockDevices[1].deviceName",
                    "Invalid providerSpec.blockDevices[2].deviceName",
                ],
            ),
            (
                "volume size not positive",
                |s| {
                    s.block_devices[0].ebs.volume_size = 0;
                    s.block_devices[1].ebs.volume_size = -5;
                },
                &[
                    "Invalid providerSpec.blockDevices[0].ebs.volumeSize",
                    "Invalid providerSpec.blockDevices[1].ebs.volumeSize",
                ],
            ),
            (
                "io2 without iops, io1 with iops 0",
                |s| {
                    s.block_devices[2].ebs.iops = None;
                    s.block_devices[1].ebs.volume_type = VolumeType::Io1;
                    s.block_devices[1].ebs.iops = Some(0);
                },
                &[
                    "Required providerSpec.blockDevices[1].ebs.iops",
                    "Required providerSpec.blockDevices[2].ebs.iops",
                ],
            ),
            (
                "negative iops",
                |s| s.block_devices[0].ebs.iops = Some(-1),
                &["Invalid providerSpec.blockDevices[0].ebs.iops"],
            ),
            (
                "iops on gp2 and standard",
                |s| {
                    s.block_devices[1].ebs.iops = Some(100);
                    s.block_devices[0].ebs.volume_type = VolumeType::Standard;
                    s.block_devices[0].ebs.throughput = None;
                },
                &[
                    "Forbidden providerSpec.blockDevices[0].ebs.iops",
                    "Forbidden providerSpec.blockDevices[1].ebs.iops",
                ],
            ),
            (
                "throughput not positive",
                |s| s.block_devices[0].ebs.throughput = Some(0),
                &["Invalid providerSpec.blockDevices[0].ebs.throughput"],
            ),
            (
                "throughput on io2",
                |s| s.block_devices[2].ebs.throughput = Some(500),
                &["Forbidden providerSpec.blockDevices[2].ebs.throughput"],
            ),
            (
                "kms key without encryption",
                |s| {
                    s.block_devices[0].ebs.encrypted = None;
                    s.block_devices[1].ebs.kms_key_id = Some("k".into());
                    s.block_devices[1].ebs.encrypted = Some(false);
                },
                &[
                    "Required providerSpec.blockDevices[0].ebs.encrypted",
                    "Required providerSpec.blockDevices[1].ebs.encrypted",
                ],
            ),
            (
                "capacity reservation preference with id and arn",
                |s| {
                    s.capacity_reservation = Some(AWSCapacityReservationTargetSpec {
                        capacity_reservation_preference: Some(CapacityReservationPreference::Open),
                        capacity_reservation_id: Some("cr-1".into()),
                        capacity_reservation_resource_group_arn: Some("arn:g".into()),
                        is_ml_capacity_block: None,
                    })
                },
                &[
                    "Forbidden providerSpec.capacityReservation.capacityReservationId",
                    "Forbidden providerSpec.capacityReservation.capacityReservationResourceGroupArn",
                ],
            ),
            (
                "capacity reservation id and arn",
                |s| {
                    s.capacity_reservation = Some(AWSCapacityReservationTargetSpec {
                        capacity_reservation_id: Some("cr-1".into()),
                        capacity_reservation_resource_group_arn: Some("arn:g".into()),
                        ..Default::default()
                    })
                },
                &["Forbidden providerSpec.capacityReservation.capacityReservationResourceGroupArn"],
            ),
            (
                "ML capacity block with spot and without id",
                |s| {
                    s.instance_market_options = Some(InstanceMarketOptions {
                        market_type: MarketType::Spot,
                    });
                    s.capacity_reservation = Some(AWSCapacityReservationTargetSpec {
                        is_ml_capacity_block: Some(true),
                        ..Default::default()
                    });
                },
                &[
                    "Forbidden providerSpec.spotPrice",
                    "Invalid providerSpec.instanceMarketOptions.marketType",
                    "Required providerSpec.capacityReservation.capacityReservationId",
                ],
            ),
            (
                "capacity-block market without reservation",
                |s| {
                    s.spot_price = None;
                    s.instance_market_options = Some(InstanceMarketOptions {
                        market_type: MarketType::CapacityBlock,
                    });
                },
                &["Required providerSpec.capacityReservation.capacityReservationId"],
            ),
            (
                "malformed spot prices",
                |s| s.spot_price = Some("5 USD".into()),
                &["Invalid providerSpec.spotPrice"],
            ),
            (
                "spot price with trailing dot",
                |s| s.spot_price = Some("1.".into()),
                &["Invalid providerSpec.spotPrice"],
            ),
            (
                "spot price that is only a dot",
                |s| s.spot_price = Some(".".into()),
                &["Invalid providerSpec.spotPrice"],
            ),
            (
                "no network interfaces",
                |s| s.network_interfaces.clear(),
                &["Required providerSpec.networkInterfaces"],
            ),
            (
                "interface without subnet and security groups",
                |s| {
                    s.network_interfaces[1].subnet_id.clear();
                    s.network_interfaces[1].security_group_ids.clear();
                },
                &[
                    "Required providerSpec.networkInterfaces[1].securityGroupIDs",
                    "Required providerSpec.networkInterfaces[1].subnetID",
                ],
            ),
            (
                "empty security group ID",
                |s| s.network_interfaces[0].security_group_ids[1].clear(),
                &["Required providerSpec.networkInterfaces[0].securityGroupIDs[1]"],
            ),
            (
                "negative counts and indexes",
                |s| {
                    let nic = &mut s.network_interfaces[1];
                    nic.ipv6_address_count = Some(-1);
                    nic.ipv6_prefix_count = Some(-1);
                    nic.network_card_index = Some(-1);
                    nic.device_index = Some(-1);
                },
                &[
                    "Invalid providerSpec.networkInterfaces[1].deviceIndex",
                    "Invalid providerSpec.networkInterfaces[1].ipv6AddressCount",
                    "Invalid providerSpec.networkInterfaces[1].ipv6PrefixCount",
                    "Invalid providerSpec.networkInterfaces[1].networkCardIndex",
                ],
            ),
            (
                "two interfaces on the same device slot",
                |s| s.network_interfaces[1].network_card_index = None,
                &["Duplicate providerSpec.networkInterfaces[1].deviceIndex"],
            ),
            (
                "default device index collides with explicit one",
                |s| {
                    s.network_interfaces[0].device_index = Some(1);
                    s.network_interfaces[1].network_card_index = None;
                    s.network_interfaces[1].device_index = None;
                },
                &["Duplicate providerSpec.networkInterfaces[1].deviceIndex"],
            ),
            (
                "public IP with several interfaces",
                |s| {
                    s.network_interfaces[0].associate_public_ip_address = Some(true);
                    s.network_interfaces[1].associate_public_ip_address = Some(false);
                },
                &[
                    "Forbidden providerSpec.networkInterfaces[0].associatePublicIPAddress",
                    "Forbidden providerSpec.networkInterfaces[1].associatePublicIPAddress",
                ],
            ),
            (
                "no tags",
                |s| s.tags.clear(),
                &["Required providerSpec.tags", "Required providerSpec.tags"],
            ),
            (
                "role tag missing",
                |s| {
                    s.tags.remove("kubernetes.io/role/node");
                },
                &["Required providerSpec.tags"],
            ),
            (
                "key with both prefixes counts only as cluster tag",
                |s| {
                    s.tags.clear();
                    s.tags.insert(
                        "kubernetes.io/cluster/kubernetes.io/role/x".into(),
                        "1".into(),
                    );
                },
                &["Required providerSpec.tags"],
            ),
            (
                "tags beyond EC2 limits",
                |s| {
                    s.tags.insert("aws:reserved".into(), "v".into());
                    s.tags.insert(String::new(), "v".into());
                    s.tags.insert("long".into(), "v".repeat(257));
                    s.tags.insert("k".repeat(128), "v".repeat(256));
                },
                &[
                    "Invalid providerSpec.tags[]",
                    "Invalid providerSpec.tags[aws:reserved]",
                    "Invalid providerSpec.tags[long]",
                ],
            ),
            (
                "more tags than EC2 allows beside the operator's three",
                |s| {
                    for i in 0..46 {
                        s.tags.insert(format!("t{i}"), "v".into());
                    }
                },
                &["Invalid providerSpec.tags"],
            ),
            (
                "hop limit out of range",
                |s| {
                    s.instance_metadata_options = Some(InstanceMetadataOptions {
                        http_put_response_hop_limit: Some(65),
                        ..Default::default()
                    })
                },
                &["Invalid providerSpec.instanceMetadataOptions.httpPutResponseHopLimit"],
            ),
            (
                "negative hop limit",
                |s| {
                    s.instance_metadata_options = Some(InstanceMetadataOptions {
                        http_put_response_hop_limit: Some(-1),
                        ..Default::default()
                    })
                },
                &["Invalid providerSpec.instanceMetadataOptions.httpPutResponseHopLimit"],
            ),
            (
                "coreCount without threadsPerCore",
                |s| {
                    s.cpu_options = Some(CPUOptions {
                        core_count: Some(2),
                        ..Default::default()
                    })
                },
                &["Required providerSpec.cpuOptions.threadsPerCore"],
            ),
            (
                "threadsPerCore without coreCount",
                |s| {
                    s.cpu_options = Some(CPUOptions {
                        threads_per_core: Some(2),
                        amd_sev_snp: Some(FeatureState::Disabled),
                        ..Default::default()
                    })
                },
                &["Required providerSpec.cpuOptions.coreCount"],
            ),
            (
                "empty cpuOptions",
                |s| s.cpu_options = Some(CPUOptions::default()),
                &[
                    "Required providerSpec.cpuOptions.coreCount",
                    "Required providerSpec.cpuOptions.threadsPerCore",
                ],
            ),
            (
                "threadsPerCore and coreCount out of range",
                |s| {
                    s.cpu_options = Some(CPUOptions {
                        core_count: Some(0),
                        threads_per_core: Some(3),
                        amd_sev_snp: None,
                    })
                },
                &[
                    "Invalid providerSpec.cpuOptions.coreCount",
                    "Invalid providerSpec.cpuOptions.threadsPerCore",
                ],
            ),
            (
                "host id and host affinity without host tenancy",
                |s| {
                    if let Some(p) = s.placement.as_mut() {
                        p.tenancy = Some(Tenancy::Dedicated);
                    }
                },
                &[
                    "Forbidden providerSpec.placement.affinity",
                    "Forbidden providerSpec.placement.hostId",
                ],
            ),
            (
                "host id without tenancy",
                |s| {
                    s.placement = Some(AWSPlacementSpec {
                        host_id: Some("h-1".into()),
                        ..Default::default()
                    })
                },
                &["Forbidden providerSpec.placement.hostId"],
            ),
            (
                "partition number without group and below 1",
                |s| {
                    s.placement = Some(AWSPlacementSpec {
                        partition_number: Some(0),
                        ..Default::default()
                    })
                },
                &[
                    "Invalid providerSpec.placement.partitionNumber",
                    "Required providerSpec.placement.groupId",
                ],
            ),
        ];
        for (name, mutate, expected) in cases {
            let mut spec = valid();
            mutate(&mut spec);
            let mut expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
            expected.sort();
            assert_eq!(paths(&spec), expected, "case: {name}");
        }
    }

    #[test]
    fn tag_keys_longer_than_128_characters_are_invalid() {
        let mut spec = valid();
        let key = "k".repeat(129);
        spec.tags.insert(key.clone(), "v".into());
        assert_eq!(paths(&spec), [format!("Invalid providerSpec.tags[{key}]")]);
    }

    #[test]
    fn default_spec_reports_all_required_fields_without_panicking() {
        assert_eq!(
            paths(&AWSProviderSpec::default()),
            [
                "Invalid providerSpec.iam",
                "Required providerSpec.ami",
                "Required providerSpec.machineType",
                "Required providerSpec.networkInterfaces",
                "Required providerSpec.region",
                "Required providerSpec.tags",
                "Required providerSpec.tags",
            ]
        );
    }

    #[test]
    fn extreme_values_do_not_panic() {
        let mut spec = valid();
        for d in &mut spec.block_devices {
            d.ebs.volume_size = i32::MIN;
            d.ebs.iops = Some(i32::MIN);
            d.ebs.throughput = Some(i32::MAX);
            d.device_name = "/dev/sd\u{e9}".into();
        }
        spec.network_interfaces = (0..3)
            .map(|_| AWSNetworkInterfaceSpec {
                device_index: Some(i32::MAX),
                ..Default::default()
            })
            .collect();
        spec.spot_price = Some("\u{1F4B0}.\u{1F4B0}".into());
        spec.tags.insert("\u{e9}".repeat(200), "\u{e9}".repeat(300));
        assert!(!validate_provider_spec(&spec).is_empty());
    }

    #[test]
    fn data_device_names_follow_mcm_pattern() {
        for ok in [
            "/dev/sda",
            "/dev/sdz",
            "/dev/xvda",
            "/dev/xvdc",
            "/dev/xvdba",
            "/dev/xvdcz",
        ] {
            assert!(is_data_device_name(ok), "{ok}");
        }
        for bad in [
            "",
            "/root",
            "/dev/sd",
            "/dev/sdaa",
            "/dev/sdA",
            "/dev/xvdd",
            "/dev/xvd",
            "/dev/xvdaaa",
            "/dev/nvme1n1",
            "sdb",
            "/dev/xvdA",
        ] {
            assert!(!is_data_device_name(bad), "{bad}");
        }
    }

    #[test]
    fn field_errors_display_like_kubernetes() {
        let errors = validate_provider_spec(&AWSProviderSpec {
            iam: AWSIAMProfileSpec::default(),
            ..valid()
        });
        assert_eq!(
            errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["providerSpec.iam: Invalid value: exactly one of name or arn must be set"]
        );
        let required = FieldError::new("a", FieldErrorKind::Required, "m").to_string();
        assert_eq!(required, "a: Required value: m");
        let duplicate = FieldError::new("a", FieldErrorKind::Duplicate, "m").to_string();
        assert_eq!(duplicate, "a: Duplicate value: m");
        let forbidden = FieldError::new("a", FieldErrorKind::Forbidden, "m").to_string();
        assert_eq!(forbidden, "a: Forbidden: m");
    }

    /// `providerSpec.blockDevices[1].ebs` and `providerSpec.blockDevices[*].ebs`
    /// both become `providerSpec.blockDevices.ebs`.
    fn without_indices(path: &str) -> String {
        let mut out = String::new();
        let mut depth = 0;
        for c in path.chars() {
            match c {
                '[' => depth += 1,
                ']' => depth -= 1,
                _ if depth == 0 => out.push(c),
                _ => {}
            }
        }
        out
    }

    /// The MachineClass samples of `config/samples/`, or of `invalid/` below it.
    fn class_samples(dir: &str) -> Vec<(String, String)> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
        let mut samples: Vec<(String, String)> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .map(|p| {
                let text = std::fs::read_to_string(&p).unwrap();
                (p.file_name().unwrap().to_string_lossy().into_owned(), text)
            })
            .filter(|(_, text)| text.lines().any(|l| l == "kind: MachineClass"))
            .collect();
        samples.sort();
        samples
    }

    fn provider_spec_of(text: &str) -> Result<AWSProviderSpec, serde_json::Error> {
        let class: serde_json::Value = serde_yaml::from_str(text).expect("sample is YAML");
        serde_json::from_value(class["providerSpec"].clone())
    }

    #[test]
    fn sample_class_is_valid() {
        let samples = class_samples("config/samples");
        assert!(!samples.is_empty());
        for (file, text) in samples {
            let spec = provider_spec_of(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(validate_provider_spec(&spec), [], "{file}");
        }
    }

    /// The CRD's rules and this module agree: every class the API server
    /// rejects (`config/samples/invalid/`, each proven on a real server) is
    /// rejected here too, for the field its `# expect-error:` names and for
    /// nothing else, or does not even parse (a schema-level enum or required
    /// field). So a class stored before the CRD had a rule still gets a clear
    /// status instead of a failed launch.
    #[test]
    fn invalid_class_samples_are_rejected_here_too_for_the_same_field() {
        let samples = class_samples("config/samples/invalid");
        assert!(samples.len() >= 10, "found {samples:?}");
        for (file, text) in samples {
            let expected = text
                .lines()
                .find_map(|l| l.strip_prefix("# expect-error:"))
                .unwrap_or_else(|| panic!("{file} has no expect-error line"))
                .trim();
            let field = without_indices(expected.split(": ").next().unwrap());
            let Ok(spec) = provider_spec_of(&text) else {
                continue;
            };
            let errors = validate_provider_spec(&spec);
            assert!(!errors.is_empty(), "{file} passes validation");
            for error in errors {
                let path = without_indices(&error.path);
                assert!(
                    path == field || path.starts_with(&format!("{field}.")),
                    "{file}: expected only errors about {field}, got {error}"
                );
            }
        }
    }

    fn secret(entries: &[(&str, &str)]) -> BTreeMap<String, ByteString> {
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
            .collect()
    }

    fn secret_paths(entries: &[(&str, &str)]) -> Vec<String> {
        let mut p: Vec<String> = validate_secret_data(&secret(entries))
            .into_iter()
            .map(|e| format!("{:?} {}", e.kind, e.path))
            .collect();
        p.sort();
        p
    }

    #[test]
    fn secret_rules() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [&'a str]);
        let cases: &[Case] = &[
            (
                "static keys",
                &[
                    ("providerAccessKeyId", "AKIA"),
                    ("providerSecretAccessKey", "s"),
                    ("userData", "#!/bin/sh"),
                ],
                &[],
            ),
            (
                "alternative key names, mixed",
                &[
                    ("accessKeyID", "AKIA"),
                    ("providerSecretAccessKey", "s"),
                    ("userData", "x"),
                ],
                &[],
            ),
            ("default chain", &[("userData", "x")], &[]),
            (
                "default chain with AssumeRole",
                &[("userData", "x"), ("roleARN", "arn:aws:iam::1:role/r")],
                &[],
            ),
            (
                "workload identity",
                &[
                    ("userData", "x"),
                    ("workloadIdentityTokenFile", "/var/run/token"),
                    ("roleARN", "arn:aws:iam::1:role/r"),
                ],
                &[],
            ),
            (
                "workload identity ignores a half key pair as MCM does",
                &[
                    ("userData", "x"),
                    ("workloadIdentityTokenFile", "/t"),
                    ("roleARN", "arn:aws:iam::1:role/r"),
                    ("accessKeyID", "AKIA"),
                ],
                &[],
            ),
            (
                "no userData",
                &[("userData", "")],
                &["Required secret.data.userData"],
            ),
            (
                "key ID without secret",
                &[
                    ("userData", "x"),
                    ("providerAccessKeyId", "AKIA"),
                    ("secretAccessKey", ""),
                ],
                &["Required secret.data.providerSecretAccessKey"],
            ),
            (
                "secret without key ID",
                &[("userData", "x"), ("secretAccessKey", "s")],
                &["Required secret.data.providerAccessKeyId"],
            ),
            (
                "workload identity without role and with empty token file",
                &[("workloadIdentityTokenFile", "")],
                &[
                    "Required secret.data.roleARN",
                    "Required secret.data.userData",
                    "Required secret.data.workloadIdentityTokenFile",
                ],
            ),
            (
                "role that is not an ARN",
                &[("userData", "x"), ("roleARN", "my-role")],
                &["Invalid secret.data.roleARN"],
            ),
        ];
        for (name, entries, expected) in cases {
            let mut expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
            expected.sort();
            assert_eq!(secret_paths(entries), expected, "case: {name}");
        }
    }
}
