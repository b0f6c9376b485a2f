# Shared by the scripts in cross/: the targets perch supports, the boards,
# and checks that name what is missing with the one command that installs it.
# Sourced, not run.
# shellcheck shell=bash
# The variables target_facts sets are read by the scripts that source this.
# shellcheck disable=SC2034

PERCH_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Cross builds get a target dir of their own so that switching between the
# host build and a board build does not rebuild either. Override with
# PERCH_CROSS_TARGET_DIR (CI points it at a cache that outlives the clone).
PERCH_CROSS_TARGET_DIR="${PERCH_CROSS_TARGET_DIR:-$PERCH_ROOT/target/cross}"

# The musl targets are what perch ships: static binaries, linked with zig
# (cargo-zigbuild), that run on any Linux of their CPU whatever its C library
# (old Raspberry Pi OS, Alpine, Buildroot, Yocto). The glibc targets stay for
# developers who build with Debian's cross gcc; their binaries need the
# board's glibc to be as new as the build machine's.
MUSL_TARGETS=(x86_64-unknown-linux-musl aarch64-unknown-linux-musl armv7-unknown-linux-musleabihf arm-unknown-linux-musleabihf)
GNU_TARGETS=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf arm-unknown-linux-gnueabi)
SUPPORTED_TARGETS=("${MUSL_TARGETS[@]}" "${GNU_TARGETS[@]}")
# cargo-zigbuild and zig, from PyPI, in a venv of their own (installed by
# check_toolchain when missing).
PERCH_ZIG_VENV="${PERCH_ZIG_VENV:-$HOME/.cache/perch/zig-venv}"

die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

note() {
    printf '%s\n' "$*" >&2
}

# Why a target that people ask for is not supported (empty: no known reason).
unsupported_reason() {
    case "$1" in
    arm-unknown-linux-gnueabihf | armv6*)
        cat <<'EOF'
hard-float ARMv6 cannot be built with Debian's toolchain. Debian's
gcc-arm-linux-gnueabihf and libc6-dev-armhf-cross are built for ARMv7
(Thumb-2, VFPv3): the crt1.o and libc.a that every binary links contain ARMv7
instructions, so the result dies with SIGILL on the ARM1176 of a Pi Zero W /
Pi 1 (checked under `qemu-arm -cpu arm1176`), and Debian ships no ARMv6
hard-float sysroot. For those boards build arm-unknown-linux-musleabihf
instead (board rpi-zero): ARMv6 hard-float, static, linked with zig, so it runs
on any Raspberry Pi OS of a Pi Zero W / Pi 1.
EOF
        ;;
    esac
}

