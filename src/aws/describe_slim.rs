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
//! It slims the answer piece by piece as it arrives, so the full answer is
//! never held either. Each instance is read into an `InstanceInfo` by
//! [`super::describe_page`] as soon as its element closes (the SDK's model
//! of even the slimmed page was 4.9 MB for 1,000 instances; the slimmed
//! text of the page, 1.25 MB, is not held either: only the envelope and
//! the instance being read). The page is left in the interceptor's
//! [`PageSlot`] for the caller, and the SDK gets an empty answer (it reads
//! the request ID from the headers). An answer that is not well-formed XML
//! of that shape fails the call (as the SDK's parser would: a Transient
//! error naming it); error answers are not touched (their codes and
//! messages are the SDK's to read).

use std::ops::Range;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use aws_sdk_ec2::config::interceptors::BeforeDeserializationInterceptorContextMut;
use aws_sdk_ec2::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_smithy_types::body::SdkBody;
use bytes::Bytes;
use http_body::{Body, Frame};
use xmlparser::{ElementEnd, Token, Tokenizer};

use super::describe_page::{self, Page};
use super::instances::InstanceInfo;

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

/// Whether `keep` is an instance's rule: the element [`Slimmer`] reads
/// alone once it closes.
fn is_instance(keep: Keep) -> bool {
    matches!(keep, Only(children) if std::ptr::eq(children, INSTANCE))
}

/// The most [`Slimmer::pending`] keeps between pieces: the unfinished tail
/// of a piece is a tag or two, but hyper hands on pieces of up to ~400 KB,
/// which a `Vec` would otherwise keep room for.
const PENDING_KEPT: usize = 16 * 1024;

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
    let mut slimmer = Slimmer::default();
    slimmer.feed(xml.as_bytes());
    slimmer.finish().map(|(text, _)| text)
}

/// [`slim`] as the answer arrives: each piece is slimmed as soon as it
/// holds whole tags, so the answer itself is never held, only its slimmed
/// form and the unfinished tail of the last piece.
#[derive(Default)]
struct Slimmer {
    out: String,
    /// `Some` when each instance is read as it closes instead of kept in
    /// `out` ([`Slimmer::reading`]): those read so far.
    instances: Option<Vec<InstanceInfo>>,
    /// Where in `out` the open instance element starts.
    instance_at: usize,
    /// What arrived but is not slimmed yet: from the last `<` on.
    pending: Vec<u8>,
    /// Each open kept element: its rule and where `out` holds its name.
    open: Vec<(Keep, Range<usize>)>,
    /// > 0 while inside a dropped element: how deep.
    skip: usize,
    seen_root: bool,
    /// Past the XML declaration (or where it would be).
    started: bool,
    failed: bool,
}

impl Slimmer {
    /// A slimmer that reads each instance into an [`InstanceInfo`] as its
    /// element closes and keeps only the rest (the envelope) as text.
    fn reading() -> Self {
        Self {
            instances: Some(Vec::new()),
            ..Self::default()
        }
    }

    /// Takes the next piece of the answer.
    fn feed(&mut self, bytes: &[u8]) {
        if self.failed {
            return;
        }
        self.pending.extend_from_slice(bytes);
        if !self.started && !self.declaration() {
            return;
        }
        // Markup starts at `<`, which text and attribute values cannot
        // hold: everything before the last one is whole tags and text.
        // (Comments and CDATA may hold one; a piece cut inside them fails
        // and waits for more, see `slim_piece`.)
        let Some(cut) = self.pending.iter().rposition(|&b| b == b'<') else {
            return;
        };
        if cut > 0 && self.slim_piece(cut, false) {
            self.pending.drain(..cut);
            if self.pending.capacity() > PENDING_KEPT {
                self.pending.shrink_to(PENDING_KEPT);
            }
        }
    }

