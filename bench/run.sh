#!/usr/bin/env bash
# perch against what users would run instead, side by side in one run.
#
#   bench/run.sh            the suite: 3 runs of each scenario (~16 min on a
#                           busy 2-core VM)
#   bench/run.sh --smoke    one short step of each piece (~1.5 min): checks the
#                           pieces work, writes no report into bench/results
#   bench/run.sh --runs N   N runs instead of 3
#   bench/run.sh --only 7   only the scenarios listed (repeat --only, or
#                           "--only '6 7'"); with --perch-only it installs
#                           no peer; the report goes to the work dir, not
#                           bench/results
#   PERCH_BENCH_PERCH=path  runs that perch binary instead of building one
#   bench/run.sh --smoke --perch-only
#                           the smoke run of perch's own pieces, without the
#                           peers under test (Mosquitto as a broker, the
#                           Python script, Node-RED): what .ci/run runs, so
#                           CI neither installs Node-RED nor compiles its
#                           sqlite3. Mosquitto still plays the upstream.
#
# Scenarios (bench/README.md says what each measures and how):
#   0  the load generator's own ceiling (publishing into a null sink)
#   1  broker only: fan-in through perch's broker vs Mosquitto
#   2  the edge job: sensors -> window-sample function -> SQLite -> upstream
#      Mosquitto, vs Mosquitto + bench/peers/edge_job.py (paho-mqtt, sqlite3)
#      and vs Node-RED (bench/peers/node-red/flow.json) with Mosquitto
#   3  cold start: deploy -> first output upstream, for the same three
#   4  footprint: idle and loaded RSS and CPU (taken in scenario 2's steps)
#   5  scaling: 10/100/1000 connections (perch vs Mosquitto), and 1/10/100
#      deployed copies of the edge job's function (perch)
#   6  publish -> PUBACK at QoS 1 on a forwarded topic (perch acknowledges
#      once the record is committed) vs Mosquitto (from memory); with
#      PERCH_BENCH_BEFORE=<an older perch binary> that one runs the same
#      steps beside it ("perch-before")
#   7  live p99 latency while a backlog drains at its cap (live_first) vs
#      with no backlog, side by side (and vs oldest_first in full runs)
#
# Installs what it needs when missing: the Debian package mosquitto
# (apt-get), paho-mqtt into a venv under the work dir (pip), node-red and
# node-red-node-sqlite (npm) into $PERCH_BENCH_NODE_RED (default
# ~/.cache/perch-bench/node-red: its sqlite3 builds from source, once per
# machine), the release builds of perch and perch-load, the example
# functions. Everything runs on 127.0.0.1, on free ports, and every process
# it starts is stopped on exit.
# Raw results: <work>/results.jsonl (one perch-load line per step, with the
# scenario, system, run and RSS added); the report: bench/results/<date>.md,
# with the raw lines beside it (<date>.jsonl) and SVG plots (<date>-*.svg).
set -euo pipefail

bench="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$bench")"
work="${PERCH_BENCH_WORK:-$root/target/bench-work}"
runs=3
smoke=0
peers=1
only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) smoke=1; runs=1 ;;
    --perch-only) peers=0 ;;
    --only)
      [ $# -ge 2 ] && [[ "$2" =~ ^[0-7\ ]+$ ]] || {
        echo "run.sh: --only needs scenario numbers (0-7), e.g. --only 7" >&2; exit 2; }
      only="$only $2"; shift ;;
    --runs)
      [ $# -ge 2 ] && [[ "$2" =~ ^[1-9][0-9]*$ ]] || {
        echo "run.sh: --runs needs a positive number, e.g. --runs 5" >&2; exit 2; }
      runs="$2"; shift ;;
    -h|--help) sed -n '2,44p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument '$1'; use --smoke, --perch-only, --runs N or --help" >&2; exit 2 ;;
  esac
  shift
done
if [ "$peers" = 0 ] && [ "$smoke" = 0 ] && [ -z "$only" ]; then
  echo "run.sh: --perch-only is for the smoke run (--smoke --perch-only); the report compares perch with its peers" >&2
  exit 2
fi

if [ "$smoke" = 1 ]; then
  # ~10 s of load in all: one short step per piece.
  s0_duration=1; s1_duration=1; s2_duration=2
  s1_rates=(5000); s1_latency_rate=5000; s2_rates=(1000); s2_latency_rate=1000
  s1_max=1
else
  s0_duration=2; s1_duration=2; s2_duration=3
  s1_rates=(5000 10000 20000 40000 80000 160000 320000 640000); s1_latency_rate=10000
  s2_rates=(1000 2000 5000 10000 20000 40000 80000 160000); s2_latency_rate=1000
  s1_max=1
