#!/usr/bin/env bash
# Runs a throw-away control plane and EC2 emulator on free loopback ports:
# etcd, kube-apiserver (token auth, RBAC, service-account signing),
# kube-controller-manager (garbage collector, namespace and service-account
# controllers) and the moto EC2 server.
#
# When everything is ready it writes $DIR/env (KEY=VALUE lines: KUBECONFIG,
# AWS_ENDPOINT_URL_EC2, ...) and prints `READY <dir>` on stdout. It then runs
# until its standard input closes (or it gets SIGINT/SIGTERM) and stops every
# process it started. Tests hold the write end of that pipe, so the environment
# dies with the test binary however it ends.
#
# Usage: hack/envtest.sh [DIR]   (default: a new temporary directory)
# Binaries come from hack/kube-binaries.sh and hack/moto.sh's cache, never
# built here: run `make test-env` first.
set -euo pipefail
HACK="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# CACHE_DIR, KUBE_VERSION (default: the newest of versions.env), kube_bin_dir.
source "$HACK/lib.sh"
MOTO_VERSION="${MCM_MOTO_VERSION:-5.2.5}"

fail() { echo "envtest: $*" >&2; echo "FAILED $*"; exit 1; }

if [ -n "${KUBEBUILDER_ASSETS:-}" ] && [ -x "$KUBEBUILDER_ASSETS/kube-apiserver" ]; then
  ASSETS="$KUBEBUILDER_ASSETS"
else
  ASSETS="$(kube_bin_dir "$KUBE_VERSION")"
fi
APISERVER="$ASSETS/kube-apiserver"
ETCD="$ASSETS/etcd"
KCM="$ASSETS/kube-controller-manager"
[ -x "$KCM" ] || KCM="$(kube_bin_dir "$KUBE_VERSION")/kube-controller-manager"
MOTO="$CACHE_DIR/moto-$MOTO_VERSION/bin/moto_server"
for b in "$APISERVER" "$ETCD" "$KCM" "$MOTO"; do
  [ -x "$b" ] || fail "missing $b (Kubernetes $KUBE_VERSION): run \`make test-env\` (or \`KUBE_VERSION=$KUBE_VERSION bash hack/kube-binaries.sh\`) to install the test environment, or set KUBEBUILDER_ASSETS"
done
HELM_KUBECTL="$("$HACK/helm-kubectl.sh" --check 2>&1)" || fail "$HELM_KUBECTL"
command -v openssl >/dev/null || fail "openssl not found: run \`make test-env\`"

