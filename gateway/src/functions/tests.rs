//! Tests of the functions stage: the runtime against WAT modules, and the
//! whole stage (registry, workers, trigger links) against a real broker
//! router and a real SQLite file.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use rumqttd::local::LinkRx;
use rumqttd::Notification;
use tokio::sync::mpsc;

use super::control::encode_bundle;
use super::manifest::Manifest;
use super::runtime::{code, Failure, Instance, Runtime, Seed};
use super::*;
use crate::broker::{Broker, BrokerConfig};

/// A module that exercises every import. `perch_on_event` counts events in
/// state ("count"), publishes the payload to `alerts/x`, emits `m` = 1.5,
/// forwards the payload to stream `s`, then misbehaves by the payload's first
/// byte: `L` loops forever, `G` grows memory past any sane limit, `E`
/// returns 7, `O` passes an out-of-bounds pointer, `R` recurses forever, `D`
/// publishes to a topic outside `publish.allow` and returns the result.
/// `perch_on_timer` publishes the config value `limit`.
pub const GOOD_WAT: &str = r#"
(module
  (import "perch" "publish" (func $publish (param i32 i32 i32 i32) (result i32)))
  (import "perch" "emit" (func $emit (param i32 i32 i32 i32 f64) (result i32)))
  (import "perch" "forward" (func $forward (param i32 i32 i32 i32) (result i32)))
  (import "perch" "state_get" (func $state_get (param i32 i32 i32 i32) (result i32)))
  (import "perch" "state_set" (func $state_set (param i32 i32 i32 i32) (result i32)))
  (import "perch" "config_get" (func $config_get (param i32 i32 i32 i32) (result i32)))
  (import "perch" "log" (func $log (param i32 i32 i32)))
  (import "perch" "now_ms" (func $now_ms (result i64)))
  (memory (export "memory") 1)
  (data (i32.const 0) "alerts/x")
  (data (i32.const 16) "m")
  (data (i32.const 20) "s")
  (data (i32.const 24) "count")
  (data (i32.const 32) "limit")
  (data (i32.const 40) "secret")
  (func (export "perch_abi_version") (result i32) (i32.const 1))
  (func (export "perch_event_buffer") (result i32) (i32.const 1024))
  (func (export "perch_event_buffer_len") (result i32) (i32.const 4096))
  (func (export "perch_init") (result i32)
    (call $log (i32.const 2) (i32.const 0) (i32.const 8))
    (i32.const 0))
  (func $recurse (result i32) (call $recurse))
  (func (export "perch_on_event") (param $tl i32) (param $pl i32) (param $ts i64) (result i32)
    (local $p i32) (local $c i32)
    (local.set $p (i32.add (i32.const 1024) (local.get $tl)))
    (if (i32.ne (call $state_get (i32.const 24) (i32.const 5) (i32.const 64) (i32.const 8)) (i32.const 8))
      (then (i64.store (i32.const 64) (i64.const 0))))
    (i64.store (i32.const 64) (i64.add (i64.load (i32.const 64)) (i64.const 1)))
    (drop (call $state_set (i32.const 24) (i32.const 5) (i32.const 64) (i32.const 8)))
    (drop (call $publish (i32.const 0) (i32.const 8) (local.get $p) (local.get $pl)))
    (drop (call $emit (i32.const 16) (i32.const 1) (i32.const 0) (i32.const 0) (f64.const 1.5)))
    (drop (call $forward (i32.const 20) (i32.const 1) (local.get $p) (local.get $pl)))
    (local.set $c (if (result i32) (local.get $pl)
      (then (i32.load8_u (local.get $p))) (else (i32.const 0))))
    (if (i32.eq (local.get $c) (i32.const 76)) (then (loop $l (br $l))))
    (if (i32.eq (local.get $c) (i32.const 71)) (then (drop (memory.grow (i32.const 100)))))
    (if (i32.eq (local.get $c) (i32.const 69)) (then (return (i32.const 7))))
    (if (i32.eq (local.get $c) (i32.const 79))
      (then (drop (call $publish (i32.const -16) (i32.const 100) (i32.const 0) (i32.const 0)))))
    (if (i32.eq (local.get $c) (i32.const 82)) (then (drop (call $recurse))))
    (if (i32.eq (local.get $c) (i32.const 68))
      (then (return (call $publish (i32.const 40) (i32.const 6) (i32.const 0) (i32.const 0)))))
    (i32.const 0))
  (func (export "perch_on_timer") (param $ts i64) (result i32)
    (local $n i32)
    (local.set $n (call $config_get (i32.const 32) (i32.const 5) (i32.const 128) (i32.const 64)))
    (if (i32.lt_s (local.get $n) (i32.const 0)) (then (return (local.get $n))))
    (call $publish (i32.const 0) (i32.const 8) (i32.const 128) (local.get $n)))
)
"#;

pub const GOOD_MANIFEST: &str = r#"
name = "echo"
version = "1.0.0"
[triggers]
topics = ["sensors/#"]
[limits]
fuel = 1000000
max_consecutive_failures = 3
[publish]
allow = ["alerts/#"]
[config]
limit = 30.5
"#;

fn wasm(wat: &str) -> Vec<u8> {
    wat::parse_str(wat).expect("test WAT is valid")
}

fn runtime() -> (Runtime, mpsc::Receiver<Output>) {
    let (tx, rx) = mpsc::channel(64);
    (Runtime::new(tx), rx)
}

fn instance(rt: &Runtime, wat: &str, manifest: &str) -> Instance {
    let compiled = rt
        .compile(Manifest::from_toml(manifest).unwrap(), &wasm(wat))
        .unwrap();
    rt.instantiate(&compiled, Seed::default())
        .map_err(|(e, _)| e)
        .unwrap()
}

