#!/usr/bin/env bash
# Finds a Go toolchain for building the test bed (kube-apiserver, etcd) and
# prints the `go` to call. Sourced by hack/kube-binaries.sh (`ensure_go`), or run
# alone to see which Go would be used.
#
# The `go` on PATH is used when it is Go >= 1.21: such a Go fetches a newer
# toolchain by itself when a module asks for one (GOTOOLCHAIN=auto, through the
# module proxy). Without one, Go $GO_BOOTSTRAP_VERSION is unpacked into the
# cache from the module proxy's golang.org/toolchain module: the same registry
# the build needs anyway, so no download site beyond it.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# go_minor GO prints the minor version of a go binary (21 for go1.21.3), or 0.
go_minor() {
  "$1" env GOVERSION 2>/dev/null | sed -nE 's/^go1\.([0-9]+).*/\1/p' | grep . || echo 0
}

ensure_go() {
  local path_go
  path_go="$(command -v go || true)"
  if [ -n "$path_go" ] && [ "$(go_minor "$path_go")" -ge 21 ]; then
    echo "$path_go"; return 0
  fi
  local dir="$CACHE_DIR/go-$GO_BOOTSTRAP_VERSION"
  if [ ! -x "$dir/bin/go" ]; then
    command -v curl >/dev/null 2>&1 || apt_install curl ca-certificates
    command -v unzip >/dev/null 2>&1 || apt_install unzip
    local arch proxy work
    case "$(uname -m)" in x86_64) arch=amd64 ;; aarch64|arm64) arch=arm64 ;; *) die "no Go toolchain for $(uname -m)" ;; esac
    proxy="${GOPROXY:-https://proxy.golang.org}"; proxy="${proxy%%,*}"
    [ "$proxy" = direct ] || [ "$proxy" = off ] && proxy=https://proxy.golang.org
    work="$(mktemp -d)"
    log "no Go >= 1.21 on PATH: fetching Go $GO_BOOTSTRAP_VERSION from $proxy (golang.org/toolchain)"
    curl -sSfL -o "$work/go.zip" "$proxy/golang.org/toolchain/@v/v0.0.1-go$GO_BOOTSTRAP_VERSION.linux-$arch.zip"
    unzip -q "$work/go.zip" -d "$work"
    rm -rf "$dir"
    mv "$work/golang.org/toolchain@v0.0.1-go$GO_BOOTSTRAP_VERSION.linux-$arch" "$dir"
    chmod -R u+w "$dir"; chmod +x "$dir"/bin/* "$dir"/pkg/tool/*/* 2>/dev/null || true
    rm -rf "$work"
  fi
  echo "$dir/bin/go"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then ensure_go; fi
