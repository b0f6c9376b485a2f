//! Hostile functions against the real gateway: modules written to hurt it
//! (endless loops, exponential memory growth, runaway recursion, wild
//! pointers, huge outputs, publish floods, publishes to forbidden topics,
//! a trap on every event, imports of everything and of what perch does not
//! offer). Each must be contained by its limit, counted in `/metrics`, and
//! stopped by its circuit breaker when it keeps failing; a well-behaved
//! function on the same events keeps its throughput (measured here, printed,
//! and bounded generously; the figure is in docs/performance.md).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::admin::metrics;
use crate::util::functions::{file, wasm_file, Client, Gateway};

/// The exports every module here shares: ABI version 1, an event buffer at
/// 1024, and `pages` pages of memory.
fn module(pages: u32, imports: &str, body: &str) -> Vec<u8> {
    let text = format!(
        r#"(module
  {imports}
  (memory (export "memory") {pages})
  (func (export "perch_abi_version") (result i32) (i32.const 1))
  (func (export "perch_event_buffer") (result i32) (i32.const 1024))
  (func (export "perch_event_buffer_len") (result i32) (i32.const 4096))
  {body})"#
    );
    wat::parse_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

const PUBLISH: &str =
    r#"(import "perch" "publish" (func $publish (param i32 i32 i32 i32) (result i32)))"#;
const FORWARD: &str =
    r#"(import "perch" "forward" (func $forward (param i32 i32 i32 i32) (result i32)))"#;

/// Every import perch offers (sdk/ABI.md), with its signature.
const ALL_IMPORTS: &str = r#"
  (import "perch" "publish" (func $publish (param i32 i32 i32 i32) (result i32)))
  (import "perch" "emit" (func $emit (param i32 i32 i32 i32 f64) (result i32)))
  (import "perch" "forward" (func $forward (param i32 i32 i32 i32) (result i32)))
  (import "perch" "state_get" (func $state_get (param i32 i32 i32 i32) (result i32)))
  (import "perch" "state_set" (func $state_set (param i32 i32 i32 i32) (result i32)))
  (import "perch" "state_delete" (func $state_delete (param i32 i32) (result i32)))
  (import "perch" "config_get" (func $config_get (param i32 i32 i32 i32) (result i32)))
  (import "perch" "log" (func $log (param i32 i32 i32)))
  (import "perch" "now_ms" (func $now_ms (result i64)))
"#;

/// A hostile function: its name, module, what it may publish to, and the
/// failure kind that must stop it (None: it never fails, its outputs are
/// refused instead and it keeps running).
struct Hostile {
    name: &'static str,
    wasm: Vec<u8>,
    allow: &'static str,
    stops_with: Option<&'static str>,
}