# Sets the variables describing TARGET, or explains why it cannot be built.
target_facts() {
    TARGET="$1"
    # BUILDER: zig (cargo-zigbuild, static musl) or gcc (Debian's cross gcc).
    # STATIC: 1 when the binary must have no dynamic section at all.
    BUILDER=gcc
    STATIC=0
    case "$TARGET" in
    x86_64-unknown-linux-musl)
        BUILDER=zig STATIC=1
        # GNU_TRIPLE of a static target: the Debian multiarch directory of an
        # image's own C library, which install-image.sh looks at.
        GNU_TRIPLE=x86_64-linux-gnu
        DEB_ARCH=amd64
        # Runs natively; no emulator.
        QEMU=""
        # ELF e_machine: EM_X86_64
        ELF_MACHINE=62
        ;;
    aarch64-unknown-linux-musl)
        BUILDER=zig STATIC=1
        GNU_TRIPLE=aarch64-linux-gnu
        DEB_ARCH=arm64
        QEMU=qemu-aarch64
        ELF_MACHINE=183
        ;;
    armv7-unknown-linux-musleabihf)
        BUILDER=zig STATIC=1
        GNU_TRIPLE=arm-linux-gnueabihf
        DEB_ARCH=armhf
        QEMU=qemu-arm
        ELF_MACHINE=40
        ;;
    arm-unknown-linux-musleabihf)
        # ARMv6 hard-float (Pi Zero W, Zero, Pi 1): VFPv2, no Thumb-2.
        BUILDER=zig STATIC=1
        GNU_TRIPLE=arm-linux-gnueabihf
        DEB_ARCH=armhf
        QEMU=qemu-arm
        ELF_MACHINE=40
        ;;
    aarch64-unknown-linux-gnu)
        GNU_TRIPLE=aarch64-linux-gnu
        APT_GCC=gcc-aarch64-linux-gnu
        APT_LIBC=libc6-dev-arm64-cross
        DEB_ARCH=arm64
        QEMU=qemu-aarch64
        # ELF e_machine: EM_AARCH64
        ELF_MACHINE=183
        ;;
    armv7-unknown-linux-gnueabihf)
        GNU_TRIPLE=arm-linux-gnueabihf
        APT_GCC=gcc-arm-linux-gnueabihf
        APT_LIBC=libc6-dev-armhf-cross
        DEB_ARCH=armhf
        QEMU=qemu-arm
        # ELF e_machine: EM_ARM
        ELF_MACHINE=40
        ;;
    arm-unknown-linux-gnueabi)
        # ARMv6 (Pi Zero W, Zero, Pi 1): soft-float calls, linked statically
        # (.cargo/config.toml) against Debian's armel glibc (ARMv5TE code), so
        # it needs no matching userland and runs on armhf Raspberry Pi OS.
        GNU_TRIPLE=arm-linux-gnueabi
        APT_GCC=gcc-arm-linux-gnueabi
        APT_LIBC=libc6-dev-armel-cross
        DEB_ARCH=armhf
        QEMU=qemu-arm
        ELF_MACHINE=40
        ;;
    *)
        local reason
        reason="$(unsupported_reason "$TARGET")"
        if [[ -n "$reason" ]]; then
            die "unsupported target $TARGET:
$reason
Supported targets: ${SUPPORTED_TARGETS[*]}"
        fi
        die "unsupported target '$TARGET'. Supported targets: ${SUPPORTED_TARGETS[*]} (boards: $(board_names | tr '\n' ' '))"
        ;;
    esac
    if [[ "$BUILDER" == gcc ]]; then
        LINKER="$GNU_TRIPLE-gcc"
        SYSROOT="/usr/$GNU_TRIPLE"
    else
        LINKER=""
        SYSROOT=""
    fi
    PROFILE="$(profile_of "$TARGET")"
    BINARY="$PERCH_CROSS_TARGET_DIR/$TARGET/$PROFILE/perch"
    # Where the standard library comes from: rustup's prebuilt one, or
    # (BUILD_STD=1, set by check_toolchain) built from source with nightly.
    BUILD_STD=0
}

# The cargo profile TARGET's binary is built with and found under,
# from PERCH_CROSS_PROFILE: `release` (the default: what ships, fat LTO, one
# codegen unit), `board-check` (the same code without the whole-program
# optimisation, several times faster to build: Cargo.toml), or `ci`, what
# cross/ci.sh uses: release for the targets in PERCH_CI_RELEASE_TARGETS
# (default aarch64-unknown-linux-musl, whose size has the budget),
# board-check for the others.
profile_of() {
    local t
    case "${PERCH_CROSS_PROFILE:-release}" in
    release | board-check) echo "${PERCH_CROSS_PROFILE:-release}" ;;
    ci)
        for t in ${PERCH_CI_RELEASE_TARGETS:-aarch64-unknown-linux-musl}; do
            [[ "$t" == "$1" ]] && echo release && return
        done
        echo board-check
        ;;
    *) die "PERCH_CROSS_PROFILE must be release, board-check or ci, not '$PERCH_CROSS_PROFILE'" ;;
    esac
}

