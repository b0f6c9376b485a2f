//! The whole stage against a real broker router and a real SQLite file:
//! events reach functions, a restart brings them back, the circuit
//! breaker, back-pressure and full queues.

use super::*;

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
