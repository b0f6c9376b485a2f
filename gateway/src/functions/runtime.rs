//! The WebAssembly sandbox: compiling modules, checking them against the host
//! ABI (`sdk/ABI.md`), instantiating them with their limits, invoking their
//! handlers and the host imports they call.
//!
//! # Why wasmi 2.x
//!
//! wasmi is an interpreter: it runs the same on x86_64, aarch64 and armv7
//! (no JIT, no per-architecture code generator, no `unsafe` machine code),
//! compiles lazily so that deploying a 200 KB module costs validation only,
//! meters fuel deterministically, and starts an instance in microseconds.
//! 2.x is its newest release line: it carries the security fixes of the 1.0.x
//! line and the 2.0 betas (memory.grow under OOM, stack height checks, fuel
//! accounting) and its faster register-machine executor; the older 0.x/1.x
//! lines are slower and no longer get those fixes.
//!
//! On x86_64 and aarch64 wasmi runs with its tail-call dispatcher, ~2.9x
//! faster than its portable loop dispatcher on the threshold-alert example;
//! other targets keep the loop. Why, and the checks that keep the tail-call
//! dispatcher from growing the native stack: gateway/Cargo.toml.
//!
//! What a guest costs per event is mostly its own code: the Rust SDK's
//! lean JSON path (`perch_sdk::json`), its per-instance config cache and
//! the examples' build (opt-level 3, a cdylib alone) bring `threshold-alert`
//! to ~5,500 host instructions per reading (from ~17,700); the wasm vs
//! native figures are in docs/performance.md.
//!
//! # Deploying: validation eager, translation lazy
//!
//! [`Runtime::compile`] parses the module and validates every function body
//! (wasmi's `CompilationMode::LazyTranslation`); each function is translated
//! to wasmi's bytecode on its first call (charged no fuel: see "Limits").
//! [`Runtime::instantiate`] then makes an instance from the compiled module.
//! The two run in different places, and only the second is on the switch-over
//! path: a deploy compiles (and hashes) the module on the control plane's
//! thread while the old version keeps taking events, and hands the compiled
//! version to the function's worker, which instantiates it, checks the ABI
//! and runs `perch_init` (for a 230 KB module: ~16 µs plus `perch_init`)
//! before it replaces the old instance. Re-creating an instance after a trap
//! is the same microseconds. Figures: docs/performance.md.
//!
//! wasmi's `CompilationMode::Lazy` would skip validating function bodies
//! at deploy and validate each on its first call instead. It is not used: a
//! module with one invalid body would then be accepted, replace a working
//! version, and fail when that body is first reached, where perch
//! promises that a malformed module is refused and what ran before keeps
//! running (docs/architecture.md). It would be faster: on a fresh engine, parsing a 230 KB module
//! takes ~0.5 million host instructions and parsing + validating ~16
//! million, so validation is nearly all of a deploy's compile time (1-2 ms
//! here; docs/performance.md). Validating elsewhere (wasmparser's
//! `Validator`) would cost the same.
//!
//! wasmi's engine keeps every compiled module's functions until the engine
//! is dropped (its code map is append-only): on one engine per gateway each
//! deploy left its module's function storage behind for good (~0.3 MB for
//! that 230 KB module; a gateway redeployed hourly would grow by gigabytes
//! in a year). So each compiled version has an engine (and a linker) of its
//! own ([`Compiled`]), dropped with the version's last instance: a rollback,
//! a removal or a replaced version gives its memory back. A new engine and
//! linker cost about a microsecond of a deploy (docs/performance.md). The
//! regression test `a_replaced_version_gives_its_memory_back` deploys and
//! drops 200 versions of a 200 KB module: 63 MB stayed on one engine.
//!
//! # Limits, and who enforces them
//!
//! - Parsing: `EnforcedLimits::strict()` bounds functions, globals, tables,
//!   data segments and parameters, and refuses modules crafted to make lazy
//!   compilation expensive.
//! - Memory: a [`StoreLimits`] on every store caps linear memory at the
//!   manifest's `memory_pages`; growing past it traps (`memory_limit`)
//!   instead of returning -1, as the ABI promises. wasmi's default is
//!   unbounded, so the limiter is installed before instantiation, always.
//! - CPU: fuel is refilled to the manifest's `fuel` before every call into
//!   the guest (init, event, timer); running out traps (`out_of_fuel`).
//! - Time: every call into the guest is also bounded in wall-clock time
//!   (`limits.timeout_ms`, else the gateway's `functions.default_timeout_ms`),
//!   whatever fuel is left; past it the call is stopped (`timeout`). wasmi
//!   2.0 has no epoch interruption, so [`run`] hands the guest its fuel in
//!   slices of [`FUEL_SLICE`] and, each time a slice runs out, reads the
//!   clock and resumes the call (wasmi's resumable calls) or stops it. An
//!   invocation that fits in one slice, as nearly every event does, pays
//!   nothing for this; a runaway one is stopped at most one slice after its
//!   limit. Lazy translation is charged no fuel ([`TRANSLATION_FUEL_COSTS`]):
//!   wasmi cannot resume a call whose slice runs out while translating a
//!   function, and each function is translated once per version, bounded
//!   by the module's size.
//! - Stack: recursion depth and value-stack height are capped engine-wide
//!   ([`MAX_RECURSION_DEPTH`], [`MAX_STACK_HEIGHT_BYTES`]); overflow traps.
//! - Outputs: bytes per invocation from the manifest, count per invocation
//!   [`MAX_OUTPUTS_PER_INVOCATION`], log lines [`MAX_LOG_LINES_PER_INVOCATION`].
//!
//! # An invocation is all-or-nothing
//!
//! Outputs (`publish`, `emit`, `forward`) are staged during the call and
//! released only when the handler returns; state writes are undone when it
//! traps. So a trapped invocation has no effect outside the guest, and the
//! guest itself is thrown away ([`Instance::is_poisoned`]): after a trap its
//! globals and memory may be half-updated, so the caller re-creates it from
//! the compiled module (microseconds) before the next event. A handler that
//! *returns* non-zero ended cleanly: its effects stand and the instance is
//! kept; the error is counted like a trap.
//!
//! Nothing a guest does can panic the host: every pointer/length pair is
//! bounds-checked (out of range traps `memory_out_of_bounds`, as the ABI
//! says), every text is checked for UTF-8, and every wasmi error is mapped to
//! a [`Failure`] or a [`RuntimeError`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use wasmi::{
    CompilationMode, Config, CustomFuelCosts, EnforcedLimits, Engine, Linker, Memory, Module,
    Store, StoreLimits, StoreLimitsBuilder, TypedFunc, TypedResumableCall, WasmParams, WasmResults,
};

