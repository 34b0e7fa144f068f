//! `AWSProviderSpec`: the typed `providerSpec` of a MachineClass with
//! `provider: AWS`.
//!
//! The JSON shape is MCM's (`machine-controller-manager-provider-aws`,
//! `pkg/aws/apis/aws_provider_spec.go`), field name for field name, so that an
//! MCM MachineClass applies unchanged. Where MCM accepted any string and only
//! EC2 complained at launch time, the types here are enums and ranges, so the
//! API server rejects bad input at `kubectl apply`. Rules that relate several
//! fields are CEL rules (`x-kubernetes-validations`) on the types below, so
//! that `kubectl apply` rejects them too, and are checked again by
//! [`crate::api::validation`] for objects stored before the rules existed.
//! Each rule's message starts with the path of the field it is about
//! (`providerSpec.iam: ...`), as `validation` reports it.
//!
//! Doc comments are user documentation: they become `kubectl explain` text.
//! Every enum variant is documented, and that matters beyond rustdoc: schemars
//! renders documented unit variants as `oneOf`, which kube's transforms turn
//! into a plain `enum` (plus `nullable` for `Option`). Undocumented variants
//! would give an optional enum a literal `null` in its `enum` list, which
//! Kubernetes API servers before 1.20.11 mishandle.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Tag keys containing this string name the cluster a machine belongs to.
/// MCM (and orphan collection) require one such tag on every machine.
pub const CLUSTER_TAG_PREFIX: &str = "kubernetes.io/cluster/";
/// Tag keys containing this string name the node role. MCM requires one.
pub const ROLE_TAG_PREFIX: &str = "kubernetes.io/role/";
/// `deviceName` that marks the root device in `blockDevices`; it is replaced
/// by the AMI's root device name at launch.
pub const ROOT_DEVICE_NAME: &str = "/root";
/// Most entries `blockDevices` may have: with several devices every name is
/// `/root` or a distinct `/dev/sd[a-z]` / `/dev/xvd[a-c][a-z]?`, so there are
/// never more than 1 + 26 + 3 + 3 * 26 valid ones. The bound is what lets the
/// API server accept the uniqueness rule's cost (it is quadratic in the
/// length of the list).
pub const MAX_BLOCK_DEVICES: u32 = 1 + 26 + 3 + 3 * 26;
/// Longest `deviceName` accepted (real ones have at most 12 characters);
/// bounds the cost of comparing names in the CEL rules.
pub const MAX_DEVICE_NAME_LENGTH: u32 = 64;