    /// The slimmed answer and the instances read out of it (none unless
    /// [`Slimmer::reading`]); `None` when it was not one well-formed
    /// document.
    fn finish(mut self) -> Option<(String, Vec<InstanceInfo>)> {
        if !self.started && !self.declaration() {
            self.started = true;
        }
        let all = self.pending.len();
        if !self.failed && self.slim_piece(all, true) {
            let whole = self.seen_root && self.open.is_empty() && self.skip == 0;
            let instances = self.instances.unwrap_or_default();
            return whole.then_some((self.out, instances));
        }
        None
    }

    /// Copies the XML declaration, if the answer starts with one; false
    /// while more is needed to tell.
    fn declaration(&mut self) -> bool {
        const START: &[u8] = b"<?xml";
        let head = &self.pending[..self.pending.len().min(START.len())];
        if head != &START[..head.len()] {
            self.started = true;
            return true;
        }
        if head.len() < START.len() {
            return false;
        }
        let Some(end) = self.pending.windows(2).position(|w| w == b"?>") else {
            return false;
        };
        match std::str::from_utf8(&self.pending[..end + 2]) {
            Ok(decl) => self.out.push_str(decl),
            Err(_) => self.failed = true,
        }
        self.pending.drain(..end + 2);
        self.started = true;
        true
    }

    /// Slims `pending[..len]`. A piece that does not parse fails the
    /// answer when it is the last (`last`); otherwise it is undone, to be
    /// tried again with more: false either way.
    fn slim_piece(&mut self, len: usize, last: bool) -> bool {
        // What an undo restores: `out` from `base` on may be cut by the
        // instances this piece reads (from the start of the one open, if
        // any), the rest is only appended to.
        let open_instance = self.open.iter().any(|(keep, _)| is_instance(*keep));
        let base = if open_instance {
            self.instance_at
        } else {
            self.out.len()
        };
        let tail = self.out[base..].to_owned();
        let undo = (self.open.clone(), self.skip, self.seen_root);
        let (read, instance_at) = (self.instances.as_ref().map(Vec::len), self.instance_at);
        let pending = std::mem::take(&mut self.pending);
        let ok = match std::str::from_utf8(&pending[..len]) {
            Ok(piece) => self.tokens(piece).is_some(),
            Err(_) => false,
        };
        self.pending = pending;
        if !ok {
            if last {
                self.failed = true;
            } else {
                self.out.truncate(base);
                self.out.push_str(&tail);
                (self.open, self.skip, self.seen_root) = undo;
                if let (Some(instances), Some(read)) = (self.instances.as_mut(), read) {
                    instances.truncate(read);
                }
                self.instance_at = instance_at;
            }
        }
        ok
    }

    /// Whether the innermost open element is kept with all its content.
    fn keeps_all(&self) -> bool {
        matches!(self.open.last(), Some((All, _)))
    }

