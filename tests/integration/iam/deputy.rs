//! No confused deputy: a MachineClass whose Secret holds no keys, or only a
//! `roleARN`, makes the operator act with its own AWS identity; that is
//! refused unless the operator was started to allow it
//! (`--allow-operator-credentials`, and `--assume-role-arn-patterns` for a
//! role).

use std::time::Duration;

use mcm_provider_aws::api::machine::Machine;
use mcm_provider_aws::api::shared::MachinePhase;
use serde_json::json;

use crate::support::ec2;
use crate::support::scenario::{Scenario, Setup};

const MINUTE: Duration = Duration::from_secs(60);
const LISTED_ROLE: &str = "arn:aws:iam::123456789012:role/mcm-machines";
const OTHER_ROLE: &str = "arn:aws:iam::123456789012:role/admin";

/// A class `name` whose Secret (also `name`) holds `credentials` besides
/// the user data.
async fn class_with_secret(s: &Scenario, name: &str, credentials: serde_json::Value) {
    let mut data = json!({"userData": "#cloud-config\n"});
    data.as_object_mut()
        .unwrap()
        .extend(credentials.as_object().unwrap().clone());
    s.create_secret(name, data).await;
    s.apply_class(name, |c| c["secretRef"]["name"] = json!(name))
        .await;
}

/// Waits until `name` reports its configuration invalid with a message
/// containing every one of `needles`, and checks the Warning Event too.
async fn wait_refused(s: &Scenario, name: &str, needles: &[&str]) -> Machine {
    let m = s
        .wait_machine(&format!("{name} refused for {needles:?}"), name, |m| {
            m.status
                .as_ref()
                .and_then(|st| st.condition("MachineConfigurationValid"))
                .is_some_and(|c| {
                    c.text.status == "False"
                        && needles
                            .iter()
                            .all(|n| c.text.message.as_deref().unwrap_or_default().contains(n))
                })
        })
        .await;
    s.wait_event(name, "Warning InvalidConfiguration", needles[0])
        .await;
    m
}

/// The instances launched for Machine `name` of this scenario.
async fn instances_of(s: &Scenario, name: &str) -> usize {
    let full = format!("{}/{name}", s.ns);
    ec2::instances_of_namespace(&s.ec2, &s.ns)
        .await
        .iter()
        .filter(|i| ec2::tag(i, mcm_provider_aws::aws::tags::MACHINE_NAME_TAG) == Some(&full))
        .count()
}

#[tokio::test]
async fn secrets_without_keys_or_with_a_lone_role_are_refused_by_default() {
    let s = Scenario::start("deputy").await;
    class_with_secret(&s, "no-keys", json!({})).await;
    class_with_secret(&s, "lone-role", json!({"roleARN": LISTED_ROLE})).await;
    s.create_machine_of("borrower", "no-keys").await;
    s.create_machine_of("assumer", "lone-role").await;
    s.create_machine("keyed").await;

    let m = wait_refused(
        &s,
        "borrower",
        &[
            &format!("Secret {}/no-keys", s.ns),
            "--allow-operator-credentials",
        ],
    )
    .await;
    let last = m.status.unwrap().last_operation;
    assert_eq!(
        last.error_code.as_deref(),
        Some("InvalidArgument"),
        "{last:?}"
    );
    assert!(last.description.contains("own AWS identity"), "{last:?}");
    wait_refused(
        &s,
        "assumer",
        &[
            &format!("Secret {}/lone-role", s.ns),
            "--allow-operator-credentials",
            "--assume-role-arn-patterns",
            LISTED_ROLE,
        ],
    )
    .await;

    // Keys of its own: no question.
    s.wait_phase("keyed", MachinePhase::Running, 2 * MINUTE)
        .await;
    assert_eq!(instances_of(&s, "borrower").await, 0, "never launched");
    assert_eq!(instances_of(&s, "assumer").await, 0, "never launched");
    assert_eq!(instances_of(&s, "keyed").await, 1);
}

#[tokio::test]
async fn the_operators_identity_and_listed_roles_are_used_when_allowed() {
    let s = Scenario::start_setup(
        "deputy-allowed",
        Setup {
            flags: &[
                "--allow-operator-credentials",
                "--assume-role-arn-patterns=arn:aws:iam::123456789012:role/mcm-*",
            ],
            ..Setup::default()
        },
    )
    .await;
    class_with_secret(&s, "no-keys", json!({})).await;
    class_with_secret(&s, "listed-role", json!({"roleARN": LISTED_ROLE})).await;
    class_with_secret(&s, "other-role", json!({"roleARN": OTHER_ROLE})).await;
    s.create_machine_of("borrower", "no-keys").await;
    s.create_machine_of("assumer", "listed-role").await;
    s.create_machine_of("intruder", "other-role").await;

    // The operator's own keys (its environment) and the role they assume.
    s.wait_phase("borrower", MachinePhase::Running, 2 * MINUTE)
        .await;
    s.wait_phase("assumer", MachinePhase::Running, 2 * MINUTE)
        .await;
    let m = wait_refused(
        &s,
        "intruder",
        &[
            &format!("Secret {}/other-role", s.ns),
            OTHER_ROLE,
            "matches none of arn:aws:iam::123456789012:role/mcm-*",
        ],
    )
    .await;
    let message = m
        .status
        .unwrap()
        .condition("MachineConfigurationValid")
        .and_then(|c| c.text.message.clone())
        .unwrap_or_default();
    assert!(
        !message.contains("--allow-operator-credentials"),
        "the flag is set already: {message}"
    );
    assert_eq!(instances_of(&s, "intruder").await, 0, "never launched");
    let log = s.op.log();
    assert!(
        log.contains("MachineClasses may use the credentials in their Secrets and the operator's own AWS identity"),
        "the start-up log says what is allowed:\n{log}"
    );
}
