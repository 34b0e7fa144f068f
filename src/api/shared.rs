//! Types shared by several `machine.sapcloud.io/v1alpha1` kinds: the class
//! reference, the node template, the inline machine configuration, the
//! machine status pieces reused by sets and deployments, and the machine
//! template that sets and deployments stamp machines from.
//!
//! Field names and shapes follow MCM's `pkg/apis/machine/v1alpha1` so that
//! MCM manifests (and objects written by MCM) deserialize unchanged. Go's
//! `omitempty` on non-pointer structs still serializes `{}` and a zero
//! `metav1.Time` serializes as `null`; every optional field here therefore
//! accepts both "absent" and `null`.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::NodeSpec;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::Duration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::api::machine::MachineSpec;
use crate::api::stamp::Stamp;
use crate::intern::IStr;

/// Pattern every duration field is checked against by the API server: a Go
/// `time.ParseDuration` string without sign, e.g. `20m`, `1h30m`, `90s`, `0`.
pub const DURATION_PATTERN: &str = r"^(0|(([0-9]+(\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h))+)$";

/// `skip_serializing_if` helper: true for `false`.
pub(crate) fn is_false(value: &bool) -> bool {
    !*value
}

/// `skip_serializing_if` helper: true for `0`.
pub(crate) fn is_zero(value: &i32) -> bool {
    *value == 0
}

/// `skip_serializing_if` helper: true when the value equals its type's default.
pub(crate) fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// Reference from a machine (or machine template) to the MachineClass that
/// describes how to create its instance.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClassSpec {
    /// API group of the referenced class. Optional; when set it must be
    /// `machine.sapcloud.io`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_group: Option<String>,

    /// Kind of the referenced class. This operator reconciles `MachineClass`
    /// (MCM's provider-agnostic class); the legacy per-provider kinds such as
    /// `AWSMachineClass` are not supported.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,

    /// Name of the referenced MachineClass, in the same namespace as the
    /// machine.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}

impl ClassSpec {
    /// A reference to the `MachineClass` named `name`.
    pub fn machine_class(name: impl Into<String>) -> Self {
        Self {
            api_group: None,
            kind: "MachineClass".to_owned(),
            name: name.into(),
        }
    }
}

/// What the Node of a machine should look like once it joins the cluster:
/// labels, annotations and taints that are applied to the Node object.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeTemplateSpec {
    /// Metadata for the Node. Labels and annotations given here are added to
    /// the Node; other metadata fields are ignored.
    #[serde(default, skip_serializing_if = "is_default")]
    pub metadata: ObjectMeta,

    /// Node spec for the Node. Taints given here are added to the Node; other
    /// spec fields are ignored.
    #[serde(default, skip_serializing_if = "is_default")]
    pub spec: NodeSpec,
}

/// Per-machine settings for the machine controller. In MCM these fields are
/// inlined into the machine spec (`spec.drainTimeout`, ...); every field is
/// optional and falls back to the operator's command-line default.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MachineConfiguration {
    /// How long to drain the Node (evicting its pods) before the machine is
    /// deleted anyway, as a duration such as `2h` or `30m`. Default: `2h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub drain_timeout: Option<Duration>,

    /// How long a Running machine may stay unhealthy (Node not Ready, gone, or
    /// one of `nodeConditions` true) before it is marked Failed and replaced,
    /// as a duration such as `10m`. Default: `10m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub health_timeout: Option<Duration>,

    /// How long a new machine may take to join the cluster as a Ready Node
    /// before it is marked Failed and replaced, as a duration such as `20m`.
    /// Default: `20m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub creation_timeout: Option<Duration>,

    /// MCM: how long an in-place update may take before it is declared
    /// failed. Accepted for compatibility with MCM manifests; this operator
    /// does not perform in-place updates and ignores this field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub in_place_update_timeout: Option<Duration>,

    /// How long a machine stays preserved (annotation
    /// `node.machine.sapcloud.io/preserve` on the Machine or its Node, or
    /// auto-preserved by its set) before preservation stops. Default: the
    /// operator's `--machine-preserve-timeout` (96h). A change applies to
    /// preservations that start afterwards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub machine_preserve_timeout: Option<Duration>,

    /// When true, the health timeout is ignored: an unhealthy machine stays
    /// `Unknown` and is never marked Failed and replaced for it (MCM's setting
    /// for in-place update pools). The creation timeout still applies, and a
    /// machine whose instance EC2 terminated still fails. Default: false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_health_timeout: Option<bool>,

    /// How many times eviction of a pod is retried while draining the Node
    /// before the drain gives up on that pod. Default: the operator-wide
    /// setting (MCM's default is 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_evict_retries: Option<i32>,

    /// Comma-separated list of Node condition types (e.g.
    /// `KernelDeadlock,ReadonlyFilesystem,DiskPressure`) that make a machine
    /// unhealthy while they are `True`, in addition to the Node not being
    /// Ready. Default: the operator-wide setting (MCM's default is
    /// `KernelDeadlock,ReadonlyFilesystem,DiskPressure,NetworkUnavailable`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_conditions: Option<String>,
}

