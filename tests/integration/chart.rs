//! The Helm chart, with the real Helm (`helm` from the environment's tools):
//! `helm lint --strict`; rendered manifests checked for hardening, RBAC
//! without wildcards and the operator's flags; the values schema rejecting
//! bad values; `helm install`/`upgrade`/`uninstall` against the real API
//! server; and the operator run outside the cluster with a token of the
//! chart's own ServiceAccount, through the whole life of a Machine. Never
//! `--wait`: the environment has no kubelet, the Deployment never gets
//! ready.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams};
use mcm_provider_aws::api::machine::Machine;
use mcm_provider_aws::api::shared::MachinePhase;
use serde_json::{Value, json};

use crate::support::ec2::REGION;
use crate::support::kubelet::guarded_pod_on_node;
use crate::support::operator::{Launch, Operator};
use crate::support::scenario::{CLASS, Scenario};
use crate::support::wait::eventually_or;
use crate::support::{env, namespace};

const MINUTE: Duration = Duration::from_secs(60);
const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/mcm-provider-aws");
const BINARY: &str = env!("CARGO_BIN_EXE_machine-controller");
static RELEASES: AtomicU32 = AtomicU32::new(0);

/// A release name no other test of this binary uses.
fn release(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        RELEASES.fetch_add(1, Ordering::SeqCst)
    )
}

/// The release's full name (the chart's `mcm.fullname`).
fn fullname(release: &str) -> String {
    format!("{release}-mcm-provider-aws")
}

