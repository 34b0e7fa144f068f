//! Secrets stay secret: a whole lifecycle with distinctive keys and a user
//! data holding tokens, the operator logging everything at debug level,
//! leaves none of them in its log, in any Event of the namespace, or in the
//! status of any Machine or MachineClass.

use std::time::Duration;

use base64::Engine as _;
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, DeleteParams, ListParams};
use mcm_provider_aws::api::machine_class::MachineClass;
use mcm_provider_aws::api::shared::MachinePhase;
use serde_json::json;

use crate::support::scenario::{CLASS, Scenario, Setup};

const MINUTE: Duration = Duration::from_secs(60);
/// An access key ID of the shape AWS issues, unique to this test.
const KEY_ID: &str = "AKIAMCMLEAKCHECK0042";
const SECRET_KEY: &str = "mcmLeakCheck/Secret+Key0042xQz9vT7pR3wN5sL";
/// A bearer token and a kubeadm bootstrap token (`[a-z0-9]{6}.[a-z0-9]{16}`).
const API_TOKEN: &str = "ghp_mcmLeakCheckToken0042abcdef0123456789";
const BOOTSTRAP_TOKEN: &str = "q7w2e9.mcmleakcheck0tok";

#[tokio::test]
async fn keys_and_user_data_never_reach_logs_events_or_status() {
    let user_data = format!(
        "#!/bin/bash\nexport GITHUB_TOKEN={API_TOKEN}\n\
         kubeadm join 10.0.0.1:6443 --token {BOOTSTRAP_TOKEN} --discovery-token-unsafe-skip-ca-verification\n"
    );
    let s = Scenario::start_setup(
        "secrets",
        Setup {
            secret: Some(json!({
                "providerAccessKeyId": KEY_ID,
                "providerSecretAccessKey": SECRET_KEY,
                "userData": user_data,
            })),
            env: vec![("RUST_LOG".into(), "debug".into())],
            ..Setup::default()
        },
    )
    .await;
    s.create_machine("m1").await;
    s.wait_phase("m1", MachinePhase::Running, 2 * MINUTE).await;
    // A change of the user data rolls nothing here (no set), but is
    // reconciled with the new Secret data; a tag edit goes through EC2.
    s.apply_class(CLASS, |c| {
        c["providerSpec"]["tags"]["team"] = json!("edited")
    })
    .await;
    s.wait_event("m1", "Normal TagsUpdated", "team").await;

    // Everything an operator, a `kubectl get -o yaml` or a log shipper sees.
    let machines = s.machines().list(&ListParams::default()).await.unwrap();
    let statuses: Vec<String> = machines
        .items
        .iter()
        .map(|m| serde_json::to_string(&m.status).unwrap())
        .collect();
    let classes = Api::<MachineClass>::namespaced(s.client.clone(), &s.ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    let class_objects: Vec<String> = classes
        .items
        .iter()
        .map(|c| serde_json::to_string(c).unwrap())
        .collect();
    s.machines()
        .delete("m1", &DeleteParams::default())
        .await
        .unwrap();
    s.wait_gone("m1", 2 * MINUTE).await;
    let events: Vec<String> = Api::<Event>::namespaced(s.client.clone(), &s.ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|e| serde_json::to_string(e).unwrap())
        .collect();
    let log = s.op.log();
    assert!(
        log.contains(" DEBUG "),
        "the operator logged at debug level:\n{log}"
    );
    assert!(events.len() >= 3, "Events were written: {events:?}");

    let b64 = base64::engine::general_purpose::STANDARD;
    let secrets = [
        KEY_ID.to_string(),
        SECRET_KEY.to_string(),
        API_TOKEN.to_string(),
        BOOTSTRAP_TOKEN.to_string(),
        // RunInstances carries the user data base64-encoded.
        b64.encode(&user_data),
        b64.encode(SECRET_KEY),
    ];
    let places = [
        ("the operator's log", vec![log]),
        ("Events of the namespace", events),
        ("Machine status", statuses),
        ("MachineClasses", class_objects),
    ];
    for (place, texts) in &places {
        for text in texts {
            for secret in &secrets {
                assert!(
                    !text.contains(secret.as_str()),
                    "{place} contain {secret:?}:\n{text}"
                );
            }
        }
    }
}
