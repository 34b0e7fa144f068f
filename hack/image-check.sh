#!/usr/bin/env bash
# Checks what the Dockerfile promises, without a container engine:
#   1. the release binary, built the way the Dockerfile builds it (musl
#      target, musl-gcc), is statically linked (`file`, `ldd`);
#   2. it runs with nothing else on the filesystem, as the image's user
#      65532:65532 (a chroot holding only the binary: no loader, no libc);
#   3. the Dockerfile's USER, ENTRYPOINT and EXPOSEd ports match the chart's
#      runAsUser/runAsGroup and ports.
# What stays unchecked: the base image itself and `docker build` (no engine).
# Step 2 needs root (chroot); it is skipped with a note otherwise.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

command -v file >/dev/null 2>&1 || apt_install file
BIN="$(bash "$ROOT/hack/static-release.sh")" || die "the static release build failed"

fail=0
check() { # check DESCRIPTION COMMAND...
  local what="$1"; shift
  if "$@"; then printf '  ok    %s\n' "$what"; else printf '  FAIL  %s\n' "$what"; fail=1; fi
}
is_static() {
  file -L "$BIN" | grep -Eq 'statically linked|static-pie linked' &&
    ! ldd "$BIN" 2>/dev/null | grep -q '=>'
}
echo "image checks:"
printf '  file: %s\n' "$(file -L "$BIN" | cut -d: -f2- | cut -c2-120)"
printf '  ldd:  %s\n' "$(ldd "$BIN" 2>&1 | head -n1 | sed 's/^\s*//')"
printf '  size: %s\n' "$(du -h "$BIN" | cut -f1)"
check "the binary is statically linked" is_static
packed_relocations() { readelf -d "$BIN" | grep -q '(RELR)'; }
check "its relative relocations are packed (DT_RELR, .cargo/config.toml)" packed_relocations

runs_alone() {
  local root; root="$(mktemp -d)"
  cp "$BIN" "$root/machine-controller"
  chmod 0755 "$root" "$root/machine-controller"
  chroot --userspec=65532:65532 "$root" /machine-controller --version >/dev/null
  local rc=$?; rm -rf "$root"; return $rc
}
if [ "$(id -u)" -eq 0 ] && command -v chroot >/dev/null 2>&1; then
  check "it runs alone in an empty root as 65532:65532" runs_alone
else
  echo "  skip  running in an empty root as 65532 (needs root for chroot)"
fi

values="charts/mcm-provider-aws/values.yaml"
dockerfile_user="$(sed -n 's/^USER \(.*\)$/\1/p' Dockerfile | tail -n1)"
chart_user="$(awk '/^securityContext:/{s=1} s&&/runAsUser:/{print $2; exit}' "$values"):$(awk '/^securityContext:/{s=1} s&&/runAsGroup:/{print $2; exit}' "$values")"
same_user() { [ "$dockerfile_user" = "$chart_user" ]; }
check "Dockerfile USER ($dockerfile_user) is the chart's runAsUser:runAsGroup ($chart_user)" same_user
entry="$(sed -n 's/^ENTRYPOINT \["\([^"]*\)".*/\1/p' Dockerfile)"
copied="$(sed -n 's/^COPY --from=build [^ ]* \(.*\)$/\1/p' Dockerfile)"
same_entry() { [ "$entry" = "$copied" ] && [ "$(basename "$entry")" = machine-controller ]; }
check "ENTRYPOINT ($entry) is the binary the build stage copies" same_entry
ports="$(sed -n 's/^EXPOSE //p' Dockerfile)"
chart_ports="$(awk '/^metrics:/{m=1} m&&/^  port:/{print $2; exit}' "$values") $(awk '/^health:/{h=1} h&&/^  port:/{print $2; exit}' "$values")"
same_ports() { [ "$ports" = "$chart_ports" ]; }
check "EXPOSE ($ports) are the chart's metrics and health ports ($chart_ports)" same_ports
distroless() { grep -q '^ARG BASE_IMAGE=gcr.io/distroless/static' Dockerfile; }
check "the runtime base is distroless/static" distroless

if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  echo "a Docker engine is available: run \`make docker-build\` to build the image itself"
else
  echo "no container engine here: the image itself was not built (\`make docker-build\` needs one)"
fi
exit $fail