fn deploy_error(wat: &str, manifest: &str) -> String {
    let (rt, _rx) = runtime();
    let result = rt
        .compile(
            Manifest::from_toml(manifest).unwrap(),
            &wat::parse_str(wat).unwrap(),
        )
        .map_err(|e| e.to_string())
        .and_then(|c| {
            rt.instantiate(&c, Seed::default())
                .map(|_| ())
                .map_err(|(e, _)| e.to_string())
        });
    result.expect_err("the module should be refused")
}

fn released(instance: &mut Instance) -> Vec<(String, String)> {
    let mut out = Vec::new();
    instance.release(|t, p| {
        out.push((
            String::from_utf8(t.to_vec()).unwrap(),
            String::from_utf8(p.to_vec()).unwrap(),
        ))
    });
    out
}

#[test]
fn an_event_publishes_emits_forwards_and_counts_in_state() {
    let (rt, mut outputs) = runtime();
    let mut i = instance(&rt, GOOD_WAT, GOOD_MANIFEST);
    released(&mut i); // perch_init's (none)
    i.on_event(b"sensors/a", b"21.5", 7).unwrap();
    assert_eq!(
        released(&mut i),
        vec![("alerts/x".to_owned(), "21.5".to_owned())]
    );
    match outputs.try_recv().unwrap() {
        Output::Metric {
            function,
            metric,
            key,
            value,
            ..
        } => {
            assert_eq!(
                (&*function, metric.as_str(), key.as_str(), value),
                ("echo", "m", "", 1.5)
            );
        }
        other => panic!("expected a metric, got {other:?}"),
    }
    match outputs.try_recv().unwrap() {
        Output::Record { stream, record, .. } => {
            assert_eq!((stream.as_str(), &record[..]), ("s", &b"21.5"[..]));
        }
        other => panic!("expected a record, got {other:?}"),
    }
    i.on_event(b"sensors/a", b"22", 8).unwrap();
    released(&mut i);
    assert_eq!(i.state_mut().get(b"count"), Some(&2u64.to_le_bytes()[..]));
}

#[test]
fn config_values_are_read_as_toml_text() {
    let (rt, _outputs) = runtime();
    let mut i = instance(&rt, GOOD_WAT, GOOD_MANIFEST);
    i.on_timer(1).unwrap();
    assert_eq!(
        released(&mut i),
        vec![("alerts/x".to_owned(), "30.5".to_owned())]
    );
    let without = GOOD_MANIFEST.replace("limit = 30.5", "");
    let mut i = instance(&rt, GOOD_WAT, &without);
    assert_eq!(i.on_timer(1), Err(Failure::Returned(code::NOT_FOUND)));
}

