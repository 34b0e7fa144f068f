//! Least privilege, proven: the shipped IAM policy against an EC2 that
//! enforces IAM ([`policy`]), no confused deputy ([`deputy`]), and secrets
//! that stay secret ([`secrets`]).

mod deputy;
mod policy;
mod secrets;
