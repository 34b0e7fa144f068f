//! User data placeholders and bootstrap tokens (MCM-CONTRACT §2): the user
//! data EC2 holds carries the machine's name and the token of a live
//! `bootstrap-token-<id>` Secret in the target cluster's `kube-system` —
//! the kubelet stand-in joins only with such a token, as the API server's
//! authenticator would let it — no placeholder is left, the Secret goes
//! once the Node joined or with the machine, and a restart between the
//! Secret and the launch reuses both the token and the ClientToken.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams};
use kube::{Client, ResourceExt};
use mcm_provider_aws::api::shared::MachinePhase;
use mcm_provider_aws::aws::instances::instance_id_from_provider_id;
use mcm_provider_aws::controller::machine::launch_record::LaunchRecord;
use mcm_provider_aws::controller::node::bootstrap_token::{
    MACHINE_UID_LABEL, NAMESPACE, SECRET_TYPE, is_token, secret_name,
};

use crate::support::ec2::try_user_data;
use crate::support::kubelet::TOKEN_LINE;
use crate::support::proxy::{Fault, ProxyBehaviour, Rule};
use crate::support::scenario::Scenario;
use crate::support::target_env;
use crate::support::wait::eventually_or;

const MINUTE: Duration = Duration::from_secs(60);

/// The bootstrap token Secrets made for the Machine with UID `uid`.
async fn token_secrets(client: &Client, uid: &str) -> Vec<Secret> {
    Api::<Secret>::namespaced(client.clone(), NAMESPACE)
        .list(&ListParams::default().labels(&format!("{MACHINE_UID_LABEL}={uid}")))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

fn field(s: &Secret, key: &str) -> String {
    s.data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|v| String::from_utf8_lossy(&v.0).into_owned())
        .unwrap_or_default()
}

/// `<id>.<secret>` of a token Secret.
fn token_in(s: &Secret) -> String {
    format!("{}.{}", field(s, "token-id"), field(s, "token-secret"))
}

/// The token on the user data's token line.
fn token_line(user_data: &str) -> Option<String> {
    user_data
        .lines()
        .find_map(|l| l.trim().strip_prefix(TOKEN_LINE))
        .map(|t| t.trim().to_string())
}

#[tokio::test]
async fn user_data_carries_the_name_and_the_token_the_node_joins_with() {
    let target = target_env();
    let s = Scenario::start_with_target("bt-target", target).await;
    let target_client = target.client().await;
    let uid = s.create_machine("b1").await.uid().unwrap();
    let m = s.wait_phase("b1", MachinePhase::Running, 2 * MINUTE).await;
    let id = instance_id_from_provider_id(m.spec.provider_id.as_deref().unwrap())
        .unwrap()
        .to_string();

    let user_data = try_user_data(&s.ec2, &id).await.unwrap();
    assert!(user_data.contains("hostname: b1\n"), "{user_data}");
    assert!(
        !user_data.contains("<<"),
        "a placeholder is left: {user_data}"
    );
    let token = token_line(&user_data).expect("the token line");
    assert!(is_token(&token), "{token:?} is no bootstrap token");
    let joined = s
        .kubelet
        .joined_with(&id)
        .expect("the node joined with a bootstrap token");
    assert_eq!(joined.token, token, "the token of the user data");

    // Joined: the token has served and goes (as MCM deletes it), from the
    // target cluster; the control cluster never had one.
    eventually_or(
        "the joined machine's token Secret to be deleted",
        MINUTE,
        || async {
            token_secrets(&target_client, &uid)
                .await
                .is_empty()
                .then_some(())
        },
        || s.op.log(),
    )
    .await;
    let (token_id, _) = token.split_once('.').unwrap();
    let control = Api::<Secret>::namespaced(s.client.clone(), NAMESPACE);
    assert!(
        control
            .get_opt(&secret_name(token_id))
            .await
            .unwrap()
            .is_none()
    );
    eventually_or(
        "the launch record to let go of the token",
        MINUTE,
        || async {
            let m = s.machines().get("b1").await.ok()?;
            let record = LaunchRecord::from_annotations(m.annotations())?;
            record.bootstrap_token_id.is_none().then_some(())
        },
        || s.op.log(),
    )
    .await;
    assert!(
        !s.op.log().contains(token.split_once('.').unwrap().1),
        "the token secret is never logged"
    );
}

