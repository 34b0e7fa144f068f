#!/usr/bin/env bash
# Shared helpers for the hack/ scripts: where the cache lives, logging, and
# running apt-get as root (directly or through sudo), the pinned versions.
set -euo pipefail

CACHE_DIR="${MCM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mcm-provider-aws}"
mkdir -p "$CACHE_DIR"
HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$HACK_DIR/versions.env"
# The Kubernetes version a script works for: $KUBE_VERSION, else the newest.
KUBE_VERSION="${KUBE_VERSION:-$KUBE_VERSION_NEWEST}"
KUBE_VERSION="${KUBE_VERSION#v}"
# Where the binaries of one Kubernetes version live (kube-apiserver,
# kube-controller-manager, kubectl and a link to etcd).
kube_bin_dir() { echo "$CACHE_DIR/kube/v$1"; }

log() { printf '[hack] %s\n' "$*" >&2; }
die() { printf '[hack] ERROR: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else die "need root (or sudo) to run: $*"
  fi
}

# apt_install PKG... installs Debian packages that are not installed yet.
apt_install() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "apt-get install ${missing[*]}"
  if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2; then
    as_root apt-get update >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2
  fi
}
