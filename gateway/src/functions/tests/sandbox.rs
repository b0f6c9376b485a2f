//! The sandbox: events, outputs, state, config, fuel, stack, traps and the
//! limits on what a function may publish.

use super::*;

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
