//! Everything the operator writes to the target cluster on a machine's
//! behalf besides cordons and drains:
//!
//! - [`template`]: the Machine's `spec.nodeTemplate` (labels, annotations,
//!   taints) applied to its Node and kept in sync, with MCM's last-applied
//!   annotation so that only what the template put there is ever removed.
//!
//! The Machine reconciler (`controller::machine`) calls these; the pure
//! parts (the template diff) have unit tests without a client.

pub mod template;
