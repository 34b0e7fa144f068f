//! Measurements at scale (`make bench`, `#[ignore]`d): the operator's peak
//! memory and its steady-state API cost with N Running Machines, each with
//! an instance and a Node as large as a real one.
//!
//! The instances are started by the test (RunInstances with MaxCount, the
//! class's tags), the Nodes created by it (about 20 container images, the
//! usual conditions, labels and annotations: ~10 KB of JSON each), and the
//! Machines name their instance in `spec.providerID`, as after an adoption:
//! the operator's work is what it does for a running fleet — find each
//! instance in its batched view, label and record the machine, report it
//! Running — not launching (see `bench.rs` for that). The kubelet stand-in
//! is held: the Nodes here are the test's.
//!
//! `BENCH_SCALE` (default `1000,10000`) lists the sizes; each runs in its
//! own namespace and removes its Nodes afterwards.

use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{Value, json};

use crate::support::ec2::{REGION, ZONE};
use crate::support::metrics::{kube_requests, sample};
use crate::support::real_node::real_node;
use crate::support::scenario::{CLASS, Scenario};

/// Production flags: 30 s instance sync, orphan collection every 15 min.
const FLAGS: &[&str] = &[
    "--instance-sync-period=30s",
    "--orphan-collection-interval=15m",
];

/// How many API requests the test keeps in flight while creating objects.
const PARALLEL: usize = 32;

#[tokio::test]
#[ignore = "measurement; run with `make bench`"]
async fn bench_memory_and_steady_state_at_scale() {
    let sizes: Vec<usize> = std::env::var("BENCH_SCALE")
        .unwrap_or_else(|_| "1000,10000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    for n in sizes {
        measure(n).await;
    }
}

