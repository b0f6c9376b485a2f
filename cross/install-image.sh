#!/usr/bin/env bash
# Puts perch into an SD-card image or a root filesystem directory, without
# booting it: the binary, the board's config, the hardened service (enabled),
# the perch user (created by systemd-sysusers on first boot) and the board's
# memory limit.
#
#   cross/install-image.sh --board BOARD [--binary FILE] [--config FILE] ROOTFS_DIR
#   cross/install-image.sh --board BOARD [--binary FILE] [--config FILE] IMAGE.img
#
# ROOTFS_DIR: a mounted or unpacked root filesystem (e.g. from debootstrap).
# IMAGE.img: a Raspberry Pi OS style image (MBR, a FAT boot partition and an
# ext4 root partition). The ext4 partition is written with debugfs at its
# offset in the file: no loop device, no mount, no root needed.
#
# The binary defaults to the one cross/build.sh made for the board's target;
# the config to boards/BOARD/perch.toml. perch is installed as plain files,
# not as a dpkg package (to switch later: apt install ./perch_*.deb on the
# board; dpkg asks before replacing /etc/perch/perch.toml if it was changed).
set -euo pipefail
# shellcheck source=cross/lib.sh
source "$(dirname "$0")/lib.sh"

usage() {
    die "usage: cross/install-image.sh --board BOARD [--binary FILE] [--config FILE] (ROOTFS_DIR | IMAGE.img)
boards: $(board_names | tr '\n' ' ')"
}