use super::abi::{check_exports, check_imports};
use super::failure::trap_kind;

mod error;
mod host;
mod imports;
pub use super::failure::Failure;
use super::manifest::{Manifest, DEFAULT_TIMEOUT_MS, PAGE_BYTES};
use super::state::StateCache;
use super::Output;
use crate::kit::digest::sha256_hex;
use crate::kit::topic;
pub use error::RuntimeError;
use host::Staged;
pub use host::{Host, RESERVED_PREFIX};
use imports::define_imports;

/// The host ABI version this gateway speaks.
pub const ABI_VERSION: i32 = 1;

/// Error codes of the host imports (`sdk/ABI.md`, "Error codes").
pub mod code {
    pub const OK: i32 = 0;
    pub const NOT_FOUND: i32 = -1;
    pub const DENIED: i32 = -2;
    pub const LIMIT: i32 = -3;
    pub const INVALID: i32 = -4;
    pub const FULL: i32 = -5;
}

/// Deepest call nesting inside a guest. wasmi's default (1000); set
/// explicitly so an upgrade cannot quietly change it.
pub const MAX_RECURSION_DEPTH: usize = 1_000;
/// wasmi's value stack per execution. Each function runs on its own thread,
/// so at most one execution per function exists at a time; 512 KiB is ample
/// for handlers (a Rust or C guest keeps its own stack in linear memory) and
/// bounds what a runaway recursion can take from a small board.
pub const MAX_STACK_HEIGHT_BYTES: usize = 512 * 1024;
/// Most outputs (publish + emit + forward) per invocation: bounds the staging
/// buffer even for zero-length payloads. A call past it gets `LIMIT`.
pub const MAX_OUTPUTS_PER_INVOCATION: usize = 1_024;
/// Most log lines per invocation; more are dropped silently so a chatty
/// function cannot flood the gateway's log.
pub const MAX_LOG_LINES_PER_INVOCATION: u32 = 32;
/// Longest log line kept; the rest is cut (at a character boundary).
pub const MAX_LOG_LINE_BYTES: usize = 1_024;
/// Longest metric, key or stream name for `emit` / `forward`.
pub const MAX_NAME_BYTES: usize = 256;
/// Table elements per store, so `table.grow` cannot eat memory.
const MAX_TABLE_ELEMENTS: usize = 100_000;
/// Fuel the guest runs on between two looks at the clock (see "Limits" in
/// the module doc): small enough that a runaway call overshoots its time
/// limit by little, large enough that the look (a clock read and a resumed
/// call) is lost in the slice's work. docs/performance.md has the measured
/// overshoot.
pub const FUEL_SLICE: u64 = 1_000_000;
/// The most fuel a module's start function (wasm's start section) gets:
/// wasmi runs it inside instantiation, where it cannot be paused to read
/// the clock. Toolchains rarely emit one; `perch_init` is where a function
/// sets itself up, under the same limits as its handlers.
pub const START_FUEL: u64 = 10 * FUEL_SLICE;
/// wasmi's default fuel costs (64 bytes copied per unit by bulk memory and
/// table operations), except that translating a function's body on its
/// first call costs no fuel: a call whose fuel slice ran out mid-translation
/// could not be resumed (wasmi reports it as a plain `out_of_fuel` trap),
/// so a function with fuel to spare would fail at a slice boundary.
/// Translation is bounded without fuel: once per function and version, a
/// few instructions per byte of a module that was validated at deploy.
const TRANSLATION_FUEL_COSTS: CustomFuelCosts = CustomFuelCosts {
    bytes_copied_per_fuel: 64,
    fuel_per_bytes_translated: 0,
    fuel_per_bytes_validated: 0,
};