    fn tokens(&mut self, piece: &str) -> Option<()> {
        for token in Tokenizer::from_fragment(piece, 0..piece.len()) {
            let token = token.ok()?;
            if self.skip > 0 {
                match token {
                    Token::ElementStart { .. } => self.skip += 1,
                    Token::ElementEnd {
                        end: ElementEnd::Close(..) | ElementEnd::Empty,
                        ..
                    } => self.skip -= 1,
                    _ => {}
                }
                continue;
            }
            let keeps_all = self.keeps_all();
            let out = &mut self.out;
            match token {
                Token::ElementStart { local, span, .. } => {
                    let rule = match self.open.last().map(|(keep, _)| keep) {
                        None if self.seen_root => return None,
                        None => {
                            self.seen_root = true;
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
                            if is_instance(rule) {
                                self.instance_at = out.len();
                            }
                            let name = out.len() + (local.start() - span.start());
                            self.open.push((rule, name..name + local.as_str().len()));
                            out.push_str(span.as_str());
                        }
                        None => self.skip = 1,
                    }
                }
                Token::Attribute { span, .. } => {
                    out.push(' ');
                    out.push_str(span.as_str());
                }
                Token::ElementEnd { end, span } => {
                    let closed = match end {
                        ElementEnd::Open => None,
                        ElementEnd::Empty => Some(self.open.pop()?.0),
                        ElementEnd::Close(_, local) => {
                            let (keep, name) = self.open.pop()?;
                            if out[name] != *local.as_str() {
                                return None;
                            }
                            Some(keep)
                        }
                    };
                    out.push_str(span.as_str());
                    if let (Some(keep), Some(instances)) = (closed, self.instances.as_mut())
                        && is_instance(keep)
                    {
                        let at = self.instance_at;
                        instances.push(describe_page::read_instance(&out[at..]).ok()?);
                        out.truncate(at);
                    }
                }
                Token::Text { text } if keeps_all => out.push_str(text.as_str()),
                Token::Cdata { span, .. } if keeps_all => out.push_str(span.as_str()),
                // Text outside the root must be whitespace.
                Token::Text { text }
                    if self.open.is_empty() && !text.as_str().trim().is_empty() =>
                {
                    return None;
                }
                // Comments, processing instructions and the whitespace
                // between elements.
                _ => {}
            }
        }
        Some(())
    }
}

/// Where [`SlimDescribe`] leaves the page it read from a successful answer.
pub type PageSlot = Arc<Mutex<Option<Page>>>;

/// The interceptor: installed per DescribeInstances request
/// (`.customize().interceptor(slim)`), it wraps a 2xx answer's body in one
/// that slims it, reads the instances into its [`PageSlot`] and hands the
/// SDK an empty answer.
#[derive(Debug, Default)]
pub struct SlimDescribe {
    page: PageSlot,
}

impl SlimDescribe {
    /// The slot the page will be in once the call succeeded.
    pub fn slot(&self) -> PageSlot {
        self.page.clone()
    }
}

/// Takes the page out of `slot`.
pub fn take_page(slot: &PageSlot) -> Option<Page> {
    slot.lock().unwrap_or_else(|p| p.into_inner()).take()
}

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
            let body = SlimBody::new(inner, self.page.clone());
            *response.body_mut() = SdkBody::from_body_1_x(body);
        }
        Ok(())
    }
}

/// Slims the answer as it arrives; at its end reads the page into the slot
/// and yields an empty answer as one frame, or an error when the answer was
/// not well-formed XML of the expected shape.
struct SlimBody {
    inner: SdkBody,
    /// `None` once the answer was read.
    slimmer: Option<Slimmer>,
    slot: PageSlot,
}

impl SlimBody {
    fn new(inner: SdkBody, slot: PageSlot) -> Self {
        Self {
            inner,
            slimmer: Some(Slimmer::reading()),
            slot,
        }
    }

    /// Reads what is left of the slimmed answer (all but its instances,
    /// `instances`) into the slot; the SDK's answer.
    fn hand_on(&self, (envelope, instances): (String, Vec<InstanceInfo>)) -> Option<Bytes> {
        let mut page = describe_page::read(&envelope).ok()?;
        page.instances = instances;
        *self.slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(page);
        Some(Bytes::from_static(EMPTY_ANSWER))
    }
}

/// What the SDK is handed once the page is in the slot.
const EMPTY_ANSWER: &[u8] = b"<DescribeInstancesResponse></DescribeInstancesResponse>";

/// A DescribeInstances answer that could not be slimmed.
#[derive(Debug, thiserror::Error)]
#[error("the DescribeInstances answer is not well-formed XML of the expected shape")]
struct NotXml;

