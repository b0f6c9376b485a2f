//! Functions end to end: `perch fn deploy` against a running gateway, sensor
//! readings published with an MQTT client, outputs received by another.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::util::functions::{file, wasm_file, Client, Gateway};

fn threshold_manifest(name: &str, version: &str) -> String {
    format!(
        r#"
name = "{name}"
version = "{version}"
description = "Alert when a temperature crosses a limit"

[triggers]
topics = ["sensors/+/temperature"]

[limits]
fuel = 1000000
max_consecutive_failures = 5

[publish]
allow = ["alerts/#"]

[config]
limit = 30.0
"#
    )
}

/// A misbehaving function on the same trigger, with small limits.
fn runaway_manifest(name: &str) -> String {
    format!(
        r#"
name = "{name}"
version = "0.1.0"

[triggers]
topics = ["sensors/#"]

[limits]
fuel = 2000000
memory_pages = 16
max_consecutive_failures = 3
"#
    )
}

/// Deploys `wasm` with `manifest`; asserts the gateway accepted it.
fn deploy(gw: &Gateway, dir: &Path, wasm: &str, manifest_name: &str, manifest: &str) {
    let module = wasm_file(dir, wasm);
    let manifest = file(dir, manifest_name, manifest);
    let (ok, out) = gw.perch_fn(&[
        "deploy",
        module.to_str().unwrap(),
        "--manifest",
        manifest.to_str().unwrap(),
    ]);
    assert!(ok, "deploy of {wasm} failed: {out}\nlog:\n{}", gw.log());
    assert!(out.contains("deployed "), "{out}");
}