/// Counters of outputs the host refused, shared by every instance of one
/// function so they survive instance re-creation.
#[derive(Debug, Default)]
pub struct OutputCounters {
    /// Publishes to topics outside `publish.allow` (`DENIED`).
    pub denied: AtomicU64,
    /// Outputs past the per-invocation limits (`LIMIT`).
    pub limited: AtomicU64,
    /// Outputs dropped because the channel behind was full (`FULL`).
    pub full: AtomicU64,
    /// The function's log budget over time (lines dropped beyond it are
    /// counted there).
    pub log: crate::kit::metrics::LogLimiter,
}

/// What an instance carries over from the one before it: the function's
/// state and its counters. Handed back when instantiation fails, so nothing
/// is lost.
#[derive(Debug, Default)]
pub struct Seed {
    pub state: StateCache,
    pub counters: Arc<OutputCounters>,
}

/// One config value: key and value as text (UTF-8 bytes).
type ConfigEntry = (Box<[u8]>, Box<[u8]>);

/// The parts of a deployed version every instance shares.
#[derive(Debug)]
pub struct Context {
    pub name: Arc<str>,
    /// The manifest's version, tagged on the function's log lines.
    pub version: Arc<str>,
    allow: Vec<String>,
    /// Config values as text, sorted by key: `config_get` runs once per
    /// event in a typical function, and a binary search over the key bytes
    /// is cheaper than hashing them (configs hold a handful of keys).
    config: Box<[ConfigEntry]>,
    fuel: u64,
    /// Wall-clock limit of one call into the guest.
    timeout: Duration,
    memory_pages: u32,
    output_bytes: usize,
    /// Where its log lines are published too, if anywhere.
    log_topic: Option<Bytes>,
}