board_names() {
    local d
    for d in "$PERCH_ROOT"/boards/*/board.toml; do
        basename "$(dirname "$d")"
    done
}

# Prints the value of KEY in boards/BOARD/board.toml (flat `key = value`).
board_get() {
    local board="$1" key="$2" file="$PERCH_ROOT/boards/$1/board.toml" line
    [[ -f "$file" ]] || die "unknown board '$board'. Boards: $(board_names | tr '\n' ' ')(see boards/README.md to add one)"
    line="$(grep -E "^${key}[[:space:]]*=" "$file" | head -n1)" ||
        die "boards/$board/board.toml has no '$key'"
    line="${line#*=}"
    line="${line#"${line%%[![:space:]]*}"}"
    line="${line%"${line##*[![:space:]]}"}"
    line="${line#\"}"
    printf '%s\n' "${line%\"}"
}

# The toolchain rustc runs as, for the rustup hint (RUSTUP_TOOLCHAIN, a
# rust-toolchain file, or the default).
rustup_toolchain_flag() {
    if [[ -n "${RUSTUP_TOOLCHAIN:-}" ]]; then
        printf ' --toolchain %s' "$RUSTUP_TOOLCHAIN"
    fi
}

# Checks everything TARGET needs to build. Prints one line per missing piece
# with the command that installs it. With INSTALL_MISSING=1 it installs them
# instead. Returns non-zero if something is still missing.
check_toolchain() {
    local missing=() fixes=() apt=()
    if ! command -v cargo >/dev/null || ! command -v rustc >/dev/null; then
        die "cargo/rustc not found in PATH; install Rust with rustup (https://rustup.rs), then run this again"
    fi
    local libdir
    libdir="$(rustc --print sysroot)/lib/rustlib/$TARGET/lib"
    if [[ "$BUILD_STD" != 1 ]] && ! compgen -G "$libdir/libstd-*.rlib" >/dev/null; then
        if [[ "${INSTALL_MISSING:-0}" == 1 ]] && rustup_target_add; then
            :
        elif [[ "${INSTALL_MISSING:-0}" == 1 ]] && build_std_available; then
            note "rustup has no prebuilt standard library for $TARGET here: building it from source with nightly (-Zbuild-std)"
            BUILD_STD=1
        else
            missing+=("the Rust standard library for $TARGET (rustup target)")
            fixes+=("rustup target add$(rustup_toolchain_flag) $TARGET")
        fi
    fi
    if [[ "$BUILDER" == zig ]]; then
        if ! zig_available; then
            missing+=("cargo-zigbuild and zig (the linker and C compiler of the static builds)")
            fixes+=("python3 -m venv $PERCH_ZIG_VENV && $PERCH_ZIG_VENV/bin/pip install ziglang cargo-zigbuild")
        fi
    else
        if ! command -v "$LINKER" >/dev/null; then
            missing+=("the cross C compiler and linker $LINKER")
            apt+=("$APT_GCC")
        fi
        # The C library and start files the linker needs (the package above
        # does not always pull them in).
        if [[ ! -e "$SYSROOT/lib/crt1.o" ]]; then
            missing+=("the $DEB_ARCH C library for linking ($SYSROOT/lib/crt1.o)")
            apt+=("$APT_LIBC")
        fi
    fi
    if ((${#apt[@]})); then
        fixes+=("apt-get install -y ${apt[*]}")
    fi
    if ((${#missing[@]} == 0)); then
        return 0
    fi
    if [[ "${INSTALL_MISSING:-0}" == 1 ]]; then
        local fix
        for fix in "${fixes[@]}"; do
            note "installing: $fix"
            if [[ "$fix" == python3* ]]; then
                install_zig || return 1
            elif [[ "$fix" == apt-get* ]]; then
                # shellcheck disable=SC2086 # the package list splits on purpose
                apt_install ${fix#apt-get install -y }
            else
                # shellcheck disable=SC2086
                $fix >&2
            fi
        done
        INSTALL_MISSING=0 check_toolchain
        return
    fi
    local m
    note "error: cannot build for $TARGET, missing:"
    for m in "${missing[@]}"; do
        note "  - $m"
    done
    note "install with:"
    for m in "${fixes[@]}"; do
        note "  $m"
    done
    if [[ "${fixes[*]}" == *"rustup target add"* ]]; then
        note "(where rustup cannot download it, cross/build.sh --install-missing $TARGET builds it from source with nightly and rust-src)"
    fi
    return 1
}

# rustup target add TARGET, quietly; says in one line when it failed.
rustup_target_add() {
    local log
    log="$(mktemp)"
    note "installing: rustup target add$(rustup_toolchain_flag) $TARGET"
    # shellcheck disable=SC2046 # the flag is empty or two words
    if rustup target add $(rustup_toolchain_flag) "$TARGET" >"$log" 2>&1; then
        rm -f "$log"
        return 0
    fi
    note "rustup could not add $TARGET: $(grep -m1 -E 'error|status code' "$log")"
    rm -f "$log"
    return 1
}

# Whether cargo-zigbuild and zig are on PATH or in PERCH_ZIG_VENV; puts the
# venv on PATH when they are there.
zig_available() {
    if [[ -x "$PERCH_ZIG_VENV/bin/cargo-zigbuild" ]] && "$PERCH_ZIG_VENV/bin/python" -m ziglang version >/dev/null 2>&1; then
        case ":$PATH:" in *":$PERCH_ZIG_VENV/bin:"*) ;; *) export PATH="$PERCH_ZIG_VENV/bin:$PATH" ;; esac
        return 0
    fi
    command -v cargo-zigbuild >/dev/null && { command -v zig >/dev/null || command -v python-zig >/dev/null; }
}

# Installs cargo-zigbuild and zig (the ziglang wheel) from PyPI into
# PERCH_ZIG_VENV. Debian's python3 needs python3-venv for `-m venv`.
install_zig() {
    if ! python3 -c 'import ensurepip' 2>/dev/null; then
        note "installing: apt-get install -y python3-venv"
        apt_install python3-venv
    fi
    python3 -m venv "$PERCH_ZIG_VENV" >&2 &&
        "$PERCH_ZIG_VENV/bin/pip" install -q ziglang cargo-zigbuild >&2 &&
        zig_available
}

# Whether a nightly toolchain with rust-src can build std (installing them
# when allowed); for targets whose prebuilt std cannot be downloaded.
build_std_available() {
    local src
    src="$(rustc +nightly --print sysroot 2>/dev/null)/lib/rustlib/src/rust/library/std"
    if [[ ! -d "$src" ]]; then
        rustup toolchain install nightly --profile minimal --component rust-src >&2 || return 1
        src="$(rustc +nightly --print sysroot)/lib/rustlib/src/rust/library/std"
    fi
    [[ -d "$src" ]]
}

# apt-get install, with one `apt-get update` first when the package lists are
# empty (fresh machines) or the package is unknown.
apt_install() {
    local sudo=()
    if ((EUID != 0)); then
        sudo=(sudo)
    fi
    if ! DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "$@" >&2; then
        "${sudo[@]}" apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "$@" >&2
    fi
}

# Ensures COMMAND exists, installing Debian package PACKAGE if allowed.
need_command() {
    local cmd="$1" pkg="$2"
    command -v "$cmd" >/dev/null && return 0
    if [[ "${INSTALL_MISSING:-0}" == 1 ]]; then
        note "installing: apt-get install -y $pkg"
        apt_install "$pkg"
        command -v "$cmd" >/dev/null && return 0
    fi
    die "$cmd not found; install it with: apt-get install -y $pkg"
}

# The ELF machine number of FILE (e_machine, little-endian).
elf_machine() {
    local bytes
    bytes="$(od -An -tu1 -j18 -N2 "$1" | tr -s ' ')"
    read -r lo hi <<<"$bytes"
    printf '%s\n' "$((lo + 256 * hi))"
}

# Whether FILE is fully static: no program interpreter, no dynamic section
# (what `file` calls "statically linked" and `ldd` "not a dynamic executable").
is_static() {
    ! readelf -lW "$1" | grep -qE '^ *(INTERP|DYNAMIC) '
}

# The newest glibc symbol version FILE needs, e.g. 2.34 (empty: static).
glibc_needed() {
    readelf --dyn-syms -W "$1" | { grep -o 'GLIBC_2\.[0-9]*' || true; } | sed 's/GLIBC_//' | sort -V | tail -n1
}

# The version from the crate's Cargo.toml (workspace version).
perch_version() {
    sed -n '/^\[workspace.package\]/,/^\[/{s/^version *= *"\(.*\)"/\1/p}' "$PERCH_ROOT/Cargo.toml"
}