fi
if [ "$smoke" = 1 ]; then
  idle_s=1; s5_conns=(10 100); s5_fns=(1 10); s5_duration=1
else
  idle_s=3; s5_conns=(10 100 1000); s5_fns=(1 10 100); s5_duration=3
fi
s5_rate=10000     # offered msgs/s, whatever the number of connections
if [ "$smoke" = 1 ]; then s6_rates=(1000); s6_duration=1; else s6_rates=(1000 10000); s6_duration=3; fi
# Scenario 7: a backlog of s7_fill_rate x s7_fill_s records drains at
# s7_cap records/s, longer than the live load (s7_rate for s7_duration)
# is measured; fifo's live records wait behind it (s7_drain_timeout).
if [ "$smoke" = 1 ]; then
  s7_fill_rate=4000; s7_fill_s=1; s7_cap=2000; s7_rate=200; s7_duration=1; s7_rounds=1
else
  s7_fill_rate=4000; s7_fill_s=5; s7_cap=2000; s7_rate=200; s7_duration=4; s7_rounds=3
fi
s7_drain_timeout=$((s7_fill_rate * s7_fill_s / s7_cap + 10))
perch_before="${PERCH_BENCH_BEFORE:-}"
if [ -n "$perch_before" ] && [ ! -x "$perch_before" ]; then
  echo "run.sh: PERCH_BENCH_BEFORE=$perch_before is not an executable perch binary" >&2; exit 2
fi
s5_fn_rate=1000   # offered events/s, whatever the number of functions
publishers=10
size=128

log() { echo "run.sh: $*" >&2; }

# --- every process we start is stopped on exit -----------------------------
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

stop() { # stop PID...: SIGTERM, wait, forget
  local p q keep
  for p in "$@"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "$@"; do wait "$p" 2>/dev/null || true; done
  for p in "$@"; do
    keep=()
    for q in "${pids[@]}"; do [ "$q" = "$p" ] || keep+=("$q"); done
    pids=("${keep[@]+"${keep[@]}"}")
  done
}

# --- what the suite needs ---------------------------------------------------
mkdir -p "$work"
if ! command -v mosquitto >/dev/null; then
  log "installing the Debian package mosquitto"
  if [ "$(id -u)" = 0 ]; then apt-get update -q >&2 && apt-get install -y -q mosquitto >&2
  else sudo apt-get update -q >&2 && sudo apt-get install -y -q mosquitto >&2; fi
fi
mosquitto_bin="$(command -v mosquitto || echo /usr/sbin/mosquitto)"
py="$work/venv/bin/python"
if ! "$py" -c 'import paho.mqtt' 2>/dev/null && ! python3 -c 'import ensurepip' 2>/dev/null; then
  # Debian ships `python3 -m venv` in a package of its own.
  log "installing the Debian package python3-venv"
  if [ "$(id -u)" = 0 ]; then apt-get install -y -q python3-venv >&2
  else sudo apt-get install -y -q python3-venv >&2; fi
fi
if ! "$py" -c 'import paho.mqtt' 2>/dev/null; then
  log "installing paho-mqtt into $work/venv"
  python3 -m venv "$work/venv"
  "$work/venv/bin/pip" install -q paho-mqtt >&2
fi
# Node-RED: npm packages with a native sqlite3 (no prebuilt binary can be
# fetched here, so node-gyp compiles SQLite: minutes, hence the cache outside
# the work dir).
nr_dir="${PERCH_BENCH_NODE_RED:-$HOME/.cache/perch-bench/node-red}"
node_red=1 # 0: Node-RED is left out (no node/npm here, or --perch-only)
if [ "$peers" = 0 ]; then
  node_red=0
elif ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  log "node and npm are missing, so Node-RED (a peer of scenarios 2 and 3) is left out;" \
    "install Node.js >= 18 with npm (e.g. apt-get install nodejs npm) to include it"
  node_red=0
elif ! (cd "$nr_dir" 2>/dev/null && node -e 'require("node-red/package.json"); require("sqlite3")') 2>/dev/null; then
  log "installing node-red and node-red-node-sqlite into $nr_dir (npm; sqlite3 compiles from source)"
  mkdir -p "$nr_dir"
  (cd "$nr_dir" && npm install --no-audit --no-fund --loglevel=error \
    node-red@4 node-red-node-sqlite@1 >&2) || {
    log "npm install of node-red and node-red-node-sqlite failed (output above): check that the npm" \
      "registry is reachable and that python3, make and g++ are installed (sqlite3 builds with node-gyp)"
    exit 1; }
  (cd "$nr_dir" && node -e 'require("sqlite3")') || {
    log "sqlite3 (node-red-node-sqlite's native module) installed but does not load (error above):" \
      "remove $nr_dir and re-run to rebuild it"
    exit 1; }
