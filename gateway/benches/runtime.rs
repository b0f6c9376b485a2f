//! Benchmarks of the function runtime alone (no broker, no SQLite):
//!
//! - `event/threshold_wasm_*` vs `event/threshold_native_*`: one event
//!   through the real `threshold-alert` example (`sdk/examples/`), once as
//!   the `.wasm` that `sdk/build-examples.sh` ships, run by perch's runtime,
//!   and once the same crate compiled natively, its host calls answered by
//!   the SDK's in-process host (`perch_sdk::testing::TestHost`). Both sides
//!   copy the event into an event buffer, frame it with the SDK's
//!   `dispatch_event`, read the payload's fields with the SDK's JSON reader
//!   (`perch_sdk::json`), take the `limit` config value from the SDK's
//!   per-instance cache (one host call on the first event), and (above the
//!   limit) write the alert with `json::Object` and publish it, which the
//!   host copies out.
//!   Their ratio is the wasm overhead. `event/empty_wasm` is a handler that
//!   returns at once: the host's fixed cost per event. The fuel each event
//!   takes is printed first. With `PERCH_BENCH_BASELINE_WASM=A.wasm:B.wasm`
//!   (say, the example built from an older SDK, or at another opt-level)
//!   those modules are measured side by side as
//!   `event/threshold_baseline_<file stem>_*`.
//! - `deploy/*`: the phases of deploying a ~200 KB module, each on its own
//!   (`parse`: wasmi without validation of function bodies; `parse_validate`: what perch's
//!   compile does; `translate_all`: wasmi's eager mode, every function
//!   body translated; `sha256`: the module's hash, which the registry
//!   keys versions by; `instantiate`: instance + ABI checks from a compiled
//!   module), and the whole `compile_instantiate_200kb` as perch does it.
//! - `throughput/events`: events per second through one reused instance.
//! - `metrics/events_off` vs `metrics/events_on`: the same 1,000 events,
//!   without and with what the function worker records per invocation for
//!   `/metrics` (two clock reads, the duration histogram, fuel used,
//!   invocation and error counters: `dispatch::Counters::record`),
//!   interleaved in one run. Their ratio is the hot-path cost of metrics.
//!
//! Run: `cargo bench -p perch --bench runtime` (builds the example modules
//! first, with the rustup target wasm32-unknown-unknown and clang + lld).

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use perch::functions::manifest::Manifest;
use perch::functions::runtime::{Runtime, Seed};
use perch_sdk::export::{dispatch_event, EventBuffer};
use perch_sdk::testing::TestHost;
use sha2::Digest;

const MANIFEST: &str = include_str!("../../sdk/examples/threshold-alert/manifest.toml");

const TOPIC: &str = "sensors/kitchen/temperature";
const BELOW: &[u8] = br#"{"device":"kitchen","temperature":21.5}"#;
const ABOVE: &[u8] = br#"{"device":"kitchen","temperature":31.25}"#;

/// A function that does nothing: what is left is the host's cost of an
/// event (copy into the event buffer, fuel refill, the call, release).
const EMPTY_WAT: &str = r#"(module (memory (export "memory") 1)
    (func (export "perch_abi_version") (result i32) (i32.const 1))
    (func (export "perch_event_buffer") (result i32) (i32.const 1024))
    (func (export "perch_event_buffer_len") (result i32) (i32.const 4096))
    (func (export "perch_on_event") (param i32 i32 i64) (result i32) (i32.const 0)))"#;

#[path = "common/module_200kb.rs"]
mod module_200kb;
use module_200kb::module_200kb;

fn runtime() -> Runtime {
    // The bench never emits or forwards; the receiver may go.
    let (tx, _rx) = tokio::sync::mpsc::channel(1);
    Runtime::new(tx)
}

/// `threshold-alert.wasm` as `sdk/build-examples.sh` builds it for users
/// (same script, same profile). Built into the directory the SDK's ABI tests
/// use, so the two share one build.
fn threshold_wasm() -> &'static [u8] {
    static WASM: OnceLock<Vec<u8>> = OnceLock::new();
    WASM.get_or_init(build_threshold_wasm)
}

