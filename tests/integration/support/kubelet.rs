//! A kubelet stand-in. The test environment has no kubelet, so this plays the
//! kubelet (with cloud-provider-aws) of every EC2 instance of one test
//! namespace, where the operator can tell the difference:
//!
//! - a pending/running instance of the namespace (one tagged with one of its
//!   Machines, or launched by one of its batched launches: a real kubelet
//!   does not wait for EC2 tags) gets a Node named after its private DNS name,
//!   with `spec.providerID = aws:///<availability-zone>/<instance-id>` (the
//!   zone, not the region, as cloud-provider-aws sets it), the well-known
//!   labels and a `Ready=True` condition. Like the real kubelet it registers
//!   once: a Node deleted later is not re-created.
//! - once the instance is stopping, stopped, shutting-down, terminated or
//!   gone, the Node's Ready condition turns `Unknown`, as the node lifecycle
//!   controller does when a kubelet stops posting status. Removing the Node is
//!   the operator's job.
//! - EC2 reuses the private IP, and so the node name, of a terminated
//!   instance. A Node name speaks for the latest instance that registered
//!   it; a leftover Node of a terminated instance in the way of a new one is
//!   removed first (as the cloud node lifecycle controller does) and the new
//!   instance registers on the next pass.
//! - like a node agent joining with a bootstrap token, it registers only
//!   when the instance's user data (read back from EC2) lets it: a line
//!   `bootstrap-token: <id>.<secret>` must name a live Secret
//!   `kube-system/bootstrap-token-<id>` of its cluster with that secret,
//!   usable for authentication and not expired, as the API server's
//!   bootstrap token authenticator requires; a placeholder left in the user
//!   data never joins. User data without such a line joins as before.
//!   [`Kubelet::joined_with`] tells which token (and Secret) an instance
//!   joined with, [`Kubelet::refusal`] why it did not.
//! - Pods bound to a Ready Node that are being deleted (e.g. evicted) are
//!   finished with a grace period of 0, as the kubelet does once their
//!   containers stopped. On a NotReady/Unknown Node nobody finishes them:
//!   they stay Terminating, as they would in a real cluster.
//!
//! There is no scheduler either: a test puts a Pod on a Node by creating it
//! with `spec.nodeName` set, see [`pod_on_node`].
//!
//! A pass is cheap at a thousand instances: new Nodes register a few at a
//! time, a Node's status is written only when its readiness changes (the
//! stand-in remembers what it reported), and the Pods to finish come from
//! one list per pass.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use aws_sdk_ec2::types::Instance;
use futures::{StreamExt, stream};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use super::ec2::{state, try_current_instances_of_namespace, try_user_data};

/// How often the stand-in looks at EC2 and the API server.
const TICK: Duration = Duration::from_millis(300);
/// How many Nodes register at once (each reads the instance's user data,
/// maybe a Secret, then creates the Node and writes its status).
const REGISTRATIONS_AT_ONCE: usize = 16;
/// The image of every test Pod. Nothing ever pulls or runs it.
pub const PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.9";

/// A running kubelet stand-in for the instances of one namespace; see the
/// module docs. Stops when dropped.
pub struct Kubelet {
    shared: Arc<Mutex<Shared>>,
    task: tokio::task::JoinHandle<()>,
}

/// What the test and the background task share.
#[derive(Default)]
struct Shared {
    /// Instance ID → name of the Node registered for it.
    nodes: BTreeMap<String, String>,
    /// Node name → the instance that registered it last. EC2 reuses the
    /// private IPs (and so the node names) of terminated instances; a name
    /// speaks for its latest instance only.
    owners: BTreeMap<String, String>,
    /// Node name → readiness the test forces ([`Kubelet::set_ready`]).
    forced_ready: BTreeMap<String, bool>,
    /// Instance ID → the bootstrap token it joined with.
    joined: BTreeMap<String, JoinedWith>,
    /// Instance ID → why its node agent could not join (so far).
    refused: BTreeMap<String, String>,
    /// No new Node registers while set ([`Kubelet::hold_registrations`]).
    hold: bool,
    /// Node name → the readiness last written to it (or found deleted).
    reported: BTreeMap<String, Readiness>,
    /// How long the last pass took, and its listing of the instances.
    last_pass: Option<PassTimes>,
    /// The error of the last failed pass; the loop carries on regardless.
    last_error: Option<String>,
}