/// The provider-specific part of a MachineClass for EC2 (`provider: AWS`):
/// which AMI and instance type to launch, where, with which disks, network
/// interfaces, IAM instance profile and tags. Wire-compatible with MCM's
/// AWSProviderSpec. Credentials and user data are not part of it: they come
/// from the class's `secretRef` / `credentialsSecretRef`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AWSProviderSpec {
    /// Version of MCM's provider API (e.g. `mcm.gardener.cloud/v1alpha1`).
    /// Accepted for compatibility with MCM manifests and otherwise ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,

    /// ID of the Amazon Machine Image to launch, e.g. `ami-0abcdef1234567890`.
    /// Required. The image must exist in `region`.
    #[schemars(length(min = 1))]
    pub ami: String,

    /// EC2 instance type, e.g. `m5.large`. Required. Changing it rolls the
    /// machines that use this class.
    #[schemars(length(min = 1))]
    pub machine_type: String,

    /// AWS region to launch in, e.g. `eu-west-1`. Required. The subnets, AMI
    /// and security groups must belong to this region.
    #[schemars(length(min = 1))]
    pub region: String,

    /// EBS volumes to attach at launch. With a single entry, that entry is the
    /// root volume whatever its `deviceName`. With several entries, exactly one
    /// must have `deviceName: /root` (the root volume) and the others must be
    /// named `/dev/sd[a-z]` or `/dev/xvd[a-c][a-z]`, each name used once. When
    /// empty, the instance gets the AMI's own block device mapping. At most
    /// 108 entries (the number of distinct valid names).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = MAX_BLOCK_DEVICES),
        extend("x-kubernetes-validations" = [
            {
                "rule": "size(self) <= 1 || self.all(d, has(d.deviceName) && \
                         (d.deviceName == '/root' || d.deviceName.matches('^/dev/(sd[a-z]|xvd[a-c][a-z]?)$')))",
                "message": "providerSpec.blockDevices[*].deviceName: with several block devices, \
                            each must be /root (the root volume) or match ^/dev/(sd[a-z]|xvd[a-c][a-z]?)$",
            },
            {
                // `/root` is the next rule's. No `reason: FieldValueDuplicate`:
                // the server prints that reason without the message.
                "rule": "self.all(d, !has(d.deviceName) || d.deviceName == '/root' || \
                         self.exists_one(e, has(e.deviceName) && e.deviceName == d.deviceName))",
                "message": "providerSpec.blockDevices[*].deviceName: each device name may be used only once",
            },
            {
                "rule": "size(self) <= 1 || self.exists_one(d, has(d.deviceName) && d.deviceName == '/root')",
                "message": "providerSpec.blockDevices: exactly one block device must have deviceName /root \
                            when several are given",
            },
        ]),
    )]
    pub block_devices: Vec<AWSBlockDeviceMappingSpec>,

    /// Launch into an EC2 On-Demand Capacity Reservation, a Capacity
    /// Reservation resource group, or a Capacity Block for ML. Optional; by
    /// default EC2 uses any matching open reservation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_reservation: Option<AWSCapacityReservationTargetSpec>,

    /// Launch the instance EBS-optimized. Optional; when unset, the instance
    /// type's EC2 default applies (most current types are EBS-optimized
    /// anyway). MCM parsed this field but never sent it to EC2; this operator
    /// sends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ebs_optimized: Option<bool>,

    /// IAM instance profile for the instance. Required: set exactly one of
    /// `name` or `arn`.
    pub iam: AWSIAMProfileSpec,

    /// Name of the EC2 key pair to install for SSH access. Optional; absent or
    /// empty means no key pair.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_name: Option<String>,

    /// Enable detailed (1-minute) CloudWatch monitoring. Optional; EC2's
    /// default is basic (5-minute) monitoring. MCM parsed this field but never
    /// sent it to EC2; this operator sends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitoring: Option<bool>,

    /// Network interfaces of the instance; at least one. The first one
    /// (device index 0) is the primary interface and determines the subnet
    /// and thus the availability zone.
    #[schemars(length(min = 1))]
    pub network_interfaces: Vec<AWSNetworkInterfaceSpec>,

    /// Deprecated: use `instanceMarketOptions` with `marketType: spot`.
    /// When set, the instance is launched as a one-time Spot Instance; the
    /// value is the maximum hourly price in USD (e.g. `"0.05"`), and the empty
    /// string means "no maximum" (capped at the On-Demand price).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]*\.?[0-9]+)?$"))]
    pub spot_price: Option<String>,

    /// Purchasing option of the instance: Spot or Capacity Block. Optional;
    /// default is On-Demand (or Spot when `spotPrice` is set). Not part of
    /// MCM's spec; MCM users set `spotPrice` or
    /// `capacityReservation.isMLCapacityBlock` instead, which keep working.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_market_options: Option<InstanceMarketOptions>,

    /// Source/destination checking of the instance's primary network
    /// interface. Optional, default true; set false for NAT or routing
    /// instances (the operator disables the check after launch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_and_dst_checks_enabled: Option<bool>,

    /// Tags for the instance and its volumes. Must contain a key containing
    /// `kubernetes.io/cluster/` (the cluster) and a key containing
    /// `kubernetes.io/role/` (the node role): they identify the machines of
    /// this cluster, and instances carrying them without a Machine are
    /// terminated as orphans. The `Name` tag is always set to the Machine's
    /// name; a `Name` given here is ignored. Keys must not start with `aws:`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,

    /// Instance Metadata Service (IMDS) settings. Optional; EC2's defaults
    /// apply to the fields left unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_metadata_options: Option<InstanceMetadataOptions>,

    /// CPU configuration: number of cores and threads per core, AMD SEV-SNP.
    /// Optional; default is the instance type's full CPU configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_options: Option<CPUOptions>,

    /// Placement of the instance: placement group, tenancy, Dedicated Host.
    /// Optional; default is shared tenancy outside any placement group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<AWSPlacementSpec>,
}

/// Drops an enum type's own description from its schema, so that the doc
/// comment of the field using it becomes the `kubectl explain` text (kube's
/// `OptionalEnum` transform would otherwise let the type's text win).
fn field_describes_enum(schema: &mut schemars::Schema) {
    schema.remove("description");
}

impl AWSProviderSpec {
    /// The first tag key (in key order) that contains `kubernetes.io/cluster/`,
    /// as MCM looks it up to find the machines of a cluster.
    pub fn cluster_tag_key(&self) -> Option<&str> {
        self.tags
            .keys()
            .map(String::as_str)
            .find(|k| k.contains(CLUSTER_TAG_PREFIX))
    }

    /// The first tag key (in key order) that contains `kubernetes.io/role/` and
    /// is not a cluster tag key (MCM checks the cluster prefix first).
    pub fn role_tag_key(&self) -> Option<&str> {
        self.tags
            .keys()
            .map(String::as_str)
            .find(|k| !k.contains(CLUSTER_TAG_PREFIX) && k.contains(ROLE_TAG_PREFIX))
    }
}

