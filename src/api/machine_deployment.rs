//! The `MachineDeployment` kind: declarative updates of machines through
//! MachineSets, rolled with maxSurge/maxUnavailable or recreated.
//!
//! Wire-compatible with MCM's `MachineDeployment`, including the in-place
//! update strategy fields, which this operator accepts but does not act on.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::api::shared::{
    ConditionStatus, MachineSummary, MachineTemplateSpec, is_default, is_false, is_zero,
};

/// Label added to a deployment's MachineSets and their machines, holding a
/// hash of the machine template, so that the sets of different template
/// versions never select each other's machines (as in MCM).
pub const MACHINE_TEMPLATE_HASH_LABEL: &str = "machine-template-hash";

/// Desired state of a MachineDeployment.
// Each `printcolumn(...)` repeats the same keys, which clippy mistakes for
// duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "machine.sapcloud.io",
    version = "v1alpha1",
    kind = "MachineDeployment",
    namespaced,
    status = "MachineDeploymentStatus",
    shortname = "mcd",
    category = "machine-controller-manager",
    derive = "PartialEq",
    derive = "Default",
    doc = "A MachineDeployment keeps spec.replicas machines created from spec.template and rolls them, through MachineSets, whenever the template (or its MachineClass) changes.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas"
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readyReplicas",
        description = "Number of machines whose Node is Ready."
    ),
    printcolumn(
        name = "Desired",
        type_ = "integer",
        json_path = ".spec.replicas",
        description = "Number of desired machines."
    ),
    printcolumn(
        name = "Up-to-date",
        type_ = "integer",
        json_path = ".status.updatedReplicas",
        description = "Number of machines created from the current template."
    ),
    printcolumn(
        name = "Available",
        type_ = "integer",
        json_path = ".status.availableReplicas",
        description = "Number of machines Ready for at least minReadySeconds."
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct MachineDeploymentSpec {
    /// Number of machines to keep. Default: 0.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub replicas: i32,

    /// Label query selecting the machines (and MachineSets) that belong to
    /// this deployment. It must match the labels of `template.metadata`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,

    /// Template for the machines this deployment creates. Changing it (or the
    /// MachineClass it names) rolls the machines according to `strategy`.
    pub template: MachineTemplateSpec,

    /// How old machines are replaced by new ones. Default: `RollingUpdate`
    /// with the defaults described under `rollingUpdate`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub strategy: MachineDeploymentStrategy,

    /// Seconds a new machine must be Running (its Node Ready) before it counts
    /// as available. Default: 0 (available as soon as it is Running).
    #[serde(default, skip_serializing_if = "is_zero")]
    #[schemars(range(min = 0))]
    pub min_ready_seconds: i32,

    /// Number of old, scaled-down MachineSets to keep for history. Default:
    /// keep all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub revision_history_limit: Option<i32>,

    /// When true, changes to the template are not rolled out until the
    /// deployment is resumed (scaling still happens). Default: false.
    #[serde(default, skip_serializing_if = "is_false")]
    pub paused: bool,

    /// MCM, deprecated: a revision to roll back to. Accepted for
    /// compatibility with MCM manifests; this operator ignores it. To roll
    /// back, apply the previous template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_to: Option<RollbackConfig>,

    /// Seconds a rollout may go without progress before the deployment's
    /// `Progressing` condition turns False with reason
    /// `ProgressDeadlineExceeded`; the rollout itself continues. Default: no
    /// deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub progress_deadline_seconds: Option<i32>,

    /// How many Failed machines of this deployment are preserved for
    /// diagnosis at most, automatically: passed to the deployment's newest
    /// MachineSet (older sets, being rolled away, get 0, so rollouts replace
    /// Failed machines as usual). See the MachineSet field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub auto_preserve_failed_machine_max: Option<i32>,
}

/// How a MachineDeployment replaces old machines with new ones.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MachineDeploymentStrategy {
    /// Strategy type; see [`MachineDeploymentStrategyType`].
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<MachineDeploymentStrategyType>,

    /// Limits for a `RollingUpdate`. Only used when `type` is `RollingUpdate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolling_update: Option<RollingUpdateMachineDeployment>,

    /// MCM in-place update settings. Accepted for compatibility with MCM
    /// manifests; this operator does not perform in-place updates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_place_update: Option<InPlaceUpdateMachineDeployment>,
}

