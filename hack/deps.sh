#!/usr/bin/env bash
# Installs the small system tools the hack/ scripts and tests rely on
# (curl, openssl, python3 with venv, unzip, npm) when they are missing.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust with rustup (https://rustup.rs) first"
need=()
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v python3 >/dev/null 2>&1 || need+=(python3 python3-venv)
command -v make >/dev/null 2>&1 || need+=(make)
[ ${#need[@]} -eq 0 ] || apt_install "${need[@]}" ca-certificates
