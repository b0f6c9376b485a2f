#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (default 60 s each).
#
#   fuzz/run.sh [SECONDS] [TARGET...]
#
# Builds the targets with the stable toolchain and the instrumentation flags
# cargo-fuzz passes to rustc (libFuzzer's coverage counters, --cfg fuzzing),
# so neither cargo-fuzz nor nightly has to be installed: on a fresh machine
# that saves their install and keeps CI's cold run short. The binaries are
# plain libFuzzer executables, run here with the corpus and seeds.
# FUZZ_SANITIZER=address builds with AddressSanitizer instead, which needs
# nightly (installed when missing). Corpora grow in fuzz/corpus/<target>
# (seeded from fuzz/seeds/<target>); a crash is saved in
# fuzz/artifacts/<target> and the script exits non-zero, printing how to
# reproduce it. Longer runs and how to minimise a crash: fuzz/README.md.
set -euo pipefail
cd "$(dirname "$0")"

seconds="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(bundle config topic host_abi)
fi

# The flags cargo-fuzz 0.12 gives rustc for `--sanitizer none` on Linux.
rustflags="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4"
rustflags+=" -Cllvm-args=-sanitizer-coverage-inline-8bit-counters"
rustflags+=" -Cllvm-args=-sanitizer-coverage-pc-table"
rustflags+=" -Cllvm-args=-sanitizer-coverage-trace-compares"
rustflags+=" -Cllvm-args=-sanitizer-coverage-stack-depth"
rustflags+=" --cfg fuzzing -Cdebug-assertions"
toolchain=()
# No sanitizer by default: the targets are safe Rust over safe Rust
# (SQLite, the only C, is not on these paths), and without ASan wasmi's
# tail-call dispatcher keeps its constant native stack.
if [ "${FUZZ_SANITIZER:-none}" = address ]; then
    if ! rustup run nightly rustc --version >/dev/null 2>&1; then
        echo "fuzz: installing the nightly toolchain (AddressSanitizer needs it)"
        rustup toolchain install nightly --profile minimal
    fi
    toolchain=(+nightly)
    rustflags+=" -Zsanitizer=address"
elif [ "${FUZZ_SANITIZER:-none}" != none ]; then
    echo "fuzz: FUZZ_SANITIZER must be none or address, not '${FUZZ_SANITIZER}'" >&2
    exit 2
fi

host="$(rustc -vV | sed -n 's/^host: //p')"
# FUZZ_TARGET_DIR: where the fuzz builds go (default fuzz/target); .ci/run
# keeps them outside the fresh clone, as it does the cross builds.
target_dir="${FUZZ_TARGET_DIR:-$PWD/target}"
bins=()
for target in "${targets[@]}"; do bins+=(--bin "$target"); done
# An explicit --target keeps the flags off build scripts and proc macros, as
# cargo-fuzz does. One build of every target: one that does not compile
# fails the run before any time is spent fuzzing the others.
if ! RUSTFLAGS="$rustflags" cargo "${toolchain[@]}" build --release \
    --target "$host" --target-dir "$target_dir" "${bins[@]}"; then
    echo "fuzz: the targets do not build (see the errors above)" >&2
    exit 1
fi
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target" "artifacts/$target"
    echo "fuzz: $target for ${seconds}s"
    if ! "$target_dir/$host/release/$target" "corpus/$target" "seeds/$target" \
        -artifact_prefix="artifacts/$target/" -max_total_time="$seconds" -timeout=10 \
        -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1; then
        echo "fuzz: $target crashed; the input is in fuzz/artifacts/$target/." >&2
        echo "reproduce: $target_dir/$host/release/$target fuzz/artifacts/$target/<file>" >&2
        echo "(or with cargo-fuzz: cd fuzz && cargo +nightly fuzz run --sanitizer none $target artifacts/$target/<file>)" >&2
        exit 1
    fi
done
echo "fuzz: all targets ran ${seconds}s without a crash"
