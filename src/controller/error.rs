//! Errors of the reconcilers, each with a static category used for metric
//! labels and Event reasons (never `Debug` text).

use std::time::Duration;

use crate::aws::errors::{Ec2Error, ErrorClass};

/// Why a reconcile did not finish.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),

    #[error(transparent)]
    Ec2(#[from] Ec2Error),

    /// The object is not usable as it is (bad spec, missing class or secret):
    /// wait for a change, retry rarely.
    #[error("{0}")]
    Invalid(String),

    /// Nothing is wrong, a step is waiting for the world (drain, EC2
    /// termination). Used inside finalizer cleanup, where `Ok` would release
    /// the finalizer.
    #[error("{what}")]
    Waiting { what: String, retry_after: Duration },

    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    /// Static category for metrics and Event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube(_) => "KubernetesAPIError",
            Error::Ec2(e) => e.class.category(),
            Error::Invalid(_) => "InvalidConfiguration",
            Error::Waiting { .. } => "Waiting",
            Error::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.category(),
                _ => "FinalizerError",
            },
        }
    }

    /// The innermost reconcile error (unwrapping the finalizer layer).
    pub fn inner(&self) -> &Error {
        match self {
            Error::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.inner(),
                _ => self,
            },
            other => other,
        }
    }

    /// Whether this is a plain wait rather than a failure.
    pub fn is_waiting(&self) -> bool {
        matches!(self.inner(), Error::Waiting { .. })
    }

    /// The code for `status.lastOperation.errorCode`: the EC2 error's, else
    /// `Internal`.
    pub fn mcm_code(&self) -> &'static str {
        match self.inner() {
            Error::Ec2(e) => e.mcm_code(),
            _ => "Internal",
        }
    }

    /// The EC2 error class, if this came from EC2.
    pub fn ec2_class(&self) -> Option<ErrorClass> {
        match self.inner() {
            Error::Ec2(e) => Some(e.class),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
