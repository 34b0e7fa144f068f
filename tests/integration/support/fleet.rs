//! MachineSets and MachineDeployments in tests: manifests of one class,
//! applies and patches, the machines of a pool, and waits for a pool or a
//! rollout to settle.

use std::collections::BTreeSet;
use std::time::Duration;

use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use mcm_provider_aws::api::machine::Machine;
use mcm_provider_aws::api::machine_deployment::{
    MACHINE_TEMPLATE_HASH_LABEL, MachineDeployment, MachineDeploymentConditionType,
};
use mcm_provider_aws::api::machine_set::MachineSet;
use mcm_provider_aws::api::shared::{ConditionStatus, MachinePhase};
use serde_json::{Value, json};

use super::TEST_MANAGER;
use super::scenario::{CLASS, Scenario};
use super::wait::eventually_or;

const MINUTE: Duration = Duration::from_secs(60);

/// A MachineDeployment (or MachineSet) of class [`CLASS`] selecting
/// `pool=<name>`.
pub fn fleet_json(kind: &str, s: &Scenario, name: &str, replicas: i32, extra: Value) -> Value {
    let mut spec = json!({
        "replicas": replicas,
        "selector": {"matchLabels": {"pool": name}},
        "template": {
            "metadata": {"labels": {"pool": name}},
            "spec": {"class": {"kind": "MachineClass", "name": CLASS}},
        },
    });
    merge(&mut spec, extra);
    json!({
        "apiVersion": "machine.sapcloud.io/v1alpha1", "kind": kind,
        "metadata": {"name": name, "namespace": s.ns},
        "spec": spec,
    })
}

/// Server-side applies MachineDeployment `name` of `replicas` machines
/// (see [`fleet_json`]).
pub async fn apply_deployment(s: &Scenario, name: &str, replicas: i32, extra: Value) {
    let d = fleet_json("MachineDeployment", s, name, replicas, extra);
    apply(&deployments(s), name, &d).await;
}

/// `spec` with a template change that rolls every machine: machine label
/// `rev: <rev>` (node template and machine configuration edits change
/// machines in place instead, see `node_template::`).
pub fn revised(spec: &Value, rev: &str) -> Value {
    let mut edited = spec.clone();
    edited["template"] = json!({"metadata": {"labels": {"rev": rev}}});
    edited
}

pub fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (slot, v) => *slot = v,
    }
}

pub fn deployments(s: &Scenario) -> Api<MachineDeployment> {
    Api::namespaced(s.client.clone(), &s.ns)
}

pub fn sets(s: &Scenario) -> Api<MachineSet> {
    Api::namespaced(s.client.clone(), &s.ns)
}

pub async fn apply<K>(api: &Api<K>, name: &str, object: &Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch(
        name,
        &PatchParams::apply(TEST_MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
    .unwrap_or_else(|e| panic!("apply {name}: {e}"));
}

pub async fn merge_patch<K>(api: &Api<K>, name: &str, patch: Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_or_else(|e| panic!("patch {name}: {e}"));
}

/// The machines of pool `name` (all, terminating ones included).
pub async fn pool(s: &Scenario, name: &str) -> Vec<Machine> {
    s.machines()
        .list(&ListParams::default().labels(&format!("pool={name}")))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

pub fn is_running(m: &Machine) -> bool {
    m.metadata.deletion_timestamp.is_none() && m.phase() == Some(MachinePhase::Running)
}

pub fn hash_of(m: &Machine) -> String {
    m.labels()
        .get(MACHINE_TEMPLATE_HASH_LABEL)
        .cloned()
        .unwrap_or_default()
}

/// Waits until pool `name` is exactly `n` Running machines (none being
/// deleted) and returns them, oldest first.
pub async fn wait_pool(s: &Scenario, name: &str, n: usize, timeout: Duration) -> Vec<Machine> {
    eventually_or(
        &format!("pool {name} to be {n} Running machines"),
        timeout,
        || async {
            let mut ms = pool(s, name).await;
            (ms.len() == n && ms.iter().all(is_running)).then(|| {
                ms.sort_by_key(|m| (m.creation_timestamp().map(|t| t.0), m.name_any()));
                ms
            })
        },
        || s.op.log(),
    )
    .await
}

/// Waits until deployment `name` reports a finished rollout to `n` machines
/// and its pool is those `n` Running machines of one MachineSet.
pub async fn wait_rolled_out(s: &Scenario, name: &str, n: i32, timeout: Duration) -> Vec<Machine> {
    eventually_or(
        &format!("deployment {name} to finish its rollout to {n}"),
        timeout,
        || async {
            let d = deployments(s).get(name).await.ok()?;
            let st = d.status.clone()?;
            let done = st.observed_generation == d.metadata.generation.unwrap_or_default()
                && (st.replicas, st.updated_replicas, st.available_replicas) == (n, n, n);
            let ms = pool(s, name).await;
            let one_set = ms.iter().map(hash_of).collect::<BTreeSet<_>>().len() <= 1;
            (done && one_set && ms.len() == n as usize && ms.iter().all(is_running)).then_some(ms)
        },
        || s.op.log(),
    )
    .await
}

/// Live instances of the namespace are exactly those of `machines`.
pub async fn assert_instances_match(
    s: &Scenario,
    machines: &[Machine],
) -> Vec<aws_sdk_ec2::types::Instance> {
    let wanted: BTreeSet<String> = machines
        .iter()
        .filter_map(|m| m.spec.provider_id.as_deref())
        .filter_map(|p| p.rsplit('/').next().map(str::to_string))
        .collect();
    eventually_or(
        "live instances to be exactly the machines' instances",
        MINUTE,
        || async {
            let live = s.live_instances().await;
            let ids: BTreeSet<String> = live
                .iter()
                .filter_map(|i| i.instance_id().map(str::to_string))
                .collect();
            (ids == wanted).then_some(live)
        },
        || s.op.log(),
    )
    .await
}

pub fn condition_reason(
    d: &MachineDeployment,
    t: MachineDeploymentConditionType,
) -> Option<(ConditionStatus, String)> {
    let c = d.status.as_ref()?.condition(t)?;
    Some((c.status, c.reason.clone().unwrap_or_default()))
}
