#!/usr/bin/env bash
# CI for the boards: cross-build, smoke-test under qemu-user, size budget,
# packages, and the scripts' own tests. Called from .ci/run; runs alone too:
#
#   cross/ci.sh
#
# Installs what it needs when missing (apt packages, rustup targets). Cross
# builds go to $PERCH_CROSS_TARGET_DIR (default target/cross) and are reused:
# a warm run rebuilds nothing. See cross/README.md for timings.
set -euo pipefail
# shellcheck source=cross/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$PERCH_ROOT"

export INSTALL_MISSING=1
# The targets, and the board whose CPU each one's smoke test emulates.
# PERCH_CI_TARGETS="a b" runs a subset.
# The shipped targets: static musl binaries (cross/lib.sh, MUSL_TARGETS).
read -ra CI_TARGETS <<<"${PERCH_CI_TARGETS:-${MUSL_TARGETS[*]}}"
# The profile each target is built with (cross/lib.sh, profile_of). What
# ships is `release` (fat LTO, one codegen unit): each such build keeps a
# core busy for most of ten minutes on a 2-core machine, too long for four of
# them in a cold CI run. So CI builds `release` only for the target whose
# size has the issue's budget (aarch64; PERCH_CI_RELEASE_TARGETS) and the
# others with `board-check`; every binary gets the same static check, smoke
# test under qemu and packages.
export PERCH_CROSS_PROFILE="${PERCH_CROSS_PROFILE:-ci}"
declare -A CI_BOARD=(
    [x86_64-unknown-linux-musl]=generic-x86_64
    [aarch64-unknown-linux-musl]=rpi4
    [armv7-unknown-linux-musleabihf]=generic-armv7
    [arm-unknown-linux-musleabihf]=rpi-zero
    [aarch64-unknown-linux-gnu]=rpi4
    [armv7-unknown-linux-gnueabihf]=generic-armv7
    [arm-unknown-linux-gnueabi]=rpi-zero
)

# The command that runs the TARGET binary FILE as BOARD's CPU: natively, or
# under qemu-user (with the glibc sysroot for the dynamic glibc builds).
runner() {
    local target="$1" board="$2" file="$3"
    target_facts "$target"
    if [[ -z "$QEMU" ]]; then
        run=("$file")
    elif [[ -n "$SYSROOT" ]]; then
        run=("$QEMU" -cpu "$(board_get "$board" qemu_cpu)" -L "$SYSROOT" "$file")
    else
        run=("$QEMU" -cpu "$(board_get "$board" qemu_cpu)" "$file")
    fi
}
started=$SECONDS
passed=0
failed=0

step() {
    printf '\n== %s (%ss)\n' "$*" "$((SECONDS - started))" >&2
}

check() {
    local what="$1"
    shift
    if "$@"; then
        passed=$((passed + 1))
        note "ok: $what"
    else
        failed=$((failed + 1))
        note "FAILED: $what"
    fi
}

step "tools"
need_command qemu-aarch64 qemu-user
need_command mosquitto_pub mosquitto-clients
need_command dpkg-deb dpkg
need_command readelf binutils
need_command debugfs e2fsprogs
need_command sfdisk fdisk
need_command openssl openssl

# 1. Cross-build, two targets at a time: the release profile's fat LTO with
# one codegen unit ends its build on one core, so a second build keeps the
# other core busy. Each target has its own build dir (cross/build.sh).
build_target() {
    local target="$1" log="$PERCH_CROSS_TARGET_DIR/build-$1.log" t0=$SECONDS
    mkdir -p "$PERCH_CROSS_TARGET_DIR"
    if cross/build.sh --install-missing "$target" >"$log" 2>&1; then
        note "built $target in $((SECONDS - t0))s ($(grep -m1 '^size:' "$log" | sed 's/^size: [^ ]* is //'))"
    else
        note "building $target failed; its log ($log):"
        tail -n 60 "$log" >&2
        return 1
    fi
}
# Toolchains first, one target after the other: two builds at once must not
# both install zig, a rustup target or nightly's rust-src.
for target in "${CI_TARGETS[@]}"; do
    target_facts "$target"
    check_toolchain || die "cannot build for $target (see above)"
