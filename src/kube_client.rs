//! The Kubernetes client stack: kube's default one, with hyper's HTTP/1
//! read buffer capped.
//!
//! hyper grows a connection's read buffer while reads fill it, up to about
//! 400 KB, and keeps it for the connection's life. Every watch holds a
//! connection of its own and large lists pass through the pooled ones, so
//! at 10,000 Machines the operator held ~3.3 MB of read buffers (heap
//! profile) that never hold more than one read at a time. kube's
//! `ClientBuilder` has no setting for it, so [`build`] assembles what
//! `ClientBuilder::try_from(Config)` does — the kubeconfig's TLS (rustls),
//! the connect/read/write timeouts, the base URI, authentication (tokens,
//! exec plugins, their refresh), the extra headers, kube's retry of
//! throttled answers when `config.default_retry` is set, and an HTTP trace
//! span at debug level — on a hyper client whose buffers stop at
//! [`READ_BUFFER_MAX`].
//!
//! Not carried over: HTTP proxies (kube needs its `socks5`/`http-proxy`
//! features for them, which the operator does not build, so a proxy in the
//! kubeconfig was refused before too — and still is, see [`build`]), gzip
//! (not built either), and the expiry of exec-plugin client certificates
//! (kube only reports it; the operator never read it).

use hyper_timeout::TimeoutConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::client::ConfigExt;
use kube::client::retry::RetryPolicy;
use kube::{Client, Config};
use tower::retry::RetryLayer;
use tower::{BoxError, ServiceBuilder};
use tower_http::trace::TraceLayer;

use crate::kube_metrics::{KubeRequests, counting_layer};

/// The most a connection's read buffer grows to. Reads of a large list or a
/// busy watch take more of them, at 32 KB each (a syscall per 32 KB costs
/// nothing next to the JSON decoding of it); response heads must fit, which
/// the API server's do many times over. hyper's floor is 8 KB.
pub const READ_BUFFER_MAX: usize = 32 * 1024;

/// A kube client for `config`, its requests counted under `cluster` in
/// `requests` (`mcm_kube_requests_total`) before anything else sees them.
/// rustls's crypto provider must be installed first (`main` does, for kube
/// and the AWS SDK alike).
pub fn build(
    config: Config,
    requests: KubeRequests,
    cluster: &'static str,
) -> Result<Client, String> {
    if let Some(proxy) = &config.proxy_url {
        return Err(format!(
            "Kubernetes client: proxy {proxy} in the kubeconfig is not supported"
        ));
    }
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    let tls = config
        .rustls_https_connector_with_connector(http)
        .map_err(|e| format!("Kubernetes client TLS: {e}"))?;
    let mut connector = TimeoutConnector::new(tls);
    connector.set_connect_timeout(config.connect_timeout);
    connector.set_read_timeout(config.read_timeout);
    connector.set_write_timeout(config.write_timeout);
    connector.set_reset_reader_on_write(config.reset_reader_on_write);
    let hyper = HyperClient::builder(TokioExecutor::new())
        .http1_max_buf_size(READ_BUFFER_MAX)
        .build(connector);

    let auth = config
        .auth_layer()
        .map_err(|e| format!("Kubernetes client authentication: {e}"))?;
    let headers = config
        .extra_headers_layer()
        .map_err(|e| format!("Kubernetes client headers: {e}"))?;
    let service = ServiceBuilder::new()
        .layer(counting_layer(requests, cluster))
        .layer(config.base_uri_layer())
        .option_layer(
            config
                .default_retry
                .then(|| RetryLayer::new(RetryPolicy::server_retry())),
        )
        .option_layer(auth)
        .layer(headers)
        .layer(TraceLayer::new_for_http())
        .map_err(BoxError::from)
        .service(hyper);
    Ok(Client::new(service, config.default_namespace))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_is_above_hypers_floor() {
        const { assert!(READ_BUFFER_MAX >= 8192) };
    }

    #[test]
    fn a_proxy_in_the_kubeconfig_is_refused_by_name() {
        let mut config = Config::new("https://127.0.0.1:6443".parse().unwrap());
        config.proxy_url = Some("http://proxy.example:3128".parse().unwrap());
        let Err(err) = build(config, KubeRequests::default(), "control") else {
            panic!("a proxy was accepted");
        };
        assert!(err.contains("proxy http://proxy.example:3128/"), "{err}");
    }
}
