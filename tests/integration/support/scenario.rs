//! One line per scenario: a namespace with its own VPC/subnet in moto, an
//! instance profile, a credentials Secret, a valid MachineClass, the kubelet
//! stand-in and an operator process scoped to the namespace. By default on
//! the environment's shared moto; [`Setup::cloud`] puts all of it on another
//! (an [`IamMoto`](super::iam::IamMoto) that enforces IAM).

use std::time::Duration;

use aws_sdk_ec2::types::{InstanceType, ResourceType, Tag, TagSpecification};
use k8s_openapi::api::core::v1::{Event, Node, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use mcm_provider_aws::api::machine::Machine;
use mcm_provider_aws::api::machine_class::MachineClass;
use mcm_provider_aws::api::shared::{MachineOperationType, MachinePhase, MachineState};
use serde_json::{Value, json};

use super::ec2::{self, Network};
use super::fixtures::machine;
use super::iam::{IamMoto, Keys, iam_call};
use super::kubelet::Kubelet;
use super::operator::{Launch, Operator};
use super::proxy::FaultProxy;
use super::wait::eventually_or;
use super::{TEST_MANAGER, TestEnv, env, install_crds, namespace};

pub const CLASS: &str = "workers";
pub const SECRET: &str = "aws";
/// The user data of the scenario's Secret: both of MCM's placeholders, the
/// token where the kubelet stand-in's node agent reads it
/// ([`super::kubelet::TOKEN_LINE`]), so every machine joins with a real
/// bootstrap token.
pub const USER_DATA: &str = "#cloud-config\nhostname: <<MACHINE_NAME>>\nwrite_files:\n- path: /var/lib/node-agent/token\n  content: |\n    bootstrap-token: <<BOOTSTRAP_TOKEN>>\n";

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
    pub cloud: Cloud,
}

/// The moto a scenario runs against (EC2, STS and IAM on one URL) and the
/// keys of its parts.
#[derive(Clone, Debug)]
pub struct Cloud {
    pub url: String,
    /// Keys of the test's own EC2 client (setup, kubelet stand-in, checks).
    pub test_keys: Keys,
    /// Keys the class's Secret holds.
    pub class_keys: Keys,
    /// Keys that sign the test's IAM calls; `None`: moto checks nothing.
    pub iam_keys: Option<Keys>,
}

impl Cloud {
    /// The environment's moto, which takes any key.
    pub fn shared() -> Cloud {
        Cloud {
            url: env().var("MCM_TEST_MOTO_URL").to_string(),
            test_keys: Keys {
                id: "testing".into(),
                secret: "testing".into(),
            },
            class_keys: Keys {
                id: "testing".into(),
                secret: "testing-secret".into(),
            },
            iam_keys: None,
        }
    }

    /// `moto`, set up by its administrator, with `class_keys` in the
    /// class's Secret.
    pub fn iam(moto: &IamMoto, class_keys: Keys) -> Cloud {
        Cloud {
            url: moto.url.clone(),
            test_keys: moto.admin.clone(),
            class_keys,
            iam_keys: Some(moto.admin.clone()),
        }
    }
}

/// How [`Scenario::start_setup`] builds a scenario; `Setup::default()` is
/// [`Scenario::start`].
pub struct Setup<'a> {
    /// The operator reaches EC2 through a [`FaultProxy`].
    pub proxy: bool,
    /// Operator flags beyond [`FAST_FLAGS`].
    pub flags: &'a [&'a str],
    /// The Nodes live in this API server (`--target-kubeconfig`).
    pub target: Option<&'static TestEnv>,
    /// Where EC2 is (default: the shared moto).
    pub cloud: Cloud,
    /// The class Secret's `stringData` (default: the cloud's class keys and
    /// a small userData).
    pub secret: Option<Value>,
    /// More environment variables of the operator.
    pub env: Vec<(String, String)>,
}

impl Default for Setup<'_> {
    fn default() -> Self {
        Setup {
            proxy: false,
            flags: &[],
            target: None,
            cloud: Cloud::shared(),
            secret: None,
            env: Vec::new(),
        }
    }
}

