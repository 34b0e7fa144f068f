//! Client-side token buckets that keep the operator inside EC2's API
//! request rates.
//!
//! EC2 throttles every account per Region with token buckets ("Request
//! throttling for the Amazon EC2 API", EC2 Developer Guide,
//! <https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-throttling.html>).
//! Going over them gets `RequestLimitExceeded` not only for us but for every
//! other tool in the account, so we never want to be the one who drains a
//! bucket. This module mirrors AWS's buckets and, by default, claims only
//! half of each ([`RateLimitConfig::DEFAULT_FRACTION`]).
//!
//! AWS's defaults, as published (capacity = burst, refill = tokens/second):
//!
//! | Bucket | AWS capacity | AWS refill/s | ours (×0.5) |
//! |---|---|---|---|
//! | Non-mutating (`Describe*`, `List*`, `Search*`, `Get*`) | 100 | 20 | 50 / 10 |
//! | Unfiltered and unpaginated non-mutating (`DescribeInstances`, `DescribeVolumes`, ... without filter or pagination) | 50 | 10 | 25 / 5 |
//! | Mutating (everything else) | 50 | 5 | 25 / 2.5 |
//! | Resource-intensive (`AuthorizeSecurityGroupIngress`, `RequestSpotInstances`, ...) | 50 | 5 | 25 / 2.5 |
//! | `RunInstances` requests (own bucket) | 5 | 2 | 2 / 1 |
//! | `StartInstances` requests (own bucket) | 5 | 2 | 2 / 1 |
//! | `TerminateInstances` requests (own bucket) | 100 | 5 | 50 / 2.5 |
//! | `CreateTags`, `DeleteTags` (own buckets) | 100 | 10 | 50 / 5 |
//! | `RunInstances` instances (resource bucket) | 1000 | 2 | 500 / 1 |
//! | `TerminateInstances` instances (resource bucket) | 1000 | 20 | 500 / 10 |
//! | `StartInstances` instances (resource bucket) | 1000 | 2 | 500 / 1 |
//! | `StopInstances` instances (resource bucket) | 1000 | 20 | 500 / 10 |
//!
//! Actions with a resource bucket take one request token *and* one resource
//! token per instance they touch. Accounts whose limits were raised, and
//! tests against an emulator, scale everything with
//! [`RateLimitConfig::fraction`].
//!
//! The buckets are [`governor`] GCRA limiters; waiting adds a little jitter
//! so that many reconcilers blocked on one bucket don't wake in lockstep.
//! Throttling that still happens (other tools, lower account limits) is
//! retried by the SDK with jittered exponential backoff.

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock, ReasonablyRealtime};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Jitter, Quota, RateLimiter};

use super::bucket_override::BucketOverrides;

/// Size and refill rate of one token bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BucketSpec {
    /// Maximum tokens (the burst).
    pub capacity: u32,
    /// Tokens added per second.
    pub refill_per_sec: f64,
}

impl BucketSpec {
    const fn new(capacity: u32, refill_per_sec: f64) -> Self {
        BucketSpec {
            capacity,
            refill_per_sec,
        }
    }
}

/// The request bucket an EC2 action draws from (one token per call).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RequestBucket {
    /// `Describe*`, `List*`, `Search*`, `Get*`.
    NonMutating,
    /// The smaller bucket of some Describe actions when called without a
    /// filter and without pagination.
    UnfilteredNonMutating,
    /// Every action that changes something and has no bucket of its own.
    Mutating,
    /// Slow mutating actions AWS lists as resource-intensive.
    ResourceIntensive,
    /// `RunInstances` has its own, small, request bucket.
    RunInstances,
    /// `StartInstances` has its own request bucket.
    StartInstances,
    /// `TerminateInstances` has its own request bucket.
    TerminateInstances,
    /// `CreateTags` has its own request bucket.
    CreateTags,
    /// `DeleteTags` has its own request bucket.
    DeleteTags,
}

impl RequestBucket {
    /// Every request bucket.
    pub const ALL: [RequestBucket; 9] = [
        RequestBucket::NonMutating,
        RequestBucket::UnfilteredNonMutating,
        RequestBucket::Mutating,
        RequestBucket::ResourceIntensive,
        RequestBucket::RunInstances,
        RequestBucket::StartInstances,
        RequestBucket::TerminateInstances,
        RequestBucket::CreateTags,
        RequestBucket::DeleteTags,
    ];

