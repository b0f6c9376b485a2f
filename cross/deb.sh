#!/usr/bin/env bash
# Builds the Debian package of perch for one target from the binary that
# cross/build.sh made, with dpkg-deb (no debhelper needed).
#
#   cross/deb.sh TARGET [--board BOARD]
#
# The package holds /usr/bin/perch, /etc/perch/perch.toml (a conffile: the
# config of BOARD, by default the smallest board of the target, so it is safe
# on all of them), every board config of the target under
# /usr/share/perch/boards/, the hardened perch.service and the perch user.
# Install on the board with `apt install ./perch_VERSION_ARCH.deb`.
# Prints the path of the .deb.
set -euo pipefail
# shellcheck source=cross/lib.sh
source "$(dirname "$0")/lib.sh"

usage() {
    die "usage: cross/deb.sh TARGET [--board BOARD]   (targets: ${SUPPORTED_TARGETS[*]})"
}

target="" board=""
while (($#)); do
    case "$1" in
    --board)
        (($# >= 2)) || usage
        board="$2"
        shift
        ;;
    -*) usage ;;
    *) target="$1" ;;
    esac
    shift
done
[[ -n "$target" ]] || usage
target_facts "$target"
need_command dpkg-deb dpkg
need_command readelf binutils

if [[ -z "$board" ]]; then
    case "$TARGET" in
    x86_64-unknown-linux-musl) board=generic-x86_64 ;;
    aarch64-unknown-linux-musl | aarch64-unknown-linux-gnu) board=rpi-zero2w ;;
    armv7-unknown-linux-musleabihf) board=generic-armv7 ;;
    arm-unknown-linux-musleabihf) board=rpi-zero ;;
    armv7-unknown-linux-gnueabihf) board=generic-armv7 ;;
    arm-unknown-linux-gnueabi) board=rpi-zero ;;
    esac
fi
[[ "$(board_get "$board" target)" == "$TARGET" || "$TARGET" == *-gnu* ]] ||
    die "board $board runs $(board_get "$board" target), not $TARGET"
[[ -f "$BINARY" ]] || die "$BINARY does not exist; build it first: cross/build.sh $TARGET"
[[ "$(elf_machine "$BINARY")" == "$ELF_MACHINE" ]] || die "$BINARY is not a $TARGET binary"

# Dependencies from what the binary actually links, so a new shared library
# cannot slip in unnoticed.
libc_version="$(glibc_needed "$BINARY")"
depends=()
if [[ -n "$libc_version" ]]; then
    depends+=("libc6 (>= $libc_version)")
fi
while read -r lib; do
    case "$lib" in
    libc.so.6 | libm.so.6 | libpthread.so.0 | libdl.so.2 | librt.so.1 | libutil.so.1 | ld-linux-*) ;;
    libgcc_s.so.1) depends+=("libgcc-s1") ;;
    *) die "$BINARY links $lib, which cross/deb.sh does not know the Debian package of; add it to the map in cross/deb.sh" ;;
    esac
done < <(readelf -d "$BINARY" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
depends_line=""
if ((${#depends[@]})); then
    depends_line="$(printf '%s, ' "${depends[@]}")"
    depends_line="Depends: ${depends_line%, }"
fi

version="$(perch_version)"
# One directory per target: the armv7 and the ARMv6 package are both armhf.
out_dir="$PERCH_CROSS_TARGET_DIR/deb/$TARGET"
stage="$out_dir/stage"
deb="$out_dir/perch_${version}_${DEB_ARCH}.deb"
rm -rf "$stage"
mkdir -p "$stage/DEBIAN" "$out_dir"

install -Dm0755 "$BINARY" "$stage/usr/bin/perch"
install -Dm0644 "$PERCH_ROOT/boards/$board/perch.toml" "$stage/etc/perch/perch.toml"
for b in $(board_names); do
    if [[ "$(board_get "$b" target)" == "$TARGET" ]]; then
        install -Dm0644 "$PERCH_ROOT/boards/$b/perch.toml" "$stage/usr/share/perch/boards/$b/perch.toml"
    fi
done
install -Dm0644 "$PERCH_ROOT/cross/package/perch.service" "$stage/usr/lib/systemd/system/perch.service"
install -Dm0644 "$PERCH_ROOT/cross/package/perch.sysusers" "$stage/usr/lib/sysusers.d/perch.conf"
install -Dm0644 "$PERCH_ROOT/cross/package/perch.tmpfiles" "$stage/usr/lib/tmpfiles.d/perch.conf"
install -Dm0644 /dev/stdin "$stage/usr/share/doc/perch/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: perch
Source: https://github.com/perch-edge/perch

Files: *
License: Apache-2.0
 On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0.
EOF
for script in postinst prerm postrm; do
    install -m0755 "$PERCH_ROOT/cross/package/$script" "$stage/DEBIAN/$script"
done
printf '/etc/perch/perch.toml\n' >"$stage/DEBIAN/conffiles"
installed_kib="$(du -sk --exclude=DEBIAN "$stage" | cut -f1)"
cat >"$stage/DEBIAN/control" <<EOF
Package: perch
Version: $version
Architecture: $DEB_ARCH
Maintainer: perch developers <perch@perch-edge.invalid>
Installed-Size: $installed_kib
$depends_line
Recommends: systemd
Section: net
Priority: optional
Homepage: https://github.com/perch-edge/perch
Description: serverless functions at the edge: MQTT broker, WebAssembly, store-and-forward
 perch runs an MQTT broker for the sensors around a board, small sandboxed
 WebAssembly functions on the events they publish, keeps what the functions
 produce in SQLite until upstream has it, and forwards it, in one binary.
 .
 Built for $TARGET. /etc/perch/perch.toml is tuned for the board
 $board; the configs of the other boards are in /usr/share/perch/boards/.
EOF

# A static binary has no Depends: line; an empty line would end the stanza.
sed -i '/^$/d' "$stage/DEBIAN/control"
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >&2
rm -rf "$stage"
printf '%s\n' "$deb"