DIR="${1:-$(mktemp -d "${TMPDIR:-/tmp}/mcm-envtest.XXXXXX")}"
mkdir -p "$DIR"
# The tests' tools: Helm, and the kubectl of the server's own version when it
# was built beside it (kubectl supports one minor of skew only).
TOOLS_DIR="$DIR/tools"
mkdir -p "$TOOLS_DIR"
ln -sf "$HELM_KUBECTL/helm" "$TOOLS_DIR/helm"
if [ -x "$ASSETS/kubectl" ]; then ln -sf "$ASSETS/kubectl" "$TOOLS_DIR/kubectl"
else ln -sf "$HELM_KUBECTL/kubectl" "$TOOLS_DIR/kubectl"; fi
PIDS=()
cleanup() {
  trap - EXIT INT TERM
  for ((i=${#PIDS[@]}-1; i>=0; i--)); do kill "${PIDS[$i]}" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  done
  [ -n "${MCM_ENVTEST_KEEP:-}" ] || rm -rf "$DIR"
}
trap cleanup EXIT
trap 'exit 0' INT TERM

read -r ETCD_PORT ETCD_PEER API_PORT MOTO_PORT < <(python3 - <<'PY'
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
PY
)

# Credentials: an admin token in system:masters and a service-account signing key.
ADMIN_TOKEN="$(openssl rand -hex 16)"
echo "$ADMIN_TOKEN,admin,admin,\"system:masters\"" >"$DIR/tokens.csv"
openssl genrsa -out "$DIR/sa.key" 2048 2>/dev/null
openssl rsa -in "$DIR/sa.key" -pubout -out "$DIR/sa.pub" 2>/dev/null

"$ETCD" --name default --data-dir "$DIR/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER" \
  --initial-cluster "default=http://127.0.0.1:$ETCD_PEER" --log-level error >"$DIR/etcd.log" 2>&1 &
PIDS+=($!)

"$APISERVER" --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
  --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$API_PORT" \
  --cert-dir "$DIR/certs" --token-auth-file "$DIR/tokens.csv" --authorization-mode RBAC \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-account-key-file "$DIR/sa.pub" --service-account-signing-key-file "$DIR/sa.key" \
  --service-cluster-ip-range 10.0.0.0/24 --endpoint-reconciler-type none --allow-privileged=true --v 1 >"$DIR/kube-apiserver.log" 2>&1 &
PIDS+=($!)

# moto-server.py: moto_server with tag reads that do not scan every tag of
# the Region per instance (a listing of a thousand instances took minutes).
AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing \
  "$(dirname "$MOTO")/python" "$HACK/moto-server.py" -H 127.0.0.1 -p "$MOTO_PORT" >"$DIR/moto.log" 2>&1 &
PIDS+=($!)

cat >"$DIR/kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: envtest
  cluster:
    server: https://127.0.0.1:$API_PORT
    insecure-skip-tls-verify: true
users:
- name: admin
  user:
    token: $ADMIN_TOKEN
contexts:
- name: envtest
  context: {cluster: envtest, user: admin, namespace: default}
current-context: envtest
KC

wait_for() { # wait_for WHAT SECONDS COMMAND...
  local what="$1" secs="$2"; shift 2
  for _ in $(seq $((secs * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  tail -n 20 "$DIR"/*.log >&2 || true
  fail "$what did not become ready within ${secs}s (logs in $DIR)"
}
CURL=(curl -sfk -H "Authorization: Bearer $ADMIN_TOKEN")
command -v curl >/dev/null || fail "curl not found: run \`make test-env\`"
wait_for kube-apiserver 90 "${CURL[@]}" "https://127.0.0.1:$API_PORT/readyz"

"$KCM" --kubeconfig "$DIR/kubeconfig" --controllers garbagecollector,namespace,serviceaccount,serviceaccount-token \
  --service-account-private-key-file "$DIR/sa.key" --root-ca-file "$DIR/certs/apiserver.crt" \
  --use-service-account-credentials=false --leader-elect=false --secure-port 0 --v 1 \
  >"$DIR/kube-controller-manager.log" 2>&1 &
PIDS+=($!)

wait_for moto 60 curl -sf "http://127.0.0.1:$MOTO_PORT/moto-api/"
# Pods need the namespace's default ServiceAccount (admission); their token is
# a projected TokenRequest token, no Secret.
sa_ready() { "${CURL[@]}" "https://127.0.0.1:$API_PORT/api/v1/namespaces/default/serviceaccounts/default" >/dev/null; }
wait_for "default ServiceAccount" 60 sa_ready

cat >"$DIR/env" <<ENV
KUBECONFIG=$DIR/kubeconfig
MCM_TEST_DIR=$DIR
MCM_TEST_APISERVER=https://127.0.0.1:$API_PORT
MCM_TEST_ADMIN_TOKEN=$ADMIN_TOKEN
MCM_TEST_SA_KEY=$DIR/sa.key
AWS_ENDPOINT_URL_EC2=http://127.0.0.1:$MOTO_PORT
MCM_TEST_MOTO_URL=http://127.0.0.1:$MOTO_PORT
MCM_TEST_MOTO_SERVER=$MOTO
AWS_ACCESS_KEY_ID=testing
AWS_SECRET_ACCESS_KEY=testing
AWS_REGION=eu-west-1
MCM_TEST_TOOLS=$TOOLS_DIR
MCM_TEST_KUBE_VERSION=$KUBE_VERSION
ENV
echo "READY $DIR"

# Run until the caller closes our stdin (or signals us), or a component dies.
cat >/dev/null <&0 &   # explicit <&0: background jobs otherwise read /dev/null
READER=$!
while kill -0 "$READER" 2>/dev/null; do
  for p in "${PIDS[@]}"; do
    kill -0 "$p" 2>/dev/null || { echo "envtest: a component (pid $p) died; logs in $DIR" >&2; exit 1; }
  done
  sleep 1
done