/// A validated, compiled function version: one per version, shared by all of
/// its instances.
pub struct Compiled {
    pub manifest: Manifest,
    /// Hex SHA-256 of the wasm bytes.
    pub sha256: String,
    /// This version's own engine and host imports (see "Deploying" in the
    /// module doc: an engine never frees a module's functions, so it must
    /// not outlive the version).
    engine: Engine,
    linker: Linker<Host>,
    module: Module,
    ctx: Arc<Context>,
    /// Size of the wasm bytes, for logs.
    pub wasm_len: usize,
}

/// How functions are compiled and run: one per gateway. Each compiled
/// version gets an engine of its own from `config`.
pub struct Runtime {
    config: Config,
    /// Where `emit` and `forward` records go (the aggregate and buffer
    /// stages). Bounded, so a stalled consumer turns into `FULL` for the
    /// guest instead of unbounded memory.
    outputs: mpsc::Sender<Output>,
    /// The gateway's id, when function log lines are also published on
    /// `perch/<id>/fn/<name>/logs` (the gateway; not `perch fn test`).
    log_gateway: Option<Arc<str>>,
    /// The time limit of a call when the manifest sets none.
    default_timeout: Duration,
}

impl Runtime {
    /// Also publish each function's log lines (those past the rate limit)
    /// on `perch/<gateway_id>/fn/<name>/logs`, non-retained.
    pub fn publish_logs_as(mut self, gateway_id: &str) -> Runtime {
        self.log_gateway = Some(gateway_id.into());
        self
    }

    /// Bounds each call into a guest whose manifest sets no
    /// `limits.timeout_ms` to `ms` milliseconds of wall-clock time
    /// (`functions.default_timeout_ms`; [`DEFAULT_TIMEOUT_MS`] otherwise).
    pub fn default_timeout_ms(mut self, ms: u64) -> Runtime {
        self.default_timeout = Duration::from_millis(ms);
        self
    }

    /// A runtime whose functions send `emit`/`forward` records to `outputs`.
    pub fn new(outputs: mpsc::Sender<Output>) -> Runtime {
        let mut config = Config::default();
        config
            .consume_fuel(true)
            // Validate the whole module at deploy (a bad module is refused
            // there, not at its first event) but translate each function on
            // first use; see "Deploying" in the module doc.
            .compilation_mode(CompilationMode::LazyTranslation)
            .fuel_cost(TRANSLATION_FUEL_COSTS)
            .enforced_limits(EnforcedLimits::strict())
            .set_max_recursion_depth(MAX_RECURSION_DEPTH)
            .set_max_stack_height(MAX_STACK_HEIGHT_BYTES);
        Runtime {
            config,
            outputs,
            log_gateway: None,
            default_timeout: Duration::from_millis(DEFAULT_TIMEOUT_MS),
        }
    }

    /// Hands a trigger event to the buffer to keep for `perch fn replay`;
    /// false (and nothing kept) when the output channel is full.
    pub fn keep_event(&self, event: crate::buffer::NewEvent) -> bool {
        self.outputs.try_send(Output::Event(event)).is_ok()
    }

    /// Validates a module against the ABI and the manifest and compiles it.
    pub fn compile(&self, manifest: Manifest, wasm: &[u8]) -> Result<Compiled, RuntimeError> {
        if wasm.len() < 8 || &wasm[..4] != b"\0asm" {
            let found = wasm
                .iter()
                .take(4)
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" ");
            let found = if found.is_empty() {
                "nothing (the file is empty)".to_owned()
            } else {
                found
            };
            return Err(RuntimeError::NotWasm { found });
        }
        if wasm[4..8] != [1, 0, 0, 0] {
            return Err(RuntimeError::NotCoreModule);
        }
        if let Some(size) = super::abi::empty_code_section_with_bytes(wasm) {
            return Err(RuntimeError::Invalid(format!(
                "the code section declares no function bodies but {size} bytes; rebuild the \
                 module (a compiler never writes this)"
            )));
        }
        let engine = Engine::new(&self.config);
        let module =
            Module::new(&engine, wasm).map_err(|e| RuntimeError::Invalid(e.to_string()))?;
        check_imports(&module)?;
        check_exports(&module, &manifest)?;

