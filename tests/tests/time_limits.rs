//! The wall-clock limit of an invocation and the operator's caps, against
//! the real gateway: an endless loop with fuel for hours is stopped at its
//! time limit, counted as `timeout` and stopped by its circuit breaker while
//! another function on the same events keeps answering; a manifest asking
//! for more time or more failures in a row than the gateway's caps is
//! refused at deploy, naming the cap and the config key.

use std::path::Path;

use crate::admin::metrics;
use crate::util::functions::{file, wasm_file, Client, Gateway};

/// The well-behaved function: tests/wat/echo.wat, each event's payload to
/// `good/out`.
const GOOD: &str = r#"
name = "good"
version = "1.0.0"
[triggers]
topics = ["load/#"]
[publish]
allow = ["good/#"]
[config]
out = "good/out"
"#;

/// tests/wat/spin.wat with the most fuel the default caps allow (minutes of
/// spinning per event) and a time limit of 300 ms.
const SPIN: &str = r#"
name = "spin"
version = "1.0.0"
[triggers]
topics = ["load/#"]
[limits]
fuel = 5000000000
timeout_ms = 300
max_consecutive_failures = 3
"#;

fn deploy(gw: &Gateway, wasm: &Path, manifest: &Path) -> (bool, String) {
    gw.perch_fn(&[
        "deploy",
        wasm.to_str().unwrap(),
        "--manifest",
        manifest.to_str().unwrap(),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runaway_function_is_stopped_at_its_time_limit_while_another_keeps_answering() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let gw = Gateway::start_with("e2e-timeout", d, "max_timeout_ms = 2000\n");
    let (ok, out) = deploy(&gw, &wasm_file(d, "echo"), &file(d, "good.toml", GOOD));
    assert!(ok, "{out}");
    let spin = wasm_file(d, "spin");
    let (ok, out) = deploy(&gw, &spin, &file(d, "spin.toml", SPIN));
    assert!(ok, "{out}");

    let mut watcher = Client::connect(gw.addr, "watcher", &["good/out"]).await;
    let sensor = Client::connect(gw.addr, "sensor", &[]).await;
    // Three events: each holds the spinning function for its 300 ms, the
    // third trips its breaker; the good function answers every one.
    for i in 0..3 {
        sensor.publish("load/x", &format!("e{i}")).await;
    }
    for i in 0..3 {
        assert_eq!(
            watcher.next().await,
            ("good/out".to_owned(), format!("e{i}"))
        );
    }
    let f = gw.wait_for_function("spin", |f| f["state"] == "stopped");
    let reason = f["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("circuit breaker after 3 failed invocations in a row")
            && reason.contains("timeout: still running after its wall-clock limit of 300 ms"),
        "{reason}"
    );
    let m = metrics(gw.admin());
    let timeouts =
        "perch_function_errors_total{function=\"spin\",version=\"1.0.0\",kind=\"timeout\"}";
    assert_eq!(m.get(timeouts).copied(), Some(3.0), "{m:#?}");
    assert!(
        gw.log().contains("invocation failed: timeout"),
        "{}",
        gw.log()
    );
    // The good function still answers after the runaway was stopped.
    sensor.publish("load/x", "after").await;
    assert_eq!(
        watcher.next().await,
        ("good/out".to_owned(), "after".to_owned())
    );

    // Over the caps: more time than functions.max_timeout_ms, more
    // failures in a row than functions.max_consecutive_failures.
    let greedy = SPIN
        .replace("timeout_ms = 300", "timeout_ms = 60000")
        .replace(
            "max_consecutive_failures = 3",
            "max_consecutive_failures = 1000",
        );
    let (ok, out) = deploy(&gw, &spin, &file(d, "greedy.toml", greedy));
    assert!(!ok, "{out}");
    for expected in [
        "limits.timeout_ms = 60000 is over this gateway's cap of 2000 (functions.max_timeout_ms): \
         lower it in the manifest, or raise functions.max_timeout_ms in the gateway's config",
        "limits.max_consecutive_failures = 1000 is over this gateway's cap of 20 \
         (functions.max_consecutive_failures)",
    ] {
        assert!(out.contains(expected), "{expected:?} missing in {out}");
    }
}
