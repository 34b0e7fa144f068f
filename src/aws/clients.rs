//! EC2 clients, cached per credentials and Region, each with its own rate
//! limiter, plus per-operation call statistics.
//!
//! A client is identified by a [`ClientKey`]: the
//! [fingerprint](CredentialSource::fingerprint) of its credentials and the
//! Region. A rotated Secret has a new fingerprint and therefore gets a new
//! client (and limiter); the old entry is dropped once it has been idle for
//! [`IDLE_EVICTION`]. One limiter per key approximates EC2's throttling,
//! which is per account and Region: two Secrets with keys of the same
//! account get two limiters (documented; rare in practice).
//!
//! Every client is built from `aws_config::defaults(..)` with the Region
//! pinned, so the standard environment applies — including
//! `AWS_ENDPOINT_URL_EC2` and `AWS_ENDPOINT_URL` (aws-config's env service
//! config feeds the former into `aws_sdk_ec2::Config`, the latter into
//! `SdkConfig`), which is how tests point the operator at an EC2 emulator.
//!
//! Calls go through [`Ec2Handle::call`], which waits for the rate limiter,
//! runs the request, maps failures to [`Ec2Error`] and counts the outcome in
//! [`Ec2CallStats`]. Each handle also holds an STS client with the same
//! credentials, for [`Ec2Handle::caller_identity`] (`AWS_ENDPOINT_URL_STS`
//! applies to it as `AWS_ENDPOINT_URL_EC2` does to EC2).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use aws_config::BehaviorVersion;
use aws_config::provider_config::ProviderConfig;
use aws_config::retry::RetryConfig;
use aws_config::sts::AssumeRoleProvider;
use aws_config::timeout::TimeoutConfig;
use aws_config::web_identity_token::{StaticConfiguration, WebIdentityTokenCredentialsProvider};
use aws_config::{AppName, Region};
use aws_sdk_ec2::config::Credentials;
use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::Filter;
use tracing::debug;

use super::credentials::CredentialSource;
use super::errors::{Ec2Error, ErrorClass};
use super::rate_limit::{Ec2RateLimiter, RateLimitConfig};
use super::tags::MACHINE_UID_TAG;

/// Session name for STS role sessions: shows up in CloudTrail as the actor.
pub const SESSION_NAME: &str = "mcm-provider-aws";
/// The STS action that says who a set of credentials is. AWS allows it to
/// every identity (even an explicit Deny does not stop it), so it checks
/// credentials without needing any permission.
pub const GET_CALLER_IDENTITY: &str = "GetCallerIdentity";
/// `provider_name` of static credentials from a MachineClass Secret.
const STATIC_PROVIDER_NAME: &str = "mcm-secret";
/// Attempts per call (the first plus retries) in the SDK's standard retry
/// mode: throttling and 5xx get jittered exponential backoff there before
/// the error reaches the controller.
pub const MAX_ATTEMPTS: u32 = 3;
/// Time to establish a connection to the EC2 endpoint.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time for one attempt of a call (a large DescribeInstances page can take
/// several seconds).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);
/// Time for a whole call including retries and backoff.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(90);
/// A client unused for this long is dropped from the cache. By then its
/// rate limiter has long refilled, so nothing is lost.
pub const IDLE_EVICTION: Duration = Duration::from_secs(60 * 60);

/// Identifies a cached client: whose credentials, which Region.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientKey {
    /// [`CredentialSource::fingerprint`] of the credentials.
    pub fingerprint: String,
    /// The AWS Region, e.g. `eu-west-1`.
    pub region: String,
}

impl ClientKey {
    /// The key of `source` in `region`.
    pub fn new(source: &CredentialSource, region: &str) -> Self {
        ClientKey {
            fingerprint: source.fingerprint(),
            region: region.to_owned(),
        }
    }
}

/// `eu-west-1/3f2a9c1e`: the Region and a short fingerprint prefix, enough
/// to tell clients apart in logs.
impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let short = self.fingerprint.get(..8).unwrap_or(&self.fingerprint);
        write!(f, "{}/{}", self.region, short)
    }
}

impl fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientKey({self})")
    }
}

/// Outcomes of one EC2 operation since start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OperationStats {
    /// Successful calls.
    pub ok: u64,
    /// Failed calls by class.
    pub failed: BTreeMap<ErrorClass, u64>,
    /// Total time calls waited for the client-side rate limiter.
    pub rate_limit_wait: Duration,
}

/// Per-operation call counters shared by all clients (operation names and
/// error classes are the only labels: low cardinality by construction). The
/// metrics endpoint reads [`Ec2CallStats::snapshot`].
#[derive(Debug, Default)]
pub struct Ec2CallStats {
    operations: Mutex<BTreeMap<&'static str, OperationStats>>,
}