async fn measure(n: usize) {
    let s = Scenario::start_with(&format!("mem{n}"), true, FLAGS).await;
    s.kubelet.hold_registrations(true);
    // The first orphan pass runs once the caches synced; the instances come
    // after it (the next is 15 minutes away, and Machines claim them first).
    tokio::time::sleep(Duration::from_secs(10)).await;
    let proxy = s.proxy.as_ref().unwrap();
    let idle = current_rss_kib(&s);
    let class = s.class_json(CLASS);
    let spec = &class["providerSpec"];

    let started = Instant::now();
    let instances = run_instances(&s, spec, n).await;
    let launched = started.elapsed();

    let nodes: Api<Node> = Api::all(s.client.clone());
    let node_names: Vec<String> = instances.iter().map(|(_, dns)| dns.clone()).collect();
    stream::iter(instances.iter().enumerate())
        .for_each_concurrent(PARALLEL, |(i, (id, dns))| {
            let nodes = nodes.clone();
            async move {
                let node: Node =
                    serde_json::from_value(real_node(dns, id, i, REGION, ZONE)).unwrap();
                nodes
                    .create(&PostParams::default(), &node)
                    .await
                    .unwrap_or_else(|e| panic!("create node {dns}: {e}"));
            }
        })
        .await;
    let sample_node = nodes.get(&node_names[0]).await.unwrap();
    let node_bytes = serde_json::to_vec(&sample_node).unwrap().len();
    assert!(
        sample_node
            .status
            .as_ref()
            .and_then(|st| st.images.as_ref())
            .is_some_and(|i| i.len() == 20),
        "the API server kept the Node's status as created"
    );

    let machines = s.machines();
    stream::iter(instances.iter().enumerate())
        .for_each_concurrent(PARALLEL, |(i, (id, _))| {
            let machines = machines.clone();
            let ns = s.ns.clone();
            async move {
                let m = serde_json::from_value(json!({
                    "apiVersion": "machine.sapcloud.io/v1alpha1", "kind": "Machine",
                    "metadata": {"name": format!("m{i:05}"), "namespace": ns},
                    "spec": {"class": {"kind": "MachineClass", "name": CLASS},
                             "providerID": format!("aws:///{REGION}/{id}")}
                }))
                .unwrap();
                machines
                    .create(&PostParams::default(), &m)
                    .await
                    .unwrap_or_else(|e| panic!("create machine {i}: {e}"));
            }
        })
        .await;
    let created = started.elapsed();

    let running_series = format!("mcm_machines{{namespace=\"{}\",phase=\"Running\"}}", s.ns);
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let running =
            s.op.http_get("/metrics")
                .and_then(|(_, body)| sample(&body, &running_series))
                .unwrap_or(0.0);
        if running as usize >= n {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{running} of {n} Running after 30 minutes\n{}",
            tail(&s.op.log())
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let all_running = started.elapsed();
    let peak_at_running = peak_rss_kib(&s);
    let cpu_at_running = cpu_seconds(&s);

    // Steady state: two minutes with nothing changing.
    let metrics_before = s.op.http_get("/metrics").unwrap().1;
    proxy.reset_counts();
    let window = Duration::from_secs(120);
    tokio::time::sleep(window).await;
    let ec2_calls = proxy.total_calls();
    let metrics_after = s.op.http_get("/metrics").unwrap().1;
    let minutes = window.as_secs_f64() / 60.0;
    let before = kube_requests(&metrics_before);
    let requests: f64 = kube_requests(&metrics_after)
        .iter()
        .map(|(k, v)| v - before.get(k).copied().unwrap_or(0.0))
        .sum();
    let peak = peak_rss_kib(&s);
    let current = current_rss_kib(&s);
    let steady_cpu = cpu_seconds(&s) - cpu_at_running;

    println!(
        "BENCH scale {n}: {n} instances started in {launched:?}, Nodes (~{node_bytes} bytes each) and Machines created after {created:?}, all Running after {all_running:?}"
    );
    println!(
        "BENCH scale {n}: operator peak RSS {:.1} MiB (at all Running {:.1} MiB), current {:.1} MiB, idle before any object {:.1} MiB",
        peak as f64 / 1024.0,
        peak_at_running as f64 / 1024.0,
        current as f64 / 1024.0,
        idle as f64 / 1024.0
    );
    println!(
        "BENCH scale {n}: of the current RSS {:.1} MiB anonymous (heap, stacks), {:.1} MiB the binary's own pages",
        proc_status_kib(&s, "RssAnon:") as f64 / 1024.0,
        proc_status_kib(&s, "RssFile:") as f64 / 1024.0
    );
    println!(
        "BENCH scale {n}: steady state {:.1} EC2 calls/min ({:?}), {:.1} Kubernetes API requests/min",
        ec2_calls as f64 / minutes,
        proxy.calls(),
        requests / minutes
    );
    println!(
        "BENCH scale {n}: operator CPU {cpu_at_running:.1} s until all Running, {:.2}% of a core in the steady state",
        100.0 * steady_cpu / window.as_secs_f64()
    );

    // Leave no Nodes for the next size (the Machines go with the namespace;
    // the operator dies with the scenario first, so their instances stay in
    // this test's moto namespace).
    drop(s);
    stream::iter(node_names)
        .for_each_concurrent(PARALLEL, |name| {
            let nodes = nodes.clone();
            async move {
                let _ = nodes.delete(&name, &DeleteParams::default()).await;
            }
        })
        .await;
}

/// Starts `n` instances as the class describes (its tags included, so the
/// operator has nothing to tag); their IDs and private DNS names.
async fn run_instances(s: &Scenario, spec: &Value, n: usize) -> Vec<(String, String)> {
    use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};
    let mut tags = TagSpecification::builder().resource_type(ResourceType::Instance);
    for (k, v) in spec["tags"].as_object().unwrap() {
        tags = tags.tags(Tag::builder().key(k).value(v.as_str().unwrap()).build());
    }
    // A Machine-UID tag key puts the instances in the operator's batched
    // view, as its own launches are.
    tags = tags.tags(
        Tag::builder()
            .key(mcm_provider_aws::aws::tags::MACHINE_UID_TAG)
            .value("adopted")
            .build(),
    );
    let tags = tags.build();
    // The scenario's subnet (a /20) holds 4091 instances; these get a /17
    // of the same VPC.
    let second_octet = s.net.cidr.split('.').nth(1).unwrap();
    let subnet = s
        .ec2
        .create_subnet()
        .vpc_id(&s.net.vpc_id)
        .cidr_block(format!("10.{second_octet}.128.0/17"))
        .availability_zone(ZONE)
        .send()
        .await
        .expect("CreateSubnet")
        .subnet
        .and_then(|s| s.subnet_id)
        .expect("a subnet id");
    // One instance per call: moto pages DescribeInstances by reservation
    // (EC2 by instance), so reservations of hundreds would make one page of
    // the operator's sync hold every instance, slower in moto than the
    // SDK's timeout at 10,000.
    let run_one = |_| {
        let ec2 = s.ec2.clone();
        let (subnet, tags) = (subnet.clone(), tags.clone());
        async move {
            let resp = ec2
                .run_instances()
                .image_id(spec["ami"].as_str().unwrap())
                .instance_type(aws_sdk_ec2::types::InstanceType::M5Large)
                .subnet_id(&subnet)
                .min_count(1)
                .max_count(1)
                .tag_specifications(tags)
                .send()
                .await
                .expect("RunInstances");
            let i = &resp.instances()[0];
            (
                i.instance_id().unwrap().to_string(),
                i.private_dns_name().unwrap().to_string(),
            )
        }
    };
    let out: Vec<(String, String)> = stream::iter(0..n)
        .map(run_one)
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    out
}

/// A value of the operator's /proc status in KiB (`VmHWM`, `VmRSS`,
/// `RssAnon`, `RssFile`).
fn proc_status_kib(s: &Scenario, field: &str) -> u64 {
    let pid = s.op.pid().expect("the operator runs");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// CPU seconds (user + system) the operator has used so far, from
/// `/proc/<pid>/stat` (in USER_HZ ticks, 100 a second on Linux).
fn cpu_seconds(s: &Scenario) -> f64 {
    let pid = s.op.pid().expect("the operator runs");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses; utime and
    // stime are the 14th and 15th of the line.
    let rest = &stat[stat.rfind(')').expect("a /proc stat line") + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

fn peak_rss_kib(s: &Scenario) -> u64 {
    proc_status_kib(s, "VmHWM:")
}

fn current_rss_kib(s: &Scenario) -> u64 {
    proc_status_kib(s, "VmRSS:")
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
