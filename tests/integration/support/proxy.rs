//! A small fault-injecting HTTP proxy in front of the moto EC2 server.
//!
//! It reads each EC2 query-protocol request (`Action=...` in the form body),
//! counts it by action, and either forwards it to moto (one upstream
//! connection per request) or answers with a fault: EC2 throttling
//! (`RequestLimitExceeded`, HTTP 503), an internal error (HTTP 500), a reset
//! connection, or a delay. Faults follow a deterministic schedule (every Nth
//! request of an action), so tests are repeatable.

// The pieces the EC2-like behaviours are built from (wired in next).
mod http;
mod query;
mod xml;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What to do with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Throttle,
    ServerError,
    Reset,
    Delay(Duration),
    /// An EC2 error response with this HTTP status and error code.
    Error(u16, &'static str),
}

/// A fault injected on one in `every` requests — of `action` when set, else
/// of all. With `action`, exactly every `every`-th request of that action;
/// without, a fixed pseudo-random choice per request number (repeatable, but
/// not periodic, so no request pattern can dodge or always hit it).
#[derive(Clone, Debug)]
pub struct Rule {
    pub fault: Fault,
    pub every: u64,
    pub action: Option<&'static str>,
}

impl Rule {
    pub fn every(every: u64, fault: Fault) -> Rule {
        Rule {
            fault,
            every,
            action: None,
        }
    }

    pub fn on(action: &'static str, every: u64, fault: Fault) -> Rule {
        Rule {
            fault,
            every,
            action: Some(action),
        }
    }
}

#[derive(Default)]
struct State {
    calls: BTreeMap<String, u64>,
    faults: BTreeMap<String, u64>,
    rules: Vec<Rule>,
}

/// A running proxy; stops when dropped.
pub struct FaultProxy {
    pub url: String,
    state: Arc<Mutex<State>>,
    seq: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    /// Starts a proxy on a free loopback port forwarding to `upstream`
    /// (`http://127.0.0.1:PORT`).
    pub async fn start(upstream: &str) -> FaultProxy {
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let seq = Arc::new(AtomicU64::new(0));
        let (st, sq) = (state.clone(), seq.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    return;
                };
                let (st, sq, up) = (st.clone(), sq.clone(), upstream.clone());
                tokio::spawn(async move {
                    let _ = serve(conn, &up, &st, &sq).await;
                });
            }
        });
        FaultProxy {
            url,
            state,
            seq,
            task,
        }
    }

    /// Replaces the fault rules (empty: forward everything).
    pub fn set_rules(&self, rules: Vec<Rule>) {
        self.state.lock().unwrap().rules = rules;
    }

    /// Requests seen per EC2 action (forwarded or faulted).
    pub fn calls(&self) -> BTreeMap<String, u64> {
        self.state.lock().unwrap().calls.clone()
    }

    /// Faults injected per EC2 action.
    pub fn faults(&self) -> BTreeMap<String, u64> {
        self.state.lock().unwrap().faults.clone()
    }

    pub fn total_calls(&self) -> u64 {
        self.calls().values().sum()
    }

    pub fn reset_counts(&self) {
        let mut s = self.state.lock().unwrap();
        s.calls.clear();
        s.faults.clear();
        self.seq.store(0, Ordering::SeqCst);
    }
}

/// Reads one HTTP/1.1 request (headers + Content-Length body) from `conn`.
async fn read_request(conn: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
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
    Ok(Some(buf))
}

/// A fixed bijective mix of a request number (splitmix64's finalizer).
fn scramble(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d049bb133111eb);
    x ^ (x >> 31)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn action_of(request: &[u8]) -> String {
    let text = String::from_utf8_lossy(request);
    text.split(['&', '\n', '?'])
        .find_map(|p| p.trim().strip_prefix("Action="))
        .map(|a| a.split_whitespace().next().unwrap_or(a).to_string())
        .unwrap_or_else(|| "Unknown".into())
}

fn error_response(status: &str, code: &str, message: &str) -> Vec<u8> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code>\
         <Message>{message}</Message></Error></Errors><RequestID>fault-proxy</RequestID></Response>"
    );
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