fn hostile_functions(gateway_id: &str) -> Vec<Hostile> {
    let on_event = |body: &str| {
        format!(
            r#"(func (export "perch_on_event") (param i32 i32 i64) (result i32) (local $i i32)
                 {body})"#
        )
    };
    vec![
        Hostile {
            name: "spin",
            wasm: module(1, "", &on_event("(loop $l (br $l)) (i32.const 0)")),
            allow: "",
            stops_with: Some("out_of_fuel"),
        },
        // Doubles its memory until the limit (16 pages) refuses: 1, 2, 4,
        // 8, 16, then 32 traps.
        Hostile {
            name: "balloon",
            wasm: module(
                1,
                "",
                &on_event("(loop $l (drop (memory.grow (memory.size))) (br $l)) (i32.const 0)"),
            ),
            allow: "",
            stops_with: Some("memory_limit"),
        },
        Hostile {
            name: "recurse",
            wasm: module(
                1,
                "",
                &format!(
                    "(func $down (param i32) (result i32) \
                       (call $down (i32.add (local.get 0) (i32.const 1)))) {}",
                    on_event("(call $down (i32.const 0))")
                ),
            ),
            allow: "",
            stops_with: Some("stack_overflow"),
        },
        Hostile {
            name: "trapper",
            wasm: module(1, "", &on_event("(unreachable)")),
            allow: "",
            stops_with: Some("unreachable"),
        },
        // A pointer past the end of memory (guest-controlled ptr/len).
        Hostile {
            name: "wild",
            wasm: module(
                1,
                PUBLISH,
                &format!(
                    r#"(data (i32.const 0) "wild/x") {}"#,
                    on_event(
                        "(call $publish (i32.const 0) (i32.const 6) \
                           (i32.const -16) (i32.const 4096))"
                    )
                ),
            ),
            allow: "wild/#",
            stops_with: Some("memory_out_of_bounds"),
        },
        // Publishes and forwards ~1 MiB per event: over limits.output_bytes
        // (64 KiB), refused with LIMIT; the handler ignores the code.
        Hostile {
            name: "bigout",
            wasm: module(
                16,
                &format!("{PUBLISH} {FORWARD}"),
                &format!(
                    r#"(data (i32.const 0) "big/x") {}"#,
                    on_event(
                        "(drop (call $publish (i32.const 0) (i32.const 5) \
                           (i32.const 64) (i32.const 1040000))) \
                         (drop (call $forward (i32.const 0) (i32.const 3) \
                           (i32.const 64) (i32.const 1040000))) \
                         (i32.const 0)"
                    )
                ),
            ),
            allow: "big/#",
            stops_with: None,
        },
        // 5000 publishes per event: the first 1024 (MAX_OUTPUTS_PER_INVOCATION)
        // go out, the rest get LIMIT.
        Hostile {
            name: "flood",
            wasm: module(
                1,
                PUBLISH,
                &format!(
                    r#"(data (i32.const 0) "flood/x") {}"#,
                    on_event(
                        "(loop $l \
                           (drop (call $publish (i32.const 0) (i32.const 7) \
                             (i32.const 16) (i32.const 16))) \
                           (local.set $i (i32.add (local.get $i) (i32.const 1))) \
                           (br_if $l (i32.lt_u (local.get $i) (i32.const 5000)))) \
                         (i32.const 0)"
                    )
                ),
            ),
            allow: "flood/#",
            stops_with: None,
        },
        // Publishes to the deploy topic (never a function's, whatever its
        // allow list says) and outside its allow list.
        Hostile {
            name: "forbidden",
            wasm: {
                let deploy = format!("perch/{gateway_id}/fn/deploy");
                module(
                    1,
                    PUBLISH,
                    &format!(
                        r#"(data (i32.const 0) "{deploy}") (data (i32.const 256) "elsewhere/x")
                           {}"#,
                        on_event(&format!(
                            "(drop (call $publish (i32.const 0) (i32.const {}) \
                               (i32.const 512) (i32.const 8))) \
                             (drop (call $publish (i32.const 256) (i32.const 11) \
                               (i32.const 512) (i32.const 8))) \
                             (i32.const 0)",
                            deploy.len()
                        ))
                    ),
                )
            },
            allow: "ok/#\", \"perch/#",
            stops_with: None,
        },
        // Valid, imports everything, calls everything once per event.
        Hostile {
            name: "importer",
            wasm: module(
                1,
                ALL_IMPORTS,
                &format!(
                    r#"(data (i32.const 0) "imp/x") (data (i32.const 16) "metric")
                       (data (i32.const 32) "key") (data (i32.const 48) "value")
                       (data (i32.const 64) "nope")
                       {}"#,
                    on_event(
                        "(drop (call $publish (i32.const 0) (i32.const 5) (i32.const 48) (i32.const 5))) \
                         (drop (call $emit (i32.const 16) (i32.const 6) (i32.const 32) (i32.const 3) \
                           (f64.const 1.5))) \
                         (drop (call $forward (i32.const 16) (i32.const 6) (i32.const 48) (i32.const 5))) \
                         (drop (call $state_set (i32.const 32) (i32.const 3) (i32.const 48) (i32.const 5))) \
                         (drop (call $state_get (i32.const 32) (i32.const 3) (i32.const 128) (i32.const 64))) \
                         (drop (call $state_delete (i32.const 32) (i32.const 3))) \
                         (drop (call $config_get (i32.const 64) (i32.const 4) (i32.const 128) (i32.const 64))) \
                         (call $log (i32.const 99) (i32.const 48) (i32.const 5)) \
                         (drop (call $now_ms)) \
                         (i32.const 0)"
                    )
                ),
            ),
            allow: "imp/#",
            stops_with: None,
        },
    ]
}

/// Most failures in a row before a hostile function is stopped.
const BREAKER: u32 = 5;

fn hostile_manifest(h: &Hostile) -> String {
    format!(
        r#"
name = "{}"
version = "1.0.0"

[triggers]
topics = ["load/#"]

[limits]
max_consecutive_failures = {BREAKER}

[publish]
allow = [{}]
"#,
        h.name,
        if h.allow.is_empty() {
            String::new()
        } else {
            format!("\"{}\"", h.allow)
        }
    )
}

