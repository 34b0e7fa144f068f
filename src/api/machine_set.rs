//! The `MachineSet` kind: keeps a number of identical, healthy machines.
//!
//! Wire-compatible with MCM's `MachineSet`. Note MCM's JSON name for the
//! status conditions: `status.machineSetCondition`, not `status.conditions`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::api::shared::{
    ClassSpec, ConditionStatus, LastOperation, MachineSummary, MachineTemplateSpec, is_default,
    is_zero,
};

/// Desired state of a MachineSet: how many machines, which ones belong to it,
/// and the template new machines are created from.
// Each `printcolumn(...)` repeats the same keys, which clippy mistakes for
// duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "machine.sapcloud.io",
    version = "v1alpha1",
    kind = "MachineSet",
    namespaced,
    status = "MachineSetStatus",
    shortname = "mcs",
    category = "machine-controller-manager",
    derive = "PartialEq",
    derive = "Default",
    doc = "A MachineSet keeps spec.replicas healthy machines created from spec.template, replacing failed ones. MachineSets are usually managed by a MachineDeployment.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas"
    ),
    printcolumn(
        name = "Desired",
        type_ = "integer",
        json_path = ".spec.replicas",
        description = "Number of desired machines."
    ),
    printcolumn(
        name = "Current",
        type_ = "integer",
        json_path = ".status.replicas",
        description = "Number of machines that currently exist."
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readyReplicas",
        description = "Number of machines whose Node is Ready."
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct MachineSetSpec {
    /// Number of machines to keep. Default: 0.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub replicas: i32,

    /// Label query selecting the machines that belong to this set. It must
    /// match the labels of `template.metadata`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,

    /// MCM legacy field, not used: machines are created from the class in
    /// `template.spec.class`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_class: Option<ClassSpec>,

    /// Template for the machines this set creates.
    #[serde(default, skip_serializing_if = "is_default")]
    pub template: MachineTemplateSpec,

    /// Seconds a new machine must be Running (its Node Ready) before it counts
    /// as available. Default: 0 (available as soon as it is Running).
    #[serde(default, skip_serializing_if = "is_zero")]
    #[schemars(range(min = 0))]
    pub min_ready_seconds: i32,

    /// How many Failed machines of this set are preserved for diagnosis at
    /// most, automatically (annotation `node.machine.sapcloud.io/preserve:
    /// auto-preserved`, newest Failed machine first): a preserved Failed
    /// machine is kept, drained and cordoned, until `machinePreserveTimeout`
    /// runs out, and a replacement is created meanwhile. Machines annotated
    /// `preserve: false` are never auto-preserved. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub auto_preserve_failed_machine_max: Option<i32>,
}

/// Type of a MachineSet condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum MachineSetConditionType {
    /// Creating or deleting one of the set's machines failed (e.g. quota,
    /// capacity or an invalid class).
    ReplicaFailure,
    /// The set is frozen by the safety controller because it has far more
    /// machines than desired; it is not scaled until the condition clears.
    Frozen,
}

/// One observation about a MachineSet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MachineSetCondition {
    /// Type of the condition: `ReplicaFailure` or `Frozen`.
    #[serde(rename = "type")]
    pub type_: MachineSetConditionType,

    /// Whether the condition holds: `True`, `False` or `Unknown`.
    pub status: ConditionStatus,

    /// When the condition last changed status (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,

    /// One-word, CamelCase reason for the last transition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,

    /// Human-readable details about the last transition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Observed state of a MachineSet.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MachineSetStatus {
    /// Number of machines that currently belong to the set.
    #[serde(default)]
    pub replicas: i32,

    /// Number of machines whose labels match the labels of the set's
    /// template.
    #[serde(default)]
    pub fully_labeled_replicas: i32,

    /// Number of machines whose Node is Ready.
    #[serde(default)]
    pub ready_replicas: i32,

    /// Number of machines that have been Ready for at least
    /// `minReadySeconds`.
    #[serde(default)]
    pub available_replicas: i32,

    /// The `metadata.generation` of the MachineSet that this status reflects.
    #[serde(default)]
    pub observed_generation: i64,

    /// Latest observations of the set's state. Named `machineSetCondition` on
    /// the wire, as in MCM.
    #[serde(
        default,
        rename = "machineSetCondition",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub conditions: Vec<MachineSetCondition>,

    /// The last operation on one of the set's machines.
    #[serde(default, skip_serializing_if = "is_default")]
    pub last_operation: LastOperation,

    /// Machines of this set whose last operation failed, with the error.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_machines: Vec<MachineSummary>,

    /// Number of Failed machines of this set that are auto-preserved (see
    /// `spec.autoPreserveFailedMachineMax`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_preserve_failed_machine_count: Option<i32>,

    /// Number of Failed machines of this set kept because they are preserved
    /// (by annotation or automatically); they do not count as replicas.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub preserved_failed_replicas: i32,
}

impl MachineSetStatus {
    /// The condition of the given type, if present.
    pub fn condition(&self, type_: MachineSetConditionType) -> Option<&MachineSetCondition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::shared::{MachineOperationType, MachineState};
    use kube::core::CustomResourceExt;
    use serde_json::{Value, json};