impl Kubelet {
    /// Starts playing the kubelet for every instance tagged with a Machine of
    /// namespace `ns`. Must be called inside a tokio runtime (the test's).
    pub fn start(client: Client, ec2: aws_sdk_ec2::Client, ns: &str) -> Kubelet {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let agent = Agent {
            nodes: Api::all(client.clone()),
            pods: Api::all(client.clone()),
            client,
            ec2,
            ns: ns.to_string(),
            shared: shared.clone(),
        };
        Kubelet {
            shared,
            task: tokio::spawn(agent.run()),
        }
    }

    /// Makes `node` report `Ready=True` (`true`) or `Ready=False` (`false`,
    /// an unhealthy kubelet) while its instance runs. `true` is the default.
    pub fn set_ready(&self, node: &str, ready: bool) {
        lock(&self.shared)
            .forced_ready
            .insert(node.to_string(), ready);
    }

    /// Names of the Nodes this stand-in registered, sorted.
    pub fn nodes(&self) -> Vec<String> {
        let names: BTreeSet<_> = lock(&self.shared).nodes.values().cloned().collect();
        names.into_iter().collect()
    }

    /// The Node registered for instance `instance_id`, once there is one.
    pub fn node_of(&self, instance_id: &str) -> Option<String> {
        lock(&self.shared).nodes.get(instance_id).cloned()
    }

    /// The bootstrap token instance `instance_id` joined with, once it did
    /// with one.
    pub fn joined_with(&self, instance_id: &str) -> Option<JoinedWith> {
        lock(&self.shared).joined.get(instance_id).cloned()
    }

    /// Why the node agent of `instance_id` has not joined, if it was refused.
    pub fn refusal(&self, instance_id: &str) -> Option<String> {
        lock(&self.shared).refused.get(instance_id).cloned()
    }

    /// While `hold` is true, no new Node registers (a node agent still
    /// booting); Nodes registered before carry on.
    pub fn hold_registrations(&self, hold: bool) {
        lock(&self.shared).hold = hold;
    }

    /// How long the last finished pass took (for benchmarks).
    pub fn last_pass(&self) -> Option<PassTimes> {
        lock(&self.shared).last_pass
    }

    /// The error of the last failed pass, if the latest pass failed; for
    /// assertion messages.
    pub fn last_error(&self) -> Option<String> {
        lock(&self.shared).last_error.clone()
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // A panic elsewhere must not hide this test's own failure behind a poison error.
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// The value of a Node's Ready condition: "True", "False" or "Unknown".
pub fn ready_status(node: &Node) -> Option<&str> {
    condition_status(node, "Ready")
}

/// The status of the Node's condition `type_`, if it has one.
pub fn condition_status<'a>(node: &'a Node, type_: &str) -> Option<&'a str> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.as_str())
}

/// How long one pass of the stand-in took.
#[derive(Clone, Copy, Debug)]
pub struct PassTimes {
    /// The whole pass.
    pub pass: Duration,
    /// Listing the namespace's instances (DescribeInstances).
    pub listing: Duration,
    /// Instances seen.
    pub instances: usize,
}

/// The bootstrap token an instance's node agent joined with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinedWith {
    /// `<id>.<secret>`, as the user data carried it.
    pub token: String,
    /// UID of the `bootstrap-token-<id>` Secret that accepted it.
    pub secret_uid: String,
}

/// Whether the node agent of an instance may join, judged as the API
/// server's bootstrap token authenticator would.
enum Join {
    /// The user data carries no bootstrap token: joins by other means.
    WithoutToken,
    With(JoinedWith),
    Refused(String),
}

