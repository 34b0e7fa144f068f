#!/usr/bin/env bash
# Provides the moto EC2 emulator (PyPI `moto[server]`) in a cached virtualenv
# and prints the path of its `moto_server` executable.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MOTO_VERSION="${MCM_MOTO_VERSION:-5.2.5}"
VENV="$CACHE_DIR/moto-$MOTO_VERSION"

if [ ! -x "$VENV/bin/moto_server" ]; then
  command -v python3 >/dev/null 2>&1 || apt_install python3
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
    apt_install python3-venv
  fi
  log "installing moto[server,ec2]==$MOTO_VERSION into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "moto[server,ec2]==$MOTO_VERSION" >&2
fi
echo "$VENV/bin/moto_server"
