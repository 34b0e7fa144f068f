//! The operator's HTTP endpoints: `/metrics` on the metrics address,
//! `/livez` and `/readyz` on the health address (one listener serves all
//! three when both addresses are the same). Plain HTTP, no authentication:
//! the chart exposes the metrics port through a ClusterIP Service only.
//!
//! Addresses are given as `host:port`, `:port` (all interfaces) or `0`
//! (disabled); port 0 picks a free port, which is logged — the integration
//! tests run many operators side by side that way.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::health::Health;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// Parses a bind address flag: `0` disables the endpoint, `:8080` means
/// every interface, `localhost:8080` the IPv4 loopback.
pub fn parse_bind_address(s: &str) -> Result<Option<SocketAddr>, String> {
    let s = s.trim();
    if s == "0" || s.is_empty() {
        return Ok(None);
    }
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} is not host:port, :port or 0"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{s:?}: {port:?} is not a port number"))?;
    let ip = match host.trim_start_matches('[').trim_end_matches(']') {
        "" => Ipv4Addr::UNSPECIFIED.into(),
        "localhost" => Ipv4Addr::LOCALHOST.into(),
        ip => ip
            .parse()
            .map_err(|_| format!("{s:?}: {host:?} is not an IP address"))?,
    };
    Ok(Some(SocketAddr::new(ip, port)))
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    health: Health,
}

/// The bound listeners; [`Endpoints::serve`] runs them.
pub struct Endpoints {
    servers: Vec<(TcpListener, Router)>,
}

impl Endpoints {
    /// Binds the metrics and health listeners (before anything else
    /// starts, so that a taken port fails the process at once).
    pub async fn bind(
        metrics_addr: Option<SocketAddr>,
        health_addr: Option<SocketAddr>,
        metrics: Arc<Metrics>,
        health: Health,
    ) -> std::io::Result<Endpoints> {
        let state = AppState { metrics, health };
        let metrics_routes = Router::new().route("/metrics", get(serve_metrics));
        let health_routes = Router::new()
            .route("/livez", get(livez))
            .route("/healthz", get(livez))
            .route("/readyz", get(readyz));
        let mut servers = Vec::new();
        match (metrics_addr, health_addr) {
            (Some(m), Some(h)) if m == h => {
                let router = metrics_routes.merge(health_routes).with_state(state);
                servers.push((listen(m, "metrics and health probes").await?, router));
            }
            (m, h) => {
                if let Some(m) = m {
                    let router = metrics_routes.with_state(state.clone());
                    servers.push((listen(m, "metrics").await?, router));
                }
                if let Some(h) = h {
                    let router = health_routes.with_state(state);
                    servers.push((listen(h, "health probes").await?, router));
                }
            }
        }
        Ok(Endpoints { servers })
    }

    /// The addresses actually bound (port 0 resolved).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.servers
            .iter()
            .filter_map(|(l, _)| l.local_addr().ok())
            .collect()
    }

    /// Serves until `shutdown` is triggered, then lets requests in flight
    /// finish.
    pub async fn serve(self, shutdown: Shutdown) {
        let tasks = self.servers.into_iter().map(|(listener, router)| {
            let stop = shutdown.triggered();
            async move {
                if let Err(e) = axum::serve(listener, router)
                    .with_graceful_shutdown(stop)
                    .await
                {
                    warn!(error = %e, "HTTP server stopped");
                }
            }
        });
        futures::future::join_all(tasks).await;
    }
}

async fn listen(addr: SocketAddr, what: &'static str) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot serve {what} on {addr}: {e}"))
    })?;
    let bound = listener.local_addr()?;
    info!(address = %bound, "serving {what}");
    Ok(listener)
}

/// OpenMetrics when the scraper asks for it (Prometheus does), else the
/// classic text format.
async fn serve_metrics(State(state): State<AppState>, headers: HeaderMap) -> impl IntoResponse {
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    let (content_type, body) = state.metrics.encode(openmetrics);
    ([(header::CONTENT_TYPE, content_type)], body)
}

async fn livez() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let (ready, report) = state.health.readiness();
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::{CACHES, Check, EC2_CREDENTIALS, LEADER_ELECTION};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn bind_addresses_parse_like_controller_runtime() {
        assert_eq!(parse_bind_address("0"), Ok(None));
        assert_eq!(
            parse_bind_address(":8080"),
            Ok(Some("0.0.0.0:8080".parse().unwrap()))
        );
        assert_eq!(
            parse_bind_address("127.0.0.1:0"),
            Ok(Some("127.0.0.1:0".parse().unwrap()))
        );
        assert_eq!(
            parse_bind_address("localhost:9090"),
            Ok(Some("127.0.0.1:9090".parse().unwrap()))
        );
        assert_eq!(
            parse_bind_address("[::1]:8081"),
            Ok(Some("[::1]:8081".parse().unwrap()))
        );
        assert!(parse_bind_address("8080").is_err());
        assert!(parse_bind_address("example.com:80").is_err());
        assert!(parse_bind_address(":http").is_err());
    }

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn one_address_serves_everything_and_stops_on_shutdown() {
        let health = Health::new();
        let local = Some("127.0.0.1:0".parse().unwrap());
        let endpoints = Endpoints::bind(local, local, Arc::new(Metrics::new()), health.clone())
            .await
            .unwrap();
        let addrs = endpoints.local_addrs();
        assert_eq!(
            addrs.len(),
            1,
            "the same address is one listener: {addrs:?}"
        );
        let shutdown = Shutdown::new();
        let server = tokio::spawn(endpoints.serve(shutdown.clone()));
        let addr = addrs[0];

        assert!(get(addr, "/metrics").await.contains("mcm_build_info"));
        assert!(get(addr, "/livez").await.starts_with("HTTP/1.1 200"));
        let not_ready = get(addr, "/readyz").await;
        assert!(not_ready.starts_with("HTTP/1.1 503"), "{not_ready}");
        assert!(not_ready.contains("[-]caches pending"), "{not_ready}");
        for name in [LEADER_ELECTION, CACHES, EC2_CREDENTIALS] {
            health.set(name, Check::Passed("fine".into()));
        }
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));

        shutdown.trigger();
        tokio::time::timeout(std::time::Duration::from_secs(5), server)
            .await
            .expect("servers stop on shutdown")
            .unwrap();
    }

    #[tokio::test]
    async fn a_disabled_endpoint_is_not_served() {
        let local = Some("127.0.0.1:0".parse().unwrap());
        let endpoints = Endpoints::bind(local, None, Arc::new(Metrics::new()), Health::new())
            .await
            .unwrap();
        let addrs = endpoints.local_addrs();
        assert_eq!(addrs.len(), 1);
        let shutdown = Shutdown::new();
        let server = tokio::spawn(endpoints.serve(shutdown.clone()));
        assert!(get(addrs[0], "/metrics").await.starts_with("HTTP/1.1 200"));
        assert!(get(addrs[0], "/readyz").await.starts_with("HTTP/1.1 404"));
        shutdown.trigger();
        server.await.unwrap();
    }
}
