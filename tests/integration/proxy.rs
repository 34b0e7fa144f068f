//! The test proxy behaves like EC2 where moto does not: ClientToken
//! idempotency, eventual consistency for new instances, and per-account
//! token buckets — each seen through the AWS SDK (with its retries off) in
//! front of the real moto, and each off unless switched on.

use std::time::{Duration, Instant};

use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::operation::run_instances::RunInstancesOutput;
use aws_sdk_ec2::types::{Filter, InstanceType};

use crate::support::ec2::{self, Network};
use crate::support::env;
use crate::support::proxy::{FaultProxy, ProxyBehaviour, QuotaConfig};
use crate::support::wait::eventually;

const KEY: &str = "testing";

/// A proxy with `behaviour` in front of the environment's moto, and a
/// fresh network in moto.
async fn proxy_with(behaviour: ProxyBehaviour) -> (FaultProxy, Network) {
    let proxy = FaultProxy::start_with(env().var("AWS_ENDPOINT_URL_EC2"), behaviour).await;
    let net = ec2::network(&ec2::client().await).await;
    (proxy, net)
}

/// The HTTP status and EC2 error code of a failed call.
fn failure<T: std::fmt::Debug, E: ProvideErrorMetadata + std::fmt::Debug>(
    result: Result<T, SdkError<E, HttpResponse>>,
) -> (u16, String) {
    let err = result.expect_err("the call must fail");
    let status = err.raw_response().map(|r| r.status().as_u16());
    let code = err.code().map(str::to_string);
    match (status, code) {
        (Some(status), Some(code)) => (status, code),
        _ => panic!("not an EC2 error response: {err:?}"),
    }
}

fn ids(out: &RunInstancesOutput) -> (String, Vec<String>) {
    (
        out.reservation_id().unwrap_or_default().to_string(),
        out.instances()
            .iter()
            .filter_map(|i| i.instance_id().map(str::to_string))
            .collect(),
    )
}

/// The IDs of the instances of `net`'s VPC that `ec2` lists (any state).
async fn listed(ec2: &aws_sdk_ec2::Client, net: &Network) -> Vec<String> {
    ec2.describe_instances()
        .filters(Filter::builder().name("vpc-id").values(&net.vpc_id).build())
        .send()
        .await
        .expect("DescribeInstances")
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter_map(|i| i.instance_id().map(str::to_string))
        .collect()
}

#[tokio::test]
async fn a_repeated_client_token_returns_the_first_launch_even_after_termination() {
    let (proxy, net) = proxy_with(ProxyBehaviour::default().with_client_tokens()).await;
    let ec2 = proxy.client(KEY);
    let first = ids(
        &ec2::run_one(&ec2, &net, Some("repeat-1"), InstanceType::T3Micro)
            .await
            .expect("first launch"),
    );
    let again = ids(
        &ec2::run_one(&ec2, &net, Some("repeat-1"), InstanceType::T3Micro)
            .await
            .expect("repeated launch"),
    );
    assert_eq!(again, first, "same reservation, same instances");
    let moto = ec2::client().await;
    assert_eq!(
        listed(&moto, &net).await,
        first.1,
        "moto launched one instance"
    );

    moto.terminate_instances()
        .set_instance_ids(Some(first.1.clone()))
        .send()
        .await
        .expect("terminate in moto");
    let after = ids(
        &ec2::run_one(&ec2, &net, Some("repeat-1"), InstanceType::T3Micro)
            .await
            .expect("launch repeated after termination"),
    );
    assert_eq!(after, first, "the token still means the first launch");
    assert_eq!(listed(&moto, &net).await, first.1, "nothing new launched");

    let stats = proxy.stats();
    assert_eq!(stats.instances_launched, 1);
    assert_eq!(stats.client_token_replays, 2);
    assert_eq!(stats.calls.get("RunInstances"), Some(&3));
}

