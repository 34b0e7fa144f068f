//! EC2's API throttling: token buckets per account and Region ("Request
//! throttling for the Amazon EC2 API", EC2 Developer Guide).
//!
//! The sizes are the library's table of AWS's published defaults
//! ([`RequestBucket::aws_limit`], [`ResourceBucket::aws_limit`]) at full
//! capacity, times [`QuotaConfig::scale`]. Every request takes one token
//! from its request bucket; `RunInstances`, `TerminateInstances`,
//! `StartInstances` and `StopInstances` also take one token per instance from
//! their resource bucket: `MaxCount` for RunInstances (what the caller asks
//! for, whatever moto then launches), the number of `InstanceId.N` for the
//! others, at most the bucket's capacity (so a big batch waits for a full
//! bucket instead of failing for ever). A request either gets all its tokens
//! or none: a refused request costs nothing.
//!
//! Today's guide says request buckets are kept per API action, each the size
//! of its class ("each API is evaluated individually"); older versions
//! described one bucket per class, shared. Per action is the default;
//! [`QuotaConfig::shared_by_class`] gives the stricter old reading. Refill
//! is continuous (EC2 adds tokens once a second), which is the same rate
//! with finer steps.

use std::collections::HashMap;
use std::time::Instant;

use mcm_provider_aws::aws::rate_limit::{
    BucketSpec, RateLimitConfig, RequestBucket, ResourceBucket,
};

use super::query::{Ec2Request, Scope};

/// How big the buckets are.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QuotaConfig {
    /// Multiplies every bucket's capacity and refill rate: 1.0 is a default
    /// AWS account, 0.1 a tenth of it (for tests that want to hit the
    /// limits quickly). Capacities round down but stay at least 1.
    pub scale: f64,
    /// One request bucket per action class, shared by the class's actions,
    /// instead of one per action.
    pub shared_by_class: bool,
}

impl QuotaConfig {
    /// AWS's published defaults, per action.
    pub fn aws() -> QuotaConfig {
        QuotaConfig {
            scale: 1.0,
            shared_by_class: false,
        }
    }

    /// These buckets with capacity and refill multiplied by `factor`.
    pub fn scaled(self, factor: f64) -> QuotaConfig {
        QuotaConfig {
            scale: self.scale * factor,
            ..self
        }
    }

    /// These buckets, shared by all actions of a class.
    pub fn shared_by_class(self) -> QuotaConfig {
        QuotaConfig {
            shared_by_class: true,
            ..self
        }
    }

    fn size(&self, aws: BucketSpec) -> BucketSpec {
        RateLimitConfig {
            fraction: self.scale,
            ..RateLimitConfig::default()
        }
        .apply(aws)
    }
}