/// Creates instance profile `name` holding role `role` (which EC2 may
/// assume) in the moto at `url`, signing with `keys` when moto checks.
pub fn instance_profile_with_role(url: &str, keys: Option<&Keys>, name: &str, role: &str) {
    let trust = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ec2.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;
    iam_call(
        url,
        keys,
        "CreateRole",
        &[("RoleName", role), ("AssumeRolePolicyDocument", trust)],
    );
    iam_call(
        url,
        keys,
        "CreateInstanceProfile",
        &[("InstanceProfileName", name)],
    );
    iam_call(
        url,
        keys,
        "AddRoleToInstanceProfile",
        &[("InstanceProfileName", name), ("RoleName", role)],
    );
}

impl Scenario {
    /// Everything up, operator talking to moto directly.
    pub async fn start(prefix: &str) -> Scenario {
        Self::start_setup(prefix, Setup::default()).await
    }

    /// Everything up; with `proxy`, the operator reaches moto through a
    /// [`FaultProxy`].
    pub async fn start_with(prefix: &str, proxy: bool, flags: &[&str]) -> Scenario {
        Self::start_setup(
            prefix,
            Setup {
                proxy,
                flags,
                ..Setup::default()
            },
        )
        .await
    }

    /// Everything up, with the Nodes (kubelet stand-in) in `target`'s API
    /// server and the operator pointed there with `--target-kubeconfig`.
    pub async fn start_with_target(prefix: &str, target: &'static TestEnv) -> Scenario {
        Self::start_setup(
            prefix,
            Setup {
                target: Some(target),
                ..Setup::default()
            },
        )
        .await
    }

