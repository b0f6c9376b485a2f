#!/usr/bin/env bash
# Runs perch's whole test suite. On a fresh Debian machine with only
# rustup/cargo it first installs what the tests need, saying what it installs.
set -euo pipefail
cd "$(dirname "$0")"

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

# Debian packages the tests use: clang/lld build the C example function,
# mosquitto is a real peer broker, chromium renders the admin status page,
# node and npm install the AssemblyScript compiler for the AssemblyScript
# function template (`perch fn build` fetches it from the npm registry).
missing=()
command -v clang >/dev/null 2>&1 || missing+=(clang)
command -v wasm-ld >/dev/null 2>&1 || missing+=(lld)
command -v mosquitto >/dev/null 2>&1 || missing+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || missing+=(mosquitto-clients)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  echo "test.sh: installing ${missing[*]} with apt-get" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Example functions are built for WebAssembly.
if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  echo "test.sh: installing the rustup target wasm32-unknown-unknown" >&2
  rustup target add wasm32-unknown-unknown
fi

cargo test --workspace --locked "$@"
