//! DescribeInstances answers cut down to what the operator reads, before
//! the SDK parses them.
//!
//! A page of 1,000 instances is ~3 MB of XML, and the SDK's model of it
//! ~7 MB more (block devices, security groups, network interfaces with
//! their addresses, CPU options, metadata options, every tag as two
//! `String`s…), held while the page is read. The operator keeps a few
//! fields of each instance ([`super::instances::InstanceInfo`]), so
//! [`SlimDescribe`], an interceptor on the operator's DescribeInstances
//! calls, rewrites a successful answer to those elements ([`slim`]) before
//! the SDK's deserializer sees it: the same XML, minus what nobody reads.
//! Anything it cannot read as XML it leaves as it is, and error answers are
//! not touched (their codes and messages are the SDK's to read).

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use aws_sdk_ec2::config::interceptors::BeforeDeserializationInterceptorContextMut;
use aws_sdk_ec2::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_smithy_types::body::SdkBody;
use bytes::Bytes;
use http_body::{Body, Frame};
use xmlparser::{ElementEnd, Token, Tokenizer};

/// Which children of an element are kept: all of them and their content
/// ([`Keep::All`]), or the listed ones, each with its own rule.
#[derive(Clone, Copy)]
enum Keep {
    All,
    Only(&'static [(&'static str, Keep)]),
}

use Keep::{All, Only};

/// What `InstanceInfo` and `PostLaunchState` read of an instance.
const INSTANCE: &[(&str, Keep)] = &[
    ("instanceId", All),
    ("instanceState", All),
    ("stateReason", All),
    ("reason", All),
    ("instanceType", All),
    ("privateDnsName", All),
    ("privateIpAddress", All),
    ("ipAddress", All),
    ("dnsName", All),
    ("placement", Only(&[("availabilityZone", All)])),
    ("amiLaunchIndex", All),
    ("tagSet", All),
    ("sourceDestCheck", All),
    (
        "networkInterfaceSet",
        Only(&[(
            "item",
            Only(&[
                ("networkInterfaceId", All),
                (
                    "attachment",
                    Only(&[("networkCardIndex", All), ("deviceIndex", All)]),
                ),
                ("ipv6PrefixSet", All),
            ]),
        )]),
    ),
];

const RESERVATION: &[(&str, Keep)] = &[
    ("reservationId", All),
    ("ownerId", All),
    ("instancesSet", Only(&[("item", Only(INSTANCE))])),
];

/// The children of `DescribeInstancesResponse` kept.
const RESPONSE: &[(&str, Keep)] = &[
    ("requestId", All),
    ("nextToken", All),
    ("reservationSet", Only(&[("item", Only(RESERVATION))])),
];

/// `xml` (a DescribeInstances answer) with only the elements the operator
/// reads; `None` when it is not well-formed XML with one root element.
/// Text between kept elements that only holds other elements (indentation)
/// goes too; everything kept is copied byte for byte, entities and all.
pub fn slim(xml: &str) -> Option<String> {
    let mut out = String::with_capacity(xml.len() / 4);
    // The rule of each open kept element; `skip` > 0 while inside a dropped
    // one (its depth).
    let mut open: Vec<Keep> = Vec::new();
    let mut skip = 0usize;
    let mut seen_root = false;
    for token in Tokenizer::from(xml) {
        let token = token.ok()?;
        if skip > 0 {
            match token {
                Token::ElementStart { .. } => skip += 1,
                Token::ElementEnd {
                    end: ElementEnd::Close(..) | ElementEnd::Empty,
                    ..
                } => skip -= 1,
                _ => {}
            }
            continue;
        }
        match token {
            Token::Declaration { span, .. } => out.push_str(span.as_str()),
            Token::ElementStart { local, span, .. } => {
                let rule = match open.last() {
                    None if seen_root => return None,
                    None => {
                        seen_root = true;
                        Some(Only(RESPONSE))
                    }
                    Some(All) => Some(All),
                    Some(Only(children)) => children
                        .iter()
                        .find(|(name, _)| *name == local.as_str())
                        .map(|(_, keep)| *keep),
                };
                match rule {
                    Some(rule) => {
                        open.push(rule);
                        out.push_str(span.as_str());
                    }
                    None => skip = 1,
                }
            }
            Token::Attribute { span, .. } => {
                out.push(' ');
                out.push_str(span.as_str());
            }
            Token::ElementEnd { end, span } => {
                if !matches!(end, ElementEnd::Open) {
                    open.pop()?;
                }
                out.push_str(span.as_str());
            }
            Token::Text { text } if matches!(open.last(), Some(All)) => out.push_str(text.as_str()),
            Token::Cdata { span, .. } if matches!(open.last(), Some(All)) => {
                out.push_str(span.as_str())
            }
            // Comments, processing instructions, DTDs and the whitespace
            // between elements.
            _ => {}
        }
    }
    (seen_root && open.is_empty()).then_some(out)
}