impl Ec2CallStats {
    /// Counts a successful call.
    pub fn record_ok(&self, operation: &'static str, waited: Duration) {
        let mut ops = self.lock();
        let stats = ops.entry(operation).or_default();
        stats.ok += 1;
        stats.rate_limit_wait += waited;
    }

    /// Counts a failed call.
    pub fn record_failure(&self, operation: &'static str, class: ErrorClass, waited: Duration) {
        let mut ops = self.lock();
        let stats = ops.entry(operation).or_default();
        *stats.failed.entry(class).or_default() += 1;
        stats.rate_limit_wait += waited;
    }

    /// A copy of all counters.
    pub fn snapshot(&self) -> BTreeMap<&'static str, OperationStats> {
        self.lock().clone()
    }

    /// Counters stay valid even if a thread panicked while holding the lock
    /// (each update is a few additions), so poisoning is ignored.
    fn lock(&self) -> MutexGuard<'_, BTreeMap<&'static str, OperationStats>> {
        self.operations
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// An EC2 client for one credentials + Region, with its rate limiter.
/// Cheap to clone.
#[derive(Clone)]
pub struct Ec2Handle {
    /// The SDK client. Prefer [`Ec2Handle::call`] over calling it directly:
    /// that is what keeps the rate limit and the statistics.
    pub client: aws_sdk_ec2::Client,
    /// STS with the same credentials and Region (regional endpoint); see
    /// [`Ec2Handle::caller_identity`].
    pub sts: aws_sdk_sts::Client,
    /// The buckets of this credentials + Region.
    pub limiter: Arc<Ec2RateLimiter>,
    /// Which credentials and Region this is.
    pub key: ClientKey,
    stats: Arc<Ec2CallStats>,
}

impl fmt::Debug for Ec2Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ec2Handle")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Ec2Handle {
    /// Runs one EC2 call: waits for the rate limiter, awaits `request` (an
    /// SDK future such as `client.run_instances()...send()`; SDK futures do
    /// nothing until awaited, so the request starts only after the limiter
    /// let it through), maps a failure to [`Ec2Error`] and counts the
    /// outcome.
    ///
    /// `operation` is the EC2 action name (`RunInstances`): it selects the
    /// rate-limit bucket and labels the statistics.
    pub async fn call<T, E, Fut>(
        &self,
        operation: &'static str,
        request: Fut,
    ) -> Result<T, Ec2Error>
    where
        Fut: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        self.run(operation, self.limiter.acquire(operation), request)
            .await
    }

    /// [`call`](Self::call) when the rate limiter has the tokens right now;
    /// `None` (nothing sent) when the call would have to wait. For work
    /// that a later pass may do as well, so that it never holds up a
    /// reconcile.
    pub async fn call_if_ready<T, E, Fut>(
        &self,
        operation: &'static str,
        request: Fut,
    ) -> Option<Result<T, Ec2Error>>
    where
        Fut: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        self.limiter.try_acquire(operation).ok()?;
        Some(self.run(operation, async {}, request).await)
    }

    /// [`call`](Self::call) for a Describe request that sets a filter or
    /// pagination (`MaxResults`), which AWS charges to the larger
    /// non-mutating bucket.
    pub async fn call_filtered<T, E, Fut>(
        &self,
        operation: &'static str,
        request: Fut,
    ) -> Result<T, Ec2Error>
    where
        Fut: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        self.run(operation, self.limiter.acquire_filtered(operation), request)
            .await
    }

    /// [`call`](Self::call) for a request touching `instances` instances at
    /// once (a batched `TerminateInstances`), which draws that many tokens
    /// from the action's instance bucket.
    pub async fn call_instances<T, E, Fut>(
        &self,
        operation: &'static str,
        instances: usize,
        request: Fut,
    ) -> Result<T, Ec2Error>
    where
        Fut: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let instances = u32::try_from(instances).unwrap_or(u32::MAX);
        let acquire = self.limiter.acquire_instances(operation, instances);
        self.run(operation, acquire, request).await
    }

    /// Waits for `acquire` (the rate limiter), then runs `request` and
    /// records the outcome.
    async fn run<T, E, Fut>(
        &self,
        operation: &'static str,
        acquire: impl Future<Output = ()>,
        request: Fut,
    ) -> Result<T, Ec2Error>
    where
        Fut: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let started = Instant::now();
        acquire.await;
        self.finish(operation, started.elapsed(), request.await)
    }

    /// Who these credentials are, from STS `GetCallerIdentity`: no IAM
    /// permission is needed for it, so a failure means the credentials
    /// themselves are wrong (or STS unreachable). It does not draw from the
    /// EC2 rate limiter; the statistics count it (service `sts`).
    pub async fn caller_identity(&self) -> Result<CallerIdentity, Ec2Error> {
        let request = self.sts.get_caller_identity().send();
        let out = self.run(GET_CALLER_IDENTITY, async {}, request).await?;
        Ok(CallerIdentity {
            account: out.account().unwrap_or_default().to_owned(),
            arn: out.arn().unwrap_or_default().to_owned(),
        })
    }

    /// The credentials check of `/readyz`: who these credentials are
    /// ([`caller_identity`](Self::caller_identity)) and that EC2 takes them
    /// (one small, filtered `DescribeInstances`, the call every machine
    /// needs first).
    ///
    /// STS refusing the credentials fails the check at once. STS failing
    /// otherwise (unreachable, e.g. a private VPC with only an EC2 endpoint)
    /// does not: the identity is then unknown (`None`) and EC2's answer
    /// decides. Throttling counts as an answer: the credentials were
    /// accepted.
    pub async fn check_credentials(&self) -> Result<Option<CallerIdentity>, Ec2Error> {
        let identity = match self.caller_identity().await {
            Ok(identity) => Some(identity),
            Err(e) if e.class == ErrorClass::Unauthorized => return Err(e),
            Err(e) => {
                debug!(client = %self.key, error = %e, "GetCallerIdentity failed; asking EC2 alone");
                None
            }
        };
        let request = self
            .client
            .describe_instances()
            .filters(
                Filter::builder()
                    .name("tag-key")
                    .values(MACHINE_UID_TAG)
                    .build(),
            )
            .max_results(5)
            .send();
        match self.call_filtered("DescribeInstances", request).await {
            Ok(_) => Ok(identity),
            Err(e) if e.class == ErrorClass::Throttled => Ok(identity),
            Err(e) => Err(e),
        }
    }

    /// The statistics this handle records into (shared by all handles of
    /// one [`Ec2Clients`]).
    pub fn stats(&self) -> &Arc<Ec2CallStats> {
        &self.stats
    }

    fn finish<T, E>(
        &self,
        operation: &'static str,
        waited: Duration,
        result: Result<T, SdkError<E, HttpResponse>>,
    ) -> Result<T, Ec2Error>
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        match result {
            Ok(output) => {
                self.stats.record_ok(operation, waited);
                Ok(output)
            }
            Err(err) => {
                let err = Ec2Error::from_sdk(operation, err);
                self.stats.record_failure(operation, err.class, waited);
                debug!(client = %self.key, operation, class = err.category(), error = %err, "EC2 call failed");
                Err(err)
            }
        }
    }
}

