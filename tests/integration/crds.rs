//! The generated CRDs are accepted by a real API server as structural schemas
//! and their documentation reaches `kubectl explain`.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::Api;

use crate::support::{env, install_crds};

#[tokio::test]
async fn generated_crds_are_established_and_structural() {
    let client = env().client().await;
    install_crds(&client).await;
    let api = Api::<CustomResourceDefinition>::all(client);
    for crd in mcm_provider_aws::api::crd::all() {
        let name = crd.metadata.name.unwrap();
        let live = api.get(&name).await.expect("CRD is stored");
        let conditions = live.status.and_then(|s| s.conditions).unwrap_or_default();
        let status_of = |t: &str| {
            conditions
                .iter()
                .find(|c| c.type_ == t)
                .map(|c| c.status.clone())
        };
        assert_eq!(status_of("Established").as_deref(), Some("True"), "{name}");
        assert_eq!(
            status_of("NamesAccepted").as_deref(),
            Some("True"),
            "{name}"
        );
        assert_ne!(
            status_of("NonStructuralSchema").as_deref(),
            Some("True"),
            "{name} has a non-structural schema: {conditions:?}"
        );
    }
}

#[tokio::test]
async fn kubectl_explain_shows_the_doc_comments() {
    let client = env().client().await;
    install_crds(&client).await;
    // The OpenAPI document is published a moment after the CRD is established.
    let mut last = String::new();
    for _ in 0..50 {
        let (ok, out, err) =
            env().kubectl_run(&["explain", "machineclass.providerSpec.machineType"]);
        if ok && out.to_lowercase().contains("instance type") {
            return;
        }
        last = format!("{out}{err}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    panic!("kubectl explain did not show the field's documentation:\n{last}");
}