impl MachineConfiguration {
    /// The configured `nodeConditions`, split on commas, trimmed, empty
    /// entries dropped. `None` when the field is not set.
    pub fn node_condition_types(&self) -> Option<Vec<&str>> {
        self.node_conditions.as_deref().map(|list| {
            list.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect()
        })
    }
}

/// The template a MachineSet or MachineDeployment stamps its machines from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MachineTemplateSpec {
    /// Metadata given to every machine created from this template. Its labels
    /// must match the owner's `selector`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub metadata: ObjectMeta,

    /// Spec given to every machine created from this template.
    #[serde(default, skip_serializing_if = "is_default")]
    pub spec: MachineSpec,
}

/// Lifecycle phase of the machine: `Pending` (instance being created, or its
/// Node has not joined yet), `Running` (Node Ready), `Unknown` (Node not Ready
/// or gone; becomes `Failed` after the health timeout), `Failed` (creation or
/// health timeout exceeded; the machine is replaced), `CrashLoopBackOff`
/// (creating the instance keeps failing and is retried with backoff) or
/// `Terminating` (being deleted). `Available` and the `InPlaceUpdate*` phases
/// are MCM's and never set by this operator.
// The type doc (not the field doc) becomes the CRD description of
// `Option<MachinePhase>` fields, so it is written for users.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum MachinePhase {
    /// The instance is being created, or has been created and its Node has
    /// not joined yet.
    Pending,
    /// MCM: the instance exists but its Node has not joined the cluster yet.
    Available,
    /// The Node has joined and is Ready.
    Running,
    /// The machine is being deleted: drain, instance termination, Node removal.
    Terminating,
    /// The Node is not Ready or has disappeared; the machine becomes Failed
    /// when this lasts longer than the health timeout.
    Unknown,
    /// The machine did not become healthy within its creation or health
    /// timeout and will be replaced.
    Failed,
    /// Creating the instance keeps failing; it is retried with backoff.
    CrashLoopBackOff,
    /// MCM in-place update in progress. Never set by this operator.
    InPlaceUpdating,
    /// MCM in-place update finished. Never set by this operator.
    InPlaceUpdateSuccessful,
    /// MCM in-place update failed. Never set by this operator.
    InPlaceUpdateFailed,
}

impl MachinePhase {
    /// Every phase, in declaration order (for metrics that report a gauge per
    /// phase).
    pub const ALL: [MachinePhase; 10] = [
        Self::Pending,
        Self::Available,
        Self::Running,
        Self::Terminating,
        Self::Unknown,
        Self::Failed,
        Self::CrashLoopBackOff,
        Self::InPlaceUpdating,
        Self::InPlaceUpdateSuccessful,
        Self::InPlaceUpdateFailed,
    ];

    /// The wire name, e.g. `"CrashLoopBackOff"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Available => "Available",
            Self::Running => "Running",
            Self::Terminating => "Terminating",
            Self::Unknown => "Unknown",
            Self::Failed => "Failed",
            Self::CrashLoopBackOff => "CrashLoopBackOff",
            Self::InPlaceUpdating => "InPlaceUpdating",
            Self::InPlaceUpdateSuccessful => "InPlaceUpdateSuccessful",
            Self::InPlaceUpdateFailed => "InPlaceUpdateFailed",
        }
    }
}

impl fmt::Display for MachinePhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// State of the operation: `Processing` (in progress), `Failed` (see
/// `description` and `errorCode`) or `Successful`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum MachineState {
    /// The operation is still in progress.
    Processing,
    /// The operation failed; `description` and `errorCode` say why.
    Failed,
    /// The operation completed.
    Successful,
}

impl MachineState {
    /// The wire name, e.g. `"Processing"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Processing => "Processing",
            Self::Failed => "Failed",
            Self::Successful => "Successful",
        }
    }
}