/// Runs the environment's `helm` against its API server; (ok, stdout, stderr).
fn helm(args: &[&str]) -> (bool, String, String) {
    let dir = Path::new(env().var("MCM_TEST_DIR")).join("helm");
    let out = Command::new(Path::new(env().var("MCM_TEST_TOOLS")).join("helm"))
        .args(args)
        .env("KUBECONFIG", env().kubeconfig())
        .env("HELM_CACHE_HOME", dir.join("cache"))
        .env("HELM_CONFIG_HOME", dir.join("config"))
        .env("HELM_DATA_HOME", dir.join("data"))
        .output()
        .expect("run helm");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn helm_ok(args: &[&str]) -> String {
    let (ok, out, err) = helm(args);
    assert!(ok, "helm {} failed:\n{out}{err}", args.join(" "));
    out
}

/// `--set` arguments for `values`.
fn sets(values: &[&str]) -> Vec<String> {
    values
        .iter()
        .flat_map(|v| ["--set".into(), v.to_string()])
        .collect()
}

/// `helm template` with `values` (`key=value`), as parsed documents.
fn template(values: &[&str]) -> Vec<Value> {
    let mut args = vec!["template", "t", CHART, "--namespace", "ops"];
    let set = sets(values);
    args.extend(set.iter().map(String::as_str));
    let out = helm_ok(&args);
    serde_yaml::Deserializer::from_str(&out)
        .filter_map(|doc| serde::Deserialize::deserialize(doc).ok())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// The stderr of a `helm template` that must fail.
fn template_error(values: &[&str]) -> String {
    let mut args = vec!["template", "t", CHART];
    let set = sets(values);
    args.extend(set.iter().map(String::as_str));
    let (ok, out, err) = helm(&args);
    assert!(!ok, "helm template with {values:?} should fail:\n{out}");
    err
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn deployment(docs: &[Value]) -> &Value {
    let found = of_kind(docs, "Deployment");
    assert_eq!(found.len(), 1, "one Deployment");
    found[0]
}

fn container(docs: &[Value]) -> &Value {
    &deployment(docs)["spec"]["template"]["spec"]["containers"][0]
}

fn args(docs: &[Value]) -> Vec<String> {
    container(docs)["args"]
        .as_array()
        .expect("container args")
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn chart_app_version_is_the_crate_version() {
    let chart: Value = serde_yaml::from_str(
        &std::fs::read_to_string(Path::new(CHART).join("Chart.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        chart["appVersion"].as_str(),
        Some(env!("CARGO_PKG_VERSION")),
        "Chart.yaml appVersion must equal Cargo.toml's version"
    );
}

#[test]
fn helm_lint_strict_passes() {
    helm_ok(&["lint", "--strict", CHART]);
    let mut args = vec!["lint", "--strict", CHART];
    let set = sets(&[
        "replicaCount=3",
        "watchNamespace=machines",
        "targetKubeconfig.secretName=target",
        "podDisruptionBudget.enabled=true",
        "metrics.serviceMonitor.enabled=true",
    ]);
    args.extend(set.iter().map(String::as_str));
    helm_ok(&args);
}

#[test]
fn deployment_is_hardened_and_probed() {
    let docs = template(&[]);
    let pod = &deployment(&docs)["spec"]["template"]["spec"];
    let psc = &pod["securityContext"];
    assert_eq!(psc["runAsNonRoot"], true);
    assert_eq!(psc["seccompProfile"]["type"], "RuntimeDefault");
    let c = container(&docs);
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    // The image's user (distroless nonroot, see the Dockerfile).
    assert_eq!(sc["runAsUser"], 65532);
    assert!(
        c["resources"]["requests"]["memory"].is_string(),
        "{}",
        c["resources"]
    );
    assert!(c["resources"]["limits"]["memory"].is_string());
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/livez");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "health");
    let ports: Vec<_> = c["ports"].as_array().unwrap().iter().collect();
    assert!(
        ports
            .iter()
            .any(|p| p["name"] == "health" && p["containerPort"] == 8081)
    );
    assert!(
        ports
            .iter()
            .any(|p| p["name"] == "metrics" && p["containerPort"] == 8080)
    );
    let args = args(&docs);
    assert!(args.contains(&"--health-bind-address=:8081".to_string()));
    assert!(args.contains(&"--metrics-bind-address=:8080".to_string()));
    assert!(args.contains(&"--log-format=json".to_string()));
    assert!(
        !args.iter().any(|a| a == "--leader-elect"),
        "one replica: {args:?}"
    );
    let env: Vec<_> = c["env"].as_array().unwrap().iter().collect();
    assert!(env.iter().any(|e| e["name"] == "POD_NAME"));
    // A metrics Service selects the pods.
    let svc = of_kind(&docs, "Service");
    assert_eq!(svc.len(), 1);
    assert_eq!(svc[0]["spec"]["ports"][0]["targetPort"], "metrics");
    assert_eq!(
        svc[0]["spec"]["selector"],
        deployment(&docs)["spec"]["selector"]["matchLabels"]
    );
}

/// Every flag of the binary reaches the container when its feature is on:
/// a new flag without a chart value fails here.
#[test]
fn deployment_passes_every_flag_of_the_binary() {
    let help = Command::new(BINARY).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let flags: Vec<String> = help
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("--"))
        .map(|w| w.trim_end_matches(|c: char| !c.is_ascii_alphanumeric() && c != '-'))
        .map(|w| w.split('=').next().unwrap().to_string())
        .filter(|w| !w.is_empty() && w != "help" && w != "version")
        .collect();
    assert!(flags.len() > 15, "flags from --help: {flags:?}");
    let docs = template(&[
        "watchNamespace=machines",
        "targetKubeconfig.secretName=target",
        "leaderElection.enabled=true",
    ]);
    let args = args(&docs);
    for flag in &flags {
        assert!(
            args.iter()
                .any(|a| a == &format!("--{flag}") || a.starts_with(&format!("--{flag}="))),
            "--{flag} is not set by the chart: {args:?}"
        );
    }
    // And every arg the chart passes is accepted by the binary.
    let check = Command::new(BINARY)
        .args(&args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}

fn rules_of(docs: &[Value]) -> Vec<(String, Value)> {
    docs.iter()
        .filter(|d| d["kind"] == "Role" || d["kind"] == "ClusterRole")
        .flat_map(|d| {
            let name = d["metadata"]["name"].as_str().unwrap().to_string();
            d["rules"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |r| (name.clone(), r.clone()))
        })
        .collect()
}

#[test]
fn rbac_has_no_wildcards_and_every_rule_says_why() {
    for values in [
        &[][..],
        &["watchNamespace=machines", "leaderElection.enabled=true"][..],
        &["replicaCount=2"][..],
    ] {
        let docs = template(values);
        let rules = rules_of(&docs);
        assert!(rules.len() >= 8, "{values:?}: {rules:?}");
        for (role, rule) in &rules {
            for field in ["apiGroups", "resources", "verbs"] {
                let items = rule[field]
                    .as_array()
                    .unwrap_or_else(|| panic!("{role}: rule without {field}: {rule}"));
                assert!(!items.is_empty(), "{role}: empty {field}: {rule}");
                assert!(
                    items.iter().all(|i| !i.as_str().unwrap().contains('*')),
                    "{role}: wildcard in {field}: {rule}"
                );
            }
            assert!(rule.get("nonResourceURLs").is_none(), "{role}: {rule}");
            let verbs = rule["verbs"].as_array().unwrap();
            for forbidden in ["escalate", "bind", "impersonate"] {
                assert!(!verbs.contains(&json!(forbidden)), "{role}: {rule}");
            }
        }
        // Secrets: watched by metadata (as MCM's Secret informer does) and
        // patched for the class protection finalizer, never created or
        // deleted outside kube-system, where only the machines' bootstrap
        // tokens are written.
        let secrets: Vec<&(String, Value)> = rules
            .iter()
            .filter(|(_, r)| r["resources"] == json!(["secrets"]))
            .collect();
        assert_eq!(secrets.len(), 2, "{secrets:?}");
        assert_eq!(
            secrets[0].1["verbs"],
            json!(["get", "list", "watch", "patch"])
        );
        assert!(secrets[1].0.ends_with("-bootstrap-tokens"), "{secrets:?}");
        assert_eq!(
            secrets[1].1["verbs"],
            json!(["get", "create", "patch", "delete"])
        );
        let token_role = docs
            .iter()
            .find(|d| d["metadata"]["name"] == json!(secrets[1].0))
            .unwrap();
        assert_eq!(
            (&token_role["kind"], &token_role["metadata"]["namespace"]),
            (&json!("Role"), &json!("kube-system"))
        );
    }
    // Each rule in the template source is preceded by a comment saying why.
    let source = std::fs::read_to_string(Path::new(CHART).join("templates/rbac.yaml")).unwrap();
    let lines: Vec<&str> = source.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if line.trim_start().starts_with("- apiGroups:") {
            assert!(
                lines[i - 1].trim_start().starts_with('#'),
                "rule at templates/rbac.yaml:{} has no comment",
                i + 1
            );
        }
    }
}

#[test]
fn namespaced_install_uses_roles_and_more_replicas_force_leader_election() {
    let docs = template(&["watchNamespace=machines", "replicaCount=2"]);
    let roles = of_kind(&docs, "Role");
    let names: Vec<_> = roles
        .iter()
        .map(|r| {
            (
                r["metadata"]["name"].as_str().unwrap(),
                r["metadata"]["namespace"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(
        names.contains(&("t-mcm-provider-aws", "machines")),
        "{names:?}"
    );
    assert!(
        names.contains(&("t-mcm-provider-aws-leader-election", "ops")),
        "{names:?}"
    );
    assert!(
        names.contains(&("t-mcm-provider-aws-bootstrap-tokens", "kube-system")),
        "{names:?}"
    );
    // Only the node rights stay cluster-wide.
    let cluster: Vec<_> = of_kind(&docs, "ClusterRole")
        .iter()
        .map(|r| r["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(cluster, ["t-mcm-provider-aws-nodes"]);
    let args = args(&docs);
    for expected in [
        "--leader-elect",
        "--leader-election-namespace=ops",
        "--leader-election-id=t-mcm-provider-aws",
        "--namespace=machines",
    ] {
        assert!(args.iter().any(|a| a == expected), "{expected}: {args:?}");
    }
    // The lease Role names exactly the Lease the operator uses.
    let lease_role = roles
        .iter()
        .find(|r| r["metadata"]["name"] == "t-mcm-provider-aws-leader-election")
        .unwrap();
    assert_eq!(
        lease_role["rules"][1]["resourceNames"],
        json!(["t-mcm-provider-aws"])
    );
}

#[test]
fn optional_pieces_render_when_asked_for() {
    let docs = template(&[
        "targetKubeconfig.secretName=shoot-kubeconfig",
        "serviceAccount.annotations.eks\\.amazonaws\\.com/role-arn=arn:aws:iam::111122223333:role/mcm",
        "podDisruptionBudget.enabled=true",
        "metrics.serviceMonitor.enabled=true",
        "aws.region=eu-central-1",
        "aws.endpointUrlEC2=https://ec2.vpce.example",
        "aws.credentialsSecret=operator-keys",
        "extraEnv[0].name=HTTPS_PROXY",
        "extraEnv[0].value=http://proxy:3128",
    ]);
    let sa = of_kind(&docs, "ServiceAccount")[0];
    assert_eq!(
        sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"],
        "arn:aws:iam::111122223333:role/mcm"
    );
    let c = container(&docs);
    assert!(args(&docs).contains(&"--target-kubeconfig=/etc/mcm/target/kubeconfig".into()));
    assert_eq!(c["volumeMounts"][0]["mountPath"], "/etc/mcm/target");
    let volumes = &deployment(&docs)["spec"]["template"]["spec"]["volumes"];
    assert_eq!(volumes[0]["secret"]["secretName"], "shoot-kubeconfig");
    // Nodes live elsewhere: no node or bootstrap token rights in this cluster.
    assert!(
        of_kind(&docs, "ClusterRole")
            .iter()
            .all(|r| !r["metadata"]["name"].as_str().unwrap().ends_with("-nodes"))
    );
    assert!(
        of_kind(&docs, "Role")
            .iter()
            .all(|r| r["metadata"]["namespace"] != "kube-system")
    );
    let env = c["env"].as_array().unwrap();
    let value = |name: &str| {
        env.iter()
            .find(|e| e["name"] == name)
            .map(|e| e["value"].clone())
    };
    assert_eq!(value("AWS_REGION"), Some(json!("eu-central-1")));
    assert_eq!(
        value("AWS_ENDPOINT_URL_EC2"),
        Some(json!("https://ec2.vpce.example"))
    );
    assert_eq!(value("HTTPS_PROXY"), Some(json!("http://proxy:3128")));
    assert_eq!(c["envFrom"][0]["secretRef"]["name"], "operator-keys");
    assert_eq!(of_kind(&docs, "PodDisruptionBudget").len(), 1);
    let monitor = of_kind(&docs, "ServiceMonitor");
    assert_eq!(monitor[0]["spec"]["endpoints"][0]["port"], "metrics");
}

/// The operator's own AWS identity is lent to MachineClasses only when the
/// values ask for it.
#[test]
fn operator_credentials_are_off_unless_the_values_turn_them_on() {
    let default = args(&template(&[]));
    assert!(
        default.contains(&"--allow-operator-credentials=false".into()),
        "{default:?}"
    );
    assert!(
        default.contains(&"--assume-role-arn-patterns=".into()),
        "{default:?}"
    );
    let on = args(&template(&[
        "aws.allowOperatorCredentials=true",
        "aws.assumeRoleArnPatterns={arn:aws:iam::123456789012:role/mcm-*,arn:aws:iam::*:role/shared}",
    ]));
    assert!(
        on.contains(&"--allow-operator-credentials=true".into()),
        "{on:?}"
    );
    assert!(
        on.contains(
            &"--assume-role-arn-patterns=arn:aws:iam::123456789012:role/mcm-*,arn:aws:iam::*:role/shared"
                .into()
        ),
        "{on:?}"
    );
}

/// cluster-autoscaler's `mcm` provider stops autoscaling unless a Deployment
/// named exactly `machine-controller-manager` has available replicas.
#[test]
fn the_deployment_can_carry_the_name_the_cluster_autoscaler_checks() {
    let docs = template(&["deploymentName=machine-controller-manager"]);
    assert_eq!(
        deployment(&docs)["metadata"]["name"],
        "machine-controller-manager"
    );
    let sa = of_kind(&docs, "ServiceAccount")[0];
    assert_ne!(
        sa["metadata"]["name"], "machine-controller-manager",
        "only the Deployment is renamed"
    );
    assert!(template_error(&["deploymentName=Not_A_Name"]).contains("deploymentName"));
}

#[test]
fn values_schema_rejects_wrong_types_and_unknown_keys() {
    for (values, expected) in [
        (&["replicaCount=two"][..], "replicaCount"),
        (&["watchNamespaces=typo"][..], "watchNamespaces"),
        (&["controller.logFormat=xml"][..], "logFormat"),
        (
            &["controller.machineDrainTimeout=forever"][..],
            "machineDrainTimeout",
        ),
        (&["image.pullPolicy=Sometimes"][..], "pullPolicy"),
        (&["leaderElection.enabled=yes please"][..], "enabled"),
        (&["metrics.port=80800"][..], "port"),
        (&["serviceAccount.annotation.x=y"][..], "annotation"),
        (
            &["aws.allowOperatorCredentials=maybe"][..],
            "allowOperatorCredentials",
        ),
        (
            &["aws.assumeRoleArnPatterns={mcm-*}"][..],
            "assumeRoleArnPatterns",
        ),
    ] {
        let err = template_error(values);
        assert!(err.contains(expected), "{values:?}: {err}");
    }
}

fn kubectl_ok(args: &[&str]) -> String {
    let (ok, out, err) = env().kubectl_run(args);
    assert!(ok, "kubectl {} failed:\n{out}{err}", args.join(" "));
    out
}

fn exists(args: &[&str]) -> bool {
    env().kubectl_run(&[&["get"][..], args].concat()).0
}

#[tokio::test]
async fn helm_installs_upgrades_and_uninstalls_on_a_real_api_server() {
    let client = env().client().await;
    let ns = namespace(&client, "chart").await;
    let rel = release("inst");
    let full = fullname(&rel);
    helm_ok(&[
        "install",
        &rel,
        CHART,
        "--namespace",
        &ns,
        "--set",
        "aws.region=eu-west-1",
    ]);

    // CRDs (from crds/ or already there), RBAC, ServiceAccount, Deployment, Service.
    for crd in mcm_provider_aws::api::crd::all() {
        assert!(exists(&["crd", crd.metadata.name.as_deref().unwrap()]));
    }
    for (kind, name) in [
        ("serviceaccount", full.clone()),
        ("deployment", full.clone()),
        ("service", format!("{full}-metrics")),
    ] {
        assert!(exists(&["-n", &ns, kind, &name]), "{kind} {name} missing");
    }
    for (kind, name) in [
        ("clusterrole", full.clone()),
        ("clusterrolebinding", full.clone()),
        ("clusterrole", format!("{full}-nodes")),
        ("clusterrolebinding", format!("{full}-nodes")),
    ] {
        assert!(exists(&[kind, &name]), "{kind} {name} missing");
    }
    assert!(!exists(&[
        "-n",
        &ns,
        "role",
        &format!("{full}-leader-election")
    ]));
    for kind in ["role", "rolebinding"] {
        let name = format!("{full}-bootstrap-tokens");
        assert!(
            exists(&["-n", "kube-system", kind, &name]),
            "{kind} kube-system/{name} missing"
        );
    }

    // Upgrade: two replicas (leader election forced on), one namespace,
    // debug logs, a PodDisruptionBudget.
    helm_ok(&[
        "upgrade",
        &rel,
        CHART,
        "--namespace",
        &ns,
        "--set",
        "replicaCount=2",
        "--set",
        &format!("watchNamespace={ns}"),
        "--set",
        "controller.logLevel=debug",
        "--set",
        "podDisruptionBudget.enabled=true",
    ]);
    let deploy: Value = serde_json::from_str(&kubectl_ok(&[
        "get",
        "-n",
        &ns,
        "deployment",
        &full,
        "-o",
        "json",
    ]))
    .unwrap();
    assert_eq!(deploy["spec"]["replicas"], 2);
    let args = deploy["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    for expected in [
        "--leader-elect",
        "--log-level=debug",
        &format!("--namespace={ns}"),
    ] {
        assert!(args.contains(expected), "{expected}: {args}");
    }
    assert!(exists(&["-n", &ns, "role", &full]), "namespaced Role");
    assert!(exists(&["-n", &ns, "rolebinding", &full]));
    assert!(
        !exists(&["clusterrole", &full]),
        "the ClusterRole went away"
    );
    assert!(exists(&[
        "-n",
        &ns,
        "role",
        &format!("{full}-leader-election")
    ]));
    assert!(exists(&["-n", &ns, "poddisruptionbudget", &full]));
    let history = helm_ok(&["history", &rel, "--namespace", &ns]);
    assert_eq!(
        history.lines().count(),
        3,
        "header + 2 revisions:\n{history}"
    );

    // Uninstall removes everything but the CRDs.
    helm_ok(&["uninstall", &rel, "--namespace", &ns]);
    for (kind, name) in [
        ("serviceaccount", full.clone()),
        ("deployment", full.clone()),
        ("service", format!("{full}-metrics")),
        ("role", full.clone()),
        ("rolebinding", full.clone()),
        ("role", format!("{full}-leader-election")),
        ("rolebinding", format!("{full}-leader-election")),
        ("poddisruptionbudget", full.clone()),
    ] {
        assert!(!exists(&["-n", &ns, kind, &name]), "{kind} {name} left");
    }
    for (kind, name) in [
        ("clusterrole", format!("{full}-nodes")),
        ("clusterrolebinding", format!("{full}-nodes")),
    ] {
        assert!(!exists(&[kind, &name]), "{kind} {name} left");
    }
    let token_role = format!("{full}-bootstrap-tokens");
    assert!(!exists(&["-n", "kube-system", "role", &token_role]));
    for crd in mcm_provider_aws::api::crd::all() {
        assert!(
            exists(&["crd", crd.metadata.name.as_deref().unwrap()]),
            "Helm must never delete the CRDs"
        );
    }
}

/// A kubeconfig for the environment's API server with `token`.
fn token_kubeconfig(ns: &str, token: &str) -> PathBuf {
    let path = Path::new(env().var("MCM_TEST_DIR")).join(format!("{ns}-operator.kubeconfig"));
    let config = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "envtest", "cluster": {
            "server": env().var("MCM_TEST_APISERVER"), "insecure-skip-tls-verify": true}}],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {
            "cluster": "envtest", "user": "operator", "namespace": ns}}],
        "current-context": "operator",
    });
    std::fs::write(&path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
    path
}

/// Installs the chart into the scenario's namespace, then runs the operator
/// with the args of the installed Deployment and a TokenRequest token of
/// the chart's ServiceAccount, through create → Running → drain (evictions
/// blocked by a PodDisruptionBudget, then forced) → delete. Any missing
/// right shows up as `forbidden` in its log or as a step that never ends.
async fn machine_lifecycle_with_the_charts_rights(prefix: &str, namespaced: bool) {
    let mut s = Scenario::start(prefix).await;
    // The scenario's operator runs as admin; this test's runs as the chart's
    // ServiceAccount. Nothing exists yet for the first one to act on.
    s.op.kill9();
    let rel = release(prefix);
    let full = fullname(&rel);
    let mut values = vec![
        format!("aws.region={REGION}"),
        "leaderElection.enabled=true".to_string(),
        "controller.instanceSyncPeriod=2s".to_string(),
        "controller.orphanCollectionInterval=5s".to_string(),
        "controller.logFormat=text".to_string(),
    ];
    if namespaced {
        values.push(format!("watchNamespace={}", s.ns));
    }
    let mut install = vec!["install", &rel, CHART, "--namespace", &s.ns];
    let set = sets(&values.iter().map(String::as_str).collect::<Vec<_>>());
    install.extend(set.iter().map(String::as_str));
    helm_ok(&install);

    let token = kubectl_ok(&["create", "token", &full, "-n", &s.ns, "--duration=2h"]);
    let kubeconfig = token_kubeconfig(&s.ns, token.trim());
    let deployment_args: Vec<String> = serde_json::from_str(&kubectl_ok(&[
        "get",
        "deployment",
        &full,
        "-n",
        &s.ns,
        "-o",
        "jsonpath={.spec.template.spec.containers[0].args}",
    ]))
    .unwrap();
    // The harness sets the namespace and puts the listeners on a free port.
    let args: Vec<&str> = deployment_args
        .iter()
        .map(String::as_str)
        .filter(|a| {
            !a.starts_with("--namespace=")
                && !a.starts_with("--metrics-bind-address=")
                && !a.starts_with("--health-bind-address=")
        })
        .collect();
    assert!(args.contains(&"--leader-elect"), "{args:?}");
    s.op = Operator::launch(
        &s.ns,
        &args,
        Launch {
            kubeconfig: Some(kubeconfig),
            name: Some("chart-sa".into()),
            ..Launch::default()
        },
    );

    // Ready: caches synced (list/watch) and the class's credentials (read
    // from its Secret) answered EC2.
    eventually_or(
        "/readyz to pass",
        MINUTE,
        || async { s.op.http_get("/readyz").filter(|(code, _)| *code == 200) },
        || s.op.log(),
    )
    .await;

    let machine: Machine = serde_json::from_value(json!({
        "apiVersion": "machine.sapcloud.io/v1alpha1", "kind": "Machine",
        "metadata": {"name": "m1", "namespace": s.ns},
        "spec": {"class": {"kind": "MachineClass", "name": CLASS}, "drainTimeout": "20s"},
    }))
    .unwrap();
    s.machines()
        .create(&PostParams::default(), &machine)
        .await
        .unwrap();
    let m = s.wait_phase("m1", MachinePhase::Running, 2 * MINUTE).await;
    let node = m
        .node_name()
        .expect("a Running machine names its node")
        .to_string();

    // A Pod whose eviction a PodDisruptionBudget blocks (no disruption
    // controller runs here, so it allows none): the drain evicts, is
    // refused, and deletes the Pod once the 20s drain timeout passed (long enough
    // for a loaded machine to report the block first).
    guarded_pod_on_node(&s.client, &s.ns, "app", &node).await;
    let pods = Api::<Pod>::namespaced(s.client.clone(), &s.ns);

    s.machines()
        .delete("m1", &DeleteParams::default())
        .await
        .unwrap();
    eventually_or(
        "the drain to report the blocked eviction",
        MINUTE,
        || async {
            let m = s.machines().get_opt("m1").await.ok().flatten()?;
            let op = m.status?.last_operation;
            op.description
                .contains("blocked by a PodDisruptionBudget")
                .then_some(())
        },
        || {
            let (_, machine, _) =
                env().kubectl_run(&["get", "machine", "m1", "-n", &s.ns, "-o", "yaml"]);
            format!("{machine}\n{}", s.op.log())
        },
    )
    .await;
    s.wait_gone("m1", 2 * MINUTE).await;
    assert!(s.live_instances().await.is_empty(), "instance terminated");
    assert!(s.node(&node).await.is_none(), "Node deleted");
    assert!(
        pods.get_opt("app").await.unwrap().is_none(),
        "the Pod was removed by the forced drain"
    );
    // A MachineDeployment of one: sets and machines created, owned, scaled
    // and deleted through the deployment and set controllers.
    let deployment = json!({
        "apiVersion": "machine.sapcloud.io/v1alpha1", "kind": "MachineDeployment",
        "metadata": {"name": "pool", "namespace": s.ns},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"pool": "p"}},
            "template": {
                "metadata": {"labels": {"pool": "p"}},
                "spec": {"class": {"kind": "MachineClass", "name": CLASS}},
            },
        },
    });
    let file = Path::new(env().var("MCM_TEST_DIR")).join(format!("{}-mcd.json", s.ns));
    std::fs::write(&file, deployment.to_string()).unwrap();
    kubectl_ok(&["apply", "-f", file.to_str().unwrap()]);
    let pooled = eventually_or(
        "the deployment's machine to run",
        2 * MINUTE,
        || async {
            let list = s
                .machines()
                .list(&kube::api::ListParams::default().labels("pool=p"))
                .await
                .ok()?;
            list.items
                .into_iter()
                .find(|m| m.phase() == Some(MachinePhase::Running))
        },
        || s.op.log(),
    )
    .await;
    assert!(
        pooled.metadata.owner_references.is_some(),
        "owned by its set"
    );
    kubectl_ok(&["delete", "machinedeployment", "pool", "-n", &s.ns]);
    eventually_or(
        "the deployment's machines to go",
        2 * MINUTE,
        || async {
            let list = s
                .machines()
                .list(&kube::api::ListParams::default().labels("pool=p"))
                .await
                .ok()?;
            list.items.is_empty().then_some(())
        },
        || s.op.log(),
    )
    .await;

    let log = s.op.log();
    let events = s.events_of("m1").await;
    assert!(!events.is_empty(), "Events were recorded");
    let lease = Api::<Lease>::namespaced(s.client.clone(), &s.ns)
        .get(&full)
        .await
        .expect("the operator created its Lease");
    assert!(lease.spec.and_then(|l| l.holder_identity).is_some());
    assert!(
        !log.to_lowercase().contains("forbidden"),
        "the chart's RBAC is missing a right:\n{log}"
    );
    assert!(s.op.is_running(), "the operator is still running:\n{log}");

    helm_ok(&["uninstall", &rel, "--namespace", &s.ns]);
}

#[tokio::test]
async fn operator_runs_with_the_charts_cluster_wide_rights() {
    machine_lifecycle_with_the_charts_rights("rbac-cluster", false).await;
}

#[tokio::test]
async fn operator_runs_with_the_charts_namespaced_rights() {
    machine_lifecycle_with_the_charts_rights("rbac-ns", true).await;
}

/// The image runs as the user the chart sets, and exposes the chart's
/// ports (`make image-check` also builds the static binary and runs it).
#[test]
fn dockerfile_matches_the_chart() {
    let dockerfile =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile")).unwrap();
    let values: Value = serde_yaml::from_str(
        &std::fs::read_to_string(Path::new(CHART).join("values.yaml")).unwrap(),
    )
    .unwrap();
    let line = |prefix: &str| {
        dockerfile
            .lines()
            .rfind(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in the Dockerfile"))
            .trim_start_matches(prefix)
            .trim()
            .to_string()
    };
    let sc = &values["securityContext"];
    assert_eq!(
        line("USER "),
        format!("{}:{}", sc["runAsUser"], sc["runAsGroup"])
    );
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(
        line("EXPOSE "),
        format!("{} {}", values["metrics"]["port"], values["health"]["port"])
    );
    assert_eq!(line("ENTRYPOINT "), r#"["/machine-controller"]"#);
    assert!(line("ARG BASE_IMAGE=").starts_with("gcr.io/distroless/static"));
    assert!(dockerfile.contains("--bin machine-controller"));
}
