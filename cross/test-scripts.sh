#!/usr/bin/env bash
# Tests of the scripts in cross/: what they say on bad input, and
# install-image.sh on a root filesystem directory and on a disk image that
# this test builds itself. Needs the static aarch64 and armv7 binaries from
# cross/build.sh (cross/ci.sh builds them first).
set -euo pipefail
# shellcheck source=cross/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$PERCH_ROOT"

target_facts armv7-unknown-linux-musleabihf
ARMV7_BINARY="$BINARY"
target_facts arm-unknown-linux-musleabihf
ARMV6_BINARY="$BINARY"
target_facts aarch64-unknown-linux-musl
for b in "$BINARY" "$ARMV7_BINARY"; do
    [[ -f "$b" ]] || die "$b is missing; build it first (cross/ci.sh does)"
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
passed=0
failed=0

# expect_fail NAME PATTERN... -- COMMAND...: COMMAND fails and its stderr
# contains every PATTERN (fixed strings).
expect_fail() {
    local name="$1" patterns=() p status=0
    shift
    while [[ "$1" != -- ]]; do
        patterns+=("$1")
        shift
    done
    shift
    "$@" >"$work/out" 2>"$work/err" || status=$?
    if ((status == 0)); then
        note "FAILED: $name: succeeded, expected a failure"
        failed=$((failed + 1))
        return
    fi
    for p in "${patterns[@]}"; do
        if ! grep -qF -- "$p" "$work/err"; then
            note "FAILED: $name: stderr lacks '$p'; it was:"
            cat "$work/err" >&2
            failed=$((failed + 1))
            return
        fi
    done
    note "ok: $name"
    passed=$((passed + 1))
}

# expect NAME COMMAND...: COMMAND succeeds.
expect() {
    local name="$1"
    shift
    if "$@" >"$work/out" 2>"$work/err"; then
        note "ok: $name"
        passed=$((passed + 1))
    else
        note "FAILED: $name; output:"
        cat "$work/out" "$work/err" >&2
        failed=$((failed + 1))
    fi
}

## build.sh on bad input: says what is missing and how to install it.

expect_fail "unsupported target is named with the supported ones" \
    "unsupported target 'x86_64-pc-windows-gnu'" "aarch64-unknown-linux-gnu" "armv7-unknown-linux-gnueabihf" -- \
    cross/build.sh x86_64-pc-windows-gnu
expect_fail "hard-float ARMv6 is refused with the reason and the alternative" \
    "unsupported target arm-unknown-linux-gnueabihf" "hard-float ARMv6" "SIGILL" "build arm-unknown-linux-musleabihf" -- \
    cross/build.sh arm-unknown-linux-gnueabihf
expect_fail "unknown board" "unknown board 'rpi9'" "rpi4" -- cross/build.sh --board rpi9

