//! A small HTTP proxy in front of the moto EC2 server that injects faults
//! and, when asked, behaves like EC2 where moto does not.
//!
//! It reads each EC2 query-protocol request (`Action=...` in the form body),
//! counts it by action, and either forwards it to moto (one upstream
//! connection per request) or answers it itself.
//!
//! **Faults** ([`FaultProxy::set_rules`]): EC2 throttling
//! (`RequestLimitExceeded`, HTTP 503), an internal error (HTTP 500), any EC2
//! error, a reset connection, a delay, or a lost response (the request takes
//! effect, the caller sees a reset). They follow a deterministic
//! schedule (every Nth request of an action), so tests are repeatable, and
//! come first: a faulted request reaches nothing else.
//!
//! **EC2's behaviour** ([`ProxyBehaviour`], at [`FaultProxy::start_with`] or
//! any time with [`FaultProxy::set_behaviour`]; all off by default, which is
//! plain moto). In the order a request meets them:
//!
//! 1. Quotas ([`ProxyBehaviour::quotas`], see `proxy/quota.rs`): EC2's
//!    token buckets per account (access key) and Region, taken from the
//!    request's SigV4 credential scope. An empty bucket answers
//!    `RequestLimitExceeded` (HTTP 503) and costs no tokens.
//! 2. Eventual consistency ([`ProxyBehaviour::consistency_window`], see
//!    `proxy/consistency.rs`): for the window after a RunInstances response,
//!    its instances are missing from DescribeInstances results, and calls
//!    naming them answer `InvalidInstanceID.NotFound` (HTTP 400) without
//!    reaching moto. Only instances launched through this proxy while the
//!    switch is on are affected; switching it off makes them all visible
//!    (on again, those still inside their window hide again).
//! 3. Launch counts (always, see `proxy/partial.rs`): a RunInstances starts
//!    `MaxCount` instances as EC2 does (moto would start `MinCount`), or at
//!    most [`ProxyBehaviour::launch_at_most`] (a partial launch, as EC2
//!    makes when capacity runs short).
//! 4. ClientToken idempotency ([`ProxyBehaviour::client_tokens`], see
//!    `proxy/idempotency.rs`): a RunInstances repeating a token gets the
//!    first response (same reservation and instance IDs, also after they
//!    were terminated, nothing launched) when its parameters match, else
//!    `IdempotentParameterMismatch` (HTTP 400). Tokens seen while the switch
//!    is on are remembered for the proxy's lifetime (while it is off,
//!    repeats simply go to moto, which ignores tokens).
//! 4. `shutting-down` ([`ProxyBehaviour::shutting_down`], see
//!    `proxy/shutting_down.rs`): for the given time after a TerminateInstances,
//!    DescribeInstances reports its instances `shutting-down` (moto says
//!    `terminated` at once).
//!
//! **Holds** ([`FaultProxy::hold_next`], see `proxy/hold.rs`): the next
//! request of an action that matches waits until the test releases it, so
//! that a test can act between two steps of the operator's.
//!
//! ```ignore
//! let proxy = FaultProxy::start_with(moto_url, ProxyBehaviour::default()
//!     .with_client_tokens()
//!     .with_consistency_window(Duration::from_secs(4))
//!     .with_quotas(QuotaConfig::aws().scaled(0.1))).await;
//! // Or all three at EC2's sizes, on a running Scenario's proxy:
//! s.proxy.as_ref().unwrap().set_behaviour(ProxyBehaviour::like_ec2());
//! ```
//!
//! **Counters** ([`FaultProxy::stats`]): calls and faults per action,
//! `RequestLimitExceeded` answered by the quotas, instances launched,
//! replays and mismatches, and what the consistency window hid. Counting
//! works with every switch off.
//!
//! [`FaultProxy::client`] gives an SDK client through the proxy with the
//! SDK's retries off, for tests that want to see each answer themselves.

mod client;
mod consistency;
mod hold;
mod http;
mod idempotency;
mod partial;
mod query;
mod quota;
mod shutting_down;
mod stats;
mod xml;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use self::consistency::{Unseen, not_found};
pub use self::hold::Held;
use self::hold::Pending;
use self::http::{Request, Response, forward, read_request};
use self::idempotency::{ClientTokens, Launch, Repeat};
pub use self::query::Ec2Request;
pub use self::quota::QuotaConfig;
use self::quota::Quotas;
use self::shutting_down::ShuttingDown;
pub use self::stats::ProxyStats;