        let ctx = Arc::new(Context {
            name: manifest.name.as_str().into(),
            version: manifest.version.as_str().into(),
            allow: manifest.publish.allow.clone(),
            config: {
                let mut config: Vec<ConfigEntry> = manifest
                    .config_texts()
                    .map(|(k, v)| (k.as_bytes().into(), v.into_bytes().into()))
                    .collect();
                config.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                config.into_boxed_slice()
            },
            fuel: manifest.limits.fuel,
            timeout: manifest
                .limits
                .timeout_ms
                .map_or(self.default_timeout, Duration::from_millis),
            memory_pages: manifest.limits.memory_pages,
            output_bytes: manifest.limits.output_bytes,
            log_topic: self
                .log_gateway
                .as_ref()
                .map(|id| Bytes::from(format!("perch/{id}/fn/{}/logs", manifest.name))),
        });
        let mut linker = Linker::new(&engine);
        define_imports(&mut linker);
        Ok(Compiled {
            sha256: sha256_hex(wasm),
            manifest,
            engine,
            linker,
            module,
            ctx,
            wasm_len: wasm.len(),
        })
    }

    /// Instantiates a compiled version: checks the ABI version and the event
    /// buffer, then runs `perch_init`. Outputs `perch_init` made are staged in
    /// the returned instance until [`Instance::release`].
    #[allow(clippy::result_large_err)] // the Seed is handed back, not lost
    pub fn instantiate(
        &self,
        compiled: &Compiled,
        seed: Seed,
    ) -> Result<Instance, (RuntimeError, Seed)> {
        let ctx = compiled.ctx.clone();
        let limits = StoreLimitsBuilder::new()
            .memory_size((ctx.memory_pages as usize).saturating_mul(PAGE_BYTES))
            .memories(1)
            .tables(8)
            .table_elements(MAX_TABLE_ELEMENTS)
            .instances(1)
            .trap_on_grow_failure(true)
            .build();
        let host = Host {
            limits,
            outputs: self.outputs.clone(),
            memory: None,
            state: seed.state,
            counters: seed.counters,
            staged: Vec::new(),
            output_bytes_left: ctx.output_bytes,
            log_lines_left: MAX_LOG_LINES_PER_INVOCATION,
            backpressure: false,
            logs: Vec::new(),
            fuel_used: 0,
            ctx,
        };
        let mut store = Store::new(&compiled.engine, host);
        store.limiter(|host| &mut host.limits);
        let parts = match self.start(&mut store, compiled) {
            Ok(parts) => parts,
            Err(e) => {
                let host = store.into_data();
                let seed = Seed {
                    state: host.state,
                    counters: host.counters,
                };
                return Err((e, seed));
            }
        };
        let mut instance = Instance {
            store,
            memory: parts.memory,
            buf_ptr: parts.buf_ptr,
            buf_len: parts.buf_len,
            on_event: parts.on_event,
            on_timer: parts.on_timer,
            migrate: parts.migrate,
            poisoned: false,
        };
        if let Some(init) = parts.init {
            if let Err(failure) = instance.invoke(|store| run(store, &init, ())) {
                let e = RuntimeError::Start {
                    export: "perch_init",
                    failure,
                };
                return Err((e, instance.into_seed()));
            }
        }
        Ok(instance)
    }

    /// Instantiates the module in `store` and checks what the ABI requires
    /// of a live instance.
    fn start(&self, store: &mut Store<Host>, compiled: &Compiled) -> Result<Parts, RuntimeError> {
        // A start function (the module's start section) runs inside
        // instantiation, where wasmi cannot pause it to read the clock: it
        // gets at most START_FUEL, so it cannot hold the worker for long.
        // Fuel is always on in this engine, so set_fuel cannot fail.
        let _ = store.set_fuel(compiled.ctx.fuel.min(START_FUEL));
        let instance = compiled
            .linker
            .instantiate_and_start(&mut *store, &compiled.module)
            .map_err(|e| match e.as_trap_code() {
                Some(_) => RuntimeError::Start {
                    export: "the start function",
                    failure: Failure::Trap(trap_kind(&e)),
                },
                None => RuntimeError::Instantiate(e.to_string()),
            })?;
        // check_exports made sure these exist with these types.
        let memory = instance
            .get_memory(&*store, "memory")
            .ok_or(RuntimeError::Instantiate("no memory export".into()))?;
        store.data_mut().memory = Some(memory);
        let mut call0 = |export: &'static str| {
            let f = instance
                .get_typed_func::<(), i32>(&*store, export)
                .map_err(|e| RuntimeError::Instantiate(e.to_string()))?;
            run(&mut *store, &f, ()).map_err(|failure| RuntimeError::Start { export, failure })
        };
        let version = call0("perch_abi_version")?;
        if version != ABI_VERSION {
            return Err(RuntimeError::AbiVersion { found: version });
        }
        let ptr = call0("perch_event_buffer")?;
        let len = call0("perch_event_buffer_len")?;
        let memory_len = memory.data_size(&*store);
        let in_memory = ptr >= 0
            && len >= 0
            && (ptr as usize)
                .checked_add(len as usize)
                .is_some_and(|end| end <= memory_len);
        if !in_memory {
            return Err(RuntimeError::EventBuffer {
                ptr,
                len,
                memory: memory_len,
            });
        }
        Ok(Parts {
            memory,
            buf_ptr: ptr as usize,
            buf_len: len as usize,
            on_event: instance.get_typed_func(&*store, "perch_on_event").ok(),
            on_timer: instance.get_typed_func(&*store, "perch_on_timer").ok(),
            init: instance.get_typed_func(&*store, "perch_init").ok(),
            migrate: instance.get_typed_func(&*store, "perch_migrate").ok(),
        })
    }
}