/// The user data line the tests' bootstrap scripts carry their token in.
pub const TOKEN_LINE: &str = "bootstrap-token: ";

/// The Ready condition the stand-in reports for a Node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Readiness {
    True,
    False,
    Unknown,
}

impl Readiness {
    fn condition(self, now: &Time) -> Value {
        let (status, reason, message) = match self {
            Readiness::True => ("True", "KubeletReady", "kubelet is posting ready status"),
            Readiness::False => (
                "False",
                "KubeletNotReady",
                "the test made this kubelet report NotReady",
            ),
            Readiness::Unknown => (
                "Unknown",
                "NodeStatusUnknown",
                "Kubelet stopped posting node status.",
            ),
        };
        json!({
            "type": "Ready", "status": status, "reason": reason, "message": message,
            "lastHeartbeatTime": now, "lastTransitionTime": now,
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            Readiness::True => "True",
            Readiness::False => "False",
            Readiness::Unknown => "Unknown",
        }
    }
}

/// The background task.
struct Agent {
    client: Client,
    nodes: Api<Node>,
    pods: Api<Pod>,
    ec2: aws_sdk_ec2::Client,
    ns: String,
    shared: Arc<Mutex<Shared>>,
}

impl Agent {
    async fn run(self) {
        loop {
            let started = tokio::time::Instant::now();
            let result = self.pass().await;
            let rest = match &result {
                Ok(times) => TICK.max(times.listing),
                Err(e) => {
                    eprintln!("kubelet stand-in for namespace {}: {e}", self.ns);
                    TICK
                }
            };
            {
                let mut shared = lock(&self.shared);
                match result {
                    Ok(times) => {
                        shared.last_pass = Some(PassTimes {
                            pass: started.elapsed(),
                            ..times
                        });
                        shared.last_error = None;
                    }
                    Err(e) => shared.last_error = Some(e),
                }
            }
            tokio::time::sleep(rest).await;
        }
    }

    /// One look at every instance of the namespace and every Node
    /// registered. Returns how long listing the instances took: moto lists
    /// a thousand slowly, and the next pass waits as long, which leaves
    /// moto at least half its time for the operator.
    async fn pass(&self) -> Result<PassTimes, String> {
        let listing = tokio::time::Instant::now();
        // Terminated instances are as good as gone (their Nodes turn
        // Unknown either way), and moto lists every one it ever had.
        let instances = try_current_instances_of_namespace(&self.ec2, &self.ns)
            .await
            .map_err(|e| format!("DescribeInstances: {e}"))?;
        let listing = listing.elapsed();
        let running = |i: &Instance| matches!(state(i), "pending" | "running");
        let unregistered: Vec<Instance> = {
            let shared = lock(&self.shared);
            instances
                .iter()
                .filter(|i| running(i) && !shared.hold)
                .filter(|i| {
                    i.instance_id()
                        .is_some_and(|id| !shared.nodes.contains_key(id))
                })
                .cloned()
                .collect()
        };
        let registered: Vec<Result<(), String>> = stream::iter(unregistered)
            .map(|i| async move { self.register(&i).await })
            .buffer_unordered(REGISTRATIONS_AT_ONCE)
            .collect()
            .await;
        let mut failure = registered.into_iter().find_map(Result::err);
        let mut seen = BTreeSet::new();
        let mut ready = BTreeSet::new();
        for instance in &instances {
            let Some(id) = instance.instance_id() else {
                continue;
            };
            seen.insert(id.to_string());
            let Some(node) = self.node_of_instance(id) else {
                continue;
            };
            let readiness = match (running(instance), self.forced_ready(&node)) {
                (false, _) => Readiness::Unknown,
                (true, Some(false)) => Readiness::False,
                (true, _) => Readiness::True,
            };
            if let Err(e) = self.report(&node, readiness).await {
                failure.get_or_insert(e);
            }
            if readiness == Readiness::True {
                ready.insert(node);
            }
        }
        self.finish_deleted_pods(&ready).await?;
        // Instances EC2 has forgotten altogether.
        let gone: Vec<String> = {
            let shared = lock(&self.shared);
            shared
                .nodes
                .iter()
                .filter(|(id, node)| !seen.contains(*id) && shared.owners.get(*node) == Some(*id))
                .map(|(_, node)| node.clone())
                .collect()
        };
        for node in gone {
            self.report(&node, Readiness::Unknown).await?;
        }
        let times = PassTimes {
            pass: Duration::ZERO,
            listing,
            instances: instances.len(),
        };
        failure.map_or(Ok(times), Err)
    }