fi
s2_systems=(perch python)
broker_systems=(perch mosquitto)
if [ "$peers" = 0 ]; then s2_systems=(perch); broker_systems=(perch); fi
if [ "$node_red" = 1 ]; then s2_systems+=(node-red); fi
log "building perch and perch-load (release) and the example functions"
PERCH_EXAMPLES_OUT="$work/functions" "$root/sdk/build-examples.sh" >/dev/null
target_dir="${CARGO_TARGET_DIR:-$root/target}"
load="$target_dir/release/perch-load"
if [ -n "${PERCH_BENCH_PERCH:-}" ]; then
  # A perch binary built already (CI passes the static x86-64 release
  # binary that cross/ci.sh built and tested, so nothing is built twice).
  [ -x "$PERCH_BENCH_PERCH" ] || { log "PERCH_BENCH_PERCH=$PERCH_BENCH_PERCH is not an executable"; exit 2; }
  perch="$PERCH_BENCH_PERCH"
  (cd "$root" && cargo build -q --release --locked -p perch-bench)
else
  perch="$target_dir/release/perch"
  (cd "$root" && cargo build -q --release --locked -p perch -p perch-bench)
fi
log "perch under test: $perch"

# --- helpers ----------------------------------------------------------------
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_port() { # wait_port PORT PID: until something listens, or the process died
  local i
  for i in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    kill -0 "$2" 2>/dev/null || { log "process $2 died before listening on $1"; return 1; }
    sleep 0.05
  done
  log "nothing listens on port $1 after 10 s"; return 1
}
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
hwm_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
ticks_ms() { echo $(( $1 * 1000 / $(getconf CLK_TCK) )); }

start_mosquitto() { # start_mosquitto PORT -> $started
  local conf="$work/mosquitto-$1.conf"
  printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nlog_type error\n' \
    "$1" >"$conf"
  "$mosquitto_bin" -c "$conf" 2>>"$work/mosquitto.log" &
  started=$!; pids+=("$started")
  wait_port "$1" "$started"
}
start_perch() { # start_perch PORT CONFIG [BINARY] -> $started, once it logged "perch ready"
  local data="$work/perch-data-$1" plog="$work/perch-$1.log" i
  rm -rf "$data"
  "${3:-$perch}" run --config "$2" --listen "127.0.0.1:$1" --data-dir "$data" --admin-listen 127.0.0.1:0 2>"$plog" &
  started=$!; pids+=("$started")
  for i in $(seq 1 200); do
    grep -qs "perch ready" "$plog" && return 0
    kill -0 "$started" 2>/dev/null || { log "perch died at start: see $plog"; return 1; }
    sleep 0.05
  done
  log "perch not ready after 10 s: see $plog"; return 1
}

start_node_red() { # start_node_red PORT FLOWFILE LOCAL_PORT UPSTREAM_PORT DB -> $started, once its admin API answers
  local udir="$work/node-red-user-$1" i
  rm -rf "$udir" "$5"*
  mkdir -p "$udir"
  cp "$2" "$udir/flows.json"
  NR_LOCAL_PORT="$3" NR_UPSTREAM_PORT="$4" NR_DB="$5" node "$nr_dir/node_modules/node-red/red.js" \
    --settings "$bench/peers/node-red/settings.js" --userDir "$udir" --port "$1" \
    "$udir/flows.json" >"$work/node-red-$1.log" 2>&1 &
  started=$!; pids+=("$started")
  for i in $(seq 1 1200); do # Node-RED loads its nodes slowly on a busy machine (14 s seen at load 11): 60 s
    curl -sf -o /dev/null "http://127.0.0.1:$1/flows" && return 0
    kill -0 "$started" 2>/dev/null || { log "Node-RED died at start: see $work/node-red-$1.log"; return 1; }
    sleep 0.05
  done
  log "Node-RED's admin API not up after 60 s: see $work/node-red-$1.log"; return 1
}

results="$work/results.jsonl"
: >"$results"
record() { # record JSON_LINE key=value...: append the line with extra fields
  local line="${1%\}}" kv
  shift
  for kv in "$@"; do line+=",\"${kv%%=*}\":\"${kv#*=}\""; done
  echo "$line}" >>"$results"
  echo "$line}" >&2
}
field() { # field JSON_LINE NAME: a number field of a result line
  sed -n "s/.*\"$2\":\([0-9.]*\).*/\1/p" <<<"$1"
}

