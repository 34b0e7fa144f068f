//! The shipped policy (`config/iam/policy.json`) on a moto that enforces
//! IAM ([`IamMoto`]): a whole lifecycle with nothing but the policy, and,
//! with single actions removed, the denial reported on the Machine.
//!
//! What moto 5.2.5 evaluates, found by [`what_moto_evaluates`]: the action
//! of each call against `Action`/`NotAction` and `Effect` (an explicit Deny
//! wins); nothing else. It authorizes every EC2 call against the resource
//! `*`, so a statement scoped to resource ARNs never allows anything; it
//! does not evaluate `Condition` blocks of identity policies (no
//! `aws:RequestTag`, `ec2:ResourceTag/...`, `ec2:CreateAction`, not even
//! `aws:username`); it never asks for `iam:PassRole` on RunInstances nor
//! for `ec2:CreateTags` for tags set at launch; `sts:GetCallerIdentity` is
//! always allowed (as in AWS). It answers a denied call `AccessDenied`
//! (HTTP 403) where EC2 says `UnauthorizedOperation`. The lifecycle tests
//! therefore run the shipped policy with every `Resource` set to `*`
//! ([`moto_projection`]; conditions kept, moto ignores them): they prove
//! the *actions* suffice and that each removed one is needed and reported;
//! the resource and condition scoping is checked by the unit tests in
//! `src/aws/iam_policy.rs` only.

use std::time::Duration;

use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{IamInstanceProfileSpecification, InstanceType};
use kube::ResourceExt;
use kube::api::DeleteParams;
use mcm_provider_aws::api::machine::NODE_LABEL;
use mcm_provider_aws::api::shared::{MachineOperationType, MachinePhase};
use mcm_provider_aws::aws::iam_policy::render;
use mcm_provider_aws::aws::tags::MACHINE_NAME_TAG;
use serde_json::{Value, json};

use crate::support::ec2::{self, client_at, is_live, tag};
use crate::support::iam::{ACCOUNT_ID, IamMoto, Keys};
use crate::support::kubelet::pod_on_node;
use crate::support::scenario::{CLASS, Cloud, Scenario, Setup};
use crate::support::wait::eventually_or;

const MINUTE: Duration = Duration::from_secs(60);
/// The IAM user whose keys the class's Secret holds.
const USER: &str = "mcm-machines";

/// The shipped policy for cluster `cluster` as moto can evaluate it: every
/// statement's `Resource` set to `*` (moto authorizes EC2 calls against
/// `*` only), conditions kept (moto ignores them), and the actions in
/// `without` removed.
fn moto_projection(cluster: &str, without: &[&str]) -> String {
    let mut doc: Value = serde_json::from_str(&render(ACCOUNT_ID, cluster)).unwrap();
    let statements = doc["Statement"].as_array_mut().unwrap();
    for s in statements.iter_mut() {
        s["Resource"] = json!("*");
        let actions: Vec<Value> = match &s["Action"] {
            Value::Array(list) => list.clone(),
            single => vec![single.clone()],
        };
        s["Action"] = Value::Array(
            actions
                .into_iter()
                .filter(|a| !without.iter().any(|w| a == w))
                .collect(),
        );
    }
    statements.retain(|s| !s["Action"].as_array().unwrap().is_empty());
    doc.to_string()
}

/// A scenario whose class Secret holds the keys of [`USER`], bound to the
/// shipped policy without `without`, on a moto of its own that enforces
/// IAM. The user exists (with the cluster name not yet known, which moto
/// does not evaluate anyway) before the operator starts, so that no call is
/// ever denied for want of the policy.
async fn scenario_without(prefix: &str, without: &[&str]) -> (IamMoto, Scenario) {
    let moto = IamMoto::start(prefix);
    let keys = moto.user_with_policy(USER, &moto_projection("not-yet-known", without));
    let s = Scenario::start_setup(
        prefix,
        Setup {
            cloud: Cloud::iam(&moto, keys),
            ..Setup::default()
        },
    )
    .await;
    moto.set_user_policy(USER, &moto_projection(&s.ns, without));
    (moto, s)
}