    /// The bucket of `operation` (an EC2 action name such as
    /// `DescribeInstances`).
    ///
    /// The Describe actions that have an "unfiltered and unpaginated"
    /// bucket map to [`RequestBucket::UnfilteredNonMutating`], the smaller
    /// one: from the name alone we cannot tell, and being wrong that way
    /// only makes us slower. Callers that set a filter or `MaxResults` use
    /// [`Ec2RateLimiter::acquire_filtered`].
    pub fn of(operation: &str) -> RequestBucket {
        match operation {
            "RunInstances" => RequestBucket::RunInstances,
            "StartInstances" => RequestBucket::StartInstances,
            "TerminateInstances" => RequestBucket::TerminateInstances,
            "CreateTags" => RequestBucket::CreateTags,
            "DeleteTags" => RequestBucket::DeleteTags,
            op if UNFILTERED_ACTIONS.contains(&op) => RequestBucket::UnfilteredNonMutating,
            op if RESOURCE_INTENSIVE_ACTIONS.contains(&op) => RequestBucket::ResourceIntensive,
            op if ["Describe", "List", "Search", "Get"]
                .iter()
                .any(|prefix| op.starts_with(prefix)) =>
            {
                RequestBucket::NonMutating
            }
            _ => RequestBucket::Mutating,
        }
    }

    /// The same bucket for a request that sets a filter or pagination:
    /// AWS then charges the standard non-mutating bucket.
    pub fn filtered(self) -> RequestBucket {
        match self {
            RequestBucket::UnfilteredNonMutating => RequestBucket::NonMutating,
            other => other,
        }
    }

    /// AWS's published default for this bucket.
    pub fn aws_limit(self) -> BucketSpec {
        match self {
            RequestBucket::NonMutating => BucketSpec::new(100, 20.0),
            RequestBucket::UnfilteredNonMutating => BucketSpec::new(50, 10.0),
            RequestBucket::Mutating => BucketSpec::new(50, 5.0),
            RequestBucket::ResourceIntensive => BucketSpec::new(50, 5.0),
            RequestBucket::RunInstances => BucketSpec::new(5, 2.0),
            RequestBucket::StartInstances => BucketSpec::new(5, 2.0),
            RequestBucket::TerminateInstances => BucketSpec::new(100, 5.0),
            RequestBucket::CreateTags => BucketSpec::new(100, 10.0),
            RequestBucket::DeleteTags => BucketSpec::new(100, 10.0),
        }
    }
}

/// Describe actions with a smaller bucket when called unfiltered and
/// unpaginated.
const UNFILTERED_ACTIONS: &[&str] = &[
    "DescribeInstances",
    "DescribeInstanceStatus",
    "DescribeNetworkInterfaces",
    "DescribeSecurityGroups",
    "DescribeSnapshots",
    "DescribeSpotInstanceRequests",
    "DescribeVolumes",
];

/// Actions AWS lists as resource-intensive.
const RESOURCE_INTENSIVE_ACTIONS: &[&str] = &[
    "AcceptVpcPeeringConnection",
    "AuthorizeSecurityGroupIngress",
    "CancelSpotInstanceRequests",
    "CreateKeyPair",
    "CreateVpcPeeringConnection",
    "DeleteVpcPeeringConnection",
    "RejectVpcPeeringConnection",
    "RevokeSecurityGroupIngress",
    "RequestSpotInstances",
];

/// The resource bucket of actions throttled by the number of instances
/// they touch (in addition to their request bucket).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResourceBucket {
    /// Instances launched.
    RunInstances,
    /// Instances terminated.
    TerminateInstances,
    /// Instances started.
    StartInstances,
    /// Instances stopped.
    StopInstances,
}

impl ResourceBucket {
    /// Every resource bucket.
    pub const ALL: [ResourceBucket; 4] = [
        ResourceBucket::RunInstances,
        ResourceBucket::TerminateInstances,
        ResourceBucket::StartInstances,
        ResourceBucket::StopInstances,
    ];