impl Default for QuotaConfig {
    fn default() -> Self {
        QuotaConfig::aws()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum BucketId {
    /// A request bucket: of one action, or (shared) of the whole class.
    Request {
        class: RequestBucket,
        action: Option<String>,
    },
    Resource(ResourceBucket),
}

struct Bucket {
    spec: BucketSpec,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(spec: BucketSpec, now: Instant) -> Bucket {
        Bucket {
            spec,
            tokens: f64::from(spec.capacity),
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens =
            (self.tokens + elapsed * self.spec.refill_per_sec).min(f64::from(self.spec.capacity));
        self.at = now;
    }
}

/// The buckets of every account and Region seen so far (each starts full).
pub struct Quotas {
    config: QuotaConfig,
    buckets: HashMap<(Scope, BucketId), Bucket>,
}

impl Quotas {
    pub fn new(config: QuotaConfig) -> Quotas {
        Quotas {
            config,
            buckets: HashMap::new(),
        }
    }

    pub fn config(&self) -> QuotaConfig {
        self.config
    }

    /// Takes the tokens `request` costs at `now` and returns true, or takes
    /// none and returns false when one of its buckets is short.
    pub fn admit(&mut self, request: &Ec2Request, now: Instant) -> bool {
        let charges = self.charges(request);
        for (id, spec, tokens) in &charges {
            let bucket = self
                .buckets
                .entry((request.scope.clone(), id.clone()))
                .or_insert_with(|| Bucket::full(*spec, now));
            bucket.refill(now);
            if bucket.tokens < *tokens {
                return false;
            }
        }
        for (id, _, tokens) in charges {
            if let Some(bucket) = self.buckets.get_mut(&(request.scope.clone(), id)) {
                bucket.tokens -= tokens;
            }
        }
        true
    }

    /// The buckets `request` draws from, their size, and how many tokens.
    fn charges(&self, request: &Ec2Request) -> Vec<(BucketId, BucketSpec, f64)> {
        let action = request.action.as_str();
        let mut class = RequestBucket::of(action);
        if request.is_filtered() {
            class = class.filtered();
        }
        let mut charges = vec![(
            BucketId::Request {
                class,
                action: (!self.config.shared_by_class).then(|| action.to_string()),
            },
            self.config.size(class.aws_limit()),
            1.0,
        )];
        if let Some(resource) = ResourceBucket::of(action) {
            let spec = self.config.size(resource.aws_limit());
            let instances = match resource {
                ResourceBucket::RunInstances => request
                    .param("MaxCount")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(1),
                _ => request.list("InstanceId").len() as u32,
            };
            let tokens = instances.min(spec.capacity);
            if tokens > 0 {
                charges.push((BucketId::Resource(resource), spec, f64::from(tokens)));
            }
        }
        charges
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn request(key: &str, body: &str) -> Ec2Request {
        Ec2Request {
            action: body.split('&').next().unwrap().to_string(),
            params: body
                .split('&')
                .skip(1)
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap();
                    (k.to_string(), v.to_string())
                })
                .collect(),
            scope: Scope {
                access_key: key.into(),
                region: "eu-west-1".into(),
            },
        }
    }

    /// How many of `n` requests at `now` are admitted.
    fn admitted(q: &mut Quotas, r: &Ec2Request, n: usize, now: Instant) -> usize {
        (0..n).filter(|_| q.admit(r, now)).count()
    }

    #[test]
    fn run_instances_bursts_five_then_refills_two_a_second() {
        let mut q = Quotas::new(QuotaConfig::aws());
        let run = request("A", "RunInstances&MaxCount=1");
        let t0 = Instant::now();
        assert_eq!(admitted(&mut q, &run, 10, t0), 5);
        assert_eq!(
            admitted(&mut q, &run, 10, t0 + Duration::from_millis(499)),
            0
        );
        assert_eq!(
            admitted(&mut q, &run, 10, t0 + Duration::from_millis(1000)),
            2
        );
        assert_eq!(admitted(&mut q, &run, 10, t0 + Duration::from_secs(60)), 5);
    }

    #[test]
    fn accounts_regions_and_actions_have_their_own_buckets() {
        let mut q = Quotas::new(QuotaConfig::aws());
        let t0 = Instant::now();
        let run = request("A", "RunInstances");
        assert_eq!(admitted(&mut q, &run, 10, t0), 5);
        assert_eq!(admitted(&mut q, &request("B", "RunInstances"), 10, t0), 5);
        let mut elsewhere = run.clone();
        elsewhere.scope.region = "us-east-1".into();
        assert_eq!(admitted(&mut q, &elsewhere, 10, t0), 5);
        // Mutating actions each have a bucket of 50.
        assert_eq!(
            admitted(&mut q, &request("A", "ModifyInstanceAttribute"), 60, t0),
            50
        );
        assert_eq!(admitted(&mut q, &request("A", "CreateVolume"), 60, t0), 50);
    }

    #[test]
    fn shared_buckets_are_per_class() {
        let mut q = Quotas::new(QuotaConfig::aws().shared_by_class());
        let t0 = Instant::now();
        assert_eq!(
            admitted(&mut q, &request("A", "ModifyInstanceAttribute"), 30, t0),
            30
        );
        assert_eq!(admitted(&mut q, &request("A", "CreateVolume"), 30, t0), 20);
    }

    #[test]
    fn unfiltered_describes_use_the_smaller_bucket() {
        let mut q = Quotas::new(QuotaConfig::aws());
        let t0 = Instant::now();
        assert_eq!(
            admitted(&mut q, &request("A", "DescribeInstances"), 200, t0),
            50
        );
        let filtered = request("A", "DescribeInstances&Filter.1.Name=tag-key");
        assert_eq!(admitted(&mut q, &filtered, 200, t0), 100);
    }

    #[test]
    fn resource_buckets_charge_per_instance_and_refused_calls_cost_nothing() {
        let mut q = Quotas::new(QuotaConfig::aws());
        let t0 = Instant::now();
        // One call asking for 1000 instances empties the instance bucket.
        assert!(q.admit(&request("A", "RunInstances&MinCount=1&MaxCount=1000"), t0));
        let one = request("A", "RunInstances&MaxCount=1");
        assert!(!q.admit(&one, t0));
        // The refusal took no request token: 4 are left for when instance
        // tokens come back (2 a second).
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(admitted(&mut q, &one, 10, t1), 4);

        let ids: Vec<String> = (1..=20).map(|n| format!("InstanceId.{n}=i-{n}")).collect();
        let terminate = request("A", &format!("TerminateInstances&{}", ids.join("&")));
        let scaled = &mut Quotas::new(QuotaConfig::aws().scaled(0.05));
        // 5 request tokens, but 50 instance tokens: two calls of 20.
        assert_eq!(admitted(scaled, &terminate, 5, t0), 2);
        assert_eq!(scaled.config().scale, 0.05);
    }

    #[test]
    fn scaling_shrinks_capacity_and_refill() {
        let mut q = Quotas::new(QuotaConfig::aws().scaled(0.1));
        let t0 = Instant::now();
        let describe = request("A", "DescribeImages");
        assert_eq!(admitted(&mut q, &describe, 50, t0), 10);
        assert_eq!(
            admitted(&mut q, &describe, 50, t0 + Duration::from_secs(1)),
            2
        );
        // Capacities never round down to zero.
        let run = request("A", "RunInstances");
        assert_eq!(admitted(&mut q, &run, 5, t0), 1);
    }

    #[test]
    fn huge_batches_wait_for_a_full_bucket_instead_of_failing_for_ever() {
        let mut q = Quotas::new(QuotaConfig::aws());
        let t0 = Instant::now();
        assert!(q.admit(&request("A", "RunInstances&MaxCount=5000"), t0));
    }
}
