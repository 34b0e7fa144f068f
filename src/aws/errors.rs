//! One classification of EC2 failures, used everywhere an EC2 call can fail
//! (STS calls, the operator's own GetCallerIdentity and those the SDK's
//! credential providers make, are classified the same way).
//!
//! Every failed call becomes an [`Ec2Error`] carrying an [`ErrorClass`]. The
//! class decides three things, so they can never disagree with each other:
//!
//! - the label used for metrics and Event reasons ([`ErrorClass::category`]);
//! - the MCM/gRPC-style code written to `status.lastOperation.errorCode`
//!   ([`ErrorClass::mcm_code`], refined per error by [`Ec2Error::mcm_code`]);
//! - how long the controller waits before trying again
//!   ([`ErrorClass::retry_after`], numbers in [`retry_policy`]).
//!
//! The rules follow DESIGN.md §2 ("Error classes") and MCM's AWS provider
//! (`pkg/aws/errors`), which maps capacity and limit errors to
//! `ResourceExhausted` and everything else to `Internal`. We go further and
//! separate throttling, invalid input, missing instances and credential
//! problems, because each needs a different reaction.

use std::fmt;
use std::time::Duration;

use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sts::operation::assume_role::AssumeRoleError;
use aws_sdk_sts::operation::assume_role_with_web_identity::AssumeRoleWithWebIdentityError;

/// What kind of failure an EC2 call hit, and therefore how to react to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorClass {
    /// EC2 has no capacity or the account hit a quota (instances, vCPUs,
    /// volumes, addresses in the subnet, ...). Retrying soon will not help;
    /// retry slowly and tell the user. The cluster-autoscaler's MCM provider
    /// reads the `ResourceExhausted` code to give up on a node group, so only
    /// these errors may carry it.
    ResourceExhausted,
    /// EC2 (or STS) asked us to slow down. The SDK already retried with
    /// jittered backoff; the controller backs off further.
    Throttled,
    /// The request is wrong (bad AMI, subnet, security group, parameter
    /// combination, ...). It fails again until the spec or the account
    /// changes; the AWS message goes to the status.
    InvalidInput,
    /// The instance does not exist (`InvalidInstanceID.NotFound`). On
    /// deletion that means "done"; right after creation it can also be
    /// EC2's eventual consistency.
    NotFound,
    /// The credentials are wrong, expired, or lack a permission.
    Unauthorized,
    /// Anything else: 5xx, timeouts, connection errors, unknown codes. Retry
    /// soon.
    Transient,
}

impl ErrorClass {
    /// Every class, for metric initialisation and exhaustive tests.
    pub const ALL: [ErrorClass; 6] = [
        ErrorClass::ResourceExhausted,
        ErrorClass::Throttled,
        ErrorClass::InvalidInput,
        ErrorClass::NotFound,
        ErrorClass::Unauthorized,
        ErrorClass::Transient,
    ];

    /// A short, stable, low-cardinality name: a metric label value and an
    /// Event reason suffix. Never derived from `Debug` output.
    pub fn category(&self) -> &'static str {
        match self {
            ErrorClass::ResourceExhausted => "ResourceExhausted",
            ErrorClass::Throttled => "Throttled",
            ErrorClass::InvalidInput => "InvalidInput",
            ErrorClass::NotFound => "NotFound",
            ErrorClass::Unauthorized => "Unauthorized",
            ErrorClass::Transient => "Transient",
        }
    }

    /// The MCM machine code (gRPC-style, from MCM's
    /// `pkg/util/provider/machinecodes/codes`) that MCM would write to
    /// `status.lastOperation.errorCode` for this class.
    ///
    /// - `ResourceExhausted` keeps MCM's meaning (capacity/quota), which the
    ///   cluster-autoscaler relies on; throttling must therefore not use it.
    /// - Throttling is `Unavailable`: "retry with a backoff".
    /// - Credential problems are `Unauthenticated`; [`Ec2Error::mcm_code`]
    ///   refines permission errors (`UnauthorizedOperation`, ...) to
    ///   `PermissionDenied`.
    /// - Unclassified failures are `Internal`, as in MCM's AWS provider.
    pub fn mcm_code(&self) -> &'static str {
        match self {
            ErrorClass::ResourceExhausted => "ResourceExhausted",
            ErrorClass::Throttled => "Unavailable",
            ErrorClass::InvalidInput => "InvalidArgument",
            ErrorClass::NotFound => "NotFound",
            ErrorClass::Unauthorized => "Unauthenticated",
            ErrorClass::Transient => "Internal",
        }
    }

    /// How long to wait before the object is reconciled again after this
    /// failure. See [`retry_policy`] for the numbers and their reasons.
    pub fn retry_after(&self) -> Duration {
        match self {
            ErrorClass::ResourceExhausted => retry_policy::RESOURCE_EXHAUSTED,
            ErrorClass::Throttled => retry_policy::THROTTLED,
            ErrorClass::InvalidInput => retry_policy::INVALID_INPUT,
            ErrorClass::NotFound => retry_policy::NOT_FOUND,
            ErrorClass::Unauthorized => retry_policy::UNAUTHORIZED,
            ErrorClass::Transient => retry_policy::TRANSIENT,
        }
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.category())
    }
}