    /// The resource bucket of `operation`, if it has one.
    pub fn of(operation: &str) -> Option<ResourceBucket> {
        match operation {
            "RunInstances" => Some(ResourceBucket::RunInstances),
            "TerminateInstances" => Some(ResourceBucket::TerminateInstances),
            "StartInstances" => Some(ResourceBucket::StartInstances),
            "StopInstances" => Some(ResourceBucket::StopInstances),
            _ => None,
        }
    }

    /// AWS's published default for this bucket (tokens are instances).
    pub fn aws_limit(self) -> BucketSpec {
        match self {
            ResourceBucket::RunInstances | ResourceBucket::StartInstances => {
                BucketSpec::new(1000, 2.0)
            }
            ResourceBucket::TerminateInstances | ResourceBucket::StopInstances => {
                BucketSpec::new(1000, 20.0)
            }
        }
    }
}

/// How much of AWS's published limits this operator may use.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimitConfig {
    /// Fraction of every AWS bucket (capacity and refill) we claim. The
    /// default leaves half of the account's budget to the console, other
    /// controllers and humans. Raise it for accounts with raised limits or
    /// against an emulator; values outside
    /// [`MIN_FRACTION`](Self::MIN_FRACTION)..=[`MAX_FRACTION`](Self::MAX_FRACTION)
    /// (or not finite) are clamped / replaced by the default.
    pub fraction: f64,
    /// The account's own limits where AWS raised them (`--ec2-bucket-override`);
    /// the fraction applies to them as well.
    pub overrides: BucketOverrides,
}

impl RateLimitConfig {
    /// Stay at or below 50% of each AWS bucket.
    pub const DEFAULT_FRACTION: f64 = 0.5;
    /// Smallest accepted fraction.
    pub const MIN_FRACTION: f64 = 0.001;
    /// Largest accepted fraction (emulators have no limits at all).
    pub const MAX_FRACTION: f64 = 10_000.0;

    /// This configuration with every limit multiplied by `factor` (for
    /// tests and emulators, e.g. `scaled(100.0)`).
    pub fn scaled(self, factor: f64) -> Self {
        RateLimitConfig {
            fraction: self.fraction * factor,
            ..self
        }
    }

    /// The fraction actually used: finite, within bounds.
    pub fn effective_fraction(&self) -> f64 {
        if self.fraction.is_finite() && self.fraction > 0.0 {
            self.fraction.clamp(Self::MIN_FRACTION, Self::MAX_FRACTION)
        } else {
            Self::DEFAULT_FRACTION
        }
    }

    /// Our share of a request bucket (the account's limit: its override,
    /// else AWS's default).
    pub fn request(&self, b: RequestBucket) -> BucketSpec {
        self.apply(self.overrides.request(b))
    }

    /// Our share of a resource bucket.
    pub fn resource(&self, b: ResourceBucket) -> BucketSpec {
        self.apply(self.overrides.resource(b))
    }

    /// Our share of an AWS bucket: at least one token of capacity, so that
    /// every action can run at all.
    pub fn apply(&self, aws: BucketSpec) -> BucketSpec {
        let fraction = self.effective_fraction();
        let capacity = (f64::from(aws.capacity) * fraction)
            .floor()
            .clamp(1.0, f64::from(u32::MAX));
        BucketSpec {
            // In range by the clamp above; `as` only drops the (zero)
            // fraction part.
            capacity: capacity as u32,
            refill_per_sec: aws.refill_per_sec * fraction,
        }
    }
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            fraction: Self::DEFAULT_FRACTION,
            overrides: BucketOverrides::default(),
        }
    }
}

type Bucket<C> = RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// Extra random wait when a bucket is empty, so waiters spread out.
const WAIT_JITTER: Duration = Duration::from_millis(100);

/// The token buckets of one account in one Region (in practice: of one set
/// of credentials in one Region, see `clients.rs`).
pub struct Ec2RateLimiter<C: Clock = DefaultClock> {
    config: RateLimitConfig,
    requests: BTreeMap<RequestBucket, Bucket<C>>,
    /// Resource buckets with their capacity (a batch never asks for more).
    resources: BTreeMap<ResourceBucket, (Bucket<C>, NonZeroU32)>,
}