/// Calls `func` in the guest with the version's fuel and time limits: the
/// fuel in slices of [`FUEL_SLICE`], the clock read whenever a slice runs
/// out (see "Limits" in the module doc). Records the fuel burnt in
/// [`Host::fuel_used`]. A call stopped for its time is left mid-way, like a
/// trapped one: the caller must treat the instance as poisoned.
fn run<P: WasmParams, R: WasmResults>(
    store: &mut Store<Host>,
    func: &TypedFunc<P, R>,
    params: P,
) -> Result<R, Failure> {
    let started = Instant::now();
    let (budget, timeout) = (store.data().ctx.fuel, store.data().ctx.timeout);
    let fuel_now = |store: &Store<Host>| store.get_fuel().unwrap_or(0);
    // Fuel burnt by the slices that ran out, and the current slice's size.
    let mut spent = 0u64;
    let mut slice = budget.min(FUEL_SLICE);
    // Fuel is always on in this engine, so set_fuel cannot fail.
    let _ = store.set_fuel(slice);
    let mut call = func.call_resumable(&mut *store, params);
    let result = loop {
        match call {
            Ok(TypedResumableCall::Finished(results)) => break Ok(results),
            // Host imports fail only with a trap code (bad pointers).
            Ok(TypedResumableCall::HostTrap(trap)) => {
                break Err(Failure::Trap(trap_kind(trap.host_error())))
            }
            Ok(TypedResumableCall::OutOfFuel(paused)) => {
                spent += slice - fuel_now(store);
                slice = fuel_now(store);
                let left = budget - spent;
                let needed = paused.required_fuel();
                if needed > left {
                    break Err(Failure::Trap("out_of_fuel"));
                }
                if started.elapsed() >= timeout {
                    break Err(Failure::Timeout {
                        limit_ms: timeout.as_millis().min(u128::from(u64::MAX)) as u64,
                    });
                }
                // A bulk memory operation may need more than a slice at once.
                slice = left.min(FUEL_SLICE.max(needed));
                let _ = store.set_fuel(slice);
                call = paused.resume(&mut *store);
            }
            Err(e) => break Err(Failure::Trap(trap_kind(&e))),
        }
    };
    store.data_mut().fuel_used = spent + (slice - fuel_now(store));
    result
}