    /// The Node of instance `id`, unless a newer instance took its name.
    fn node_of_instance(&self, id: &str) -> Option<String> {
        let shared = lock(&self.shared);
        let node = shared.nodes.get(id)?;
        (shared.owners.get(node).map(String::as_str) == Some(id)).then(|| node.clone())
    }

    fn forced_ready(&self, node: &str) -> Option<bool> {
        lock(&self.shared).forced_ready.get(node).copied()
    }

    /// Registers the Node of a running instance, once.
    async fn register(&self, instance: &Instance) -> Result<(), String> {
        let Some(id) = instance.instance_id() else {
            return Ok(());
        };
        let name = match instance.private_dns_name() {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => return Ok(()), // not known yet; try again next pass
        };
        match self.join(id).await? {
            Join::WithoutToken => {}
            Join::With(joined) => {
                let mut shared = lock(&self.shared);
                shared.refused.remove(id);
                shared.joined.insert(id.to_string(), joined);
            }
            Join::Refused(why) => {
                lock(&self.shared).refused.insert(id.to_string(), why);
                return Ok(()); // a node agent retries
            }
        }
        let node: Node = serde_json::from_value(node_object(&name, instance))
            .map_err(|e| format!("build Node {name}: {e}"))?;
        match self.nodes.create(&PostParams::default(), &node).await {
            Ok(_) => {}
            // A previous pass created it but failed before recording it, or
            // the Node of a terminated instance whose IP EC2 gave to this
            // one is still there: the cloud node lifecycle controller
            // removes such Nodes, and this kubelet then registers.
            Err(kube::Error::Api(s)) if s.is_already_exists() => {
                let existing = self
                    .nodes
                    .get_opt(&name)
                    .await
                    .map_err(|e| format!("get Node {name}: {e}"))?;
                let stale = existing.as_ref().filter(|n| {
                    n.spec
                        .as_ref()
                        .and_then(|s| s.provider_id.as_deref())
                        .is_some_and(|p| !p.ends_with(&format!("/{id}")))
                });
                if let Some(stale) = stale {
                    let params = DeleteParams {
                        preconditions: Some(Preconditions {
                            uid: stale.uid(),
                            resource_version: None,
                        }),
                        ..DeleteParams::default()
                    };
                    match self.nodes.delete(&name, &params).await {
                        Ok(_) => {}
                        Err(kube::Error::Api(s)) if s.is_not_found() || s.is_conflict() => {}
                        Err(e) => return Err(format!("delete stale Node {name}: {e}")),
                    }
                    // Registered on the next pass, once the old one is gone.
                    return Ok(());
                }
            }
            Err(e) => return Err(format!("create Node {name}: {e}")),
        }
        // Status is a subresource: the create above dropped it.
        let now = Time(Timestamp::now());
        let pressure = |type_: &str, reason: &str| {
            json!({"type": type_, "status": "False", "reason": reason,
                   "lastHeartbeatTime": now, "lastTransitionTime": now})
        };
        let status = json!({"status": {
            "addresses": node_addresses(&name, instance),
            "conditions": [
                pressure("MemoryPressure", "KubeletHasSufficientMemory"),
                pressure("DiskPressure", "KubeletHasNoDiskPressure"),
                pressure("PIDPressure", "KubeletHasSufficientPID"),
                Readiness::True.condition(&now),
            ],
        }});
        self.nodes
            .patch_status(&name, &PatchParams::default(), &Patch::Strategic(status))
            .await
            .map_err(|e| format!("register status of Node {name}: {e}"))?;
        let mut shared = lock(&self.shared);
        // A readiness forced on this name was about the previous instance
        // that had it (EC2 reuses private IPs, and with them node names):
        // the new kubelet reports its own.
        if shared.owners.get(&name).is_some_and(|owner| owner != id) {
            shared.forced_ready.remove(&name);
        }
        shared.owners.insert(name.clone(), id.to_string());
        shared.reported.insert(name.clone(), Readiness::True);
        shared.nodes.insert(id.to_string(), name);
        Ok(())
    }