impl Body for SlimBody {
    type Data = Bytes;
    type Error = aws_smithy_types::body::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let Some(slimmer) = this.slimmer.as_mut() else {
            return Poll::Ready(None);
        };
        loop {
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        slimmer.feed(&data);
                    }
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => {
                    let slimmed = this.slimmer.take().and_then(Slimmer::finish);
                    let frame = match slimmed.and_then(|s| this.hand_on(s)) {
                        Some(answer) => Ok(Frame::data(answer)),
                        None => Err(NotXml.into()),
                    };
                    return Poll::Ready(Some(frame));
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

    /// Two reservations, three instances, and what is unusual in EC2's
    /// answers: empty and missing elements, entities, an interface without
    /// attachment or device index, a tag without a value, a stateReason with
    /// only a code, an empty transition reason, no next token.
    const EDGES: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<DescribeInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
    <requestId>req-&lt;2&gt;</requestId>
    <reservationSet>
        <item>
            <reservationId>r-1</reservationId>
            <instancesSet>
                <item>
                    <instanceId>i-a</instanceId>
                    <instanceState><code>0</code><name>pending</name></instanceState>
                    <privateDnsName></privateDnsName>
                    <reason/>
                    <instanceType>m5.large</instanceType>
                    <stateReason><code>pending</code></stateReason>
                    <tagSet>
                        <item><key>a&amp;b</key><value>&quot;x&quot; &#65;</value></item>
                        <item><key>only-key</key></item>
                        <item><value>no key</value></item>
                    </tagSet>
                    <networkInterfaceSet>
                        <item><networkInterfaceId>eni-detached</networkInterfaceId></item>
                        <item><networkInterfaceId>eni-nodevice</networkInterfaceId><attachment><networkCardIndex>1</networkCardIndex></attachment></item>
                        <item><attachment><deviceIndex>2</deviceIndex></attachment><ipv6PrefixSet><item><ipv6Prefix>a::/80</ipv6Prefix></item><item><ipv6Prefix>b::/80</ipv6Prefix></item></ipv6PrefixSet></item>
                    </networkInterfaceSet>
                </item>
                <item>
                    <instanceId>i-b</instanceId>
                    <instanceState><name>shutting-down</name></instanceState>
                    <reason>Service initiated</reason>
                    <ipAddress>54.0.0.1</ipAddress>
                    <dnsName>ec2-54-0-0-1.compute.amazonaws.com</dnsName>
                    <placement><availabilityZone>eu-west-1b</availabilityZone></placement>
                    <sourceDestCheck>true</sourceDestCheck>
                    <tagSet/>
                </item>
            </instancesSet>
        </item>
        <item>
            <instancesSet>
                <item>
                    <instanceId>i-c</instanceId>
                    <instanceState><name>something-new</name></instanceState>
                    <amiLaunchIndex>0</amiLaunchIndex>
                </item>
            </instancesSet>
        </item>
    </reservationSet>
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
        assert_eq!(slim("<a></b>"), None);
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

    /// What the operator reads from `xml`: with the interceptor, the page
    /// in its slot; without, the SDK's model of the whole answer. Also the
    /// request ID (from the headers: none here) and, to tell the two apart,
    /// the first instance's image, which the operator does not read.
    async fn read(
        xml: &'static str,
        slimmed: bool,
    ) -> (
        Vec<InstanceInfo>,
        Option<String>,
        Option<String>,
        Option<String>,
    ) {
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
        let request_id =
            |out: &aws_sdk_ec2::operation::describe_instances::DescribeInstancesOutput| {
                use aws_sdk_ec2::operation::RequestId;
                out.request_id().map(str::to_string)
            };
        if slimmed {
            let slim = SlimDescribe::default();
            let slot = slim.slot();
            let out = request.customize().interceptor(slim).send().await;
            let out = out.expect("parsed");
            assert!(out.reservations().is_empty(), "the SDK sees no instances");
            let page = take_page(&slot).expect("a page in the slot");
            return (page.instances, page.next_token, request_id(&out), None);
        }
        let out = request.send().await.expect("parsed");
        let image = out.reservations()[0].instances()[0].image_id();
        let image = image.map(str::to_string);
        let instances = out
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .map(InstanceInfo::from)
            .collect();
        (
            instances,
            out.next_token().map(str::to_string),
            request_id(&out),
            image,
        )
    }

    #[tokio::test]
    async fn the_page_read_from_the_slimmed_answer_is_what_the_sdk_read_from_the_whole() {
        let (instances, next, request_id, image) = read(ANSWER, false).await;
        let slimmed = read(ANSWER, true).await;
        assert_eq!(image.as_deref(), Some("ami-1"));
        assert_eq!(slimmed.3, None, "the interceptor ran");
        assert_eq!((&slimmed.0, &slimmed.1), (&instances, &next));
        assert_eq!(slimmed.2, request_id);
        assert_eq!(next.as_deref(), Some("page-2"));
        let i = &instances[0];
        assert_eq!(i.id, "i-1");
        assert_eq!(i.launch_index, Some(3));
        assert_eq!(i.tags.get("Name"), Some("m-1"));
        assert_eq!(i.post_launch.source_dest_check, Some(false));
        assert_eq!(i.post_launch.interfaces.len(), 1);
        assert_eq!(i.state_reason.as_deref(), Some("a & b"));
    }

    #[tokio::test]
    async fn edge_cases_read_as_the_sdk_reads_them() {
        let (instances, next, request_id, _) = read(EDGES, false).await;
        let slimmed = read(EDGES, true).await;
        assert_eq!((&slimmed.0, &slimmed.1), (&instances, &next));
        assert_eq!(slimmed.2, request_id);
        assert_eq!(next, None);
        let ids: Vec<&str> = instances.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["i-a", "i-b", "i-c"]);
        let a = &instances[0];
        assert_eq!(a.tags.get("a&b"), Some("\"x\" A"));
        assert_eq!(a.tags.get("only-key"), Some(""));
        assert_eq!(a.state_reason.as_deref(), Some("pending"));
        assert_eq!(a.private_dns_name, None);
        assert_eq!(a.post_launch.interfaces.len(), 1);
        assert_eq!(a.post_launch.interfaces[0].ipv6_prefixes, 2);
        assert_eq!(
            instances[1].state_reason.as_deref(),
            Some("Service initiated")
        );
        assert_eq!(instances[2].launch_index, Some(0));
    }

