#!/usr/bin/env bash
# Two perch binaries side by side under the same broker load: CPU time per
# message, and RSS. For build choices that change no code: the allocator of
# the static builds (musl's malloc against mimalloc), a profile setting, a
# toolchain.
#
#   bench/compare-binaries.sh A B [ROUNDS]
#
# Each round starts A, then B (the order alternates round by round), each on
# a fresh data dir, and runs perch-load against it: 10 publishers, QoS 1,
# 128-byte payloads at a fixed rate for a few seconds, one subscriber to all
# of it. A fixed rate (not "as fast as it goes") makes the CPU time per
# message comparable on a shared, noisy machine; the ratio B/A of each round
# is taken, and the median of the rounds is reported with the min and max.
# A round where either binary lost a message is reported as such.
# Prints one line per round and a summary; nothing is written elsewhere.
set -euo pipefail

(($# >= 2)) || { echo "usage: bench/compare-binaries.sh A B [ROUNDS]" >&2; exit 2; }
a="$1" b="$2" rounds="${3:-5}"
for bin in "$a" "$b"; do
  [ -x "$bin" ] || { echo "compare-binaries: $bin is not an executable" >&2; exit 2; }
done
rate="${COMPARE_RATE:-20000}" duration="${COMPARE_DURATION_S:-4}"
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
pid=""
trap '[ -z "$pid" ] || kill -KILL "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT

(cd "$root" && cargo build -q --release --locked -p perch-bench)
load="${CARGO_TARGET_DIR:-$root/target}/release/perch-load"

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# run BIN -> "cpu_us_per_msg rss_kb lost"
run() {
  local bin="$1" port log out t0 t1 rss
  port="$(free_port)"
  log="$work/perch.log"
  rm -rf "$work/data"
  "$bin" run --listen "127.0.0.1:$port" --data-dir "$work/data" --admin-listen 127.0.0.1:0 2>"$log" &
  pid=$!
  # A loaded machine can take seconds to start it: up to 30 s.
  for _ in $(seq 600); do
    grep -qs "perch ready" "$log" && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  grep -qs "perch ready" "$log" || { echo "compare-binaries: $bin did not start:" >&2; cat "$log" >&2; exit 1; }
  t0="$(cpu_ticks "$pid")"
  out="$("$load" --broker "127.0.0.1:$port" --publishers 10 --size 128 --qos 1 \
    --rate "$rate" --duration-s "$duration" --drain-timeout-s 5)"
  t1="$(cpu_ticks "$pid")"
  rss="$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status")"
  kill -TERM "$pid"
  wait "$pid" || true
  pid=""
  local received lost
  received="$(sed -n 's/.*"received":\([0-9]*\).*/\1/p' <<<"$out")"
  lost="$(sed -n 's/.*"lost":\([0-9]*\).*/\1/p' <<<"$out")"
  [ -n "$received" ] && [ "$received" -gt 0 ] || { echo "compare-binaries: no result from perch-load: $out" >&2; exit 1; }
  awk -v t=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" -v n="$received" -v r="$rss" -v l="${lost:-?}" \
    'BEGIN { printf "%.3f %d %s\n", t * 1e6 / hz / n, r, l }'
}

ratios=()
for ((i = 1; i <= rounds; i++)); do
  if ((i % 2)); then ra="$(run "$a")"; rb="$(run "$b")"; else rb="$(run "$b")"; ra="$(run "$a")"; fi
  read -r ca ma la <<<"$ra"
  read -r cb mb lb <<<"$rb"
  ratio="$(awk -v x="$ca" -v y="$cb" 'BEGIN { printf "%.3f", y / x }')"
  ratios+=("$ratio")
  echo "round $i: A ${ca} us CPU/msg, peak RSS ${ma} KiB, lost $la | B ${cb} us CPU/msg, peak RSS ${mb} KiB, lost $lb | B/A $ratio"
done
printf '%s\n' "${ratios[@]}" | sort -n | awk -v rate="$rate" '
  { v[NR] = $1 }
  END { printf "B/A CPU per message at %d msg/s QoS 1: median %s (min %s, max %s) over %d rounds\n",
        rate, v[int((NR + 1) / 2)], v[1], v[NR], NR }'