/// An AWS identity as STS reports it: no secret, fit for logs and
/// `/readyz`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallerIdentity {
    /// The 12-digit account ID.
    pub account: String,
    /// The ARN of the user, or of the assumed role's session.
    pub arn: String,
}

/// `arn:aws:iam::123456789012:user/mcm (account 123456789012)`.
impl fmt::Display for CallerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (account {})", self.arn, self.account)
    }
}

/// The AWS service an operation name belongs to, for the `service` label
/// of the call metrics: the STS actions the operator makes itself, else EC2.
pub fn service_of(operation: &str) -> &'static str {
    match operation {
        GET_CALLER_IDENTITY => "sts",
        _ => "ec2",
    }
}

struct CacheEntry {
    handle: Ec2Handle,
    last_used: Instant,
}

/// The cache of EC2 clients: one per credentials + Region.
pub struct Ec2Clients {
    entries: Mutex<HashMap<ClientKey, CacheEntry>>,
    rate_limits: RateLimitConfig,
    stats: Arc<Ec2CallStats>,
}

impl Default for Ec2Clients {
    fn default() -> Self {
        Self::new(RateLimitConfig::default())
    }
}

impl fmt::Debug for Ec2Clients {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ec2Clients")
            .field("clients", &self.len())
            .field("rate_limits", &self.rate_limits)
            .finish_non_exhaustive()
    }
}

impl Ec2Clients {
    /// An empty cache whose limiters use `rate_limits`.
    pub fn new(rate_limits: RateLimitConfig) -> Self {
        Ec2Clients {
            entries: Mutex::new(HashMap::new()),
            rate_limits,
            stats: Arc::default(),
        }
    }

