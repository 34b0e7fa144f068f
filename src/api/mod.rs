//! The `machine.sapcloud.io/v1alpha1` API: Machine, MachineClass, MachineSet
//! and MachineDeployment, wire-compatible with Gardener's
//! machine-controller-manager (MCM). Field names and shapes follow MCM's CRDs so
//! that MCM manifests apply unchanged; doc comments become `kubectl explain`.

pub mod crd;
pub mod machine;
pub mod machine_class;
pub mod machine_deployment;
pub mod machine_set;
pub mod provider_spec;
pub mod shared;
pub mod stamp;
pub mod validation;

/// API group of every kind in this crate.
pub const GROUP: &str = "machine.sapcloud.io";
/// API version of every kind in this crate.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` string (`group/version`).
pub const API_VERSION: &str = "machine.sapcloud.io/v1alpha1";