#[tokio::test]
async fn a_client_token_reused_with_other_parameters_is_an_idempotent_parameter_mismatch() {
    let (proxy, net) = proxy_with(ProxyBehaviour::default().with_client_tokens()).await;
    let ec2 = proxy.client(KEY);
    let first = ids(
        &ec2::run_one(&ec2, &net, Some("mismatch-1"), InstanceType::T3Micro)
            .await
            .expect("first launch"),
    );
    let other = ec2::run_one(&ec2, &net, Some("mismatch-1"), InstanceType::T3Small).await;
    assert_eq!(
        failure(other),
        (400, "IdempotentParameterMismatch".to_string())
    );
    // Another account's token of the same name is its own.
    let elsewhere = ids(&proxy
        .client("other-account")
        .run_instances()
        .image_id(&net.ami)
        .subnet_id(&net.subnet_id)
        .instance_type(InstanceType::T3Small)
        .min_count(1)
        .max_count(1)
        .client_token("mismatch-1")
        .send()
        .await
        .expect("same token, other account"));
    assert_ne!(elsewhere.1, first.1);
    assert_eq!(proxy.stats().client_token_mismatches, 1);
    assert_eq!(proxy.instances_launched(), 2);
}

#[tokio::test]
async fn without_the_switch_the_proxy_is_moto_which_ignores_client_tokens() {
    let (proxy, net) = proxy_with(ProxyBehaviour::default()).await;
    let ec2 = proxy.client(KEY);
    let a = ids(
        &ec2::run_one(&ec2, &net, Some("plain-1"), InstanceType::T3Micro)
            .await
            .unwrap(),
    );
    let b = ids(
        &ec2::run_one(&ec2, &net, Some("plain-1"), InstanceType::T3Micro)
            .await
            .unwrap(),
    );
    assert_ne!(a.1, b.1, "moto launches every repeat");
    // And new instances are visible at once.
    assert!(listed(&ec2, &net).await.contains(&b.1[0]));
    assert_eq!(proxy.instances_launched(), 2);
}

#[tokio::test]
async fn new_instances_are_unknown_within_the_consistency_window_and_known_after() {
    // Long enough for the calls below on a busy machine; they take well
    // under a second.
    let window = Duration::from_secs(10);
    let (proxy, net) = proxy_with(ProxyBehaviour::default().with_consistency_window(window)).await;
    let ec2 = proxy.client(KEY);
    let moto = ec2::client().await;
    // An older instance, launched behind the proxy's back: always known.
    let old = ids(&ec2::run_one(&moto, &net, None, InstanceType::T3Micro)
        .await
        .unwrap())
    .1[0]
        .clone();

    let launched = Instant::now();
    let new = ids(&ec2::run_one(&ec2, &net, None, InstanceType::T3Micro)
        .await
        .unwrap())
    .1[0]
        .clone();
    assert_eq!(
        listed(&ec2, &net).await,
        [old.as_str()],
        "the new one is not listed"
    );
    assert!(listed(&moto, &net).await.contains(&new), "moto has it");
    let not_found = (400, "InvalidInstanceID.NotFound".to_string());
    assert_eq!(
        failure(ec2.describe_instances().instance_ids(&new).send().await),
        not_found
    );
    assert_eq!(
        failure(
            ec2.create_tags()
                .resources(&new)
                .tags(
                    aws_sdk_ec2::types::Tag::builder()
                        .key("k")
                        .value("v")
                        .build()
                )
                .send()
                .await
        ),
        not_found
    );
    assert_eq!(
        failure(
            ec2.modify_instance_attribute()
                .instance_id(&new)
                .source_dest_check(
                    aws_sdk_ec2::types::AttributeBooleanValue::builder()
                        .value(false)
                        .build()
                )
                .send()
                .await
        ),
        not_found
    );
    // One unknown instance fails the whole call: the old one lives on.
    let both = ec2
        .terminate_instances()
        .instance_ids(&old)
        .instance_ids(&new)
        .send()
        .await;
    let err = both.expect_err("terminating an unknown instance fails");
    assert_eq!(err.code(), Some("InvalidInstanceID.NotFound"));
    assert_eq!(
        err.message(),
        Some(format!("The instance ID '{new}' does not exist").as_str())
    );
    assert!(
        launched.elapsed() < window,
        "the checks above took longer than the window ({:?}); they prove nothing",
        launched.elapsed()
    );
    let old_instance = moto
        .describe_instances()
        .instance_ids(&old)
        .send()
        .await
        .unwrap()
        .reservations()[0]
        .instances()[0]
        .clone();
    assert!(ec2::is_live(&old_instance), "{old_instance:?}");

    // After the window, EC2 knows it.
    eventually("the new instance to be listed", 3 * window, || async {
        listed(&ec2, &net).await.contains(&new).then_some(())
    })
    .await;
    ec2.terminate_instances()
        .instance_ids(&new)
        .send()
        .await
        .expect("terminate after the window");
    let stats = proxy.stats();
    assert_eq!(stats.unseen_not_found, 4);
    assert!(stats.unseen_hidden >= 1);
}