    /// The client for `source` in `region`, built on first use.
    ///
    /// Building reads the environment and configuration files but makes no
    /// network call: credentials are resolved (and STS called) lazily, on
    /// the first request, and cached and refreshed by the SDK.
    pub async fn get(&self, source: &CredentialSource, region: &str) -> Ec2Handle {
        let key = ClientKey::new(source, region);
        if let Some(handle) = self.lookup(&key) {
            return handle;
        }
        // Built outside the lock (it awaits). Two reconciles racing here
        // build twice and the first insert wins; the loser is dropped.
        let config = sdk_config(source, region).await;
        debug!(client = %key, credentials = source.kind(), "built EC2 client");
        let now = Instant::now();
        let mut entries = self.lock();
        entries.retain(|_, entry| now.duration_since(entry.last_used) < IDLE_EVICTION);
        let entry = entries.entry(key.clone()).or_insert_with(|| CacheEntry {
            handle: Ec2Handle {
                client: aws_sdk_ec2::Client::new(&config),
                sts: aws_sdk_sts::Client::new(&config),
                limiter: Arc::new(Ec2RateLimiter::new(self.rate_limits)),
                key,
                stats: Arc::clone(&self.stats),
            },
            last_used: now,
        });
        entry.last_used = now;
        entry.handle.clone()
    }

    /// Call statistics of all clients.
    pub fn stats(&self) -> Arc<Ec2CallStats> {
        Arc::clone(&self.stats)
    }

    /// Number of cached clients.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no client is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lookup(&self, key: &ClientKey) -> Option<Ec2Handle> {
        let mut entries = self.lock();
        let entry = entries.get_mut(key)?;
        entry.last_used = Instant::now();
        Some(entry.handle.clone())
    }

    /// The map stays consistent under panics (single inserts/removals), so
    /// poisoning is ignored.
    fn lock(&self) -> MutexGuard<'_, HashMap<ClientKey, CacheEntry>> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The SDK configuration for `source` in `region`: the standard
/// environment (endpoint URLs, proxies, profile), our retry and timeout
/// settings, and the credentials the Secret asks for.
async fn sdk_config(source: &CredentialSource, region: &str) -> aws_config::SdkConfig {
    let region = Region::new(region.to_owned());
    let loader = base_loader(region.clone());
    let loader = match source {
        CredentialSource::Static {
            access_key_id,
            secret_access_key,
        } => loader.credentials_provider(Credentials::new(
            access_key_id,
            secret_access_key.expose(),
            None,
            None,
            STATIC_PROVIDER_NAME,
        )),
        CredentialSource::WebIdentity {
            token_file,
            role_arn,
        } => {
            // STS in the same Region as the instances: regional endpoint,
            // and no dependency on us-east-1.
            let provider_config = ProviderConfig::default().with_region(Some(region.clone()));
            loader.credentials_provider(
                WebIdentityTokenCredentialsProvider::builder()
                    .configure(&provider_config)
                    .static_configuration(StaticConfiguration {
                        web_identity_token_file: token_file.clone(),
                        role_arn: role_arn.clone(),
                        session_name: SESSION_NAME.to_owned(),
                    })
                    .build(),
            )
        }
        CredentialSource::AssumeRole { role_arn } => {
            // The operator's own identity (default chain) assumes the role.
            let base = base_loader(region.clone()).load().await;
            let provider = AssumeRoleProvider::builder(role_arn.clone())
                .session_name(SESSION_NAME)
                .configure(&base)
                .build()
                .await;
            loader.credentials_provider(provider)
        }
        CredentialSource::DefaultChain => loader,
    };
    loader.load().await
}