/// A block device mapping: one EBS volume attached at launch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AWSBlockDeviceMappingSpec {
    /// Device name: `/root` for the root volume (replaced by the AMI's root
    /// device name at launch), otherwise `/dev/sd[a-z]` or `/dev/xvd[a-c][a-z]`
    /// (e.g. `/dev/sdb`, `/dev/xvdba`). May be empty when this is the only
    /// block device; a single block device is always the root volume. At most
    /// 64 characters.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = MAX_DEVICE_NAME_LENGTH))]
    pub device_name: String,

    /// The EBS volume to create. Required.
    pub ebs: AWSEbsBlockDeviceSpec,

    /// Suppresses a device of the AMI's block device mapping. Accepted for
    /// compatibility with MCM manifests; MCM never sent it to EC2 and neither
    /// does this operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_device: Option<String>,

    /// Instance store volume name (`ephemeralN`). Accepted for compatibility
    /// with MCM manifests; MCM never sent it to EC2 and neither does this
    /// operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_name: Option<String>,
}

/// An EBS volume created at launch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!(self.volumeType in ['io1', 'io2']) || (has(self.iops) && self.iops > 0)",
    "message": "providerSpec.blockDevices[*].ebs.iops: iops (greater than 0) is required for io1 and io2 volumes",
    "fieldPath": ".iops",
    "reason": "FieldValueRequired",
}]))]
pub struct AWSEbsBlockDeviceSpec {
    /// Delete the volume when the instance terminates. Optional, default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_on_termination: Option<bool>,

    /// Encrypt the volume. Optional; when unset, the account's EBS
    /// encryption-by-default setting applies (volumes from encrypted
    /// snapshots are always encrypted). Must be true when `kmsKeyID` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypted: Option<bool>,

    /// Provisioned I/O operations per second. Required (greater than 0) for
    /// `io1` and `io2`; optional for `gp3` (EC2 default 3000); must be unset or
    /// 0 for `gp2`, `st1`, `sc1` and `standard`. 0 means unset. EC2 checks the
    /// allowed range per volume type and size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub iops: Option<i32>,

    /// Throughput in MiB/s. Only for `gp3` (EC2 range 125-1000, default 125).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub throughput: Option<i32>,

    /// KMS key (key ID, key ARN, alias name or alias ARN) to encrypt the volume
    /// with; requires `encrypted: true`. Optional; default is the account's
    /// default EBS key. MCM parsed this field but never sent it to EC2; this
    /// operator sends it.
    #[serde(default, rename = "kmsKeyID", skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub kms_key_id: Option<String>,

    /// ID of the EBS snapshot to create the volume from. Optional.
    #[serde(
        default,
        rename = "snapshotID",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(length(min = 1))]
    pub snapshot_id: Option<String>,

    /// Size of the volume in GiB. Required, at least 1. EC2 limits per type:
    /// gp2/gp3 1-16384, io1 4-16384, io2 4-65536, st1/sc1 125-16384,
    /// standard 1-1024; with `snapshotID`, at least the snapshot's size.
    #[schemars(range(min = 1))]
    pub volume_size: i32,

    /// Volume type. Required. One of `gp2`, `gp3`, `io1`, `io2`, `st1`,
    /// `sc1`, `standard`. (MCM did not accept `io2`; this operator does.)
    pub volume_type: VolumeType,
}

/// EBS volume type, serialized as EC2 spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
#[schemars(transform = field_describes_enum)]
pub enum VolumeType {
    /// General Purpose SSD, previous generation (IOPS scale with size).
    Gp2,
    /// General Purpose SSD with configurable IOPS and throughput.
    Gp3,
    /// Provisioned IOPS SSD, previous generation; needs `iops`.
    Io1,
    /// Provisioned IOPS SSD (Block Express); needs `iops`.
    Io2,
    /// Throughput Optimized HDD; cannot be a boot volume.
    St1,
    /// Cold HDD; cannot be a boot volume.
    Sc1,
    /// Magnetic, previous generation.
    Standard,
}

impl VolumeType {
    /// The EC2 API string (`gp3`, `io2`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gp2 => "gp2",
            Self::Gp3 => "gp3",
            Self::Io1 => "io1",
            Self::Io2 => "io2",
            Self::St1 => "st1",
            Self::Sc1 => "sc1",
            Self::Standard => "standard",
        }
    }

    /// Provisioned-IOPS types (`io1`, `io2`), which require `iops`.
    pub fn requires_iops(self) -> bool {
        matches!(self, Self::Io1 | Self::Io2)
    }

    /// Types that accept an `iops` value (`io1`, `io2`, `gp3`).
    pub fn accepts_iops(self) -> bool {
        matches!(self, Self::Io1 | Self::Io2 | Self::Gp3)
    }

    /// Types that accept a `throughput` value (`gp3` only).
    pub fn accepts_throughput(self) -> bool {
        matches!(self, Self::Gp3)
    }
}