fn build_threshold_wasm() -> Vec<u8> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("perch-wasm");
    let out = base.join("perch-examples");
    let script = root.join("sdk/build-examples.sh");
    let output = Command::new("bash")
        .arg(&script)
        .env("CARGO_TARGET_DIR", &base)
        .env("PERCH_EXAMPLES_OUT", &out)
        .output()
        .unwrap_or_else(|e| panic!("could not run {}: {e}", script.display()));
    assert!(
        output.status.success(),
        "{} failed ({}); it needs the rustup target wasm32-unknown-unknown and clang + lld \
         (./test.sh installs both):\n{}",
        script.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let path = out.join("threshold-alert.wasm");
    let wasm = std::fs::read(&path).unwrap_or_else(|e| panic!("{} missing: {e}", path.display()));
    eprintln!("threshold-alert.wasm: {} bytes", wasm.len());
    wasm
}

/// Fails loudly (the bench aborts with "has overflowed its stack") if wasmi's
/// tail-call dispatcher lost its sibling-call optimisation in this profile:
/// 50 million fuel of guest loop on a 256 KiB native stack. The same check
/// runs in the test profile as a unit test
/// (`long_guest_loops_run_in_constant_native_stack`); this one covers the
/// release profile the binary ships with.
fn check_constant_stack(rt: &Runtime) {
    const LOOP_WAT: &str = r#"(module (memory (export "memory") 1)
      (func (export "perch_abi_version") (result i32) (i32.const 1))
      (func (export "perch_event_buffer") (result i32) (i32.const 1024))
      (func (export "perch_event_buffer_len") (result i32) (i32.const 4096))
      (func $step (param i32) (result i32) (i32.add (local.get 0) (i32.const 1)))
      (func (export "perch_on_event") (param i32 i32 i64) (result i32) (local $n i32)
        (loop $l
          (local.set $n (call $step (local.get $n)))
          (br_if $l (i32.ne (local.get $n) (i32.const -1))))
        (i32.const 0)))"#;
    let manifest = Manifest::from_toml(
        "name = \"spin\"\nversion = \"1.0.0\"\n[triggers]\ntopics = [\"t\"]\n\
         [limits]\nfuel = 50000000\n",
    )
    .unwrap();
    let compiled = rt
        .compile(manifest, &wat::parse_str(LOOP_WAT).unwrap())
        .unwrap();
    let mut instance = rt
        .instantiate(&compiled, Seed::default())
        .map_err(|(e, _)| e)
        .unwrap();
    let result = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || instance.on_event(b"t", b"", 1))
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(result.unwrap_err().kind(), "out_of_fuel");
}

