//! The wall-clock limit of an invocation, measured (not a test: the figures
//! go in docs/performance.md with the date and the machine's load):
//!
//! - `stop overshoot`: an endless loop with fuel for hours and a 50 ms
//!   limit, 30 times; how long after its limit each call was stopped
//!   (the fuel slice the clock is read between, plus resuming).
//! - `beside a runaway`: a well-behaved function's events per second on
//!   its own thread, alone and while another thread runs an endless-loop
//!   function back to back (each call stopped at 100 ms, its instance
//!   re-created as the worker does), in alternating rounds of one second;
//!   the ratio of neighbouring rounds, median of the pairs (a shared
//!   machine's rate swings within a minute; neighbours share the swing).
//! - `beside a busy neighbour`: the same, with a well-behaved function
//!   taking events back to back on the other thread instead: what any
//!   CPU-bound neighbour costs on this machine, to compare the runaway's
//!   cost with.
//!
//! Run: `cargo bench -p perch --bench time_limit`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use perch::functions::manifest::Manifest;
use perch::functions::runtime::{Compiled, Instance, Runtime, Seed};

const SPIN: &str = r#"(module (memory (export "memory") 1)
  (func (export "perch_abi_version") (result i32) (i32.const 1))
  (func (export "perch_event_buffer") (result i32) (i32.const 1024))
  (func (export "perch_event_buffer_len") (result i32) (i32.const 4096))
  (func (export "perch_on_event") (param i32 i32 i64) (result i32)
    (loop $l (br $l)) (i32.const 0)))"#;

/// A handler doing a few thousand instructions of work per event (about
/// what the threshold-alert example takes).
const WORK: &str = r#"(module (memory (export "memory") 1)
  (func (export "perch_abi_version") (result i32) (i32.const 1))
  (func (export "perch_event_buffer") (result i32) (i32.const 1024))
  (func (export "perch_event_buffer_len") (result i32) (i32.const 4096))
  (func (export "perch_on_event") (param i32 i32 i64) (result i32) (local $n i32)
    (local.set $n (i32.const 1000))
    (loop $l (local.set $n (i32.sub (local.get $n) (i32.const 1)))
      (br_if $l (i32.gt_s (local.get $n) (i32.const 0))))
    (i32.const 0)))"#;

fn runtime() -> Runtime {
    let (tx, _rx) = tokio::sync::mpsc::channel(1);
    Runtime::new(tx)
}

fn compile(rt: &Runtime, wat: &str, limits: &str) -> Compiled {
    let manifest = Manifest::from_toml(&format!(
        "name = \"b\"\nversion = \"1.0.0\"\n[triggers]\ntopics = [\"t\"]\n[limits]\n{limits}\n"
    ))
    .unwrap();
    rt.compile(manifest, &wat::parse_str(wat).unwrap()).unwrap()
}

fn instance(rt: &Runtime, compiled: &Compiled) -> Instance {
    rt.instantiate(compiled, Seed::default())
        .map_err(|(e, _)| e)
        .unwrap()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default()
}

/// Events per second through `i` for `round`.
fn rate(i: &mut Instance, round: Duration) -> f64 {
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < round {
        for _ in 0..100 {
            i.on_event(b"t", b"x", 1).unwrap();
        }
        n += 100;
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// Six pairs of one-second rounds of `good` alone and beside `neighbour`
/// running back to back on another thread (each call stopped at 100 ms,
/// its instance re-created after a failure as the worker does), in
/// alternating order: (alone, beside, ratio of each pair).
fn paired_rounds(
    rt: &Arc<Runtime>,
    good: &mut Instance,
    neighbour: &'static str,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let round = Duration::from_secs(1);
    let (mut alone, mut beside, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let measure_beside = |good: &mut Instance| {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (rt, stop) = (rt.clone(), stop.clone());
            let compiled = compile(&rt, neighbour, "fuel = 1000000000000\ntimeout_ms = 100");
            std::thread::spawn(move || {
                let mut calls = 0u64;
                let mut i = instance(&rt, &compiled);
                while !stop.load(Ordering::Relaxed) {
                    if i.on_event(b"t", b"x", 1).is_err() {
                        i = instance(&rt, &compiled);
                    }
                    calls += 1;
                }
                calls
            })
        };
        let r = rate(good, round);
        stop.store(true, Ordering::Relaxed);
        assert!(thread.join().unwrap() > 0);
        r
    };
    for pair in 0..6 {
        let (a, b) = if pair % 2 == 0 {
            let a = rate(good, round);
            (a, measure_beside(good))
        } else {
            let b = measure_beside(good);
            (rate(good, round), b)
        };
        alone.push(a);
        beside.push(b);
        ratios.push(b / a);
    }
    (alone, beside, ratios)
}

fn main() {
    // `cargo bench` passes --bench; nothing else is expected.
    let rt = Arc::new(runtime());
    println!(
        "cores: {}, load: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load().trim()
    );

    let spin = compile(&rt, SPIN, "fuel = 1000000000000\ntimeout_ms = 50");
    let mut overshoot = Vec::new();
    let mut fuel_rate = Vec::new();
    for _ in 0..30 {
        let mut i = instance(&rt, &spin);
        let started = Instant::now();
        let result = i.on_event(b"t", b"x", 1);
        let took = started.elapsed();
        assert!(result.is_err());
        overshoot.push((took.as_secs_f64() - 0.050) * 1e3);
        fuel_rate.push((1_000_000_000_000 - i.fuel_left()) as f64 / took.as_secs_f64());
    }
    let max = overshoot.iter().copied().fold(f64::MIN, f64::max);
    println!(
        "stop overshoot at a 50 ms limit: median {:.2} ms, max {:.2} ms (30 calls); \
         fuel burnt {:.0} M/s",
        median(overshoot),
        max,
        median(fuel_rate) / 1e6
    );

    let work = compile(&rt, WORK, "");
    let mut good = instance(&rt, &work);
    rate(&mut good, Duration::from_millis(300));
    for (label, neighbour) in [("a runaway", SPIN), ("a busy neighbour", WORK)] {
        let (alone, beside, ratios) = paired_rounds(&rt, &mut good, neighbour);
        println!(
            "beside {label}: alone median {:.0} events/s, beside {:.0} events/s, \
             paired ratio median {:.1}% (6 pairs: {})",
            median(alone),
            median(beside),
            median(ratios.clone()) * 100.0,
            ratios
                .iter()
                .map(|r| format!("{:.0}%", r * 100.0))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    println!("load after: {}", load().trim());
}