smoke_check() { # in --smoke, a step that lost messages or failed fails the run
  if [ "$smoke" = 1 ]; then
    log "smoke: $1 failed or lost messages (last result line above; logs in $work)"
    exit 1
  fi
}

# --- scenario 0: the generator's own ceiling --------------------------------
s0() {
  local out
  out="$("$load" --null-sink --publishers "$publishers" --size "$size" \
    --duration-s "$s0_duration" --label null-sink)"
  record "$out" scenario=0 system=null-sink run="$1" step=max
}

# --- scenario 1: broker only ------------------------------------------------
perch_broker_conf="$work/perch-broker.toml"
printf '[gateway]\nid = "bench"\n' >"$perch_broker_conf"

s1_step() { # s1_step SYSTEM RUN RATE -> 0 if nothing was lost
  local system="$1" run="$2" rate="$3" port out pid idle peak lost
  port="$(free_port)"
  if [ "$system" = perch ]; then start_perch "$port" "$perch_broker_conf"
  else start_mosquitto "$port"; fi
  pid="$started"
  idle="$(rss_kb "$pid")"
  out="$("$load" --broker "127.0.0.1:$port" --publishers "$publishers" --size "$size" \
    --rate "$rate" --duration-s "$s1_duration" --drain-timeout-s 5 \
    --label "s1-$system-$rate")"
  peak="$(hwm_kb "$pid")"
  stop "$pid"
  record "$out" scenario=1 system="$system" run="$run" step="$rate" \
    rss_idle_kb="$idle" rss_peak_kb="$peak"
  lost="$(field "$out" lost)"
  [ "$lost" = 0 ]
}

s1() {
  local system rate
  for system in "${broker_systems[@]}"; do
    if [ "$s1_max" = 1 ]; then s1_step "$system" "$1" 0 || true; fi
    for rate in "${s1_rates[@]}"; do
      s1_step "$system" "$1" "$rate" || { smoke_check "s1 $system at $rate msgs/s"; break; }
    done
  done
}

# --- scenario 2: the edge job -----------------------------------------------
s2_step() { # s2_step SYSTEM RUN RATE -> 0 if nothing was lost
  local system="$1" run="$2" rate="$3" uport lport out pids_measured=() conf idle peak
  local processed=0 dropped=0 listing sent lost p ticks0=0 ticks1=0 idle_cpu_ms=""
  uport="$(free_port)"; lport="$(free_port)"
  start_mosquitto "$uport"
  local upstream_pid="$started"
  if [ "$system" = perch ]; then
    conf="$work/perch-edge.toml"
    edge_conf "$uport" "$conf"
    start_perch "$lport" "$conf"
    pids_measured=("$started")
    "$perch" fn deploy "$work/functions/window-sample.wasm" \
      --manifest "$work/functions/window-sample.toml" \
      --broker "127.0.0.1:$lport" --gateway bench >/dev/null ||
      { log "deploying window-sample failed (log: $work/perch-$lport.log)"; return 1; }
  elif [ "$system" = node-red ]; then
    start_mosquitto "$lport"
    pids_measured=("$started")
    start_node_red "$(free_port)" "$bench/peers/node-red/flow.json" "$lport" "$uport" \
      "$work/node-red-$lport.db" || return 1
    pids_measured+=("$started")
    "$py" "$bench/peers/node-red/probe.py" --port "$lport" --timeout-s 30 >/dev/null ||
      { log "the Node-RED flow never answered (log: $work/node-red-*.log)"; return 1; }
  else
    start_mosquitto "$lport"
    pids_measured=("$started")
    "$py" "$bench/peers/edge_job.py" --local-port "$lport" --upstream-port "$uport" \
      --db "$work/edge_job-$lport.db" >"$work/edge_job.out" 2>>"$work/edge_job.log" &
    started=$!; pids+=("$started"); pids_measured+=("$started")
    local i
    for i in $(seq 1 200); do
      grep -qs ready "$work/edge_job.out" && break
      kill -0 "$started" 2>/dev/null || { log "edge_job.py died: see $work/edge_job.log"; return 1; }
      sleep 0.05
    done
  fi
  if [ "$rate" = "$s2_latency_rate" ]; then
    # Scenario 4's idle figure: CPU over a quiet spell, the job deployed.
    for p in "${pids_measured[@]}"; do ticks0=$((ticks0 + $(cpu_ticks "$p"))); done
    sleep "$idle_s"
    for p in "${pids_measured[@]}"; do ticks1=$((ticks1 + $(cpu_ticks "$p"))); done
    idle_cpu_ms="$(ticks_ms $((ticks1 - ticks0)))"
    ticks0=0; ticks1=0
  fi
  idle=0; for p in "${pids_measured[@]}"; do idle=$((idle + $(rss_kb "$p"))); ticks0=$((ticks0 + $(cpu_ticks "$p"))); done
  out="$("$load" --broker "127.0.0.1:$lport" --sub-broker "127.0.0.1:$uport" \
    --sub-topic up/samples --expect-every 100 --publishers "$publishers" --size "$size" \
    --rate "$rate" --duration-s "$s2_duration" --drain-timeout-s 10 \
    --label "s2-$system-$rate")"
  sent="$(field "$out" sent)"
  peak=0; for p in "${pids_measured[@]}"; do peak=$((peak + $(hwm_kb "$p"))); ticks1=$((ticks1 + $(cpu_ticks "$p"))); done
  if [ "$system" = perch ]; then
    # Every event sent must have been through the function (none dropped).
    for i in $(seq 1 50); do
      listing="$("$perch" fn list --json --broker "127.0.0.1:$lport" --gateway bench 2>/dev/null || true)"
      processed="$(sed -n 's/.*"invocations": *\([0-9]*\).*/\1/p' <<<"$listing" | head -1)"
      dropped="$(sed -n 's/.*"dropped": *\([0-9]*\).*/\1/p' <<<"$listing" | head -1)"
      [ "${processed:-0}" -ge "$sent" ] && break
      sleep 0.1
    done
    stop "${pids_measured[@]}"
  elif [ "$system" = node-red ]; then
    listing="$("$py" "$bench/peers/node-red/probe.py" --port "$lport" --timeout-s 30 || true)"
    processed="$(sed -n 's/.*"processed": *\([0-9]*\).*/\1/p' <<<"$listing")"
    stop "${pids_measured[1]}" "${pids_measured[0]}"
    rm -f "$work/node-red-$lport.db"*
  else
    stop "${pids_measured[1]}" "${pids_measured[0]}"
    processed="$(sed -n 's/.*"processed": *\([0-9]*\).*/\1/p' "$work/edge_job.out" | tail -1)"
    rm -f "$work/edge_job-$lport.db"*
  fi
  stop "$upstream_pid"
  record "$out" scenario=2 system="$system" run="$run" step="$rate" \
    processed="${processed:-0}" dropped="${dropped:-0}" rss_idle_kb="$idle" rss_peak_kb="$peak" \
    cpu_ms="$(ticks_ms $((ticks1 - ticks0)))" idle_cpu_ms="$idle_cpu_ms" idle_s="$idle_s"
  lost="$(field "$out" lost)"
  [ "$lost" = 0 ] && [ "${processed:-0}" -ge "$sent" ]
}

