#!/usr/bin/env bash
# Cross-builds the release perch binary for a board without Docker, then
# checks the size budget. The musl targets (what perch ships) link a static
# binary with zig through cargo-zigbuild (both from PyPI); the glibc targets
# use Debian's cross gcc.
#
#   cross/build.sh TARGET            e.g. aarch64-unknown-linux-musl
#   cross/build.sh --board BOARD     e.g. rpi4 (the target comes from boards/)
#   cross/build.sh --install-missing TARGET
#                                    apt-get/rustup what is missing first
#
# The binary lands in $PERCH_CROSS_TARGET_DIR/TARGET/release/perch (default
# target/cross/...). CARGO_BUILD_JOBS limits parallelism as usual.
# PERCH_CROSS_PROFILE=board-check builds CI's faster profile instead (into
# .../TARGET/board-check/perch); its size is reported, not held to the
# budget, which is for what ships.
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
build=build
if [[ "$BUILDER" == zig ]]; then
    build=zigbuild
fi
if [[ "$BUILD_STD" == 1 ]]; then
    cargo=(cargo +nightly)
    # shellcheck disable=SC2054 # the comma belongs to the flag
    build="$build -Zbuild-std=std,panic_abort"
fi
# shellcheck disable=SC2086 # $build is a subcommand and its flags
# Each target builds in a directory of its own, so two targets can build at
# once (cargo locks a target dir for the whole build); the binary is then
# copied to $BINARY, where every other script looks for it.
build_dir="$PERCH_CROSS_TARGET_DIR/build-$TARGET"
"${cargo[@]}" $build --profile "$PROFILE" --locked --target "$TARGET" --target-dir "$build_dir" -p perch
mkdir -p "$(dirname "$BINARY")"
cp -f "$build_dir/$TARGET/$PROFILE/perch" "$BINARY.tmp"
mv -f "$BINARY.tmp" "$BINARY"

[[ -f "$BINARY" ]] || die "cargo reported success but $BINARY is missing"
machine="$(elf_machine "$BINARY")"
[[ "$machine" == "$ELF_MACHINE" ]] ||
    die "$BINARY is not a $TARGET binary (ELF machine $machine, expected $ELF_MACHINE)"
if [[ "$PROFILE" == release ]]; then
    "$PERCH_ROOT/cross/size-budget.sh" "$TARGET" "$BINARY"
else
    note "size: $BINARY is $(stat -c %s "$BINARY") bytes (profile $PROFILE: not held to the release budget)"
fi
if [[ "$STATIC" == 1 ]] && ! is_static "$BINARY"; then
    die "$BINARY is dynamically linked (readelf -l shows an interpreter or a dynamic section); a $TARGET build must be static"
fi
glibc="$(glibc_needed "$BINARY")"
note "${glibc:+needs glibc $glibc or newer on the board}${glibc:-static binary: runs with any C library on the board}"
printf '%s\n' "$BINARY"
