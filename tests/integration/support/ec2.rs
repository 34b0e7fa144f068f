//! EC2 helpers over the environment's moto server: a client, a fresh network
//! per test, and the instances that belong to one test namespace.
//!
//! Every test gets its own VPC with its own `10.N.0.0/16` CIDR, so private IPs
//! — and with them the node names the kubelet stand-in derives from them —
//! never collide between tests running in parallel against one moto.

use std::sync::atomic::{AtomicU32, Ordering};

use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_ec2::error::SdkError;
use aws_sdk_ec2::operation::run_instances::{RunInstancesError, RunInstancesOutput};
use aws_sdk_ec2::types::{
    Filter, Instance, InstanceStateName, InstanceType, ResourceType, Tag, TagSpecification,
};

use super::env;
use super::iam::Keys;
pub use super::instances::{
    state, tag, try_current_instances_of_namespace, try_instances_of_namespace, try_user_data,
};

/// The region every test works in.
pub const REGION: &str = "eu-west-1";
/// The zone `network()` puts its subnet in.
pub const ZONE: &str = "eu-west-1a";

/// Second octet of the next `network()` CIDR. Starts at 1: 10.0.0.0/24 is the
/// API server's service range, best kept distinct from instance IPs.
static NEXT_CIDR: AtomicU32 = AtomicU32::new(1);

/// An EC2 client for the environment's moto, in [`REGION`], with the static
/// test credentials moto accepts.
pub async fn client() -> aws_sdk_ec2::Client {
    let keys = Keys {
        id: "testing".into(),
        secret: "testing".into(),
    };
    client_at(env().var("AWS_ENDPOINT_URL_EC2"), &keys).await
}

/// An EC2 client for the moto at `url`, in [`REGION`], with `keys`.
pub async fn client_at(url: &str, keys: &Keys) -> aws_sdk_ec2::Client {
    // kube and the AWS SDK both use rustls: one process-wide provider.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let config = aws_sdk_ec2::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .endpoint_url(url)
        .credentials_provider(Credentials::new(
            &keys.id,
            &keys.secret,
            None,
            None,
            "mcm-integration-tests",
        ))
        .build();
    aws_sdk_ec2::Client::from_conf(config)
}

/// A VPC with one subnet (in [`ZONE`]) and one security group, plus an AMI
/// that moto knows in [`REGION`].
#[derive(Clone, Debug)]
pub struct Network {
    pub vpc_id: String,
    pub subnet_id: String,
    pub security_group_id: String,
    /// A Linux x86_64 image from moto's built-in catalogue.
    pub ami: String,
    /// The VPC's CIDR, `10.N.0.0/16`, distinct for every call of [`network`].
    pub cidr: String,
}

/// Creates a fresh VPC/subnet/security group with a CIDR no other call of
/// this test binary uses.
pub async fn network(ec2: &aws_sdk_ec2::Client) -> Network {
    let n = NEXT_CIDR.fetch_add(1, Ordering::SeqCst);
    assert!(
        n <= 255,
        "more than 255 test networks in one test binary; 10.N.0.0/16 has run out"
    );
    let cidr = format!("10.{n}.0.0/16");
    let vpc_id = ec2
        .create_vpc()
        .cidr_block(&cidr)
        .tag_specifications(name_tags(ResourceType::Vpc, &format!("mcm-test-{n}")))
        .send()
        .await
        .unwrap_or_else(|e| panic!("CreateVpc {cidr}: {e:?}"))
        .vpc
        .and_then(|v| v.vpc_id)
        .expect("CreateVpc returned a VPC id");
    let subnet_id = ec2
        .create_subnet()
        .vpc_id(&vpc_id)
        .cidr_block(format!("10.{n}.0.0/20"))
        .availability_zone(ZONE)
        .send()
        .await
        .unwrap_or_else(|e| panic!("CreateSubnet in {vpc_id}: {e:?}"))
        .subnet
        .and_then(|s| s.subnet_id)
        .expect("CreateSubnet returned a subnet id");
    let security_group_id = ec2
        .create_security_group()
        .vpc_id(&vpc_id)
        .group_name(format!("mcm-test-{n}"))
        // No spaces: an IAM-enforcing moto (5.2.5) refuses the signature of
        // a request with a space in a form value (AuthFailure).
        .description("mcm-provider-aws-integration-test")
        .send()
        .await
        .unwrap_or_else(|e| panic!("CreateSecurityGroup in {vpc_id}: {e:?}"))
        .group_id
        .expect("CreateSecurityGroup returned a group id");
    Network {
        vpc_id,
        subnet_id,
        security_group_id,
        ami: linux_ami(ec2).await,
        cidr,
    }
}

