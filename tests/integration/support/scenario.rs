//! One line per scenario: a namespace with its own VPC/subnet in moto, an
//! instance profile, a credentials Secret, a valid MachineClass, the kubelet
//! stand-in and an operator process scoped to the namespace.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Node, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use mcm_provider_aws::api::machine::Machine;
use mcm_provider_aws::api::machine_class::MachineClass;
use mcm_provider_aws::api::shared::MachinePhase;
use serde_json::{Value, json};

use super::ec2::{self, Network};
use super::fixtures::machine;
use super::kubelet::Kubelet;
use super::operator::Operator;
use super::proxy::FaultProxy;
use super::wait::eventually_or;
use super::{TEST_MANAGER, env, install_crds, namespace};

pub const CLASS: &str = "workers";
pub const SECRET: &str = "aws";

/// Operator flags that make the tests fast without changing behaviour.
pub const FAST_FLAGS: &[&str] = &[
    "--instance-sync-period=2s",
    "--orphan-collection-interval=5s",
];

pub struct Scenario {
    pub client: Client,
    pub ns: String,
    pub ec2: aws_sdk_ec2::Client,
    pub net: Network,
    pub kubelet: Kubelet,
    pub op: Operator,
    pub proxy: Option<FaultProxy>,
}

/// Creates an IAM instance profile in moto (the operator's class needs one;
/// there is no IAM SDK among our crates, so this speaks the query protocol).
pub fn instance_profile(name: &str) {
    let out = std::process::Command::new("curl")
        .args([
            "-sf",
            "-X",
            "POST",
            &format!("{}/", env().var("MCM_TEST_MOTO_URL")),
            "-H",
            "Authorization: AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=0",
            "-H",
            "Content-Type: application/x-www-form-urlencoded",
            "-d",
            &format!("Action=CreateInstanceProfile&InstanceProfileName={name}&Version=2010-05-08"),
        ])
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "CreateInstanceProfile {name}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

impl Scenario {
    /// Everything up, operator talking to moto directly.
    pub async fn start(prefix: &str) -> Scenario {
        Self::start_with(prefix, false, &[]).await
    }

    /// Everything up; with `proxy`, the operator reaches moto through a
    /// [`FaultProxy`].
    pub async fn start_with(prefix: &str, proxy: bool, extra_flags: &[&str]) -> Scenario {
        Self::start_opts(prefix, proxy, extra_flags, None).await
    }

    /// Everything up, with the Nodes (kubelet stand-in) in `target`'s API
    /// server and the operator pointed there with `--target-kubeconfig`.
    pub async fn start_with_target(prefix: &str, target: &'static super::TestEnv) -> Scenario {
        Self::start_opts(prefix, false, &[], Some(target)).await
    }

    async fn start_opts(
        prefix: &str,
        proxy: bool,
        extra_flags: &[&str],
        target: Option<&'static super::TestEnv>,
    ) -> Scenario {
        let client = env().client().await;
        install_crds(&client).await;
        let ns = namespace(&client, prefix).await;
        let ec2 = ec2::client().await;
        let net = ec2::network(&ec2).await;
        instance_profile(&format!("profile-{ns}"));
        let secret: Secret = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": SECRET, "namespace": ns},
            "stringData": {
                "providerAccessKeyId": "testing",
                "providerSecretAccessKey": "testing-secret",
                "userData": "#cloud-config\nhostname: <<MACHINE_NAME>>\n",
            }
        }))
        .unwrap();
        Api::<Secret>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &secret)
            .await
            .expect("create secret");
        let node_client = match target {
            Some(t) => t.client().await,
            None => client.clone(),
        };
        let kubelet = Kubelet::start(node_client, ec2.clone(), &ns);
        let proxy = if proxy {
            Some(FaultProxy::start(env().var("AWS_ENDPOINT_URL_EC2")).await)
        } else {
            None
        };
        let mut flags: Vec<String> = FAST_FLAGS.iter().map(|f| f.to_string()).collect();
        flags.extend(extra_flags.iter().map(|f| f.to_string()));
        if let Some(t) = target {
            flags.push(format!("--target-kubeconfig={}", t.kubeconfig().display()));
        }
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let endpoint = proxy
            .as_ref()
            .map(|p| p.url.clone())
            .unwrap_or_else(|| env().var("AWS_ENDPOINT_URL_EC2").to_string());
        let op = Operator::start_with_endpoint(&ns, &flags, &endpoint);
        let scenario = Scenario {
            client,
            ns,
            ec2,
            net,
            kubelet,
            op,
            proxy,
        };
        scenario.apply_class(CLASS, |_| {}).await;
        scenario
    }

    /// A valid class for this scenario's network, as JSON.
    pub fn class_json(&self, name: &str) -> Value {
        json!({
            "apiVersion": "machine.sapcloud.io/v1alpha1", "kind": "MachineClass",
            "metadata": {"name": name, "namespace": self.ns},
            "provider": "AWS",
            "providerSpec": {
                "ami": self.net.ami,
                "machineType": "m5.large",
                "region": ec2::REGION,
                "iam": {"name": format!("profile-{}", self.ns)},
                "blockDevices": [{"deviceName": "/root", "ebs": {"volumeSize": 30, "volumeType": "gp3", "deleteOnTermination": true}}],
                "networkInterfaces": [{"subnetID": self.net.subnet_id, "securityGroupIDs": [self.net.security_group_id]}],
                "instanceMetadataOptions": {"httpTokens": "required", "httpPutResponseHopLimit": 2},
                "tags": {
                    format!("kubernetes.io/cluster/{}", self.ns): "1",
                    "kubernetes.io/role/node": "1",
                    "team": "test",
                },
            },
            "secretRef": {"name": SECRET, "namespace": self.ns},
        })
    }

    /// Server-side applies class `name`, after `edit` changed its JSON.
    pub async fn apply_class(&self, name: &str, edit: impl FnOnce(&mut Value)) {
        let mut class = self.class_json(name);
        edit(&mut class);
        Api::<MachineClass>::namespaced(self.client.clone(), &self.ns)
            .patch(
                name,
                &PatchParams::apply(TEST_MANAGER).force(),
                &Patch::Apply(&class),
            )
            .await
            .unwrap_or_else(|e| panic!("apply class {name}: {e}"));
    }

    pub fn machines(&self) -> Api<Machine> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub async fn create_machine(&self, name: &str) -> Machine {
        self.machines()
            .create(&PostParams::default(), &machine(&self.ns, name, CLASS))
            .await
            .unwrap_or_else(|e| panic!("create machine {name}: {e}"))
    }

    /// Waits until Machine `name` reports `phase`.
    pub async fn wait_phase(&self, name: &str, phase: MachinePhase, timeout: Duration) -> Machine {
        let api = self.machines();
        eventually_or(
            &format!("machine {name} to be {phase}"),
            timeout,
            || {
                let api = api.clone();
                async move {
                    api.get_opt(name)
                        .await
                        .ok()
                        .flatten()
                        .filter(|m| m.phase() == Some(phase))
                }
            },
            || self.op.log(),
        )
        .await
    }

    /// Waits until Machine `name` is gone from the API server.
    pub async fn wait_gone(&self, name: &str, timeout: Duration) {
        let api = self.machines();
        eventually_or(
            &format!("machine {name} to be deleted"),
            timeout,
            || {
                let api = api.clone();
                async move {
                    api.get_opt(name)
                        .await
                        .ok()
                        .and_then(|m| m.is_none().then_some(()))
                }
            },
            || self.op.log(),
        )
        .await
    }

    /// Events about object `name` in this namespace, as "Type Reason: note".
    pub async fn events_of(&self, name: &str) -> Vec<String> {
        Api::<Event>::namespaced(self.client.clone(), &self.ns)
            .list(&ListParams::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e.involved_object.name.as_deref() == Some(name))
            .map(|e| {
                format!(
                    "{} {}: {}",
                    e.type_.unwrap_or_default(),
                    e.reason.unwrap_or_default(),
                    e.message.unwrap_or_default()
                )
            })
            .collect()
    }

    pub async fn node(&self, name: &str) -> Option<Node> {
        Api::<Node>::all(self.client.clone())
            .get_opt(name)
            .await
            .ok()
            .flatten()
    }

    /// Live instances of this namespace in moto.
    pub async fn live_instances(&self) -> Vec<aws_sdk_ec2::types::Instance> {
        ec2::live_instances_of_namespace(&self.ec2, &self.ns).await
    }

    pub fn name_of(m: &Machine) -> String {
        m.name_any()
    }
}
