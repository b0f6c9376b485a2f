//! Tests of the wall-clock limit on calls into a guest and of running the
//! fuel in slices (`runtime::run`): a runaway call is stopped by time, fuel
//! buys exactly what it bought before the slicing, and translating a large
//! function on its first call cannot fail at a slice boundary.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::functions::manifest::Manifest;
use crate::functions::runtime::{Failure, Instance, Runtime, Seed, FUEL_SLICE};

const SPIN_WAT: &str = include_str!("../../../../tests/wat/spin.wat");

/// Counts down from the first byte of the payload times `per_byte`
/// iterations, then returns 0: the fuel it burns grows with that byte.
const COUNT_WAT: &str = r#"(module (memory (export "memory") 1)
  (func (export "perch_abi_version") (result i32) (i32.const 1))
  (func (export "perch_event_buffer") (result i32) (i32.const 1024))
  (func (export "perch_event_buffer_len") (result i32) (i32.const 4096))
  (func (export "perch_on_event") (param $tl i32) (param $pl i32) (param i64) (result i32)
    (local $n i32)
    (local.set $n (i32.mul (i32.load8_u (i32.add (i32.const 1024) (local.get $tl)))
                           (i32.const 100000)))
    (loop $l
      (local.set $n (i32.sub (local.get $n) (i32.const 1)))
      (br_if $l (i32.gt_s (local.get $n) (i32.const 0))))
    (i32.const 0)))"#;

fn manifest(limits: &str) -> Manifest {
    Manifest::from_toml(&format!(
        "name = \"limited\"\nversion = \"1.0.0\"\n[triggers]\ntopics = [\"t\"]\n[limits]\n{limits}\n"
    ))
    .unwrap()
}

fn instance(rt: &Runtime, wat: &str, limits: &str) -> Instance {
    let wasm = wat::parse_str(wat).expect("test WAT is valid");
    let compiled = rt.compile(manifest(limits), &wasm).unwrap();
    rt.instantiate(&compiled, Seed::default())
        .map_err(|(e, _)| e)
        .unwrap()
}

fn runtime() -> Runtime {
    let (tx, _rx) = mpsc::channel(8);
    Runtime::new(tx)
}

#[test]
fn a_runaway_call_is_stopped_at_its_time_limit_not_its_fuel() {
    let rt = runtime();
    // Enough fuel to spin for minutes; the limit is what must stop it.
    let fuel = 1_000_000_000_000u64;
    let mut i = instance(&rt, SPIN_WAT, &format!("fuel = {fuel}\ntimeout_ms = 150"));
    let started = Instant::now();
    let result = i.on_event(b"t", b"x", 1);
    let took = started.elapsed();
    assert_eq!(result, Err(Failure::Timeout { limit_ms: 150 }));
    assert!(
        took >= Duration::from_millis(150),
        "stopped early: {took:?}"
    );
    // Stopped by its clock: nowhere near its fuel (which would take hours),
    // and within its limit plus the few slices a loaded machine may add.
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(i.fuel_left() > fuel / 2, "{} fuel left", i.fuel_left());
    assert!(i.is_poisoned(), "a stopped call leaves the guest half-way");
    let text = Failure::Timeout { limit_ms: 150 }.to_string();
    assert!(text.contains("150 ms (limits.timeout_ms"), "{text}");
    assert_eq!(Failure::Timeout { limit_ms: 150 }.kind(), "timeout");
}

#[test]
fn the_gateway_default_applies_when_the_manifest_sets_no_limit() {
    let rt = runtime().default_timeout_ms(60);
    let mut i = instance(&rt, SPIN_WAT, "fuel = 1000000000000");
    assert_eq!(
        i.on_event(b"t", b"x", 1),
        Err(Failure::Timeout { limit_ms: 60 })
    );
    // The manifest's own limit wins over the default.
    let mut i = instance(&rt, SPIN_WAT, "fuel = 1000000000000\ntimeout_ms = 80");
    assert_eq!(
        i.on_event(b"t", b"x", 1),
        Err(Failure::Timeout { limit_ms: 80 })
    );
}

