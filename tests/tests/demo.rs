//! `perch demo`: the README's first command. It runs the whole trip with no
//! setup (simulated sensors, the bundled example functions, the buffer and a
//! stand-in cloud) and stops cleanly on Ctrl-C; the functions it ships are
//! the SDK examples.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use perch::functions::manifest::Manifest;
use perch::functions::runtime::{Runtime, Seed};
use perch::functions::Output;

/// `key=value` pairs of one plain view line or the summary line.
fn fields(line: &str) -> BTreeMap<String, String> {
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn number(fields: &BTreeMap<String, String>, key: &str) -> u64 {
    fields
        .get(key)
        .unwrap_or_else(|| panic!("no {key} in {fields:?}"))
        .parse()
        .unwrap_or_else(|_| panic!("{key} is not a number in {fields:?}"))
}

#[test]
fn demo_shows_events_through_functions_to_the_cloud_and_stops_on_sigint() {
    let mut child = Command::new(crate::util::perch_bin())
        .args([
            "demo",
            "--plain",
            "--listen",
            "127.0.0.1:0",
            "--window-s",
            "1",
            "--rate-hz",
            "10",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting perch demo");
    let (tx, rx) = mpsc::channel();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let stderr = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
            .join("\n")
    });

    // Wait until the view shows events in, function invocations and
    // aggregates at the cloud (windows of 1 s close every second).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let f = fields(&line);
                seen.push(line);
                if number(&f, "events_in") > 0
                    && number(&f, "invocations") > 0
                    && number(&f, "cloud_aggregates") > 0
                {
                    break;
                }
            }
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "the demo showed no aggregates at the cloud within 60 s:\n{}\n{}",
                    seen.join("\n"),
                    log.join().unwrap()
                );
            }
        }
    }

    let pid = child.id();
    let status = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .expect("running kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the demo did not stop within 30 s of SIGINT");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let rest: Vec<String> = rx.try_iter().collect();
    let log = log.join().unwrap();
    assert!(status.success(), "demo exited with {status}:\n{log}");
    let summary = rest
        .iter()
        .find(|l| l.starts_with("perch demo summary:"))
        .unwrap_or_else(|| panic!("no summary line in {rest:?}\n{log}"));
    let f = fields(summary);
    assert!(number(&f, "events_in") > 0, "{summary}");
    assert!(number(&f, "cloud_aggregates") > 0, "{summary}");
    assert_eq!(number(&f, "function_errors"), 0, "{summary}\n{log}");
    // Every bundled function ran.
    let invocations = &f["invocations"];
    for name in ["threshold-alert", "moving-average", "anomaly-zscore"] {
        let count: u64 = invocations
            .split(',')
            .find_map(|p| p.strip_prefix(&format!("{name}:")))
            .unwrap_or_else(|| panic!("{name} missing from {summary}"))
            .parse()
            .unwrap();
        assert!(count > 0, "{name} never ran: {summary}");
    }
    assert!(!log.contains("ERROR"), "the demo logged errors:\n{log}");
    // Its temporary data directory is gone.
    let data_dir = std::env::temp_dir().join(format!("perch-demo-{pid}"));
    assert!(!data_dir.exists(), "{} was left behind", data_dir.display());
}

#[test]
fn demo_refuses_a_bad_rate_with_a_clear_error() {
    let out = crate::util::perch(&["demo", "--plain", "--rate-hz", "0"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--rate-hz must be between 0 and 1000"),
        "{err}"
    );
}

/// Runs one module over `events` and returns what it published, emitted and
/// forwarded, in order.
fn run_module(manifest: &str, wasm: &[u8], events: &[(String, String)]) -> Vec<String> {
    let (tx, mut rx) = tokio::sync::mpsc::channel(10_000);
    let runtime = Runtime::new(tx);
    let compiled = runtime
        .compile(Manifest::from_toml(manifest).unwrap(), wasm)
        .unwrap();
    let mut instance = runtime
        .instantiate(&compiled, Seed::default())
        .map_err(|(e, _)| e)
        .unwrap();
    let mut seen = Vec::new();
    for (i, (topic, payload)) in events.iter().enumerate() {
        let result = instance.on_event(topic.as_bytes(), payload.as_bytes(), 1_000 + i as i64);
        seen.push(format!("{i}: {:?}", result.map_err(|e| format!("{e:?}"))));
        instance.release(|t, p| seen.push(format!("publish {t:?} {p:?}")));
        while let Ok(output) = rx.try_recv() {
            seen.push(match output {
                Output::Metric {
                    metric, key, value, ..
                } => format!("emit {metric} {key} {value}"),
                Output::Record { stream, record, .. } => format!("forward {stream} {record:?}"),
                // Kept trigger events come from a worker, never an instance.
                Output::Event(_) => continue,
            });
        }
    }
    seen
}

/// The modules `perch demo` ships (gateway/demo/*.wasm) behave exactly like
/// the SDK examples built from source; `sdk/update-demo.sh` refreshes them.
#[test]
fn bundled_functions_are_the_sdk_examples() {
    let built = crate::functions::build_examples();
    let mut events = Vec::new();
    for i in 0..120 {
        let device = format!("t{}", i % 3);
        let temperature = if i % 37 == 36 {
            38.5
        } else {
            21.0 + (i % 7) as f64 * 0.25
        };
        events.push((
            format!("sensors/{device}/temperature"),
            format!("{{\"device\":\"{device}\",\"temperature\":{temperature}}}"),
        ));
    }
    events.push(("sensors/t9/temperature".to_owned(), "not json".to_owned()));
    for (manifest, wasm) in perch::cli::demo::bundled_functions() {
        let name = Manifest::from_toml(manifest).unwrap().name;
        let fresh = std::fs::read(built.join(format!("{name}.wasm"))).unwrap();
        let shipped = run_module(manifest, wasm, &events);
        let expected = run_module(manifest, &fresh, &events);
        assert!(
            shipped.iter().any(|s| !s.ends_with("Ok(())")),
            "{name} produced nothing to compare: {shipped:?}"
        );
        assert_eq!(
            shipped, expected,
            "gateway/demo/{name}.wasm is out of date with sdk/examples/{name}: run sdk/update-demo.sh"
        );
    }
}