/// The well-behaved function: tests/wat/echo.wat, which publishes each
/// event's payload to `good/out`. It listens on `load/#` (beside the
/// hostile ones) and on `solo/#` (where only it listens).
const GOOD: &str = r#"
name = "good"
version = "1.0.0"

[triggers]
topics = ["load/#", "solo/#"]

[limits]
queue_len = 8192
queue_policy = "drop_newest"

[publish]
allow = ["good/#"]

[config]
out = "good/out"
"#;

fn deploy_file(gw: &Gateway, wasm: &Path, manifest: &Path) -> (bool, String) {
    gw.perch_fn(&[
        "deploy",
        wasm.to_str().unwrap(),
        "--manifest",
        manifest.to_str().unwrap(),
    ])
}

fn write_wasm(dir: &Path, name: &str, wasm: &[u8]) -> PathBuf {
    file(dir, &format!("{name}.wasm"), wasm)
}

fn sample(m: &HashMap<String, f64>, name: &str, function: &str, extra: &str) -> f64 {
    let key = format!("{name}{{function=\"{function}\",version=\"1.0.0\"{extra}}}");
    m.get(&key).copied().unwrap_or(0.0)
}

/// Publishes `n` events on `topic` and returns the good function's rate:
/// events per second from the first publish to its `n`-th output.
async fn good_rate(sensor: &Client, watcher: &mut Client, topic: &str, n: usize) -> f64 {
    let started = Instant::now();
    for i in 0..n {
        sensor.publish(topic, &i.to_string()).await;
    }
    for _ in 0..n {
        let (t, _) = watcher.next().await;
        assert_eq!(t, "good/out");
    }
    n as f64 / started.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_functions_are_contained_counted_and_stopped_and_the_good_one_keeps_its_throughput()
{
    const ID: &str = "e2e-hostile";
    const N: usize = 2000;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut gw = Gateway::start(ID, d);
    let echo = wasm_file(d, "echo");
    let (ok, out) = deploy_file(&gw, &echo, &file(d, "good.toml", GOOD));
    assert!(ok, "{out}");

    let mut watcher = Client::connect(gw.addr, "watcher", &["good/out"]).await;
    let sensor = Client::connect(gw.addr, "sensor", &[]).await;
    // Warm up (lazy translation, connections), then the good function alone.
    good_rate(&sensor, &mut watcher, "solo/warm", 200).await;
    let first_alone = good_rate(&sensor, &mut watcher, "load/x", N).await;

    // Modules that import what perch does not offer are refused at deploy.
    for (name, imports, expect) in [
        (
            "exec",
            r#"(import "perch" "exec" (func (param i32 i32) (result i32)))"#,
            "imports `perch.exec` (func (i32, i32) -> i32), which perch does not offer",
        ),
        (
            "envmem",
            r#"(import "env" "memory" (memory 1))"#,
            "imports `env.memory` (memory), which perch does not offer",
        ),
        (
            "badsig",
            r#"(import "perch" "publish" (func (param i32) (result i32)))"#,
            "imports `perch.publish` as func (i32) -> i32, but perch offers it as \
             func (i32, i32, i32, i32) -> i32",
        ),
    ] {
        let wasm = module(
            1,
            imports,
            r#"(func (export "perch_on_event") (param i32 i32 i64) (result i32) (i32.const 0))"#,
        );
        let h = Hostile {
            name,
            wasm,
            allow: "x/#",
            stops_with: None,
        };
        let (ok, out) = deploy_file(
            &gw,
            &write_wasm(d, name, &h.wasm),
            &file(d, &format!("{name}.toml"), hostile_manifest(&h)),
        );
        assert!(!ok && out.contains(expect), "{name}: {out}");
    }

    let hostile = hostile_functions(ID);
    for h in &hostile {
        let (ok, out) = deploy_file(
            &gw,
            &write_wasm(d, h.name, &h.wasm),
            &file(d, &format!("{}.toml", h.name), hostile_manifest(h)),
        );
        assert!(ok, "{}: {out}\n{}", h.name, gw.log());
    }

    // Deploys are done: nothing may reach the deploy topic from here on.
    let mut spy = Client::connect(
        gw.addr,
        "spy",
        &[&format!("perch/{ID}/fn/deploy"), "elsewhere/#"],
    )
    .await;
    // Enough events to trip every breaker; the good function sees them all.
    good_rate(&sensor, &mut watcher, "load/trip", 3 * BREAKER as usize).await;
    for h in &hostile {
        if let Some(kind) = h.stops_with {
            let f = gw.wait_for_function(h.name, |f| f["state"] == "stopped");
            let reason = f["reason"].as_str().unwrap_or_default();
            assert!(
                reason.contains(&format!(
                    "circuit breaker after {BREAKER} failed invocations in a row"
                )) && reason.contains(kind),
                "{}: {reason}",
                h.name
            );
        }
    }

    // Interleaved rounds: `solo/` reaches the good function alone, `load/`
    // reaches it and every hostile function still running.
    // The ratio is taken per pair of neighbouring rounds, in alternating
    // order, and its median kept: on a shared machine the rate swings by
    // 2x within a minute (1,565-4,028 events/s alone in one session's
    // runs), and neighbouring rounds share most of that swing.
    let (mut alone, mut beside, mut ratios) = (vec![first_alone], Vec::new(), Vec::new());
    for round in 0..5 {
        let (a, b) = if round % 2 == 0 {
            let b = good_rate(&sensor, &mut watcher, "load/x", N).await;
            (good_rate(&sensor, &mut watcher, "solo/x", N).await, b)
        } else {
            let a = good_rate(&sensor, &mut watcher, "solo/x", N).await;
            (a, good_rate(&sensor, &mut watcher, "load/x", N).await)
        };
        alone.push(a);
        beside.push(b);
        ratios.push(b / a);
    }
    let (alone, beside, ratio) = (median(alone), median(beside), median(ratios));
    eprintln!(
        "hostile: the good function handled {alone:.0} events/s alone and {beside:.0} events/s \
         beside the hostile functions (medians of rounds of {N}); the median of the paired \
         ratios: {:.0}%",
        ratio * 100.0
    );

    // Contained and counted.
    let m = metrics(gw.admin());
    for h in &hostile {
        let up = sample(&m, "perch_function_up", h.name, "");
        match h.stops_with {
            Some(kind) => {
                assert_eq!(up, 0.0, "{} is stopped", h.name);
                let errors = sample(
                    &m,
                    "perch_function_errors_total",
                    h.name,
                    &format!(",kind=\"{kind}\""),
                );
                assert_eq!(errors, f64::from(BREAKER), "{} failed {kind}", h.name);
            }
            None => {
                assert_eq!(up, 1.0, "{} still runs", h.name);
                let f = gw.function(h.name);
                assert_eq!(f["errors"], 0, "{}: {f}", h.name);
            }
        }
    }
    let refused = |f: &str, reason: &str| {
        sample(
            &m,
            "perch_function_refused_outputs_total",
            f,
            &format!(",reason=\"{reason}\""),
        )
    };
    // Each finished invocation was refused exactly `per_run` outputs; the
    // scrape may catch one invocation under way (refusals counted, the
    // invocation not yet).
    let refused_per_run = |f: &str, reason: &str, per_run: f64| {
        let runs = sample(&m, "perch_function_invocations_total", f, "");
        let n = refused(f, reason);
        assert!(runs > 0.0, "{f} ran");
        assert!(
            n >= runs * per_run && n <= (runs + 1.0) * per_run,
            "{f}: {n} outputs refused ({reason}) in {runs} invocations, {per_run} each"
        );
    };
    refused_per_run("flood", "limit", 5000.0 - 1024.0);
    refused_per_run("bigout", "limit", 2.0);
    refused_per_run("forbidden", "denied", 2.0);
    assert_eq!(
        refused("importer", "denied") + refused("importer", "limit"),
        0.0
    );
    assert_eq!(
        sample(&m, "perch_function_errors_total", "good", ",kind=\"other\""),
        0.0
    );
    let good = gw.function("good");
    assert_eq!((&good["errors"], &good["dropped"]), (&0.into(), &0.into()));
    assert!(
        spy.nothing_within(Duration::from_millis(500)).await,
        "a function published to a forbidden topic"
    );
    assert!(gw.is_running(), "the gateway must stay up");
    assert!(
        ratio >= 0.5,
        "the good function fell to {:.0}% of its throughput beside hostile functions \
         ({alone:.0} vs {beside:.0} events/s)",
        ratio * 100.0
    );
}
