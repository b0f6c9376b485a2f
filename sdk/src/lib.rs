//! Write perch functions in Rust.
//!
//! A perch function is a WebAssembly module that the gateway runs on MQTT
//! events (and on intervals), in a sandbox with a fuel and memory budget.
//! This crate is its guest side of the host ABI (`sdk/ABI.md`): `no_std`,
//! no allocator, fixed-size buffers from [`heapless`], its own lean JSON
//! field reader and writer ([`json`]), and [`serde_json_core`] for payloads
//! that are better read into a struct.
//!
//! A whole function:
//!
//! ```
//! #![no_std]
//! use perch_sdk::{Context, Error, Event};
//!
//! fn on_event(ctx: &Context, event: &Event) -> Result<(), Error> {
//!     let [temperature] = event.fields(["temperature"])?;
//!     if temperature.f64()? > ctx.config_f64("limit")? {
//!         ctx.publish("alerts/hot", event.payload)?;
//!     }
//!     Ok(())
//! }
//!
//! perch_sdk::function!(on_event);
//! # fn main() {}
//! ```
//!
//! The same with serde, which costs the function over twice the fuel per
//! event (`docs/performance.md`) but reads any shape into a struct:
//!
//! ```
//! # use perch_sdk::{Context, Error, Event};
//! #[derive(serde::Deserialize)]
//! struct Reading {
//!     temperature: f64,
//! }
//!
//! fn on_event(ctx: &Context, event: &Event) -> Result<(), Error> {
//!     let reading: Reading = event.json()?;
//!     if reading.temperature > ctx.config_f64("limit")? {
//!         ctx.publish("alerts/hot", event.payload)?;
//!     }
//!     Ok(())
//! }
//! # perch_sdk::function!(on_event);
//! # fn main() {}
//! ```
//!
//! Build it with `cargo build --release --target wasm32-unknown-unknown`
//! (crate type `cdylib`; see `sdk/README.md` for the stack-size flag and the
//! manifest), then deploy the `.wasm` with its `manifest.toml`.
//!
//! # Layout
//!
//! - [`context`]: [`Event`] (what a handler gets) and [`Context`] (outputs,
//!   state, config, log, clock): the API a function is written against.
//! - [`error`]: [`Error`], the ABI's error codes plus the SDK's own.
//! - [`json`]: the lean JSON path: top-level fields of a payload in one
//!   pass ([`json::fields`]), an object writer ([`json::Object`]), and
//!   exact fast number parsing and printing.
//! - `config_cache`: the typed config values an instance has read, so each
//!   is fetched from the host and parsed once per instance.
//! - [`export`]: the [`function!`] macro and the event buffer behind the
//!   exports the host calls.
//! - `sys`: the raw `perch` imports (on wasm32) or the [`testing`] host
//!   (elsewhere); nothing above it knows which.
//! - [`testing`] (not on wasm32): [`testing::TestHost`], an in-memory gateway
//!   for native unit tests of a function.
//! - [`math`]: the few float functions `core` lacks, for statistics.
//!
//! # Targets
//!
//! On `wasm32` the crate imports from module `perch` and, with the default
//! `panic-handler` feature, installs a panic handler that logs the message
//! and traps. On any other target it links `std` for [`testing`] and the
//! exports are not generated, so the workspace builds, tests and lints on a
//! laptop.
#![no_std]
#![warn(missing_docs)]

#[cfg(not(target_arch = "wasm32"))]
extern crate std;

mod config_cache;
pub mod context;
pub mod error;
pub mod export;
pub mod json;
pub mod math;
mod sys;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

pub use context::{Context, Event, Level};
pub use error::Error;
pub use heapless;
pub use serde_json_core;

/// The host ABI version this SDK speaks; `perch_abi_version` returns it.
pub const ABI_VERSION: u32 = 1;

#[cfg(all(target_arch = "wasm32", feature = "panic-handler"))]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    // Only a static message is logged: formatting arguments here would pull
    // the formatting machinery into every module for a path that should not
    // run. The trap that follows tells the host which invocation failed.
    let msg = info.message().as_str().unwrap_or("panic");
    sys::log(Level::Error as i32, msg.as_bytes());
    core::arch::wasm32::unreachable()
}