/// `config_get` with the key taken from the event's payload: publishes the
/// value to `alerts/x`, or returns the error code.
#[test]
fn config_get_finds_each_key_and_names_bad_ones() {
    const WAT: &str = r#"(module
      (import "perch" "publish" (func $publish (param i32 i32 i32 i32) (result i32)))
      (import "perch" "config_get" (func $config_get (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (data (i32.const 0) "alerts/x")
      (func (export "perch_abi_version") (result i32) (i32.const 1))
      (func (export "perch_event_buffer") (result i32) (i32.const 1024))
      (func (export "perch_event_buffer_len") (result i32) (i32.const 4096))
      (func (export "perch_on_event") (param $tl i32) (param $pl i32) (param i64) (result i32)
        (local $n i32)
        (local.set $n (call $config_get (i32.add (i32.const 1024) (local.get $tl)) (local.get $pl)
                                        (i32.const 8192) (i32.const 64)))
        (if (i32.lt_s (local.get $n) (i32.const 0)) (then (return (local.get $n))))
        (call $publish (i32.const 0) (i32.const 8) (i32.const 8192) (local.get $n))))"#;
    let manifest = GOOD_MANIFEST.replace(
        "limit = 30.5",
        "zeta = 3\nlimit = 30.5\nb = true\na = \"x\"\nab = \"y\"",
    );
    let (rt, _outputs) = runtime();
    let mut i = instance(&rt, WAT, &manifest);
    for (key, value) in [
        ("a", "x"),
        ("ab", "y"),
        ("b", "true"),
        ("limit", "30.5"),
        ("zeta", "3"),
    ] {
        i.on_event(b"sensors/a", key.as_bytes(), 1).unwrap();
        assert_eq!(
            released(&mut i),
            vec![("alerts/x".to_owned(), value.to_owned())],
            "{key}"
        );
    }
    for (key, rc) in [
        (&b"lim"[..], code::NOT_FOUND),
        (b"", code::NOT_FOUND),
        (b"limit\xff", code::INVALID),
    ] {
        assert_eq!(
            i.on_event(b"sensors/a", key, 1),
            Err(Failure::Returned(rc)),
            "{key:?}"
        );
    }
}

#[test]
fn an_infinite_loop_runs_out_of_fuel_and_leaves_no_trace() {
    let (rt, mut outputs) = runtime();
    let mut i = instance(&rt, GOOD_WAT, GOOD_MANIFEST);
    assert_eq!(
        i.on_event(b"sensors/a", b"L", 1),
        Err(Failure::Trap("out_of_fuel"))
    );
    assert!(i.is_poisoned());
    // The publish, emit, forward and state write before the loop are gone.
    assert!(released(&mut i).is_empty());
    assert!(outputs.try_recv().is_err());
    assert_eq!(i.state_mut().get(b"count"), None);
    // The state survives re-creation; the new instance works.
    let compiled = rt
        .compile(Manifest::from_toml(GOOD_MANIFEST).unwrap(), &wasm(GOOD_WAT))
        .unwrap();
    let mut i = rt
        .instantiate(&compiled, i.into_seed())
        .map_err(|(e, _)| e)
        .unwrap();
    i.on_event(b"sensors/a", b"ok", 2).unwrap();
    assert_eq!(released(&mut i).len(), 1);
}

/// Regression test for the native stack overflow seen when wasmi's
/// tail-call dispatcher is built without sibling-call optimisation (see the
/// root Cargo.toml): each executed wasm instruction then costs a native stack
/// frame. Tens of millions of instructions (a loop with calls, branches and
/// arithmetic) on a 256 KiB native stack can only pass if the dispatcher
/// runs in constant stack space; if it does not, this test binary aborts
/// with "has overflowed its stack".
#[test]
fn long_guest_loops_run_in_constant_native_stack() {
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
    let manifest = "name = \"spin\"\nversion = \"1.0.0\"\n[triggers]\ntopics = [\"t\"]\n\
                    [limits]\nfuel = 50000000\n";
    let (rt, _outputs) = runtime();
    let mut i = instance(&rt, LOOP_WAT, manifest);
    let (result, fuel_left) = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || {
            let result = i.on_event(b"t", b"", 1);
            (result, i.fuel_left())
        })
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(result, Err(Failure::Trap("out_of_fuel")));
    // Fuel is charged per block, so a few units may be left over.
    assert!(
        fuel_left < 100,
        "{fuel_left} fuel left: the loop stopped early"
    );
}

#[test]
fn traps_are_named_by_kind() {
    let (rt, _outputs) = runtime();
    for (payload, kind) in [
        (&b"G"[..], "memory_limit"),
        (b"O", "memory_out_of_bounds"),
        (b"R", "stack_overflow"),
    ] {
        let mut i = instance(&rt, GOOD_WAT, GOOD_MANIFEST);
        assert_eq!(i.on_event(b"t", payload, 1), Err(Failure::Trap(kind)));
        assert!(i.is_poisoned());
    }
}

#[test]
fn a_non_zero_return_is_a_failure_but_its_outputs_stand() {
    let (rt, _outputs) = runtime();
    let mut i = instance(&rt, GOOD_WAT, GOOD_MANIFEST);
    assert_eq!(i.on_event(b"t", b"E", 1), Err(Failure::Returned(7)));
    assert!(!i.is_poisoned());
    assert_eq!(released(&mut i).len(), 1);
}

#[test]
fn publishing_outside_the_allowed_topics_is_denied_and_counted() {
    let (rt, _outputs) = runtime();
    let compiled = rt
        .compile(Manifest::from_toml(GOOD_MANIFEST).unwrap(), &wasm(GOOD_WAT))
        .unwrap();
    let seed = Seed::default();
    let counters = seed.counters.clone();
    let mut i = rt.instantiate(&compiled, seed).map_err(|(e, _)| e).unwrap();
    assert_eq!(
        i.on_event(b"t", b"D", 1),
        Err(Failure::Returned(code::DENIED))
    );
    assert_eq!(counters.denied.load(Ordering::Relaxed), 1);
    // Only the allowed publish went out.
    assert_eq!(released(&mut i), vec![("alerts/x".into(), "D".into())]);
}

#[test]
fn the_gateways_topics_are_denied_even_when_allowed() {
    let (rt, _outputs) = runtime();
    // The control topics, the gateway's own status (its id, another's),
    // function statuses and logs, fleet requests: all under `perch/`.
    for topic in [
        "perch/g/fn/deploy",
        "perch/g/status",
        "perch/other-gateway/status",
        "perch/g/fn/echo/status",
        "perch/g/fn/echo/logs",
        "perch/fleet/all/deploy/echo",
    ] {
        // At 200, clear of the state and config scratch space.
        let wat = GOOD_WAT
            .replace(
                "(data (i32.const 40) \"secret\")",
                &format!("(data (i32.const 200) {topic:?})"),
            )
            .replace(
                "(i32.const 40) (i32.const 6)",
                &format!("(i32.const 200) (i32.const {})", topic.len()),
            );
        for allow in ["#", "perch/#", topic] {
            let manifest =
                GOOD_MANIFEST.replace("allow = [\"alerts/#\"]", &format!("allow = [{allow:?}]"));
            let compiled = rt
                .compile(Manifest::from_toml(&manifest).unwrap(), &wasm(&wat))
                .unwrap();
            let seed = Seed::default();
            let counters = seed.counters.clone();
            let mut i = rt.instantiate(&compiled, seed).map_err(|(e, _)| e).unwrap();
            assert_eq!(
                i.on_event(b"t", b"D", 1),
                Err(Failure::Returned(code::DENIED)),
                "{topic} with allow = [{allow:?}]"
            );
            // Under `perch/#` or the topic alone, its `alerts/x` publish
            // is denied too.
            let denied = if allow == "#" { 1 } else { 2 };
            assert_eq!(counters.denied.load(Ordering::Relaxed), denied, "{topic}");
            let out = released(&mut i);
            assert!(out.iter().all(|(t, _)| t == "alerts/x"), "{topic}: {out:?}");
        }
    }
    // A topic that only starts like the namespace is the function's.
    let wat = GOOD_WAT.replace("\"secret\"", "\"perchx\"");
    let manifest = GOOD_MANIFEST.replace("allow = [\"alerts/#\"]", "allow = [\"#\"]");
    let mut i = instance(&rt, &wat, &manifest);
    assert_eq!(i.on_event(b"t", b"D", 1), Ok(()));
}

#[test]
fn output_bytes_are_limited_per_invocation() {
    let (rt, _outputs) = runtime();
    let manifest = GOOD_MANIFEST.replace("fuel = 1000000", "fuel = 1000000\noutput_bytes = 4");
    let mut i = instance(&rt, GOOD_WAT, &manifest);
    // The 5-byte publish gets LIMIT (the handler ignores it); the 4-byte
    // budget then still covers nothing larger.
    i.on_event(b"t", b"12345", 1).unwrap();
    assert!(released(&mut i).is_empty());
    i.on_event(b"t", b"1234", 1).unwrap();
    assert_eq!(released(&mut i).len(), 1);
}

#[test]
fn an_event_larger_than_the_buffer_is_not_delivered() {
    let (rt, _outputs) = runtime();
    let mut i = instance(&rt, GOOD_WAT, GOOD_MANIFEST);
    let big = vec![b'x'; 5000];
    let failure = i.on_event(b"t", &big, 1).unwrap_err();
    assert_eq!(
        failure,
        Failure::EventTooLarge {
            needed: 5001,
            capacity: 4096
        }
    );
    assert!(failure.to_string().contains("event_too_large"));
    assert!(!i.is_poisoned());
}

#[test]
fn a_file_that_is_not_wasm_is_refused() {
    let (rt, _rx) = runtime();
    let m = || Manifest::from_toml(GOOD_MANIFEST).unwrap();
    let err = rt
        .compile(m(), b"#!/bin/sh\necho hi\n")
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("not a WebAssembly module"), "{err}");
    assert!(err.contains("23 21 2f 62"), "{err}");
    let err = rt.compile(m(), b"").err().unwrap().to_string();
    assert!(err.contains("the file is empty"), "{err}");
    let err = rt
        .compile(m(), GOOD_WAT.as_bytes())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("not source, text (.wat)"), "{err}");
    let err = rt
        .compile(m(), b"\0asm\x01\0\0\0\x01\xff")
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("not valid WebAssembly"), "{err}");
    let err = rt
        .compile(m(), b"\0asm\x0d\0\x01\0")
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("component"), "{err}");
}