s2() {
  local system rate
  for system in "${s2_systems[@]}"; do
    for rate in "${s2_rates[@]}"; do
      s2_step "$system" "$1" "$rate" || { smoke_check "s2 $system at $rate events/s"; break; }
    done
  done
}

# --- scenario 3: cold start -------------------------------------------------
edge_conf() { # edge_conf UPSTREAM_PORT FILE [MAX_FUNCTIONS]: perch's config for the edge job
  printf '[gateway]\nid = "bench"\n\n[functions]\nmax_functions = %s\n\n[upstream.mqtt]\nhost = "127.0.0.1"\nport = %s\nclient_id = "perch-bench"\ntopic_prefix = "up"\n# One sample per upstream message, as the peers send them (perch-load\n# counts messages).\nmax_records_per_message = 1\n' \
    "${3:-64}" "$1" >"$2"
}

s3_step() { # s3_step SYSTEM RUN: deploy -> first sample upstream
  local system="$1" run="$2" uport lport nrport out action=() up lo=() sub=()
  uport="$(free_port)"; lport="$(free_port)"
  start_mosquitto "$uport"; up="$started"
  case "$system" in
    perch)
      edge_conf "$uport" "$work/perch-cold.toml"
      start_perch "$lport" "$work/perch-cold.toml"; lo=("$started")
      action=("$perch" fn deploy "$work/functions/window-sample.wasm"
        --manifest "$work/functions/window-sample.toml" --broker "127.0.0.1:$lport" --gateway bench) ;;
    perch-local) # threshold-alert publishes its alert on the local broker: no store, no upstream
      edge_conf "$uport" "$work/perch-cold.toml"
      start_perch "$lport" "$work/perch-cold.toml"; lo=("$started")
      sub=(--sub-port "$lport" --sub-topic 'alerts/#')
      action=("$perch" fn deploy "$work/functions/threshold-alert.wasm"
        --manifest "$work/functions/threshold-alert.toml" --broker "127.0.0.1:$lport" --gateway bench) ;;
    python)
      start_mosquitto "$lport"; lo=("$started")
      rm -f "$work/cold-$lport.db"*
      action=("$py" "$bench/peers/edge_job.py" --local-port "$lport" --upstream-port "$uport"
        --db "$work/cold-$lport.db") ;;
    node-red)
      start_mosquitto "$lport"; lo=("$started")
      echo '[]' >"$work/empty-flow.json"
      nrport="$(free_port)"
      start_node_red "$nrport" "$work/empty-flow.json" "$lport" "$uport" "$work/cold-$lport.db" || return 1
      lo+=("$started")
      action=(curl -sf -o /dev/null -X POST -H 'Content-Type: application/json'
        -H 'Node-RED-Deployment-Type: full' --data-binary "@$bench/peers/node-red/flow.json"
        "http://127.0.0.1:$nrport/flows") ;;
  esac
  out="$("$py" "$bench/peers/coldstart.py" --local-port "$lport" --upstream-port "$uport" \
    "${sub[@]+"${sub[@]}"}" --label "s3-$system" -- "${action[@]}" 2>>"$work/coldstart.log")" || { stop "${lo[@]}" "$up"; return 1; }
  stop "${lo[@]}" "$up"
  rm -f "$work/cold-$lport.db"*
  record "$out" scenario=3 system="$system" run="$run" step=deploy
}

