//! The kubelet stand-in of the integration tests as a program, for the
//! local sandbox (`make demo`), which has an API server but no kubelet.
//!
//! For every EC2 instance of Machines in one namespace it registers the
//! Node a real kubelet (with cloud-provider-aws) would: named after the
//! instance's private DNS name, `providerID` with the availability zone,
//! Ready while the instance runs, NotReady once it is gone; and it finishes
//! Pods evicted from its Nodes. It is the tests' own implementation
//! (`tests/integration/support/kubelet.rs`), not a copy.
//!
//! ```text
//! KUBECONFIG=... AWS_ENDPOINT_URL_EC2=http://127.0.0.1:5000 AWS_REGION=eu-west-1 \
//!   cargo run --example kubelet-standin -- --namespace default
//! ```

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::time::Duration;

#[allow(dead_code)]
#[path = "../tests/integration/support/instances.rs"]
mod instances;
#[allow(dead_code)]
#[path = "../tests/integration/support/kubelet.rs"]
mod kubelet;

/// What the stand-in imports as `super::ec2` in the tests.
mod ec2 {
    pub use super::instances::{state, try_current_instances_of_namespace, try_user_data};
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let ns = match args.as_slice() {
        [flag, ns] if flag == "--namespace" => ns.clone(),
        [] => "default".to_string(),
        _ => {
            eprintln!(
                "usage: kubelet-standin [--namespace NS]   (KUBECONFIG, AWS_* from the environment)"
            );
            return ExitCode::from(2);
        }
    };
    // kube and the AWS SDK both use rustls: one process-wide provider.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let client = match kube::Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kubelet-standin: no Kubernetes configuration: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    let kubelet = kubelet::Kubelet::start(client, aws_sdk_ec2::Client::new(&config), &ns);
    println!("kubelet stand-in: playing the kubelet of the instances of namespace {ns}");

    let mut known = BTreeSet::new();
    let mut last_error = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
        }
        for node in kubelet.nodes() {
            if known.insert(node.clone()) {
                println!("kubelet stand-in: registered Node {node}");
            }
        }
        let error = kubelet.last_error();
        if error.is_some() && error != last_error {
            eprintln!("kubelet stand-in: {}", error.as_deref().unwrap_or_default());
        }
        last_error = error;
    }
}
