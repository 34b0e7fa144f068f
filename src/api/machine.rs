//! The `Machine` kind: one EC2 instance and the Node it becomes.
//!
//! Wire-compatible with MCM's `Machine`: `spec.class`, `spec.providerID`,
//! `spec.nodeTemplate` and the machine configuration inlined into the spec;
//! `status.conditions` holds Node-shaped conditions exactly as in MCM.

use k8s_openapi::api::core::v1::{NodeAddress, NodeCondition};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::api::shared::{
    ClassSpec, CurrentStatus, LastOperation, MachineConfiguration, MachinePhase, NodeTemplateSpec,
    is_default,
};
use crate::api::stamp::Stamp;
use crate::intern::IStr;
use crate::shared_value::Shared;

/// Label on a Machine naming the Node that backs it (set once the Node has
/// joined), as in MCM.
pub const NODE_LABEL: &str = "node";

/// Desired state of a Machine: which MachineClass to create it from, what its
/// Node should look like, and per-machine timeouts.
// The class, node template and configuration are `Shared`: every Machine of
// a set repeats its template's, and the cache keeps one copy of each.
// Each `printcolumn(...)` repeats the same keys, which clippy mistakes for
// duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "machine.sapcloud.io",
    version = "v1alpha1",
    kind = "Machine",
    namespaced,
    status = "MachineStatus",
    shortname = "mc",
    category = "machine-controller-manager",
    derive = "PartialEq",
    derive = "Default",
    doc = "A Machine is one cloud instance (an EC2 instance) and the Kubernetes Node it becomes. It is created from the MachineClass named in spec.class; status.currentStatus.phase shows where it is in its lifecycle.",
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.currentStatus.phase",
        description = "Lifecycle phase of the machine."
    ),
    printcolumn(
        name = "ProviderID",
        type_ = "string",
        json_path = ".spec.providerID",
        description = "Provider ID of the instance backing the machine."
    ),
    printcolumn(
        name = "Node",
        type_ = "string",
        json_path = ".metadata.labels.node",
        description = "Node backing the machine."
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct MachineSpec {
    /// The MachineClass this machine is created from (`kind: MachineClass`,
    /// `name: <class name>`, same namespace).
    #[serde(default, skip_serializing_if = "Shared::is_default")]
    pub class: Shared<ClassSpec>,

    /// Cloud provider ID of the instance backing this machine, set by the
    /// operator once the instance exists, e.g.
    /// `aws:///eu-west-1/i-0123456789abcdef0`. Leave unset when creating a
    /// machine.
    #[serde(
        default,
        rename = "providerID",
        skip_serializing_if = "Option::is_none"
    )]
    pub provider_id: Option<String>,

    /// Labels, annotations and taints to put on the Node once it joins.
    #[serde(default, skip_serializing_if = "Shared::is_default")]
    pub node_template: Shared<NodeTemplateSpec>,

    /// Per-machine timeouts and health settings, inlined into the spec as in
    /// MCM (`drainTimeout`, `healthTimeout`, `creationTimeout`, ...).
    #[serde(flatten)]
    pub configuration: Shared<MachineConfiguration>,
}

/// Observed state of a Machine.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MachineStatus {
    /// Addresses of the instance, as EC2 reports them and in the shape of a
    /// Node's `status.addresses`: `InternalIP`, `ExternalIP` (with a public
    /// IP), `InternalDNS` and `Hostname` (the private DNS name, which names
    /// the Node), `ExternalDNS`. MCM fills this field only when it runs
    /// without a target cluster; this operator always does, so that an
    /// instance whose Node never joined can still be reached.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<MachineAddress>,

    /// Conditions of this machine, in the shape of Node conditions as in MCM:
    /// the conditions copied from the machine's Node (`Ready`,
    /// `MemoryPressure`, `DiskPressure`, ...) plus conditions set by this
    /// operator about the machine itself (for example an invalid spec or
    /// MachineClass).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<MachineCondition>,

    /// The last operation performed on the machine (create, drain, delete,
    /// health check, ...) and its outcome, including cloud provider errors.
    #[serde(default, skip_serializing_if = "is_default")]
    pub last_operation: LastOperation,

    /// Lifecycle phase of the machine and when it last changed.
    #[serde(default, skip_serializing_if = "is_default")]
    pub current_status: CurrentStatus,

    /// Opaque provider state from the last operation, used to resume
    /// interrupted operations. Not meant to be read or edited by users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_known_state: Option<String>,

    /// The `metadata.generation` of the Machine that this status reflects.
    /// Not part of MCM's API; added by this operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// NodeAddress contains information for the node's address.
