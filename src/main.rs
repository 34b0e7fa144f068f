//! `machine-controller`: the operator binary. It reconciles Machines,
//! MachineClasses, MachineSets and MachineDeployments against EC2.
//!
//! The reconcilers land with the lifecycle work; for now the binary parses and
//! reports its configuration.

use clap::Parser;

/// Command-line flags (each can also be set through the named environment variable).
#[derive(Debug, Parser)]
#[command(name = "machine-controller", version, about)]
struct Cli {
    /// Only watch objects in this namespace (default: all namespaces).
    #[arg(long, env = "MCM_NAMESPACE")]
    namespace: Option<String>,

    /// Kubeconfig of the cluster where the Nodes live (default: the control cluster).
    #[arg(long, env = "MCM_TARGET_KUBECONFIG")]
    target_kubeconfig: Option<std::path::PathBuf>,
}

fn main() {
    let cli = Cli::parse();
    println!(
        "machine-controller {} (namespace: {}, target kubeconfig: {})",
        env!("CARGO_PKG_VERSION"),
        cli.namespace.as_deref().unwrap_or("<all>"),
        cli.target_kubeconfig
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "<control cluster>".into()),
    );
}
