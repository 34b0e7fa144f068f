//! `status.addresses` on Machines (MCM v0.60, MCM-CONTRACT §7): the
//! instance's addresses as EC2 reports them, in the Node's shape and with
//! MCM's field names, matching what the Node itself reports.

use std::time::Duration;

use k8s_openapi::api::core::v1::NodeAddress;
use mcm_provider_aws::api::shared::MachinePhase;

use crate::support::scenario::Scenario;
use crate::support::wait::eventually_or;

#[tokio::test]
async fn machine_status_lists_the_instance_addresses_as_the_node_does() {
    let s = Scenario::start("addresses").await;
    s.create_machine("a1").await;
    let m = s
        .wait_phase("a1", MachinePhase::Running, Duration::from_secs(120))
        .await;
    let live = s.live_instances().await;
    let instance = &live[0];
    let ip = instance.private_ip_address().unwrap().to_string();
    let dns = instance.private_dns_name().unwrap().to_string();
    let address = |type_: &str, address: &str| NodeAddress {
        type_: type_.into(),
        address: address.into(),
    };
    let wanted = vec![
        address("InternalIP", &ip),
        address("InternalDNS", &dns),
        address("Hostname", &dns),
    ];
    let cached: Vec<NodeAddress> = m
        .status
        .as_ref()
        .unwrap()
        .addresses
        .iter()
        .map(|a| NodeAddress {
            type_: a.type_.to_string(),
            address: a.address.to_string(),
        })
        .collect();
    assert_eq!(cached, wanted);

    // On the wire as MCM names it.
    let raw: serde_json::Value = serde_json::from_str(
        &s.machines()
            .get_status("a1")
            .await
            .map(|m| serde_json::to_string(&m).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        raw["status"]["addresses"][0],
        serde_json::json!({"type": "InternalIP", "address": ip})
    );

    // The Node (registered by the kubelet stand-in) says the same.
    let node = eventually_or(
        "the machine's Node",
        Duration::from_secs(30),
        || async { s.node(m.node_name()?).await },
        || s.op.log(),
    )
    .await;
    let mut node_addresses = node.status.unwrap().addresses.unwrap();
    let mut ours = wanted;
    node_addresses.sort_by(|a, b| (&a.type_, &a.address).cmp(&(&b.type_, &b.address)));
    ours.sort_by(|a, b| (&a.type_, &a.address).cmp(&(&b.type_, &b.address)));
    assert_eq!(node_addresses, ours);
}
