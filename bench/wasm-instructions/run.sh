#!/usr/bin/env bash
# Host instructions per event (below and above threshold-alert's limit)
# for each module given, under valgrind's callgrind: the count with 1,000
# events minus the count with none, divided by 1,000.
#
#   bench/wasm-instructions/run.sh target/perch-examples/threshold-alert.wasm [more.wasm ...]
#
# The driver (src/main.rs) runs wasmi 2.0 with fuel metering and lazy
# translation, as perch does, with stand-in host imports (publish accepts,
# config_get answers limit = 30.0); perch's own host code is not counted.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
(cd "$here" && cargo build --release -q)
bin="$here/target/release/fuel"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
for f in "$@"; do
  line="$(basename "$f")"
  for only in below above; do
    counts=()
    for n in 0 1000; do
      ONLY=$only N=$n valgrind --tool=callgrind --callgrind-out-file="$tmp/out" "$bin" "$f" >/dev/null 2>"$tmp/err"
      counts+=("$(grep -o 'Collected : [0-9]*' "$tmp/err" | awk '{print $3}')")
    done
    line="$line $only $(( (counts[1] - counts[0]) / 1000 ))"
  done
  echo "$line"
done