done
step "build ${CI_TARGETS[*]}"
build_failed=0
for ((i = 0; i < ${#CI_TARGETS[@]}; i += 2)); do
    pair=("${CI_TARGETS[@]:i:2}")
    pids=()
    for target in "${pair[@]}"; do
        build_target "$target" &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do
        wait "$pid" || build_failed=1
    done
done
((build_failed == 0)) || die "a cross build failed (its log is above)"

# The example function the smoke test deploys: sdk/examples/unit-convert
# (Fahrenheit in, Celsius out), built for wasm32 like sdk/build-examples.sh
# builds it.
step "example function"
if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
    note "installing: rustup target add wasm32-unknown-unknown"
    rustup target add wasm32-unknown-unknown >&2
fi
CARGO_PROFILE_RELEASE_OPT_LEVEL=s CARGO_PROFILE_RELEASE_PANIC=abort \
    cargo build --release --locked --target wasm32-unknown-unknown \
    --target-dir "$PERCH_CROSS_TARGET_DIR" -p unit-convert >&2
EXAMPLE_WASM="$PERCH_CROSS_TARGET_DIR/wasm32-unknown-unknown/release/unit_convert.wasm"
EXAMPLE_MANIFEST="sdk/examples/unit-convert/manifest.toml"
[[ -f "$EXAMPLE_WASM" ]] || die "$EXAMPLE_WASM was not built"

# Deploys the example function to the gateway at 127.0.0.1:$1 with the ARM
# binary's own `perch fn deploy` (so the CLI's MQTT client runs on the
# emulated CPU too), and says what to publish and what to expect back.
deploy_example_function() {
    local port="$1"
    "${run[@]}" fn deploy "$EXAMPLE_WASM" --manifest "$EXAMPLE_MANIFEST" \
        --broker "127.0.0.1:$port" --gateway smoke --timeout-ms 60000 >&2 || return 1
    SMOKE_IN="sensors/t1/temperature_f"
    SMOKE_PAYLOAD="98.6"
    SMOKE_OUT="sensors/t1/temperature_c"
    SMOKE_EXPECT='"temperature":37'
}

# Waits until LOG has perch's ready line, the process PID has died, or
# TENTHS tenths of a second have passed.
wait_ready() {
    local log="$1" pid="$2" tenths="$3"
    for _ in $(seq "$tenths"); do
        grep -q 'perch ready' "$log" && return 0
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
}

# 2. Start perch under qemu-user with a plain and a TLS listener, deploy the
# example function, publish an event with a host MQTT client, receive the
# function's output (over TLS, so rustls and ring's assembly run on the
# emulated CPU too), SIGTERM, expect exit status 0.
smoke_test() {
    local target="$1" board="$2"
    target_facts "$target"
    local dir log pid line port tls_port run
    dir="$(mktemp -d)"
    log="$dir/perch.log"
    runner "$target" "$board" "$BINARY"

    # Every board config of this target passes `perch config check`.
    local b
    for b in $(board_names); do
        [[ "$(board_get "$b" target)" == "$target" ]] || continue
        # shellcheck disable=SC2154 # run is set by runner
        "${run[@]}" config check "boards/$b/perch.toml" >&2 || return 1
    done

    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj /CN=localhost -addext subjectAltName=DNS:localhost \
        -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null
    cat >"$dir/perch.toml" <<EOF
[gateway]
id = "smoke"

[[broker.listeners]]
name = "plain"
listen = "127.0.0.1:0"
allow_anonymous = true

[[broker.listeners]]
name = "tls"
listen = "127.0.0.1:0"
allow_anonymous = true
tls = { cert_path = "$dir/cert.pem", key_path = "$dir/key.pem" }
EOF
    NO_COLOR=1 "${run[@]}" run --config "$dir/perch.toml" --data-dir "$dir/data" 2>"$log" &
    pid=$!
    # qemu is slow to start a big binary; give it a minute.
    wait_ready "$log" "$pid" 600
    line="$(grep -m1 'perch ready' "$log")" || {
        note "perch ($target) did not get ready; its log:"
        cat "$log" >&2
        kill -KILL "$pid" 2>/dev/null || true
        return 1
    }
    note "$line"
    port="$(sed -n 's/.* mqtt:\/\/127\.0\.0\.1:\([0-9]*\) (plain).*/\1/p' <<<"$line")"
    tls_port="$(sed -n 's/.*mqtts:\/\/127\.0\.0\.1:\([0-9]*\) (tls).*/\1/p' <<<"$line")"
    [[ -n "$port" && -n "$tls_port" ]] || {
        note "no plain and TLS port in the ready line"
        kill -KILL "$pid"
        return 1
    }

    if ! deploy_example_function "$port"; then
        note "deploying the example function to perch ($target) failed; its log:"
        cat "$log" >&2
        kill -KILL "$pid"
        return 1
    fi
    local in="$SMOKE_IN" out="$SMOKE_OUT" expect="$SMOKE_EXPECT"
    note "example function deployed: $in -> $out"
    # By name, not 127.0.0.1: mosquitto puts the host into SNI even when it is
    # an IP address, and rustls refuses an IP address in SNI (decode_error).
    mosquitto_sub -h localhost -p "$tls_port" --cafile "$dir/cert.pem" \
        -t "$out" -C 1 -W 60 >"$dir/received" &
    local sub=$!
    # Publish until the subscriber has it: its SUBSCRIBE may still be on its way.
    for _ in $(seq 100); do
        mosquitto_pub -h 127.0.0.1 -p "$port" -t "$in" -m "$SMOKE_PAYLOAD" || true
        kill -0 "$sub" 2>/dev/null || break
        sleep 0.5
    done
    local ok=0
    if wait "$sub" && grep -qF -- "$expect" "$dir/received"; then
        note "received over TLS on $out: $(head -c 200 "$dir/received")"
    else
        note "nothing received on $out"
        ok=1
    fi

    kill -TERM "$pid"
    local status=0
    wait "$pid" || status=$?
    if ((status != 0)); then
        note "perch ($target) exited with status $status after SIGTERM; its log:"
        cat "$log" >&2
        ok=1
    else
        note "perch ($target) exited 0 after SIGTERM"
    fi
    if grep -q $'\e\[' "$log"; then
        note "perch wrote colour codes with NO_COLOR=1 set (the systemd unit relies on it)"
        ok=1
    fi
    rm -rf "$dir"
    return "$ok"
}

step "smoke test under qemu-user"
for target in "${CI_TARGETS[@]}"; do
    board="${CI_BOARD[$target]}"
    target_facts "$target"
    how=natively
    [[ -z "$QEMU" ]] || how="under qemu ($board: -cpu $(board_get "$board" qemu_cpu))"
    check "$target end to end $how" \
        smoke_test "$target" "$board"
done

# A musl build must be fully static: no interpreter, no dynamic section.
static_binary() {
    target_facts "$1"
    [[ "$STATIC" == 1 ]] || return 0
    if ! is_static "$BINARY"; then
        note "$BINARY is dynamically linked:"
        readelf -lW "$BINARY" | grep -E 'INTERP|DYNAMIC' >&2
        return 1
    fi
    if command -v file >/dev/null; then
        note "file: $(file -b "$BINARY" | cut -d, -f1-5)"
    fi
}
step "static"
for target in "${CI_TARGETS[@]}"; do
    check "$target is statically linked" static_binary "$target"
done

# 3. Size budget (cross/build.sh checked it too; this reports all targets).
step "size budget"
for target in "${CI_TARGETS[@]}"; do
    target_facts "$target"
    if [[ "$PROFILE" == release ]]; then
        check "size budget $target" cross/size-budget.sh "$target" "$BINARY"
    else
        note "size of $target ($PROFILE build, not the release budget): $(stat -c %s "$BINARY") bytes"
    fi
done

# 4. Packages: build, inspect, check what is inside.
inspect_deb() {
    local target="$1" deb info contents
    target_facts "$target"
    deb="$(cross/deb.sh "$target")"
    info="$(dpkg-deb -I "$deb")"
    contents="$(dpkg-deb -c "$deb")"
    printf '%s\n%s\n' "$info" "$contents" >&2
    local want
    for want in ./usr/bin/perch ./etc/perch/perch.toml ./usr/lib/systemd/system/perch.service \
        ./usr/lib/sysusers.d/perch.conf ./usr/lib/tmpfiles.d/perch.conf; do
        grep -q " $want\$" <<<"$contents" || {
            note "$deb lacks $want"
            return 1
        }
    done
    grep -q "Architecture: $DEB_ARCH" <<<"$info" || return 1
    if [[ -n "$(glibc_needed "$BINARY")" ]]; then
        grep -q 'Depends: libc6 (>= 2\.[0-9]*)' <<<"$info" || return 1
    else
        # Static: nothing to depend on.
        ! grep -q 'Depends:' <<<"$info" || return 1
    fi
    [[ "$(dpkg-deb -f "$deb" Package)" == perch ]] || return 1
    dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles | grep -qx /etc/perch/perch.toml || {
        note "/etc/perch/perch.toml is not a conffile"
        return 1
    }
    # The binary in the package is the one that was tested.
    local x
    x="$(mktemp -d)"
    dpkg-deb -x "$deb" "$x"
    cmp -s "$x/usr/bin/perch" "$BINARY" || return 1
    local run
    runner "$target" "${CI_BOARD[$target]}" "$x/usr/bin/perch"
    "${run[@]}" config check "$x/etc/perch/perch.toml" >&2 || return 1
    if command -v systemd-analyze >/dev/null; then
        # verify wants ExecStart= to exist on this machine: point it at the
        # unpacked binary. Any complaint fails the check.
        sed "s|^ExecStart=/usr/bin/perch|ExecStart=$x/usr/bin/perch|" \
            "$x/usr/lib/systemd/system/perch.service" >"$x/perch.service"
        local complaints
        complaints="$(systemd-analyze verify "$x/perch.service" 2>&1)" || true
        [[ -z "$complaints" ]] || {
            note "systemd-analyze verify: $complaints"
            return 1
        }
        systemd-analyze security --offline=yes "$x/perch.service" 2>&1 | tail -n1 >&2
    fi
    rm -rf "$x"
}
# The unit's own command line from the unpacked x86-64 .deb, with its paths
# moved into the unpacked tree: the packaged binary starts with the packaged
# config, says it is ready, and stops cleanly on SIGTERM.
start_unit_binary() {
    local target="$1" deb x exec log pid status=0
    target_facts "$target"
    deb="$(cross/deb.sh "$target")"
    x="$(mktemp -d)"
    dpkg-deb -x "$deb" "$x"
    exec="$(sed -n 's/^ExecStart=//p' "$x/usr/lib/systemd/system/perch.service")"
    exec="${exec//\/usr\/bin\/perch/$x/usr/bin/perch}"
    exec="${exec//\/etc\/perch/$x/etc/perch}"
    exec="${exec//\$\{STATE_DIRECTORY\}/$x/var/lib/perch}"
    note "ExecStart, moved into $x: $exec"
    log="$x/perch.log"
    # The board config listens on the LAN with logins; the test only needs it
    # to start. Its port may be taken on this machine: ask for a free one.
    sed -i 's/^\(listen *= *\)"[0-9.]*:[0-9]*"/\1"127.0.0.1:0"/' "$x/etc/perch/perch.toml"
    # shellcheck disable=SC2086 # the command line splits into words, as systemd does
    NO_COLOR=1 $exec 2>"$log" &
    pid=$!
    wait_ready "$log" "$pid" 100
    if grep -q 'perch ready' "$log"; then
        note "$(grep -m1 'perch ready' "$log")"
    else
        note "the packaged perch did not get ready; its log:"
        cat "$log" >&2
        status=1
    fi
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" || status=1
    rm -rf "$x"
    return "$status"
}

# The tarball: the binary that was tested, the unit, the board configs.
inspect_tarball() {
    local target="$1" tarball listing x
    target_facts "$target"
    tarball="$(cross/tarball.sh "$target")"
    listing="$(tar -tzf "$tarball")"
    printf '%s\n' "$listing" >&2
    local want name
    name="$(basename "$tarball" .tar.gz)"
    for want in perch perch.service perch.sysusers perch.tmpfiles INSTALL; do
        grep -qx "$name/$want" <<<"$listing" || {
            note "$tarball lacks $name/$want"
            return 1
        }
    done
    grep -q "^$name/boards/.*/perch.toml\$" <<<"$listing" || return 1
    x="$(mktemp -d)"
    tar -C "$x" -xzf "$tarball"
    cmp -s "$x/$name/perch" "$BINARY" || return 1
    rm -rf "$x"
}

step "packages"
for target in "${CI_TARGETS[@]}"; do
    check ".deb for $target" inspect_deb "$target"
    check "tarball for $target" inspect_tarball "$target"
done
if [[ " ${CI_TARGETS[*]} " == *" x86_64-unknown-linux-musl "* ]]; then
    check "the x86-64 .deb's unit command starts the packaged binary" start_unit_binary x86_64-unknown-linux-musl
fi

# 5. The scripts themselves: bad input, install into a rootfs and an image.
step "script tests"
check "cross/ scripts" cross/test-scripts.sh

step "done"
note "cross CI took $((SECONDS - started))s"
printf '%d passed, %d failed\n' "$passed" "$failed"
((failed == 0))
