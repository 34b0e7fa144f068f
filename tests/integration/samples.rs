//! Every manifest in `config/samples` applies to a real API server, and every
//! manifest in `config/samples/invalid` is rejected by the server with a
//! message naming the bad field (each file says which in `# expect-error:`).

use std::path::{Path, PathBuf};

use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use mcm_provider_aws::api::machine_class::MachineClass;
use mcm_provider_aws::api::provider_spec::AWSProviderSpec;
use mcm_provider_aws::api::validation::validate_provider_spec;

use crate::support::{env, install_crds, namespace};

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

fn samples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/samples")
}

#[tokio::test]
async fn every_sample_applies() {
    let client = env().client().await;
    install_crds(&client).await;
    let files = yaml_files(&samples_dir());
    assert!(
        files.len() >= 5,
        "expected the five samples, found {files:?}"
    );
    for file in files {
        // --validate=false: the API server, not kubectl, is what we test.
        let (ok, out, err) =
            env().kubectl_run(&["apply", "--validate=false", "-f", file.to_str().unwrap()]);
        assert!(ok, "{} was rejected:\n{out}{err}", file.display());
    }
    let (ok, out, err) =
        env().kubectl_run(&["get", "mcc,mc,mcs,mcd", "-n", "default", "-o", "name"]);
    assert!(ok, "{err}");
    for expected in [
        "machineclass.machine.sapcloud.io/aws-small",
        "machine.machine.sapcloud.io/worker-0",
        "machineset.machine.sapcloud.io/workers-set",
        "machinedeployment.machine.sapcloud.io/workers",
    ] {
        assert!(out.contains(expected), "{expected} missing from:\n{out}");
    }
}

/// The applied class keeps every field: nothing was pruned by the schema.
#[tokio::test]
async fn sample_class_round_trips_without_pruning() {
    let client = env().client().await;
    install_crds(&client).await;
    let ns = namespace(&client, "sample-class").await;
    let file = samples_dir().join("machine-class.yaml");
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("namespace: default", &format!("namespace: {ns}"));
    let sent: serde_json::Value = serde_yaml::from_str(&text).unwrap();
    let mut cmd = env().kubectl();
    cmd.args(["apply", "--validate=false", "-f", "-", "-o", "json"]);
    let stored = run_with_stdin(cmd, &text);
    for key in ["providerSpec", "secretRef", "provider"] {
        assert_eq!(
            stored[key], sent[key],
            "field {key} changed on the way through the API server"
        );
    }
}

/// The sample class in namespace `ns`, its `providerSpec` changed by `edit`, as
/// a client sends it.
fn sample_class(ns: &str, name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> DynamicObject {
    let text = std::fs::read_to_string(samples_dir().join("machine-class.yaml")).unwrap();
    let mut class: serde_json::Value = serde_yaml::from_str(&text).unwrap();
    class["metadata"] = serde_json::json!({"name": name, "namespace": ns});
    edit(&mut class["providerSpec"]);
    serde_json::from_value(class).unwrap()
}

fn classes(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &ApiResource::erase::<MachineClass>(&()))
}

/// MCM's Go types send unset pointers as `null` (here `coreCount` and
/// `threadsPerCore` next to `amdSevSnp`). The schema does not mark them
/// nullable, so the server drops the nulls before validating (the CEL rules
/// see the fields as absent) and stores the class without them.
#[tokio::test]
async fn class_with_nulls_as_the_go_client_sends_them_is_stored_without_them() {
    let client = env().client().await;
    install_crds(&client).await;
    let ns = namespace(&client, "null-fields").await;
    let class = sample_class(&ns, "go-nulls", |spec| {
        spec["cpuOptions"] =
            serde_json::json!({"amdSevSnp": "enabled", "coreCount": null, "threadsPerCore": null});
    });
    let api = classes(&client, &ns);
    api.create(&PostParams::default(), &class)
        .await
        .unwrap_or_else(|e| panic!("the class with nulls was rejected: {e}"));
    let stored = api.get("go-nulls").await.unwrap();
    assert_eq!(
        stored.data["providerSpec"]["cpuOptions"],
        serde_json::json!({"amdSevSnp": "enabled"}),
        "the nulls are dropped, the rest is kept"
    );
    let spec: AWSProviderSpec =
        serde_json::from_value(stored.data["providerSpec"].clone()).unwrap();
    assert_eq!(validate_provider_spec(&spec), []);
}

/// MCM's own sample class sets `spotPrice: ""` and `keyName: ""` (no maximum
/// price, no key pair); both apply and are stored as sent.
#[tokio::test]
async fn class_with_empty_spot_price_and_key_name_applies() {
    let client = env().client().await;
    install_crds(&client).await;
    let ns = namespace(&client, "empty-strings").await;
    let class = sample_class(&ns, "empty-strings", |spec| {
        spec["spotPrice"] = serde_json::json!("");
        spec["keyName"] = serde_json::json!("");
    });
    let api = classes(&client, &ns);
    api.create(&PostParams::default(), &class)
        .await
        .unwrap_or_else(|e| panic!("the class with empty strings was rejected: {e}"));
    let stored = api.get("empty-strings").await.unwrap();
    assert_eq!(
        stored.data["providerSpec"]["spotPrice"],
        serde_json::json!("")
    );
    assert_eq!(
        stored.data["providerSpec"]["keyName"],
        serde_json::json!("")
    );
}

fn run_with_stdin(mut cmd: std::process::Command, input: &str) -> serde_json::Value {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn every_invalid_sample_is_rejected_naming_the_field() {
    let client = env().client().await;
    install_crds(&client).await;
    let ns = namespace(&client, "invalid").await;
    let files = yaml_files(&samples_dir().join("invalid"));
    assert!(!files.is_empty());
    let mut failures = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let field = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect-error:"))
            .unwrap_or_else(|| panic!("{} lacks an `# expect-error: FIELD` line", file.display()))
            .trim()
            .to_string();
        let (ok, out, err) = env().kubectl_run(&[
            "apply",
            "--validate=false",
            "-n",
            &ns,
            "-f",
            file.to_str().unwrap(),
        ]);
        if ok {
            failures.push(format!("{}: accepted ({out})", file.display()));
        } else if !err.contains(&field) {
            failures.push(format!(
                "{}: error does not name {field}: {err}",
                file.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
