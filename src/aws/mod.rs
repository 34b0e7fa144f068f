//! Everything that talks to EC2: credentials and client cache, request
//! building, error classes, client-side rate limiting and the batched view of
//! instances.

pub mod batch;
pub mod bucket_override;
pub mod clients;
pub mod credential_policy;
pub mod credentials;
pub mod describe_page;
pub mod describe_slim;
pub mod errors;
pub mod iam_policy;
pub mod images;
pub mod instance_table;
pub mod instance_tags;
pub mod instances;
pub mod launch;
pub mod rate_limit;
pub mod tags;
pub mod user_data;