#[tokio::test]
async fn a_machine_deleted_before_its_node_joined_takes_its_token_along() {
    let flags = ["--bootstrap-token-auth-extra-groups=system:bootstrappers:workers"];
    let s = Scenario::start_with("bt-delete", false, &flags).await;
    // The node agent is still booting: no Node registers.
    s.kubelet.hold_registrations(true);
    let created = s.create_machine("b2").await;
    let uid = created.uid().unwrap();
    let secret = eventually_or(
        "the launched machine's token Secret",
        MINUTE,
        || async {
            let m = s.machines().get("b2").await.ok()?;
            m.spec.provider_id.as_ref()?;
            token_secrets(&s.client, &uid).await.into_iter().next()
        },
        || s.op.log(),
    )
    .await;
    // The format the authenticator reads.
    assert_eq!(secret.type_.as_deref(), Some(SECRET_TYPE));
    let token_id = field(&secret, "token-id");
    assert_eq!(secret.name_any(), secret_name(&token_id));
    assert!(is_token(&token_in(&secret)), "{token_id}");
    assert_eq!(field(&secret, "usage-bootstrap-authentication"), "true");
    assert_eq!(field(&secret, "usage-bootstrap-signing"), "true");
    assert_eq!(
        field(&secret, "auth-extra-groups"),
        "system:bootstrappers:workers"
    );
    assert!(field(&secret, "description").contains(&format!("{}/b2", s.ns)));
    let expires: Timestamp = field(&secret, "expiration").parse().unwrap();
    let in_secs = expires.duration_since(Timestamp::now()).as_secs();
    assert!(
        (19 * 60..=20 * 60).contains(&in_secs),
        "expires with the 20m creation timeout: in {in_secs}s"
    );
    let m = s.machines().get("b2").await.unwrap();
    let id = instance_id_from_provider_id(m.spec.provider_id.as_deref().unwrap()).unwrap();
    let user_data = try_user_data(&s.ec2, id).await.unwrap();
    assert_eq!(token_line(&user_data), Some(token_in(&secret)));

    s.machines()
        .delete("b2", &DeleteParams::default())
        .await
        .unwrap();
    s.wait_gone("b2", 2 * MINUTE).await;
    assert!(
        token_secrets(&s.client, &uid).await.is_empty(),
        "the token Secret went with the machine"
    );
}

#[tokio::test]
async fn a_restart_after_a_lost_launch_reuses_the_token_and_the_client_token() {
    let mut s = Scenario::start_with("bt-restart", true, &[]).await;
    let proxy = s.proxy.take().unwrap();
    // EC2 remembers ClientTokens and shows new instances only after 20s;
    // the first launch takes effect, but its answer is lost.
    proxy.set_behaviour(
        ProxyBehaviour::default()
            .with_client_tokens()
            .with_consistency_window(Duration::from_secs(20)),
    );
    proxy.set_rules(vec![Rule::on("RunInstances", 1, Fault::LoseResponse)]);
    let uid = s.create_machine("b3").await.uid().unwrap();
    eventually_or(
        "a RunInstances whose answer is lost",
        MINUTE,
        || async { (proxy.stats().instances_launched >= 1).then_some(()) },
        || s.op.log(),
    )
    .await;
    let secrets = token_secrets(&s.client, &uid).await;
    assert_eq!(secrets.len(), 1, "{secrets:?}");
    let (secret_uid, token) = (secrets[0].uid().unwrap(), token_in(&secrets[0]));

    // The process dies before it learns anything; its successor repeats
    // the launch.
    s.op.kill9();
    proxy.set_rules(vec![]);
    s.op.restart();
    let m = s.wait_phase("b3", MachinePhase::Running, 3 * MINUTE).await;

    let stats = proxy.stats();
    assert_eq!(stats.instances_launched, 1, "{stats:?}");
    assert!(
        stats.client_token_replays >= 1,
        "the repeat carried the same ClientToken and parameters: {stats:?}"
    );
    assert_eq!(
        stats.client_token_mismatches, 0,
        "same user data: {stats:?}"
    );
    let record = LaunchRecord::from_annotations(m.annotations()).unwrap();
    assert_eq!(record.attempt, 0, "one attempt, one ClientToken");
    let live = s.live_instances().await;
    assert_eq!(live.len(), 1, "{live:?}");
    let id = live[0].instance_id().unwrap();
    let joined = s.kubelet.joined_with(id).expect("joined with its token");
    assert_eq!(joined.token, token, "the token made before the restart");
    assert_eq!(
        joined.secret_uid, secret_uid,
        "the Secret was not made again"
    );
}