/// What to do with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Throttle,
    ServerError,
    Reset,
    Delay(Duration),
    /// An EC2 error response with this HTTP status and error code.
    Error(u16, &'static str),
    /// The request is held this long, then the connection is reset without
    /// the request reaching EC2 (a window to kill the caller in before its
    /// call took effect).
    Hold(Duration),
    /// The request reaches EC2 and takes effect, then the connection is
    /// reset instead of answered: the caller never learns the outcome (a
    /// crash or a network cut right after the call).
    LoseResponse,
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

/// Which of EC2's behaviours the proxy adds to moto's; see the module docs.
/// `ProxyBehaviour::default()` adds none.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProxyBehaviour {
    /// RunInstances ClientToken idempotency.
    pub client_tokens: bool,
    /// How long new instances stay unknown to other calls.
    pub consistency_window: Option<Duration>,
    /// EC2's request and resource token buckets.
    pub quotas: Option<QuotaConfig>,
    /// How long terminated instances report `shutting-down` (see
    /// `proxy/shutting_down.rs`).
    pub shutting_down: Option<Duration>,
    /// RunInstances starts at most this many instances, whatever it asks.
    pub launch_at_most: Option<u32>,
}

impl ProxyBehaviour {
    /// A consistency window of the order EC2 shows after RunInstances.
    pub const TYPICAL_WINDOW: Duration = Duration::from_secs(4);

    /// All three, at EC2's sizes: tokens, a [`TYPICAL_WINDOW`](Self::TYPICAL_WINDOW)
    /// and AWS's default quotas.
    pub fn like_ec2() -> ProxyBehaviour {
        ProxyBehaviour::default()
            .with_client_tokens()
            .with_consistency_window(Self::TYPICAL_WINDOW)
            .with_quotas(QuotaConfig::aws())
    }

    pub fn with_client_tokens(self) -> ProxyBehaviour {
        ProxyBehaviour {
            client_tokens: true,
            ..self
        }
    }

    pub fn with_consistency_window(self, window: Duration) -> ProxyBehaviour {
        ProxyBehaviour {
            consistency_window: Some(window),
            ..self
        }
    }

    pub fn with_launch_at_most(self, instances: u32) -> ProxyBehaviour {
        ProxyBehaviour {
            launch_at_most: Some(instances),
            ..self
        }
    }

    pub fn with_quotas(self, quotas: QuotaConfig) -> ProxyBehaviour {
        ProxyBehaviour {
            quotas: Some(quotas),
            ..self
        }
    }

    pub fn with_shutting_down(self, lasts: Duration) -> ProxyBehaviour {
        ProxyBehaviour {
            shutting_down: Some(lasts),
            ..self
        }
    }
}

#[derive(Default)]
struct State {
    stats: ProxyStats,
    rules: Vec<Rule>,
    behaviour: ProxyBehaviour,
    /// Buckets of `behaviour.quotas`, rebuilt (full) when that changes.
    quotas: Option<Quotas>,
    tokens: ClientTokens,
    unseen: Unseen,
    shutting_down: ShuttingDown,
    /// Requests to hold, first match first ([`FaultProxy::hold_next`]).
    holds: Vec<Pending>,
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
    /// (`http://127.0.0.1:PORT`), adding nothing but the counters.
    pub async fn start(upstream: &str) -> FaultProxy {
        Self::start_with(upstream, ProxyBehaviour::default()).await
    }

    /// Like [`start`](Self::start), with EC2's `behaviour` from the first
    /// request on.
    pub async fn start_with(upstream: &str, behaviour: ProxyBehaviour) -> FaultProxy {
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
        let proxy = FaultProxy {
            url,
            state,
            seq,
            task,
        };
        proxy.set_behaviour(behaviour);
        proxy
    }

    /// Replaces the fault rules (empty: forward everything).
    pub fn set_rules(&self, rules: Vec<Rule>) {
        self.state.lock().unwrap().rules = rules;
    }

    /// Switches EC2's behaviours. Changing the quota sizes refills every
    /// bucket; keeping them keeps the buckets' levels.
    pub fn set_behaviour(&self, behaviour: ProxyBehaviour) {
        let mut s = self.state.lock().unwrap();
        if s.quotas.as_ref().map(Quotas::config) != behaviour.quotas {
            s.quotas = behaviour.quotas.map(Quotas::new);
        }
        s.behaviour = behaviour;
    }

    pub fn behaviour(&self) -> ProxyBehaviour {
        self.state.lock().unwrap().behaviour.clone()
    }