impl MachineDeploymentStrategy {
    /// The strategy type, `RollingUpdate` when unset.
    pub fn effective_type(&self) -> MachineDeploymentStrategyType {
        self.type_
            .unwrap_or(MachineDeploymentStrategyType::RollingUpdate)
    }
}

/// Strategy type: `RollingUpdate` (default) replaces machines gradually within
/// `rollingUpdate.maxSurge`/`maxUnavailable`; `Recreate` deletes all old
/// machines before creating new ones; `InPlaceUpdate` is MCM's in-place
/// update, accepted for compatibility but not performed by this operator.
// The type doc (not the field doc) becomes the CRD description of the
// `Option<...>` field, so it is written for users.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum MachineDeploymentStrategyType {
    /// Delete all old machines before creating new ones.
    Recreate,
    /// Replace machines gradually within maxSurge/maxUnavailable.
    #[default]
    RollingUpdate,
    /// MCM: update machines in place. Not performed by this operator.
    InPlaceUpdate,
}

/// Limits for a rolling update.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RollingUpdateMachineDeployment {
    /// Maximum number of machines that may be unavailable during the update,
    /// as a number (`1`) or a percentage of `replicas` (`"25%"`, rounded
    /// down). Must not be 0 when `maxSurge` is 0. Default: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<IntOrString>,

    /// Maximum number of machines that may exist above `replicas` during the
    /// update, as a number (`1`) or a percentage of `replicas` (`"25%"`,
    /// rounded up). Must not be 0 when `maxUnavailable` is 0. Default: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_surge: Option<IntOrString>,
}

/// MCM in-place update settings. Accepted for compatibility with MCM
/// manifests; this operator does not perform in-place updates.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InPlaceUpdateMachineDeployment {
    /// MCM: maximum number (or percentage) of machines updated in place at
    /// the same time while unavailable. Ignored by this operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<IntOrString>,

    /// MCM: maximum number (or percentage) of extra machines during an
    /// in-place update. Ignored by this operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_surge: Option<IntOrString>,

    /// MCM: who picks the machines to update; see [`OrchestrationType`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orchestration_type: Option<OrchestrationType>,
}

/// MCM: who picks the machines of an in-place update, `Auto` (picked
/// automatically) or `Manual` (picked by a user). Ignored by this operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum OrchestrationType {
    /// Machines are selected for update automatically.
    Auto,
    /// A user selects the machines to update.
    Manual,
}

/// MCM, deprecated: the revision a MachineDeployment should roll back to.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RollbackConfig {
    /// Revision to roll back to; 0 means the previous revision. Ignored by
    /// this operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
}

/// Type of a MachineDeployment condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum MachineDeploymentConditionType {
    /// At least `replicas - maxUnavailable` machines have been available for
    /// `minReadySeconds`.
    Available,
    /// A rollout or scaling is making progress (False with reason
    /// `ProgressDeadlineExceeded` when it stalled past
    /// `progressDeadlineSeconds`).
    Progressing,
    /// Creating or deleting one of the deployment's machines failed.
    ReplicaFailure,
    /// One of the deployment's MachineSets is frozen by the safety controller.
    Frozen,
}

/// One observation about a MachineDeployment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MachineDeploymentCondition {
    /// Type of the condition: `Available`, `Progressing`, `ReplicaFailure` or
    /// `Frozen`.
    #[serde(rename = "type")]
    pub type_: MachineDeploymentConditionType,

    /// Whether the condition holds: `True`, `False` or `Unknown`.
    pub status: ConditionStatus,

    /// When the condition was last updated (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update_time: Option<Time>,

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

