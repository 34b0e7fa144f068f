//! How many instances a RunInstances starts. EC2 starts as many as it can
//! up to `MaxCount` (at least `MinCount`); moto starts `MinCount`. The
//! proxy makes moto start `MaxCount` by asking for `MinCount` = `MaxCount`
//! — or fewer with [`ProxyBehaviour::launch_at_most`](super::ProxyBehaviour),
//! a partial launch as EC2 makes it when capacity runs short.

use super::http::Request;

/// `request` asking moto for its `MaxCount` (at most `at_most`) as both
/// `MinCount` and `MaxCount`, with its Content-Length fixed; `None` when
/// it asks for one instance.
pub fn launch_count(request: &Request, at_most: Option<u32>) -> Option<Request> {
    let body = String::from_utf8_lossy(request.body()).into_owned();
    let count = |name: &str| {
        body.split('&')
            .find_map(|p| p.strip_prefix(name)?.strip_prefix('=')?.parse::<u32>().ok())
    };
    let max = count("MaxCount")?;
    let n = at_most.map_or(max, |cap| max.min(cap)).max(1);
    if max <= 1 && count("MinCount").is_none_or(|m| m == n) {
        return None;
    }
    let params: Vec<String> = body
        .split('&')
        .map(|p| {
            if p.starts_with("MaxCount=") {
                format!("MaxCount={n}")
            } else if p.starts_with("MinCount=") {
                format!("MinCount={n}")
            } else {
                p.to_string()
            }
        })
        .collect();
    let body = params.join("&");
    let head: Vec<String> = request
        .head()
        .split("\r\n")
        .map(|l| {
            if l.to_lowercase().starts_with("content-length:") {
                format!("Content-Length: {}", body.len())
            } else {
                l.to_string()
            }
        })
        .collect();
    let mut raw = head.join("\r\n").into_bytes();
    raw.extend_from_slice(b"\r\n\r\n");
    let header_end = raw.len();
    raw.extend_from_slice(body.as_bytes());
    Some(Request::from_raw(raw, header_end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: &str) -> Request {
        let head = format!(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let header_end = head.len();
        Request::from_raw([head.as_bytes(), body.as_bytes()].concat(), header_end)
    }

    #[test]
    fn moto_is_asked_for_max_count_or_the_partial_count() {
        let ask = "Action=RunInstances&MaxCount=20&MinCount=1";
        let r = launch_count(&request(ask), None).unwrap();
        assert_eq!(r.body(), b"Action=RunInstances&MaxCount=20&MinCount=20");
        let r = launch_count(&request(ask), Some(7)).unwrap();
        assert_eq!(r.body(), b"Action=RunInstances&MaxCount=7&MinCount=7");
        assert_eq!(r.header("content-length").as_deref(), Some("41"));
        let one = "Action=RunInstances&MaxCount=1&MinCount=1";
        assert!(launch_count(&request(one), Some(7)).is_none());
    }
}