// A Node's address (docs as the Node's, so the schema is the same),
// interned: a fleet's machines hold five addresses each and five types
// between them, and the DNS name and Hostname of a machine are its Node's
// name, which its node label and the Node cache hold too.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct MachineAddress {
    /// The node address.
    pub address: IStr,

    /// Node address type, one of Hostname, ExternalIP or InternalIP.
    #[serde(rename = "type")]
    pub type_: IStr,
}

impl From<NodeAddress> for MachineAddress {
    fn from(a: NodeAddress) -> Self {
        MachineAddress {
            address: IStr::new(&a.address),
            type_: IStr::new(&a.type_),
        }
    }
}

/// A condition of a Machine, in the shape of a Node condition (as in MCM).
// Its text (type, status, reason, message) is one shared value: a fleet's
// machines repeat the same few, so a cached condition is 24 bytes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MachineCondition {
    #[serde(flatten)]
    pub text: Shared<ConditionText>,

    /// Last time the condition was probed (copied from the Node when set;
    /// this operator leaves it out, see `lastTransitionTime`).
    // Stamps: 8 bytes instead of 24 in each cached condition.
    #[serde(default, skip_serializing_if = "Stamp::is_none")]
    pub last_heartbeat_time: Stamp,

    /// Last time the condition changed from one status to another.
    #[serde(default, skip_serializing_if = "Stamp::is_none")]
    pub last_transition_time: Stamp,
}

/// What a [`MachineCondition`] says, apart from its times.
// Interned strings, as a fleet's machines repeat the same types, reasons
// and messages.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConditionText {
    /// Type of the condition: one copied from the Node (`Ready`,
    /// `MemoryPressure`, `DiskPressure`, `PIDPressure`, `NetworkUnavailable`,
    /// ...) or one of this operator's (`ConfigValid`, `Drifted`,
    /// `TagsApplied`).
    #[serde(rename = "type")]
    pub type_: IStr,

    /// Status of the condition: `True`, `False` or `Unknown`.
    pub status: IStr,

    /// Brief reason for the condition's last transition, in CamelCase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<IStr>,

    /// Human-readable message about the last transition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<IStr>,
}

impl MachineCondition {
    /// A condition that changed status now (no heartbeat).
    pub fn new(type_: &str, status: &str, reason: &str, message: &str) -> Self {
        MachineCondition {
            text: ConditionText {
                type_: type_.into(),
                status: status.into(),
                reason: Some(reason.into()),
                message: Some(message.into()),
            }
            .into(),
            last_heartbeat_time: Stamp::NONE,
            last_transition_time: Stamp::now(),
        }
    }
}

impl From<&NodeCondition> for MachineCondition {
    fn from(c: &NodeCondition) -> Self {
        MachineCondition {
            text: ConditionText {
                type_: IStr::new(&c.type_),
                status: IStr::new(&c.status),
                reason: c.reason.as_deref().map(IStr::new),
                message: c.message.as_deref().map(IStr::new),
            }
            .into(),
            last_heartbeat_time: Stamp::of(&c.last_heartbeat_time),
            last_transition_time: Stamp::of(&c.last_transition_time),
        }
    }
}

impl MachineStatus {
    /// The condition of the given type, if present.
    pub fn condition(&self, type_: &str) -> Option<&MachineCondition> {
        self.conditions.iter().find(|c| c.text.type_ == type_)
    }
}

