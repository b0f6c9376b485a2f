//! Benchmarks of the function runtime alone (no broker, no SQLite):
//!
//! - `event/threshold_wasm` vs `event/threshold_native`: one event through
//!   threshold-alert in wasm (tests/wat/threshold.wat: parse the reading,
//!   read and parse the `limit` config value, compare, publish when above)
//!   and the same logic compiled natively. Their ratio is the wasm overhead.
//! - `deploy/compile_instantiate_200kb`: validate + compile (lazily) +
//!   instantiate + ABI checks of a ~200 KB module.
//! - `throughput/events`: events per second through one reused instance.
//! - `metrics/events_off` vs `metrics/events_on`: the same 1,000 events,
//!   without and with what the function worker records per invocation for
//!   `/metrics` (two clock reads, the duration histogram, fuel used,
//!   invocation and error counters: `dispatch::Counters::record`),
//!   interleaved in one run. Their ratio is the hot-path cost of metrics.
//!
//! Run: `cargo bench -p perch --bench runtime`.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use perch::functions::manifest::Manifest;
use perch::functions::runtime::{Runtime, Seed};

const THRESHOLD_WAT: &str = include_str!("../../tests/wat/threshold.wat");

const MANIFEST: &str = r#"
name = "threshold-alert"
version = "1.0.0"
[triggers]
topics = ["sensors/+/temperature"]
[publish]
allow = ["alerts/#"]
[config]
limit = 30.0
"#;

const TOPIC: &[u8] = b"sensors/kitchen/temperature";

fn runtime() -> Runtime {
    // The bench never emits or forwards; the receiver may go.
    let (tx, _rx) = tokio::sync::mpsc::channel(1);
    Runtime::new(tx)
}

/// The native twin of threshold.wat: the same parse, the same config lookup
/// per event, the same copy of topic and payload for the publish.
fn threshold_native(
    config: &[(&str, &str)],
    payload: &[u8],
) -> Result<Option<(Bytes, Bytes)>, i32> {
    fn parse(b: &[u8]) -> Option<f64> {
        std::str::from_utf8(b).ok()?.parse().ok()
    }
    let value = parse(payload).ok_or(1)?;
    let limit = config
        .iter()
        .find(|(k, _)| *k == "limit")
        .and_then(|(_, v)| parse(v.as_bytes()))
        .ok_or(3)?;
    if value > limit {
        return Ok(Some((
            Bytes::copy_from_slice(b"alerts/temperature"),
            Bytes::copy_from_slice(payload),
        )));
    }
    Ok(None)
}

fn event(c: &mut Criterion) {
    let rt = runtime();
    let compiled = rt
        .compile(
            Manifest::from_toml(MANIFEST).unwrap(),
            &wat::parse_str(THRESHOLD_WAT).unwrap(),
        )
        .unwrap();
    let mut instance = rt
        .instantiate(&compiled, Seed::default())
        .map_err(|(e, _)| e)
        .unwrap();
    let mut group = c.benchmark_group("event");
    for (label, payload) in [("below", &b"21.5"[..]), ("above", &b"31.25"[..])] {
        group.bench_function(format!("threshold_wasm_{label}"), |b| {
            b.iter(|| {
                instance.on_event(TOPIC, black_box(payload), 1).unwrap();
                let mut n = 0;
                instance.release(|t, p| {
                    black_box((t, p));
                    n += 1;
                });
                n
            })
        });
        let config = [("limit", "30.0")];
        group.bench_function(format!("threshold_native_{label}"), |b| {
            b.iter(|| {
                let _topic = black_box(TOPIC);
                threshold_native(black_box(&config), black_box(payload))
            })
        });
    }
    group.finish();
}

/// A valid perch module of about 200 KB: the ABI exports plus many
/// functions with real bodies (what a module with a JSON parser and some
/// logic weighs).
fn module_200kb() -> Vec<u8> {
    let head = "(module (memory (export \"memory\") 1)
         (func (export \"perch_abi_version\") (result i32) (i32.const 1))
         (func (export \"perch_event_buffer\") (result i32) (i32.const 1024))
         (func (export \"perch_event_buffer_len\") (result i32) (i32.const 4096))
         (func (export \"perch_on_event\") (param i32 i32 i64) (result i32) (call $f0 (local.get 0)))\n";
    let mut funcs = String::new();
    let mut n: u32 = 0;
    loop {
        for _ in 0..100 {
            // Each function does some memory work and calls the one before.
            funcs.push_str(&format!(
                "(func $f{n} (param $x i32) (result i32) (local $a i32)\n"
            ));
            for k in 0..12 {
                funcs.push_str(&format!(
                    "(local.set $a (i32.add (i32.mul (local.get $x) (i32.const {})) (i32.load offset={} (i32.const 0))))\n\
                     (i32.store offset={} (i32.const 0) (i32.xor (local.get $a) (i32.const {})))\n",
                    k * 7 + 3,
                    (k * 4) % 512,
                    (k * 8) % 512,
                    n ^ k
                ));
            }
            let callee = n.saturating_sub(1);
            funcs.push_str(&format!(
                "(if (result i32) (i32.eqz (local.get $x)) (then (local.get $a)) \
                 (else (call $f{callee} (i32.sub (local.get $x) (i32.const 1))))))\n"
            ));
            n += 1;
        }
        let wasm = wat::parse_str(format!("{head}{funcs})")).unwrap();
        if wasm.len() >= 200 * 1024 {
            return wasm;
        }
    }
}

fn deploy(c: &mut Criterion) {
    let rt = runtime();
    let wasm = module_200kb();
    let manifest =
        Manifest::from_toml("name = \"big\"\nversion = \"1.0.0\"\n[triggers]\ntopics = [\"a\"]\n")
            .unwrap();
    eprintln!("deploy benchmark module: {} bytes", wasm.len());
    c.bench_function("deploy/compile_instantiate_200kb", |b| {
        b.iter(|| {
            let compiled = rt.compile(manifest.clone(), black_box(&wasm)).unwrap();
            rt.instantiate(&compiled, Seed::default())
                .map_err(|(e, _)| e)
                .unwrap()
        })
    });
}

fn throughput(c: &mut Criterion) {
    let rt = runtime();
    let compiled = rt
        .compile(
            Manifest::from_toml(MANIFEST).unwrap(),
            &wat::parse_str(THRESHOLD_WAT).unwrap(),
        )
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
                let payload: &[u8] = if i % 10 == 0 { b"31.25" } else { b"21.5" };
                instance.on_event(TOPIC, payload, i as i64).unwrap();
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
        .compile(
            Manifest::from_toml(MANIFEST).unwrap(),
            &wat::parse_str(THRESHOLD_WAT).unwrap(),
        )
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
                    let payload: &[u8] = if i % 10 == 0 { b"31.25" } else { b"21.5" };
                    let result = instance.on_event(TOPIC, payload, i as i64);
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
                    let payload: &[u8] = if i % 10 == 0 { b"31.25" } else { b"21.5" };
                    let started = Instant::now();
                    let result = instance.on_event(TOPIC, payload, i as i64);
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
