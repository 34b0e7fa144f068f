//! The least-privilege IAM policy the operator needs, shipped as
//! `config/iam/policy.json`, and the list of actions it must grant.
//!
//! [`ACTIONS`] says why each action is needed. Unit tests keep the three in
//! step: the policy file grants exactly [`ACTIONS`], and [`ACTIONS`] is
//! exactly what the code calls — every EC2 and STS operation invoked on an
//! [`Ec2Handle`](super::clients::Ec2Handle)'s clients, the STS calls of the
//! credential providers in use, and `iam:PassRole` for the instance profile
//! RunInstances hands over. A new call without a grant fails them, and so
//! does a grant nothing calls.
//!
//! The file has two placeholders, [`ACCOUNT_ID`] and [`CLUSTER_NAME`] (the
//! `<name>` of the class's `kubernetes.io/cluster/<name>` tag); see
//! `docs/operations.md` for installing it with IRSA or static keys.

use std::collections::BTreeSet;

/// The policy, as shipped.
pub const POLICY: &str = include_str!("../../config/iam/policy.json");
/// Placeholder for the 12-digit account the machines run in.
pub const ACCOUNT_ID: &str = "${AWS_ACCOUNT_ID}";
/// Placeholder for the cluster name of the classes' cluster tag.
pub const CLUSTER_NAME: &str = "${CLUSTER_NAME}";

/// Every IAM action the operator needs, and what for.
pub const ACTIONS: &[(&str, &str)] = &[
    (
        "ec2:DescribeInstances",
        "find a Machine's instance by its UID tag, the batched status of running machines, the orphan search, the readiness check",
    ),
    (
        "ec2:DescribeImages",
        "the AMI's root device name, for the class's /root block device",
    ),
    ("ec2:RunInstances", "launch machines"),
    (
        "ec2:CreateTags",
        "tags at launch (RunInstances' TagSpecifications need it) and class tag edits applied in place",
    ),
    (
        "ec2:DeleteTags",
        "class tags removed from running instances",
    ),
    (
        "ec2:ModifyInstanceAttribute",
        "srcAndDstChecksEnabled: false, which EC2 only takes after launch",
    ),
    (
        "ec2:AssignIpv6Addresses",
        "networkInterfaces[].ipv6PrefixCount, assigned after launch",
    ),
    (
        "ec2:TerminateInstances",
        "Machine deletion and orphan collection",
    ),
    (
        "iam:PassRole",
        "launch with the class's instance profile (iam.name / iam.arn): its role is passed to EC2",
    ),
    (
        "sts:AssumeRole",
        "a class whose Secret holds only a roleARN (allowed by --allow-operator-credentials and --assume-role-arn-patterns)",
    ),
    (
        "sts:GetCallerIdentity",
        "the readiness check names the identity (AWS allows it to every identity anyway)",
    ),
];

/// Actions the operator calls that no policy of the caller governs:
/// AssumeRoleWithWebIdentity is authorized by the role's trust policy
/// (the token is the credential).
pub const NEEDS_NO_GRANT: &[&str] = &["sts:AssumeRoleWithWebIdentity"];

/// The policy with its placeholders filled in.
pub fn render(account_id: &str, cluster_name: &str) -> String {
    POLICY
        .replace(ACCOUNT_ID, account_id)
        .replace(CLUSTER_NAME, cluster_name)
}