    #[tokio::test]
    async fn an_answer_the_sdk_would_refuse_is_refused() {
        // Well-formed, but not a number where EC2 sends one.
        const BAD: &str = "<DescribeInstancesResponse><reservationSet><item><instancesSet>\
            <item><instanceId>i-1</instanceId><amiLaunchIndex>one</amiLaunchIndex></item>\
            </instancesSet></item></reservationSet></DescribeInstancesResponse>";
        let refused = Err(NotXml.to_string());
        assert_eq!(through_the_body(vec![BAD.as_bytes()]).await, refused);
        assert_eq!(through_the_body(vec![b"<Other/>"]).await, refused);
    }

    async fn through_the_body(
        pieces: Vec<&'static [u8]>,
    ) -> Result<(Vec<u8>, Option<Page>), String> {
        let inner = futures::stream::iter(
            pieces
                .into_iter()
                .map(|p| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(p)))),
        );
        let inner = SdkBody::from_body_1_x(http_body_util::StreamBody::new(inner));
        let slot = PageSlot::default();
        let body = SdkBody::from_body_1_x(SlimBody::new(inner, slot.clone()));
        let read = aws_smithy_types::byte_stream::ByteStream::new(body).collect();
        match read.await {
            Ok(bytes) => Ok((bytes.into_bytes().to_vec(), take_page(&slot))),
            Err(e) => Err(format!("{}", std::error::Error::source(&e).unwrap_or(&e))),
        }
    }

    #[test]
    fn an_answer_cut_anywhere_slims_as_the_whole() {
        let whole = slim(ANSWER).unwrap();
        let bytes = ANSWER.as_bytes();
        for cut in 0..=bytes.len() {
            let mut slimmer = Slimmer::default();
            slimmer.feed(&bytes[..cut]);
            slimmer.feed(&bytes[cut..]);
            assert_eq!(
                slimmer.finish().map(|(t, _)| t).as_ref(),
                Some(&whole),
                "cut at {cut}"
            );
        }
        // And byte by byte, a comment with markup in it included.
        let commented = ANSWER.replace("<!-- a comment -->", "<!-- <a> <b/> -->");
        let mut slimmer = Slimmer::default();
        for b in commented.as_bytes() {
            slimmer.feed(std::slice::from_ref(b));
        }
        assert_eq!(slimmer.finish().map(|(t, _)| t), Some(whole));
    }

    /// What the body's slimmer leaves after feeding `pieces`: the envelope
    /// and the instances read out of it.
    fn read_in_pieces<'a>(
        pieces: impl IntoIterator<Item = &'a [u8]>,
    ) -> (String, Vec<InstanceInfo>) {
        let mut slimmer = Slimmer::reading();
        for piece in pieces {
            slimmer.feed(piece);
        }
        slimmer.finish().expect("well-formed")
    }

    #[test]
    fn instances_read_as_they_close_are_the_pages_and_leave_only_the_envelope() {
        let commented = ANSWER.replace("<!-- a comment -->", "<!-- <a> <b/> -->");
        for answer in [ANSWER, EDGES, commented.as_str()] {
            let whole = describe_page::read(&slim(answer).unwrap()).unwrap();
            let bytes = answer.as_bytes();
            for cut in 0..=bytes.len() {
                let (envelope, instances) = read_in_pieces([&bytes[..cut], &bytes[cut..]]);
                assert_eq!(instances, whole.instances, "cut at {cut}");
                assert!(!envelope.contains("instanceId"), "{envelope}");
                let rest = describe_page::read(&envelope).unwrap();
                assert_eq!(rest.next_token, whole.next_token);
            }
            // Byte by byte: every piece but the ones at a `<` is undone
            // and tried again, inside an open instance too.
            let (_, instances) = read_in_pieces(bytes.chunks(1));
            assert_eq!(instances, whole.instances);
        }
    }

    #[test]
    fn the_pending_tail_does_not_keep_room_for_a_whole_piece() {
        let mut big =
            String::from("<DescribeInstancesResponse><reservationSet><item><instancesSet>");
        for i in 0..2000 {
            big.push_str(&format!(
                "<item><instanceId>i-{i}</instanceId><imageId>ami-1</imageId></item>"
            ));
        }
        big.push_str("</instancesSet></item></reservationSet></DescribeInstancesResponse>");
        let mut slimmer = Slimmer::reading();
        slimmer.feed(big.as_bytes());
        assert!(slimmer.pending.capacity() <= PENDING_KEPT);
        assert!(slimmer.out.len() < 200, "{}", slimmer.out.len());
        let (_, instances) = slimmer.finish().unwrap();
        assert_eq!(instances.len(), 2000);
        assert_eq!(instances[1999].id, "i-1999");
    }

    #[tokio::test]
    async fn the_body_leaves_the_page_and_hands_on_the_request_id_or_fails() {
        let (head, tail) = ANSWER.as_bytes().split_at(1000);
        let (answer, page) = through_the_body(vec![head, tail]).await.unwrap();
        assert_eq!(answer, EMPTY_ANSWER);
        let page = page.expect("the page");
        assert_eq!(page, describe_page::read(&slim(ANSWER).unwrap()).unwrap());
        assert_eq!(page.instances.len(), 1);
        let refused = Err(NotXml.to_string());
        assert_eq!(through_the_body(vec![b"not xml"]).await, refused);
        assert_eq!(through_the_body(vec![b"<a>", b"</b>"]).await, refused);
        assert_eq!(through_the_body(vec![]).await, refused);
    }
}
