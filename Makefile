# mcm-provider-aws — developer entry points. `make help` lists them.
SHELL := /usr/bin/env bash
CARGO ?= cargo
IMAGE ?= mcm-provider-aws:$(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
CONTAINER_ENGINE ?= $(shell command -v docker || command -v podman)

.PHONY: help demo test test-env bench lint fmt crd build release docker-build image-check

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

demo: test-env ## Local sandbox: API server + EC2 emulator, CRDs and samples (KEEP=1 leaves it up)
	bash hack/demo.sh

test: test-env lint ## Install what the tests need, then lint and run every test
	$(CARGO) test --all-targets --no-fail-fast

test-env: ## Provision kube-apiserver, etcd, kube-controller-manager, moto, helm, kubectl (cached)
	bash hack/deps.sh
	bash hack/kube-binaries.sh >/dev/null
	bash hack/moto.sh >/dev/null
	bash hack/helm-kubectl.sh >/dev/null

bench: test-env ## Measurements: EC2 calls per lifecycle, 100 machines to Running (BENCH_MACHINES=N), rolling replacement of 10
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