/// Checks that `m`'s `lastOperation` reports the denial as permission
/// trouble, and that a Warning Event `reason` says the same.
async fn assert_denial_reported(
    s: &Scenario,
    name: &str,
    op: MachineOperationType,
    reason: &str,
    action: &str,
) {
    let needle = format!("{action} failed (AccessDenied)");
    let m = s.wait_failure(name, op, &needle).await;
    let last = m.status.unwrap().last_operation;
    assert_eq!(
        last.error_code.as_deref(),
        Some("PermissionDenied"),
        "{last:?}"
    );
    assert!(
        last.description.contains(&format!("ec2:{action}")),
        "moto names the action: {last:?}"
    );
    s.wait_event(name, &format!("Warning {reason}"), &needle)
        .await;
}

#[tokio::test]
async fn a_whole_lifecycle_needs_nothing_beyond_the_shipped_policy() {
    let (_moto, s) = scenario_without("iam-life", &[]).await;
    s.apply_class(CLASS, |c| {
        c["providerSpec"]["srcAndDstChecksEnabled"] = json!(false);
        c["providerSpec"]["blockDevices"]
            .as_array_mut()
            .unwrap()
            .push(json!({"deviceName": "/dev/xvdb", "ebs": {"volumeSize": 20, "volumeType": "gp3", "encrypted": true, "deleteOnTermination": true}}));
    })
    .await;

    // Launch, with a data volume and the source/destination check off.
    s.create_machine("m1").await;
    let m = s.wait_phase("m1", MachinePhase::Running, 2 * MINUTE).await;
    let live = s.live_instances().await;
    assert_eq!(live.len(), 1, "{live:?}");
    let id = live[0].instance_id().unwrap().to_string();
    assert_eq!(live[0].block_device_mappings().len(), 2, "{live:?}");
    // The check is switched off after launch, from the shared instance
    // view: within a sync of the machine running, not necessarily before.
    eventually_or(
        "the source/destination check off",
        MINUTE,
        || async {
            let live = s.live_instances().await;
            (live.first()?.source_dest_check() == Some(false)).then_some(())
        },
        || s.op.log(),
    )
    .await;

    // The class's credentials are the user's, as STS says.
    let ready = eventually_or(
        "/readyz to name the class's identity",
        MINUTE,
        || async { s.op.http_get("/readyz").filter(|(code, _)| *code == 200) },
        || s.op.log(),
    )
    .await
    .1;
    assert!(
        ready.contains(&format!("as arn:aws:iam::{ACCOUNT_ID}:user/{USER}")),
        "{ready}"
    );

    // A tag edit is applied in place.
    s.apply_class(CLASS, |c| {
        c["providerSpec"]["srcAndDstChecksEnabled"] = json!(false);
        c["providerSpec"]["tags"]["team"] = json!("platform");
    })
    .await;
    eventually_or(
        "the tag edit on the instance",
        MINUTE,
        || async {
            let all = ec2::instances_of_namespace(&s.ec2, &s.ns).await;
            all.iter()
                .find(|i| i.instance_id() == Some(id.as_str()))
                .filter(|i| tag(i, "team") == Some("platform"))
                .map(|_| ())
        },
        || s.op.log(),
    )
    .await;

    // An instance of the cluster without a Machine is collected.
    let cluster = (format!("kubernetes.io/cluster/{}", s.ns), "1".to_string());
    let role = ("kubernetes.io/role/node".to_string(), "1".to_string());
    let ghost = (MACHINE_NAME_TAG.to_string(), format!("{}/ghost", s.ns));
    let orphan = s.run_tagged_instance(vec![cluster, role, ghost]).await;
    eventually_or(
        "the orphan to be terminated",
        MINUTE,
        || async {
            let all = ec2::instances_of_namespace(&s.ec2, &s.ns).await;
            all.iter()
                .any(|i| i.instance_id() == Some(orphan.as_str()) && !is_live(i))
                .then_some(())
        },
        || s.op.log(),
    )
    .await;

    // Deletion drains the Node (the kubelet stand-in finishes the evicted
    // Pod), terminates the instance and removes the Node.
    let node = m.labels()[NODE_LABEL].clone();
    pod_on_node(&s.client, &s.ns, "app", &node).await;
    s.machines()
        .delete("m1", &DeleteParams::default())
        .await
        .unwrap();
    s.wait_gone("m1", 2 * MINUTE).await;
    assert!(s.live_instances().await.is_empty());
    assert!(s.node(&node).await.is_none(), "the Node is deleted");

    let log = s.op.log();
    assert!(
        !log.contains("AccessDenied"),
        "no call was denied under the shipped policy:\n{log}"
    );
}