/// Deploys and expects a refusal; returns the CLI's output.
fn refused(gw: &Gateway, module: &Path, manifest: &Path) -> String {
    let (ok, out) = gw.perch_fn(&[
        "deploy",
        module.to_str().unwrap(),
        "--manifest",
        manifest.to_str().unwrap(),
    ]);
    assert!(!ok, "the deploy should have been refused: {out}");
    assert!(out.contains("the gateway refused the deploy"), "{out}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployed_function_turns_readings_into_alerts_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start("e2e-alerts", dir.path());
    deploy(
        &gw,
        dir.path(),
        "threshold",
        "threshold.toml",
        &threshold_manifest("threshold-alert", "1.0.0"),
    );

    let mut watcher = Client::connect(gw.addr, "watcher", &["alerts/#"]).await;
    let sensor = Client::connect(gw.addr, "sensor-1", &[]).await;
    sensor.publish("sensors/kitchen/temperature", "21.5").await;
    sensor.publish("sensors/kitchen/temperature", "31.25").await;
    assert_eq!(
        watcher.next().await,
        ("alerts/temperature".to_owned(), "31.25".to_owned())
    );
    let f = gw.wait_for_function("threshold-alert", |f| f["invocations"] == 2);
    assert_eq!(f["state"], "running");
    assert_eq!(f["version"], "1.0.0");
    assert_eq!(f["errors"], 0);

    // A clean restart brings the function back exactly as deployed.
    drop((watcher, sensor));
    let gw = gw.restart();
    let f = gw.function("threshold-alert");
    assert_eq!(
        (&f["state"], &f["version"]),
        (&"running".into(), &"1.0.0".into())
    );
    let mut watcher = Client::connect(gw.addr, "watcher", &["alerts/#"]).await;
    let sensor = Client::connect(gw.addr, "sensor-1", &[]).await;
    sensor.publish("sensors/hall/temperature", "40").await;
    assert_eq!(
        watcher.next().await,
        ("alerts/temperature".to_owned(), "40".to_owned())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runaway_functions_are_stopped_and_the_good_one_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let mut gw = Gateway::start("e2e-runaway", dir.path());
    deploy(
        &gw,
        dir.path(),
        "threshold",
        "threshold.toml",
        &threshold_manifest("threshold-alert", "1.0.0"),
    );
    deploy(
        &gw,
        dir.path(),
        "spin",
        "spin.toml",
        &runaway_manifest("spin"),
    );
    deploy(&gw, dir.path(), "hog", "hog.toml", &runaway_manifest("hog"));

    let mut watcher = Client::connect(gw.addr, "watcher", &["alerts/#"]).await;
    let sensor = Client::connect(gw.addr, "sensor-1", &[]).await;
    // Every reading goes to all three; each is above the limit.
    let readings: Vec<String> = (0..50).map(|i| format!("{}.5", 31 + i)).collect();
    for r in &readings {
        sensor.publish("sensors/lab/temperature", r).await;
    }
    for r in &readings {
        let (topic, payload) = watcher.next().await;
        assert_eq!(
            (topic.as_str(), payload.as_str()),
            ("alerts/temperature", r.as_str())
        );
    }

    let spin = gw.wait_for_function("spin", |f| f["state"] == "stopped");
    let reason = spin["reason"].as_str().unwrap();
    assert!(
        reason.contains("circuit breaker after 3 failed invocations"),
        "{reason}"
    );
    assert!(reason.contains("out_of_fuel"), "{reason}");
    let hog = gw.wait_for_function("hog", |f| f["state"] == "stopped");
    let reason = hog["reason"].as_str().unwrap();
    assert!(reason.contains("memory_limit"), "{reason}");

    let good = gw.wait_for_function("threshold-alert", |f| f["invocations"] == 50);
    assert_eq!(
        (&good["state"], &good["errors"]),
        (&"running".into(), &0.into())
    );
    assert!(gw.is_running(), "the gateway must stay up");

    // The good function still answers after its neighbours were stopped.
    sensor.publish("sensors/lab/temperature", "99").await;
    assert_eq!(watcher.next().await.1, "99");
    let log = gw.log();
    assert!(
        log.lines().any(|l| l.contains("invocation failed")
            && l.contains("spin")
            && l.contains("out_of_fuel")),
        "traps are logged with the function name and kind:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_deploys_are_refused_with_a_clear_error_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let gw = Gateway::start("e2e-bad", d);
    deploy(
        &gw,
        d,
        "threshold",
        "threshold.toml",
        &threshold_manifest("threshold-alert", "1.0.0"),
    );
    let good_manifest = file(d, "v2.toml", threshold_manifest("threshold-alert", "2.0.0"));
    let threshold = wasm_file(d, "threshold");

    let not_wasm = file(d, "readme.wasm", "# not a module\n");
    let out = refused(&gw, &not_wasm, &good_manifest);
    assert!(out.contains("not a WebAssembly module"), "{out}");

    let out = refused(&gw, &wasm_file(d, "no_handler"), &good_manifest);
    assert!(out.contains("does not export `perch_on_event`"), "{out}");

    let out = refused(&gw, &wasm_file(d, "wrong_abi"), &good_manifest);
    assert!(out.contains("speaks perch ABI version 2"), "{out}");
    assert!(out.contains("this gateway speaks version 1"), "{out}");

    let out = refused(&gw, &wasm_file(d, "wasi_import"), &good_manifest);
    assert!(
        out.contains("imports `wasi_snapshot_preview1.fd_write`"),
        "{out}"
    );
    assert!(out.contains("which perch does not offer"), "{out}");

    let unknown_key = file(
        d,
        "typo.toml",
        threshold_manifest("threshold-alert", "2.0.0").replace("fuel =", "feul ="),
    );
    let out = refused(&gw, &threshold, &unknown_key);
    assert!(out.contains("unknown field `feul`"), "{out}");

    let impossible = file(
        d,
        "zero.toml",
        threshold_manifest("threshold-alert", "2.0.0")
            .replace("fuel = 1000000", "fuel = 0\nmemory_pages = 0"),
    );
    let out = refused(&gw, &threshold, &impossible);
    assert!(out.contains("limits.fuel: must be greater than 0"), "{out}");
    assert!(
        out.contains("limits.memory_pages: 0 is impossible"),
        "{out}"
    );

    let too_big = file(
        d,
        "huge.toml",
        threshold_manifest("threshold-alert", "2.0.0")
            .replace("fuel = 1000000", "memory_pages = 65537"),
    );
    let out = refused(&gw, &threshold, &too_big);
    assert!(
        out.contains("limits.memory_pages: 65537 is impossible"),
        "{out}"
    );

    // Version 1.0.0 is still the one that runs, and it still works.
    let f = gw.function("threshold-alert");
    assert_eq!(
        (&f["version"], &f["state"]),
        (&"1.0.0".into(), &"running".into())
    );
    let mut watcher = Client::connect(gw.addr, "watcher", &["alerts/#"]).await;
    let sensor = Client::connect(gw.addr, "sensor-1", &[]).await;
    sensor.publish("sensors/x/temperature", "35").await;
    assert_eq!(watcher.next().await.1, "35");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_the_function_cannot_parse_is_counted_and_the_function_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start("e2e-parse", dir.path());
    deploy(
        &gw,
        dir.path(),
        "threshold",
        "threshold.toml",
        &threshold_manifest("threshold-alert", "1.0.0"),
    );
    let mut watcher = Client::connect(gw.addr, "watcher", &["alerts/#"]).await;
    let sensor = Client::connect(gw.addr, "sensor-1", &[]).await;
    sensor
        .publish("sensors/x/temperature", "{\"celsius\": \"warm\"}")
        .await;
    let f = gw.wait_for_function("threshold-alert", |f| f["errors"] == 1);
    // The Rust SDK's `Error::Payload`, named (sdk/ABI.md).
    assert_eq!(
        f["last_error"],
        "handler returned error 1 (PAYLOAD: the event's payload is not the JSON it expected)"
    );
    assert_eq!(f["state"], "running");
    assert!(watcher.nothing_within(Duration::from_millis(200)).await);

    sensor.publish("sensors/x/temperature", "33").await;
    assert_eq!(watcher.next().await.1, "33");
    let f = gw.wait_for_function("threshold-alert", |f| f["invocations"] == 2);
    assert_eq!(f["errors"], 1);
}

/// The example functions of `sdk/examples/`, built to wasm by the script a
/// newcomer uses (Rust and C), deployed to the real gateway with their own
/// manifests, fed real readings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_examples_run_in_the_real_gateway() {
    let examples = build_examples();
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start("e2e-examples", dir.path());
    for name in [
        "threshold-alert",
        "c-threshold",
        "unit-convert",
        "moving-average",
        "anomaly-zscore",
    ] {
        let wasm = examples.join(format!("{name}.wasm"));
        let manifest = examples.join(format!("{name}.toml"));
        let (ok, out) = gw.perch_fn(&[
            "deploy",
            wasm.to_str().unwrap(),
            "--manifest",
            manifest.to_str().unwrap(),
        ]);
        assert!(
            ok && out.contains("deployed "),
            "{name}: {out}\n{}",
            gw.log()
        );
    }
    let mut watcher = Client::connect(
        gw.addr,
        "watcher",
        &["alerts/#", "averages/#", "sensors/+/temperature_c"],
    )
    .await;
    let sensor = Client::connect(gw.addr, "sensor-1", &[]).await;
    sensor.publish("sensors/t1/temperature_f", "98.6").await;
    sensor
        .publish(
            "sensors/t1/temperature",
            r#"{"device":"t1","temperature":31.5}"#,
        )
        .await;

    let mut got = Vec::new();
    while got.len() < 4 {
        got.push(watcher.next().await);
    }
    got.sort();
    let json = |i: usize| serde_json::from_str::<serde_json::Value>(&got[i].1).unwrap();
    // Both threshold functions, the Rust one and the C one, alert.
    assert_eq!(got[0].0, "alerts/t1/temperature");
    assert_eq!(got[1].0, "alerts/t1/temperature");
    for i in [0, 1] {
        assert_eq!(json(i)["temperature"].as_f64(), Some(31.5), "{got:?}");
        assert_eq!(json(i)["limit"].as_f64(), Some(30.0), "{got:?}");
    }
    assert_eq!(got[2].0, "averages/t1/temperature");
    assert_eq!(json(2)["average"].as_f64(), Some(31.5));
    assert_eq!(got[3].0, "sensors/t1/temperature_c");
    assert_eq!(json(3)["temperature"].as_f64(), Some(37.0));

    // anomaly-zscore forwards an outlier into the buffer once it has seen
    // enough ordinary readings.
    // Readings that vary a little (a flat line has no spread to compare to).
    for i in 0..12 {
        let t = if i % 2 == 0 { 20.5 } else { 21.5 };
        sensor
            .publish(
                "sensors/t2/temperature",
                &format!(r#"{{"device":"t2","temperature":{t}}}"#),
            )
            .await;
    }
    sensor
        .publish(
            "sensors/t2/temperature",
            r#"{"device":"t2","temperature":80.0}"#,
        )
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let tail = crate::util::perch(&[
            "buffer",
            "tail",
            "--data-dir",
            gw.data_dir.to_str().unwrap(),
        ]);
        let out = String::from_utf8_lossy(&tail.stdout).into_owned();
        if out.contains("anomalies") && out.contains("\"value\":80") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no anomaly forwarded:\n{out}\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs `sdk/build-examples.sh` into a directory of this test run.
pub fn build_examples() -> std::path::PathBuf {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e-wasm");
    let out = base.join("perch-examples");
    let script = crate::util::workspace_root().join("sdk/build-examples.sh");
    let output = std::process::Command::new("bash")
        .arg(&script)
        .env("CARGO_TARGET_DIR", &base)
        .env("PERCH_EXAMPLES_OUT", &out)
        .output()
        .expect("running sdk/build-examples.sh");
    assert!(
        output.status.success(),
        "sdk/build-examples.sh failed; it needs `rustup target add wasm32-unknown-unknown` and \
         `apt-get install -y clang lld` (./test.sh installs both):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    out
}

/// A function's `forward` that returned success is committed, even when
/// the buffer's writer lags behind and `buffer.max_pending_records` wait
/// for the disk: the outputs wait for room (and the function is told
/// `FULL` once its output channel is full) instead of being dropped at the
/// buffer's intake after the function was told they were accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_forward_a_function_was_told_was_accepted_is_committed_while_the_buffer_lags() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // At most 5 records wait for the disk; the writer commits once a second.
    let gw = Gateway::start_with(
        "e2e-lag",
        d,
        "\n[buffer]\nmax_pending_records = 5\ncommit_interval_ms = 1000\ncommit_batch = 100000\n",
    );
    let manifest = r#"
name = "fw"
version = "0.1.0"

[triggers]
topics = ["fw/#"]
"#;
    deploy(&gw, d, "forward", "fw.toml", manifest);
    const SENT: u64 = 60;
    let client = Client::connect(gw.addr, "fw-sensor", &[]).await;
    for i in 0..SENT {
        client.publish("fw/r", &format!("{i}")).await;
    }
    // Every event is handled: its forward either committed or refused to
    // the function (a handler error).
    let deadline = Instant::now() + Duration::from_secs(60);
    let (committed, told_refused, backlog) = loop {
        let m = crate::admin::metrics(gw.admin());
        let sum = |prefix: &str| -> f64 {
            m.iter()
                .filter(|(k, _)| k.starts_with(prefix))
                .map(|(_, v)| v)
                .sum()
        };
        let committed = sum("perch_buffer_committed_records_total");
        let refused = sum("perch_function_errors_total{function=\"fw\"");
        let invocations = sum("perch_function_invocations_total{function=\"fw\"");
        let backlog = sum("perch_buffer_dropped_records_total{reason=\"backlog\"}");
        if invocations >= SENT as f64 && committed + refused + backlog >= SENT as f64 {
            break (committed, refused, backlog);
        }
        assert!(
            Instant::now() < deadline,
            "{invocations} invocations, {committed} committed, {refused} refused, \
             {backlog} dropped at intake of {SENT}\nlog:\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        backlog, 0.0,
        "forwards the function was told were accepted were dropped at the buffer's intake \
         ({committed} committed, {told_refused} refused to the function)"
    );
    assert_eq!(committed + told_refused, SENT as f64);
}

/// Event-time windows (`emit_at`, `aggregate.grace_ms`): readings that
/// arrive out of order, up to the grace late, each count in the window of
/// their own time, exactly; a reading whose window's grace has passed is
/// counted as late (`after_grace`), one far ahead of the gateway's clock as
/// `ahead`, and neither is merged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_count_in_the_window_of_their_own_time_within_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let gw = Gateway::start_with(
        "e2e-event-time",
        d,
        "\n[aggregate]\nwindow_s = 2\ngrace_ms = 10000\n",
    );
    let manifest = r#"
name = "event-time"
version = "0.1.0"

[triggers]
topics = ["readings/#"]
"#;
    deploy(&gw, d, "event_time", "et.toml", manifest);
    // Two windows that ended before now: `previous` and `last`. Their grace
    // (10 s) ends 8–10 s and 10–12 s from now, so the readings below, sent
    // at once, are all within it.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let last = now - now.rem_euclid(2_000) - 2_000;
    let previous = last - 2_000;
    let readings = [
        last + 100,
        previous + 500,
        previous - 30_000, // its window's grace ended 18 s ago: late
        last + 1_900,
        now + 120_000, // two minutes ahead of the gateway's clock
        previous + 10,
    ];
    let client = Client::connect(gw.addr, "et-sensor", &[]).await;
    for t in readings {
        client.publish("readings/a", &t.to_string()).await;
    }
    // Both windows are written once their grace ends.
    let deadline = Instant::now() + Duration::from_secs(40);
    let windows = loop {
        let tail = crate::util::perch(&[
            "buffer",
            "tail",
            "-n",
            "100",
            "--json",
            "--data-dir",
            gw.data_dir.to_str().unwrap(),
        ]);
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&tail.stdout).unwrap_or_default();
        let windows: Vec<(i64, u64)> = rows
            .iter()
            .filter(|r| r["stream"] == "aggregates")
            .filter_map(|r| serde_json::from_str::<serde_json::Value>(r["payload"].as_str()?).ok())
            .filter(|a| a["metric"] == "readings")
            .map(|a| {
                (
                    a["window_start_ms"].as_i64().unwrap(),
                    a["count"].as_u64().unwrap(),
                )
            })
            .collect();
        if windows.len() >= 2 {
            break windows;
        }
        assert!(
            Instant::now() < deadline,
            "the windows were not written: {rows:?}\nlog:\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(windows, vec![(previous, 2), (last, 2)]);
    let m = crate::admin::metrics(gw.admin());
    let late = |reason: &str| {
        crate::admin::metric(
            &m,
            &format!("perch_aggregate_late_events_total{{reason=\"{reason}\"}}"),
        )
    };
    assert_eq!((late("after_grace"), late("ahead")), (1.0, 1.0));
}