/// `aws_config::defaults` with the Region pinned and our retry, timeout and
/// user-agent settings.
fn base_loader(region: Region) -> aws_config::ConfigLoader {
    let loader = aws_config::defaults(BehaviorVersion::latest())
        .region(region)
        .retry_config(RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                .operation_timeout(OPERATION_TIMEOUT)
                .build(),
        );
    match AppName::new(SESSION_NAME) {
        Ok(name) => loader.app_name(name),
        Err(_) => loader,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::credentials::SecretString;
    use aws_sdk_ec2::error::ErrorMetadata;
    use aws_sdk_ec2::operation::describe_instances::DescribeInstancesError;

    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

    fn static_keys(secret: &str) -> CredentialSource {
        CredentialSource::Static {
            access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_access_key: SecretString::new(secret),
        }
    }

    #[tokio::test]
    async fn same_credentials_and_region_share_one_client_and_limiter() {
        let clients = Ec2Clients::default();
        let a = clients.get(&static_keys(SECRET), "eu-west-1").await;
        let b = clients.get(&static_keys(SECRET), "eu-west-1").await;
        assert_eq!(a.key, b.key);
        assert!(Arc::ptr_eq(&a.limiter, &b.limiter));
        assert_eq!(clients.len(), 1);
        assert_eq!(
            a.client.config().region().map(|r| r.as_ref()),
            Some("eu-west-1")
        );
    }

    #[tokio::test]
    async fn a_rotated_secret_or_another_region_gets_its_own_client() {
        let clients = Ec2Clients::default();
        let old = clients.get(&static_keys(SECRET), "eu-west-1").await;
        let rotated = clients.get(&static_keys("rotated"), "eu-west-1").await;
        let elsewhere = clients.get(&static_keys(SECRET), "us-east-1").await;
        let ambient = clients
            .get(&CredentialSource::DefaultChain, "eu-west-1")
            .await;
        assert_ne!(old.key, rotated.key);
        assert_ne!(old.key, elsewhere.key);
        assert_ne!(old.key, ambient.key);
        assert!(!Arc::ptr_eq(&old.limiter, &rotated.limiter));
        assert_eq!(clients.len(), 4);
    }

    #[tokio::test]
    async fn assume_role_and_web_identity_build_without_network() {
        let clients = Ec2Clients::default();
        let arn = "arn:aws:iam::123456789012:role/machines";
        let assume = clients
            .get(
                &CredentialSource::AssumeRole {
                    role_arn: arn.into(),
                },
                "eu-central-1",
            )
            .await;
        let web = clients
            .get(
                &CredentialSource::WebIdentity {
                    token_file: "/nonexistent/token".into(),
                    role_arn: arn.into(),
                },
                "eu-central-1",
            )
            .await;
        assert_ne!(assume.key, web.key);
    }

    #[tokio::test]
    async fn sts_shares_the_credentials_and_region_of_the_handle() {
        let clients = Ec2Clients::default();
        let handle = clients.get(&static_keys(SECRET), "eu-west-1").await;
        assert_eq!(
            handle.sts.config().region().map(|r| r.as_ref()),
            Some("eu-west-1")
        );
        assert_eq!(service_of(GET_CALLER_IDENTITY), "sts");
        assert_eq!(service_of("RunInstances"), "ec2");
        let who = CallerIdentity {
            account: "123456789012".into(),
            arn: "arn:aws:iam::123456789012:user/mcm".into(),
        };
        assert_eq!(
            who.to_string(),
            "arn:aws:iam::123456789012:user/mcm (account 123456789012)"
        );
    }

    #[tokio::test]
    async fn keys_and_handles_do_not_leak_secrets() {
        let clients = Ec2Clients::default();
        let handle = clients.get(&static_keys(SECRET), "eu-west-1").await;
        let shown = format!(
            "{} {:?} {:?} {:?} {}",
            handle.key, handle.key, handle, clients, handle.key.fingerprint
        );
        assert!(!shown.contains(SECRET), "{shown}");
        assert!(!shown.contains("wJalr"), "{shown}");
        assert!(!shown.contains("AKIAIOSFODNN7EXAMPLE"), "{shown}");
        assert!(handle.key.to_string().starts_with("eu-west-1/"));
    }

    #[tokio::test]
    async fn call_counts_outcomes_by_operation_and_class() {
        let clients = Ec2Clients::default();
        let handle = clients
            .get(&CredentialSource::DefaultChain, "eu-west-1")
            .await;

        let ok: Result<u32, SdkError<DescribeInstancesError>> = Ok(7);
        assert_eq!(
            handle
                .call_filtered("DescribeInstances", async { ok })
                .await
                .ok(),
            Some(7)
        );

        let meta = ErrorMetadata::builder()
            .code("RequestLimitExceeded")
            .message("Request limit exceeded.")
            .build();
        let status = 503.try_into().expect("valid status");
        let throttled = SdkError::service_error(
            DescribeInstancesError::generic(meta),
            HttpResponse::new(status, "".into()),
        );
        let err = match handle
            .call("DescribeInstances", async { Err::<u32, _>(throttled) })
            .await
        {
            Err(err) => err,
            Ok(_) => panic!("a service error must fail the call"),
        };
        assert_eq!(err.class, ErrorClass::Throttled);
        assert_eq!(
            err.to_string(),
            "DescribeInstances failed (RequestLimitExceeded): Request limit exceeded."
        );

        let snapshot = clients.stats().snapshot();
        let describe = &snapshot["DescribeInstances"];
        assert_eq!(describe.ok, 1);
        assert_eq!(describe.failed.get(&ErrorClass::Throttled), Some(&1));
        assert_eq!(snapshot.len(), 1);
    }
}
