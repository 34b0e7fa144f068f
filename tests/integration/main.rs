//! Integration tests against real components: kube-apiserver + etcd +
//! kube-controller-manager and the moto EC2 server, started once for this
//! test binary by `support::env()` (see `hack/envtest.sh`). They fail, never
//! skip, when the environment is missing: run `make test-env`.

mod support;

mod addresses;
mod autoscaler;
mod batch;
mod bench;
mod blocked_drain;
mod bootstrap_token;
mod chart;
mod configuration;
mod consistency;
mod crds;
mod deletion;
mod fleets;
mod gardener;
mod harness;
mod health;
mod iam;
mod leader_election;
mod lifecycle;
mod memory;
mod node_template;
mod observability;
mod preservation;
mod proxy;
mod resilience;
mod samples;
mod scale;
mod status;
mod target_cluster;