/// Found by the `bundle` fuzz target: a code section that declares no
/// function bodies but a huge size made wasmi 2.0 divide by the count
/// (zero) while parsing: a panic, which aborts the release gateway. It is
/// refused with a reply instead. The module is the fuzzer's input, minus
/// the bundle around it.
#[test]
fn a_code_section_with_no_bodies_but_bytes_is_refused_not_a_panic() {
    let (rt, _rx) = runtime();
    let wasm = b"\x00\x61\x73\x6d\x01\x00\x00\x00\x01\x0c\x02\x60\x00\x01\x7f\x60\x03\x7f\x7f\x7e\x01\x7f\x03\x05\x04\x00\x00\x00\x01\x05\x03\x01\x00\x01\x07\x5d\x05\x06\x6d\x65\x6d\x6f\x72\x79\x02\x00\x11\x70\x65\x72\x63\x68\x5f\x61\x62\x69\x5f\x76\x65\x72\x73\x69\x6f\x6e\x00\x00\x12\x70\x65\x72\x63\x68\x5f\x65\x76\x65\x6e\x74\x5f\x62\x75\x66\x66\x65\x72\x00\x01\x16\x70\x65\x72\x63\x68\x5f\x65\x76\x65\x6e\x74\x5f\x62\x75\x66\x66\x65\x72\x5f\x63\x65\x6e\x00\x02\x0e\x70\x65\x72\x63\x68\x5f\x6f\x6e\x5f\x65\x76\x65\x6e\x74\x00\x03\x0a\xc9\x93\xc0\x13\x00\x00\x00\x00\x00\x41\x80\x08\x0b\x05\x00\x41\x80\x20\x0b\x04\x00\x41\x00\x0b";
    let m = Manifest::from_toml(GOOD_MANIFEST).unwrap();
    let err = rt.compile(m, wasm).err().unwrap().to_string();
    assert!(
        err.contains("declares no function bodies but 40896969 bytes"),
        "{err}"
    );
    // An empty code section (count 0, nothing else) is still fine to
    // hand to wasmi, which judges the rest.
    let m = Manifest::from_toml(GOOD_MANIFEST).unwrap();
    let err = rt
        .compile(m, b"\0asm\x01\0\0\0\x0a\x01\x00")
        .err()
        .unwrap()
        .to_string();
    assert!(!err.contains("declares no function bodies"), "{err}");
}

#[test]
fn missing_and_mistyped_exports_are_named() {
    let err = deploy_error(
        &GOOD_WAT.replace(
            "(func (export \"perch_event_buffer_len\") (result i32) (i32.const 4096))",
            "",
        ),
        GOOD_MANIFEST,
    );
    assert!(
        err.contains("does not export `perch_event_buffer_len` (func () -> i32)"),
        "{err}"
    );
    let err = deploy_error(
        &GOOD_WAT.replace(
            "(param $tl i32) (param $pl i32) (param $ts i64)",
            "(param $tl i32) (param $pl i32) (param $ts i32)",
        ),
        GOOD_MANIFEST,
    );
    assert!(
        err.contains("exports `perch_on_event` as func (i32, i32, i32) -> i32"),
        "{err}"
    );
    assert!(err.contains("needs func (i32, i32, i64) -> i32"), "{err}");
    let timer_only = GOOD_MANIFEST.replace("topics = [\"sensors/#\"]", "every_ms = 1000");
    let err = deploy_error(
        &GOOD_WAT.replace("(export \"perch_on_timer\")", ""),
        &timer_only,
    );
    assert!(err.contains("`perch_on_timer`"), "{err}");
    assert!(
        err.contains("because the manifest has triggers.every_ms"),
        "{err}"
    );
    let err = deploy_error(
        &GOOD_WAT.replace("(memory (export \"memory\") 1)", "(memory 1)"),
        GOOD_MANIFEST,
    );
    assert!(err.contains("does not export `memory`"), "{err}");
}