/// Observed state of a MachineDeployment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MachineDeploymentStatus {
    /// The `metadata.generation` of the MachineDeployment that this status
    /// reflects.
    #[serde(default)]
    pub observed_generation: i64,

    /// Number of machines (not being deleted) selected by this deployment.
    #[serde(default)]
    pub replicas: i32,

    /// Number of those machines created from the current template.
    #[serde(default)]
    pub updated_replicas: i32,

    /// Number of those machines whose Node is Ready.
    #[serde(default)]
    pub ready_replicas: i32,

    /// Number of those machines Ready for at least `minReadySeconds`.
    #[serde(default)]
    pub available_replicas: i32,

    /// Number of machines still missing for full availability: `replicas`
    /// minus available machines (machines not yet ready or not yet created).
    #[serde(default)]
    pub unavailable_replicas: i32,

    /// Latest observations of the deployment's state.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<MachineDeploymentCondition>,

    /// Number of hash collisions when naming the newest MachineSet; used to
    /// pick a fresh name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collision_count: Option<i32>,

    /// Machines of this deployment whose last operation failed, with the
    /// error.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_machines: Vec<MachineSummary>,

    /// Number of Failed machines of this deployment's sets kept because they
    /// are preserved (the sum of the sets' `preservedFailedReplicas`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub preserved_failed_replicas: i32,
}

impl MachineDeploymentStatus {
    /// The condition of the given type, if present.
    pub fn condition(
        &self,
        type_: MachineDeploymentConditionType,
    ) -> Option<&MachineDeploymentCondition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::CustomResourceExt;
    use serde_json::json;

    /// A MachineDeployment shaped like MCM's
    /// `kubernetes/machine_objects/machine-deployment.yaml`, with a status as
    /// MCM writes it.
    const MACHINE_DEPLOYMENT_YAML: &str = r#"
apiVersion: machine.sapcloud.io/v1alpha1
kind: MachineDeployment
metadata:
  name: test-machine-deployment
  namespace: default
spec:
  replicas: 3
  minReadySeconds: 500
  revisionHistoryLimit: 5
  progressDeadlineSeconds: 600
  paused: true
  rollbackTo:
    revision: 0
  autoPreserveFailedMachineMax: 0
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxSurge: 1
      maxUnavailable: 25%
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
      healthTimeout: 5m
      creationTimeout: 5m
      maxEvictRetries: 25
      nodeConditions: ReadonlyFilesystem,KernelDeadlock,DiskPressure
status:
  observedGeneration: 2
  replicas: 3
  updatedReplicas: 3
  readyReplicas: 3
  availableReplicas: 3
  collisionCount: 1
  conditions:
  - type: Available
    status: "True"
    reason: MinimumReplicasAvailable
    message: Deployment has minimum availability.
    lastUpdateTime: "2024-05-01T10:00:00Z"
    lastTransitionTime: "2024-05-01T10:00:00Z"
  - type: Progressing
    status: "True"
    reason: NewMachineSetAvailable
    lastUpdateTime: "2024-05-01T10:00:00Z"
    lastTransitionTime: "2024-05-01T09:50:00Z"
"#;

    #[test]
    fn deserializes_an_mcm_machine_deployment() {
        let deployment: MachineDeployment = serde_yaml::from_str(MACHINE_DEPLOYMENT_YAML).unwrap();
        let spec = &deployment.spec;
        assert_eq!(spec.replicas, 3);
        assert_eq!(spec.min_ready_seconds, 500);
        assert_eq!(spec.revision_history_limit, Some(5));
        assert_eq!(spec.progress_deadline_seconds, Some(600));
        assert!(spec.paused);
        assert_eq!(spec.rollback_to, Some(RollbackConfig { revision: Some(0) }));
        assert_eq!(spec.auto_preserve_failed_machine_max, Some(0));
        assert_eq!(
            spec.strategy.effective_type(),
            MachineDeploymentStrategyType::RollingUpdate
        );
        let rolling = spec.strategy.rolling_update.as_ref().unwrap();
        assert_eq!(rolling.max_surge, Some(IntOrString::Int(1)));
        assert_eq!(
            rolling.max_unavailable,
            Some(IntOrString::String("25%".into()))
        );
        assert_eq!(spec.template.spec.class.name, "test-class");
        assert_eq!(spec.template.spec.configuration.max_evict_retries, Some(25));

        let status = deployment.status.as_ref().unwrap();
        assert_eq!(status.observed_generation, 2);
        assert_eq!(status.unavailable_replicas, 0);
        assert_eq!(status.collision_count, Some(1));
        let available = status
            .condition(MachineDeploymentConditionType::Available)
            .unwrap();
        assert_eq!(available.status, ConditionStatus::True);
        assert_eq!(
            available.reason.as_deref(),
            Some("MinimumReplicasAvailable")
        );
        assert!(
            status
                .condition(MachineDeploymentConditionType::ReplicaFailure)
                .is_none()
        );
    }