impl Machine {
    /// The machine's lifecycle phase, if the operator has set one.
    pub fn phase(&self) -> Option<MachinePhase> {
        self.status.as_ref()?.current_status.phase
    }

    /// Name of the Node backing this machine, from the [`NODE_LABEL`] label.
    pub fn node_name(&self) -> Option<&str> {
        self.metadata
            .labels
            .as_ref()?
            .get(NODE_LABEL)
            .map(String::as_str)
            .filter(|name| !name.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::shared::{DURATION_PATTERN, MachineOperationType, MachineState};
    use kube::core::{CustomResourceExt, Resource};
    use serde_json::{Value, json};

    /// A Machine as MCM users write it (after MCM's
    /// `kubernetes/machine_objects/machine.yaml`), with every spec field set,
    /// plus a status as the machine controller writes it.
    const MACHINE_YAML: &str = r#"
apiVersion: machine.sapcloud.io/v1alpha1
kind: Machine
metadata:
  name: test-machine
  namespace: default
  labels:
    test-label: test-label
    node: ip-10-250-0-12.eu-west-1.compute.internal
spec:
  class:
    kind: MachineClass
    name: test-class
  providerID: aws:///eu-west-1/i-0123456789abcdef0
  nodeTemplate:
    metadata:
      labels:
        worker.gardener.cloud/pool: pool-a
      annotations:
        example.com/owner: team-a
    spec:
      taints:
      - key: dedicated
        value: gpu
        effect: NoSchedule
  drainTimeout: 2h
  healthTimeout: 10m
  creationTimeout: 20m
  maxEvictRetries: 10
  nodeConditions: KernelDeadlock,ReadonlyFilesystem,DiskPressure
status:
  conditions:
  - type: Ready
    status: "True"
    reason: KubeletReady
    message: kubelet is posting ready status
    lastHeartbeatTime: "2024-05-01T10:00:00Z"
    lastTransitionTime: "2024-05-01T09:58:00Z"
  lastOperation:
    description: Machine test-machine successfully joined the cluster
    lastUpdateTime: "2024-05-01T09:58:00Z"
    state: Successful
    type: Create
  currentStatus:
    phase: Running
    timeoutActive: false
    lastUpdateTime: "2024-05-01T09:58:00Z"
  lastKnownState: ""
"#;

    #[test]
    fn deserializes_an_mcm_machine() {
        let machine: Machine = serde_yaml::from_str(MACHINE_YAML).unwrap();
        let spec = &machine.spec;
        assert_eq!(*spec.class, ClassSpec::machine_class("test-class"));
        assert_eq!(
            spec.provider_id.as_deref(),
            Some("aws:///eu-west-1/i-0123456789abcdef0")
        );
        let node_labels = spec.node_template.metadata.labels.as_ref().unwrap();
        assert_eq!(node_labels["worker.gardener.cloud/pool"], "pool-a");
        let taints = spec.node_template.spec.taints.as_ref().unwrap();
        assert_eq!(taints[0].key, "dedicated");
        assert_eq!(taints[0].effect, "NoSchedule");
        assert_eq!(
            spec.configuration.drain_timeout.unwrap(),
            std::time::Duration::from_secs(2 * 3600)
        );
        assert_eq!(spec.configuration.max_evict_retries, Some(10));

        assert_eq!(machine.phase(), Some(MachinePhase::Running));
        assert_eq!(
            machine.node_name(),
            Some("ip-10-250-0-12.eu-west-1.compute.internal")
        );
        let status = machine.status.as_ref().unwrap();
        assert_eq!(status.condition("Ready").unwrap().text.status, "True");
        assert_eq!(status.last_operation.state, Some(MachineState::Successful));
        assert_eq!(
            status.last_operation.type_,
            Some(MachineOperationType::Create)
        );
        assert!(!status.current_status.timeout_active);
    }

    #[test]
    fn round_trips() {
        let machine: Machine = serde_yaml::from_str(MACHINE_YAML).unwrap();
        let yaml = serde_yaml::to_string(&machine).unwrap();
        let back: Machine = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(back, machine);
        // The inline configuration stays inline on the wire. Durations are
        // written back in seconds (`2h` becomes `7200s`), like Go normalizes
        // them to `2h0m0s`.
        let json = serde_json::to_value(&machine).unwrap();
        assert_eq!(json["spec"]["drainTimeout"], json!("7200s"));
        assert_eq!(json["spec"]["providerID"], json!(machine.spec.provider_id));
    }

    #[test]
    fn machines_of_one_template_share_its_parts_and_keep_their_wire_form() {
        let a: Machine = serde_yaml::from_str(MACHINE_YAML).unwrap();
        let b: Machine =
            serde_yaml::from_str(&MACHINE_YAML.replace("test-machine", "other")).unwrap();
        assert!(Shared::ptr_eq(&a.spec.class, &b.spec.class));
        assert!(Shared::ptr_eq(&a.spec.node_template, &b.spec.node_template));
        assert!(Shared::ptr_eq(&a.spec.configuration, &b.spec.configuration));
        let original: Value = serde_yaml::from_str(MACHINE_YAML).unwrap();
        let written = serde_json::to_value(&a).unwrap();
        assert_eq!(
            written["spec"]["nodeTemplate"],
            original["spec"]["nodeTemplate"]
        );
        assert_eq!(written["spec"]["class"], original["spec"]["class"]);
    }

    #[test]
    fn addresses_are_node_addresses_on_the_wire_with_shared_types() {
        let wire = json!([{"address": "10.0.0.1", "type": "InternalIP"}]);
        let ours: Vec<MachineAddress> = serde_json::from_value(wire.clone()).unwrap();
        assert_eq!(serde_json::to_value(&ours).unwrap(), wire);
        let node: Vec<NodeAddress> = serde_json::from_value(wire).unwrap();
        let converted: Vec<MachineAddress> = node.into_iter().map(Into::into).collect();
        assert_eq!(converted, ours);
        assert_eq!(converted[0].type_, "InternalIP");
    }

    #[test]
    fn conditions_keep_their_wire_form_and_share_equal_texts() {
        let wire = json!([
            {"type": "Ready", "status": "True", "reason": "KubeletReady",
             "message": "kubelet is posting ready status",
             "lastHeartbeatTime": "2026-12-01T10:00:00Z",
             "lastTransitionTime": "2026-12-01T09:00:00Z"},
            {"type": "Ready", "status": "True", "reason": "KubeletReady",
             "message": "kubelet is posting ready status",
             "lastTransitionTime": "2026-12-01T09:30:00Z"},
            {"type": "Drifted", "status": "False"}
        ]);
        let ours: Vec<MachineCondition> = serde_json::from_value(wire.clone()).unwrap();
        assert_eq!(serde_json::to_value(&ours).unwrap(), wire);
        assert!(Shared::ptr_eq(&ours[0].text, &ours[1].text));
        assert!(!Shared::ptr_eq(&ours[0].text, &ours[2].text));
        assert_eq!(ours[2].text.reason, None);
        assert_eq!(std::mem::size_of::<MachineCondition>(), 24);
    }

    #[test]
    fn minimal_machine_serializes_minimally() {
        let machine = Machine::new(
            "m1",
            MachineSpec {
                class: ClassSpec::machine_class("c1").into(),
                ..MachineSpec::default()
            },
        );
        let json = serde_json::to_value(&machine).unwrap();
        assert_eq!(
            json,
            json!({
                "apiVersion": "machine.sapcloud.io/v1alpha1",
                "kind": "Machine",
                "metadata": {"name": "m1"},
                "spec": {"class": {"kind": "MachineClass", "name": "c1"}},
            })
        );
        assert_eq!(machine.phase(), None);
        assert_eq!(machine.node_name(), None);
    }

    #[test]
    fn accepts_go_zero_values_written_by_mcm() {
        let machine: Machine = serde_json::from_value(json!({
            "apiVersion": "machine.sapcloud.io/v1alpha1",
            "kind": "Machine",
            "metadata": {"name": "m1", "creationTimestamp": null},
            "spec": {"class": {"kind": "MachineClass", "name": "c1"}, "nodeTemplate": {"metadata": {"creationTimestamp": null}, "spec": {}}},
            "status": {"lastOperation": {"lastUpdateTime": null}, "currentStatus": {"lastUpdateTime": null}},
        }))
        .unwrap();
        let status = machine.status.unwrap();
        assert_eq!(status, MachineStatus::default());
        assert_eq!(*machine.spec.node_template, NodeTemplateSpec::default());
    }

    #[test]
    fn crd_has_names_columns_and_subresources() {
        let crd = Machine::crd();
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some("machines.machine.sapcloud.io")
        );
        assert_eq!(crd.spec.group, crate::api::GROUP);
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(
            crd.spec.names.short_names.as_deref(),
            Some(&["mc".to_owned()][..])
        );
        assert_eq!(
            crd.spec.names.categories.as_deref(),
            Some(&["machine-controller-manager".to_owned()][..])
        );

        let version = &crd.spec.versions[0];
        assert_eq!(version.name, crate::api::VERSION);
        let subresources = version.subresources.as_ref().unwrap();
        assert!(subresources.status.is_some());
        assert!(subresources.scale.is_none());

        let columns: Vec<(&str, &str)> = version
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| (c.name.as_str(), c.json_path.as_str()))
            .collect();
        assert_eq!(
            columns,
            [
                ("Phase", ".status.currentStatus.phase"),
                ("ProviderID", ".spec.providerID"),
                ("Node", ".metadata.labels.node"),
                ("Age", ".metadata.creationTimestamp"),
            ]
        );
        assert_eq!(Machine::api_version(&()), crate::api::API_VERSION);
    }