#[test]
fn another_abi_version_is_refused_naming_both() {
    let err = deploy_error(
        &GOOD_WAT.replace(
            "(func (export \"perch_abi_version\") (result i32) (i32.const 1))",
            "(func (export \"perch_abi_version\") (result i32) (i32.const 2))",
        ),
        GOOD_MANIFEST,
    );
    assert!(err.contains("speaks perch ABI version 2"), "{err}");
    assert!(err.contains("this gateway speaks version 1"), "{err}");
}

#[test]
fn unknown_imports_and_wrong_signatures_are_named() {
    let err = deploy_error(
        &GOOD_WAT.replace(
            "(memory (export",
            "(import \"wasi_snapshot_preview1\" \"fd_write\" (func (param i32 i32 i32 i32) (result i32)))\n(memory (export",
        ),
        GOOD_MANIFEST,
    );
    assert!(
        err.contains("imports `wasi_snapshot_preview1.fd_write` (func (i32, i32, i32, i32) -> i32), which perch does not offer"),
        "{err}"
    );
    assert!(err.contains("publish, emit, forward"), "{err}");
    let err = deploy_error(
        &GOOD_WAT.replace(
            "(import \"perch\" \"now_ms\" (func $now_ms (result i64)))",
            "(import \"perch\" \"now_ms\" (func $now_ms (result i32)))",
        ),
        GOOD_MANIFEST,
    );
    assert!(
        err.contains(
            "imports `perch.now_ms` as func () -> i32, but perch offers it as func () -> i64"
        ),
        "{err}"
    );
}

#[test]
fn memory_and_buffer_beyond_the_limits_are_refused() {
    let err = deploy_error(
        &GOOD_WAT.replace(
            "(memory (export \"memory\") 1)",
            "(memory (export \"memory\") 17)",
        ),
        GOOD_MANIFEST,
    );
    assert!(err.contains("starts at 17 pages"), "{err}");
    assert!(err.contains("limits.memory_pages = 16"), "{err}");
    let err = deploy_error(
        &GOOD_WAT.replace(
            "(i32.const 1024))\n  (func (export \"perch_event_buffer_len\")",
            "(i32.const 65000))\n  (func (export \"perch_event_buffer_len\")",
        ),
        GOOD_MANIFEST,
    );
    assert!(
        err.contains("does not lie inside the module's memory of 65536 bytes"),
        "{err}"
    );
}

#[test]
fn a_failing_perch_init_is_refused() {
    let err = deploy_error(
        &GOOD_WAT.replace(
            "(call $log (i32.const 2) (i32.const 0) (i32.const 8))\n    (i32.const 0))",
            "(i32.const 3))",
        ),
        GOOD_MANIFEST,
    );
    assert!(err.contains("`perch_init` failed"), "{err}");
    assert!(err.contains("handler returned error 3"), "{err}");
}

// ---- the whole stage, with a real broker router and a real SQLite file ----

fn broker() -> Broker {
    let config = BrokerConfig {
        listeners: Vec::new(),
        ..BrokerConfig::default()
    };
    Broker::start(&config).unwrap()
}

async fn start(broker: &Broker, dir: &std::path::Path) -> (Functions, mpsc::Receiver<Output>) {
    let (tx, rx) = mpsc::channel(64);
    let config = FunctionsConfig {
        state_commit_interval_ms: 50,
        ..FunctionsConfig::default()
    };
    let f = Functions::start(broker.links(), &config, dir, "gw", tx)
        .await
        .unwrap();
    (f, rx)
}

