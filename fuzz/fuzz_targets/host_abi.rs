//! The host-ABI boundary: a guest that calls every host import with
//! guest-controlled pointers, lengths and values. The input (a payload
//! length byte, the event payload, then the calls) is turned into
//! a valid module whose `perch_on_event` makes one call per 21 input bytes
//! (which import, then five i32 arguments: pointers and lengths anywhere,
//! negative, overlapping, past the end of memory) and grows memory now and
//! then. The module must deploy, and every invocation must end in `Ok` or
//! the trap the ABI prescribes for a range outside guest memory
//! (`memory_out_of_bounds`), or `memory_limit` when it grows past its
//! pages; the host must never panic, and what the guest
//! made must be released cleanly.
#![no_main]

use std::cell::RefCell;
use std::fmt::Write;

use libfuzzer_sys::fuzz_target;
use perch::functions::manifest::Manifest;
use perch::functions::runtime::{Failure, Runtime, Seed};
use perch::functions::Output;
use tokio::sync::mpsc;

const MANIFEST: &str = r##"
name = "fuzz"
version = "1.0.0"
[triggers]
topics = ["#"]
[limits]
memory_pages = 4
output_bytes = 4096
[publish]
allow = ["#"]
[config]
k = "v"
"##;

thread_local! {
    static RUNTIME: RefCell<(Runtime, mpsc::Receiver<Output>)> = RefCell::new({
        let (tx, rx) = mpsc::channel(64);
        (Runtime::new(tx), rx)
    });
}

fn arg(chunk: &[u8], i: usize) -> i32 {
    i32::from_le_bytes(chunk[1 + 4 * i..5 + 4 * i].try_into().unwrap())
}

fn module(ops: &[u8]) -> String {
    let mut body = String::new();
    for chunk in ops.chunks_exact(21) {
        let a = |i| arg(chunk, i);
        let _ = match chunk[0] % 10 {
            0 => writeln!(body, "(drop (call $publish (i32.const {}) (i32.const {}) (i32.const {}) (i32.const {})))", a(0), a(1), a(2), a(3)),
            1 => writeln!(body, "(drop (call $emit (i32.const {}) (i32.const {}) (i32.const {}) (i32.const {}) (f64.const {})))", a(0), a(1), a(2), a(3), a(4)),
            2 => writeln!(body, "(drop (call $forward (i32.const {}) (i32.const {}) (i32.const {}) (i32.const {})))", a(0), a(1), a(2), a(3)),
            3 => writeln!(body, "(drop (call $state_get (i32.const {}) (i32.const {}) (i32.const {}) (i32.const {})))", a(0), a(1), a(2), a(3)),
            4 => writeln!(body, "(drop (call $state_set (i32.const {}) (i32.const {}) (i32.const {}) (i32.const {})))", a(0), a(1), a(2), a(3)),
            5 => writeln!(body, "(drop (call $state_delete (i32.const {}) (i32.const {})))", a(0), a(1)),
            6 => writeln!(body, "(drop (call $config_get (i32.const {}) (i32.const {}) (i32.const {}) (i32.const {})))", a(0), a(1), a(2), a(3)),
            7 => writeln!(body, "(call $log (i32.const {}) (i32.const {}) (i32.const {}))", a(0), a(1), a(2)),
            8 => writeln!(body, "(drop (call $now_ms))"),
            _ => writeln!(body, "(drop (memory.grow (i32.const {})))", a(0) & 3),
        };
    }
    format!(
        r#"(module
  (import "perch" "publish" (func $publish (param i32 i32 i32 i32) (result i32)))
  (import "perch" "emit" (func $emit (param i32 i32 i32 i32 f64) (result i32)))
  (import "perch" "forward" (func $forward (param i32 i32 i32 i32) (result i32)))
  (import "perch" "state_get" (func $state_get (param i32 i32 i32 i32) (result i32)))
  (import "perch" "state_set" (func $state_set (param i32 i32 i32 i32) (result i32)))
  (import "perch" "state_delete" (func $state_delete (param i32 i32) (result i32)))
  (import "perch" "config_get" (func $config_get (param i32 i32 i32 i32) (result i32)))
  (import "perch" "log" (func $log (param i32 i32 i32)))
  (import "perch" "now_ms" (func $now_ms (result i64)))
  (memory (export "memory") 1)
  (data (i32.const 0) "a/b\00k\00v\00metric")
  (func (export "perch_abi_version") (result i32) (i32.const 1))
  (func (export "perch_event_buffer") (result i32) (i32.const 1024))
  (func (export "perch_event_buffer_len") (result i32) (i32.const 1024))
  (func (export "perch_on_event") (param i32 i32 i64) (result i32)
{body}    (i32.const 0)))"#
    )
}

fuzz_target!(|data: &[u8]| {
    // First byte: the event payload's length (< 64); then the payload;
    // then the calls.
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let (payload, ops) = rest.split_at(rest.len().min(usize::from(n) % 64));
    let wasm = wat::parse_str(module(ops)).expect("the generated module is valid WAT");
    RUNTIME.with(|cell| {
        let (runtime, rx) = &mut *cell.borrow_mut();
        let manifest = Manifest::from_toml(MANIFEST).unwrap();
        let compiled = runtime
            .compile(manifest, &wasm)
            .unwrap_or_else(|e| panic!("a valid module was refused: {e}"));
        let mut instance = match runtime.instantiate(&compiled, Seed::default()) {
            Ok(i) => i,
            Err((e, _)) => panic!("a valid module did not instantiate: {e}"),
        };
        for _ in 0..2 {
            match instance.on_event(b"a/b", payload, 0) {
                Ok(()) | Err(Failure::Trap("memory_out_of_bounds" | "memory_limit")) => {}
                Err(other) => panic!("unexpected failure: {other}"),
            }
            instance.release(|topic, _| {
                perch::kit::topic::validate_name(std::str::from_utf8(&topic).unwrap()).unwrap()
            });
            while rx.try_recv().is_ok() {}
            if instance.is_poisoned() {
                break;
            }
        }
    });
});
