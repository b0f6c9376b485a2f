#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (default 60 s each).
#
#   fuzz/run.sh [SECONDS] [TARGET...]
#
# Installs what it needs when missing: a nightly toolchain (rustup, minimal
# profile) and cargo-fuzz. Corpora grow in fuzz/corpus/<target> (seeded from
# fuzz/seeds/<target>); a crash is saved in fuzz/artifacts/<target> and the
# script exits non-zero, printing how to reproduce it. Longer runs and how
# to minimise a crash: fuzz/README.md.
set -euo pipefail
cd "$(dirname "$0")"

seconds="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(bundle config topic host_abi)
fi

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "fuzz: installing the nightly toolchain (cargo-fuzz needs it)"
    rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

# No sanitizer by default: the targets are safe Rust over safe Rust
# (SQLite, the only C, is not on these paths), and without ASan wasmi's
# tail-call dispatcher keeps its constant native stack. FUZZ_SANITIZER=address
# turns ASan on.
sanitizer="${FUZZ_SANITIZER:-none}"
# FUZZ_TARGET_DIR: where the fuzz builds go (default fuzz/target); .ci/run
# keeps them outside the fresh clone, as it does the cross builds.
dir_args=()
[ -z "${FUZZ_TARGET_DIR:-}" ] || dir_args=(--target-dir "$FUZZ_TARGET_DIR")
# Build every target first: one that does not compile fails the run before
# any time is spent fuzzing the others.
for target in "${targets[@]}"; do
    if ! cargo +nightly fuzz build --sanitizer "$sanitizer" "${dir_args[@]}" "$target"; then
        echo "fuzz: target $target does not build (see the errors above)" >&2
        exit 1
    fi
done
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target"
    echo "fuzz: $target for ${seconds}s"
    cargo +nightly fuzz run --sanitizer "$sanitizer" "${dir_args[@]}" "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
        -print_final_stats=1
done
echo "fuzz: all targets ran ${seconds}s without a crash"