/// The controller-level requeue delays per [`ErrorClass`], in one place.
///
/// These are base delays; per-object exponential backoff with jitter (kept
/// in the controller's Context) is layered on top. Retries *within* one call
/// (throttling, 5xx, connection resets) are done by the AWS SDK's standard
/// retry mode before an error ever reaches this module.
pub mod retry_policy {
    use std::time::Duration;

    /// Capacity and quotas free up on the scale of minutes; hammering
    /// RunInstances meanwhile only burns the account's request budget.
    pub const RESOURCE_EXHAUSTED: Duration = Duration::from_secs(5 * 60);
    /// The SDK has already retried with jittered exponential backoff, so the
    /// account is genuinely over its budget: give it tens of seconds.
    pub const THROTTLED: Duration = Duration::from_secs(30);
    /// A change to the spec or Secret triggers a reconcile through the watch
    /// right away. This long safety net catches fixes made outside the
    /// cluster (an AMI shared later, a subnet created, IAM eventual
    /// consistency for a fresh instance profile).
    pub const INVALID_INPUT: Duration = Duration::from_secs(10 * 60);
    /// A fresh instance can be invisible to Describe* for a few seconds
    /// (eventual consistency); look again soon.
    pub const NOT_FOUND: Duration = Duration::from_secs(15);
    /// Fixing credentials or IAM policies takes a human; don't spin, but
    /// notice the fix within a couple of minutes.
    pub const UNAUTHORIZED: Duration = Duration::from_secs(2 * 60);
    /// Network blips and 5xx usually clear within seconds.
    pub const TRANSIENT: Duration = Duration::from_secs(15);
}

/// Codes that mean "slow down". RequestLimitExceeded is EC2's; the others
/// are the SDK's own throttling list (STS and other services use them).
/// Checked before the `*LimitExceeded` capacity rule.
const THROTTLING_CODES: &[&str] = &[
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "EC2ThrottledException",
    "SlowDown",
    "PriorRequestNotComplete",
    "BandwidthLimitExceeded",
    "LimitExceededException",
];

/// Credential and authorization failures (EC2, STS and generic AWS codes).
/// Checked before the `Invalid*` rule because `InvalidClientTokenId` and
/// `InvalidAccessKeyId` are credential problems, not request problems.
const UNAUTHORIZED_CODES: &[&str] = &[
    "AuthFailure",
    "UnauthorizedOperation",
    "InvalidClientTokenId",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "IncompleteSignature",
    "ExpiredToken",
    "ExpiredTokenException",
    // STS web identity: the token is malformed, expired or not trusted by
    // the role's identity provider.
    "InvalidIdentityToken",
    "IDPRejectedClaim",
    // STS is switched off for the account in this Region.
    "RegionDisabledException",
    "MissingAuthenticationToken",
    "UnrecognizedClientException",
    "AccessDenied",
    "AccessDeniedException",
    "OptInRequired",
    "Blocked",
];

/// The subset of [`UNAUTHORIZED_CODES`] where the caller is known but not
/// allowed: MCM code `PermissionDenied` rather than `Unauthenticated`.
const PERMISSION_CODES: &[&str] = &[
    "UnauthorizedOperation",
    "AccessDenied",
    "AccessDeniedException",
    "OptInRequired",
    "Blocked",
];