/// What [`Runtime::start`] found in a fresh instance.
struct Parts {
    memory: Memory,
    buf_ptr: usize,
    buf_len: usize,
    on_event: Option<TypedFunc<(i32, i32, i64), i32>>,
    on_timer: Option<TypedFunc<i64, i32>>,
    init: Option<TypedFunc<(), i32>>,
    migrate: Option<TypedFunc<i32, i32>>,
}

/// One live instance of a function version. Reused across events.
pub struct Instance {
    store: Store<Host>,
    memory: Memory,
    buf_ptr: usize,
    buf_len: usize,
    on_event: Option<TypedFunc<(i32, i32, i64), i32>>,
    on_timer: Option<TypedFunc<i64, i32>>,
    migrate: Option<TypedFunc<i32, i32>>,
    /// Set by a trap: the guest's memory may be half-updated.
    poisoned: bool,
}

impl Instance {
    /// Delivers one MQTT event. The outputs it made are staged until
    /// [`Instance::release`].
    pub fn on_event(&mut self, topic: &[u8], payload: &[u8], ts_ms: i64) -> Result<(), Failure> {
        let needed = topic.len() + payload.len();
        if needed > self.buf_len {
            return Err(Failure::EventTooLarge {
                needed,
                capacity: self.buf_len,
            });
        }
        let Some(handler) = self.on_event else {
            // check_exports refuses a topic trigger without this export.
            return Err(Failure::Trap("host_error"));
        };
        // The range was checked against memory at instantiation and memory
        // never shrinks, so these slices are in bounds.
        let data = self.memory.data_mut(&mut self.store);
        let start = self.buf_ptr;
        data[start..start + topic.len()].copy_from_slice(topic);
        data[start + topic.len()..start + needed].copy_from_slice(payload);
        let params = (topic.len() as i32, payload.len() as i32, ts_ms);
        self.invoke(|store| run(store, &handler, params))
    }

    /// Delivers one interval tick.
    pub fn on_timer(&mut self, ts_ms: i64) -> Result<(), Failure> {
        let Some(handler) = self.on_timer else {
            return Err(Failure::Trap("host_error"));
        };
        self.invoke(|store| run(store, &handler, ts_ms))
    }

    /// Runs `perch_migrate` with the version whose state this is (its text
    /// at the start of the event buffer, its length the argument), under
    /// the handlers' limits. The caller runs it on a copy of the state and
    /// throws the copy away unless it returns 0. `Ok(false)` when the module does not export it.
    pub fn migrate(&mut self, from: &str) -> Result<bool, Failure> {
        let Some(migrate) = self.migrate else {
            return Ok(false);
        };
        let from = &from.as_bytes()[..from.len().min(self.buf_len)];
        let data = self.memory.data_mut(&mut self.store);
        data[self.buf_ptr..self.buf_ptr + from.len()].copy_from_slice(from);
        let len = from.len() as i32;
        self.invoke(|store| run(store, &migrate, len))
            .map(|()| true)
    }

    fn invoke(
        &mut self,
        call: impl FnOnce(&mut Store<Host>) -> Result<i32, Failure>,
    ) -> Result<(), Failure> {
        self.store.data_mut().begin();
        let result = call(&mut self.store);
        let host = self.store.data_mut();
        match result {
            Ok(rc) => {
                host.state.commit();
                if rc == code::OK {
                    Ok(())
                } else {
                    Err(Failure::Returned(rc))
                }
            }
            Err(failure) => {
                host.state.rollback();
                host.staged.clear();
                self.poisoned = true;
                Err(failure)
            }
        }
    }

