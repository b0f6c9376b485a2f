#!/usr/bin/env bash
# Backlog drain vs ingest, end to end, in one run: the release `perch`
# binary captures `bench/#` into its buffer while its upstream (Mosquitto)
# is down, then Mosquitto starts and the backlog drains.
#
#   gateway/benches/drain.sh [RECORDS_PER_PHASE]     (default 100000)
#
# Phases, each timed until perch's `perch_buffer_records` gauge shows the
# records committed (polled every 10 ms by one watcher process):
#   1. ingest at QoS 0: `mosquitto_pub -l -q 0` (one line per record, in
#      chunks of 50,000 lines per connection);
#   2. ingest at QoS 1: `mosquitto_pub -l -q 1`;
#   3. drain: Mosquitto starts on the configured port; timed from its start
#      (reconnect backoff included) and from the first acknowledged record
#      until the buffer is empty; a `mosquitto_sub` on the upstream counts
#      the distinct record ids that arrived.
# Prints records/s of each and the ratios drain/ingest. Needs mosquitto and
# mosquitto-clients (test.sh installs them). PERCH_BIN overrides the binary;
# EXTRA_TOML is appended to [upstream.mqtt] (e.g. "max_records_per_message = 1").
set -euo pipefail
cd "$(dirname "$0")/../.."

N=${1:-100000}
if [ -z "${PERCH_BIN:-}" ]; then
  cargo build --release --quiet -p perch
  PERCH_BIN=target/release/perch
fi
for tool in mosquitto mosquitto_pub mosquitto_sub python3; do
  command -v "$tool" >/dev/null || { echo "drain.sh: $tool is missing (run ./test.sh once, or apt-get install mosquitto mosquitto-clients)" >&2; exit 2; }
done