/// Capacity and quota codes that the suffix/prefix rules below don't catch.
const EXHAUSTED_CODES: &[&str] = &[
    // "The requested configuration is currently not supported" — in practice
    // an instance type not offered in the zone; MCM and DESIGN.md §2 treat it
    // as resource exhaustion (long retry, surfaced).
    "Unsupported",
    "VolumeIOPSLimit",
    "ReservationCapacityExceeded",
    "SpotMaxPriceTooLow",
    // New accounts/regions being validated by AWS: nothing to do but wait.
    "PendingVerification",
];

/// Request errors that don't start with `Invalid`/`Missing`/`Unsupported`.
const INVALID_INPUT_CODES: &[&str] = &[
    "IdempotentParameterMismatch",
    // The ClientToken belongs to an instance that has since terminated; the
    // launcher must react (new token) — it is never fixed by waiting.
    "IdempotentInstanceTerminated",
    "UnknownParameter",
    "ValidationError",
    "MalformedQueryString",
    // e.g. termination protection (`disableApiTermination`) is on.
    "OperationNotPermitted",
    // Too many tags on a resource: the class asks for it, no capacity waits.
    "TagLimitExceeded",
];

/// Classifies an AWS error from its error code and HTTP status.
///
/// The code wins when it is known (EC2 returns `InsufficientInstanceCapacity`
/// with HTTP 500, for example). An unknown or missing code falls back to the
/// status: 429/503 are throttling, 401/403 are credential problems, the rest
/// is transient.
pub fn classify(code: Option<&str>, http_status: Option<u16>) -> ErrorClass {
    if let Some(class) = code.and_then(classify_code) {
        return class;
    }
    match http_status {
        Some(429 | 503) => ErrorClass::Throttled,
        Some(401 | 403) => ErrorClass::Unauthorized,
        _ => ErrorClass::Transient,
    }
}

/// The code-only part of [`classify`]; `None` when the code says nothing
/// specific (e.g. `InternalError`, `Unavailable`, or a code we don't know).
fn classify_code(code: &str) -> Option<ErrorClass> {
    // Order matters: RequestLimitExceeded must not reach the *LimitExceeded
    // rule, InvalidClientTokenId must not reach the Invalid* rule, and
    // InvalidInstanceID.NotFound must not reach it either.
    if THROTTLING_CODES.contains(&code) {
        return Some(ErrorClass::Throttled);
    }
    if UNAUTHORIZED_CODES.contains(&code) || code.starts_with("AuthFailure.") {
        return Some(ErrorClass::Unauthorized);
    }
    if code == "InvalidInstanceID.NotFound" {
        return Some(ErrorClass::NotFound);
    }
    // Before the `*LimitExceeded` rule: TagLimitExceeded is the class's doing.
    if INVALID_INPUT_CODES.contains(&code) {
        return Some(ErrorClass::InvalidInput);
    }
    if EXHAUSTED_CODES.contains(&code)
        || code.starts_with("Insufficient")
        || code.ends_with("LimitExceeded")
        || code.ends_with("CountExceeded")
        || code.ends_with("QuotaExceeded")
    {
        return Some(ErrorClass::ResourceExhausted);
    }
    // `InvalidInstanceID.Malformed` lands here: a providerID we cannot parse
    // into a real ID is bad input. The delete path may decide that such an
    // instance cannot exist and treat it as gone.
    if code.starts_with("Invalid") || code.starts_with("Missing") || code.starts_with("Unsupported")
    {
        return Some(ErrorClass::InvalidInput);
    }
    None
}

/// Longest AWS message kept in an [`Ec2Error`]. `UnauthorizedOperation`
/// carries an "encoded authorization failure message" of a few KiB that is
/// useful (decode it with `aws sts decode-authorization-message`), but
/// unbounded text does not belong in an object's status.
const MAX_MESSAGE_LEN: usize = 4096;

