#!/usr/bin/env bash
# Provides kube-apiserver, kube-controller-manager and etcd for the tests and
# the sandbox, and prints the directory that holds them.
#
# Order of preference:
#   1. $KUBEBUILDER_ASSETS (the envtest convention) when it holds kube-apiserver
#      and etcd;
#   2. the cache ($MCM_CACHE_DIR, default ~/.cache/mcm-provider-aws/bin);
#   3. a build of Debian's `kubernetes` source package (1.20.2) with golang-go,
#      etcd from Debian's etcd-server.
# Build only happens when a binary is missing. The system's apt configuration is
# left untouched: the deb-src entries live in a private apt state in the cache.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [ -n "${KUBEBUILDER_ASSETS:-}" ] && [ -x "$KUBEBUILDER_ASSETS/kube-apiserver" ] && [ -x "$KUBEBUILDER_ASSETS/etcd" ]; then
  echo "$KUBEBUILDER_ASSETS"
  exit 0
fi

KUBE_VERSION="${MCM_KUBE_SRC_VERSION:-1.20.5+really1.20.2-1.1+deb12u1}"

ensure_etcd() {
  [ -x "$BIN_DIR/etcd" ] && return 0
  apt_install etcd-server
  ln -sf "$(command -v etcd || echo /usr/bin/etcd)" "$BIN_DIR/etcd"
}

# Writes deb-src lines for every deb URI/suite the system uses (deb822 and
# one-line formats) into a private sources.list.
write_src_list() {
  local out="$1"
  : >"$out"
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk '
      function flush() {
        if (types ~ /deb/ && uris != "" && suites != "") {
          n = split(uris, u, " "); m = split(suites, s, " ")
          for (i = 1; i <= n; i++) for (j = 1; j <= m; j++)
            printf "deb-src [trusted=no] %s %s %s\n", u[i], s[j], comps
        }
        types = uris = suites = comps = ""
      }
      /^[[:space:]]*$/ { flush(); next }
      /^Types:/      { sub(/^Types:[[:space:]]*/, "");      types = $0 }
      /^URIs:/       { sub(/^URIs:[[:space:]]*/, "");       uris = $0 }
      /^Suites:/     { sub(/^Suites:[[:space:]]*/, "");     suites = $0 }
      /^Components:/ { sub(/^Components:[[:space:]]*/, ""); comps = $0 }
      END { flush() }
    ' "$f" >>"$out"
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    grep -E '^[[:space:]]*deb[[:space:]]' "$f" | grep -v 'deb\.nodesource\|google' |
      sed -E 's/^[[:space:]]*deb[[:space:]]/deb-src /' >>"$out" || true
  done
  sed -i 's/ \[trusted=no\]//' "$out"
  grep -q debian "$out" || die "could not derive a Debian deb-src entry from /etc/apt/sources*"
}

build_kube() {
  [ -x "$BIN_DIR/kube-apiserver" ] && [ -x "$BIN_DIR/kube-controller-manager" ] && return 0
  log "building kube-apiserver and kube-controller-manager from Debian's kubernetes source (takes ~6 minutes on 2 cores)"
  apt_install golang-go rsync dpkg-dev golang-github-modern-go-reflect2-dev ca-certificates
  local apt_dir="$CACHE_DIR/apt" src_dir="$CACHE_DIR/src"
  mkdir -p "$apt_dir/lists/partial" "$src_dir"
  write_src_list "$apt_dir/sources.list"
  local apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache")
  mkdir -p "$apt_dir/cache/archives/partial"
  apt-get "${apt_opts[@]}" update >&2
  local tree
  tree="$(find "$src_dir" -maxdepth 1 -type d -name 'kubernetes-*' | head -n1)"
  if [ -z "$tree" ]; then
    (cd "$src_dir" && apt-get "${apt_opts[@]}" source "kubernetes=$KUBE_VERSION" >&2 ||
      apt-get "${apt_opts[@]}" source kubernetes >&2)
    tree="$(find "$src_dir" -maxdepth 1 -type d -name 'kubernetes-*' | head -n1)"
  fi
  [ -n "$tree" ] || die "apt-get source kubernetes produced no tree in $src_dir"
  # reflect2 v1.0.1 is broken under Go >= 1.18: the API server segfaults on the
  # first custom resource create. Debian's v1.0.2 is a drop-in replacement.
  local r2=/usr/share/gocode/src/github.com/modern-go/reflect2
  [ -d "$r2" ] || die "missing $r2 (golang-github-modern-go-reflect2-dev)"
  rm -rf "$tree/vendor/github.com/modern-go/reflect2"
  mkdir -p "$tree/vendor/github.com/modern-go/reflect2"
  cp "$r2"/*.go "$r2"/*.s "$tree/vendor/github.com/modern-go/reflect2/" 2>/dev/null ||
    cp "$r2"/*.go "$tree/vendor/github.com/modern-go/reflect2/"
  (cd "$tree" && make WHAT="cmd/kube-apiserver cmd/kube-controller-manager" >&2)
  local out
  out="$(find "$tree/_output" -type f -name kube-apiserver -path '*bin*' | head -n1)"
  [ -n "$out" ] || die "build produced no kube-apiserver"
  install -m 0755 "$out" "$BIN_DIR/kube-apiserver"
  install -m 0755 "$(dirname "$out")/kube-controller-manager" "$BIN_DIR/kube-controller-manager"
  # The source tree is large; the binaries are all we keep.
  rm -rf "$tree"
}

ensure_etcd
build_kube
echo "$BIN_DIR"
