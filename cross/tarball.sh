#!/usr/bin/env bash
# Builds the release tarball of perch for one target from the binary that
# cross/build.sh made: for boards without dpkg (Alpine, Buildroot, Yocto) or
# for people who install by hand.
#
#   cross/tarball.sh TARGET
#
# perch-VERSION-TARGET.tar.gz holds perch-VERSION-TARGET/ with the static
# binary, the systemd unit, its sysusers.d and tmpfiles.d files, the config of
# every board of the target, and INSTALL (the commands that put them in
# place). Prints the path of the tarball.
set -euo pipefail
# shellcheck source=cross/lib.sh
source "$(dirname "$0")/lib.sh"

(($# == 1)) || die "usage: cross/tarball.sh TARGET   (targets: ${SUPPORTED_TARGETS[*]})"
target_facts "$1"
[[ -f "$BINARY" ]] || die "$BINARY does not exist; build it first: cross/build.sh $TARGET"
[[ "$(elf_machine "$BINARY")" == "$ELF_MACHINE" ]] || die "$BINARY is not a $TARGET binary"

version="$(perch_version)"
name="perch-$version-$TARGET"
out_dir="$PERCH_CROSS_TARGET_DIR/dist"
stage="$out_dir/$name"
rm -rf "$stage"
mkdir -p "$stage"
install -m0755 "$BINARY" "$stage/perch"
install -m0644 "$PERCH_ROOT/cross/package/perch.service" "$stage/perch.service"
install -m0644 "$PERCH_ROOT/cross/package/perch.sysusers" "$stage/perch.sysusers"
install -m0644 "$PERCH_ROOT/cross/package/perch.tmpfiles" "$stage/perch.tmpfiles"
boards=()
for b in $(board_names); do
    if [[ "$(board_get "$b" target)" == "$TARGET" ]]; then
        install -Dm0644 "$PERCH_ROOT/boards/$b/perch.toml" "$stage/boards/$b/perch.toml"
        boards+=("$b")
    fi
done
((${#boards[@]})) || die "no board in boards/ runs $TARGET, so the tarball would have no config"
cat >"$stage/INSTALL" <<EOT
perch $version for $TARGET$([[ "$STATIC" == 1 ]] && echo ' (static: needs no C library on the board)')

Boards of this target: ${boards[*]}. As root, on the board:

  install -m0755 perch /usr/bin/perch
  install -Dm0640 boards/${boards[0]}/perch.toml /etc/perch/perch.toml
  install -Dm0644 perch.service /usr/lib/systemd/system/perch.service
  install -Dm0644 perch.sysusers /usr/lib/sysusers.d/perch.conf
  install -Dm0644 perch.tmpfiles /usr/lib/tmpfiles.d/perch.conf
  systemd-sysusers && systemd-tmpfiles --create perch.conf
  chgrp perch /etc/perch/perch.toml
  systemctl daemon-reload && systemctl enable --now perch

Without systemd: perch run --config /etc/perch/perch.toml --data-dir /var/lib/perch
Check a config first with: perch config check /etc/perch/perch.toml
EOT
tarball="$out_dir/$name.tar.gz"
tar -C "$out_dir" --owner=0 --group=0 --numeric-owner -czf "$tarball" "$name"
rm -rf "$stage"
printf '%s\n' "$tarball"
