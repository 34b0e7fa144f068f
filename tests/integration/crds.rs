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

/// Fields at every depth, including fields inside optional objects and list
/// items (which lose their schema in OpenAPI v2 when marked nullable), with a
/// phrase of their doc comment.
const EXPLAINED: &[(&str, &str)] = &[
    ("machineclass.providerSpec.machineType", "instance type"),
    (
        "machineclass.providerSpec.cpuOptions.coreCount",
        "number of cpu cores",
    ),
    (
        "machineclass.providerSpec.placement.hostId",
        "dedicated host",
    ),
    (
        "machineclass.providerSpec.blockDevices.ebs.iops",
        "provisioned i/o",
    ),
    (
        "machineclass.providerSpec.instanceMetadataOptions.httpTokens",
        "imdsv2",
    ),
    (
        "machine.spec.class.name",
        "name of the referenced machineclass",
    ),
];

#[tokio::test]
async fn kubectl_explain_shows_the_doc_comments() {
    let client = env().client().await;
    install_crds(&client).await;
    for (path, phrase) in EXPLAINED {
        // The OpenAPI document is published a moment after the CRD is established.
        let mut last = String::new();
        let mut shown = false;
        for _ in 0..50 {
            let (ok, out, err) = env().kubectl_run(&["explain", path]);
            if ok && out.to_lowercase().contains(phrase) {
                shown = true;
                break;
            }
            last = format!("{out}{err}");
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        assert!(
            shown,
            "kubectl explain {path} did not show the field's documentation:\n{last}"
        );
    }
}

/// Why the schemas carry no `nullable`: the OpenAPI v2 document, which API
/// servers still publish for older clients, turns every nullable field into an
/// untyped value without properties. Without the flag, optional objects keep
/// their fields there too.
#[tokio::test]
async fn openapi_v2_keeps_the_fields_of_optional_objects() {
    let client = env().client().await;
    install_crds(&client).await;
    let mut last = serde_json::Value::Null;
    for _ in 0..50 {
        let (ok, out, err) = env().kubectl_run(&["get", "--raw", "/openapi/v2"]);
        assert!(ok, "{err}");
        let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
        let spec = &doc["definitions"]["io.sapcloud.machine.v1alpha1.MachineClass"]["properties"]["providerSpec"];
        if !spec.is_null() {
            let cpu = &spec["properties"]["cpuOptions"];
            assert_eq!(cpu["type"], "object", "cpuOptions: {cpu}");
            assert_eq!(cpu["properties"]["coreCount"]["type"], "integer", "{cpu}");
            return;
        }
        last = doc["definitions"]
            .as_object()
            .map(|d| {
                d.keys()
                    .filter(|k| k.contains("sapcloud"))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    panic!("MachineClass is not in /openapi/v2; sapcloud definitions: {last}");
}