    /// Whether a trap may have left the guest half-updated; such an instance
    /// must be replaced before the next event.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// Releases the outputs of the last invocation: each publish goes to
    /// `publish`, each emit/forward into the output channel (its place there
    /// was reserved when the guest made the call).
    pub fn release(&mut self, mut publish: impl FnMut(Bytes, Bytes)) {
        let host = self.store.data_mut();
        if let Some(topic) = &host.ctx.log_topic {
            for line in host.logs.drain(..) {
                publish(topic.clone(), line);
            }
        }
        for staged in self.store.data_mut().staged.drain(..) {
            match staged {
                Staged::Publish { topic, payload } => publish(topic, payload),
                Staged::Output(permit, output) => {
                    permit.send(output);
                }
            }
        }
    }

    /// Drops the outputs of the last invocation instead of releasing them
    /// (a shadow version's): publishes are not sent, emit and forward
    /// records give their reserved place in the output channel back.
    pub fn discard(&mut self) {
        self.store.data_mut().staged.clear();
    }

    /// Takes the outputs and log lines of the last invocation instead of
    /// releasing them (`perch fn invoke`): nothing is published, emit and
    /// forward records give their reserved place in the output channel back.
    pub fn capture(&mut self) -> (Vec<super::control::InvokeOutput>, Vec<Bytes>) {
        use super::control::InvokeOutput;
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let host = self.store.data_mut();
        let logs = std::mem::take(&mut host.logs);
        let outputs = host
            .staged
            .drain(..)
            .filter_map(|staged| match staged {
                Staged::Publish { topic, payload } => Some(InvokeOutput::Publish {
                    topic: text(&topic),
                    payload: text(&payload),
                }),
                Staged::Output(
                    _,
                    Output::Metric {
                        metric, key, value, ..
                    },
                ) => Some(InvokeOutput::Emit {
                    metric: metric.as_str().to_owned(),
                    key: key.as_str().to_owned(),
                    value,
                }),
                Staged::Output(_, Output::Record { stream, record, .. }) => {
                    Some(InvokeOutput::Forward {
                        stream,
                        record: text(&record),
                    })
                }
                // Kept events are the worker's, never a guest's output.
                Staged::Output(_, Output::Event(_)) => None,
            })
            .collect();
        (outputs, logs)
    }

    /// A hash of the outputs the last invocation staged (topics, payloads,
    /// metrics and their values, streams and records; not timestamps), so
    /// two versions' outputs for one event can be compared without keeping
    /// them. Call before [`Instance::release`] or [`Instance::discard`].
    pub fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        for staged in &self.store.data().staged {
            match staged {
                Staged::Publish { topic, payload } => {
                    0u8.hash(&mut h);
                    topic.hash(&mut h);
                    payload.hash(&mut h);
                }
                Staged::Output(
                    _,
                    Output::Metric {
                        metric, key, value, ..
                    },
                ) => {
                    1u8.hash(&mut h);
                    metric.as_str().hash(&mut h);
                    key.as_str().hash(&mut h);
                    value.to_bits().hash(&mut h);
                }
                Staged::Output(_, Output::Record { stream, record, .. }) => {
                    2u8.hash(&mut h);
                    stream.hash(&mut h);
                    record.hash(&mut h);
                }
                Staged::Output(_, Output::Event(_)) => {}
            }
        }
        h.finish()
    }

    /// The function's state, for flushing.
    pub fn state_mut(&mut self) -> &mut StateCache {
        &mut self.store.data_mut().state
    }

    /// Takes the instance apart, keeping what the next one needs.
    pub fn into_seed(self) -> Seed {
        let host = self.store.into_data();
        Seed {
            state: host.state,
            counters: host.counters,
        }
    }

    /// Whether the gateway refused an `emit` or `forward` of the last
    /// invocation with `FULL` (its output channel was full).
    pub fn met_backpressure(&self) -> bool {
        self.store.data().backpressure
    }

    /// Fuel left after the last invocation (for counters, tests and
    /// benchmarks).
    pub fn fuel_left(&self) -> u64 {
        let host = self.store.data();
        host.ctx.fuel.saturating_sub(host.fuel_used)
    }
}

/// Milliseconds since the Unix epoch (one clock for the whole gateway).
pub use crate::kit::clock::now_ms;
