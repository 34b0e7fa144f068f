#!/usr/bin/env bash
# Provides kube-apiserver, kube-controller-manager, kubectl and etcd of one
# Kubernetes version for the tests and the sandbox, and prints the directory
# that holds them.
#
# Usage: hack/kube-binaries.sh [VERSION]   (default: $KUBE_VERSION, else the
#        newest of hack/versions.env; e.g. 1.33.13)
#
# Order of preference:
#   1. $KUBEBUILDER_ASSETS (the envtest convention) when it holds kube-apiserver
#      and etcd;
#   2. the cache ($MCM_CACHE_DIR, default ~/.cache/mcm-provider-aws/kube/vX.Y.Z);
#   3. a build from the Go module proxy. k8s.io/kubernetes cannot be `go
#      install`ed (its go.mod points its k8s.io/* staging modules at
#      ./staging), so a small module in the cache requires k8s.io/kubernetes
#      vX.Y.Z and replaces every staging module with its published v0.Y.Z.
#      etcd is built the same way from go.etcd.io/etcd/server/v3.
# A build only happens when a binary is missing (about 10 minutes for one
# Kubernetes version on two cores, far less with a warm Go build cache).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$HACK_DIR/go.sh"

VERSION="${1:-$KUBE_VERSION}"
VERSION="${VERSION#v}"

if [ -n "${KUBEBUILDER_ASSETS:-}" ] && [ -x "$KUBEBUILDER_ASSETS/kube-apiserver" ] && [ -x "$KUBEBUILDER_ASSETS/etcd" ]; then
  echo "$KUBEBUILDER_ASSETS"
  exit 0
fi

[[ "$VERSION" =~ ^1\.([0-9]+)\.([0-9]+)$ ]] || die "KUBE_VERSION must look like 1.37.2, not '$VERSION'"
MINOR="${BASH_REMATCH[1]}"
OUT="$(kube_bin_dir "$VERSION")"
GO="$(ensure_go)"
# CGO off: static binaries and no C toolchain needed. GOTOOLCHAIN=auto lets an
# older Go fetch the toolchain a module's go line asks for.
export CGO_ENABLED=0 GOTOOLCHAIN=auto GOFLAGS=-mod=mod

# go_build DIR OUTDIR LDFLAGS PKG... builds PKGs of the module in DIR.
go_build() {
  local dir="$1" out="$2" ldflags="$3"; shift 3
  (cd "$dir" && "$GO" build -ldflags "-s -w $ldflags" -o "$out/" "$@") >&2
}

build_etcd() {
  local out="$CACHE_DIR/etcd/v$ETCD_VERSION"
  [ -x "$out/etcd" ] && { echo "$out/etcd"; return 0; }
  local mod="$CACHE_DIR/build/etcd-v$ETCD_VERSION"
  mkdir -p "$mod" "$out"
  log "building etcd $ETCD_VERSION from go.etcd.io/etcd/server/v3 (a few minutes)"
  printf 'module mcm-test-bed/etcd\n\ngo 1.21\n\nrequire go.etcd.io/etcd/server/v3 v%s\n' "$ETCD_VERSION" >"$mod/go.mod"
  go_build "$mod" "$out" "" go.etcd.io/etcd/server/v3
  # Go names a binary after the last non-major-version element: server.
  mv "$out/server" "$out/etcd"
  echo "$out/etcd"
}

# Writes the build module for k8s.io/kubernetes v$VERSION into $1.
write_kube_module() {
  local mod="$1" upstream
  upstream="$(cd "$mod" && "$GO" mod download -json "k8s.io/kubernetes@v$VERSION" | sed -nE 's/^[[:space:]]*"GoMod": "(.*)",?$/\1/p')"
  [ -f "$upstream" ] || die "cannot download k8s.io/kubernetes@v$VERSION from the Go module proxy"
  {
    printf 'module mcm-test-bed/kubernetes\n\ngo 1.21\n\nrequire k8s.io/kubernetes v%s\n\n' "$VERSION"
    echo "// k8s.io/kubernetes points these at ./staging; use their published releases."
    echo "replace ("
    awk -v v="v0.$MINOR.${VERSION##*.}" '$2 == "=>" && $3 ~ /^\.\/staging\// { printf "\t%s => %s %s\n", $1, $1, v }' "$upstream"
    echo ")"
  } >"$mod/go.mod"
}

build_kube() {
  if [ -x "$OUT/kube-apiserver" ] && [ -x "$OUT/kube-controller-manager" ] && [ -x "$OUT/kubectl" ]; then return 0; fi
  local mod="$CACHE_DIR/build/kubernetes-v$VERSION"
  mkdir -p "$mod" "$OUT"
  log "building kube-apiserver, kube-controller-manager and kubectl $VERSION from k8s.io/kubernetes (about 10 minutes on two cores)"
  [ -f "$mod/go.mod" ] || printf 'module mcm-test-bed/kubernetes\n\ngo 1.21\n' >"$mod/go.mod"
  write_kube_module "$mod"
  # What `make` would stamp in: /version, `kubectl version` and Helm's
  # kubeVersion check read it.
  local ldflags="" pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=v$VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$MINOR"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  go_build "$mod" "$OUT" "$ldflags" k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kubectl
}

ETCD="$(build_etcd)"
build_kube
ln -sf "$ETCD" "$OUT/etcd"
"$OUT/kube-apiserver" --version >/dev/null || die "the kube-apiserver built in $OUT does not run"
echo "$OUT"
