//! Bad configuration is reported (status condition, lastOperation, Warning
//! Event) and fixing it recovers; classes and Secrets in use are protected;
//! instances without a Machine are collected.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams};
use mcm_provider_aws::api::machine_class::MachineClass;
use mcm_provider_aws::api::shared::MachinePhase;
use mcm_provider_aws::aws::tags::MACHINE_NAME_TAG;
use serde_json::json;

use crate::support::ec2::{self, is_live};
use crate::support::scenario::{CLASS, SECRET, Scenario};
use crate::support::wait::eventually_or;

const MINUTE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn invalid_class_is_reported_and_fixing_it_recovers() {
    let s = Scenario::start("invalid").await;
    // Passes the schema, fails validation: no role tag.
    s.apply_class(CLASS, |c| {
        c["providerSpec"]["tags"] = json!({format!("kubernetes.io/cluster/{}", s.ns): "1"});
    })
    .await;
    s.create_machine("m1").await;
    let m = s.wait_description("m1", "kubernetes.io/role/").await;
    let status = m.status.unwrap();
    assert_eq!(
        status.last_operation.error_code.as_deref(),
        Some("InvalidArgument")
    );
    let cond = status
        .conditions
        .iter()
        .find(|c| c.text.type_ == "MachineConfigurationValid")
        .expect("configuration condition");
    assert_eq!(cond.text.status, "False");
    assert!(
        cond.text
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("providerSpec.tags"),
        "{cond:?}"
    );
    // The Event follows the status write: waited for, not read once.
    s.wait_event("m1", "Warning InvalidConfiguration", "providerSpec.tags")
        .await;
    assert!(
        s.live_instances().await.is_empty(),
        "nothing launched for an invalid class"
    );

    s.apply_class(CLASS, |_| {}).await;
    let m = s.wait_phase("m1", MachinePhase::Running, 2 * MINUTE).await;
    let cond = m
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.text.type_ == "MachineConfigurationValid")
        .unwrap();
    assert_eq!(cond.text.status, "True");
}

#[tokio::test]
async fn unknown_ami_fails_fast_with_the_aws_message_and_recovers() {
    let s = Scenario::start("ami").await;
    s.apply_class(CLASS, |c| {
        c["providerSpec"]["ami"] = json!("ami-00000000000000bad")
    })
    .await;
    s.create_machine("m1").await;
    let m = s.wait_description("m1", "InvalidAMIID").await;
    assert_eq!(
        m.status.unwrap().last_operation.error_code.as_deref(),
        Some("InvalidArgument")
    );
    assert!(s.live_instances().await.is_empty());
    s.apply_class(CLASS, |_| {}).await;
    s.wait_phase("m1", MachinePhase::Running, 2 * MINUTE).await;
}

