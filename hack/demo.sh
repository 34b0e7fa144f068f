#!/usr/bin/env bash
# The local sandbox, end to end, with no AWS account:
#   1. a real kube-apiserver (+ etcd, controller manager) and the moto EC2
#      emulator (hack/envtest.sh), and the kubelet stand-in of the tests
#      (`cargo run --example kubelet-standin`), which registers a Node for
#      every instance;
#   2. the CRDs the way users install them: `cargo run --bin crdgen | kubectl apply -f -`;
#   3. the Helm chart's ServiceAccount and RBAC (`helm install`), and the
#      operator run on this machine with the Deployment's own arguments and a
#      token of that ServiceAccount: exactly the rights it has in a cluster;
#   4. a VPC, subnet, security group, key pair and instance profile in moto,
#      and the samples from config/samples pointed at them: a Secret, a
#      MachineClass and a MachineDeployment of 3 (a standalone Machine when
#      this build has no MachineDeployment controller);
#   5. machines reaching Running with providerIDs; then the class's
#      machineType edited (m5.large -> m6i.large) and the machines rolling to it;
#   6. teardown: machines deleted (instances terminated, Nodes removed), the
#      chart uninstalled, everything stopped. KEEP=1 leaves it all running
#      and prints how to reach it.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

NS=default                 # where the samples live
RELEASE=mcm                # the Helm release
RELEASE_NS=mcm-system      # where the chart's ServiceAccount lives
REGION=eu-west-1
CLASS=aws-small
OLD_TYPE=m5.large
NEW_TYPE=m6i.large

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
note() { printf '    %s\n' "$*"; }