/// A failed EC2 call: which operation, what class of failure, and AWS's own
/// code and message.
///
/// Display reads `RunInstances failed (InsufficientInstanceCapacity): <AWS
/// message>`. Neither Display nor Debug ever contains credentials: AWS error
/// messages don't echo them, and the request (the only place they live) is
/// not part of the error.
#[derive(Debug, thiserror::Error)]
#[error("{operation} failed{}: {message}", code_suffix(.code))]
pub struct Ec2Error {
    /// The EC2 API action, e.g. `RunInstances`.
    pub operation: &'static str,
    /// How to react to this failure.
    pub class: ErrorClass,
    /// AWS's error code, when the service answered with one.
    pub code: Option<String>,
    /// AWS's message, or a description of the transport failure.
    pub message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

fn code_suffix(code: &Option<String>) -> String {
    match code {
        Some(code) => format!(" ({code})"),
        None => String::new(),
    }
}

impl Ec2Error {
    /// An error not produced by the SDK, e.g. "the instance is not in the
    /// DescribeInstances answer" synthesised by the batching layer.
    pub fn new(
        operation: &'static str,
        class: ErrorClass,
        code: Option<String>,
        message: impl Into<String>,
    ) -> Self {
        Ec2Error {
            operation,
            class,
            code,
            message: truncate(message.into()),
            source: None,
        }
    }

    /// Converts an SDK error. Service errors are classified by their AWS
    /// code and HTTP status; failures before or around the exchange
    /// (construction, dispatch/connection, timeouts, unparseable responses)
    /// are [`ErrorClass::Transient`] — the SDK has already retried those.
    ///
    /// Credential-provider failures surface from the SDK as dispatch
    /// failures too, but no retry fixes them: see [`credentials_failure`]
    /// (no credentials in the chain, an unreadable token file, STS refusing
    /// AssumeRole are [`ErrorClass::Unauthorized`]).
    pub fn from_sdk<E>(operation: &'static str, err: SdkError<E, HttpResponse>) -> Ec2Error
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let (class, code, message) = match service_failure(&err) {
            Some(answer) => answer,
            // The request never got an answer we could read: these are the
            // "5xx, timeouts, connection errors" of the Transient class —
            // unless its credentials could not be had. The useful part (e.g.
            // "Connection refused") is deep in the source chain.
            None => {
                let (class, code) =
                    credentials_failure(&err).unwrap_or((ErrorClass::Transient, None));
                (class, code, display_chain(&err))
            }
        };
        Ec2Error {
            operation,
            class,
            code,
            message: truncate(message),
            source: Some(Box::new(err)),
        }
    }

    /// Label for metrics and Event reasons.
    pub fn category(&self) -> &'static str {
        self.class.category()
    }

    /// The code for `status.lastOperation.errorCode`: the class's code, with
    /// permission errors (known caller, missing right) refined from
    /// `Unauthenticated` to `PermissionDenied`.
    pub fn mcm_code(&self) -> &'static str {
        match (&self.class, self.code.as_deref()) {
            (ErrorClass::Unauthorized, Some(code))
                if PERMISSION_CODES.contains(&code)
                    || code.starts_with("AuthFailure.ServiceLinkedRole") =>
            {
                "PermissionDenied"
            }
            (class, _) => class.mcm_code(),
        }
    }

    /// The requeue delay for this failure; see [`retry_policy`].
    pub fn retry_after(&self) -> Duration {
        self.class.retry_after()
    }
}

/// Class, code and message of a service error (an answer with an AWS error
/// code); `None` for any other kind of SDK error.
fn service_failure<E>(
    err: &SdkError<E, HttpResponse>,
) -> Option<(ErrorClass, Option<String>, String)>
where
    E: ProvideErrorMetadata,
{
    let SdkError::ServiceError(service) = err else {
        return None;
    };
    let code = service.err().code().map(str::to_owned);
    let status = service.raw().status().as_u16();
    let message = service
        .err()
        .message()
        .map(str::to_owned)
        .unwrap_or_else(|| format!("HTTP {status} without an error message"));
    Some((classify(code.as_deref(), Some(status)), code, message))
}

