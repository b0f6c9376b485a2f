#!/usr/bin/env bash
# Builds c-threshold.wasm with clang + lld; no libc, no WASI.
#   usage: build.sh [OUT.wasm]      (default: ./c-threshold.wasm)
# Needs clang and wasm-ld: `apt-get install -y clang lld` on Debian/Ubuntu.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/c-threshold.wasm}"

for tool in clang wasm-ld; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "c-threshold/build.sh: $tool not found; install it with: apt-get install -y clang lld" >&2
    exit 1
  fi
done

# --target=wasm32 -nostdlib: a bare module, no libc, no start function.
# -mcpu=mvp plus the features ABI.md allows, nothing newer.
# stack-size: 16 KiB is plenty here and keeps memory at one 64 KiB page.
# Exports come from the export_name attributes in the source; imports from
# import_module/import_name, so nothing may stay undefined.
clang --target=wasm32 -O2 -nostdlib -ffreestanding \
  -std=c11 -Wall -Wextra -Werror \
  -mcpu=mvp -mmutable-globals -msign-ext -mbulk-memory \
  -Wl,--no-entry -Wl,--strip-all -Wl,-z,stack-size=16384 \
  -o "$out" "$here/threshold.c"
echo "c-threshold/build.sh: wrote $out ($(stat -c %s "$out") bytes)"
