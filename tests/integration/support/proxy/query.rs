//! What an EC2 query-protocol request says: its action, its decoded form
//! parameters, and whose it is (the access key and Region of the SigV4
//! credential scope, `Credential=AKID/date/region/ec2/aws4_request`).

use super::http::Request;

/// A decoded EC2 request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ec2Request {
    /// `Action=...`, or `Unknown`.
    pub action: String,
    /// The query string's and the form body's parameters, decoded, in
    /// request order.
    pub params: Vec<(String, String)>,
    /// The account and Region the request is throttled and remembered in.
    pub scope: Scope,
}

/// An account (access key) in a Region: EC2 keeps quotas and client
/// tokens per account and Region.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Scope {
    /// The access key id (empty for unsigned requests).
    pub access_key: String,
    /// The Region (empty for unsigned requests).
    pub region: String,
}

impl Ec2Request {
    pub fn parse(request: &Request) -> Ec2Request {
        let mut params: Vec<(String, String)> = form_urlencoded::parse(request.query().as_bytes())
            .into_owned()
            .collect();
        params.extend(form_urlencoded::parse(request.body()).into_owned());
        let action = params
            .iter()
            .find(|(k, _)| k == "Action")
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| "Unknown".into());
        let scope = request
            .header("authorization")
            .map(|auth| Scope::of_authorization(&auth))
            .unwrap_or_default();
        Ec2Request {
            action,
            params,
            scope,
        }
    }

    /// The first value of parameter `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Values of the list parameter `name.1`, `name.2`, ...
    pub fn list(&self, name: &str) -> Vec<&str> {
        self.params
            .iter()
            .filter(|(k, _)| {
                k.strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix('.'))
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            })
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The instance IDs the request names as its subject: `InstanceId`,
    /// `InstanceId.N`, and the `i-` values of `ResourceId.N` (CreateTags,
    /// DeleteTags). Filter values are not subjects.
    pub fn named_instances(&self) -> Vec<&str> {
        let mut ids: Vec<&str> = self.param("InstanceId").into_iter().collect();
        ids.extend(self.list("InstanceId"));
        ids.extend(
            self.list("ResourceId")
                .into_iter()
                .filter(|id| id.starts_with("i-")),
        );
        ids
    }

    /// Whether a Describe call narrows or pages its result (a filter, an ID
    /// list, `MaxResults` or `NextToken`), which moves it out of EC2's
    /// smaller "unfiltered and unpaginated" bucket.
    pub fn is_filtered(&self) -> bool {
        self.params.iter().any(|(k, _)| {
            k.starts_with("Filter.")
                || k == "MaxResults"
                || k == "NextToken"
                || (k.contains("Id.") && k.ends_with(|c: char| c.is_ascii_digit()))
        })
    }

    /// The parameters that make two requests "the same request" for
    /// ClientToken idempotency: all but `ClientToken`, in a canonical
    /// order. (Everything that varies between attempts of one SDK call —
    /// date, signature, attempt number — is in headers, not here.)
    pub fn idempotency_params(&self) -> Vec<(String, String)> {
        let mut params: Vec<_> = self
            .params
            .iter()
            .filter(|(k, _)| k != "ClientToken")
            .cloned()
            .collect();
        params.sort();
        params
    }
}

impl Scope {
    /// The access key and Region of a SigV4 `Authorization` header.
    fn of_authorization(header: &str) -> Scope {
        let credential = header
            .split([' ', ','])
            .find_map(|part| part.trim().strip_prefix("Credential="))
            .unwrap_or_default();
        let mut parts = credential.split('/');
        let access_key = parts.next().unwrap_or_default().to_string();
        let region = parts.nth(1).unwrap_or_default().to_string();
        Scope { access_key, region }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(head: &str, body: &str) -> Ec2Request {
        let raw = format!("{head}\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        let header_end = raw.find("\r\n\r\n").unwrap() + 4;
        Ec2Request::parse(&Request::from_raw(raw.into_bytes(), header_end))
    }

    const SIGNED: &str = "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\n\
        authorization: AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260101/eu-west-1/ec2/aws4_request, \
        SignedHeaders=host;x-amz-date, Signature=0123abcd";

    #[test]
    fn action_params_and_scope_come_from_the_signed_form() {
        let r = request(
            SIGNED,
            "Action=CreateTags&Version=2016-11-15&ResourceId.1=i-1&ResourceId.2=vol-2\
             &Tag.1.Key=a%20b&Tag.1.Value=c%2Bd+e",
        );
        assert_eq!(r.action, "CreateTags");
        assert_eq!(r.param("Tag.1.Key"), Some("a b"));
        assert_eq!(r.param("Tag.1.Value"), Some("c+d e"));
        assert_eq!(r.list("ResourceId"), vec!["i-1", "vol-2"]);
        assert_eq!(r.named_instances(), vec!["i-1"]);
        assert_eq!(
            r.scope,
            Scope {
                access_key: "AKIDEXAMPLE".into(),
                region: "eu-west-1".into()
            }
        );
    }

    #[test]
    fn unsigned_requests_have_an_empty_scope_and_may_use_the_query_string() {
        let r = request(
            "GET /?Action=DescribeInstances&InstanceId.1=i-9 HTTP/1.1\r\nHost: x",
            "",
        );
        assert_eq!(r.action, "DescribeInstances");
        assert_eq!(r.named_instances(), vec!["i-9"]);
        assert_eq!(r.scope, Scope::default());
    }

    #[test]
    fn filters_ids_and_pages_count_as_filtered() {
        assert!(!request(SIGNED, "Action=DescribeInstances").is_filtered());
        for body in [
            "Action=DescribeInstances&Filter.1.Name=tag-key&Filter.1.Value.1=x",
            "Action=DescribeInstances&InstanceId.1=i-1",
            "Action=DescribeInstances&MaxResults=5",
            "Action=DescribeInstances&NextToken=r-1",
        ] {
            assert!(request(SIGNED, body).is_filtered(), "{body}");
        }
    }

    #[test]
    fn idempotency_params_ignore_the_token_and_the_order() {
        let a = request(
            SIGNED,
            "Action=RunInstances&ClientToken=t1&MaxCount=1&ImageId=ami-1",
        );
        let b = request(
            SIGNED,
            "ImageId=ami-1&Action=RunInstances&MaxCount=1&ClientToken=t2",
        );
        let c = request(
            SIGNED,
            "Action=RunInstances&ClientToken=t1&MaxCount=2&ImageId=ami-1",
        );
        assert_eq!(a.idempotency_params(), b.idempotency_params());
        assert_ne!(a.idempotency_params(), c.idempotency_params());
    }

    #[test]
    fn modify_instance_attribute_names_its_single_instance() {
        let r = request(
            SIGNED,
            "Action=ModifyInstanceAttribute&InstanceId=i-7&SourceDestCheck.Value=false",
        );
        assert_eq!(r.named_instances(), vec!["i-7"]);
    }
}
