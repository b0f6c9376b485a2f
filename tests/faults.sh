#!/usr/bin/env bash
# Runs perch's fault-injection suite: kill -9 cycles, upstream faults
# (down, silent partition, flapping, slow acks), full disks, and the load
# test (1,000 connections and a burst of messages). See docs/reliability.md
# for what each test proves.
#
#   tests/faults.sh            the bounded form (./test.sh runs it too): a few minutes
#   tests/faults.sh --full     the long form: 40 kill -9 cycles, a 3-minute outage,
#                              3 minutes of flapping, a 3-minute partition,
#                              1,000,000 messages in the load test...
#
# PERCH_FAULT_SEED=N replays the kill points and flaps of a run (each test
# prints its seed); PERCH_FAULT_CYCLES=N sets the number of kill cycles.
# Extra arguments go to the test harness (e.g. a test name).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--full" ]; then
  export PERCH_FAULT_FULL=1
  export PERCH_LOAD_FULL=1
  shift
fi
# One test at a time: the timings (detection, reconnect counts) are the
# subject, and the machine should not be shared with the suite itself.
exec cargo test --workspace --locked --test e2e -- \
  faults:: store_forward::a_full_disk store_forward::mosquitto_upstream \
  upstream::committed_records_survive_kill_9 load:: \
  --test-threads=1 --nocapture "$@"