#[tokio::test]
async fn class_and_secret_in_use_cannot_disappear() {
    let s = Scenario::start("protect").await;
    s.create_machine("m1").await;
    s.wait_phase("m1", MachinePhase::Running, 2 * MINUTE).await;
    let classes = Api::<MachineClass>::namespaced(s.client.clone(), &s.ns);
    let secrets = Api::<Secret>::namespaced(s.client.clone(), &s.ns);
    eventually_or(
        "finalizers on the class and its secret",
        MINUTE,
        || async {
            let c = classes.get(CLASS).await.ok()?;
            let sec = secrets.get(SECRET).await.ok()?;
            (c.finalizers()
                .iter()
                .any(|f| f == "machine.sapcloud.io/machine-controller-manager")
                && sec
                    .finalizers()
                    .iter()
                    .any(|f| f == "machine.sapcloud.io/machine-controller"))
            .then_some(())
        },
        || s.op.log(),
    )
    .await;

    classes
        .delete(CLASS, &DeleteParams::default())
        .await
        .unwrap();
    secrets
        .delete(SECRET, &DeleteParams::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let c = classes
        .get(CLASS)
        .await
        .expect("class still there while in use");
    assert!(c.metadata.deletion_timestamp.is_some());
    assert!(
        secrets.get(SECRET).await.is_ok(),
        "secret still there while in use"
    );

    // The machine can still be deleted (its credentials are still readable),
    // and then class and secret go away.
    s.machines()
        .delete("m1", &DeleteParams::default())
        .await
        .unwrap();
    s.wait_gone("m1", 2 * MINUTE).await;
    eventually_or(
        "class and secret to be released",
        MINUTE,
        || async {
            let c = classes.get_opt(CLASS).await.ok()?;
            let sec = secrets.get_opt(SECRET).await.ok()?;
            (c.is_none() && sec.is_none()).then_some(())
        },
        || s.op.log(),
    )
    .await;
    assert!(s.live_instances().await.is_empty());
}

#[tokio::test]
async fn orphaned_instances_are_terminated_and_others_left_alone() {
    let s = Scenario::start("orphans").await;
    s.create_machine("keep").await;
    s.wait_phase("keep", MachinePhase::Running, 2 * MINUTE)
        .await;

    let cluster = (format!("kubernetes.io/cluster/{}", s.ns), "1".to_string());
    let role = ("kubernetes.io/role/node".to_string(), "1".to_string());
    let ours = (MACHINE_NAME_TAG.to_string(), format!("{}/ghost", s.ns));
    let orphan = s
        .run_tagged_instance(vec![cluster.clone(), role.clone(), ours.clone()])
        .await;
    let no_role = s
        .run_tagged_instance(vec![cluster.clone(), ours.clone()])
        .await;
    let untagged = s.run_tagged_instance(vec![ours]).await;

    eventually_or(
        "the orphan to be terminated",
        MINUTE,
        || async {
            let all = ec2::instances_of_namespace(&s.ec2, &s.ns).await;
            let gone = all
                .iter()
                .any(|i| i.instance_id() == Some(orphan.as_str()) && !is_live(i));
            gone.then_some(())
        },
        || s.op.log(),
    )
    .await;
    let live = s.live_instance_ids().await;
    assert!(
        live.contains(&no_role),
        "an instance without the role tag is not ours to collect"
    );
    assert!(
        live.contains(&untagged),
        "an instance without cluster tags is never touched"
    );
    assert_eq!(live.len(), 3, "the machine's own instance stays: {live:?}");
    let m = s.machines().get("keep").await.unwrap();
    assert_eq!(m.phase(), Some(MachinePhase::Running));
}

#[tokio::test]
async fn web_identity_credentials_are_exchanged_through_sts() {
    let s = Scenario::start("irsa").await;
    // What IRSA gives a pod: a projected token file and a role ARN.
    let token = std::path::Path::new(crate::support::env().var("MCM_TEST_DIR"))
        .join(format!("token-{}", s.ns));
    std::fs::write(
        &token,
        "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6bWNtIn0.c2ln",
    )
    .unwrap();
    use base64::Engine as _;
    let b64 = |v: &str| base64::engine::general_purpose::STANDARD.encode(v);
    // Merge patch: null removes the static keys, so only the web identity is left.
    let secret = json!({"data": {
        "workloadIdentityTokenFile": b64(&token.display().to_string()),
        "roleARN": b64("arn:aws:iam::123456789012:role/mcm-provider-aws"),
        "providerAccessKeyId": null,
        "providerSecretAccessKey": null,
    }});
    let secrets = Api::<Secret>::namespaced(s.client.clone(), &s.ns);
    let patched = secrets
        .patch(
            SECRET,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&secret),
        )
        .await
        .unwrap();
    let keys: Vec<_> = patched.data.unwrap_or_default().into_keys().collect();
    assert_eq!(keys, ["roleARN", "userData", "workloadIdentityTokenFile"]);
    s.create_machine("w1").await;
    s.wait_phase("w1", MachinePhase::Running, 2 * MINUTE).await;
    let log = s.op.log();
    assert!(
        !log.contains("eyJhbGciOiJSUzI1NiJ9"),
        "the token never reaches the logs"
    );
}