/// The interceptor: installed per DescribeInstances request
/// (`.customize().interceptor(SlimDescribe)`), it wraps a 200 answer's body
/// in one that hands the SDK [`slim`]'s version of it.
#[derive(Debug)]
pub struct SlimDescribe;

impl Intercept for SlimDescribe {
    fn name(&self) -> &'static str {
        "SlimDescribe"
    }

    fn modify_before_deserialization(
        &self,
        context: &mut BeforeDeserializationInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        let response = context.response_mut();
        if response.status().is_success() {
            let inner = response.take_body();
            *response.body_mut() = SdkBody::from_body_1_x(SlimBody::new(inner));
        }
        Ok(())
    }
}

/// The most room reserved up front for an answer (its Content-Length).
const RESERVE_AT_MOST: u64 = 32 << 20;

/// Reads the whole answer (the SDK would too), then yields it slimmed as
/// one frame.
struct SlimBody {
    inner: SdkBody,
    raw: Vec<u8>,
    done: bool,
}

impl SlimBody {
    fn new(inner: SdkBody) -> Self {
        Self {
            inner,
            raw: Vec::new(),
            done: false,
        }
    }
}

impl Body for SlimBody {
    type Data = Bytes;
    type Error = aws_smithy_types::body::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if this.raw.capacity() == 0 {
            // Content-Length when the answer has one: room for all of it
            // at once, not twice as much while a growing buffer moves
            // (bounded: a page of 1,000 instances is ~3 MB).
            let expected = this.inner.size_hint().lower().min(RESERVE_AT_MOST);
            this.raw
                .reserve_exact(usize::try_from(expected).unwrap_or(0));
        }
        loop {
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        this.raw.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => {
                    this.done = true;
                    let raw = std::mem::take(&mut this.raw);
                    let slimmed = std::str::from_utf8(&raw).ok().and_then(slim);
                    let bytes = match slimmed {
                        Some(s) => Bytes::from(s),
                        None => Bytes::from(raw),
                    };
                    return Poll::Ready(Some(Ok(Frame::data(bytes))));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use aws_smithy_runtime_api::client::http::{
        HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector,
    };
    use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};

    use super::*;
    use crate::aws::instances::InstanceInfo;

    /// An answer shaped as EC2's, with elements the operator reads and
    /// many it does not.
    const ANSWER: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<DescribeInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
    <requestId>req-1</requestId>
    <reservationSet>
        <item>
            <reservationId>r-1</reservationId>
            <ownerId>123456789012</ownerId>
            <groupSet/>
            <instancesSet>
                <item>
                    <instanceId>i-1</instanceId>
                    <imageId>ami-1</imageId>
                    <instanceState><code>16</code><name>running</name></instanceState>
                    <privateDnsName>ip-10-0-0-1.ec2.internal</privateDnsName>
                    <dnsName/>
                    <reason>User initiated (2026-12-01 10:00:00 GMT)</reason>
                    <amiLaunchIndex>3</amiLaunchIndex>
                    <productCodes/>
                    <instanceType>m5.large</instanceType>
                    <placement><availabilityZone>eu-west-1a</availabilityZone><tenancy>default</tenancy></placement>
                    <monitoring><state>disabled</state></monitoring>
                    <privateIpAddress>10.0.0.1</privateIpAddress>
                    <sourceDestCheck>false</sourceDestCheck>
                    <groupSet><item><groupId>sg-1</groupId><groupName>default</groupName></item></groupSet>
                    <stateReason><code>Client.UserInitiatedShutdown</code><message>a &amp; b</message></stateReason>
                    <blockDeviceMapping><item><deviceName>/dev/xvda</deviceName><ebs><volumeId>vol-1</volumeId></ebs></item></blockDeviceMapping>
                    <tagSet>
                        <item><key>Name</key><value>m-1</value></item>
                        <item><key>kubernetes.io/cluster/c</key><value/></item>
                    </tagSet>
                    <networkInterfaceSet>
                        <item>
                            <networkInterfaceId>eni-1</networkInterfaceId>
                            <subnetId>subnet-1</subnetId>
                            <attachment><attachmentId>eni-attach-1</attachmentId><deviceIndex>0</deviceIndex><networkCardIndex>1</networkCardIndex><status>attached</status></attachment>
                            <privateIpAddressesSet><item><privateIpAddress>10.0.0.1</privateIpAddress></item></privateIpAddressesSet>
                            <ipv6PrefixSet><item><ipv6Prefix>2001:db8::/80</ipv6Prefix></item></ipv6PrefixSet>
                        </item>
                    </networkInterfaceSet>
                    <!-- a comment -->
                    <cpuOptions><coreCount>1</coreCount></cpuOptions>
                </item>
            </instancesSet>
        </item>
    </reservationSet>
    <nextToken>page-2</nextToken>
</DescribeInstancesResponse>"#;

    #[test]
    fn keeps_what_the_operator_reads_and_nothing_else() {
        let got = slim(ANSWER).expect("well-formed");
        let expected = concat!(
            r#"<?xml version="1.0" encoding="UTF-8"?>"#,
            r#"<DescribeInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">"#,
            "<requestId>req-1</requestId><reservationSet><item>",
            "<reservationId>r-1</reservationId><ownerId>123456789012</ownerId>",
            "<instancesSet><item>",
            "<instanceId>i-1</instanceId>",
            "<instanceState><code>16</code><name>running</name></instanceState>",
            "<privateDnsName>ip-10-0-0-1.ec2.internal</privateDnsName><dnsName/>",
            "<reason>User initiated (2026-12-01 10:00:00 GMT)</reason>",
            "<amiLaunchIndex>3</amiLaunchIndex><instanceType>m5.large</instanceType>",
            "<placement><availabilityZone>eu-west-1a</availabilityZone></placement>",
            "<privateIpAddress>10.0.0.1</privateIpAddress><sourceDestCheck>false</sourceDestCheck>",
            "<stateReason><code>Client.UserInitiatedShutdown</code><message>a &amp; b</message></stateReason>",
            "<tagSet>\n                        <item><key>Name</key><value>m-1</value></item>\n",
            "                        <item><key>kubernetes.io/cluster/c</key><value/></item>\n",
            "                    </tagSet>",
            "<networkInterfaceSet><item><networkInterfaceId>eni-1</networkInterfaceId>",
            "<attachment><deviceIndex>0</deviceIndex><networkCardIndex>1</networkCardIndex></attachment>",
            "<ipv6PrefixSet><item><ipv6Prefix>2001:db8::/80</ipv6Prefix></item></ipv6PrefixSet>",
            "</item></networkInterfaceSet>",
            "</item></instancesSet></item></reservationSet>",
            "<nextToken>page-2</nextToken></DescribeInstancesResponse>",
        );
        assert_eq!(got, expected);
    }

    #[test]
    fn what_is_not_one_well_formed_document_is_refused() {
        assert_eq!(slim("<a><b></a>"), None);
        assert_eq!(slim("<a></a><b></b>"), None);
        assert_eq!(slim("<a>"), None);
        assert_eq!(slim(""), None);
        assert_eq!(slim("not xml"), None);
    }

    /// Answers every request with `xml`.
    #[derive(Debug)]
    struct Canned(&'static str);

    impl HttpConnector for Canned {
        fn call(&self, _request: HttpRequest) -> HttpConnectorFuture {
            let body = SdkBody::from(self.0);
            HttpConnectorFuture::ready(Ok(HttpResponse::new(200.try_into().unwrap(), body)))
        }
    }

    impl HttpClient for Canned {
        fn http_connector(
            &self,
            _settings: &HttpConnectorSettings,
            _components: &RuntimeComponents,
        ) -> SharedHttpConnector {
            SharedHttpConnector::new(Canned(self.0))
        }
    }

    /// What the SDK reads from `xml`, with or without the interceptor: the
    /// instances, the next token and (to tell the two apart) the first
    /// instance's image, which the operator does not read.
    async fn read(
        xml: &'static str,
        slimmed: bool,
    ) -> (Vec<InstanceInfo>, Option<String>, Option<String>) {
        let config = aws_sdk_ec2::Config::builder()
            .behavior_version(aws_sdk_ec2::config::BehaviorVersion::latest())
            .region(aws_sdk_ec2::config::Region::new("eu-west-1"))
            .credentials_provider(aws_sdk_ec2::config::Credentials::new(
                "AKID", "secret", None, None, "test",
            ))
            .http_client(Canned(xml))
            .build();
        let client = aws_sdk_ec2::Client::from_conf(config);
        let request = client.describe_instances();
        let page = if slimmed {
            request.customize().interceptor(SlimDescribe).send().await
        } else {
            request.send().await
        }
        .expect("parsed");
        let image = page.reservations()[0].instances()[0].image_id();
        let image = image.map(str::to_string);
        let instances = page
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .map(InstanceInfo::from)
            .collect();
        (instances, page.next_token().map(str::to_string), image)
    }

    #[tokio::test]
    async fn the_sdk_reads_from_the_slimmed_answer_what_it_read_from_the_whole() {
        let (instances, next, image) = read(ANSWER, false).await;
        let slimmed = read(ANSWER, true).await;
        assert_eq!(image.as_deref(), Some("ami-1"));
        assert_eq!(slimmed.2, None, "the interceptor ran");
        assert_eq!((&slimmed.0, &slimmed.1), (&instances, &next));
        assert_eq!(next.as_deref(), Some("page-2"));
        let i = &instances[0];
        assert_eq!(i.id, "i-1");
        assert_eq!(i.launch_index, Some(3));
        assert_eq!(i.tags.get("Name"), Some("m-1"));
        assert_eq!(i.post_launch.source_dest_check, Some(false));
        assert_eq!(i.post_launch.interfaces.len(), 1);
        assert_eq!(i.state_reason.as_deref(), Some("a & b"));
    }

    async fn through_the_body(answer: &'static str) -> Vec<u8> {
        let body = SdkBody::from_body_1_x(SlimBody::new(SdkBody::from(answer)));
        let read = aws_smithy_types::byte_stream::ByteStream::new(body).collect();
        read.await.expect("read").into_bytes().to_vec()
    }

    #[tokio::test]
    async fn the_body_hands_on_the_slimmed_answer_or_else_the_answer_unchanged() {
        assert_eq!(
            through_the_body(ANSWER).await,
            slim(ANSWER).unwrap().into_bytes()
        );
        assert_eq!(through_the_body("not xml").await, b"not xml");
        assert_eq!(through_the_body("").await, b"");
    }
}