/// When `err` failed because the SDK could not obtain credentials for it:
/// its class, with STS's error code when STS refused them.
///
/// The SDK's credential providers report a [`CredentialsError`] somewhere
/// in the source chain. No retry fixes a chain without credentials, an
/// unreadable token file or a role STS will not hand out, so those are
/// [`ErrorClass::Unauthorized`]; what STS itself answered is classified
/// like any service error (`AccessDenied`, `ExpiredTokenException`,
/// `InvalidIdentityToken` are Unauthorized, throttling is Throttled, a 5xx
/// is Transient), and a provider that timed out, or an STS call that never
/// got an answer, is Transient.
fn credentials_failure(
    err: &(dyn std::error::Error + 'static),
) -> Option<(ErrorClass, Option<String>)> {
    let mut credentials_error = false;
    let mut link = Some(err);
    while let Some(cause) = link {
        if let Some(e) = cause.downcast_ref::<CredentialsError>() {
            if matches!(e, CredentialsError::ProviderTimedOut(_)) {
                return Some((ErrorClass::Transient, None));
            }
            credentials_error = true;
        }
        if let Some(sts) = sts_answer(cause) {
            return Some(sts);
        }
        link = cause.source();
    }
    credentials_error.then_some((ErrorClass::Unauthorized, None))
}

/// The class (and code) of an STS call made by a credential provider,
/// when `cause` is one.
fn sts_answer(cause: &(dyn std::error::Error + 'static)) -> Option<(ErrorClass, Option<String>)> {
    fn of<E: ProvideErrorMetadata>(e: &SdkError<E, HttpResponse>) -> (ErrorClass, Option<String>) {
        match service_failure(e) {
            Some((class, code, _)) => (class, code),
            None => (ErrorClass::Transient, None),
        }
    }
    if let Some(e) = cause.downcast_ref::<SdkError<AssumeRoleError, HttpResponse>>() {
        return Some(of(e));
    }
    cause
        .downcast_ref::<SdkError<AssumeRoleWithWebIdentityError, HttpResponse>>()
        .map(of)
}

/// `outer: inner: innermost`, from the `Display` of each error in the
/// source chain (skipping links that only repeat what is already said).
/// Unlike `DisplayErrorContext`, no `Debug` output: this text goes into
/// Events and the Machine status.
fn display_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !text.is_empty() && !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

/// Cuts `message` to at most [`MAX_MESSAGE_LEN`] bytes on a char boundary.
fn truncate(mut message: String) -> String {
    if message.len() > MAX_MESSAGE_LEN {
        let mut end = MAX_MESSAGE_LEN;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str(" …");
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ec2::error::{ConnectorError, ErrorMetadata};
    use aws_sdk_ec2::operation::run_instances::RunInstancesError;

    fn class(code: &str) -> ErrorClass {
        classify(Some(code), Some(400))
    }

    #[test]
    fn capacity_and_quota_codes_are_resource_exhausted() {
        for code in [
            "InsufficientInstanceCapacity",
            "InsufficientHostCapacity",
            "InsufficientReservedInstanceCapacity",
            "InsufficientCapacity",
            "InsufficientAddressCapacity",
            "InsufficientVolumeCapacity",
            "InsufficientFreeAddressesInSubnet",
            "InstanceLimitExceeded",
            "VcpuLimitExceeded",
            "VolumeLimitExceeded",
            "MaxIOPSLimitExceeded",
            "RouteLimitExceeded",
            "NetworkInterfaceLimitExceeded",
            "AttachmentLimitExceeded",
            "PrivateIpAddressLimitExceeded",
            "MaxSpotInstanceCountExceeded",
            "MaxSpotFleetRequestCountExceeded",
            "VolumeIOPSLimit",
            "Unsupported",
            "SpotMaxPriceTooLow",
            "ReservationCapacityExceeded",
            "PendingVerification",
        ] {
            assert_eq!(class(code), ErrorClass::ResourceExhausted, "{code}");
        }
    }

    #[test]
    fn throttling_codes_and_statuses_are_throttled() {
        for code in [
            "RequestLimitExceeded",
            "Throttling",
            "ThrottlingException",
            "RequestThrottled",
            "TooManyRequestsException",
            "EC2ThrottledException",
            "SlowDown",
            "LimitExceededException",
        ] {
            assert_eq!(class(code), ErrorClass::Throttled, "{code}");
        }
        // RequestLimitExceeded ends in "LimitExceeded" but is throttling,
        // whatever status EC2 sends it with.
        assert_eq!(
            classify(Some("RequestLimitExceeded"), Some(503)),
            ErrorClass::Throttled
        );
        assert_eq!(classify(None, Some(429)), ErrorClass::Throttled);
        assert_eq!(classify(None, Some(503)), ErrorClass::Throttled);
        assert_eq!(
            classify(Some("Unavailable"), Some(503)),
            ErrorClass::Throttled
        );
    }

    #[test]
    fn request_errors_are_invalid_input() {
        for code in [
            "InvalidParameter",
            "InvalidParameterValue",
            "InvalidParameterCombination",
            "InvalidAMIID.NotFound",
            "InvalidAMIID.Malformed",
            "InvalidAMIID.Unavailable",
            "InvalidSubnetID.NotFound",
            "InvalidSubnetID.Malformed",
            "InvalidGroup.NotFound",
            "InvalidGroupId.Malformed",
            "InvalidKeyPair.NotFound",
            "InvalidBlockDeviceMapping",
            "InvalidIamInstanceProfile.NotFound",
            "InvalidInstanceID.Malformed",
            "InvalidInstanceType",
            "InvalidCapacityReservationId.NotFound",
            "InvalidPlacementGroup.Unknown",
            "MissingParameter",
            "UnknownParameter",
            "ValidationError",
            "IdempotentParameterMismatch",
            "IdempotentInstanceTerminated",
            "OperationNotPermitted",
            "TagLimitExceeded",
            "InvalidParameterValue",
            "UnsupportedOperation",
            "UnsupportedHibernationConfiguration",
        ] {
            assert_eq!(class(code), ErrorClass::InvalidInput, "{code}");
        }
    }

    #[test]
    fn missing_instance_is_not_found() {
        assert_eq!(class("InvalidInstanceID.NotFound"), ErrorClass::NotFound);
        // Only the instance itself: a missing AMI is the spec's problem.
        assert_eq!(class("InvalidAMIID.NotFound"), ErrorClass::InvalidInput);
    }

    #[test]
    fn credential_codes_are_unauthorized() {
        for code in [
            "AuthFailure",
            "AuthFailure.ServiceLinkedRoleCreationNotPermitted",
            "UnauthorizedOperation",
            "InvalidClientTokenId",
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
            "ExpiredToken",
            "ExpiredTokenException",
            "InvalidIdentityToken",
            "IDPRejectedClaim",
            "RegionDisabledException",
            "MissingAuthenticationToken",
            "AccessDenied",
            "OptInRequired",
            "Blocked",
        ] {
            assert_eq!(class(code), ErrorClass::Unauthorized, "{code}");
        }
        assert_eq!(classify(None, Some(403)), ErrorClass::Unauthorized);
    }

    #[test]
    fn everything_else_is_transient() {
        for (code, status) in [
            (Some("InternalError"), Some(500)),
            (Some("InternalFailure"), Some(500)),
            (Some("IncorrectInstanceState"), Some(400)),
            (Some("RequestExpired"), Some(400)),
            (Some("SomethingNobodyHasSeen"), Some(400)),
            (None, Some(500)),
            (None, Some(502)),
            (None, Some(404)),
            (None, None),
        ] {
            assert_eq!(
                classify(code, status),
                ErrorClass::Transient,
                "{code:?} {status:?}"
            );
        }
    }

    #[test]
    fn every_class_has_distinct_labels_and_a_known_mcm_code() {
        let mcm_codes = [
            "ResourceExhausted",
            "Unavailable",
            "InvalidArgument",
            "NotFound",
            "Unauthenticated",
            "Internal",
            "PermissionDenied",
        ];
        let mut categories: Vec<_> = ErrorClass::ALL.iter().map(|c| c.category()).collect();
        categories.sort_unstable();
        categories.dedup();
        assert_eq!(categories.len(), ErrorClass::ALL.len());
        for class in ErrorClass::ALL {
            assert!(mcm_codes.contains(&class.mcm_code()), "{class}");
            assert!(
                !class.retry_after().is_zero(),
                "{class} must never hot-loop"
            );
        }
        // Only capacity/quota may claim ResourceExhausted (the autoscaler
        // reads it).
        for class in ErrorClass::ALL {
            assert_eq!(
                class.mcm_code() == "ResourceExhausted",
                class == ErrorClass::ResourceExhausted
            );
        }
    }

    #[test]
    fn retry_policy_orders_sensibly() {
        assert!(ErrorClass::ResourceExhausted.retry_after() > ErrorClass::Throttled.retry_after());
        assert!(ErrorClass::Throttled.retry_after() > ErrorClass::Transient.retry_after());
        assert_eq!(
            ErrorClass::ResourceExhausted.retry_after(),
            Duration::from_secs(300)
        );
    }

    fn service_error(code: &str, message: &str, status: u16) -> SdkError<RunInstancesError> {
        let meta = ErrorMetadata::builder().code(code).message(message).build();
        let status = status.try_into().expect("test uses a valid HTTP status");
        SdkError::service_error(
            RunInstancesError::generic(meta),
            HttpResponse::new(status, "".into()),
        )
    }

    #[test]
    fn service_errors_keep_code_and_message_in_display() {
        let err = Ec2Error::from_sdk(
            "RunInstances",
            service_error(
                "InsufficientInstanceCapacity",
                "We currently do not have sufficient m5.large capacity.",
                500,
            ),
        );
        assert_eq!(err.class, ErrorClass::ResourceExhausted);
        assert_eq!(err.code.as_deref(), Some("InsufficientInstanceCapacity"));
        assert_eq!(
            err.to_string(),
            "RunInstances failed (InsufficientInstanceCapacity): We currently do not have \
             sufficient m5.large capacity."
        );
        assert_eq!(err.mcm_code(), "ResourceExhausted");
        assert!(std::error::Error::source(&err).is_some());
    }

    #[test]
    fn permission_errors_refine_the_mcm_code() {
        let denied = Ec2Error::from_sdk(
            "TerminateInstances",
            service_error("UnauthorizedOperation", "You are not authorized.", 403),
        );
        assert_eq!(denied.class, ErrorClass::Unauthorized);
        assert_eq!(denied.mcm_code(), "PermissionDenied");
        let bad_keys = Ec2Error::from_sdk(
            "DescribeInstances",
            service_error(
                "AuthFailure",
                "AWS was not able to validate the credentials.",
                401,
            ),
        );
        assert_eq!(bad_keys.mcm_code(), "Unauthenticated");
    }

    #[test]
    fn transport_failures_are_transient() {
        let timeout: SdkError<RunInstancesError> =
            SdkError::timeout_error("operation attempt timeout after 30s");
        let err = Ec2Error::from_sdk("RunInstances", timeout);
        assert_eq!(err.class, ErrorClass::Transient);
        assert_eq!(err.code, None);
        assert!(
            err.to_string().starts_with("RunInstances failed: "),
            "{err}"
        );
        assert!(err.to_string().contains("timed out"), "{err}");
    }

    #[test]
    fn connection_errors_read_as_a_sentence_without_debug_noise() {
        let refused =
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        let err: SdkError<RunInstancesError> =
            SdkError::dispatch_failure(ConnectorError::io(refused.into()));
        let err = Ec2Error::from_sdk("RunInstances", err);
        assert_eq!(err.class, ErrorClass::Transient);
        assert_eq!(err.mcm_code(), "Internal");
        assert!(err.message.contains("Connection refused"), "{err}");
        assert!(!err.message.contains('{'), "{err}");
    }

    #[test]
    fn long_messages_are_cut_on_a_char_boundary() {
        let long = "ä".repeat(MAX_MESSAGE_LEN);
        let err = Ec2Error::new("RunInstances", ErrorClass::Unauthorized, None, long);
        assert!(err.message.len() <= MAX_MESSAGE_LEN + " …".len());
        assert!(err.message.ends_with(" …"));
    }

    /// Credentials that fail with the error the closure makes, for a real
    /// SDK call.
    struct FailingCredentials(Box<dyn Fn() -> CredentialsError + Send + Sync>);

    impl std::fmt::Debug for FailingCredentials {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("FailingCredentials")
        }
    }

    impl aws_credential_types::provider::ProvideCredentials for FailingCredentials {
        fn provide_credentials<'a>(
            &'a self,
        ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            aws_credential_types::provider::future::ProvideCredentials::ready(Err((self.0)()))
        }
    }

    /// A DescribeInstances whose credentials fail with `make()`, through the
    /// SDK's own orchestrator (nothing listens at the endpoint; the call
    /// never gets that far).
    async fn call_without_credentials(
        make: impl Fn() -> CredentialsError + Send + Sync + 'static,
    ) -> Ec2Error {
        use aws_sdk_ec2::config::{BehaviorVersion, Region, retry::RetryConfig};
        let config = aws_sdk_ec2::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("eu-west-1"))
            .endpoint_url("http://127.0.0.1:1")
            .retry_config(RetryConfig::disabled())
            .credentials_provider(FailingCredentials(Box::new(make)))
            .build();
        let err = aws_sdk_ec2::Client::from_conf(config)
            .describe_instances()
            .send()
            .await
            .expect_err("the credentials fail");
        Ec2Error::from_sdk("DescribeInstances", err)
    }

    fn sts_refusal<E>(error: fn(ErrorMetadata) -> E, code: &str, status: u16) -> SdkError<E> {
        let meta = ErrorMetadata::builder()
            .code(code)
            .message("refused by STS")
            .build();
        let status = status.try_into().expect("test uses a valid HTTP status");
        SdkError::service_error(error(meta), HttpResponse::new(status, "".into()))
    }

    #[tokio::test]
    async fn a_chain_without_credentials_is_unauthorized_not_transient() {
        let err = call_without_credentials(|| {
            CredentialsError::not_loaded("no providers in chain provided credentials")
        })
        .await;
        assert_eq!(err.class, ErrorClass::Unauthorized, "{err}");
        assert_eq!(err.mcm_code(), "Unauthenticated");
        assert!(err.message.contains("no providers in chain"), "{err}");
        let unreadable = call_without_credentials(|| {
            CredentialsError::provider_error(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "token file not found",
            ))
        })
        .await;
        assert_eq!(unreadable.class, ErrorClass::Unauthorized, "{unreadable}");
        assert!(
            unreadable.message.contains("token file not found"),
            "{unreadable}"
        );
    }

    #[tokio::test]
    async fn sts_refusing_the_role_is_classified_by_its_code() {
        let denied = call_without_credentials(|| {
            CredentialsError::provider_error(sts_refusal(
                AssumeRoleError::generic,
                "AccessDenied",
                403,
            ))
        })
        .await;
        assert_eq!(denied.class, ErrorClass::Unauthorized, "{denied}");
        assert_eq!(denied.code.as_deref(), Some("AccessDenied"));
        assert_eq!(denied.mcm_code(), "PermissionDenied");

        for (web_identity, code, status) in [
            (true, "ExpiredTokenException", 400),
            (true, "InvalidIdentityToken", 400),
            (false, "InvalidClientTokenId", 403),
        ] {
            let make = move || {
                CredentialsError::provider_error(if web_identity {
                    Box::new(sts_refusal(
                        AssumeRoleWithWebIdentityError::generic,
                        code,
                        status,
                    )) as Box<dyn std::error::Error + Send + Sync>
                } else {
                    Box::new(sts_refusal(AssumeRoleError::generic, code, status))
                })
            };
            let err = call_without_credentials(make).await;
            assert_eq!(err.class, ErrorClass::Unauthorized, "{code}: {err}");
            assert_eq!(err.code.as_deref(), Some(code));
            assert_eq!(err.mcm_code(), "Unauthenticated", "{code}");
        }
    }

    #[tokio::test]
    async fn credential_trouble_a_retry_can_fix_stays_transient() {
        let timed_out = call_without_credentials(|| {
            CredentialsError::provider_timed_out(Duration::from_secs(5))
        })
        .await;
        assert_eq!(timed_out.class, ErrorClass::Transient, "{timed_out}");
        let sts_down = call_without_credentials(|| {
            CredentialsError::provider_error(sts_refusal(
                AssumeRoleError::generic,
                "InternalFailure",
                500,
            ))
        })
        .await;
        assert_eq!(sts_down.class, ErrorClass::Transient, "{sts_down}");
        let throttled = call_without_credentials(|| {
            CredentialsError::provider_error(sts_refusal(
                AssumeRoleError::generic,
                "Throttling",
                400,
            ))
        })
        .await;
        assert_eq!(throttled.class, ErrorClass::Throttled, "{throttled}");
    }
}
