//! Requests the operator sends to the Kubernetes API servers, counted by
//! cluster, verb and resource (`mcm_kube_requests_total`).
//!
//! A tower layer on each kube client counts every request once, before
//! kube's own retries. The verb is the name kube gives the call (`get`,
//! `list`, `watch`, `patch`, `patch_status`, ...; requests built by hand name
//! theirs the same way, e.g. `evict`), the resource is read from the path
//! (`machines`, `machines/status`, `pods/eviction`, `nodes`): both come from
//! small fixed sets, never object names. It is how an SRE — and the
//! benchmarks — see what a waiting machine costs the API server.

use http::Request;
use kube::client::Body;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tower::util::MapRequestLayer;

/// Labels: `cluster` (control or target), `verb`, `resource`.
pub type KubeRequestLabels = [(&'static str, String); 3];

/// The counter family behind `mcm_kube_requests_total`.
pub type KubeRequests = Family<KubeRequestLabels, Counter>;

/// The layer that counts the requests of one client under `cluster`.
pub fn counting_layer(
    requests: KubeRequests,
    cluster: &'static str,
) -> MapRequestLayer<impl Fn(Request<Body>) -> Request<Body> + Clone> {
    MapRequestLayer::new(move |req: Request<Body>| {
        let verb = req
            .extensions()
            .get::<&'static str>()
            .copied()
            .unwrap_or_else(|| verb_of_method(req.method()));
        requests
            .get_or_create(&[
                ("cluster", cluster.to_string()),
                ("verb", verb.to_string()),
                ("resource", resource_of(req.uri().path())),
            ])
            .inc();
        req
    })
}

/// Whether `verb` changes something (what a "write" is in the docs).
pub fn is_write(verb: &str) -> bool {
    !matches!(
        verb,
        "get" | "get_metadata" | "list" | "list_metadata" | "watch" | "watch_metadata"
    )
}

/// For requests kube did not name: the verb an HTTP method stands for.
fn verb_of_method(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "get",
        http::Method::POST => "create",
        http::Method::PUT => "replace",
        http::Method::PATCH => "patch",
        http::Method::DELETE => "delete",
        _ => "other",
    }
}

/// The resource (and subresource) a request path names:
/// `/api/v1/namespaces/ns/pods/p/eviction` → `pods/eviction`,
/// `/apis/machine.sapcloud.io/v1alpha1/namespaces/ns/machines` → `machines`,
/// `/api/v1/nodes/n` → `nodes`, `/version` → `version`.
pub fn resource_of(path: &str) -> String {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let rest = match segments.as_slice() {
        ["api", _version, rest @ ..] => rest,
        ["apis", _group, _version, rest @ ..] => rest,
        other => return other.first().copied().unwrap_or("").to_string(),
    };
    let rest = match rest {
        ["namespaces", _ns, tail @ ..] if !tail.is_empty() => tail,
        other => other,
    };
    match rest {
        [resource, _name, sub, ..] => format!("{resource}/{sub}"),
        [resource, ..] => resource.to_string(),
        [] => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_come_from_the_path_without_names() {
        for (path, want) in [
            ("/api/v1/namespaces/ns/pods/p/eviction", "pods/eviction"),
            ("/api/v1/namespaces/ns/pods", "pods"),
            (
                "/apis/machine.sapcloud.io/v1alpha1/namespaces/ns/machines/m/status",
                "machines/status",
            ),
            ("/apis/machine.sapcloud.io/v1alpha1/machines", "machines"),
            ("/api/v1/nodes/ip-10-0-0-1", "nodes"),
            ("/api/v1/namespaces/ns", "namespaces"),
            ("/api/v1/namespaces", "namespaces"),
            ("/version", "version"),
        ] {
            assert_eq!(resource_of(path), want, "{path}");
        }
    }

    #[tokio::test]
    async fn requests_are_counted_by_verb_and_resource() {
        use tower::{Layer, Service, ServiceExt};
        let requests = KubeRequests::default();
        let layer = counting_layer(requests.clone(), "target");
        let mut svc = layer.layer(tower::service_fn(|_req: Request<Body>| async {
            Ok::<_, std::convert::Infallible>(())
        }));
        let mut named = Request::patch("/api/v1/nodes/n")
            .body(Body::from(Vec::new()))
            .unwrap();
        named.extensions_mut().insert("patch");
        let unnamed = Request::post("/api/v1/namespaces/ns/pods/p/eviction")
            .body(Body::from(Vec::new()))
            .unwrap();
        svc.ready().await.unwrap().call(named).await.unwrap();
        svc.ready().await.unwrap().call(unnamed).await.unwrap();
        let count = |verb: &str, resource: &str| {
            requests
                .get_or_create(&[
                    ("cluster", "target".to_string()),
                    ("verb", verb.to_string()),
                    ("resource", resource.to_string()),
                ])
                .get()
        };
        assert_eq!(count("patch", "nodes"), 1);
        assert_eq!(count("create", "pods/eviction"), 1);
        assert!(is_write("patch_status") && !is_write("list"));
    }
}