impl Ec2RateLimiter {
    /// Buckets on the real clock.
    pub fn new(config: RateLimitConfig) -> Self {
        Self::with_clock(config, DefaultClock::default())
    }
}

impl Default for Ec2RateLimiter {
    fn default() -> Self {
        Self::new(RateLimitConfig::default())
    }
}

impl<C: Clock + Clone> Ec2RateLimiter<C> {
    /// Buckets on the given clock (tests use governor's
    /// `FakeRelativeClock`).
    pub fn with_clock(config: RateLimitConfig, clock: C) -> Self {
        let bucket = |ours: BucketSpec| {
            let (quota, capacity) = quota(ours);
            (
                RateLimiter::direct_with_clock(quota, clock.clone()),
                capacity,
            )
        };
        Ec2RateLimiter {
            config,
            requests: RequestBucket::ALL
                .iter()
                .map(|b| (*b, bucket(config.request(*b)).0))
                .collect(),
            resources: ResourceBucket::ALL
                .iter()
                .map(|b| (*b, bucket(config.resource(*b))))
                .collect(),
        }
    }
}

impl<C: Clock> Ec2RateLimiter<C> {
    /// The configuration the buckets were built from.
    pub fn config(&self) -> RateLimitConfig {
        self.config
    }

    /// Takes the tokens for one call of `operation` (touching one instance
    /// where the action has a resource bucket) if they are there now;
    /// otherwise returns how long to wait. A resource-bucket refusal keeps
    /// the request token already taken — acceptable, since this only errs
    /// on the slow side.
    pub fn try_acquire(&self, operation: &str) -> Result<(), Duration> {
        self.try_acquire_in(RequestBucket::of(operation), operation, 1)
    }

    fn try_acquire_in(
        &self,
        request: RequestBucket,
        operation: &str,
        instances: u32,
    ) -> Result<(), Duration> {
        if let Some(bucket) = self.requests.get(&request) {
            bucket
                .check()
                .map_err(|not_until| not_until.wait_time_from(bucket.clock().now()))?;
        }
        if let Some((bucket, capacity)) =
            ResourceBucket::of(operation).and_then(|b| self.resources.get(&b))
        {
            match bucket.check_n(resource_tokens(instances, *capacity)) {
                Ok(Ok(())) => {}
                Ok(Err(not_until)) => return Err(not_until.wait_time_from(bucket.clock().now())),
                // `resource_tokens` never asks for more than the capacity.
                Err(_insufficient) => {}
            }
        }
        Ok(())
    }
}

/// The tokens to take for `instances` instances: at least one, and at most
/// the bucket's capacity (a bigger batch could never pass; it waits for a
/// full bucket instead).
fn resource_tokens(instances: u32, capacity: NonZeroU32) -> NonZeroU32 {
    NonZeroU32::new(instances.min(capacity.get())).unwrap_or(NonZeroU32::MIN)
}

impl<C: ReasonablyRealtime + Clock> Ec2RateLimiter<C> {
    /// Waits until one call of `operation` fits into the buckets, then
    /// takes its tokens (one instance for actions with a resource bucket).
    pub async fn acquire(&self, operation: &str) {
        self.wait(RequestBucket::of(operation), operation, 1).await;
    }

    /// Like [`acquire`](Self::acquire), for a Describe call that sets a
    /// filter or pagination (`MaxResults`/`NextToken`) and therefore uses
    /// the standard non-mutating bucket.
    pub async fn acquire_filtered(&self, operation: &str) {
        self.wait(RequestBucket::of(operation).filtered(), operation, 1)
            .await;
    }

    /// Like [`acquire`](Self::acquire), for a call touching `instances`
    /// instances at once (a batched `TerminateInstances`).
    pub async fn acquire_instances(&self, operation: &str, instances: u32) {
        self.wait(RequestBucket::of(operation), operation, instances)
            .await;
    }

    async fn wait(&self, request: RequestBucket, operation: &str, instances: u32) {
        let jitter = Jitter::up_to(WAIT_JITTER);
        if let Some(bucket) = self.requests.get(&request) {
            bucket.until_ready_with_jitter(jitter).await;
        }
        if let Some((bucket, capacity)) =
            ResourceBucket::of(operation).and_then(|b| self.resources.get(&b))
        {
            // Err only when asking for more than the capacity, which
            // resource_tokens rules out; nothing to wait for then anyway.
            let _ = bucket
                .until_n_ready_with_jitter(resource_tokens(instances, *capacity), jitter)
                .await;
        }
    }
}

