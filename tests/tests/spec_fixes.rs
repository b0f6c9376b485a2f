//! Fixes to promises perch broke quietly: an event whose canary invocation
//! trapped is handled by the live version instead of being lost.

use crate::util::functions::{file, wasm_file, Client, Gateway};

/// The live version: tests/wat/echo.wat, each event's payload to `out/v1`.
const LIVE: &str = r#"
name = "echo"
version = "1.0.0"
[triggers]
topics = ["tests/in/#"]
[publish]
allow = ["out/#"]
[config]
out = "out/v1"
"#;

/// The canary: the same function, version 2.0.0, trapping on every event.
const TRAPPING: &str = r#"(module (memory (export "memory") 1)
  (func (export "perch_abi_version") (result i32) (i32.const 1))
  (func (export "perch_event_buffer") (result i32) (i32.const 1024))
  (func (export "perch_event_buffer_len") (result i32) (i32.const 4096))
  (func (export "perch_on_event") (param i32 i32 i64) (result i32) (unreachable)))"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_a_canary_trapped_on_is_handled_by_the_live_version() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let gw = Gateway::start("e2e-canary-trap", d);
    let live = file(d, "live.toml", LIVE);
    let (ok, out) = gw.perch_fn(&[
        "deploy",
        wasm_file(d, "echo").to_str().unwrap(),
        "--manifest",
        live.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    let canary = file(d, "canary.wasm", wat::parse_str(TRAPPING).unwrap());
    let manifest = file(d, "canary.toml", LIVE.replace("1.0.0", "2.0.0"));
    let (ok, out) = gw.perch_fn(&[
        "deploy",
        canary.to_str().unwrap(),
        "--manifest",
        manifest.to_str().unwrap(),
        "--canary",
        "50",
    ]);
    assert!(ok, "{out}");
    let mut watcher = Client::connect(gw.addr, "watcher", &["out/#"]).await;
    let sensor = Client::connect(gw.addr, "sensor", &[]).await;
    // Every second event goes to the canary, which traps on it; the third
    // trap rolls it back (more than 10% of a 20-invocation window). Each of
    // the ten events is published by the live version, in order.
    for i in 1..=10 {
        sensor.publish("tests/in/a", &i.to_string()).await;
    }
    for i in 1..=10 {
        assert_eq!(
            watcher.next().await,
            ("out/v1".to_owned(), i.to_string()),
            "{}",
            gw.log()
        );
    }
    let f = gw.wait_for_function("echo", |f| f["canary"]["state"] == "rolled_back");
    assert_eq!(f["version"], "1.0.0", "{f:#}");
    assert_eq!(f["canary"]["errors"], 3, "{f:#}");
    let reason = f["canary"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("trap: unreachable"), "{reason}");
}