    /// Whether the node agent of instance `id` can join, from its user data
    /// and the bootstrap token Secrets of the cluster.
    async fn join(&self, id: &str) -> Result<Join, String> {
        let user_data = try_user_data(&self.ec2, id).await?;
        if user_data.contains("<<BOOTSTRAP_TOKEN>>") || user_data.contains("%3C%3CBOOTSTRAP_TOKEN")
        {
            return Ok(Join::Refused(
                "the user data still holds the token placeholder".into(),
            ));
        }
        let Some(token) = user_data
            .lines()
            .find_map(|l| l.trim().strip_prefix(TOKEN_LINE))
            .map(str::trim)
        else {
            return Ok(Join::WithoutToken);
        };
        let Some((token_id, secret)) = token.split_once('.') else {
            return Ok(Join::Refused(format!("{token:?} is not a bootstrap token")));
        };
        let secrets = Api::<Secret>::namespaced(self.client.clone(), "kube-system");
        let name = format!("bootstrap-token-{token_id}");
        let Some(s) = secrets
            .get_opt(&name)
            .await
            .map_err(|e| format!("get Secret kube-system/{name}: {e}"))?
        else {
            return Ok(Join::Refused(format!("no Secret kube-system/{name}")));
        };
        let field = |k: &str| {
            s.data
                .as_ref()
                .and_then(|d| d.get(k))
                .map(|v| String::from_utf8_lossy(&v.0).into_owned())
        };
        let expired = field("expiration")
            .and_then(|e| e.parse::<Timestamp>().ok())
            .is_some_and(|e| e <= Timestamp::now());
        let refusal = if s.type_.as_deref() != Some("bootstrap.kubernetes.io/token") {
            Some("not of type bootstrap.kubernetes.io/token")
        } else if field("token-id").as_deref() != Some(token_id)
            || field("token-secret").as_deref() != Some(secret)
        {
            Some("another token")
        } else if field("usage-bootstrap-authentication").as_deref() != Some("true") {
            Some("not for authentication")
        } else if expired {
            Some("expired")
        } else {
            None
        };
        Ok(match refusal {
            Some(why) => Join::Refused(format!("Secret kube-system/{name}: {why}")),
            None => Join::With(JoinedWith {
                token: token.to_string(),
                secret_uid: s.uid().unwrap_or_default(),
            }),
        })
    }

    /// Sets the Node's Ready condition when it differs from what this
    /// stand-in reported last (nobody else writes it) and the Node exists.
    async fn report(&self, node: &str, readiness: Readiness) -> Result<(), String> {
        if lock(&self.shared).reported.get(node) == Some(&readiness) {
            return Ok(());
        }
        let now = Time(Timestamp::now());
        let patch = json!({"status": {"conditions": [readiness.condition(&now)]}});
        match self
            .nodes
            .patch_status(node, &PatchParams::default(), &Patch::Strategic(patch))
            .await
        {
            Ok(_) => {}
            // Deleted (by the operator): a kubelet does not re-register.
            Err(kube::Error::Api(s)) if s.is_not_found() => {}
            Err(e) => {
                return Err(format!(
                    "set Ready={} on Node {node}: {e}",
                    readiness.as_str()
                ));
            }
        }
        lock(&self.shared)
            .reported
            .insert(node.to_string(), readiness);
        Ok(())
    }

