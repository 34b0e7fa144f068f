# mcm-provider-aws — developer entry points. `make help` lists them.
SHELL := /usr/bin/env bash
CARGO ?= cargo

.PHONY: help demo test test-env bench lint fmt crd build release docker-build

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

crd: ## Regenerate config/crd from the Rust types
	$(CARGO) run --quiet --bin crdgen -- --dir config/crd

build: ## Debug build of both binaries
	$(CARGO) build --bins

release: ## Release build
	$(CARGO) build --release --bins
