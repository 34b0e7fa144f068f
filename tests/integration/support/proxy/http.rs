//! Just enough HTTP/1.1 for the proxy: read one request (headers and a
//! Content-Length body), forward it upstream on a fresh connection, and
//! write responses that always carry a Content-Length, so the client's
//! connection can stay open.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One request as it came off the wire.
pub struct Request {
    /// Request line, headers and body, unchanged.
    pub raw: Vec<u8>,
    header_end: usize,
}

impl Request {
    /// A request from its bytes; `header_end` is just past the blank line.
    pub fn from_raw(raw: Vec<u8>, header_end: usize) -> Request {
        Request { raw, header_end }
    }

    /// The request line and headers (without the blank line).
    pub fn head(&self) -> String {
        String::from_utf8_lossy(&self.raw[..self.header_end.saturating_sub(4)]).into_owned()
    }

    pub fn body(&self) -> &[u8] {
        &self.raw[self.header_end..]
    }

    /// The value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<String> {
        self.head().split("\r\n").skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_string())
        })
    }

    /// The query string of the request target, if any.
    pub fn query(&self) -> String {
        let head = self.head();
        let target = head.split(' ').nth(1).unwrap_or_default();
        target
            .split_once('?')
            .map(|(_, q)| q.to_string())
            .unwrap_or_default()
    }
}

/// A response: status, headers other than the framing ones, and the whole
/// body.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    /// Status line and headers, without Content-Length, Connection and
    /// Transfer-Encoding (re-added or dropped on [`to_bytes`](Self::to_bytes)).
    head: Vec<String>,
    pub body: Vec<u8>,
}

impl Response {
    /// An EC2 error response (the query protocol's error XML).
    pub fn ec2_error(status: u16, reason: &str, code: &str, message: &str) -> Response {
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code>\
             <Message>{}</Message></Error></Errors><RequestID>fault-proxy</RequestID></Response>",
            xml_escape(message)
        );
        Response {
            status,
            head: vec![
                format!("HTTP/1.1 {status} {reason}"),
                "Content-Type: text/xml".into(),
            ],
            body: body.into_bytes(),
        }
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// This response with another body.
    pub fn with_body(self, body: impl Into<Vec<u8>>) -> Response {
        Response {
            body: body.into(),
            ..self
        }
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The bytes to send: the head with a Content-Length for the body.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.head.join("\r\n").into_bytes();
        out.extend_from_slice(
            format!("\r\nContent-Length: {}\r\n\r\n", self.body.len()).as_bytes(),
        );
        out.extend_from_slice(&self.body);
        out
    }

    /// Parses a complete upstream response (read until the server closed).
    fn parse(raw: &[u8]) -> Response {
        let Some(end) = find(raw, b"\r\n\r\n") else {
            return Response::ec2_error(
                502,
                "Bad Gateway",
                "InternalError",
                "the proxy got no HTTP response from moto",
            );
        };
        let head_text = String::from_utf8_lossy(&raw[..end]).into_owned();
        let status = head_text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(502);
        let chunked = head_text
            .to_lowercase()
            .contains("transfer-encoding: chunked");
        let body = &raw[end + 4..];
        let body = if chunked {
            dechunk(body)
        } else {
            body.to_vec()
        };
        let head = head_text
            .split("\r\n")
            .filter(|l| {
                let l = l.to_lowercase();
                !l.starts_with("content-length:")
                    && !l.starts_with("connection:")
                    && !l.starts_with("transfer-encoding:")
            })
            .map(str::to_string)
            .collect();
        Response { status, head, body }
    }
}

/// Reads one request from `conn`; `None` when the client closed first.
pub async fn read_request(conn: &mut TcpStream) -> std::io::Result<Option<Request>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let header_end = loop {
        if let Some(pos) = find(&buf, b"\r\n\r\n") {
            break pos + 4;
        }
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let headers = String::from_utf8_lossy(&buf[..header_end]).to_lowercase();
    let len: usize = headers
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < header_end + len {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(Some(Request {
        raw: buf,
        header_end,
    }))
}

/// Sends `request` to `upstream` (`host:port`) with `Connection: close` and
/// returns the whole response.
pub async fn forward(upstream: &str, request: &Request) -> std::io::Result<Response> {
    let mut up = TcpStream::connect(upstream).await?;
    let mut head: Vec<String> = request
        .head()
        .split("\r\n")
        .filter(|l| !l.to_lowercase().starts_with("connection:"))
        .map(str::to_string)
        .collect();
    head.push("Connection: close".into());
    let mut out = head.join("\r\n").into_bytes();
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(request.body());
    up.write_all(&out).await?;
    let mut response = Vec::new();
    up.read_to_end(&mut response).await?;
    Ok(Response::parse(&response))
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = find(data, b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&data[..line_end]).trim(), 16)
            .unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = line_end + 2;
        out.extend_from_slice(&data[start..(start + size).min(data.len())]);
        data = &data[(start + size + 2).min(data.len())..];
    }
    out
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_responses_are_reframed_with_a_content_length() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nTransfer-Encoding: chunked\r\n\
                    Connection: close\r\n\r\n3\r\n<a>\r\n4\r\n</a>\r\n0\r\n\r\n";
        let response = Response::parse(raw);
        assert_eq!(response.status, 200);
        assert_eq!(response.body_text(), "<a></a>");
        let text = String::from_utf8(response.to_bytes()).unwrap();
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: 7\r\n\r\n<a></a>"
        );
    }

    #[test]
    fn error_messages_are_escaped() {
        let response = Response::ec2_error(400, "Bad Request", "X", "id 'i-1' <none>");
        assert!(
            response
                .body_text()
                .contains("<Code>X</Code><Message>id 'i-1' &lt;none&gt;</Message>")
        );
        assert!(!response.is_success());
    }
}
