//! What a deploy refuses (not wasm, a broken code section, the wrong
//! exports, imports or ABI version, limits, a failing `perch_init`), and the
//! memory a replaced version gives back.

use super::*;

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
    assert!(err.contains("publish, emit, emit_at, forward"), "{err}");
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
    assert!(
        err.contains("handler returned error 3 (TOO_LARGE: "),
        "{err}"
    );
}