/// Where to take capacity from: a Capacity Reservation preference, one
/// reservation by ID, or a resource group of reservations. Set at most one of
/// `capacityReservationPreference`, `capacityReservationId` and
/// `capacityReservationResourceGroupArn`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "(has(self.capacityReservationPreference) ? 1 : 0) + (has(self.capacityReservationId) ? 1 : 0) \
             + (has(self.capacityReservationResourceGroupArn) ? 1 : 0) <= 1",
    "message": "providerSpec.capacityReservation: set at most one of capacityReservationPreference, \
                capacityReservationId and capacityReservationResourceGroupArn",
    "reason": "FieldValueForbidden",
}]))]
pub struct AWSCapacityReservationTargetSpec {
    /// Which reservations the instance may use: `open` (any matching open
    /// reservation, else On-Demand capacity; EC2's default), `none` (never a
    /// reservation) or `capacity-reservations-only` (only reservations; the
    /// launch fails when none has room). Not together with
    /// `capacityReservationId` or `capacityReservationResourceGroupArn`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_reservation_preference: Option<CapacityReservationPreference>,

    /// ID of the Capacity Reservation to launch into, e.g.
    /// `cr-05c28b843c05acc11`. Required for Capacity Blocks for ML.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub capacity_reservation_id: Option<String>,

    /// ARN of a Capacity Reservation resource group to launch into, e.g.
    /// `arn:aws:resource-groups:us-west-1:123456789012:group/my-cr-group`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub capacity_reservation_resource_group_arn: Option<String>,

    /// The reservation in `capacityReservationId` is a Capacity Block for ML:
    /// the instance is launched with market type `capacity-block`. Optional,
    /// default false. Not together with Spot (`spotPrice` or
    /// `instanceMarketOptions.marketType: spot`).
    #[serde(
        default,
        rename = "isMLCapacityBlock",
        skip_serializing_if = "Option::is_none"
    )]
    pub is_ml_capacity_block: Option<bool>,
}

/// Capacity Reservation preference, serialized as EC2 spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
#[schemars(transform = field_describes_enum)]
pub enum CapacityReservationPreference {
    /// Use any matching open reservation, else On-Demand capacity.
    Open,
    /// Never use a reservation.
    None,
    /// Only use reservations; fail when none has room.
    CapacityReservationsOnly,
}

impl CapacityReservationPreference {
    /// The EC2 API string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::None => "none",
            Self::CapacityReservationsOnly => "capacity-reservations-only",
        }
    }
}

/// IAM instance profile for the instance: set exactly one of `name` or `arn`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "(has(self.name) && size(self.name) > 0) != (has(self.arn) && size(self.arn) > 0)",
    "message": "providerSpec.iam: exactly one of name or arn must be set",
}]))]
pub struct AWSIAMProfileSpec {
    /// Name of the instance profile, e.g. `my-cluster-nodes`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,

    /// ARN of the instance profile, e.g.
    /// `arn:aws:iam::123456789012:instance-profile/my-cluster-nodes`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub arn: String,
}

/// A network interface created at launch.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AWSNetworkInterfaceSpec {
    /// ID of the subnet to create the interface in, e.g. `subnet-acbd1234`.
    /// Required. The subnet determines the availability zone.
    #[serde(rename = "subnetID")]
    #[schemars(length(min = 1))]
    pub subnet_id: String,

    /// IDs of the security groups of the interface, e.g. `["sg-xyz12345"]`.
    /// Required, at least one, none empty.
    #[serde(rename = "securityGroupIDs")]
    #[schemars(length(min = 1), inner(length(min = 1)))]
    pub security_group_ids: Vec<String>,

    /// Assign a public IPv4 address. Optional; default is the subnet's
    /// "auto-assign public IPv4" setting. EC2 accepts it only when the
    /// instance has a single network interface.
    #[serde(
        default,
        rename = "associatePublicIPAddress",
        skip_serializing_if = "Option::is_none"
    )]
    pub associate_public_ip_address: Option<bool>,

    /// Number of IPv6 addresses to assign from the subnet's range. Optional;
    /// default is the subnet's "auto-assign IPv6" setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ipv6_address_count: Option<i32>,

    /// Number of IPv6 prefixes (/80) to delegate to the interface, e.g. for
    /// pod IPs. Optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ipv6_prefix_count: Option<i32>,

    /// Delete the interface when the instance terminates. Optional, default
    /// true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_on_termination: Option<bool>,

    /// Description of the interface. Optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,

    /// Interface type: `interface` (EC2's default), `efa` (Elastic Fabric
    /// Adapter with IP networking) or `efa-only` (EFA without IP addresses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface_type: Option<InterfaceType>,

    /// Index of the network card, for instance types with several. Optional,
    /// default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub network_card_index: Option<i32>,

    /// Device index of the interface on its network card; 0 is the primary
    /// interface. Optional, default the interface's position in
    /// `networkInterfaces`. Each network card and device index pair may be
    /// used once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub device_index: Option<i32>,

    /// Make the first IPv6 global unicast address of the interface its primary
    /// IPv6 address (needed e.g. for IPv6-only load balancer targets).
    /// Optional, default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_ipv6: Option<bool>,
}

/// Network interface type, serialized as EC2 spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
#[schemars(transform = field_describes_enum)]
pub enum InterfaceType {
    /// A standard elastic network interface.
    Interface,
    /// An Elastic Fabric Adapter with IP networking.
    Efa,
    /// An Elastic Fabric Adapter without IP addresses.
    EfaOnly,
}