    /// Finishes the Pods on `nodes` that are being deleted, as a kubelet
    /// does once their containers have stopped (one list for all Nodes).
    async fn finish_deleted_pods(&self, nodes: &BTreeSet<String>) -> Result<(), String> {
        if nodes.is_empty() {
            return Ok(());
        }
        let pods = self
            .pods
            .list(&ListParams::default())
            .await
            .map_err(|e| format!("list Pods: {e}"))?;
        for pod in pods {
            let on_ours = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_ref())
                .is_some_and(|n| nodes.contains(n));
            let finished = pod.metadata.deletion_grace_period_seconds == Some(0);
            if !on_ours || pod.metadata.deletion_timestamp.is_none() || finished {
                continue;
            }
            let api =
                Api::<Pod>::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
            let params = DeleteParams {
                grace_period_seconds: Some(0),
                // Only this Pod, never a new one that took its name.
                preconditions: Some(Preconditions {
                    uid: pod.uid(),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match api.delete(&pod.name_any(), &params).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.is_not_found() || s.is_conflict() => {}
                Err(e) => return Err(format!("finish Pod {}: {e}", pod.name_any())),
            }
        }
        Ok(())
    }
}

/// The Node a kubelet with cloud-provider-aws registers for `instance`.
fn node_object(name: &str, instance: &Instance) -> Value {
    let zone = instance
        .placement()
        .and_then(|p| p.availability_zone())
        .unwrap_or_default();
    let region = zone.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let id = instance.instance_id().unwrap_or_default();
    let instance_type = instance
        .instance_type()
        .map(|t| t.as_str())
        .unwrap_or_default();
    let arch = match instance.architecture().map(|a| a.as_str()) {
        Some("arm64") => "arm64",
        _ => "amd64",
    };
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": arch,
                "node.kubernetes.io/instance-type": instance_type,
                "topology.kubernetes.io/zone": zone,
                "topology.kubernetes.io/region": region,
            },
        },
        "spec": {"providerID": format!("aws:///{zone}/{id}")},
    })
}

fn node_addresses(name: &str, instance: &Instance) -> Value {
    let mut addresses = Vec::new();
    if let Some(ip) = instance.private_ip_address() {
        addresses.push(json!({"type": "InternalIP", "address": ip}));
    }
    addresses.push(json!({"type": "InternalDNS", "address": name}));
    addresses.push(json!({"type": "Hostname", "address": name}));
    Value::Array(addresses)
}

/// Creates Pod `name` in `ns`, already bound to `node` (there is no
/// scheduler). Nothing runs it; the kubelet stand-in only finishes it when
/// it is deleted.
pub async fn pod_on_node(client: &Client, ns: &str, name: &str, node: &str) -> Pod {
    create_pod(client, ns, pod_object(name, node, json!({}), json!([]))).await
}

/// Creates Pod `name` on `node` with a termination grace period of
/// `grace_seconds` and a finalizer (`test.example/hold`) that keeps it
/// Terminating after it is deleted, until the test removes it.
pub async fn lingering_pod_on_node(
    client: &Client,
    ns: &str,
    name: &str,
    node: &str,
    grace_seconds: i64,
) -> Pod {
    let mut pod = pod_object(name, node, json!({}), json!([]));
    pod["metadata"]["finalizers"] = json!(["test.example/hold"]);
    pod["spec"]["terminationGracePeriodSeconds"] = json!(grace_seconds);
    create_pod(client, ns, pod).await
}

/// Creates Pod `name` on `node`, reported Running (a Pending Pod may be
/// evicted whatever its budget says), with a PodDisruptionBudget of the same
/// name that allows no disruption (`minAvailable: 1`; no disruption
/// controller runs here, so it never allows one): evictions of it answer 429
/// until a drain is forced.
pub async fn guarded_pod_on_node(client: &Client, ns: &str, name: &str, node: &str) -> Pod {
    let labels = json!({"guarded-by": name});
    let pod = create_pod(
        client,
        ns,
        pod_object(name, node, labels.clone(), json!([])),
    )
    .await;
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    let running = json!({"status": {"phase": "Running"}});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&running))
        .await
        .expect("report the pod Running");
    let pdb: PodDisruptionBudget = serde_json::from_value(json!({
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": labels}},
    }))
    .expect("PodDisruptionBudget object");
    Api::<PodDisruptionBudget>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &pdb)
        .await
        .expect("create the PodDisruptionBudget");
    pod
}

