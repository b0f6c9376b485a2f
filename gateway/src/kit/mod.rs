//! The foundation below every stage: what the broker, the functions, the
//! aggregates, the buffer and upstream all use, and which imports none of
//! them (`tests/tests/house.rs` checks it).
//!
//! - [`clock`]: wall-clock time in Unix milliseconds, the one clock
//!   records, windows, sessions and functions are stamped with.
//! - [`digest`]: SHA-256 in hex, the id of a module and a bundle.
//! - [`durable`]: acknowledgements that wait for a commit: the tickets a
//!   connection takes for what it hands the buffer or the retained store,
//!   and how their writers settle them (a PUBACK means it is on disk).
//! - [`metrics`]: the metric primitives the stages count with (a duration
//!   histogram, a log rate limit).
//! - [`problem`]: [`Problem`], one thing wrong with a config; every
//!   stage's config check reports with it.
//! - [`sqlite`]: the one way perch opens its SQLite files, and the
//!   `synchronous` levels it lets a config choose.
//! - [`topic`]: MQTT topic names and filters, validation and matching,
//!   shared by the broker's ACLs, the functions' triggers and capture.

pub mod clock;
pub mod digest;
pub mod durable;
pub mod metrics;
pub mod problem;
pub mod sqlite;
pub mod topic;

pub use problem::Problem;