#[tokio::test]
async fn without_run_instances_the_launch_is_refused_and_says_why() {
    let (moto, s) = scenario_without("iam-norun", &["ec2:RunInstances"]).await;
    s.create_machine("m1").await;
    assert_denial_reported(
        &s,
        "m1",
        MachineOperationType::Create,
        "CreateFailed",
        "RunInstances",
    )
    .await;
    let m = s.machines().get("m1").await.unwrap();
    assert_eq!(m.phase(), Some(MachinePhase::CrashLoopBackOff));
    assert!(s.live_instances().await.is_empty());

    // Granted again: a class change lifts the wait, and the machine runs.
    moto.set_user_policy(USER, &moto_projection(&s.ns, &[]));
    s.apply_class(CLASS, |c| {
        c["providerSpec"]["tags"]["team"] = json!("granted")
    })
    .await;
    s.wait_phase("m1", MachinePhase::Running, 2 * MINUTE).await;
}

#[tokio::test]
async fn without_describe_instances_nothing_is_launched_and_the_lookup_says_why() {
    let (_moto, s) = scenario_without("iam-nodescribe", &["ec2:DescribeInstances"]).await;
    s.create_machine("m1").await;
    // The lookup by the Machine's UID tag comes before every launch: without
    // it the operator cannot know whether an instance exists already.
    assert_denial_reported(
        &s,
        "m1",
        MachineOperationType::Create,
        "CreateFailed",
        "DescribeInstances",
    )
    .await;
    let m = s.machines().get("m1").await.unwrap();
    assert!(
        m.status
            .unwrap()
            .last_operation
            .description
            .starts_with("Looking up the instance failed"),
    );
    assert!(ec2::instances_of_namespace(&s.ec2, &s.ns).await.is_empty());
    // Readiness says so too.
    let report = eventually_or(
        "/readyz to report the denied DescribeInstances",
        MINUTE,
        || async {
            s.op.http_get("/readyz")
                .filter(|(code, body)| *code == 503 && body.contains("AccessDenied"))
                .map(|(_, body)| body)
        },
        || s.op.log(),
    )
    .await;
    assert!(
        report.contains("DescribeInstances failed (AccessDenied)"),
        "{report}"
    );
}

#[tokio::test]
async fn without_create_tags_a_tag_edit_is_refused_and_says_why() {
    let (_moto, s) = scenario_without("iam-notags", &["ec2:CreateTags"]).await;
    s.create_machine("m1").await;
    // moto launches with tags (TagSpecifications) without asking for
    // ec2:CreateTags; EC2 would refuse this RunInstances, as the
    // RunInstances test shows the operator reports.
    s.wait_phase("m1", MachinePhase::Running, 2 * MINUTE).await;
    s.apply_class(CLASS, |c| {
        c["providerSpec"]["tags"]["team"] = json!("platform")
    })
    .await;
    assert_denial_reported(
        &s,
        "m1",
        MachineOperationType::Update,
        "TagsFailed",
        "CreateTags",
    )
    .await;
    let m = s.machines().get("m1").await.unwrap();
    assert_eq!(
        m.phase(),
        Some(MachinePhase::Running),
        "the machine goes on"
    );
    s.machines()
        .delete("m1", &DeleteParams::default())
        .await
        .unwrap();
    s.wait_gone("m1", 2 * MINUTE).await;
}

#[tokio::test]
async fn without_terminate_instances_the_deletion_waits_and_says_why() {
    let (moto, s) = scenario_without("iam-noterm", &["ec2:TerminateInstances"]).await;
    s.create_machine("m1").await;
    s.wait_phase("m1", MachinePhase::Running, 2 * MINUTE).await;
    s.machines()
        .delete("m1", &DeleteParams::default())
        .await
        .unwrap();
    assert_denial_reported(
        &s,
        "m1",
        MachineOperationType::Delete,
        "DeleteFailed",
        "TerminateInstances",
    )
    .await;
    let m = s.machines().get("m1").await.unwrap();
    assert_eq!(m.phase(), Some(MachinePhase::Terminating));
    assert_eq!(s.live_instances().await.len(), 1, "the instance is kept");

    moto.set_user_policy(USER, &moto_projection(&s.ns, &[]));
    s.nudge("m1").await;
    s.wait_gone("m1", 2 * MINUTE).await;
    assert!(s.live_instances().await.is_empty());
}