s3() {
  local system
  for system in perch-local "${s2_systems[@]}"; do
    s3_step "$system" "$1" || smoke_check "s3 cold start of $system (log: $work/coldstart.log)"
  done
}

# --- scenario 5: scaling ----------------------------------------------------
s5_conns_step() { # s5_conns_step SYSTEM RUN CONNECTIONS
  local system="$1" run="$2" conns="$3" port out pid idle peak ticks0 ticks1
  port="$(free_port)"
  if [ "$system" = perch ]; then start_perch "$port" "$perch_broker_conf"
  else start_mosquitto "$port"; fi
  pid="$started"
  idle="$(rss_kb "$pid")"; ticks0="$(cpu_ticks "$pid")"
  out="$("$load" --broker "127.0.0.1:$port" --publishers "$conns" --size "$size" \
    --rate "$s5_rate" --duration-s "$s5_duration" --drain-timeout-s 5 \
    --label "s5-$system-$conns")" || { stop "$pid"; return 1; }
  peak="$(hwm_kb "$pid")"; ticks1="$(cpu_ticks "$pid")"
  stop "$pid"
  record "$out" scenario=5 system="$system" run="$run" step="conns-$conns" \
    rss_idle_kb="$idle" rss_peak_kb="$peak" cpu_ms="$(ticks_ms $((ticks1 - ticks0)))"
  [ "$(field "$out" lost)" = 0 ]
}

s5_fns_step() { # s5_fns_step RUN COPIES: perch with COPIES copies of window-sample deployed
  local run="$1" copies="$2" uport lport out pid idle peak ticks0 ticks1 i m listing processed=0
  local sent want dropped=0 full=0 stopped=0
  uport="$(free_port)"; lport="$(free_port)"
  start_mosquitto "$uport"; local up="$started"
  edge_conf "$uport" "$work/perch-fns.toml" 128
  start_perch "$lport" "$work/perch-fns.toml"; pid="$started"
  mkdir -p "$work/copies"
  for i in $(seq 1 "$copies"); do
    m="$work/copies/window-sample-$i.toml"
    # Copy 1 forwards 1 in 100 as usual; the others forward only seq 0, so
    # the upstream sees the same samples (plus copies of seq 0).
    sed -e "s/^name = .*/name = \"window-sample-$i\"/" \
      -e "s/^forward_every = .*/forward_every = $([ "$i" = 1 ] && echo 100 || echo 1000000000)/" \
      "$work/functions/window-sample.toml" >"$m"
    "$perch" fn deploy "$work/functions/window-sample.wasm" --manifest "$m" \
      --broker "127.0.0.1:$lport" --gateway bench >/dev/null 2>>"$work/deploy.log" ||
      { log "deploying copy $i of window-sample failed (log: $work/perch-$lport.log)"; stop "$pid" "$up"; return 1; }
  done
  idle="$(rss_kb "$pid")"; ticks0="$(cpu_ticks "$pid")"
  out="$("$load" --broker "127.0.0.1:$lport" --sub-broker "127.0.0.1:$uport" \
    --sub-topic up/samples --expect-every 100 --publishers "$publishers" --size "$size" \
    --rate "$s5_fn_rate" --duration-s "$s5_duration" --drain-timeout-s 10 \
    --label "s5-fns-$copies")" || { stop "$pid" "$up"; return 1; }
  sent="$(field "$out" sent)"; want=$((sent * copies))
  for i in $(seq 1 100); do # every copy saw every event: invocations summed over the copies
    listing="$("$perch" fn list --json --broker "127.0.0.1:$lport" --gateway bench 2>/dev/null || true)"
    processed="$(sed -n 's/.*"invocations": *\([0-9]*\).*/\1/p' <<<"$listing" | awk '{s += $1} END {print s + 0}')"
    dropped="$(sed -n 's/.*"dropped": *\([0-9]*\).*/\1/p' <<<"$listing" | awk '{s += $1} END {print s + 0}')"
    # emit()/forward() refused for a full output queue, and copies the circuit breaker stopped
    full="$(sed -n 's/.*"full": *\([0-9]*\).*/\1/p' <<<"$listing" | awk '{s += $1} END {print s + 0}')"
    stopped="$(grep -c '"state": *"stopped"' <<<"$listing" || true)"
    [ "$processed" -ge "$want" ] && break
    sleep 0.1
  done
  peak="$(hwm_kb "$pid")"; ticks1="$(cpu_ticks "$pid")"
  stop "$pid" "$up"
  record "$out" scenario=5 system=perch run="$run" step="fns-$copies" functions="$copies" \
    processed="$processed" dropped="$dropped" full="$full" stopped="$stopped" rss_idle_kb="$idle" rss_peak_kb="$peak" cpu_ms="$(ticks_ms $((ticks1 - ticks0)))"
  [ "$(field "$out" lost)" = 0 ] && [ "$processed" -ge "$want" ]
}