    /// Everything counted so far.
    pub fn stats(&self) -> ProxyStats {
        self.state.lock().unwrap().stats.clone()
    }

    /// Requests seen per EC2 action (forwarded, faulted or answered here).
    pub fn calls(&self) -> BTreeMap<String, u64> {
        self.stats().calls
    }

    /// Requests of `action` signed with access key id `key`.
    pub fn calls_by(&self, key: &str, action: &str) -> u64 {
        let stats = self.stats();
        stats
            .calls_by_key
            .get(&format!("{key}/{action}"))
            .copied()
            .unwrap_or(0)
    }

    /// Faults injected per EC2 action.
    pub fn faults(&self) -> BTreeMap<String, u64> {
        self.stats().faults
    }

    /// `RequestLimitExceeded` answered by the quota switch, per action.
    pub fn throttled(&self) -> BTreeMap<String, u64> {
        self.stats().throttled
    }

    /// Instances moto launched through this proxy.
    pub fn instances_launched(&self) -> u64 {
        self.stats().instances_launched
    }

    pub fn total_calls(&self) -> u64 {
        self.calls().values().sum()
    }

    /// Holds the next request of `action` for which `matches` is true (after
    /// the fault rules, before everything else) until the returned handle
    /// releases it or is dropped.
    pub fn hold_next(&self, action: &'static str, matches: fn(&Ec2Request) -> bool) -> Held {
        let (pending, held) = hold::hold(action, matches);
        self.state.lock().unwrap().holds.push(pending);
        held
    }

    /// Instances that report `shutting-down` now.
    pub fn shutting_down(&self) -> usize {
        self.state
            .lock()
            .unwrap()
            .shutting_down
            .count(Instant::now())
    }

    /// Zeroes the counters (not the tokens, buckets or consistency windows).
    pub fn reset_counts(&self) {
        self.state.lock().unwrap().stats = ProxyStats::default();
        self.seq.store(0, Ordering::SeqCst);
    }
}

/// A fixed bijective mix of a request number (splitmix64's finalizer).
fn scramble(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d049bb133111eb);
    x ^ (x >> 31)
}

fn throttled() -> Response {
    Response::ec2_error(
        503,
        "Service Unavailable",
        "RequestLimitExceeded",
        "Request limit exceeded.",
    )
}

async fn serve(
    mut conn: TcpStream,
    upstream: &str,
    state: &Mutex<State>,
    seq: &AtomicU64,
) -> std::io::Result<()> {
    while let Some(request) = read_request(&mut conn).await? {
        let ec2 = Ec2Request::parse(&request);
        let n = seq.fetch_add(1, Ordering::SeqCst) + 1;
        let fault = {
            let mut s = state.lock().unwrap();
            let key = format!("{}/{}", ec2.scope.access_key, ec2.action);
            ProxyStats::count(&mut s.stats.calls_by_key, &key);
            s.fault_for(&ec2.action, n)
        };
        let response = match fault {
            Some(Fault::Throttle) => throttled(),
            Some(Fault::ServerError) => Response::ec2_error(
                500,
                "Internal Server Error",
                "InternalError",
                "An internal error has occurred.",
            ),
            Some(Fault::Error(status, code)) => {
                Response::ec2_error(status, "Error", code, &format!("Injected {code}"))
            }
            Some(Fault::Reset) => return reset(conn),
            Some(Fault::Hold(d)) => {
                tokio::time::sleep(d).await;
                return reset(conn);
            }
            Some(Fault::LoseResponse) => {
                answer(upstream, &request, &ec2, state).await?;
                return reset(conn);
            }
            Some(Fault::Delay(d)) => {
                tokio::time::sleep(d).await;
                answer(upstream, &request, &ec2, state).await?
            }
            None => answer(upstream, &request, &ec2, state).await?,
        };
        conn.write_all(&response.to_bytes()).await?;
    }
    Ok(())
}

/// Drops the connection so that the peer sees a reset.
fn reset(conn: TcpStream) -> std::io::Result<()> {
    // Deprecated because linger 0 blocks nothing here: it is exactly how
    // to make the peer see a reset.
    #[allow(deprecated)]
    conn.set_linger(Some(Duration::ZERO))?;
    Ok(()) // dropped with linger 0
}

