//! perch: serverless functions at the edge, in one binary.
//!
//! # Layout
//!
//! The parts, the trip of an event with the file that owns each step, what
//! is durable when, and what may import what: `docs/architecture.md`
//! (checked by `tests/tests/house.rs`).
//!
//! One module per stage of an event's trip, then the glue around them:
//!
//! - [`broker`]: the embedded MQTT broker (rumqttd): listeners, TLS, logins,
//!   ACLs, in-process links for the gateway's own parts, and what perch adds
//!   around rumqttd for the MQTT specs: retained messages and persistent
//!   sessions kept in SQLite (`retained.db`, `sessions.db`), will messages,
//!   the codec's fixes (flow control included).
//! - [`functions`]: sandboxed WebAssembly functions on MQTT events: the
//!   registry (SQLite), the wasmi runtime and host ABI, triggers and queues,
//!   per-function state, the deploy control plane, signed bundles.
//! - [`aggregate`]: tumbling windows over the metrics functions emit.
//! - [`buffer`]: the SQLite outbox (store-and-forward): batched commits,
//!   bounds, the crash-loss window, the link totals per destination kept
//!   across restarts; hosts the aggregator.
//! - [`upstream`]: delivery of buffered records to an upstream MQTT broker
//!   or HTTP(S) endpoint, acknowledged per record or batch, live records
//!   first and the backlog paced when asked ([`upstream::pacing`]); capture
//!   of local topics into the buffer; the fleet's desired state
//!   (`upstream::fleet`).
//! - [`config`]: the TOML config file: parsing, validation, the annotated
//!   default.
//! - [`kit`]: the foundation below every stage, importing none of them: the
//!   clock, SHA-256, the metric primitives the stages count with, the config
//!   [`kit::Problem`], the one way perch opens its
//!   SQLite files (WAL, busy timeout, `synchronous`), the commit tickets a
//!   PUBACK waits for ([`kit::durable`]), and MQTT topic names and filters
//!   ([`kit::topic`]: validation and matching, shared by the broker's ACLs
//!   and the functions' triggers).
//! - [`gateway`]: starts the stages in order, reports ready, stops them in
//!   stages on shutdown.
//! - [`telemetry`]: what operators see: logging (human, JSON lines,
//!   journald), systemd notifications, and
//!   [`telemetry::admin`], the admin HTTP listener (Prometheus metrics,
//!   health and readiness, the status page) and the retained status topic.
//! - [`cli`]: the `perch` command line, one file per command; `main.rs`
//!   only calls it. Besides the thin commands it holds [`cli::demo`] (`perch demo`: simulated
//!   sensors, the example functions shipped in `gateway/demo/`, a stand-in
//!   cloud, on one screen), [`cli::devkit`] (`perch fn new|build|test`,
//!   the function author's loop without a gateway) and [`cli::keys`]
//!   (signing keys and signed bundles).

pub mod aggregate;
pub mod broker;
pub mod buffer;
pub mod cli;
pub mod config;
pub mod functions;
pub mod gateway;
pub mod kit;
pub mod telemetry;
pub mod upstream;
