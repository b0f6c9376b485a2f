#!/usr/bin/env bash
# Rebuilds the example functions that `perch demo` ships inside the binary
# (gateway/demo/*.wasm) from their sources in sdk/examples/. Run it after
# changing those examples or the SDK; the e2e test
# `demo::bundled_functions_are_the_sdk_examples` fails until you do.
set -euo pipefail
sdk="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$sdk")"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
PERCH_EXAMPLES_OUT="$out" "$sdk/build-examples.sh" >&2
for name in threshold-alert moving-average anomaly-zscore; do
  cp "$out/$name.wasm" "$root/gateway/demo/$name.wasm"
  echo "gateway/demo/$name.wasm: $(wc -c <"$root/gateway/demo/$name.wasm") bytes"
done