async fn serve(
    mut conn: TcpStream,
    upstream: &str,
    state: &Mutex<State>,
    seq: &AtomicU64,
) -> std::io::Result<()> {
    while let Some(request) = read_request(&mut conn).await? {
        let action = action_of(&request);
        let n = seq.fetch_add(1, Ordering::SeqCst) + 1;
        let fault = {
            let mut s = state.lock().unwrap();
            let of_action = {
                let c = s.calls.entry(action.clone()).or_default();
                *c += 1;
                *c
            };
            let fault = s
                .rules
                .iter()
                .find(|r| {
                    let count = match r.action {
                        Some(a) if a == action => of_action,
                        Some(_) => return false,
                        None => scramble(n ^ (r.every << 32)),
                    };
                    r.every > 0 && count.is_multiple_of(r.every)
                })
                .map(|r| r.fault);
            if fault.is_some() {
                *s.faults.entry(action.clone()).or_default() += 1;
            }
            fault
        };
        match fault {
            Some(Fault::Throttle) => {
                conn.write_all(&error_response(
                    "503 Service Unavailable",
                    "RequestLimitExceeded",
                    "Request limit exceeded.",
                ))
                .await?;
                continue;
            }
            Some(Fault::ServerError) => {
                conn.write_all(&error_response(
                    "500 Internal Server Error",
                    "InternalError",
                    "An internal error has occurred.",
                ))
                .await?;
                continue;
            }
            Some(Fault::Reset) => {
                // Deprecated because linger 0 blocks nothing here: it is
                // exactly how to make the peer see a reset.
                #[allow(deprecated)]
                conn.set_linger(Some(Duration::ZERO))?;
                return Ok(()); // dropped with linger 0: the client sees a reset
            }
            Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
            Some(Fault::Error(status, code)) => {
                let line = format!("{status} Error");
                conn.write_all(&error_response(&line, code, &format!("Injected {code}")))
                    .await?;
                continue;
            }
            None => {}
        }
        let response = forward(upstream, &request).await?;
        conn.write_all(&response).await?;
        if find(&response, b"\r\n\r\n").is_some_and(|end| {
            String::from_utf8_lossy(&response[..end])
                .to_lowercase()
                .contains("connection: close")
        }) {
            return Ok(());
        }
    }
    Ok(())
}

/// Sends one request upstream with `Connection: close` and returns the whole
/// response, rewritten to carry a Content-Length (so the client connection can
/// stay open).
async fn forward(upstream: &str, request: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut up = TcpStream::connect(upstream).await?;
    let end = find(request, b"\r\n\r\n").unwrap_or(request.len());
    let head = String::from_utf8_lossy(&request[..end]);
    let mut new_head: Vec<String> = head
        .split("\r\n")
        .filter(|l| !l.to_lowercase().starts_with("connection:"))
        .map(str::to_string)
        .collect();
    new_head.push("Connection: close".into());
    let mut out = new_head.join("\r\n").into_bytes();
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(request.get(end + 4..).unwrap_or_default());
    up.write_all(&out).await?;
    let mut response = Vec::new();
    up.read_to_end(&mut response).await?;
    let Some(hend) = find(&response, b"\r\n\r\n") else {
        return Ok(response);
    };
    let body = response[hend + 4..].to_vec();
    let head = String::from_utf8_lossy(&response[..hend]).to_string();
    let chunked = head.to_lowercase().contains("transfer-encoding: chunked");
    let body = if chunked { dechunk(&body) } else { body };
    let mut lines: Vec<String> = head
        .split("\r\n")
        .filter(|l| {
            let l = l.to_lowercase();
            !l.starts_with("content-length:")
                && !l.starts_with("connection:")
                && !l.starts_with("transfer-encoding:")
        })
        .map(str::to_string)
        .collect();
    lines.push(format!("Content-Length: {}", body.len()));
    let mut out = lines.join("\r\n").into_bytes();
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(&body);
    Ok(out)
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
