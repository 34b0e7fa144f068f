//! mcm-provider-aws: a Kubernetes operator that reconciles Gardener
//! machine-controller-manager objects (`machine.sapcloud.io/v1alpha1`) against
//! EC2.
//!
//! - [`api`]: the CRD types, their generated schemas and the validation the
//!   schema cannot express.
//! - [`aws`]: EC2 clients, request building, error classes, rate limiting.
//! - [`controller`]: the reconcilers.
//! - [`admin`], [`health`], [`metrics`]: `/metrics`, `/livez`, `/readyz`;
//!   [`logging`]: the log filter (secret-printing SDK targets held back).
//! - [`leader`]: leader election on a Lease; [`shutdown`]: the SIGTERM signal.
//! - [`intern`]: shared copies of strings that repeat across cached objects;
//!   [`shared_value`]: the same for sub-objects (a Machine's node template).
pub mod admin;
pub mod api;
pub mod aws;
pub mod controller;
pub mod health;
pub mod intern;
pub mod kube_client;
pub mod kube_metrics;
pub mod leader;
pub mod logging;
pub mod metrics;
pub mod shared_value;
pub mod shutdown;