/// The next publish on a link, within 5 s.
async fn next_publish(rx: &mut LinkRx) -> (String, Bytes) {
    let wait = async {
        loop {
            match rx.next().await.unwrap() {
                Some(Notification::Forward(f)) => {
                    return (
                        String::from_utf8(f.publish.topic.to_vec()).unwrap(),
                        f.publish.payload,
                    )
                }
                Some(Notification::Unschedule) => rx.wake().await.unwrap(),
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), wait)
        .await
        .expect("a publish within 5 s")
}

async fn wait_for(f: &Functions, name: &str, what: impl Fn(&FunctionInfo) -> bool) -> FunctionInfo {
    for _ in 0..1000 {
        if let Some(info) = f.list().into_iter().find(|i| i.name == name) {
            if what(&info) {
                return info;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{name} never reached the expected state: {:?}", f.list());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployed_functions_run_on_events_and_come_back_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker();
    let (f, mut outputs) = start(&broker, dir.path()).await;
    let reply = f
        .deploy(encode_bundle(GOOD_MANIFEST, &wasm(GOOD_WAT)).into())
        .await;
    assert!(reply.ok, "{reply:?}");
    assert_eq!(reply.version.as_deref(), Some("1.0.0"));

    let (mut sub, mut sub_rx) = broker.link("test-sub").unwrap();
    sub.subscribe("alerts/#").unwrap();
    let (mut publisher, _keep) = broker.link("test-pub").unwrap();
    // Let the subscription land before publishing (it is asynchronous).
    tokio::time::sleep(Duration::from_millis(50)).await;
    publisher.publish("sensors/a/temp", "21.5").unwrap();
    let (topic, payload) = next_publish(&mut sub_rx).await;
    assert_eq!((topic.as_str(), &payload[..]), ("alerts/x", &b"21.5"[..]));
    let metric = tokio::time::timeout(Duration::from_secs(5), outputs.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(metric, Output::Metric { .. }), "{metric:?}");
    let record = tokio::time::timeout(Duration::from_secs(5), outputs.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(record, Output::Record { .. }), "{record:?}");

    // A bad new version is refused and the old one keeps running.
    let bad = GOOD_WAT.replace(
        "(i32.const 1))\n  (func (export \"perch_event_buffer\")",
        "(i32.const 9))\n  (func (export \"perch_event_buffer\")",
    );
    let reply = f
        .deploy(encode_bundle(&GOOD_MANIFEST.replace("1.0.0", "1.1.0"), &wasm(&bad)).into())
        .await;
    assert!(!reply.ok);
    assert!(reply.error.unwrap().contains("ABI version 9"));
    publisher.publish("sensors/b", "22").unwrap();
    let (_, payload) = next_publish(&mut sub_rx).await;
    assert_eq!(&payload[..], b"22");
    let info = wait_for(&f, "echo", |i| i.invocations == 2).await;
    assert_eq!(
        (info.version.as_str(), info.state.as_str()),
        ("1.0.0", "running")
    );

    f.shutdown().await;
    let state = registry::Registry::open(&dir.path().join("functions.db"))
        .unwrap()
        .load_state("echo")
        .unwrap();
    assert_eq!(
        state,
        vec![(b"count".to_vec(), 2u64.to_le_bytes().to_vec())]
    );

    let (f, _outputs) = start(&broker, dir.path()).await;
    let info = wait_for(&f, "echo", |i| i.state == "running").await;
    assert_eq!(info.version, "1.0.0");
    tokio::time::sleep(Duration::from_millis(50)).await;
    publisher.publish("sensors/c", "23").unwrap();
    let (_, payload) = next_publish(&mut sub_rx).await;
    assert_eq!(&payload[..], b"23");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_circuit_breaker_stops_a_failing_function_and_spares_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker();
    let (f, _outputs) = start(&broker, dir.path()).await;
    let good = GOOD_MANIFEST
        .replace("name = \"echo\"", "name = \"good\"")
        .replace("sensors/#", "sensors/+");
    assert!(
        f.deploy(encode_bundle(&good, &wasm(GOOD_WAT)).into())
            .await
            .ok
    );
    let bad = GOOD_MANIFEST.replace("name = \"echo\"", "name = \"looper\"");
    assert!(
        f.deploy(encode_bundle(&bad, &wasm(GOOD_WAT)).into())
            .await
            .ok
    );

    let (mut publisher, _keep) = broker.link("test-pub").unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // `looper` (sensors/#) sees these and loops; `good` (sensors/+) does not.
    for _ in 0..5 {
        publisher.publish("sensors/x/y", "L").unwrap();
    }
    let info = wait_for(&f, "looper", |i| i.state == "stopped").await;
    let reason = info.reason.unwrap();
    assert!(
        reason.contains("circuit breaker after 3 failed invocations"),
        "{reason}"
    );
    assert!(reason.contains("out_of_fuel"), "{reason}");

    publisher.publish("sensors/x", "ok").unwrap();
    let info = wait_for(&f, "good", |i| i.invocations == 1).await;
    assert_eq!((info.errors, info.state.as_str()), (0, "running"));

    // The stop survives a restart; a new deploy starts it again.
    f.shutdown().await;
    let (f, _outputs) = start(&broker, dir.path()).await;
    wait_for(&f, "looper", |i| i.state == "stopped").await;
    let reply = f.deploy(encode_bundle(&bad, &wasm(GOOD_WAT)).into()).await;
    assert!(reply.ok, "{reply:?}");
    wait_for(&f, "looper", |i| i.state == "running").await;
    f.shutdown().await;
}

/// A handler that emits once and returns what `emit` returned: `FULL`
/// (-5) when the gateway's output channel is full.
const EMITTER_WAT: &str = r#"
(module
  (import "perch" "emit" (func $emit (param i32 i32 i32 i32 f64) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "m")
  (func (export "perch_abi_version") (result i32) (i32.const 1))
  (func (export "perch_event_buffer") (result i32) (i32.const 1024))
  (func (export "perch_event_buffer_len") (result i32) (i32.const 4096))
  (func (export "perch_init") (result i32) (i32.const 0))
  (func (export "perch_on_event") (param i32 i32 i64) (result i32)
    (call $emit (i32.const 16) (i32.const 1) (i32.const 0) (i32.const 0) (f64.const 1.5)))
)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_pressure_from_the_gateway_does_not_trip_the_circuit_breaker() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker();
    // Nobody drains the 64-slot output channel until the end.
    let (f, mut outputs) = start(&broker, dir.path()).await;
    let manifest = GOOD_MANIFEST.replace("name = \"echo\"", "name = \"emitter\"");
    let reply = f
        .deploy(encode_bundle(&manifest, &wasm(EMITTER_WAT)).into())
        .await;
    assert!(reply.ok, "{reply:?}");
    let (mut publisher, _keep) = broker.link("test-pub").unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    for _ in 0..80 {
        publisher.publish("sensors/x", "1").unwrap();
    }
    // 64 emits fit; the other 16 get FULL and the handler returns it: 16
    // failures in a row, past max_consecutive_failures = 3.
    let info = wait_for(&f, "emitter", |i| i.invocations == 80).await;
    assert_eq!(info.errors, 16, "{info:?}");
    assert_eq!(info.state, "running", "{info:?}");
    // Once the channel drains, it works again.
    while outputs.try_recv().is_ok() {}
    publisher.publish("sensors/x", "1").unwrap();
    let info = wait_for(&f, "emitter", |i| i.invocations == 81).await;
    assert_eq!((info.errors, info.state.as_str()), (16, "running"));
    assert!(outputs.recv().await.is_some(), "the emit got through");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_by_policy_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker();
    let (f, _outputs) = start(&broker, dir.path()).await;
    // A slow function: each event burns its whole fuel.
    let manifest = GOOD_MANIFEST
        .replace(
            "fuel = 1000000",
            "fuel = 2000000\nqueue_len = 2\nqueue_policy = \"drop_newest\"",
        )
        .replace(
            "max_consecutive_failures = 3",
            "max_consecutive_failures = 20",
        );
    assert!(
        f.deploy(encode_bundle(&manifest, &wasm(GOOD_WAT)).into())
            .await
            .ok
    );
    let (mut publisher, _keep) = broker.link("test-pub").unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    for _ in 0..20 {
        publisher.publish("sensors/a", "L").unwrap();
    }
    let info = wait_for(&f, "echo", |i| i.invocations + i.dropped == 20).await;
    assert!(info.dropped > 0, "{info:?}");
    assert!(info.queued <= 2, "{info:?}");
    f.shutdown().await;
}

// ---- versions, rollback, remove, the control topics ----

/// GOOD_WAT with version `version` and config `limit`.
fn echo_bundle(version: &str, limit: &str) -> Vec<u8> {
    encode_bundle(
        &GOOD_MANIFEST
            .replace("1.0.0", version)
            .replace("30.5", limit),
        &wasm(GOOD_WAT),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_restores_what_ran_before_exactly_and_downgrades_need_force() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker();
    let (f, _outputs) = start(&broker, dir.path()).await;

    let r = f.rollback("echo").await;
    assert!(!r.ok);
    let err = r.error.unwrap();
    assert!(err.contains("no function \"echo\" is deployed"), "{err}");

    let v1 = f.deploy(echo_bundle("1.0.0", "30.5").into()).await;
    assert!(v1.ok, "{v1:?}");
    let r = f.rollback("echo").await;
    let err = r.error.unwrap();
    assert!(err.contains("no previous version to roll back to"), "{err}");
    assert!(err.contains("1.0.0 is the first version"), "{err}");

    let v2 = f.deploy(echo_bundle("2.0.0", "40").into()).await;
    assert_eq!(v2.replaced.as_deref(), Some("1.0.0"), "{v2:?}");

    // Older than what runs: refused, unless forced.
    let older = echo_bundle("1.5.0", "50");
    let r = f.deploy(older.clone().into()).await;
    assert!(!r.ok);
    let err = r.error.unwrap();
    assert!(err.contains("runs version 2.0.0; 1.5.0 is older"), "{err}");
    assert!(err.contains("--force"), "{err}");
    wait_for(&f, "echo", |i| i.version == "2.0.0").await;
    let forced = control::encode_deploy_request(
        &control::DeployOptions {
            force: true,
            request_id: Some("r-7".into()),
            ..control::DeployOptions::default()
        },
        &older,
    );
    let r = f.deploy(forced.into()).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(r.request_id.as_deref(), Some("r-7"));
    assert_eq!(r.bundle_sha256, control::sha256_hex(&older));

    // Rollback walks back through what ran: 1.5.0 -> 2.0.0 -> 1.0.0.
    let r = f.rollback("echo").await;
    assert!(r.ok, "{r:?}");
    assert_eq!(
        (r.replaced.as_deref(), r.version.as_deref()),
        (Some("1.5.0"), Some("2.0.0"))
    );
    let r = f.rollback("echo").await;
    assert_eq!(r.version.as_deref(), Some("1.0.0"), "{r:?}");
    let info = wait_for(&f, "echo", |i| i.version == "1.0.0").await;
    assert_eq!(info.state, "running");
    assert_eq!(Some(info.sha256), v1.sha256, "the same module");
    assert_eq!(info.versions, ["1.0.0", "2.0.0", "1.5.0"]);
    let r = f.rollback("echo").await;
    assert!(r.error.unwrap().contains("no previous version"));

    // Version 1.0.0 runs with its own config again (limit 30.5): a timer-free
    // check through the registry's active row.
    let stored = registry::Registry::open(&dir.path().join("functions.db"))
        .unwrap()
        .active()
        .unwrap();
    assert_eq!(stored[0].version, "1.0.0");
    assert!(stored[0].manifest.contains("limit = 30.5"));

    let r = f.remove("echo").await;
    assert!(r.ok, "{r:?}");
    assert_eq!(r.replaced.as_deref(), Some("1.0.0"));
    assert!(f.list().is_empty());
    let r = f.remove("echo").await;
    assert!(r
        .error
        .unwrap()
        .contains("no function \"echo\" is deployed"));
    f.shutdown().await;
    let registry = registry::Registry::open(&dir.path().join("functions.db")).unwrap();
    assert!(registry.versions("echo").unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_command_for_a_function_being_deployed_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker();
    let (f, _outputs) = start(&broker, dir.path()).await;
    // perch_init spins 50 million times: the deploy takes a while.
    let slow = GOOD_WAT.replace(
        "(call $log (i32.const 2) (i32.const 0) (i32.const 8))",
        "(local $i i32)
         (loop $spin
           (local.set $i (i32.add (local.get $i) (i32.const 1)))
           (br_if $spin (i32.lt_u (local.get $i) (i32.const 50000000))))",
    );
    let manifest = GOOD_MANIFEST.replace("fuel = 1000000", "fuel = 2000000000");
    let a = encode_bundle(&manifest, &wasm(&slow));
    let b = encode_bundle(&manifest.replace("1.0.0", "1.1.0"), &wasm(&slow));
    let (ra, rb) = tokio::join!(f.deploy(a.into()), f.deploy(b.into()));
    let (ok, refused) = if ra.ok { (ra, rb) } else { (rb, ra) };
    assert!(ok.ok, "{ok:?}");
    let err = refused.error.unwrap();
    assert!(
        err.contains("a deploy, rollback or remove of function \"echo\" is in progress"),
        "{err}"
    );
    // The worker switches right after the reply; the status follows.
    let version = ok.version.unwrap();
    wait_for(&f, "echo", |i| i.version == version).await;
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundles_over_the_limit_are_refused_with_the_limit_named() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker();
    let (tx, _rx) = mpsc::channel(64);
    let config = FunctionsConfig {
        max_bundle_bytes: 2048,
        ..FunctionsConfig::default()
    };
    let f = Functions::start(broker.links(), &config, dir.path(), "gw", tx)
        .await
        .unwrap();
    let mut big = wasm(GOOD_WAT);
    // A custom section pads the module past the limit.
    big.extend_from_slice(&[0, 0x80, 0x10, 1, b'x']);
    big.extend(std::iter::repeat_n(0u8, 2048 - 2));
    let r = f.deploy(encode_bundle(GOOD_MANIFEST, &big).into()).await;
    let err = r.error.unwrap();
    assert!(
        err.contains("more than this gateway accepts (2048 bytes"),
        "{err}"
    );
    assert!(err.contains("functions.max_bundle_bytes"), "{err}");
    assert!(f.list().is_empty());
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retained_status_follows_deploys_and_is_cleared_on_remove() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker();
    let (f, _outputs) = start(&broker, dir.path()).await;
    assert!(f.deploy(echo_bundle("1.0.0", "30.5").into()).await.ok);
    let info = status(&broker, "reader-1", "1.0.0").await;
    assert_eq!(info.state, "running");
    assert_eq!(info.triggers, ["sensors/#"]);
    assert!(f.deploy(echo_bundle("1.1.0", "30.5").into()).await.ok);
    let info = status(&broker, "reader-2", "1.1.0").await;
    assert_eq!(info.versions, ["1.0.0", "1.1.0"]);

    let (mut sub, mut rx) = broker.link("status-watcher").unwrap();
    sub.subscribe("perch/gw/fn/+/status").unwrap();
    let _ = next_publish(&mut rx).await;
    assert!(f.remove("echo").await.ok);
    // Removal clears the retained message: an empty payload.
    let (topic, payload) = next_publish(&mut rx).await;
    assert_eq!(
        (topic.as_str(), payload.len()),
        ("perch/gw/fn/echo/status", 0)
    );
    f.shutdown().await;
}

/// The retained status of `echo` as a new subscriber `id` sees it, once it
/// shows `version`.
async fn status(broker: &Broker, id: &str, version: &str) -> FunctionInfo {
    let (mut sub, mut rx) = broker.link(id).unwrap();
    sub.subscribe("perch/gw/fn/+/status").unwrap();
    loop {
        let (topic, payload) = next_publish(&mut rx).await;
        assert_eq!(topic, "perch/gw/fn/echo/status");
        let info: FunctionInfo = serde_json::from_slice(&payload).unwrap();
        if info.version == version {
            return info;
        }
    }
}

/// A deploy, rollback or promote answers only once the worker switched:
/// the status read right after the reply shows the new version, every
/// time, and no reply carries the "not confirmed" warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reply_comes_after_the_workers_switch() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker();
    let (f, _outputs) = start(&broker, dir.path()).await;
    for minor in 0..10 {
        let version = format!("1.{minor}.0");
        let r = f.deploy(echo_bundle(&version, "30.5").into()).await;
        assert!(r.ok && r.warning.is_none(), "{r:?}");
        let info = f.list().into_iter().find(|i| i.name == "echo").unwrap();
        assert_eq!(
            (info.version.as_str(), info.state.as_str()),
            (version.as_str(), "running")
        );
    }
    let r = f.rollback("echo").await;
    assert!(r.ok && r.warning.is_none(), "{r:?}");
    let info = f.list().into_iter().find(|i| i.name == "echo").unwrap();
    assert_eq!(info.version, "1.8.0");
}

/// Resident memory of this process, from /proc.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("resident pages in /proc/self/statm");
    pages * 4096
}

#[path = "../../benches/common/module_200kb.rs"]
mod module_200kb;
use module_200kb::module_200kb;

/// Regression: every version compiled on the gateway's one wasmi engine
/// stayed in memory for good (wasmi's code map only grows), ~0.3 MB per
/// deploy of a 200 KB module. Each version now has its own engine, and
/// deploying and dropping 200 versions leaves the resident memory where it
/// was (it grew by ~60 MB before).
#[test]
fn a_replaced_version_gives_its_memory_back() {
    let (rt, _rx) = runtime();
    let wasm = module_200kb();
    let manifest = Manifest::from_toml(
        "name = \"big\"\nversion = \"1.0.0\"\n[triggers]\ntopics = [\"sensors/#\"]\n",
    )
    .unwrap();
    let deploy = || {
        let compiled = rt.compile(manifest.clone(), &wasm).unwrap();
        let mut instance = rt
            .instantiate(&compiled, Seed::default())
            .map_err(|(e, _)| e)
            .unwrap();
        // Translate a function or two, as a first event does.
        instance.on_event(b"sensors/x", b"3", 0).unwrap();
    };
    for _ in 0..20 {
        deploy();
    }
    let before = rss_bytes();
    for _ in 0..200 {
        deploy();
    }
    let grown = rss_bytes().saturating_sub(before);
    assert!(
        grown < 20 * 1024 * 1024,
        "200 deploys of a 200 KB module kept {grown} bytes"
    );
}