#[test]
fn fuel_buys_the_same_across_slices_to_the_unit() {
    let rt = runtime();
    // 40 × 100,000 iterations: several slices' worth of fuel.
    let budget = 100 * FUEL_SLICE;
    let mut i = instance(
        &rt,
        COUNT_WAT,
        &format!("fuel = {budget}\ntimeout_ms = 60000"),
    );
    i.on_event(b"t", &[40], 1).unwrap();
    let used = budget - i.fuel_left();
    assert!(
        used > 3 * FUEL_SLICE,
        "used {used}: the test needs several slices"
    );
    // Exactly that fuel is enough, one unit less is not.
    let mut exact = instance(
        &rt,
        COUNT_WAT,
        &format!("fuel = {used}\ntimeout_ms = 60000"),
    );
    exact.on_event(b"t", &[40], 1).unwrap();
    assert_eq!(exact.fuel_left(), 0);
    let mut short = instance(
        &rt,
        COUNT_WAT,
        &format!("fuel = {}\ntimeout_ms = 60000", used - 1),
    );
    assert_eq!(
        short.on_event(b"t", &[40], 1),
        Err(Failure::Trap("out_of_fuel"))
    );
}

/// wasmi cannot resume a call whose fuel slice runs out while it translates
/// a function on its first call; translation is therefore charged no fuel.
/// A body this large cost more than a whole slice to translate (7 units a
/// byte), so with translation charged its first call failed with
/// `out_of_fuel` whatever its budget.
#[test]
fn translating_a_function_larger_than_a_slice_does_not_fail_its_call() {
    let body = "(drop (i32.const 1000000))".repeat(40_000);
    let wat = format!(
        r#"(module (memory (export "memory") 1)
  (func (export "perch_abi_version") (result i32) (i32.const 1))
  (func (export "perch_event_buffer") (result i32) (i32.const 1024))
  (func (export "perch_event_buffer_len") (result i32) (i32.const 4096))
  (func $big {body})
  (func (export "perch_on_event") (param i32 i32 i64) (result i32)
    (call $big)
    (i32.const 0)))"#
    );
    let wasm = wat::parse_str(&wat).unwrap();
    assert!(wasm.len() as u64 * 7 > FUEL_SLICE, "{} bytes", wasm.len());
    let rt = runtime();
    let mut i = instance(&rt, &wat, "fuel = 50000000");
    i.on_event(b"t", b"x", 1).unwrap();
    i.on_event(b"t", b"x", 1).unwrap();
}

/// wasmi runs a start section inside instantiation, where the clock cannot
/// be read: it gets at most `START_FUEL`, whatever the manifest's fuel.
#[test]
fn a_spinning_start_function_gets_bounded_fuel_not_the_manifests() {
    let wat = r#"(module (memory (export "memory") 1)
  (func $spin (loop $l (br $l)))
  (start $spin)
  (func (export "perch_abi_version") (result i32) (i32.const 1))
  (func (export "perch_event_buffer") (result i32) (i32.const 1024))
  (func (export "perch_event_buffer_len") (result i32) (i32.const 4096))
  (func (export "perch_on_event") (param i32 i32 i64) (result i32) (i32.const 0)))"#;
    let rt = runtime();
    let wasm = wat::parse_str(wat).unwrap();
    let compiled = rt
        .compile(manifest("fuel = 1000000000000\ntimeout_ms = 60000"), &wasm)
        .unwrap();
    let err = rt
        .instantiate(&compiled, Seed::default())
        .map(|_| ())
        .map_err(|(e, _)| e.to_string())
        .unwrap_err();
    assert_eq!(
        err,
        "calling `the start function` failed while starting the module: trap: out_of_fuel"
    );
}
