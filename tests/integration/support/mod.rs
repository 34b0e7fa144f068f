//! Test support: one real control plane (etcd + kube-apiserver + the
//! garbage-collector controller) and one moto EC2 server per test binary,
//! started by `hack/envtest.sh` on free loopback ports.
//!
//! The environment is started lazily by the first test that asks for it and
//! stops when the test binary exits: the script runs until its stdin closes, and
//! the write end of that pipe lives in a static that the kernel closes on exit,
//! however the process ends.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, Config};

pub mod ec2;
pub mod fixtures;
pub mod fleet;
pub mod iam;
pub mod instances;
pub mod kubelet;
pub mod metrics;
pub mod operator;
pub mod proxy;
pub mod real_node;
pub mod scenario;
pub mod wait;

/// A running test environment; see the module docs.
pub struct TestEnv {
    /// Variables written by `hack/envtest.sh` (KUBECONFIG, AWS_ENDPOINT_URL_EC2, ...).
    pub vars: BTreeMap<String, String>,
    // Held, never used: closing it stops the environment.
    _stdin: Mutex<ChildStdin>,
    _child: Mutex<Child>,
}

static ENV: OnceLock<TestEnv> = OnceLock::new();
static TARGET_ENV: OnceLock<TestEnv> = OnceLock::new();
static NS_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Field manager used by tests that apply objects.
pub const TEST_MANAGER: &str = "mcm-provider-aws-tests";
/// Runs a program with a parent-death signal (util-linux).
const SETPRIV: &str = "/usr/bin/setpriv";

/// A command for a child process that must not outlive the test thread
/// that starts it, even when the test binary is killed: on Linux it runs
/// under `setpriv --pdeathsig KILL`.
pub fn child_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    if Path::new(SETPRIV).exists() {
        let mut cmd = Command::new(SETPRIV);
        cmd.args(["--pdeathsig", "KILL", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The environment of this test binary, started on first use. Panics (fails
/// the test, never skips it) with setup instructions when it cannot start.
pub fn env() -> &'static TestEnv {
    ENV.get_or_init(start)
}

/// A second, independent control plane, for tests where the Nodes live in a
/// target cluster other than the control cluster. Started on first use.
pub fn target_env() -> &'static TestEnv {
    TARGET_ENV.get_or_init(start)
}

fn start() -> TestEnv {
    let script = repo_root().join("hack/envtest.sh");
    let mut child = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let stdout = child.stdout.take().expect("piped stdout");
    let mut dir = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read envtest output");
        if let Some(d) = line.strip_prefix("READY ") {
            dir = Some(PathBuf::from(d));
            break;
        }
        if let Some(msg) = line.strip_prefix("FAILED ") {
            panic!(
                "the integration test environment did not start: {msg}\n\
                 Set it up with `make test-env` (builds kube-apiserver, kube-controller-manager \
                 and etcd from the Go module proxy and installs moto; KUBE_VERSION selects the \
                 Kubernetes version), or point KUBEBUILDER_ASSETS at a directory with \
                 kube-apiserver and etcd."
            );
        }
    }
    let dir = dir.unwrap_or_else(|| {
        panic!("hack/envtest.sh exited before it was ready; run `make test-env` and retry")
    });
    let vars = std::fs::read_to_string(dir.join("env"))
        .expect("envtest env file")
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let stdin = child.stdin.take().expect("piped stdin");
    TestEnv {
        vars,
        _stdin: Mutex::new(stdin),
        _child: Mutex::new(child),
    }
}

impl TestEnv {
    /// One variable of the environment file; panics when absent.
    pub fn var(&self, key: &str) -> &str {
        self.vars
            .get(key)
            .unwrap_or_else(|| panic!("envtest did not set {key}"))
    }

    pub fn kubeconfig(&self) -> &Path {
        Path::new(self.var("KUBECONFIG"))
    }

    /// A client with the admin token. Each test makes its own: clients are tied
    /// to the runtime of the test that created them.
    pub async fn client(&self) -> Client {
        let kc = Kubeconfig::read_from(self.kubeconfig()).expect("read kubeconfig");
        let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .expect("kubeconfig");
        Client::try_from(config).expect("client")
    }

    /// `kubectl` (the project's cached one, or the user's) pointed at this
    /// environment.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new(Path::new(self.var("MCM_TEST_TOOLS")).join("kubectl"));
        cmd.env("KUBECONFIG", self.kubeconfig());
        cmd
    }

    /// Runs kubectl with `args`, returning (success, stdout, stderr).
    pub fn kubectl_run(&self, args: &[&str]) -> (bool, String, String) {
        let out = self.kubectl().args(args).output().expect("run kubectl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// Creates a fresh namespace named after `prefix` for one test.
pub async fn namespace(client: &Client, prefix: &str) -> String {
    let n = NS_COUNTER.fetch_add(1, Ordering::SeqCst);
    let name = format!("{prefix}-{}-{n}", std::process::id());
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}
    }))
    .unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
    name
}

/// Installs (server-side applies) the generated CRDs and waits until they are
/// established. Idempotent, so every test may call it.
pub async fn install_crds(client: &Client) {
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    for crd in mcm_provider_aws::api::crd::all() {
        let name = crd.metadata.name.clone().expect("crd name");
        api.patch(
            &name,
            &PatchParams::apply(TEST_MANAGER).force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap_or_else(|e| panic!("apply CRD {name}: {e}"));
        tokio::time::timeout(
            Duration::from_secs(30),
            await_condition(api.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .unwrap_or_else(|_| panic!("CRD {name} not established in 30s"))
        .expect("watch CRD");
    }
}