impl<C: Clock> fmt::Debug for Ec2RateLimiter<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ec2RateLimiter")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The governor quota for a bucket: one token every `1/refill` seconds, up
/// to `capacity` at once; returned with that capacity.
fn quota(spec: BucketSpec) -> (Quota, NonZeroU32) {
    let period = Duration::try_from_secs_f64(1.0 / spec.refill_per_sec)
        .ok()
        .filter(|p| !p.is_zero())
        .unwrap_or(Duration::from_nanos(1));
    let burst = NonZeroU32::new(spec.capacity).unwrap_or(NonZeroU32::MIN);
    let quota = Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(burst))
        .allow_burst(burst);
    (quota, burst)
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn limiter(config: RateLimitConfig) -> (Ec2RateLimiter<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        (Ec2RateLimiter::with_clock(config, clock.clone()), clock)
    }

    #[test]
    fn operations_map_to_aws_categories() {
        use RequestBucket::*;
        for (operation, bucket) in [
            ("DescribeImages", NonMutating),
            ("DescribeSubnets", NonMutating),
            ("GetConsoleOutput", NonMutating),
            ("ListImagesInRecycleBin", NonMutating),
            ("SearchTransitGatewayRoutes", NonMutating),
            ("DescribeInstances", UnfilteredNonMutating),
            ("DescribeVolumes", UnfilteredNonMutating),
            ("DescribeSecurityGroups", UnfilteredNonMutating),
            ("ModifyInstanceAttribute", Mutating),
            ("StopInstances", Mutating),
            ("CreateVolume", Mutating),
            ("AuthorizeSecurityGroupIngress", ResourceIntensive),
            ("RequestSpotInstances", ResourceIntensive),
            ("RunInstances", RunInstances),
            ("TerminateInstances", TerminateInstances),
            ("StartInstances", StartInstances),
            ("CreateTags", CreateTags),
            ("DeleteTags", DeleteTags),
        ] {
            assert_eq!(RequestBucket::of(operation), bucket, "{operation}");
        }
        assert_eq!(
            RequestBucket::of("DescribeInstances").filtered(),
            NonMutating
        );
        assert_eq!(RequestBucket::of("RunInstances").filtered(), RunInstances);

        assert_eq!(
            ResourceBucket::of("RunInstances"),
            Some(ResourceBucket::RunInstances)
        );
        assert_eq!(
            ResourceBucket::of("TerminateInstances"),
            Some(ResourceBucket::TerminateInstances)
        );
        assert_eq!(ResourceBucket::of("DescribeInstances"), None);
    }

    #[test]
    fn defaults_claim_at_most_half_of_every_aws_bucket() {
        let config = RateLimitConfig::default();
        let specs = RequestBucket::ALL
            .iter()
            .map(|b| b.aws_limit())
            .chain(ResourceBucket::ALL.iter().map(|b| b.aws_limit()));
        for aws in specs {
            let ours = config.apply(aws);
            assert!(ours.capacity >= 1);
            assert!(
                f64::from(ours.capacity) <= f64::from(aws.capacity) * 0.5 || ours.capacity == 1
            );
            assert!(ours.refill_per_sec <= aws.refill_per_sec * 0.5 + f64::EPSILON);
            assert!(ours.refill_per_sec > 0.0);
        }
        assert_eq!(
            config.apply(RequestBucket::RunInstances.aws_limit()),
            BucketSpec::new(2, 1.0)
        );
    }

    #[test]
    fn bad_fractions_fall_back_or_clamp() {
        for fraction in [f64::NAN, f64::INFINITY, -1.0, 0.0] {
            assert_eq!(
                RateLimitConfig {
                    fraction,
                    ..Default::default()
                }
                .effective_fraction(),
                RateLimitConfig::DEFAULT_FRACTION
            );
        }
        let tiny = RateLimitConfig {
            fraction: 1e-12,
            ..Default::default()
        };
        assert_eq!(tiny.effective_fraction(), RateLimitConfig::MIN_FRACTION);
        // Still usable: one token, a slow refill, no panic building it.
        let (limiter, _) = limiter(tiny);
        assert!(limiter.try_acquire("RunInstances").is_ok());
    }

    #[test]
    fn a_burst_passes_then_callers_must_wait_until_refill() {
        let (limiter, clock) = limiter(RateLimitConfig::default());
        // Mutating: 25 tokens, 2.5/s.
        for i in 0..25 {
            assert!(
                limiter.try_acquire("ModifyInstanceAttribute").is_ok(),
                "call {i}"
            );
        }
        let wait = match limiter.try_acquire("ModifyInstanceAttribute") {
            Err(wait) => wait,
            Ok(()) => panic!("the 26th call must wait"),
        };
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(400),
            "{wait:?}"
        );
        // Other buckets are independent.
        assert!(limiter.try_acquire("DescribeImages").is_ok());
        clock.advance(Duration::from_millis(400));
        assert!(limiter.try_acquire("ModifyInstanceAttribute").is_ok());
    }

    #[test]
    fn run_instances_is_limited_by_its_small_request_bucket() {
        let (limiter, clock) = limiter(RateLimitConfig::default());
        assert!(limiter.try_acquire("RunInstances").is_ok());
        assert!(limiter.try_acquire("RunInstances").is_ok());
        assert!(limiter.try_acquire("RunInstances").is_err());
        clock.advance(Duration::from_secs(1));
        assert!(limiter.try_acquire("RunInstances").is_ok());
    }

    #[test]
    fn batched_terminations_draw_instance_tokens() {
        let (limiter, clock) = limiter(RateLimitConfig::default());
        // 500 instance tokens, 10/s: a batch of 450 passes, a second one
        // must wait although request tokens are left.
        assert!(
            limiter
                .try_acquire_in(RequestBucket::TerminateInstances, "TerminateInstances", 450)
                .is_ok()
        );
        assert!(
            limiter
                .try_acquire_in(RequestBucket::TerminateInstances, "TerminateInstances", 100)
                .is_err()
        );
        clock.advance(Duration::from_secs(10));
        assert!(
            limiter
                .try_acquire_in(RequestBucket::TerminateInstances, "TerminateInstances", 100)
                .is_ok()
        );
        // A batch larger than the bucket is charged a full bucket instead
        // of being refused for ever.
        clock.advance(Duration::from_secs(60));
        assert!(
            limiter
                .try_acquire_in(
                    RequestBucket::TerminateInstances,
                    "TerminateInstances",
                    5000
                )
                .is_ok()
        );
    }

    #[test]
    fn a_raised_limit_gets_the_same_share() {
        let config = RateLimitConfig {
            fraction: 1.0,
            overrides: BucketOverrides::of(["RunInstances=10:5".parse().unwrap()]),
        };
        let (limiter, _) = limiter(config);
        for i in 0..10 {
            assert!(limiter.try_acquire("RunInstances").is_ok(), "call {i}");
        }
        assert!(limiter.try_acquire("RunInstances").is_err());
        let half = RateLimitConfig {
            fraction: 0.5,
            ..config
        };
        assert_eq!(
            half.request(RequestBucket::RunInstances),
            BucketSpec::new(5, 2.5)
        );
        assert_eq!(
            half.resource(ResourceBucket::RunInstances),
            BucketSpec::new(500, 1.0)
        );
    }

    #[test]
    fn scaling_multiplies_the_burst() {
        let (limiter, _) = limiter(RateLimitConfig::default().scaled(10.0));
        // RunInstances: 5 × 0.5 × 10 = 25 at once.
        for i in 0..25 {
            assert!(limiter.try_acquire("RunInstances").is_ok(), "call {i}");
        }
        assert!(limiter.try_acquire("RunInstances").is_err());
    }

    #[tokio::test]
    async fn acquire_returns_at_once_within_the_burst() {
        let limiter = Ec2RateLimiter::new(RateLimitConfig::default());
        let started = std::time::Instant::now();
        for _ in 0..10 {
            limiter.acquire_filtered("DescribeInstances").await;
            limiter.acquire("CreateTags").await;
        }
        limiter.acquire_instances("TerminateInstances", 20).await;
        // Generous bound: only proves nothing waited for a refill.
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