/// Creates, in `ns`, a Pod of DaemonSet `daemonset` bound to `node`, the way
/// the DaemonSet controller would (a generated name and a controller
/// ownerReference). The DaemonSet is created first when missing, so that the
/// reference is real; the environment runs no DaemonSet controller, so it
/// never makes Pods of its own.
pub async fn daemonset_pod_on_node(client: &Client, ns: &str, daemonset: &str, node: &str) -> Pod {
    let ds = ensure_daemonset(client, ns, daemonset).await;
    let owner = json!([{
        "apiVersion": "apps/v1", "kind": "DaemonSet", "name": daemonset,
        "uid": ds.uid().expect("DaemonSet uid"),
        "controller": true, "blockOwnerDeletion": true,
    }]);
    let mut pod = pod_object("", node, json!({"app": daemonset}), owner);
    pod["metadata"]["generateName"] = json!(format!("{daemonset}-"));
    if let Some(meta) = pod["metadata"].as_object_mut() {
        meta.remove("name");
    }
    create_pod(client, ns, pod).await
}

/// Creates a mirror Pod (the API copy of a static Pod: the
/// `kubernetes.io/config.mirror` annotation and the Node as owner) on `node`;
/// drains must leave it alone.
pub async fn mirror_pod_on_node(client: &Client, ns: &str, name: &str, node: &str) -> Pod {
    let node_obj = Api::<Node>::all(client.clone())
        .get(node)
        .await
        .unwrap_or_else(|e| panic!("get Node {node}: {e}"));
    let owner = json!([{
        "apiVersion": "v1", "kind": "Node", "name": node,
        "uid": node_obj.uid().expect("Node uid"), "controller": true,
    }]);
    let mut pod = pod_object(name, node, json!({}), owner);
    pod["metadata"]["annotations"] = json!({
        "kubernetes.io/config.mirror": "mirror-of-a-static-pod",
        "kubernetes.io/config.source": "file",
    });
    create_pod(client, ns, pod).await
}

async fn ensure_daemonset(client: &Client, ns: &str, name: &str) -> DaemonSet {
    let api = Api::<DaemonSet>::namespaced(client.clone(), ns);
    let ds: DaemonSet = serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "pause", "image": PAUSE_IMAGE}]},
            },
        },
    }))
    .expect("DaemonSet object");
    match api.create(&PostParams::default(), &ds).await {
        Ok(ds) => ds,
        Err(kube::Error::Api(s)) if s.is_already_exists() => api
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("get DaemonSet {ns}/{name}: {e}")),
        Err(e) => panic!("create DaemonSet {ns}/{name}: {e}"),
    }
}

fn pod_object(name: &str, node: &str, labels: Value, owners: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels, "ownerReferences": owners},
        "spec": {
            "nodeName": node,
            // No token to wait for: the namespace's ServiceAccount is enough.
            "automountServiceAccountToken": false,
            "containers": [{"name": "pause", "image": PAUSE_IMAGE}],
        },
    })
}

/// Creates a Pod, retrying while the namespace's `default` ServiceAccount
/// (which admission requires) has not been created yet.
async fn create_pod(client: &Client, ns: &str, pod: Value) -> Pod {
    let pod: Pod = serde_json::from_value(pod).expect("Pod object");
    let api = Api::<Pod>::namespaced(client.clone(), ns);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match api.create(&PostParams::default(), &pod).await {
            Ok(created) => return created,
            Err(kube::Error::Api(s))
                if s.message.contains("service account")
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("create Pod {}/{}: {e}", ns, pod.name_any()),
        }
    }
}