impl InterfaceType {
    /// The EC2 API string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Interface => "interface",
            Self::Efa => "efa",
            Self::EfaOnly => "efa-only",
        }
    }
}

/// Purchasing option of the instance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceMarketOptions {
    /// Market type: `spot` (a one-time Spot Instance; the maximum price is
    /// `spotPrice` when set, else the On-Demand price) or `capacity-block`
    /// (a Capacity Block for ML, which also needs
    /// `capacityReservation.capacityReservationId`). Required.
    pub market_type: MarketType,
}

/// EC2 market type, serialized as EC2 spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
#[schemars(transform = field_describes_enum)]
pub enum MarketType {
    /// A one-time Spot Instance.
    Spot,
    /// An instance in a Capacity Block for ML.
    CapacityBlock,
}

impl MarketType {
    /// The EC2 API string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Spot => "spot",
            Self::CapacityBlock => "capacity-block",
        }
    }
}

/// Instance Metadata Service (IMDS) settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceMetadataOptions {
    /// Whether the metadata endpoint is reachable: `enabled` (EC2's default)
    /// or `disabled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_endpoint: Option<FeatureState>,

    /// Maximum number of network hops for metadata PUT responses, 0-64 (the
    /// range MCM accepts). EC2 accepts 1-64 (default 1; use 2 when containers
    /// without host networking need IMDSv2); 0 is treated as unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 64))]
    pub http_put_response_hop_limit: Option<i32>,

    /// `required` enforces IMDSv2 (session tokens); `optional` also allows
    /// IMDSv1. Default depends on the AMI and account settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_tokens: Option<HttpTokens>,

    /// Whether the IPv6 metadata endpoint is enabled: `enabled` or `disabled`
    /// (EC2's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_protocol_ipv6: Option<FeatureState>,
}

/// An on/off setting, serialized as EC2's `enabled` / `disabled`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
#[schemars(transform = field_describes_enum)]
pub enum FeatureState {
    /// Turned on.
    Enabled,
    /// Turned off.
    Disabled,
}

impl FeatureState {
    /// The EC2 API string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enabled => "enabled",
            Self::Disabled => "disabled",
        }
    }
}

/// IMDS token requirement, serialized as EC2 spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
#[schemars(transform = field_describes_enum)]
pub enum HttpTokens {
    /// IMDSv2 only: metadata requests need a session token.
    Required,
    /// IMDSv1 and IMDSv2.
    Optional,
}

impl HttpTokens {
    /// The EC2 API string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Required => "required",
            Self::Optional => "optional",
        }
    }
}

/// CPU configuration of the instance.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.coreCount) == has(self.threadsPerCore)",
        "message": "providerSpec.cpuOptions: coreCount and threadsPerCore must be set together",
        "reason": "FieldValueRequired",
    },
    {
        "rule": "has(self.coreCount) || has(self.threadsPerCore) || has(self.amdSevSnp)",
        "message": "providerSpec.cpuOptions: set coreCount and threadsPerCore (or amdSevSnp), or remove cpuOptions",
        "reason": "FieldValueRequired",
    },
]))]
pub struct CPUOptions {
    /// Number of CPU cores, at least 1; valid counts depend on the instance
    /// type. Set together with `threadsPerCore`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub core_count: Option<i32>,

    /// Threads per core: 1 disables simultaneous multithreading, 2 enables it.
    /// Set together with `coreCount`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 2))]
    pub threads_per_core: Option<i32>,

    /// AMD SEV-SNP memory encryption: `enabled` or `disabled` (default).
    /// Supported only on some AMD instance types (e.g. M6a, C6a, R6a).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amd_sev_snp: Option<FeatureState>,
}

/// Placement of the instance.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.hostId) || (has(self.tenancy) && self.tenancy == 'host')",
    "message": "providerSpec.placement.hostId: a Dedicated Host ID requires tenancy: host",
    "fieldPath": ".hostId",
    "reason": "FieldValueForbidden",
}]))]
pub struct AWSPlacementSpec {
    /// ID of the placement group, e.g. `pg-0123456789abcdef0`. Optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub group_id: Option<String>,

    /// Tenancy: `default` (shared hardware), `dedicated` (Dedicated Instance)
    /// or `host` (Dedicated Host). Optional; default is the VPC's tenancy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenancy: Option<Tenancy>,

    /// ID of the Dedicated Host to launch on, e.g. `h-0123456789abcdef0`.
    /// Requires `tenancy: host`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub host_id: Option<String>,

    /// Partition of a partition placement group to launch into, at least 1.
    /// Requires `groupId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub partition_number: Option<i32>,

    /// Dedicated Host affinity: `host` keeps a stopped instance on the same
    /// host, `default` lets it restart on any host. `host` requires
    /// `tenancy: host`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
}