    /// A MachineSet shaped like MCM's `kubernetes/machine_objects/machine-set.yaml`,
    /// with a status as MCM writes it.
    const MACHINE_SET_YAML: &str = r#"
apiVersion: machine.sapcloud.io/v1alpha1
kind: MachineSet
metadata:
  name: test-machine-set
  namespace: default
spec:
  replicas: 3
  minReadySeconds: 200
  autoPreserveFailedMachineMax: 1
  selector:
    matchLabels:
      test-label: test-label
  template:
    metadata:
      labels:
        test-label: test-label
    spec:
      class:
        kind: MachineClass
        name: test-class
      drainTimeout: 5m
      nodeTemplate:
        metadata:
          labels:
            pool: a
status:
  replicas: 3
  fullyLabeledReplicas: 3
  readyReplicas: 2
  availableReplicas: 2
  observedGeneration: 4
  machineSetCondition:
  - type: ReplicaFailure
    status: "True"
    reason: FailedCreate
    message: "InsufficientInstanceCapacity: no m5.large capacity in eu-west-1a"
    lastTransitionTime: "2024-05-01T10:00:00Z"
  lastOperation:
    lastUpdateTime: null
  failedMachines:
  - name: test-machine-set-abcde
    providerID: aws:///eu-west-1/i-0123456789abcdef0
    ownerRef: test-machine-set
    lastOperation:
      description: "InsufficientInstanceCapacity: no m5.large capacity in eu-west-1a"
      errorCode: ResourceExhausted
      lastUpdateTime: "2024-05-01T10:00:00Z"
      state: Failed
      type: Create
"#;

    #[test]
    fn deserializes_an_mcm_machine_set() {
        let set: MachineSet = serde_yaml::from_str(MACHINE_SET_YAML).unwrap();
        assert_eq!(set.spec.replicas, 3);
        assert_eq!(set.spec.min_ready_seconds, 200);
        assert_eq!(set.spec.auto_preserve_failed_machine_max, Some(1));
        let selector = set.spec.selector.as_ref().unwrap();
        assert_eq!(
            selector.match_labels.as_ref().unwrap()["test-label"],
            "test-label"
        );
        let template = &set.spec.template;
        assert_eq!(
            template.metadata.labels.as_ref().unwrap()["test-label"],
            "test-label"
        );
        assert_eq!(template.spec.class.name, "test-class");
        assert_eq!(
            template.spec.configuration.drain_timeout.unwrap(),
            std::time::Duration::from_secs(300)
        );

        let status = set.status.as_ref().unwrap();
        assert_eq!(
            (
                status.replicas,
                status.ready_replicas,
                status.observed_generation
            ),
            (3, 2, 4)
        );
        let failure = status
            .condition(MachineSetConditionType::ReplicaFailure)
            .unwrap();
        assert_eq!(failure.status, ConditionStatus::True);
        assert_eq!(failure.reason.as_deref(), Some("FailedCreate"));
        assert!(status.condition(MachineSetConditionType::Frozen).is_none());
        assert_eq!(status.last_operation, LastOperation::default());
        let failed = &status.failed_machines[0];
        assert_eq!(failed.name, "test-machine-set-abcde");
        assert_eq!(failed.last_operation.state, Some(MachineState::Failed));
        assert_eq!(
            failed.last_operation.type_,
            Some(MachineOperationType::Create)
        );
        assert_eq!(
            failed.last_operation.error_code.as_deref(),
            Some("ResourceExhausted")
        );
    }

    #[test]
    fn round_trips_with_mcm_condition_name() {
        let set: MachineSet = serde_yaml::from_str(MACHINE_SET_YAML).unwrap();
        let back: MachineSet = serde_yaml::from_str(&serde_yaml::to_string(&set).unwrap()).unwrap();
        assert_eq!(back, set);
        let json = serde_json::to_value(&set).unwrap();
        assert!(json["status"]["machineSetCondition"].is_array());
        assert!(json["status"].get("conditions").is_none());
        assert!(json["status"].get("lastOperation").is_none());
    }

    #[test]
    fn replicas_zero_is_explicit() {
        let set = MachineSet::new("s", MachineSetSpec::default());
        let json = serde_json::to_value(&set).unwrap();
        assert_eq!(json["spec"], json!({"replicas": 0}));
    }

    #[test]
    fn crd_has_scale_and_status_subresources() {
        let crd = MachineSet::crd();
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some("machinesets.machine.sapcloud.io")
        );
        assert_eq!(
            crd.spec.names.short_names.as_deref(),
            Some(&["mcs".to_owned()][..])
        );
        let version = &crd.spec.versions[0];
        let subresources = version.subresources.as_ref().unwrap();
        assert!(subresources.status.is_some());
        let scale = subresources.scale.as_ref().unwrap();
        assert_eq!(scale.spec_replicas_path, ".spec.replicas");
        assert_eq!(scale.status_replicas_path, ".status.replicas");
        assert_eq!(scale.label_selector_path, None);
        let columns: Vec<&str> = version
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(columns, ["Desired", "Current", "Ready", "Age"]);

        let crd = serde_json::to_value(&crd).unwrap();
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let spec = &schema["properties"]["spec"]["properties"];
        assert_eq!(spec["replicas"]["minimum"].as_f64(), Some(0.0));
        // Template labels survive pruning.
        assert!(!spec["template"]["properties"]["metadata"]["properties"]["labels"].is_null());
        let status = &schema["properties"]["status"]["properties"];
        assert_eq!(
            status["machineSetCondition"]["items"]["properties"]["type"]["enum"],
            json!(["ReplicaFailure", "Frozen"])
        );
        assert!(status.get("conditions").is_none_or(Value::is_null));
    }
}
