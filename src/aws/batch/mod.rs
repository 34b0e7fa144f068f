//! Batching EC2 calls: EC2's RunInstances *request* bucket is tiny (5 calls,
//! +2/s) but its *resource* bucket holds 1000 instances, and
//! TerminateInstances takes up to 1000 IDs. Calls that many machines would
//! make one by one are gathered over a short window and made once:
//!
//! - [`gather`]: the window (idle time, longest wait, cap) that collects the
//!   members of one batch;
//! - [`launch`]: which launches may be shared, the shared request, its
//!   ClientToken and launch tag, and which instance is whose (pure);
//! - [`terminate`]: one TerminateInstances per credentials + Region for all
//!   machines being deleted at the same time; callers hand their IDs in and
//!   learn the outcome on a later pass.

pub mod gather;
pub mod launch;
pub mod terminate;