/// Instance tenancy, serialized as EC2 spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
#[schemars(transform = field_describes_enum)]
pub enum Tenancy {
    /// Shared hardware.
    Default,
    /// A Dedicated Instance on single-tenant hardware.
    Dedicated,
    /// A Dedicated Host.
    Host,
}

impl Tenancy {
    /// The EC2 API string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Default => "default",
            Self::Dedicated => "dedicated",
            Self::Host => "host",
        }
    }
}

/// Dedicated Host affinity, serialized as EC2 spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
#[schemars(transform = field_describes_enum)]
pub enum Affinity {
    /// A stopped instance may restart on any Dedicated Host.
    Default,
    /// A stopped instance restarts on the same Dedicated Host.
    Host,
}

impl Affinity {
    /// The EC2 API string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Default => "default",
            Self::Host => "host",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    /// The `providerSpec` of MCM's sample `kubernetes/machine-class.yaml`.
    const MCM_SAMPLE: &str = r#"
ami: ami-123456
blockDevices:
  - deviceName: /root
    ebs:
      volumeSize: 50
      volumeType: gp2
      encrypted: false
      deleteOnTermination: true
  - deviceName: /dev/sdb
    ebs:
      volumeSize: 50
      volumeType: gp2
      encrypted: true
      deleteOnTermination: true
iam:
  name: iam-name
keyName: key-value-pair-name
machineType: t2.large
networkInterfaces:
  - subnetID: subnet-acbd1234
    securityGroupIDs: ["sg-xyz12345"]
region: eu-east-1
spotPrice: ""
tags:
  Name: sample-machine-name
  kubernetes.io/cluster/YOUR_CLUSTER_NAME: "1"
  kubernetes.io/role/YOUR_ROLE_NAME: "1"
  tag1: tag1-value
  tag2: tag2-value
"#;

    /// Every field set, with MCM's JSON names.
    fn full_json() -> Value {
        json!({
            "apiVersion": "mcm.gardener.cloud/v1alpha1",
            "ami": "ami-0abc",
            "machineType": "m5.large",
            "region": "eu-west-1",
            "blockDevices": [
                {"deviceName": "/root", "ebs": {
                    "deleteOnTermination": false, "encrypted": true, "iops": 4000,
                    "kmsKeyID": "alias/ebs", "snapshotID": "snap-1",
                    "volumeSize": 100, "volumeType": "io2"}},
                {"deviceName": "/dev/xvdba", "noDevice": "", "virtualName": "ephemeral0",
                 "ebs": {"throughput": 250, "volumeSize": 20, "volumeType": "gp3"}}
            ],
            "capacityReservation": {
                "capacityReservationId": "cr-1", "isMLCapacityBlock": true
            },
            "ebsOptimized": true,
            "iam": {"arn": "arn:aws:iam::1:instance-profile/x"},
            "keyName": "key",
            "monitoring": true,
            "networkInterfaces": [{
                "subnetID": "subnet-1", "securityGroupIDs": ["sg-1", "sg-2"],
                "associatePublicIPAddress": true, "ipv6AddressCount": 1,
                "ipv6PrefixCount": 1, "deleteOnTermination": false,
                "description": "primary", "interfaceType": "efa-only",
                "networkCardIndex": 0, "deviceIndex": 0, "primaryIpv6": true
            }],
            "spotPrice": "0.05",
            "instanceMarketOptions": {"marketType": "capacity-block"},
            "srcAndDstChecksEnabled": false,
            "tags": {"kubernetes.io/cluster/c": "1", "kubernetes.io/role/node": "1"},
            "instanceMetadataOptions": {
                "httpEndpoint": "enabled", "httpPutResponseHopLimit": 2,
                "httpTokens": "required", "httpProtocolIpv6": "disabled"
            },
            "cpuOptions": {"coreCount": 2, "threadsPerCore": 1, "amdSevSnp": "enabled"},
            "placement": {
                "groupId": "pg-1", "tenancy": "host", "hostId": "h-1",
                "partitionNumber": 2, "affinity": "host"
            }
        })
    }

    #[test]
    fn parses_mcm_sample_provider_spec() {
        let spec: AWSProviderSpec = serde_yaml::from_str(MCM_SAMPLE).expect("sample parses");
        assert_eq!(spec.ami, "ami-123456");
        assert_eq!(spec.machine_type, "t2.large");
        assert_eq!(spec.region, "eu-east-1");
        assert_eq!(spec.iam.name, "iam-name");
        assert!(spec.iam.arn.is_empty());
        assert_eq!(spec.key_name.as_deref(), Some("key-value-pair-name"));
        assert_eq!(spec.spot_price.as_deref(), Some(""));
        assert_eq!(spec.block_devices.len(), 2);
        let root = &spec.block_devices[0];
        assert_eq!(root.device_name, ROOT_DEVICE_NAME);
        assert_eq!(root.ebs.volume_size, 50);
        assert_eq!(root.ebs.volume_type, VolumeType::Gp2);
        assert_eq!(root.ebs.encrypted, Some(false));
        assert_eq!(root.ebs.delete_on_termination, Some(true));
        assert_eq!(spec.block_devices[1].device_name, "/dev/sdb");
        assert_eq!(spec.block_devices[1].ebs.encrypted, Some(true));
        let nic = &spec.network_interfaces[0];
        assert_eq!(nic.subnet_id, "subnet-acbd1234");
        assert_eq!(nic.security_group_ids, ["sg-xyz12345"]);
        assert_eq!(spec.tags.len(), 5);
        assert_eq!(
            spec.cluster_tag_key(),
            Some("kubernetes.io/cluster/YOUR_CLUSTER_NAME")
        );
        assert_eq!(
            spec.role_tag_key(),
            Some("kubernetes.io/role/YOUR_ROLE_NAME")
        );
        assert_eq!(spec.capacity_reservation, None);
        assert_eq!(spec.placement, None);
    }