board="" binary="" config="" dest=""
while (($#)); do
    case "$1" in
    --board | --binary | --config)
        (($# >= 2)) || usage
        declare "${1#--}=$2"
        shift
        ;;
    -*) usage ;;
    *)
        [[ -z "$dest" ]] || usage
        dest="$1"
        ;;
    esac
    shift
done
[[ -n "$board" && -n "$dest" ]] || usage
target_facts "$(board_get "$board" target)"
binary="${binary:-$BINARY}"
config="${config:-$PERCH_ROOT/boards/$board/perch.toml}"
memory_max="$(board_get "$board" service_memory_max)"

[[ -f "$binary" ]] || die "$binary does not exist; build it first: cross/build.sh --board $board"
machine="$(elf_machine "$binary")"
[[ "$machine" == "$ELF_MACHINE" ]] ||
    die "$binary is not a $TARGET binary (ELF machine $machine, expected $ELF_MACHINE), but board $board runs $TARGET"
[[ -f "$config" ]] || die "config $config does not exist"
need_command readelf binutils
glibc="$(glibc_needed "$binary")"

# Lays out perch's files, as they go into the image, under $1.
stage_files() {
    local root="$1"
    install -Dm0755 "$binary" "$root/usr/bin/perch"
    install -Dm0640 "$config" "$root/etc/perch/perch.toml"
    install -Dm0644 "$PERCH_ROOT/cross/package/perch.service" "$root/usr/lib/systemd/system/perch.service"
    install -Dm0644 "$PERCH_ROOT/cross/package/perch.sysusers" "$root/usr/lib/sysusers.d/perch.conf"
    install -Dm0644 "$PERCH_ROOT/cross/package/perch.tmpfiles" "$root/usr/lib/tmpfiles.d/perch.conf"
    install -Dm0644 /dev/stdin "$root/etc/systemd/system/perch.service.d/board.conf" <<EOF
# Written by cross/install-image.sh for board $board (boards/$board/board.toml).
# Takes effect where the kernel's memory cgroup controller is on (some
# Raspberry Pi kernels need cgroup_enable=memory in cmdline.txt).
[Service]
MemoryMax=$memory_max
EOF
    # `systemctl enable perch` without a running systemd: the [Install]
    # section's WantedBy=multi-user.target, as a symlink.
    mkdir -p "$root/etc/systemd/system/multi-user.target.wants"
    ln -sfn /usr/lib/systemd/system/perch.service \
        "$root/etc/systemd/system/multi-user.target.wants/perch.service"
}

# Fails unless the image's C library is new enough for the binary. $1 is a
# copy of the image's libc.so.6 (or empty when the image has none).
check_libc() {
    local libc="$1"
    if [[ -z "$glibc" ]]; then
        return # a static binary brings its own C library
    fi
    if [[ -z "$libc" ]]; then
        note "warning: no libc.so.6 for $GNU_TRIPLE in the image; cannot check that it has glibc $glibc or newer"
        return
    fi
    grep -qaF "GLIBC_$glibc" "$libc" ||
        die "the image's glibc is older than $glibc, which perch (built on Debian 12) needs: Raspberry Pi OS Bookworm (glibc 2.36) or newer works, Bullseye (2.31) does not. Use a newer image"
}

install_into_dir() {
    local rootfs="$1" stage="$2" rel parent
    [[ -d "$rootfs/etc" && -d "$rootfs/usr" ]] ||
        die "$rootfs does not look like a root filesystem (no etc/ and usr/)"
    [[ "$(cd "$rootfs" && pwd -P)" != / ]] ||
        die "refusing to install into / (this machine); give the image's root filesystem directory"
    local libc=""
    for candidate in usr/lib/"$GNU_TRIPLE"/libc.so.6 lib/"$GNU_TRIPLE"/libc.so.6; do
        if [[ -f "$rootfs/$candidate" ]]; then
            libc="$rootfs/$candidate"
            break
        fi
    done
    check_libc "$libc"
    # Every directory written to must be a real directory inside the rootfs:
    # an absolute symlink in the image (e.g. /etc/perch -> /srv/x) would
    # otherwise write to this machine.
    while IFS= read -r rel; do
        parent="$rootfs"
        local part
        IFS=/ read -ra parts <<<"${rel#./}"
        for part in "${parts[@]}"; do
            parent="$parent/$part"
            [[ ! -L "$parent" ]] ||
                die "$parent is a symlink; not writing through it (write to its target inside the image instead)"
        done
    done < <(cd "$stage" && find . -mindepth 1 -type d)
    (cd "$stage" && find . -mindepth 1 -type d) | while IFS= read -r rel; do
        mkdir -p "$rootfs/$rel"
    done
    (cd "$stage" && find . \( -type f -o -type l \) -printf '%P\n') | while IFS= read -r rel; do
        rm -f "$rootfs/$rel"
        cp -P --preserve=mode "$stage/$rel" "$rootfs/$rel"
    done
}

# The byte offset of the root (Linux, ext4) partition of IMAGE.
root_partition_offset() {
    local img="$1" line start
    need_command sfdisk fdisk
    # The last Linux partition: on Raspberry Pi OS, partition 2.
    line="$(sfdisk -d "$img" 2>/dev/null | grep -E 'type=(83|0FC63DAF-8483-4772-8E79-3D69D8477DE4)' | tail -n1)" ||
        die "$img has no Linux partition (sfdisk -d $img lists its partitions)"
    start="$(sed -n 's/.*start= *\([0-9]*\).*/\1/p' <<<"$line")"
    printf '%s\n' "$((start * 512))"
}

install_into_image() {
    local img="$1" stage="$2" offset fs work
    need_command debugfs e2fsprogs
    offset="$(root_partition_offset "$img")"
    fs="$img?offset=$offset"
    debugfs -R stats "$fs" 2>/dev/null | grep -q 'Filesystem magic number: *0xEF53' ||
        die "the Linux partition of $img (at byte $offset) is not ext2/3/4"
    work="$(mktemp -d)"
    # shellcheck disable=SC2064 # expand now: the trap runs after work is out of scope
    trap "rm -rf '$work'" RETURN
    debugfs -R "ls -l /etc" "$fs" 2>/dev/null | grep -q . ||
        die "the root partition of $img has no /etc; is it a root filesystem?"
    local libc="" candidate
    for candidate in /usr/lib/"$GNU_TRIPLE"/libc.so.6 /lib/"$GNU_TRIPLE"/libc.so.6; do
        if debugfs -R "dump $candidate $work/libc.so.6" "$fs" 2>/dev/null && [[ -s "$work/libc.so.6" ]]; then
            libc="$work/libc.so.6"
            break
        fi
    done
    check_libc "$libc"
    # One debugfs session: create the missing directories, replace files and
    # links, set owner root and the mode. Only missing directories: debugfs
    # 1.47's mkdir of an existing name leaves an orphaned inode behind.
    {
        (cd "$stage" && find . -mindepth 1 -type d -printf '%P\n') | while IFS= read -r rel; do
            if debugfs -R "stat \"/$rel\"" "$fs" 2>&1 | grep -q 'File not found'; then
                printf 'mkdir "/%s"\n' "$rel"
            fi
        done
        (cd "$stage" && find . -type f -printf '%P %m\n') | while read -r rel mode; do
            printf 'rm "/%s"\nwrite "%s" "/%s"\n' "$rel" "$stage/$rel" "$rel"
            printf 'sif "/%s" mode 0100%s\nsif "/%s" uid 0\nsif "/%s" gid 0\n' "$rel" "$mode" "$rel" "$rel"
        done
        (cd "$stage" && find . -type l -printf '%P %l\n') | while read -r rel link; do
            printf 'rm "/%s"\nsymlink "/%s" "%s"\n' "$rel" "$rel" "$link"
        done
    } >"$work/commands"
    debugfs -w -f "$work/commands" "$fs" >"$work/log" 2>&1 ||
        die "debugfs could not write to $img: $(cat "$work/log")"
    # debugfs carries on after a failed command, so read everything back.
    local rel
    while IFS= read -r rel; do
        rm -f "$work/check"
        debugfs -R "dump \"/$rel\" \"$work/check\"" "$fs" >/dev/null 2>&1
        cmp -s "$stage/$rel" "$work/check" ||
            die "writing /$rel into $img failed; debugfs said: $(grep -v '^debugfs' "$work/log" | head -n 20)"
    done < <(cd "$stage" && find . -type f -printf '%P\n')
}

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
stage_files "$stage"
if [[ -d "$dest" ]]; then
    install_into_dir "$dest" "$stage"
elif [[ -f "$dest" ]]; then
    install_into_image "$dest" "$stage"
else
    die "$dest is neither a directory nor an image file"
fi
note "installed perch ($TARGET, board $board, ${glibc:+needs glibc $glibc}${glibc:-static}) into $dest; perch.service is enabled and starts on first boot"
