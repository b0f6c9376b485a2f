#!/usr/bin/env bash
# Measures the idle resident memory of `perch run` with the default config:
# starts it on a free port with an empty data dir, connects one MQTT client
# round-trip, waits, reads VmRSS/VmHWM from /proc, stops it with SIGTERM.
#
#   cross/idle-rss.sh BINARY [RUNNER...]
#
#   cross/idle-rss.sh target/release/perch                  # native: the figure that matters
#   cross/idle-rss.sh target/cross/aarch64-unknown-linux-gnu/release/perch \
#       qemu-aarch64 -L /usr/aarch64-linux-gnu              # under qemu: includes qemu itself
#
# TOKIO_WORKER_THREADS=4 makes the runtime size itself like a 4-core board.
set -euo pipefail
# shellcheck source=cross/lib.sh
source "$(dirname "$0")/lib.sh"

(($# >= 1)) || die "usage: cross/idle-rss.sh BINARY [RUNNER...]"
binary="$1"
shift
[[ -x "$binary" ]] || die "$binary is not an executable"
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT

NO_COLOR=1 "$@" "$binary" run --listen 127.0.0.1:0 --data-dir "$dir/data" 2>"$dir/log" &
pid=$!
for _ in $(seq 600); do
    grep -q 'perch ready' "$dir/log" && break
    sleep 0.1
done
port="$(sed -n 's/.*mqtt:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p' "$dir/log" | head -n1)"
[[ -n "$port" ]] || {
    cat "$dir/log" >&2
    kill -KILL "$pid"
    die "perch did not get ready"
}
if command -v mosquitto_pub >/dev/null; then
    mosquitto_pub -h 127.0.0.1 -p "$port" -t perch/rss -m idle
fi
sleep 5
status="/proc/$pid/status"
printf '%s: %s, %s, %s\n' "$*${*:+ }$binary" \
    "$(grep VmRSS "$status" | tr -s ' \t' ' ')" \
    "$(grep VmHWM "$status" | tr -s ' \t' ' ')" \
    "$(grep Threads "$status" | tr -s ' \t' ' ')"
kill -TERM "$pid"
wait "$pid"