s5() {
  local system n
  for n in "${s5_conns[@]}"; do
    for system in "${broker_systems[@]}"; do
      s5_conns_step "$system" "$1" "$n" || smoke_check "s5 $system with $n connections"
    done
  done
  for n in "${s5_fns[@]}"; do
    s5_fns_step "$1" "$n" || smoke_check "s5 perch with $n functions"
  done
}

# --- scenario 6: publish -> PUBACK, QoS 1, on a forwarded topic -------------
s6_step() { # s6_step SYSTEM RUN RATE -> 0 if nothing was lost
  local system="$1" run="$2" rate="$3" uport lport out pids_step=()
  lport="$(free_port)"
  if [ "$system" = mosquitto ]; then
    start_mosquitto "$lport"; pids_step=("$started")
  else
    uport="$(free_port)"
    start_mosquitto "$uport"; pids_step=("$started")
    printf '[gateway]\nid = "bench"\n\n[upstream]\nforward_topics = ["sensors/#"]\n\n[upstream.mqtt]\nhost = "127.0.0.1"\nport = %s\nclient_id = "perch-bench-s6"\n' \
      "$uport" >"$work/perch-s6.toml"
    if [ "$system" = perch-before ]; then start_perch "$lport" "$work/perch-s6.toml" "$perch_before"
    else start_perch "$lport" "$work/perch-s6.toml"; fi
    pids_step=("$started" "${pids_step[@]}")
  fi
  out="$("$load" --broker "127.0.0.1:$lport" --publishers "$publishers" --size "$size" --qos 1 \
    --rate "$rate" --duration-s "$s6_duration" --drain-timeout-s 5 \
    --label "s6-$system-$rate")" || { stop "${pids_step[@]}"; return 1; }
  stop "${pids_step[@]}"
  record "$out" scenario=6 system="$system" run="$run" step="$rate"
  [ "$(field "$out" lost)" = 0 ]
}

s6() {
  local system rate systems=(perch)
  if [ -n "$perch_before" ]; then systems+=(perch-before); fi
  systems+=(mosquitto)
  for rate in "${s6_rates[@]}"; do
    for system in "${systems[@]}"; do
      s6_step "$system" "$1" "$rate" || smoke_check "s6 $system at $rate msgs/s"
    done
  done
}