    fn schema_of(crd_schema: &Value, path: &[&str]) -> Value {
        let mut node = crd_schema;
        for key in path {
            node = &node["properties"][*key];
            assert!(!node.is_null(), "schema has no property {key} in {path:?}");
        }
        node.clone()
    }

    #[test]
    fn crd_schema_keeps_mcm_fields_and_validates_statically() {
        let crd = serde_json::to_value(Machine::crd()).unwrap();
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];

        for field in [
            "class",
            "providerID",
            "nodeTemplate",
            "drainTimeout",
            "healthTimeout",
            "creationTimeout",
            "inPlaceUpdateTimeout",
            "machinePreserveTimeout",
            "disableHealthTimeout",
            "maxEvictRetries",
            "nodeConditions",
        ] {
            schema_of(schema, &["spec", field]);
        }
        assert_eq!(
            schema_of(schema, &["spec", "drainTimeout"])["pattern"],
            json!(DURATION_PATTERN)
        );
        assert_eq!(
            schema_of(schema, &["spec", "maxEvictRetries"])["minimum"].as_f64(),
            Some(0.0)
        );
        // Node labels and taints survive pruning.
        schema_of(schema, &["spec", "nodeTemplate", "metadata", "labels"]);
        schema_of(schema, &["spec", "nodeTemplate", "spec", "taints"]);

        let phase = schema_of(schema, &["status", "currentStatus", "phase"]);
        let phases: Vec<&str> = phase["enum"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(phases, MachinePhase::ALL.map(MachinePhase::as_str));
        // For optional enums the enum's own doc becomes the description.
        assert!(
            phase["description"]
                .as_str()
                .unwrap()
                .starts_with("Lifecycle phase of the machine:")
        );
        let conditions = schema_of(schema, &["status", "conditions"]);
        assert_eq!(conditions["items"]["required"], json!(["status", "type"]));
        schema_of(schema, &["status", "currentStatus", "preserveExpiryTime"]);
        schema_of(schema, &["status", "lastKnownState"]);
    }
}