fn event(c: &mut Criterion) {
    let rt = runtime();
    check_constant_stack(&rt);
    let compiled = rt
        .compile(Manifest::from_toml(MANIFEST).unwrap(), threshold_wasm())
        .unwrap();
    let mut instance = rt
        .instantiate(&compiled, Seed::default())
        .map_err(|(e, _)| e)
        .unwrap();
    // The native twin: the same crate, the same SDK entry point the wasm
    // export calls, the SDK's in-process host reading the same manifest.
    let mut host = TestHost::from_manifest(MANIFEST).unwrap();
    let buf: Box<EventBuffer<4096>> = Box::default();

    // Optionally the same function built other ways (from an older SDK,
    // at another opt-level), measured side by side: their paths in
    // PERCH_BENCH_BASELINE_WASM, separated like PATH (`a.wasm:b.wasm`),
    // each named by its file stem.
    let budget = compiled.manifest.limits.fuel;
    print_fuel("threshold-alert", &mut instance, budget);
    let mut baselines: Vec<(String, perch::functions::runtime::Instance)> =
        std::env::var_os("PERCH_BENCH_BASELINE_WASM")
            .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .map(|path| {
                let wasm = std::fs::read(&path)
                    .unwrap_or_else(|e| panic!("PERCH_BENCH_BASELINE_WASM: {path:?}: {e}"));
                let compiled = rt
                    .compile(Manifest::from_toml(MANIFEST).unwrap(), &wasm)
                    .unwrap();
                let mut b = rt
                    .instantiate(&compiled, Seed::default())
                    .map_err(|(e, _)| e)
                    .unwrap();
                let name = path
                    .file_stem()
                    .map_or("baseline".into(), |s| s.to_string_lossy().into_owned());
                print_fuel(&format!("baseline {name}"), &mut b, budget);
                (name, b)
            })
            .collect();

    let mut group = c.benchmark_group("event");
    // The host's fixed cost per event: a handler that returns at once.
    let empty = rt
        .compile(
            Manifest::from_toml(MANIFEST).unwrap(),
            &wat::parse_str(EMPTY_WAT).unwrap(),
        )
        .unwrap();
    let mut empty = rt
        .instantiate(&empty, Seed::default())
        .map_err(|(e, _)| e)
        .unwrap();
    group.bench_function("empty_wasm", |b| {
        b.iter(|| {
            empty
                .on_event(TOPIC.as_bytes(), black_box(BELOW), 1)
                .unwrap();
            empty.release(|t, p| {
                black_box((t, p));
            });
        })
    });
    for (label, payload, alerts) in [("below", BELOW, 0), ("above", ABOVE, 1)] {
        group.bench_function(format!("threshold_wasm_{label}"), |b| {
            b.iter(|| {
                instance
                    .on_event(TOPIC.as_bytes(), black_box(payload), 1)
                    .unwrap();
                let mut n = 0;
                instance.release(|t, p| {
                    black_box((t, p));
                    n += 1;
                });
                assert_eq!(n, alerts);
            })
        });
        for (name, baseline) in baselines.iter_mut() {
            group.bench_function(format!("threshold_baseline_{name}_{label}"), |b| {
                b.iter(|| {
                    baseline
                        .on_event(TOPIC.as_bytes(), black_box(payload), 1)
                        .unwrap();
                    let mut n = 0;
                    baseline.release(|t, p| {
                        black_box((t, p));
                        n += 1;
                    });
                    assert_eq!(n, alerts);
                })
            });
        }
        group.bench_function(format!("threshold_native_{label}"), |b| {
            b.iter(|| {
                let payload = black_box(payload);
                // SAFETY: nothing borrows the buffer between calls.
                unsafe { buf.write(TOPIC.as_bytes(), payload) }.unwrap();
                let (tl, pl) = (TOPIC.len() as i32, payload.len() as i32);
                // SAFETY: nothing writes the buffer during the call.
                let rc = host
                    .run(|_| unsafe { dispatch_event(&buf, tl, pl, 1, threshold_alert::on_event) });
                assert_eq!(rc, 0);
                assert_eq!(host.published().len(), alerts);
                host.clear_outputs();
            })
        });
    }
    group.finish();
}

/// Prints the fuel (about one unit per wasm instruction: the guest's work,
/// whatever the machine's load) one event below and one above the limit
/// takes. Twice each: lazy translation charges a function's first call.
fn print_fuel(name: &str, instance: &mut perch::functions::runtime::Instance, budget: u64) {
    for (label, payload) in [("below", BELOW), ("above", ABOVE)].repeat(2) {
        instance.on_event(TOPIC.as_bytes(), payload, 1).unwrap();
        eprintln!(
            "{name}: fuel per event {label} the limit: {}",
            budget - instance.fuel_left()
        );
        instance.release(|t, p| {
            black_box((t, p));
        });
    }
}

/// A bare wasmi engine in `mode`, with perch's fuel and parse limits, to
/// time one phase of compilation on its own.
fn engine(mode: wasmi::CompilationMode) -> wasmi::Engine {
    let mut config = wasmi::Config::default();
    config
        .consume_fuel(true)
        .compilation_mode(mode)
        .enforced_limits(wasmi::EnforcedLimits::strict());
    wasmi::Engine::new(&config)
}