impl fmt::Display for MachineState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Kind of operation: `Create`, `Update`, `DrainNode`, `HealthCheck` or
/// `Delete`. `InPlaceUpdate` is MCM's and never set by this operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum MachineOperationType {
    /// Creating the instance and waiting for its Node.
    Create,
    /// Updating the machine or its Node.
    Update,
    /// MCM in-place update. Never set by this operator.
    InPlaceUpdate,
    /// Draining the Node before deletion.
    DrainNode,
    /// Checking the health of the Node.
    HealthCheck,
    /// Deleting the machine: terminating the instance and removing the Node.
    Delete,
}

impl MachineOperationType {
    /// The wire name, e.g. `"HealthCheck"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "Create",
            Self::Update => "Update",
            Self::InPlaceUpdate => "InPlaceUpdate",
            Self::DrainNode => "DrainNode",
            Self::HealthCheck => "HealthCheck",
            Self::Delete => "Delete",
        }
    }
}

impl fmt::Display for MachineOperationType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The last operation performed on a machine (or, for a MachineSet, on one
/// of its machines) and how it went.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastOperation {
    /// Human-readable description of the operation and its outcome; for a
    /// failure this carries the cloud provider's error message.
    // Interned: a fleet's Running machines all say the same sentence.
    #[serde(default, skip_serializing_if = "IStr::is_empty")]
    pub description: IStr,

    /// Machine-readable error code when the operation failed (gRPC-style
    /// codes as used by MCM, e.g. `ResourceExhausted`, `InvalidArgument`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,

    /// When this operation record was last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Stamp::is_none")]
    pub last_update_time: Stamp,

    /// State of the operation; see [`MachineState`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<MachineState>,

    /// Kind of operation; see [`MachineOperationType`].
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<MachineOperationType>,
}

/// Where a machine is in its lifecycle.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CurrentStatus {
    /// Lifecycle phase of the machine; see [`MachinePhase`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<MachinePhase>,

    /// True while a creation or health timeout is running for this machine,
    /// i.e. the machine will be marked Failed if it does not become healthy
    /// in time.
    #[serde(default, skip_serializing_if = "is_false")]
    pub timeout_active: bool,

    /// When the phase last changed (RFC 3339); timeouts are measured from here.
    #[serde(default, skip_serializing_if = "Stamp::is_none")]
    pub last_update_time: Stamp,

    /// While the machine is preserved: when preservation ends (set once when
    /// it starts, from `machinePreserveTimeout`; may be edited to extend or
    /// shorten it). Cleared when preservation stops.
    #[serde(default, skip_serializing_if = "Stamp::is_none")]
    pub preserve_expiry_time: Stamp,
}

/// Status of a condition on a MachineSet or MachineDeployment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum ConditionStatus {
    /// The condition holds.
    True,
    /// The condition does not hold.
    False,
    /// It cannot be determined whether the condition holds.
    Unknown,
}

impl ConditionStatus {
    /// The wire name: `"True"`, `"False"` or `"Unknown"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::True => "True",
            Self::False => "False",
            Self::Unknown => "Unknown",
        }
    }
}

impl fmt::Display for ConditionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Summary of one machine, listed in a MachineSet's or MachineDeployment's
/// status (e.g. machines whose last operation failed).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MachineSummary {
    /// Name of the Machine object.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,

    /// Provider ID of the machine's instance, e.g.
    /// `aws:///eu-west-1/i-0123456789abcdef0`.
    #[serde(
        default,
        rename = "providerID",
        skip_serializing_if = "Option::is_none"
    )]
    pub provider_id: Option<String>,

    /// The machine's last operation, including the error when it failed.
    #[serde(default, skip_serializing_if = "is_default")]
    pub last_operation: LastOperation,

    /// Name of the object that owns the machine (its MachineSet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_ref: Option<String>,
}

/// What a Node created from a MachineClass will offer, so that the cluster
/// autoscaler can scale a node group up from zero. Used as the
/// MachineClass's top-level `nodeTemplate`; this operator does not act on it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeTemplate {
    /// Resources of the Node, e.g. `cpu: "2"`, `memory: 8Gi`, `pods: "110"`.
    pub capacity: BTreeMap<String, Quantity>,

    /// Expected virtual (extended) resources of the Node, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_capacity: Option<BTreeMap<String, Quantity>>,

    /// Instance type of the Node, e.g. `m5.large`.
    pub instance_type: String,

    /// Region of the Node, e.g. `eu-west-1`.
    pub region: String,

    /// Availability zone of the Node, e.g. `eu-west-1a`.
    pub zone: String,

    /// CPU architecture of the Node, e.g. `amd64` or `arm64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_configuration_reads_mcm_names() {
        let yaml = r#"