# A PATH with everything but the cross compilers.
mkdir -p "$work/nolinker"
for f in /usr/bin/* /bin/*; do
    case "$(basename "$f")" in
    *-linux-gnu*-gcc*) ;; # also matches arm-linux-gnueabihf-gcc
    *) ln -sf "$f" "$work/nolinker/" ;;
    esac
done
cargo_bin="$(dirname "$(command -v cargo)")"
expect_fail "missing cross linker: what and the apt command" \
    "aarch64-linux-gnu-gcc" "apt-get install -y gcc-aarch64-linux-gnu" -- \
    env PATH="$cargo_bin:$work/nolinker" cross/build.sh aarch64-unknown-linux-gnu
expect_fail "missing armv7 linker" \
    "arm-linux-gnueabihf-gcc" "apt-get install -y gcc-arm-linux-gnueabihf" -- \
    env PATH="$cargo_bin:$work/nolinker" cross/build.sh armv7-unknown-linux-gnueabihf
# The static builds without zig: what is missing and the pip command.
expect_fail "missing zig for a static build: what and the pip command" \
    "cargo-zigbuild and zig" "pip install ziglang cargo-zigbuild" -- \
    env PATH="$cargo_bin:$work/nolinker" PERCH_ZIG_VENV="$work/no-venv" cross/build.sh --board generic-armv7

# A rustc whose sysroot has no standard library for the target, as after a
# fresh rustup install without `rustup target add`.
mkdir -p "$work/fakerust"
cat >"$work/fakerust/rustc" <<'EOF'
#!/bin/sh
if [ "$1" = --print ] && [ "$2" = sysroot ]; then echo /nonexistent-sysroot; exit 0; fi
exec "$REAL_RUSTC" "$@"
EOF
chmod +x "$work/fakerust/rustc"
expect_fail "missing rustup target: the rustup command" \
    "Rust standard library for aarch64-unknown-linux-gnu" "rustup target add aarch64-unknown-linux-gnu" -- \
    env REAL_RUSTC="$(command -v rustc)" PATH="$work/fakerust:$PATH" cross/build.sh aarch64-unknown-linux-gnu
expect_fail "missing rustup target names the toolchain in use" \
    "rustup target add --toolchain nightly armv7-unknown-linux-gnueabihf" -- \
    env REAL_RUSTC="$(command -v rustc)" RUSTUP_TOOLCHAIN=nightly PATH="$work/fakerust:$PATH" \
    cross/build.sh armv7-unknown-linux-gnueabihf

## size-budget.sh

truncate -s $((8 * 1024 * 1024 + 1)) "$work/big"
expect_fail "a binary over 8 MiB fails the budget" "over the 8.00 MiB budget" -- \
    cross/size-budget.sh aarch64-unknown-linux-gnu "$work/big"
truncate -s $((8 * 1024 * 1024)) "$work/exact"
expect "a binary of exactly 8 MiB is within budget" cross/size-budget.sh aarch64-unknown-linux-gnu "$work/exact"

## install-image.sh into a root filesystem directory

# A minimal merged-/usr Debian-like rootfs. The binary is static, so it runs
# from it without the image's C library.
make_rootfs() {
    local r="$1"
    mkdir -p "$r/etc/systemd/system" "$r/usr/bin" "$r/usr/lib/aarch64-linux-gnu" "$r/var/lib"
    ln -s usr/lib "$r/lib"
    ln -s usr/bin "$r/bin"
    printf 'root:x:0:0:root:/root:/bin/bash\n' >"$r/etc/passwd"
    printf 'root:x:0:\n' >"$r/etc/group"
    printf 'root:*:19000:0:99999:7:::\n' >"$r/etc/shadow"
    printf 'root:*::\n' >"$r/etc/gshadow"
    chmod 0640 "$r/etc/shadow" "$r/etc/gshadow"
}

# Checks a rootfs that perch was installed into for board rpi4.
check_installed() {
    local r="$1"
    [[ -x "$r/usr/bin/perch" ]] || return 1
    cmp -s "$r/usr/bin/perch" "$BINARY" || return 1
    cmp -s "$r/etc/perch/perch.toml" boards/rpi4/perch.toml || return 1
    [[ "$(stat -c %a "$r/etc/perch/perch.toml")" == 640 ]] || return 1
    [[ "$(readlink "$r/etc/systemd/system/multi-user.target.wants/perch.service")" == /usr/lib/systemd/system/perch.service ]] || return 1
    cmp -s "$r/usr/lib/systemd/system/perch.service" cross/package/perch.service || return 1
    grep -qx 'MemoryMax=384M' "$r/etc/systemd/system/perch.service.d/board.conf" || return 1
    [[ -f "$r/usr/lib/sysusers.d/perch.conf" && -f "$r/usr/lib/tmpfiles.d/perch.conf" ]] || return 1
    # The installed binary runs from the image.
    qemu-aarch64 "$r/usr/bin/perch" config check "$r/etc/perch/perch.toml" || return 1
    if command -v systemctl >/dev/null; then
        [[ "$(systemctl --root="$r" is-enabled perch.service)" == enabled ]] || return 1
    fi
}

# What first boot does before perch starts: systemd-sysusers creates perch.
first_boot_creates_user() {
    local r="$1"
    command -v systemd-sysusers >/dev/null || {
        note "(systemd-sysusers not here; skipped the first-boot user check)"
        return 0
    }
    systemd-sysusers --root="$r" >&2 || return 1
    grep -q '^perch:x:[0-9]*:[0-9]*:perch edge gateway:/var/lib/perch:/usr/sbin/nologin$' "$r/etc/passwd"
}

rootfs="$work/rootfs"
make_rootfs "$rootfs"
expect "install into a rootfs directory" cross/install-image.sh --board rpi4 "$rootfs"
expect "the rootfs has perch, its config, its enabled unit; the binary runs from it" check_installed "$rootfs"
expect "first boot creates the perch user" first_boot_creates_user "$rootfs"
expect "installing again (an upgrade) works" cross/install-image.sh --board rpi4 "$rootfs"
expect "and leaves the same result" check_installed "$rootfs"

old="$work/bullseye"
make_rootfs "$old"
# Test fixture: a stand-in for Bullseye's libc, which defines versions up to
# GLIBC_2.31 only.
printf 'GLIBC_2.17\0GLIBC_2.28\0GLIBC_2.30\0GLIBC_2.31\0' >"$old/usr/lib/aarch64-linux-gnu/libc.so.6"
# The static binaries bring their own C library: an old image is fine.
expect "the static aarch64 build installs into an image with an old glibc" \
    cross/install-image.sh --board rpi4 "$old"
expect "and runs from it" check_installed "$old"
armv6_into_old_image() {
    cross/install-image.sh --board rpi-zero "$old" &&
        qemu-arm -cpu arm1176 "$old/usr/bin/perch" config check "$old/etc/perch/perch.toml" &&
        grep -qx 'MemoryMax=64M' "$old/etc/systemd/system/perch.service.d/board.conf"
}
if [[ -f "$ARMV6_BINARY" ]]; then
    expect "the static ARMv6 build installs into an image with an old glibc and runs on an ARM1176" \
        armv6_into_old_image
else
    note "(no ARMv6 binary built; skipped the static-binary install test)"
fi

expect_fail "a binary for another architecture is refused" "is not a aarch64-unknown-linux-musl binary" -- \
    cross/install-image.sh --board rpi4 --binary "$ARMV7_BINARY" "$rootfs"
expect_fail "not a rootfs" "does not look like a root filesystem" -- \
    cross/install-image.sh --board rpi4 "$work"
expect_fail "the build machine's own / is refused" "refusing to install into /" -- \
    cross/install-image.sh --board rpi4 /

escape="$work/escape"
make_rootfs "$escape"
mkdir -p "$work/outside"
ln -s "$work/outside" "$escape/etc/perch"
expect_fail "an absolute symlink in the image is not followed" "is a symlink" -- \
    cross/install-image.sh --board rpi4 "$escape"
[[ -z "$(ls -A "$work/outside")" ]] || {
    note "FAILED: wrote through the symlink"
    failed=$((failed + 1))
}

## install-image.sh into a disk image: MBR, FAT boot partition, ext4 root

img="$work/pi.img"
truncate -s 64M "$img"
printf 'label: dos\nstart=2048, size=16384, type=c\nstart=18432, type=83\n' | sfdisk -q "$img"
root_offset=$((18432 * 512))
root_kib=$(((64 * 1024 * 1024 - root_offset) / 1024))
imgroot="$work/imgroot"
make_rootfs "$imgroot"
mke2fs -q -t ext4 -d "$imgroot" -E offset="$root_offset" "$img" "${root_kib}k"
expect "install into a .img (ext4 root partition written with debugfs)" \
    cross/install-image.sh --board rpi4 "$img"
expect "installing into the .img again works" cross/install-image.sh --board rpi4 "$img"
out="$work/fromimg"
mkdir -p "$out"
debugfs -R "rdump / $out" "$img?offset=$root_offset" 2>/dev/null
expect "the image's root has perch, its config, its enabled unit; the binary runs from it" check_installed "$out"
[[ "$(debugfs -R 'stat /usr/bin/perch' "$img?offset=$root_offset" 2>/dev/null | grep -o 'User: *[0-9]*')" =~ User:\ *0 ]] &&
    expect "files in the image belong to root" true
expect "the image's file system is clean after the writes" \
    e2fsck -fn "$img?offset=$root_offset"

printf '%d passed, %d failed\n' "$passed" "$failed"
((failed == 0))
