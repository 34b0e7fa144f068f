//! Fleets of machines: the MachineSet and MachineDeployment reconcilers and
//! what they share.
//!
//! - [`machine_set`]: keeps `replicas` healthy Machines of a template;
//! - [`machine_deployment`]: rolls MachineSets (RollingUpdate, Recreate);
//! - [`rollout`]: the pure rollout arithmetic of a deployment;
//! - [`census`]: what state each machine of a fleet is in, MCM's scale-down
//!   order, a set's plan and status (pure);
//! - [`drift`]: does a machine still match its MachineClass (the effective
//!   spec hash, the `Drifted` condition);
//! - [`autoscaler`]: cluster-autoscaler's protocol (the trigger-deletion
//!   annotation, scale-down protection of Nodes during rollouts; pure);
//! - [`preserved`]: which Failed machines a set keeps for preservation and
//!   auto-preserves, and its counts (pure);
//! - [`replacement`]: at most one machine of a deployment is failed for
//!   health (and replaced) at a time.
//! - [`in_place`]: the template fields that change in place (node template,
//!   machine configuration), from deployment to set to machines.

pub mod autoscaler;
pub mod census;
pub mod drift;
pub mod expectations;
pub mod in_place;
pub mod machine_deployment;
pub mod machine_set;
pub mod preserved;
pub mod replacement;
pub mod rollout;