drainTimeout: 2h
healthTimeout: 10m
creationTimeout: 20m
inPlaceUpdateTimeout: 1h
machinePreserveTimeout: 72h
disableHealthTimeout: false
maxEvictRetries: 10
nodeConditions: "KernelDeadlock, ReadonlyFilesystem,,DiskPressure"
"#;
        let config: MachineConfiguration = serde_yaml::from_str(yaml).unwrap();
        assert_eq!(
            config.drain_timeout.unwrap(),
            std::time::Duration::from_secs(7200)
        );
        assert_eq!(
            config.health_timeout.unwrap(),
            std::time::Duration::from_secs(600)
        );
        assert_eq!(
            config.creation_timeout.unwrap(),
            std::time::Duration::from_secs(1200)
        );
        assert_eq!(
            config.machine_preserve_timeout.unwrap(),
            std::time::Duration::from_secs(72 * 3600)
        );
        assert_eq!(config.disable_health_timeout, Some(false));
        assert_eq!(config.max_evict_retries, Some(10));
        assert_eq!(
            config.node_condition_types().unwrap(),
            ["KernelDeadlock", "ReadonlyFilesystem", "DiskPressure"]
        );

        let back: MachineConfiguration =
            serde_yaml::from_str(&serde_yaml::to_string(&config).unwrap()).unwrap();
        assert_eq!(back, config);
    }

    #[test]
    fn go_zero_values_deserialize_as_absent() {
        // What MCM's Go client writes for an empty LastOperation/CurrentStatus.
        let op: LastOperation = serde_json::from_str(r#"{"lastUpdateTime":null}"#).unwrap();
        assert_eq!(op, LastOperation::default());
        let status: CurrentStatus = serde_json::from_str(r#"{"lastUpdateTime":null}"#).unwrap();
        assert_eq!(status, CurrentStatus::default());
        let class: ClassSpec = serde_json::from_str("{}").unwrap();
        assert_eq!(class, ClassSpec::default());
    }

    #[test]
    fn empty_values_are_not_serialized() {
        assert_eq!(
            serde_json::to_string(&CurrentStatus::default()).unwrap(),
            "{}"
        );
        assert_eq!(
            serde_json::to_string(&LastOperation::default()).unwrap(),
            "{}"
        );
        assert_eq!(
            serde_json::to_string(&NodeTemplateSpec::default()).unwrap(),
            "{}"
        );
        assert_eq!(
            serde_json::to_string(&MachineConfiguration::default()).unwrap(),
            "{}"
        );
    }

    #[test]
    fn enums_use_mcm_wire_names() {
        for phase in MachinePhase::ALL {
            let json = serde_json::to_string(&phase).unwrap();
            assert_eq!(json, format!("\"{phase}\""));
            assert_eq!(serde_json::from_str::<MachinePhase>(&json).unwrap(), phase);
        }
        let op: LastOperation = serde_json::from_str(
            r#"{"description":"Drain","state":"Processing","type":"DrainNode","errorCode":"Internal"}"#,
        )
        .unwrap();
        assert_eq!(op.state, Some(MachineState::Processing));
        assert_eq!(op.type_, Some(MachineOperationType::DrainNode));
        assert_eq!(op.error_code.as_deref(), Some("Internal"));
        assert!(serde_json::from_str::<MachinePhase>("\"running\"").is_err());
    }

    #[test]
    fn node_template_round_trips() {
        let yaml = r#"
capacity:
  cpu: "2"
  memory: 8Gi
  gpu: "0"
instanceType: m5.large
region: eu-west-1
zone: eu-west-1a
architecture: amd64
"#;
        let template: NodeTemplate = serde_yaml::from_str(yaml).unwrap();
        assert_eq!(template.capacity["memory"], Quantity("8Gi".into()));
        assert_eq!(template.instance_type, "m5.large");
        assert_eq!(template.architecture.as_deref(), Some("amd64"));
        let back: NodeTemplate =
            serde_yaml::from_str(&serde_yaml::to_string(&template).unwrap()).unwrap();
        assert_eq!(back, template);
    }
}