fn name_tags(resource: ResourceType, name: &str) -> TagSpecification {
    TagSpecification::builder()
        .resource_type(resource)
        .tags(Tag::builder().key("Name").value(name).build())
        .build()
}

/// A Linux x86_64 AMI from moto's catalogue, preferring Amazon Linux 2, chosen
/// deterministically.
async fn linux_ami(ec2: &aws_sdk_ec2::Client) -> String {
    let images = ec2
        .describe_images()
        .owners("amazon")
        .filters(
            Filter::builder()
                .name("architecture")
                .values("x86_64")
                .build(),
        )
        .send()
        .await
        .unwrap_or_else(|e| panic!("DescribeImages: {e:?}"))
        .images
        .unwrap_or_default();
    let mut linux: Vec<_> = images
        .iter()
        .filter(|i| i.platform().is_none_or(|p| p.as_str() != "windows"))
        .filter_map(|i| Some((i.name().unwrap_or_default(), i.image_id()?)))
        .collect();
    linux.sort_by_key(|(name, id)| (!name.starts_with("amzn2-ami-hvm"), *id));
    linux
        .first()
        .map(|(_, id)| id.to_string())
        .unwrap_or_else(|| panic!("moto has no Linux x86_64 AMI in {REGION}: {images:?}"))
}

/// Every instance (in any state) of namespace `ns`: its [`MACHINE_NAME_TAG`]
/// names a Machine of it (`<ns>/<name>`), or its launch tag one of its
/// batched launches (see [`try_instances_of_namespace`]).
pub async fn instances_of_namespace(ec2: &aws_sdk_ec2::Client, ns: &str) -> Vec<Instance> {
    try_instances_of_namespace(ec2, ns)
        .await
        .unwrap_or_else(|e| panic!("DescribeInstances for namespace {ns}: {e:?}"))
}

/// The instances of namespace `ns` that are not terminated or on their way
/// there (shutting-down).
pub async fn live_instances_of_namespace(ec2: &aws_sdk_ec2::Client, ns: &str) -> Vec<Instance> {
    try_current_instances_of_namespace(ec2, ns)
        .await
        .unwrap_or_else(|e| panic!("DescribeInstances for namespace {ns}: {e:?}"))
        .into_iter()
        .filter(is_live)
        .collect()
}

/// False once an instance is shutting-down or terminated.
pub fn is_live(i: &Instance) -> bool {
    !matches!(
        i.state().and_then(|s| s.name()),
        Some(InstanceStateName::ShuttingDown | InstanceStateName::Terminated)
    )
}

/// Launches one instance of `net` through `ec2`.
pub async fn run_one(
    ec2: &aws_sdk_ec2::Client,
    net: &Network,
    token: Option<&str>,
    instance_type: InstanceType,
) -> Result<RunInstancesOutput, SdkError<RunInstancesError, HttpResponse>> {
    ec2.run_instances()
        .image_id(&net.ami)
        .subnet_id(&net.subnet_id)
        .instance_type(instance_type)
        .min_count(1)
        .max_count(1)
        .set_client_token(token.map(str::to_string))
        .send()
        .await
}
