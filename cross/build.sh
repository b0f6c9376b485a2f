#!/usr/bin/env bash
# Cross-builds the release perch binary for a board without Docker, using
# Debian's cross gcc and the rustup target, then checks the size budget.
#
#   cross/build.sh TARGET            e.g. aarch64-unknown-linux-gnu
#   cross/build.sh --board BOARD     e.g. rpi4 (the target comes from boards/)
#   cross/build.sh --install-missing TARGET
#                                    apt-get/rustup what is missing first
#
# The binary lands in $PERCH_CROSS_TARGET_DIR/TARGET/release/perch (default
# target/cross/...). CARGO_BUILD_JOBS limits parallelism as usual.
set -euo pipefail
# shellcheck source=cross/lib.sh
source "$(dirname "$0")/lib.sh"

usage() {
    cat >&2 <<EOF
usage: cross/build.sh [--install-missing] (TARGET | --board BOARD)
targets: ${SUPPORTED_TARGETS[*]}
boards:  $(board_names | tr '\n' ' ')
EOF
    exit 2
}

INSTALL_MISSING=0
target=""
while (($#)); do
    case "$1" in
    --install-missing) INSTALL_MISSING=1 ;;
    --board)
        (($# >= 2)) || usage
        target="$(board_get "$2" target)"
        shift
        ;;
    -h | --help) usage ;;
    -*) note "unknown option $1" && usage ;;
    *) target="$1" ;;
    esac
    shift
done
[[ -n "$target" ]] || usage

target_facts "$target"
check_toolchain || exit 1

cd "$PERCH_ROOT"
note "building perch for $TARGET into $PERCH_CROSS_TARGET_DIR"
cargo=(cargo)
if [[ "$BUILD_STD" == 1 ]]; then
    # shellcheck disable=SC2054 # the comma belongs to the flag
    cargo=(cargo +nightly -Zbuild-std=std,panic_abort)
fi
"${cargo[@]}" build --release --locked --target "$TARGET" --target-dir "$PERCH_CROSS_TARGET_DIR" -p perch

[[ -f "$BINARY" ]] || die "cargo reported success but $BINARY is missing"
machine="$(elf_machine "$BINARY")"
[[ "$machine" == "$ELF_MACHINE" ]] ||
    die "$BINARY is not a $TARGET binary (ELF machine $machine, expected $ELF_MACHINE)"
"$PERCH_ROOT/cross/size-budget.sh" "$TARGET" "$BINARY"
glibc="$(glibc_needed "$BINARY")"
note "${glibc:+needs glibc $glibc or newer on the board}${glibc:-static binary: runs with any C library on the board}"
printf '%s\n' "$BINARY"