    #[test]
    fn full_spec_round_trips_with_mcm_field_names() {
        let original = full_json();
        let spec: AWSProviderSpec = serde_json::from_value(original.clone()).expect("parses");
        assert_eq!(spec.block_devices[0].ebs.volume_type, VolumeType::Io2);
        assert_eq!(
            spec.block_devices[0].ebs.kms_key_id.as_deref(),
            Some("alias/ebs")
        );
        assert_eq!(
            spec.network_interfaces[0].interface_type,
            Some(InterfaceType::EfaOnly)
        );
        assert_eq!(
            spec.instance_market_options.as_ref().map(|m| m.market_type),
            Some(MarketType::CapacityBlock)
        );
        assert_eq!(
            spec.placement.as_ref().and_then(|p| p.tenancy),
            Some(Tenancy::Host)
        );
        // Serializing gives back exactly the input: same names, nothing added.
        assert_eq!(serde_json::to_value(&spec).expect("serializes"), original);
    }

    #[test]
    fn sample_round_trips_without_inventing_fields() {
        let spec: AWSProviderSpec = serde_yaml::from_str(MCM_SAMPLE).expect("parses");
        let value = serde_json::to_value(&spec).expect("serializes");
        let object = value.as_object().expect("object");
        for absent in [
            "apiVersion",
            "capacityReservation",
            "ebsOptimized",
            "monitoring",
        ] {
            assert!(!object.contains_key(absent), "{absent} was invented");
        }
        let back: AWSProviderSpec = serde_json::from_value(value).expect("parses again");
        assert_eq!(back, spec);
    }

    #[test]
    fn enums_use_ec2_strings() {
        let all = [
            VolumeType::Gp2,
            VolumeType::Gp3,
            VolumeType::Io1,
            VolumeType::Io2,
            VolumeType::St1,
            VolumeType::Sc1,
            VolumeType::Standard,
        ];
        for t in all {
            assert_eq!(serde_json::to_value(t).unwrap(), json!(t.as_str()));
        }
        let pref = CapacityReservationPreference::CapacityReservationsOnly;
        assert_eq!(serde_json::to_value(pref).unwrap(), json!(pref.as_str()));
        for m in [MarketType::Spot, MarketType::CapacityBlock] {
            assert_eq!(serde_json::to_value(m).unwrap(), json!(m.as_str()));
        }
        for i in [
            InterfaceType::Interface,
            InterfaceType::Efa,
            InterfaceType::EfaOnly,
        ] {
            assert_eq!(serde_json::to_value(i).unwrap(), json!(i.as_str()));
        }
        for t in [Tenancy::Default, Tenancy::Dedicated, Tenancy::Host] {
            assert_eq!(serde_json::to_value(t).unwrap(), json!(t.as_str()));
        }
        for a in [Affinity::Default, Affinity::Host] {
            assert_eq!(serde_json::to_value(a).unwrap(), json!(a.as_str()));
        }
        for s in [FeatureState::Enabled, FeatureState::Disabled] {
            assert_eq!(serde_json::to_value(s).unwrap(), json!(s.as_str()));
        }
        for h in [HttpTokens::Required, HttpTokens::Optional] {
            assert_eq!(serde_json::to_value(h).unwrap(), json!(h.as_str()));
        }
    }

    #[test]
    fn rejects_unknown_enum_values_and_missing_required_fields() {
        let mut bad_type = full_json();
        bad_type["blockDevices"][0]["ebs"]["volumeType"] = json!("gp4");
        assert!(serde_json::from_value::<AWSProviderSpec>(bad_type).is_err());

        let mut no_ami = full_json();
        no_ami.as_object_mut().unwrap().remove("ami");
        assert!(serde_json::from_value::<AWSProviderSpec>(no_ami).is_err());
    }

    /// The schema as kube's `#[derive(CustomResource)]` renders it.
    fn crd_schema() -> Value {
        use kube::core::schema::{OptionalEnum, StructuralSchemaRewriter};
        let generator = schemars::generate::SchemaSettings::openapi3()
            .with(|s| {
                s.inline_subschemas = true;
                s.meta_schema = None;
            })
            .with_transform(schemars::transform::AddNullable::default())
            .with_transform(StructuralSchemaRewriter)
            .with_transform(OptionalEnum)
            .into_generator();
        generator
            .into_root_schema_for::<AWSProviderSpec>()
            .to_value()
    }