#[tokio::test]
async fn without_modify_instance_attribute_the_post_launch_step_says_why() {
    let (_moto, s) = scenario_without("iam-nomodify", &["ec2:ModifyInstanceAttribute"]).await;
    s.apply_class(CLASS, |c| {
        c["providerSpec"]["srcAndDstChecksEnabled"] = json!(false)
    })
    .await;
    s.create_machine("m1").await;
    assert_denial_reported(
        &s,
        "m1",
        MachineOperationType::Create,
        "CreateFailed",
        "ModifyInstanceAttribute",
    )
    .await;
    let live = s.live_instances().await;
    assert_eq!(live[0].source_dest_check(), Some(true), "{live:?}");
}

/// What moto's IAM enforcement evaluates, as the module docs say; the
/// lifecycle tests above rest on it.
#[tokio::test]
async fn what_moto_evaluates() {
    let moto = IamMoto::start("iam-moto");
    let admin = client_at(&moto.url, &moto.admin).await;
    let net = ec2::network(&admin).await;
    let as_user = |name: &str, policy: &str| {
        let keys: Keys = moto.user_with_policy(name, policy);
        let url = moto.url.clone();
        async move { client_at(&url, &keys).await }
    };
    let code = |e: &dyn ProvideErrorMetadata| e.code().map(str::to_owned);
    let run = |c: aws_sdk_ec2::Client| {
        let net = net.clone();
        async move {
            c.run_instances()
                .image_id(&net.ami)
                .instance_type(InstanceType::T3Micro)
                .subnet_id(&net.subnet_id)
                .min_count(1)
                .max_count(1)
                .send()
                .await
        }
    };

    // The shipped policy as it is: only the statements on `*` work.
    let shipped = as_user("shipped", &render(ACCOUNT_ID, "c1")).await;
    shipped
        .describe_instances()
        .send()
        .await
        .expect("DescribeInstances is granted on *");
    let denied = run(shipped.clone())
        .await
        .expect_err("resource ARNs never match");
    let err = denied.into_service_error();
    assert_eq!(code(&err).as_deref(), Some("AccessDenied"), "{err:?}");

    // Conditions of identity policies are not evaluated.
    let conditional = as_user(
        "conditional",
        r#"{"Version":"2012-10-17","Statement":[
          {"Effect":"Allow","Action":["ec2:DescribeInstances","ec2:RunInstances"],"Resource":"*",
           "Condition":{"StringEquals":{"aws:username":"somebody-else"}}},
          {"Effect":"Allow","Action":"ec2:TerminateInstances","Resource":"*",
           "Condition":{"Null":{"ec2:ResourceTag/kubernetes.io/cluster/c1":"false"}}}]}"#,
    )
    .await;
    conditional
        .describe_instances()
        .send()
        .await
        .expect("a false aws:username condition is ignored");
    let untagged = run(conditional.clone())
        .await
        .expect("RunInstances is allowed");
    let id = untagged.instances()[0].instance_id().unwrap().to_string();
    conditional
        .terminate_instances()
        .instance_ids(&id)
        .send()
        .await
        .expect("an untagged instance is terminated despite the ResourceTag condition");

    // RunInstances with an instance profile, without iam:PassRole.
    crate::support::scenario::instance_profile_with_role(
        &moto.url,
        Some(&moto.admin),
        "profile-c1",
        "c1-nodes",
    );
    let no_pass = as_user("no-pass", &moto_projection("c1", &["iam:PassRole"])).await;
    no_pass
        .run_instances()
        .image_id(&net.ami)
        .instance_type(InstanceType::T3Micro)
        .subnet_id(&net.subnet_id)
        .min_count(1)
        .max_count(1)
        .iam_instance_profile(
            IamInstanceProfileSpecification::builder()
                .name("profile-c1")
                .build(),
        )
        .send()
        .await
        .expect("moto does not ask for iam:PassRole");

    // Unknown keys are refused as EC2 would refuse them.
    let stranger = client_at(
        &moto.url,
        &Keys {
            id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
        },
    )
    .await;
    let err = stranger
        .describe_instances()
        .send()
        .await
        .expect_err("unknown keys")
        .into_service_error();
    assert_eq!(code(&err).as_deref(), Some("AuthFailure"), "{err:?}");
}
