#!/usr/bin/env bash
# The local sandbox: starts a real kube-apiserver (+ etcd, garbage collector)
# and the moto EC2 emulator, installs the CRDs the way users do
# (`cargo run --bin crdgen | kubectl apply -f -`), applies the samples and shows
# them. With KEEP=1 it leaves everything running and prints how to reach it;
# otherwise it tears everything down at the end.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "building the operator"
cargo build --quiet --bins

step "starting kube-apiserver, etcd, kube-controller-manager and moto"
fifo="$(mktemp -u)"; mkfifo "$fifo"
out="$(mktemp)"
bash hack/envtest.sh <"$fifo" >"$out" &
ENVTEST=$!
exec 3>"$fifo"   # the environment lives while fd 3 is open
rm -f "$fifo"
for _ in $(seq 600); do
  grep -q '^READY\|^FAILED' "$out" && break
  kill -0 "$ENVTEST" 2>/dev/null || break
  sleep 0.2
done
grep -q '^READY' "$out" || die "environment did not start: $(cat "$out")"
DIR="$(sed -n 's/^READY //p' "$out")"
set -a; source "$DIR/env"; set +a
export PATH="$MCM_TEST_TOOLS:$PATH"
log "kubeconfig: $KUBECONFIG"

step "installing the CRDs: cargo run --bin crdgen | kubectl apply -f -"
cargo run --quiet --bin crdgen | kubectl apply -f -
kubectl wait --for condition=established --timeout=60s \
    crd/machines.machine.sapcloud.io crd/machineclasses.machine.sapcloud.io \
    crd/machinesets.machine.sapcloud.io crd/machinedeployments.machine.sapcloud.io

step "applying the samples from config/samples"
kubectl apply -f config/samples/

step "what the API server holds"
kubectl get machineclasses,machines,machinesets,machinedeployments -o wide
kubectl explain machineclass.providerSpec.instanceMetadataOptions | head -n 20

step "an invalid class is rejected by the API server"
kubectl apply -f config/samples/invalid/class-unknown-volume-type.yaml || true

step "the operator binary"
"$ROOT/target/debug/machine-controller" --version

if [ -n "${KEEP:-}" ]; then
  step "left running. In another shell:"
  echo "  export KUBECONFIG=$KUBECONFIG AWS_ENDPOINT_URL_EC2=$AWS_ENDPOINT_URL_EC2"
  echo "  export PATH=$MCM_TEST_TOOLS:\$PATH"
  echo "Press Ctrl-C to stop everything."
  wait "$ENVTEST"
else
  step "tearing down"
  exec 3>&-
  wait "$ENVTEST" || true
fi