    /// Every node is typed and free of constructs a structural schema forbids.
    fn assert_structural(path: &str, node: &Value) {
        let object = node
            .as_object()
            .unwrap_or_else(|| panic!("{path} is not an object"));
        for forbidden in [
            "$ref",
            "anyOf",
            "oneOf",
            "allOf",
            "not",
            "const",
            "definitions",
        ] {
            assert!(!object.contains_key(forbidden), "{path} has {forbidden}");
        }
        if let Some(values) = object.get("enum").and_then(Value::as_array) {
            assert!(!values.contains(&Value::Null), "{path} has null in enum");
        }
        assert!(object.contains_key("type"), "{path} has no type");
        if let Some(properties) = object.get("properties").and_then(Value::as_object) {
            for (name, child) in properties {
                assert!(
                    child.get("description").is_some(),
                    "{path}.{name} has no description"
                );
                assert_structural(&format!("{path}.{name}"), child);
            }
        }
        if let Some(items) = object.get("items") {
            assert_structural(&format!("{path}[]"), items);
        }
        if let Some(values) = object.get("additionalProperties").filter(|v| v.is_object()) {
            assert_structural(&format!("{path}{{}}"), values);
        }
    }

    #[test]
    fn schema_is_structural_and_documented() {
        let schema = crd_schema();
        assert_structural("providerSpec", &schema);
    }

    #[test]
    fn schema_carries_static_rules() {
        let s = crd_schema();
        let p = &s["properties"];
        let required = |v: &Value| -> Vec<String> {
            let mut r: Vec<String> = serde_json::from_value(v["required"].clone()).unwrap();
            r.sort();
            r
        };
        assert_eq!(
            required(&s),
            ["ami", "iam", "machineType", "networkInterfaces", "region"]
        );
        assert_eq!(p["ami"]["minLength"], json!(1));
        assert_eq!(p["networkInterfaces"]["minItems"], json!(1));
        let nic = &p["networkInterfaces"]["items"];
        assert_eq!(required(nic), ["securityGroupIDs", "subnetID"]);
        assert_eq!(nic["properties"]["securityGroupIDs"]["minItems"], json!(1));
        assert_eq!(
            nic["properties"]["securityGroupIDs"]["items"]["minLength"],
            json!(1)
        );
        assert_eq!(
            nic["properties"]["interfaceType"]["enum"],
            json!(["interface", "efa", "efa-only"])
        );
        let ebs = &p["blockDevices"]["items"]["properties"]["ebs"];
        assert_eq!(required(ebs), ["volumeSize", "volumeType"]);
        assert_eq!(
            ebs["properties"]["volumeType"]["enum"],
            json!(["gp2", "gp3", "io1", "io2", "st1", "sc1", "standard"])
        );
        assert_eq!(ebs["properties"]["volumeSize"]["minimum"], json!(1));
        assert_eq!(ebs["properties"]["iops"]["minimum"], json!(0));
        let imds = &p["instanceMetadataOptions"]["properties"];
        assert_eq!(imds["httpTokens"]["enum"], json!(["required", "optional"]));
        assert_eq!(imds["httpTokens"]["nullable"], json!(true));
        assert_eq!(imds["httpPutResponseHopLimit"]["maximum"], json!(64));
        let cpu = &p["cpuOptions"]["properties"];
        assert_eq!(cpu["threadsPerCore"]["minimum"], json!(1));
        assert_eq!(cpu["threadsPerCore"]["maximum"], json!(2));
        let placement = &p["placement"]["properties"];
        assert_eq!(
            placement["tenancy"]["enum"],
            json!(["default", "dedicated", "host"])
        );
        assert_eq!(placement["partitionNumber"]["minimum"], json!(1));
        // Optional enums keep the field's doc, not the enum type's.
        let doc = |v: &Value| v["description"].as_str().unwrap_or_default().to_owned();
        assert!(doc(&placement["tenancy"]).starts_with("Tenancy: `default`"));
        assert!(doc(&imds["httpTokens"]).starts_with("`required` enforces IMDSv2"));
        assert!(doc(&cpu["amdSevSnp"]).starts_with("AMD SEV-SNP"));
        assert!(doc(&ebs["properties"]["volumeType"]).starts_with("Volume type."));
        assert_eq!(
            p["capacityReservation"]["properties"]["capacityReservationPreference"]["enum"],
            json!(["open", "none", "capacity-reservations-only"])
        );
        assert_eq!(
            p["instanceMarketOptions"]["properties"]["marketType"]["enum"],
            json!(["spot", "capacity-block"])
        );
        assert!(p["spotPrice"]["pattern"].is_string());
        assert_eq!(p["tags"]["additionalProperties"]["type"], json!("string"));
    }
}