fn deploy(c: &mut Criterion) {
    use wasmi::CompilationMode::{Eager, Lazy, LazyTranslation};
    let rt = runtime();
    let wasm = module_200kb();
    let manifest =
        Manifest::from_toml("name = \"big\"\nversion = \"1.0.0\"\n[triggers]\ntopics = [\"a\"]\n")
            .unwrap();
    eprintln!("deploy benchmark module: {} bytes", wasm.len());
    let mut group = c.benchmark_group("deploy");
    for (phase, mode) in [
        ("parse", Lazy),
        ("parse_validate", LazyTranslation),
        ("translate_all", Eager),
    ] {
        let engine = engine(mode);
        group.bench_function(format!("{phase}_200kb"), |b| {
            b.iter(|| wasmi::Module::new(&engine, black_box(&wasm)).unwrap())
        });
    }
    group.bench_function("sha256_200kb", |b| {
        b.iter(|| sha2::Sha256::digest(black_box(&wasm)))
    });
    let compiled = rt.compile(manifest.clone(), &wasm).unwrap();
    group.bench_function("instantiate_200kb", |b| {
        b.iter(|| {
            rt.instantiate(&compiled, Seed::default())
                .map_err(|(e, _)| e)
                .unwrap()
        })
    });
    group.bench_function("compile_instantiate_200kb", |b| {
        b.iter(|| {
            let compiled = rt.compile(manifest.clone(), black_box(&wasm)).unwrap();
            rt.instantiate(&compiled, Seed::default())
                .map_err(|(e, _)| e)
                .unwrap()
        })
    });
    group.finish();
}

fn throughput(c: &mut Criterion) {
    let rt = runtime();
    let compiled = rt
        .compile(Manifest::from_toml(MANIFEST).unwrap(), threshold_wasm())
        .unwrap();
    let mut instance = rt
        .instantiate(&compiled, Seed::default())
        .map_err(|(e, _)| e)
        .unwrap();
    const EVENTS: u64 = 1_000;
    let mut group = c.benchmark_group("throughput");
    group.throughput(Throughput::Elements(EVENTS));
    group.bench_function("events", |b| {
        b.iter(|| {
            for i in 0..EVENTS {
                // One reading in ten is above the limit.
                let payload = if i % 10 == 0 { ABOVE } else { BELOW };
                instance
                    .on_event(TOPIC.as_bytes(), payload, i as i64)
                    .unwrap();
                instance.release(|t, p| {
                    black_box((t, p));
                });
            }
        })
    });
    group.finish();
}

fn metrics(c: &mut Criterion) {
    use perch::functions::dispatch::Counters;
    use std::time::Instant;
    let rt = runtime();
    let compiled = rt
        .compile(Manifest::from_toml(MANIFEST).unwrap(), threshold_wasm())
        .unwrap();
    let mut instance = rt
        .instantiate(&compiled, Seed::default())
        .map_err(|(e, _)| e)
        .unwrap();
    let fuel = compiled.manifest.limits.fuel;
    let counters = Counters::default();
    const EVENTS: u64 = 1_000;
    let mut group = c.benchmark_group("metrics");
    group.throughput(Throughput::Elements(EVENTS));
    // Several rounds of off/on, so that drift on a shared machine hits both.
    for round in 0..3 {
        group.bench_function(format!("events_off/{round}"), |b| {
            b.iter(|| {
                for i in 0..EVENTS {
                    let payload = if i % 10 == 0 { ABOVE } else { BELOW };
                    let result = instance.on_event(TOPIC.as_bytes(), payload, i as i64);
                    black_box(&result);
                    instance.release(|t, p| {
                        black_box((t, p));
                    });
                }
            })
        });
        group.bench_function(format!("events_on/{round}"), |b| {
            b.iter(|| {
                for i in 0..EVENTS {
                    let payload = if i % 10 == 0 { ABOVE } else { BELOW };
                    let started = Instant::now();
                    let result = instance.on_event(TOPIC.as_bytes(), payload, i as i64);
                    let used = fuel.saturating_sub(instance.fuel_left());
                    // In the order the worker does it (`Worker::finish`).
                    counters.record(started, used, result.as_ref().err());
                    instance.release(|t, p| {
                        black_box((t, p));
                    });
                }
            })
        });
    }
    group.finish();
    black_box(&counters);
}

criterion_group!(benches, event, deploy, throughput, metrics);
criterion_main!(benches);
