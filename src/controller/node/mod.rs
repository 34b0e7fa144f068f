//! Everything the operator writes to the target cluster on a machine's
//! behalf besides cordons and drains:
//!
//! - [`template`]: the Machine's `spec.nodeTemplate` (labels, annotations,
//!   taints) applied to its Node and kept in sync, with MCM's last-applied
//!   annotation so that only what the template put there is ever removed;
//! - [`bootstrap_token`]: the per-machine bootstrap token Secret in
//!   `kube-system` whose token replaces `<<BOOTSTRAP_TOKEN>>` in the user
//!   data, reused across retries and crashes, deleted once the Node joined
//!   and with the machine;
//! - [`preserve`]: a preserved machine's marks (scale-down protection, the
//!   `preserved` taint and drain while Failed, the `Preserved` condition).
//!
//! The Machine reconciler (`controller::machine`) calls these; the pure
//! parts (the template diff, token IDs and the Secret's shape) have unit
//! tests without a client.

pub mod bootstrap_token;
pub mod preserve;
pub mod template;