/// The actions a policy document grants (`Action` of every statement).
pub fn actions_in(policy: &str) -> Result<BTreeSet<String>, serde_json::Error> {
    let doc: serde_json::Value = serde_json::from_str(policy)?;
    let mut actions = BTreeSet::new();
    for statement in doc["Statement"].as_array().into_iter().flatten() {
        match &statement["Action"] {
            serde_json::Value::String(a) => {
                actions.insert(a.clone());
            }
            serde_json::Value::Array(list) => {
                actions.extend(list.iter().filter_map(|a| a.as_str().map(str::to_owned)));
            }
            _ => {}
        }
    }
    Ok(actions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn listed() -> BTreeSet<String> {
        ACTIONS.iter().map(|(a, _)| a.to_string()).collect()
    }

    /// `describe_instances` → `DescribeInstances`.
    fn pascal(snake: &str) -> String {
        snake
            .split('_')
            .map(|w| {
                let mut c = w.chars();
                c.next()
                    .map(|first| first.to_ascii_uppercase().to_string() + c.as_str())
                    .unwrap_or_default()
            })
            .collect()
    }

    /// The non-test part of every `.rs` file below `dir`, whitespace
    /// removed (calls are often split over lines).
    fn sources(dir: &Path, out: &mut Vec<(String, String)>) {
        for entry in std::fs::read_dir(dir).expect("read src") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("read source");
                let code = text.split("#[cfg(test)]").next().unwrap_or_default();
                let compact: String = code.chars().filter(|c| !c.is_whitespace()).collect();
                out.push((path.display().to_string(), compact));
            }
        }
    }

    /// The IAM actions the code needs, found in the source: SDK operations
    /// on the handles' `client` (EC2) and `sts` (STS), the credential
    /// providers' STS calls, and PassRole for an instance profile.
    fn called_by_the_code() -> BTreeSet<(String, String)> {
        let mut files = Vec::new();
        sources(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut files,
        );
        let mut found = BTreeSet::new();
        for (file, code) in &files {
            for (receiver, service) in [(".client.", "ec2"), (".sts.", "sts")] {
                for (at, _) in code.match_indices(receiver) {
                    let rest = &code[at + receiver.len()..];
                    let op: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    let is_call = rest[op.len()..].starts_with('(');
                    // `ctx.client.clone()`: the Kubernetes client.
                    if !is_call || op == "clone" || op.is_empty() {
                        continue;
                    }
                    found.insert((format!("{service}:{}", pascal(&op)), file.clone()));
                }
            }
            for (needle, action) in [
                ("AssumeRoleProvider::builder", "sts:AssumeRole"),
                (
                    "WebIdentityTokenCredentialsProvider::builder",
                    "sts:AssumeRoleWithWebIdentity",
                ),
                (".set_iam_instance_profile(", "iam:PassRole"),
            ] {
                if code.contains(needle) {
                    found.insert((action.to_owned(), file.clone()));
                }
            }
        }
        found
    }

    #[test]
    fn the_policy_grants_exactly_the_listed_actions() {
        let granted = actions_in(POLICY).expect("config/iam/policy.json is JSON");
        assert_eq!(
            granted,
            listed(),
            "config/iam/policy.json and ACTIONS disagree"
        );
        for (action, why) in ACTIONS {
            assert!(!why.is_empty(), "{action} needs a reason");
        }
    }

    #[test]
    fn every_call_of_the_code_is_granted_and_every_grant_is_called() {
        let called = called_by_the_code();
        let names: BTreeSet<String> = called.iter().map(|(a, _)| a.clone()).collect();
        for (action, file) in &called {
            assert!(
                listed().contains(action) || NEEDS_NO_GRANT.contains(&action.as_str()),
                "{file} calls {action}, which ACTIONS (and config/iam/policy.json) do not grant"
            );
        }
        for action in listed() {
            assert!(
                names.contains(&action),
                "ACTIONS grants {action}, which no code calls (found: {names:?})"
            );
        }
        // The scan sees the calls it is meant to see.
        assert!(names.contains("ec2:RunInstances"), "{names:?}");
        assert!(names.contains("sts:AssumeRoleWithWebIdentity"), "{names:?}");
    }

    #[test]
    fn placeholders_are_the_account_and_the_cluster_only() {
        let mut rest = POLICY;
        let mut seen = BTreeSet::new();
        while let Some(start) = rest.find("${") {
            let end = rest[start..].find('}').expect("closed placeholder") + start;
            seen.insert(&rest[start..=end]);
            rest = &rest[end..];
        }
        assert_eq!(seen, BTreeSet::from([ACCOUNT_ID, CLUSTER_NAME]));
        let rendered = render("123456789012", "shoot--dev--a");
        assert!(!rendered.contains("${"), "{rendered}");
        assert!(rendered.contains("ec2:ResourceTag/kubernetes.io/cluster/shoot--dev--a"));
        assert!(rendered.contains("arn:aws:iam::123456789012:role/shoot--dev--a-*"));
        assert_eq!(actions_in(&rendered).unwrap(), listed());
    }

    #[test]
    fn the_policy_is_scoped_where_ec2_can_scope_it() {
        let doc: serde_json::Value = serde_json::from_str(POLICY).unwrap();
        assert_eq!(doc["Version"], "2012-10-17");
        let statements = doc["Statement"].as_array().unwrap();
        let grants = |action: &str| -> Vec<&serde_json::Value> {
            statements
                .iter()
                .filter(|s| {
                    s["Action"] == action
                        || s["Action"]
                            .as_array()
                            .is_some_and(|a| a.iter().any(|x| x == action))
                })
                .collect()
        };
        let cluster_tag = format!("ec2:ResourceTag/kubernetes.io/cluster/{CLUSTER_NAME}");
        for action in [
            "ec2:TerminateInstances",
            "ec2:ModifyInstanceAttribute",
            "ec2:DeleteTags",
            "ec2:AssignIpv6Addresses",
        ] {
            for s in grants(action) {
                assert_eq!(s["Effect"], "Allow");
                assert_eq!(
                    s["Condition"]["Null"][&cluster_tag], "false",
                    "{action} only on the cluster's resources: {s}"
                );
            }
        }
        // CreateTags: at launch, or on the cluster's resources.
        for s in grants("ec2:CreateTags") {
            let on_launch = s["Condition"]["StringEquals"]["ec2:CreateAction"] == "RunInstances";
            let on_cluster = s["Condition"]["Null"][&cluster_tag] == "false";
            assert!(on_launch || on_cluster, "{s}");
        }
        // What RunInstances creates must carry the cluster tag.
        let request_tag = format!("aws:RequestTag/kubernetes.io/cluster/{CLUSTER_NAME}");
        let tagged = grants("ec2:RunInstances")
            .into_iter()
            .find(|s| s["Resource"].to_string().contains(":instance/*"))
            .expect("a RunInstances statement for instances");
        assert_eq!(tagged["Condition"]["Null"][&request_tag], "false");
        let pass = grants("iam:PassRole");
        assert_eq!(
            pass[0]["Condition"]["StringEquals"]["iam:PassedToService"],
            "ec2.amazonaws.com"
        );
        // Only the Describe calls (which EC2 cannot scope) and
        // GetCallerIdentity take every resource.
        for s in statements.iter().filter(|s| s["Resource"] == "*") {
            let ok = |a: &serde_json::Value| {
                a.as_str()
                    .is_some_and(|a| a.starts_with("ec2:Describe") || a == "sts:GetCallerIdentity")
            };
            let all_ok = match &s["Action"] {
                serde_json::Value::Array(list) => list.iter().all(ok),
                a => ok(a),
            };
            assert!(all_ok, "only Describe* and GetCallerIdentity on *: {s}");
        }
    }
}
