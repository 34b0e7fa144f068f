//! Per-bucket overrides of EC2's published API limits, for accounts whose
//! limits AWS raised: `--ec2-bucket-override <bucket>=<capacity>:<refill>`,
//! e.g. `RunInstances=20:10` (a request bucket of 20 calls, refilled at
//! 10/s) or `RunInstances.instances=2000:4` (the instances RunInstances may
//! start). The override replaces AWS's default for that bucket; the
//! `--ec2-api-share` still applies to it, as to every other bucket.
//!
//! Bucket names: the request buckets `NonMutating`, `UnfilteredNonMutating`,
//! `Mutating`, `ResourceIntensive`, `RunInstances`, `StartInstances`,
//! `TerminateInstances`, `CreateTags`, `DeleteTags`; the resource buckets
//! `RunInstances.instances`, `TerminateInstances.instances`,
//! `StartInstances.instances`, `StopInstances.instances`.

use std::fmt;
use std::str::FromStr;

use super::rate_limit::{BucketSpec, RequestBucket, ResourceBucket};

/// Suffix of resource-bucket names.
const INSTANCES: &str = ".instances";

/// One bucket of the table in `rate_limit.rs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bucket {
    Request(RequestBucket),
    Resource(ResourceBucket),
}

impl Bucket {
    /// The name users write.
    pub fn name(self) -> String {
        match self {
            Bucket::Request(b) => format!("{b:?}"),
            Bucket::Resource(b) => format!("{b:?}{INSTANCES}"),
        }
    }

    fn all() -> impl Iterator<Item = Bucket> {
        RequestBucket::ALL
            .into_iter()
            .map(Bucket::Request)
            .chain(ResourceBucket::ALL.into_iter().map(Bucket::Resource))
    }
}

/// One `--ec2-bucket-override` value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BucketOverride {
    pub bucket: Bucket,
    /// The account's limit for the bucket (before the API share).
    pub limit: BucketSpec,
}

impl FromStr for BucketOverride {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let usage = || {
            format!(
                "{s:?} is not <bucket>=<capacity>:<refill per second> (e.g. RunInstances=20:10); buckets: {}",
                Bucket::all()
                    .map(Bucket::name)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let (name, limit) = s.trim().split_once('=').ok_or_else(usage)?;
        let bucket = Bucket::all()
            .find(|b| b.name().eq_ignore_ascii_case(name.trim()))
            .ok_or_else(usage)?;
        let (capacity, refill) = limit.split_once(':').ok_or_else(usage)?;
        let capacity: u32 = capacity.trim().parse().map_err(|_| usage())?;
        let refill: f64 = refill.trim().parse().map_err(|_| usage())?;
        if capacity == 0 || !refill.is_finite() || refill <= 0.0 {
            return Err(format!(
                "{s:?}: capacity and refill must be positive (a bucket of nothing would stop every call)"
            ));
        }
        Ok(BucketOverride {
            bucket,
            limit: BucketSpec {
                capacity,
                refill_per_sec: refill,
            },
        })
    }
}

impl fmt::Display for BucketOverride {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}={}:{}",
            self.bucket.name(),
            self.limit.capacity,
            self.limit.refill_per_sec
        )
    }
}

/// The overrides in force (at most one per bucket; a later one wins).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BucketOverrides {
    request: [Option<BucketSpec>; RequestBucket::ALL.len()],
    resource: [Option<BucketSpec>; ResourceBucket::ALL.len()],
}

impl BucketOverrides {
    /// The set of `overrides`.
    pub fn of(overrides: impl IntoIterator<Item = BucketOverride>) -> Self {
        let mut set = BucketOverrides::default();
        for o in overrides {
            let slot = match o.bucket {
                Bucket::Request(b) => position(&RequestBucket::ALL, b).map(|i| &mut set.request[i]),
                Bucket::Resource(b) => {
                    position(&ResourceBucket::ALL, b).map(|i| &mut set.resource[i])
                }
            };
            if let Some(slot) = slot {
                *slot = Some(o.limit);
            }
        }
        set
    }

    /// The account's limit of a request bucket: the override, else AWS's default.
    pub fn request(&self, b: RequestBucket) -> BucketSpec {
        position(&RequestBucket::ALL, b)
            .and_then(|i| self.request[i])
            .unwrap_or_else(|| b.aws_limit())
    }

    /// The account's limit of a resource bucket: the override, else AWS's default.
    pub fn resource(&self, b: ResourceBucket) -> BucketSpec {
        position(&ResourceBucket::ALL, b)
            .and_then(|i| self.resource[i])
            .unwrap_or_else(|| b.aws_limit())
    }
}

fn position<T: PartialEq>(all: &[T], b: T) -> Option<usize> {
    all.iter().position(|x| *x == b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_parse_by_bucket_name() {
        let o: BucketOverride = "RunInstances=20:10".parse().unwrap();
        assert_eq!(o.bucket, Bucket::Request(RequestBucket::RunInstances));
        assert_eq!(
            o.limit,
            BucketSpec {
                capacity: 20,
                refill_per_sec: 10.0
            }
        );
        assert_eq!(o.to_string(), "RunInstances=20:10");
        let r: BucketOverride = " runinstances.instances = 2000:4.5".parse().unwrap();
        assert_eq!(r.bucket, Bucket::Resource(ResourceBucket::RunInstances));
        assert_eq!(r.limit.refill_per_sec, 4.5);
        for bad in [
            "RunInstances",
            "RunInstances=20",
            "Nope=1:1",
            "RunInstances=0:1",
            "RunInstances=5:0",
            "RunInstances=5:-1",
            "RunInstances=x:1",
            "RunInstances=5:NaN",
        ] {
            let err = bad.parse::<BucketOverride>().unwrap_err();
            assert!(err.contains(bad.split('=').next().unwrap()), "{bad}: {err}");
        }
        assert!(
            "x".parse::<BucketOverride>()
                .unwrap_err()
                .contains("TerminateInstances.instances"),
            "the message lists the buckets"
        );
    }

    #[test]
    fn an_override_replaces_only_its_bucket() {
        let set = BucketOverrides::of([
            "RunInstances=20:10".parse().unwrap(),
            "TerminateInstances.instances=5000:50".parse().unwrap(),
            "RunInstances=40:20".parse().unwrap(),
        ]);
        assert_eq!(
            set.request(RequestBucket::RunInstances),
            BucketSpec {
                capacity: 40,
                refill_per_sec: 20.0
            },
            "the last one wins"
        );
        assert_eq!(
            set.request(RequestBucket::Mutating),
            RequestBucket::Mutating.aws_limit()
        );
        assert_eq!(
            set.resource(ResourceBucket::TerminateInstances).capacity,
            5000
        );
        assert_eq!(
            set.resource(ResourceBucket::RunInstances),
            ResourceBucket::RunInstances.aws_limit()
        );
    }
}
