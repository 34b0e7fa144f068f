# mcm-provider-aws — developer entry points. `make help` lists them.
SHELL := /usr/bin/env bash
CARGO ?= cargo
IMAGE ?= mcm-provider-aws:$(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
CONTAINER_ENGINE ?= $(shell command -v docker || command -v podman)
# KUBE_VERSION_NEWEST, KUBE_VERSION_OLDEST, ETCD_VERSION: the test bed.
include hack/versions.env
# The smoke subset also run against the oldest Kubernetes: CRDs and schema,
# samples, the Machine lifecycle, the operator with the chart's RBAC.
SMOKE_TESTS ?= crds:: samples:: lifecycle:: chart::helm_installs chart::operator_runs_with_the_charts

.PHONY: help demo test test-smoke test-env bench lint fmt crd build release docker-build image-check

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(firstword $(MAKEFILE_LIST)) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

demo: test-env ## Local sandbox: API server + EC2 emulator, CRDs and samples (KEEP=1 leaves it up)
	bash hack/demo.sh

test: test-env lint ## Install what the tests need, lint, run every test on the newest Kubernetes and the smoke subset on the oldest
	@status=0; \
	echo "==> every test, against Kubernetes $(KUBE_VERSION_NEWEST)"; \
	KUBE_VERSION=$(KUBE_VERSION_NEWEST) $(CARGO) test --all-targets --no-fail-fast || status=1; \
	echo "==> the smoke subset ($(SMOKE_TESTS)), against Kubernetes $(KUBE_VERSION_OLDEST)"; \
	KUBE_VERSION=$(KUBE_VERSION_OLDEST) $(CARGO) test --test integration --no-fail-fast -- $(SMOKE_TESTS) || status=1; \
	exit $$status

test-smoke: test-env ## Only the smoke subset, against the oldest Kubernetes (KUBE_VERSION=... for another)
	KUBE_VERSION=$${KUBE_VERSION:-$(KUBE_VERSION_OLDEST)} $(CARGO) test --test integration --no-fail-fast -- $(SMOKE_TESTS)

test-env: ## Provision kube-apiserver, kube-controller-manager, kubectl and etcd (newest and oldest), moto, helm (cached)
	bash hack/deps.sh
	bash hack/kube-binaries.sh $(KUBE_VERSION_NEWEST) >/dev/null
	bash hack/kube-binaries.sh $(KUBE_VERSION_OLDEST) >/dev/null
	bash hack/moto.sh >/dev/null
	bash hack/helm-kubectl.sh >/dev/null

bench: test-env ## Measurements (the image's static musl release build): EC2 calls per lifecycle, 100 machines to Running (BENCH_MACHINES=N), rolling replacement of 10, memory at 1000/10000 machines (BENCH_SCALE=...), cache bytes per object (BENCH_FOOTPRINT=N)
	bin="$${MCM_OPERATOR_BINARY:-$$(bash hack/static-release.sh)}" && \
	$(CARGO) run --release --quiet --example cache_footprint -- $${BENCH_FOOTPRINT:-10000} && \
	MCM_OPERATOR_BINARY="$$bin" \
	  $(CARGO) test --test integration bench_ -- --ignored --nocapture --test-threads=1

lint: ## rustfmt and clippy, warnings are errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt: ## Format the code
	$(CARGO) fmt --all

crd: ## Regenerate config/crd and the chart's crds/ from the Rust types
	$(CARGO) run --quiet --bin crdgen -- --dir config/crd
	$(CARGO) run --quiet --bin crdgen -- --dir charts/mcm-provider-aws/crds

build: ## Debug build of both binaries
	$(CARGO) build --bins

release: ## Release build
	$(CARGO) build --release --bins

docker-build: ## Build the container image (IMAGE=registry/name:tag; needs docker or podman)
	@test -n "$(CONTAINER_ENGINE)" || { echo "no docker or podman here; \`make image-check\` checks the binary and Dockerfile without one" >&2; exit 1; }
	$(CONTAINER_ENGINE) build -t $(IMAGE) .

image-check: ## Without a container engine: static release binary, runs alone as 65532, Dockerfile matches the chart
	bash hack/image-check.sh