/// Calls DescribeAvailabilityZones as `key` until the first
/// `RequestLimitExceeded`; returns how many passed and how long it took.
async fn burst_until_throttled(proxy: &FaultProxy, key: &str, max: usize) -> (usize, Duration) {
    let ec2 = proxy.client(key);
    let started = Instant::now();
    for passed in 0..max {
        let result = ec2.describe_availability_zones().send().await;
        if result.is_err() {
            assert_eq!(failure(result), (503, "RequestLimitExceeded".to_string()));
            return (passed, started.elapsed());
        }
    }
    panic!(
        "{max} calls in {:?} were never throttled",
        started.elapsed()
    );
}

#[tokio::test]
async fn bursting_past_a_request_bucket_is_throttled_per_account_until_it_refills() {
    // Non-mutating actions at a tenth of AWS's default: 10 tokens, 2 a second.
    let quotas = QuotaConfig::aws().scaled(0.1);
    let (proxy, _net) = proxy_with(ProxyBehaviour::default().with_quotas(quotas)).await;
    let (passed, took) = burst_until_throttled(&proxy, KEY, 200).await;
    // The burst, plus what refilled meanwhile.
    let refilled = (took.as_secs_f64() * 2.0).ceil() as usize;
    assert!(
        (10..=10 + refilled).contains(&passed),
        "{passed} calls passed in {took:?}"
    );
    // Another account has its own bucket.
    let (other, _) = burst_until_throttled(&proxy, "other-account", 200).await;
    assert!(other >= 10, "{other}");
    assert_eq!(proxy.stats().total_throttled(), 2);

    // Refill: two tokens a second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    proxy
        .client(KEY)
        .describe_availability_zones()
        .send()
        .await
        .expect("a refilled token");
}

#[tokio::test]
async fn run_instances_draws_max_count_from_the_instance_bucket() {
    // AWS's own sizes: 1000 instance tokens, 2 a second; 5 requests.
    // One instance a call whatever it asks (the proxy would start MaxCount,
    // as EC2 does): the buckets count what was asked.
    let behaviour = ProxyBehaviour::default()
        .with_quotas(QuotaConfig::aws())
        .with_launch_at_most(1);
    let (proxy, net) = proxy_with(behaviour).await;
    let ec2 = proxy.client(KEY);
    let ask = |max: i32| {
        ec2.run_instances()
            .image_id(&net.ami)
            .subnet_id(&net.subnet_id)
            .min_count(1)
            .max_count(max)
            .send()
    };
    // Asking for up to 1000 empties the bucket.
    ask(1000)
        .await
        .expect("the first call fits the full bucket");
    // Request tokens are left, instance tokens are not.
    assert_eq!(
        failure(ask(100).await),
        (503, "RequestLimitExceeded".to_string())
    );
    assert_eq!(proxy.throttled().get("RunInstances"), Some(&1));
    eventually(
        "an instance token to refill",
        Duration::from_secs(10),
        || async { ask(1).await.ok() },
    )
    .await;
    assert_eq!(proxy.instances_launched(), 2);
}