    /// Everything up as `setup` says. The instance profile is
    /// `profile-<ns>` with role `<ns>-nodes` (the namespace is the cluster
    /// name of the class's `kubernetes.io/cluster/<ns>` tag).
    pub async fn start_setup(prefix: &str, setup: Setup<'_>) -> Scenario {
        let Setup {
            proxy,
            flags: extra_flags,
            target,
            cloud,
            secret,
            env: extra_env,
        } = setup;
        let client = env().client().await;
        install_crds(&client).await;
        let ns = namespace(&client, prefix).await;
        let ec2 = ec2::client_at(&cloud.url, &cloud.test_keys).await;
        let net = ec2::network(&ec2).await;
        instance_profile_with_role(
            &cloud.url,
            cloud.iam_keys.as_ref(),
            &format!("profile-{ns}"),
            &format!("{ns}-nodes"),
        );
        let secret = secret.unwrap_or_else(|| {
            json!({
                "providerAccessKeyId": cloud.class_keys.id,
                "providerSecretAccessKey": cloud.class_keys.secret,
                "userData": USER_DATA,
            })
        });
        create_secret(&client, &ns, SECRET, secret).await;
        let node_client = match target {
            Some(t) => t.client().await,
            None => client.clone(),
        };
        let kubelet = Kubelet::start(node_client, ec2.clone(), &ns);
        let proxy = if proxy {
            Some(FaultProxy::start(&cloud.url).await)
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
            .unwrap_or_else(|| cloud.url.clone());
        let launch = Launch {
            ec2_endpoint: Some(endpoint),
            sts_endpoint: Some(cloud.url.clone()),
            env: extra_env,
            ..Launch::default()
        };
        let op = Operator::launch(&ns, &flags, launch);
        let scenario = Scenario {
            client,
            ns,
            ec2,
            net,
            kubelet,
            op,
            proxy,
            cloud,
        };
        scenario.apply_class(CLASS, |_| {}).await;
        scenario
    }

    /// Creates Secret `name` in this namespace with `string_data`.
    pub async fn create_secret(&self, name: &str, string_data: Value) {
        create_secret(&self.client, &self.ns, name, string_data).await;
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
        self.create_machine_of(name, CLASS).await
    }

    /// Creates Machine `name` of MachineClass `class`.
    pub async fn create_machine_of(&self, name: &str, class: &str) -> Machine {
        self.machines()
            .create(&PostParams::default(), &machine(&self.ns, name, class))
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

    /// Waits until Machine `name`'s `lastOperation.description` contains
    /// `needle`, and returns the Machine.
    pub async fn wait_description(&self, name: &str, needle: &str) -> Machine {
        self.wait_machine(&format!("machine {name} to report {needle:?}"), name, |m| {
            m.status
                .as_ref()
                .is_some_and(|s| s.last_operation.description.contains(needle))
        })
        .await
    }

    /// Waits until Machine `name`'s `lastOperation` reports a failed `op`
    /// whose description contains `needle`, and returns the Machine.
    pub async fn wait_failure(
        &self,
        name: &str,
        op: MachineOperationType,
        needle: &str,
    ) -> Machine {
        let what = format!("a failed {op:?} mentioning {needle} in {name}'s lastOperation");
        self.wait_machine(&what, name, |m| {
            m.status.as_ref().is_some_and(|s| {
                let last = &s.last_operation;
                last.type_ == Some(op)
                    && last.state == Some(MachineState::Failed)
                    && last.description.contains(needle)
            })
        })
        .await
    }

    /// Waits until Machine `name` satisfies `done`, and returns it.
    pub async fn wait_machine(
        &self,
        what: &str,
        name: &str,
        done: impl Fn(&Machine) -> bool,
    ) -> Machine {
        let api = self.machines();
        let done = &done;
        eventually_or(
            what,
            Duration::from_secs(60),
            || {
                let api = api.clone();
                async move { api.get_opt(name).await.ok().flatten().filter(|m| done(m)) }
            },
            || self.op.log(),
        )
        .await
    }

    /// Waits for an Event about `name` that starts with `prefix` (`"Warning
    /// DeleteFailed"`) and mentions `needle` (Events follow the status
    /// write, so they may lag it a little); returns it.
    pub async fn wait_event(&self, name: &str, prefix: &str, needle: &str) -> String {
        eventually_or(
            &format!("an Event {prefix} about {name} mentioning {needle}"),
            Duration::from_secs(60),
            || async {
                self.events_of(name)
                    .await
                    .into_iter()
                    .find(|e| e.starts_with(prefix) && e.contains(needle))
            },
            || self.op.log(),
        )
        .await
    }

    /// A change to Machine `name`, so that the operator looks again at once
    /// rather than after the long back-off for permission errors.
    pub async fn nudge(&self, name: &str) {
        let patch =
            json!({"metadata": {"annotations": {"test/nudge": Timestamp::now().to_string()}}});
        self.machines()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    }

    /// Starts an instance with `tags` in this scenario's subnet, straight
    /// in EC2 (no Machine); returns its ID.
    pub async fn run_tagged_instance(&self, tags: Vec<(String, String)>) -> String {
        let spec = tags.into_iter().fold(
            TagSpecification::builder().resource_type(ResourceType::Instance),
            |b, (k, v)| b.tags(Tag::builder().key(k).value(v).build()),
        );
        let out = self
            .ec2
            .run_instances()
            .image_id(&self.net.ami)
            .instance_type(InstanceType::T3Micro)
            .subnet_id(&self.net.subnet_id)
            .min_count(1)
            .max_count(1)
            .tag_specifications(spec.build())
            .send()
            .await
            .unwrap_or_else(|e| panic!("RunInstances: {e:?}"));
        out.instances()[0].instance_id().unwrap().to_string()
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

    /// IDs of the live instances of this namespace in moto.
    pub async fn live_instance_ids(&self) -> Vec<String> {
        self.live_instances()
            .await
            .iter()
            .filter_map(|i| i.instance_id().map(String::from))
            .collect()
    }

    pub fn name_of(m: &Machine) -> String {
        m.name_any()
    }
}

async fn create_secret(client: &Client, ns: &str, name: &str, string_data: Value) {
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": ns},
        "stringData": string_data,
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap_or_else(|e| panic!("create secret {ns}/{name}: {e}"));
}