PIDS=()
# Stops what this script started (newest first), then closes fd 3, which
# stops the environment. Only these PIDs are waited for: a bare `wait`
# would also wait for the environment, which only ends once fd 3 closes.
cleanup() {
  for ((i=${#PIDS[@]}-1; i>=0; i--)); do kill "${PIDS[$i]}" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  PIDS=()
  exec 3>&- 2>/dev/null || true
}
trap cleanup EXIT

# wait_until WHAT SECONDS COMMAND...: runs COMMAND every 2s until it succeeds,
# showing its last output line (the progress) in place.
wait_until() {
  local what="$1" secs="$2"; shift 2
  local start=$SECONDS line=""
  while true; do
    if line="$("$@" 2>&1)"; then
      printf '\r\033[K    %s: %s (%ds)\n' "$what" "${line##*$'\n'}" $((SECONDS - start))
      return 0
    fi
    if ((SECONDS - start >= secs)); then
      printf '\r\033[K'
      die "$what: not done after ${secs}s (last: ${line##*$'\n'}); operator log: $OPERATOR_LOG"
    fi
    printf '\r\033[K    waiting for %s: %s (%ds)' "$what" "${line##*$'\n'}" $((SECONDS - start))
    sleep 2
  done
}

step "building the operator, crdgen and the kubelet stand-in"
cargo build --quiet --bins --example kubelet-standin
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug"

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
export PATH="$MCM_TEST_TOOLS:$PATH" AWS_REGION="$REGION"
export HELM_CACHE_HOME="$DIR/helm/cache" HELM_CONFIG_HOME="$DIR/helm/config" HELM_DATA_HOME="$DIR/helm/data"
OPERATOR_LOG="$DIR/operator.log"
KUBELET_LOG="$DIR/kubelet-standin.log"
note "kubeconfig: $KUBECONFIG"
note "EC2 (moto): $AWS_ENDPOINT_URL_EC2"

step "starting the kubelet stand-in (cargo run --example kubelet-standin -- --namespace $NS)"
"$BIN/examples/kubelet-standin" --namespace "$NS" >"$KUBELET_LOG" 2>&1 &
PIDS+=($!)
note "log: $KUBELET_LOG"

step "installing the CRDs: cargo run --bin crdgen | kubectl apply -f -"
cargo run --quiet --bin crdgen | kubectl apply -f -
kubectl wait --for condition=established --timeout=60s \
    crd/machines.machine.sapcloud.io crd/machineclasses.machine.sapcloud.io \
    crd/machinesets.machine.sapcloud.io crd/machinedeployments.machine.sapcloud.io >/dev/null

step "installing the chart's ServiceAccount and RBAC: helm install $RELEASE charts/mcm-provider-aws"
kubectl create namespace "$RELEASE_NS" >/dev/null
helm install "$RELEASE" charts/mcm-provider-aws --namespace "$RELEASE_NS" \
  --set aws.region="$REGION" \
  --set controller.logFormat=text \
  --set controller.instanceSyncPeriod=5s \
  --set controller.orphanCollectionInterval=1m
note "(no kubelet runs Pods here: the chart's Deployment stays Pending; its process runs below)"
FULL="$RELEASE-mcm-provider-aws"

step "running the operator as the chart's ServiceAccount, with the Deployment's arguments"
TOKEN="$(kubectl create token "$FULL" -n "$RELEASE_NS" --duration=24h)"
SA_KUBECONFIG="$DIR/operator.kubeconfig"
cat >"$SA_KUBECONFIG" <<KC
apiVersion: v1
kind: Config
clusters:
- name: envtest
  cluster: {server: "$MCM_TEST_APISERVER", insecure-skip-tls-verify: true}
users:
- name: $FULL
  user: {token: "$TOKEN"}
contexts:
- name: operator
  context: {cluster: envtest, user: $FULL, namespace: $RELEASE_NS}
current-context: operator
KC
mapfile -t ARGS < <(kubectl get deployment "$FULL" -n "$RELEASE_NS" \
  -o go-template='{{range (index .spec.template.spec.containers 0).args}}{{.}}{{"\n"}}{{end}}' \
  | grep -v -e '^--metrics-bind-address=' -e '^--health-bind-address=')
note "machine-controller ${ARGS[*]}"
KUBECONFIG="$SA_KUBECONFIG" POD_NAMESPACE="$RELEASE_NS" \
  "$BIN/machine-controller" "${ARGS[@]}" \
  --metrics-bind-address=127.0.0.1:0 --health-bind-address=127.0.0.1:0 >"$OPERATOR_LOG" 2>&1 &
OPERATOR=$!
PIDS+=($OPERATOR)
admin_address() { sed -n 's/.*serving metrics and health probes address=\([0-9.:]*\).*/\1/p' "$OPERATOR_LOG" | tail -n1 | grep .; }
wait_until "the operator's listener" 30 admin_address
ADMIN="$(admin_address)"
note "log: $OPERATOR_LOG"
note "metrics: http://$ADMIN/metrics   probes: http://$ADMIN/livez http://$ADMIN/readyz"

step "creating a VPC, subnet, security group, key pair and instance profile in moto"
PY="$(dirname "$(bash hack/moto.sh)")/python"
read -r VPC SUBNET SG AMI < <("$PY" - <<'PY'
import os, boto3
url, region = os.environ["AWS_ENDPOINT_URL_EC2"], os.environ["AWS_REGION"]
ec2 = boto3.client("ec2", region_name=region, endpoint_url=url)
vpc = ec2.create_vpc(CidrBlock="10.42.0.0/16")["Vpc"]["VpcId"]
subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.42.0.0/20", AvailabilityZone=region + "a")["Subnet"]["SubnetId"]
sg = ec2.create_security_group(VpcId=vpc, GroupName="demo-workers", Description="mcm-provider-aws demo")["GroupId"]
ec2.create_key_pair(KeyName="ops-keypair")
boto3.client("iam", region_name="us-east-1", endpoint_url=url).create_instance_profile(
    InstanceProfileName="worker-instance-profile")
images = ec2.describe_images(Owners=["amazon"], Filters=[{"Name": "architecture", "Values": ["x86_64"]}])["Images"]
linux = sorted((not i.get("Name", "").startswith("amzn2-ami-hvm"), i["ImageId"])
               for i in images if i.get("Platform") != "windows")
print(vpc, subnet, sg, linux[0][1])
PY
)
note "vpc $VPC, subnet $SUBNET, security group $SG, AMI $AMI"

step "applying the samples (Secret, MachineClass pointed at moto's network)"
SAMPLES="$DIR/samples"; mkdir -p "$SAMPLES"
sed -e "s/ami-0123456789abcdef0/$AMI/" -e "s/subnet-0123456789abcdef0/$SUBNET/" \
    -e "s/sg-0123456789abcdef0/$SG/" config/samples/machine-class.yaml >"$SAMPLES/machine-class.yaml"
kubectl apply -f config/samples/secret.yaml -f "$SAMPLES/machine-class.yaml"
wait_until "/readyz" 60 curl -sf "http://$ADMIN/readyz" -o /dev/null -w 'ready'

# Phase counts of the machines, e.g. "3 machines: Running=3"; fails until
# WANT machines are Running with a providerID.
machines_running() {
  local want="$1" lines
  lines="$(kubectl get machines -n "$NS" --no-headers \
    -o custom-columns=PHASE:.status.currentStatus.phase,PROVIDERID:.spec.providerID 2>/dev/null)"
  local total running
  total="$(grep -c . <<<"$lines" || true)"
  running="$(awk '$1 == "Running" && $2 ~ /^aws:/' <<<"$lines" | grep -c . || true)"
  echo "$total machines: $(awk '{print $1}' <<<"$lines" | sort | uniq -c | awk '{printf "%s=%s ", $2, $1}')"
  [ "$running" -ge "$want" ] && [ "$total" -eq "$want" ]
}

# Types of the running instances of this cluster in EC2, e.g. "m5.large=2 m6i.large=1".
instance_types() {
  "$PY" - <<'PY'
import os, boto3, collections
ec2 = boto3.client("ec2", region_name=os.environ["AWS_REGION"], endpoint_url=os.environ["AWS_ENDPOINT_URL_EC2"])
pages = ec2.get_paginator("describe_instances").paginate(Filters=[
    {"Name": "tag-key", "Values": ["kubernetes.io/cluster/demo"]},
    {"Name": "instance-state-name", "Values": ["pending", "running"]}])
types = collections.Counter(i["InstanceType"] for p in pages for r in p["Reservations"] for i in r["Instances"])
print(" ".join(f"{t}={n}" for t, n in sorted(types.items())) or "none")
PY
}
only_type() { # only_type TYPE COUNT: exactly COUNT instances are running, all of TYPE
  local types; types="$(instance_types)"; echo "$types"; [ "$types" = "$1=$2" ]
}

step "applying the MachineDeployment of 3 (config/samples/machine-deployment.yaml)"
# minReadySeconds 30 -> 5 keeps the roll below short.
sed 's/minReadySeconds: 30/minReadySeconds: 5/' config/samples/machine-deployment.yaml >"$SAMPLES/machine-deployment.yaml"
kubectl apply -f "$SAMPLES/machine-deployment.yaml"
observed() { kubectl get mcd workers -n "$NS" -o jsonpath='{.status.observedGeneration}' | grep -q . && echo observed; }
DEPLOYMENTS=1
if ! ( for _ in $(seq 15); do observed && exit 0; sleep 2; done; exit 1 ) >/dev/null; then
  DEPLOYMENTS=0
  note "this build has no MachineDeployment controller: the deployment is not acted on."
  note "Showing the standalone Machine path instead (config/samples/machine.yaml)."
  kubectl delete -f "$SAMPLES/machine-deployment.yaml" --wait=false >/dev/null
fi

if [ "$DEPLOYMENTS" = 1 ]; then
  WANT=3
else
  WANT=1
  kubectl apply -f config/samples/machine.yaml
fi
step "waiting for $WANT machine(s) to be Running"
wait_until "machines" 300 machines_running "$WANT"
kubectl get machines -n "$NS" -o wide
kubectl get nodes -o custom-columns=NODE:.metadata.name,PROVIDERID:.spec.providerID,TYPE:.metadata.labels.node\\.kubernetes\\.io/instance-type
note "EC2 instances: $(instance_types)"

step "editing the MachineClass: machineType $OLD_TYPE -> $NEW_TYPE"
kubectl patch machineclass "$CLASS" -n "$NS" --type merge -p "{\"providerSpec\":{\"machineType\":\"$NEW_TYPE\"}}"
if [ "$DEPLOYMENTS" = 1 ]; then
  note "the deployment rolls its machines to the new type (maxSurge 1, maxUnavailable 0)"
  wait_until "the roll" 600 only_type "$NEW_TYPE" "$WANT"
  wait_until "machines" 300 machines_running "$WANT"
else
  note "a standalone Machine keeps its instance (only sets and deployments roll);"
  note "recreating it picks up the new type"
  kubectl delete machine worker-0 -n "$NS"
  kubectl apply -f config/samples/machine.yaml
  wait_until "machines" 300 machines_running "$WANT"
  wait_until "the new instance type" 60 only_type "$NEW_TYPE" "$WANT"
fi
kubectl get machines -n "$NS" -o wide
note "EC2 instances: $(instance_types)"
note "metrics: $(curl -s "http://$ADMIN/metrics" | grep -E '^mcm_cloud_api_requests_total.*(RunInstances|TerminateInstances)' | tr '\n' ' ')"

if [ -n "${KEEP:-}" ]; then
  step "left running. In another shell:"
  echo "  export KUBECONFIG=$KUBECONFIG AWS_ENDPOINT_URL_EC2=$AWS_ENDPOINT_URL_EC2 AWS_REGION=$REGION"
  echo "  export PATH=$MCM_TEST_TOOLS:\$PATH"
  echo "  kubectl get machines,machinesets,machinedeployments -A"
  echo "  kubectl scale mcd/workers --replicas=5            # with the MachineDeployment controller"
  echo "  curl http://$ADMIN/metrics ; curl http://$ADMIN/readyz"
  echo "  tail -f $OPERATOR_LOG"
  echo "Press Ctrl-C to stop everything."
  wait "$ENVTEST" || true
  exit 0
fi

step "tearing down: deleting the machines (drain, terminate, remove Nodes)"
kubectl delete machinedeployments,machinesets,machines --all -n "$NS" --wait=false >/dev/null 2>&1 || true
none_left() { local n; n="$(kubectl get machines -n "$NS" --no-headers 2>/dev/null | grep -c . || true)"; echo "$n machines left"; [ "$n" -eq 0 ]; }
wait_until "machines to go" 180 none_left
note "EC2 instances still running: $(instance_types)"
kill -TERM "$OPERATOR" 2>/dev/null || true
wait "$OPERATOR" 2>/dev/null || true
helm uninstall "$RELEASE" --namespace "$RELEASE_NS"
cleanup
wait "$ENVTEST" || true
step "done"
