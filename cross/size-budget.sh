#!/usr/bin/env bash
# Fails when a release binary is over its size budget (issue 6: the aarch64
# binary with every default feature, TLS included, is at most 8 MiB).
#
#   cross/size-budget.sh TARGET BINARY
#
# cross/build.sh runs it after every build, so a dependency that blows the
# budget fails the build that brought it in.
set -euo pipefail
# shellcheck source=cross/lib.sh
source "$(dirname "$0")/lib.sh"

(($# == 2)) || die "usage: cross/size-budget.sh TARGET BINARY"
target="$1" binary="$2"
[[ -f "$binary" ]] || die "$binary does not exist; build it first: cross/build.sh $target"

MIB=$((1024 * 1024))
case "$target" in
# The budget from the issue: the aarch64 binary with every default feature.
aarch64-unknown-linux-musl | aarch64-unknown-linux-gnu) budget=$((8 * MIB)) ;;
# 32-bit ARM code is smaller; the same ceiling keeps the boards comparable.
armv7-unknown-linux-musleabihf | arm-unknown-linux-musleabihf) budget=$((8 * MIB)) ;;
# x86-64 code is larger than ARM's for the same source.
x86_64-unknown-linux-musl) budget=$((10 * MIB)) ;;
# 32-bit ARM code is smaller; the same ceiling keeps the boards comparable.
armv7-unknown-linux-gnueabihf) budget=$((8 * MIB)) ;;
# ARMv6 static: glibc is inside the binary.
arm-unknown-linux-gnueabi) budget=$((8 * MIB)) ;;
*) die "no size budget for $target" ;;
esac

size="$(stat -c %s "$binary")"
human() { awk -v b="$1" 'BEGIN { printf "%.2f MiB", b / 1048576 }'; }
if ((size > budget)); then
    die "$binary is $(human "$size") ($size bytes), over the $(human "$budget") budget for $target by $((size - budget)) bytes.
Find what grew with: cargo bloat --release --crates --target $target (cargo install cargo-bloat),
or check that the [profile.release] settings in Cargo.toml still apply."
fi
note "size: $binary is $(human "$size") ($size bytes), budget $(human "$budget") for $target: ok"
