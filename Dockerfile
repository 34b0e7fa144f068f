# syntax=docker/dockerfile:1
# The operator image: a static (musl) machine-controller on distroless/static,
# running as the distroless "nonroot" user (65532:65532, the chart's
# runAsUser/runAsGroup). No shell, no libc, nothing else in the image.
#
#   make docker-build IMAGE=registry.example.com/mcm-provider-aws:0.1.0
#
# `make image-check` checks, without a container engine, what this file
# promises: the binary links statically, runs as 65532 with nothing else on
# the filesystem, and the user, entrypoint and ports match the chart.

ARG RUST_IMAGE=rust:1-bookworm
ARG BASE_IMAGE=gcr.io/distroless/static-debian12:nonroot

FROM ${RUST_IMAGE} AS build
ARG TARGETARCH
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
# musl, not glibc: a static glibc binary cannot resolve DNS names without
# the NSS libraries, which a static base image does not have.
RUN case "${TARGETARCH:-amd64}" in \
      amd64) echo x86_64-unknown-linux-musl ;; \
      arm64) echo aarch64-unknown-linux-musl ;; \
      *) echo "unsupported architecture ${TARGETARCH}" >&2; exit 1 ;; \
    esac >/rust-target \
 && rustup target add "$(cat /rust-target)"
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY .cargo ./.cargo
COPY src ./src
COPY crdgen ./crdgen
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    target="$(cat /rust-target)" \
 && CC="musl-gcc" cargo build --release --locked --target "$target" --bin machine-controller \
 && cp "target/$target/release/machine-controller" /machine-controller

FROM ${BASE_IMAGE}
COPY --from=build /machine-controller /machine-controller
USER 65532:65532
# /metrics and /livez, /readyz (the chart's metrics.port and health.port).
EXPOSE 8080 8081
ENTRYPOINT ["/machine-controller"]
