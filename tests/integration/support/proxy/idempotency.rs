//! RunInstances ClientToken idempotency ("Ensuring idempotency in Amazon
//! EC2 API requests", EC2 Developer Guide).
//!
//! The first successful RunInstances with a token, per account and Region,
//! is remembered for the proxy's lifetime (EC2: at least 24 hours after the
//! instances terminate). A later request with that token gets the remembered
//! response again, without reaching moto, when its parameters are the same
//! — also after the instances were terminated: the token still means that
//! launch, and nothing new starts. With different parameters it gets
//! `IdempotentParameterMismatch`. Requests with one token are answered one
//! at a time, so two concurrent attempts cannot both launch. A failed
//! attempt is not remembered: the token is still free.
//!
//! "Parameters" are the decoded form parameters except `ClientToken`; the
//! volatile parts of a retry (date, signature, SDK attempt headers) are
//! headers and do not count.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::Mutex as AsyncMutex;

use super::http::Response;
use super::query::Scope;

/// A launch remembered under its token.
pub struct Launch {
    params: Vec<(String, String)>,
    response: Response,
}

/// What became of a token, once its first request succeeded.
pub type Slot = Arc<AsyncMutex<Option<Launch>>>;

/// Every token seen, per account and Region.
#[derive(Default)]
pub struct ClientTokens {
    slots: HashMap<(Scope, String), Slot>,
}

impl ClientTokens {
    /// The slot of `token` in `scope`; lock it for as long as the request
    /// with that token is in flight.
    pub fn slot(&mut self, scope: &Scope, token: &str) -> Slot {
        self.slots
            .entry((scope.clone(), token.to_string()))
            .or_default()
            .clone()
    }
}

/// Whether a repeat was answered from memory, and how.
#[derive(Debug, PartialEq, Eq)]
pub enum Repeat {
    /// Same parameters: the original response.
    Replayed,
    /// Different parameters: `IdempotentParameterMismatch`.
    Mismatch,
}

impl Launch {
    pub fn new(params: Vec<(String, String)>, response: Response) -> Launch {
        Launch { params, response }
    }

    /// The answer to a repeat of this launch with `params`.
    pub fn answer(&self, params: &[(String, String)]) -> (Repeat, Response) {
        if self.params == params {
            (Repeat::Replayed, self.response.clone())
        } else {
            (Repeat::Mismatch, mismatch())
        }
    }
}

/// EC2's answer to a token reused with other parameters.
fn mismatch() -> Response {
    Response::ec2_error(
        400,
        "Bad Request",
        "IdempotentParameterMismatch",
        "Arguments on this idempotent request are inconsistent with arguments used in previous \
         request(s).",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_repeat_is_replayed_or_refused_by_its_parameters() {
        let original = Response::ec2_error(200, "OK", "Stand-in", "first");
        let launch = Launch::new(params(&[("ImageId", "ami-1")]), original);
        let (repeat, response) = launch.answer(&params(&[("ImageId", "ami-1")]));
        assert_eq!(repeat, Repeat::Replayed);
        assert!(response.body_text().contains("first"));
        let (repeat, response) = launch.answer(&params(&[("ImageId", "ami-2")]));
        assert_eq!(repeat, Repeat::Mismatch);
        assert_eq!(response.status, 400);
        assert!(
            response
                .body_text()
                .contains("<Code>IdempotentParameterMismatch</Code>")
        );
    }

    #[test]
    fn tokens_are_per_account_and_region() {
        let mut tokens = ClientTokens::default();
        let a = Scope {
            access_key: "A".into(),
            region: "eu-west-1".into(),
        };
        let b = Scope {
            region: "us-east-1".into(),
            ..a.clone()
        };
        assert!(Arc::ptr_eq(&tokens.slot(&a, "t"), &tokens.slot(&a, "t")));
        assert!(!Arc::ptr_eq(&tokens.slot(&a, "t"), &tokens.slot(&b, "t")));
        assert!(!Arc::ptr_eq(&tokens.slot(&a, "t"), &tokens.slot(&a, "u")));
    }
}
