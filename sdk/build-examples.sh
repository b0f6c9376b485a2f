#!/usr/bin/env bash
# Builds every example function in sdk/examples/ to WebAssembly and puts each
# next to its manifest, ready for `perch fn deploy`:
#
#   <out>/<name>.wasm  <out>/<name>.toml
#
# <out> is $PERCH_EXAMPLES_OUT, else $CARGO_TARGET_DIR/perch-examples, else
# target/perch-examples at the workspace root. Rust examples need the rustup
# target wasm32-unknown-unknown (installed here if missing); the C example
# needs clang and lld (`apt-get install -y clang lld`).
set -euo pipefail

sdk="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$sdk")"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
out="${PERCH_EXAMPLES_OUT:-$target_dir/perch-examples}"

# The Rust examples: one crate each, also workspace members (native tests).
rust_examples=(threshold-alert unit-convert moving-average anomaly-zscore abi-probe window-sample event-stats)

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
  if ! command -v rustup >/dev/null 2>&1; then
    echo "build-examples.sh: the Rust target wasm32-unknown-unknown is missing and rustup is not" \
      "there to add it; install rustup (https://rustup.rs) or the target by other means" >&2
    exit 1
  fi
  echo "build-examples.sh: installing the rustup target wasm32-unknown-unknown" >&2
  rustup target add wasm32-unknown-unknown
fi

# Speed over a few bytes: the workspace release profile already has lto,
# codegen-units = 1 and strip. wasmi runs a module built at opt-level 3
# faster than one built for size: inlined helpers save the calls, which are
# what an interpreter pays most for, and the SDK's JSON reader is written
# for it. threshold-alert: 5,550 host instructions per reading below its
# limit at 3 against 7,428 at "s", 16,944 against 20,275 above it
# (callgrind, docs/performance.md), for 2.5 KB more module.
# Set CARGO_PROFILE_RELEASE_OPT_LEVEL=s for the smallest modules.
export CARGO_PROFILE_RELEASE_OPT_LEVEL="${CARGO_PROFILE_RELEASE_OPT_LEVEL:-3}"
export CARGO_PROFILE_RELEASE_PANIC=abort

# Each as a cdylib alone: the examples are also rlibs (the runtime benchmark
# links threshold-alert natively), and rustc builds the .wasm of a crate
# that is both with less inlining across crates: threshold-alert took up to
# 1.4x as long in wasmi and was 3 KB bigger that way.
for name in "${rust_examples[@]}"; do
  (cd "$root" && cargo rustc --release --target wasm32-unknown-unknown -p "$name" --crate-type cdylib)
done

mkdir -p "$out"
for name in "${rust_examples[@]}"; do
  cp "$target_dir/wasm32-unknown-unknown/release/${name//-/_}.wasm" "$out/$name.wasm"
  cp "$sdk/examples/$name/manifest.toml" "$out/$name.toml"
done

# The C example proves the ABI is not Rust-only.
"$sdk/examples/c-threshold/build.sh" "$out/c-threshold.wasm"
cp "$sdk/examples/c-threshold/manifest.toml" "$out/c-threshold.toml"

echo "build-examples.sh: built into $out:"
for name in "${rust_examples[@]}" c-threshold; do
  printf '  %-22s %8d bytes\n' "$name.wasm" "$(stat -c %s "$out/$name.wasm")"
done
