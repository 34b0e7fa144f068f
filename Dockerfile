# Placeholder until the "ship it" work: multi-stage build of a static binary on
# a distroless base.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bin machine-controller

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/machine-controller /machine-controller
USER 65532:65532
ENTRYPOINT ["/machine-controller"]
