//! perch-bench: the benchmark suite that measures perch against what users
//! would run instead (Mosquitto, Mosquitto plus a Python script, Node-RED).
//!
//! # Layout
//!
//! - [`mqtt`]: the few MQTT 3.1.1 packets the load generator speaks.
//! - [`sensor`]: the JSON sensor payload with its send timestamp, written
//!   and read back without allocating.
//! - `src/bin/perch-load.rs`: the load generator (publishers, a measuring
//!   subscriber, a null sink for its own ceiling).
//! - `run.sh`: the suite; `peers/`: the peers' programs; `results/`: the
//!   reports it writes. How to run it: `bench/README.md`.

pub mod mqtt;
pub mod sensor;