# --- scenario 7: live latency while a backlog drains -------------------------
# perch with `order = "live_first"` and a backlog cap. "idle": the upstream
# is there from the start, no backlog; "drain": perch first buffers
# s7_fill_rate x s7_fill_s records (topics backlog/...) while its upstream Mosquitto is
# not running yet, then the upstream starts and the live load (sensors/...)
# is measured while the backlog drains at its cap; "fifo" (full runs
# only): the same with `order = "oldest_first"`, for comparison. Live
# records travel one per message so the subscriber stamps each.
s7_step() { # s7_step RUN MODE -> 0 if nothing was lost
  local run="$1" mode="$2" lport uport out fill backlog=0 order=live_first pids_step=() i
  lport="$(free_port)"; uport="$(free_port)"
  [ "$mode" = fifo ] && order=oldest_first
  printf '[gateway]\nid = "bench"\n\n[upstream]\nforward_topics = ["sensors/#", "backlog/#"]\nbackoff_initial_ms = 50\nbackoff_max_ms = 100\n\n[upstream.mqtt]\nhost = "127.0.0.1"\nport = %s\nclient_id = "perch-bench-s7"\nmax_records_per_message = 1\n\n[upstream.mqtt.drain]\norder = "%s"\nbacklog_records_per_s = %s\n' \
    "$uport" "$order" "$s7_cap" >"$work/perch-s7.toml"
  if [ "$mode" = idle ]; then start_mosquitto "$uport"; pids_step=("$started"); fi
  start_perch "$lport" "$work/perch-s7.toml"; pids_step=("$started" "${pids_step[@]+"${pids_step[@]}"}")
  if [ "$mode" != idle ]; then
    fill="$("$load" --broker "127.0.0.1:$lport" --publishers 1 --size "$size" --qos 1 \
      --rate "$s7_fill_rate" --duration-s "$s7_fill_s" --topic-prefix backlog --no-subscriber \
      --label "s7-fill")" || { stop "${pids_step[@]}"; return 1; }
    backlog="$(field "$fill" sent)"
    start_mosquitto "$uport"; pids_step+=("$started")
  fi
  for i in $(seq 1 100); do
    grep -qs "upstream: connected" "$work/perch-$lport.log" && break
    sleep 0.05
  done
  out="$("$load" --broker "127.0.0.1:$lport" --publishers 1 --size "$size" --qos 1 \
    --rate "$s7_rate" --duration-s "$s7_duration" --drain-timeout-s "$s7_drain_timeout" \
    --sub-broker "127.0.0.1:$uport" --sub-topic "perch/bench/up/sensors/+/temperature" \
    --label "s7-$mode")" || { stop "${pids_step[@]}"; return 1; }
  stop "${pids_step[@]}"
  record "$out" scenario=7 system=perch run="$run" step="$mode" backlog="$backlog" cap="$s7_cap"
  [ "$(field "$out" lost)" = 0 ]
}

s7() {
  local round mode modes=(idle drain)
  [ "$smoke" = 1 ] || modes+=(fifo)
  for round in $(seq 1 "$s7_rounds"); do
    for mode in "${modes[@]}"; do
      s7_step "$1" "$mode" || smoke_check "s7 $mode"
    done
  done
}

# --- the runs, peers side by side -------------------------------------------
started_at="$(date -u +%s)"
load_start="$(cut -d' ' -f1 /proc/loadavg)"
for run in $(seq 1 "$runs"); do
  log "run $run of $runs"
  for n in 0 1 2 3 5 6 7; do
    if [ -z "$only" ] || [[ " $only " == *" $n "* ]]; then "s$n" "$run"; fi
  done
done
elapsed=$(( $(date -u +%s) - started_at ))

machine="$(python3 - <<'EOF'
import os, platform
model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
mem = next((int(l.split()[1]) // 1024 for l in open("/proc/meminfo") if l.startswith("MemTotal")), 0)
print(f"{platform.machine()}, {os.cpu_count()} cores ({model}), {mem} MiB RAM, Linux {platform.release()}")
EOF
)"
versions="perch $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?'), $("$mosquitto_bin" -h 2>/dev/null | head -1 | sed 's/ (build.*//'), Python $("$py" -c 'import platform; print(platform.python_version())'), paho-mqtt $("$py" -c 'import importlib.metadata as m; print(m.version("paho-mqtt"))')"
if [ "$node_red" = 1 ]; then
  versions+=", Node-RED $(cd "$nr_dir" && node -p 'require("node-red/package.json").version')"
  versions+=" (node-red-node-sqlite $(cd "$nr_dir" && node -p 'require("node-red-node-sqlite/package.json").version'), Node.js $(node --version))"
fi

if [ "$smoke" = 1 ]; then
  out="$work/smoke.md"
elif [ -n "$only" ]; then
  out="$work/only.md"
else
  mkdir -p "$bench/results"
  out="$bench/results/$(date -u +%Y-%m-%d).md"
fi
cp "$results" "${out%.md}.jsonl" # the raw lines, kept beside the report
python3 "$bench/report.py" "$results" --machine "$machine" --versions "$versions" \
  --load "$load_start at the start, $(cut -d' ' -f1 /proc/loadavg)" --elapsed "$elapsed" --runs "$runs" \
  --smoke "$smoke" --s1-latency-rate "$s1_latency_rate" --s2-latency-rate "$s2_latency_rate" \
  --s1-top "${s1_rates[-1]}" --s2-top "${s2_rates[-1]}" \
  --out "$out"
log "wrote $out (raw: $results)"