    #[test]
    fn round_trips() {
        let deployment: MachineDeployment = serde_yaml::from_str(MACHINE_DEPLOYMENT_YAML).unwrap();
        let back: MachineDeployment =
            serde_yaml::from_str(&serde_yaml::to_string(&deployment).unwrap()).unwrap();
        assert_eq!(back, deployment);
        let json = serde_json::to_value(&deployment).unwrap();
        assert_eq!(
            json["spec"]["strategy"]["rollingUpdate"],
            json!({"maxSurge": 1, "maxUnavailable": "25%"})
        );
    }

    #[test]
    fn accepts_recreate_and_mcm_in_place_strategies() {
        let strategy: MachineDeploymentStrategy = serde_yaml::from_str("type: Recreate").unwrap();
        assert_eq!(
            strategy.effective_type(),
            MachineDeploymentStrategyType::Recreate
        );
        assert_eq!(
            MachineDeploymentStrategy::default().effective_type(),
            MachineDeploymentStrategyType::RollingUpdate
        );
        let strategy: MachineDeploymentStrategy = serde_yaml::from_str(
            "type: InPlaceUpdate\ninPlaceUpdate:\n  maxUnavailable: 1\n  maxSurge: 0\n  orchestrationType: Manual\n",
        )
        .unwrap();
        let in_place = strategy.in_place_update.as_ref().unwrap();
        assert_eq!(in_place.orchestration_type, Some(OrchestrationType::Manual));
        assert_eq!(in_place.max_surge, Some(IntOrString::Int(0)));
        assert!(serde_yaml::from_str::<MachineDeploymentStrategy>("type: Rolling").is_err());
    }

    #[test]
    fn template_is_required() {
        let err =
            serde_json::from_value::<MachineDeploymentSpec>(json!({"replicas": 1})).unwrap_err();
        assert!(err.to_string().contains("template"), "{err}");
    }

    #[test]
    fn crd_has_scale_and_status_subresources() {
        let crd = MachineDeployment::crd();
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some("machinedeployments.machine.sapcloud.io")
        );
        assert_eq!(
            crd.spec.names.short_names.as_deref(),
            Some(&["mcd".to_owned()][..])
        );
        let version = &crd.spec.versions[0];
        let subresources = version.subresources.as_ref().unwrap();
        assert!(subresources.status.is_some());
        let scale = subresources.scale.as_ref().unwrap();
        assert_eq!(scale.spec_replicas_path, ".spec.replicas");
        assert_eq!(scale.status_replicas_path, ".status.replicas");
        let columns: Vec<&str> = version
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            columns,
            ["Ready", "Desired", "Up-to-date", "Available", "Age"]
        );

        let crd = serde_json::to_value(&crd).unwrap();
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let spec = &schema["properties"]["spec"];
        assert_eq!(spec["required"], json!(["template"]));
        let strategy = &spec["properties"]["strategy"]["properties"];
        assert_eq!(
            strategy["type"]["enum"],
            json!(["Recreate", "RollingUpdate", "InPlaceUpdate"])
        );
        assert_eq!(
            strategy["rollingUpdate"]["properties"]["maxSurge"]["x-kubernetes-int-or-string"],
            json!(true)
        );
    }
}