work=$(mktemp -d /var/tmp/perch-drain.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
# Watches the buffer's record count in perch's metrics (an in-memory gauge,
# set at each commit), every 10 ms from one Python process, and prints the
# time (`date +%s.%N` clock) when it first reads a count below $2 (mode
# `below`) or equal to $2 (mode `at`); both print one line per mode asked,
# in order: `watch at N`, `watch below N at 0`. Not `perch buffer stats`: at
# 50 polls a second its COUNT/SUM over the whole table took about a core
# from what it measures; and not a shell loop either: its curl-less
# /dev/tcp, cat, awk and sleep forked four processes per poll, about a
# tenth of the two cores while the drain ran. The watcher is started before
# the timed phase begins, so its start-up is not timed. Gives up when the
# count has not changed for 10 s.
cat >"$work/watch.py" <<'PY'
import socket, sys, time
port, rules = int(sys.argv[1]), sys.argv[2:]
def records():
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
    data = bytearray()
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    for line in data.split(b"\n"):
        if line.startswith(b"perch_buffer_records "):
            return int(float(line.split()[1]))
    raise SystemExit("drain.sh: no perch_buffer_records in perch's metrics")
last, since = None, time.monotonic()
while rules:
    n = records()
    t = time.time()
    mode, want = rules[0], int(rules[1])
    if (mode == "below" and n < want) or (mode == "at" and n == want):
        print(f"{t:.6f}", flush=True)
        rules = rules[2:]
        continue
    if n != last:
        last, since = n, time.monotonic()
    elif time.monotonic() - since > 10:
        raise SystemExit(f"drain.sh: buffer stuck at {n} records, expected {mode} {want}")
    time.sleep(0.01)
PY
# Starts a watcher (see above) in the background; its output goes to $work/watch.out.
watch_start() {
  python3 "$work/watch.py" "$admin_port" "$@" >"$work/watch.out" &
  watcher=$!
}
# Waits for the watcher (not in a subshell: it must be this shell's
# child); shows perch's log when it failed. Its times are in
# $work/watch.out, one a line.
watch_wait() {
  if ! wait "$watcher"; then
    echo "drain.sh: perch's log:" >&2
    grep -v rumqttd "$work/perch.log" | tail -20 >&2
    return 1
  fi
}

up_port=$(free_port)
admin_port=$(free_port)
# Mosquitto keeps the counting subscriber's session (and what is queued for
# it) across its own restart, so the count does not depend on who connects
# first after the outage.
{
  echo "listener $up_port 127.0.0.1"
  echo "allow_anonymous true"
  echo "persistence true"
  echo "persistence_location $work/"
  echo "max_queued_messages 0"
  [ "$(id -u)" != 0 ] || echo "user root"
} >"$work/mosquitto.conf"
sub=(stdbuf -oL mosquitto_sub -h 127.0.0.1 -p "$up_port" -c -i drain-count -q 1 -t 'perch/bench/up/#')
start_mosquitto() {
  mosquitto -c "$work/mosquitto.conf" >>"$work/mosquitto.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 200); do
    (echo >"/dev/tcp/127.0.0.1/$up_port") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "drain.sh: mosquitto did not start" >&2
  return 1
}
start_mosquitto
"${sub[@]}" -W 1 >/dev/null 2>&1 || true # creates the persistent session
kill "${pids[-1]}"
wait "${pids[-1]}" 2>/dev/null || true
cat >"$work/perch.toml" <<EOF
[gateway]
id = "bench"
[[broker.listeners]]
name = "local"
listen = "127.0.0.1:0"
allow_anonymous = true
# The broker keeps 64 MiB per filter instead of 4: a capture that falls
# behind a burst by more than this loses messages (see the README).
[broker]
max_segment_count = 64
# 64 MiB per filter: the budget is shared by max_filters filters.
max_filters = 16
max_message_log_bytes = 1073741824
[buffer]
max_bytes = 1073741824
max_pending_records = 1000000
[upstream]
forward_topics = ["bench/#"]
backoff_initial_ms = 100
backoff_max_ms = 1000
[upstream.mqtt]
host = "127.0.0.1"
port = $up_port
${EXTRA_TOML:-}
EOF
"$PERCH_BIN" run --config "$work/perch.toml" --data-dir "$work/data" --admin-listen "127.0.0.1:$admin_port" 2>"$work/perch.log" &
pids+=($!)
for _ in $(seq 200); do grep -q "perch ready" "$work/perch.log" && break; sleep 0.05; done
port=$(sed -n 's/.*listening on mqtt:\/\/127.0.0.1:\([0-9]*\).*/\1/p' "$work/perch.log" | head -1)
[ -n "$port" ] || { echo "drain.sh: perch did not start:" >&2; cat "$work/perch.log" >&2; exit 1; }

python3 - "$N" >"$work/lines" <<'EOF'
import sys
for i in range(int(sys.argv[1])):
    print('{"device":"t%d","temperature":%d.5,"humidity":40.2,"n":%d}' % (i % 16, i % 40, i))
EOF

# mosquitto_pub 2.0's line mode drops what it has queued once more than
# 65,535 messages are in its queue (it disconnects when the PUBACK for the
# packet id of the last line arrives, and ids wrap; see
# docs/store-and-forward.md), so the lines go in chunks of 50,000, one
# connection each, back to back.
split -l 50000 -d -a 4 "$work/lines" "$work/chunk."
ingest() { # qos, records expected in the buffer afterwards
  local t0 t1 chunk
  watch_start at "$2"
  sleep 0.5 # the watcher is up and polling
  t0=$(now)
  for chunk in "$work"/chunk.*; do
    mosquitto_pub -h 127.0.0.1 -p "$port" -t bench/readings -q "$1" -l <"$chunk"
  done
  watch_wait
  t1=$(sed -n 1p "$work/watch.out")
  python3 -c "print(f'{$N / ($t1 - $t0):.0f}')"
}
rate_q0=$(ingest 0 "$N")
rate_q1=$(ingest 1 $((2 * N)))
total=$((2 * N))

watch_start below "$total" at 0
sleep 0.5 # the watcher is up and polling
t_up=$(now)
start_mosquitto
"${sub[@]}" >"$work/received" 2>/dev/null & # its own pid, so cleanup stops it
pids+=($!)
watch_wait
t_first=$(sed -n 1p "$work/watch.out")
t_empty=$(sed -n 2p "$work/watch.out")
sleep 1 # the last PUBLISHes reach the subscriber
arrived=$( (grep -o '"id":"bench-[0-9]*"' "$work/received" || true) | sort -u | wc -l)

python3 - <<EOF
q0, q1, total = $rate_q0, $rate_q1, $total
from_up = total / ($t_empty - $t_up)
from_first = total / ($t_empty - $t_first)
print(f"machine: $(nproc) cores, $(uname -m), load $(cut -d' ' -f1-3 /proc/loadavg)")
print(f"records per ingest phase: $N; backlog drained: {total}; distinct ids received upstream: $arrived")
print(f"ingest QoS 0 (mosquitto_pub -l -q 0): {q0:>9,.0f} records/s")
print(f"ingest QoS 1 (mosquitto_pub -l -q 1): {q1:>9,.0f} records/s")
print(f"drain from first ack to empty:        {from_first:>9,.0f} records/s")
print(f"drain from upstream start (backoff):  {from_up:>9,.0f} records/s")
print(f"ratio drain/ingest QoS 1: {from_first / q1:.1f}x   drain/ingest QoS 0: {from_first / q0:.1f}x")
EOF
[ "$arrived" = "$total" ] || { echo "drain.sh: $arrived of $total records arrived upstream" >&2; exit 1; }
