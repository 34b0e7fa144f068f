#!/usr/bin/env bash
# Builds the release binary the way the Dockerfile does (musl target,
# musl-gcc: static, musl's allocator) and prints its path. `make bench`
# measures this binary, the one the image ships; `make image-check` checks
# it. Installs musl-tools and the rustup target when missing.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

case "$(uname -m)" in
  x86_64) TARGET=x86_64-unknown-linux-musl ;;
  aarch64) TARGET=aarch64-unknown-linux-musl ;;
  *) die "unsupported architecture $(uname -m)" ;;
esac
command -v musl-gcc >/dev/null 2>&1 || apt_install musl-tools
rustup target list --installed 2>/dev/null | grep -qx "$TARGET" || rustup target add "$TARGET" >&2

log "building the release binary for $TARGET (as the Dockerfile does)"
CC_x86_64_unknown_linux_musl=musl-gcc CC_aarch64_unknown_linux_musl=musl-gcc \
  cargo build --release --locked --target "$TARGET" --bin machine-controller >&2
echo "${CARGO_TARGET_DIR:-$ROOT/target}/$TARGET/release/machine-controller"