/// EC2's answer to a request the fault rules let through.
async fn answer(
    upstream: &str,
    request: &Request,
    ec2: &Ec2Request,
    state: &Mutex<State>,
) -> std::io::Result<Response> {
    let held = {
        let mut s = state.lock().unwrap();
        let at = s.holds.iter().position(|h| h.matches(ec2));
        at.map(|i| s.holds.remove(i))
    };
    if let Some(held) = held {
        held.wait().await;
    }
    let client_tokens = {
        let mut s = state.lock().unwrap();
        if let Some(early) = s.answer_here(ec2, Instant::now()) {
            return Ok(early);
        }
        s.behaviour.client_tokens
    };
    let token = ec2
        .param("ClientToken")
        .filter(|_| client_tokens && ec2.action == "RunInstances");
    let Some(token) = token else {
        return forward_and_learn(upstream, request, ec2, state).await;
    };
    let slot = state.lock().unwrap().tokens.slot(&ec2.scope, token);
    // Held until this attempt is answered: a concurrent repeat waits and
    // then sees its outcome.
    let mut launch = slot.lock().await;
    let params = ec2.idempotency_params();
    if let Some(launch) = launch.as_ref() {
        let (repeat, response) = launch.answer(&params);
        let mut s = state.lock().unwrap();
        match repeat {
            Repeat::Replayed => s.stats.client_token_replays += 1,
            Repeat::Mismatch => s.stats.client_token_mismatches += 1,
        }
        return Ok(response);
    }
    let response = forward_and_learn(upstream, request, ec2, state).await?;
    if response.is_success() {
        *launch = Some(Launch::new(params, response.clone()));
    }
    Ok(response)
}

async fn forward_and_learn(
    upstream: &str,
    request: &Request,
    ec2: &Ec2Request,
    state: &Mutex<State>,
) -> std::io::Result<Response> {
    let at_most = state.lock().unwrap().behaviour.launch_at_most;
    let partial = (ec2.action == "RunInstances")
        .then(|| partial::launch_count(request, at_most))
        .flatten();
    let response = forward(upstream, partial.as_ref().unwrap_or(request)).await?;
    let now = Instant::now();
    let mut s = state.lock().unwrap();
    let response = s.learn(ec2, response, now);
    Ok(match s.behaviour.shutting_down {
        Some(lasts) => s.shutting_down.view(ec2, response, now + lasts, now),
        None => response,
    })
}

impl State {
    /// Counts the request and picks the fault the rules inject, if any.
    fn fault_for(&mut self, action: &str, n: u64) -> Option<Fault> {
        let of_action = ProxyStats::count(&mut self.stats.calls, action);
        let fault = self
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
            ProxyStats::count(&mut self.stats.faults, action);
        }
        fault
    }

    /// The answer EC2 would give without doing anything: throttled, or
    /// naming instances it does not know yet.
    fn answer_here(&mut self, ec2: &Ec2Request, now: Instant) -> Option<Response> {
        if let Some(quotas) = self.quotas.as_mut()
            && !quotas.admit(ec2, now)
        {
            ProxyStats::count(&mut self.stats.throttled, &ec2.action);
            return Some(throttled());
        }
        if self.behaviour.consistency_window.is_some() {
            let unknown = self.unseen.unknown(&ec2.named_instances(), now);
            if !unknown.is_empty() {
                self.stats.unseen_not_found += 1;
                return Some(not_found(&unknown));
            }
        }
        None
    }

    /// Learns from moto's `response` what was launched, and takes out of it
    /// what EC2 would not show yet.
    fn learn(&mut self, ec2: &Ec2Request, response: Response, now: Instant) -> Response {
        if !response.is_success() {
            return response;
        }
        match ec2.action.as_str() {
            "RunInstances" => {
                let Some(ids) = xml::launched_instances(&response.body_text()) else {
                    eprintln!("fault proxy: no instance IDs found in a RunInstances response");
                    return response;
                };
                self.stats.instances_launched += ids.len() as u64;
                if let Some(window) = self.behaviour.consistency_window {
                    self.unseen.prune(now);
                    self.unseen.launched(&ids, now + window);
                }
                response
            }
            "DescribeInstances" if self.behaviour.consistency_window.is_some() => {
                let body = response.body_text();
                match xml::without_instances(&body, |id| self.unseen.is_unseen(id, now)) {
                    Some((_, 0)) => response,
                    Some((body, hidden)) => {
                        self.stats.unseen_hidden += hidden as u64;
                        response.with_body(body)
                    }
                    None => {
                        eprintln!("fault proxy: cannot read a DescribeInstances response");
                        response
                    }
                }
            }
            _ => response,
        }
    }
}
