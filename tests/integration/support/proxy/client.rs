//! SDK clients that talk to moto through a proxy and see its every answer:
//! the SDK's own retries are off, so a throttled or not-yet-consistent call
//! fails instead of being retried behind the test's back.

use aws_sdk_ec2::config::retry::RetryConfig;
use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};

use super::FaultProxy;
use crate::support::ec2::REGION;

impl FaultProxy {
    /// An EC2 client through this proxy in [`REGION`], signing with
    /// `access_key` (the account the proxy's quotas and tokens are kept
    /// for), without retries.
    pub fn client(&self, access_key: &str) -> aws_sdk_ec2::Client {
        // kube and the AWS SDK both use rustls: one process-wide provider.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let config = aws_sdk_ec2::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .endpoint_url(&self.url)
            .credentials_provider(Credentials::new(
                access_key,
                "testing",
                None,
                None,
                "mcm-proxy-tests",
            ))
            .retry_config(RetryConfig::disabled())
            .build();
        aws_sdk_ec2::Client::from_conf(config)
    }
}
