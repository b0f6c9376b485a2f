//! Versions, rollback, remove and the control topics.

use super::*;

/// GOOD_WAT with version `version` and config `limit`.
fn echo_bundle(version: &str, limit: &str) -> Vec<u8> {
    encode_bundle(
        &GOOD_MANIFEST
            .replace("1.0.0", version)
            .replace("30.5", limit),
        &wasm(GOOD_WAT),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_restores_what_ran_before_exactly_and_downgrades_need_force() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker();
    let (f, _outputs) = start(&broker, dir.path()).await;

    let r = f.rollback("echo").await;
    assert!(!r.ok);
    let err = r.error.unwrap();
    assert!(err.contains("no function \"echo\" is deployed"), "{err}");

    let v1 = f.deploy(echo_bundle("1.0.0", "30.5").into()).await;
    assert!(v1.ok, "{v1:?}");
    let r = f.rollback("echo").await;
    let err = r.error.unwrap();
    assert!(err.contains("no previous version to roll back to"), "{err}");
    assert!(err.contains("1.0.0 is the first version"), "{err}");

    let v2 = f.deploy(echo_bundle("2.0.0", "40").into()).await;
    assert_eq!(v2.replaced.as_deref(), Some("1.0.0"), "{v2:?}");

    // Older than what runs: refused, unless forced.
    let older = echo_bundle("1.5.0", "50");
    let r = f.deploy(older.clone().into()).await;
    assert!(!r.ok);
    let err = r.error.unwrap();
    assert!(err.contains("runs version 2.0.0; 1.5.0 is older"), "{err}");
    assert!(err.contains("--force"), "{err}");
    wait_for(&f, "echo", |i| i.version == "2.0.0").await;
    let forced = control::encode_deploy_request(
        &control::DeployOptions {
            force: true,
            request_id: Some("r-7".into()),
            ..control::DeployOptions::default()
        },
        &older,
    );
    let r = f.deploy(forced.into()).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(r.request_id.as_deref(), Some("r-7"));
    assert_eq!(r.bundle_sha256, control::sha256_hex(&older));

    // Rollback walks back through what ran: 1.5.0 -> 2.0.0 -> 1.0.0.
    let r = f.rollback("echo").await;
    assert!(r.ok, "{r:?}");
    assert_eq!(
        (r.replaced.as_deref(), r.version.as_deref()),
        (Some("1.5.0"), Some("2.0.0"))
    );
    let r = f.rollback("echo").await;
    assert_eq!(r.version.as_deref(), Some("1.0.0"), "{r:?}");
    let info = wait_for(&f, "echo", |i| i.version == "1.0.0").await;
    assert_eq!(info.state, "running");
    assert_eq!(Some(info.sha256), v1.sha256, "the same module");
    assert_eq!(info.versions, ["1.0.0", "2.0.0", "1.5.0"]);
    let r = f.rollback("echo").await;
    assert!(r.error.unwrap().contains("no previous version"));

    // Version 1.0.0 runs with its own config again (limit 30.5): a timer-free
    // check through the registry's active row.
    let stored = registry::Registry::open(&dir.path().join("functions.db"))
        .unwrap()
        .active()
        .unwrap();
    assert_eq!(stored[0].version, "1.0.0");
    assert!(stored[0].manifest.contains("limit = 30.5"));

    let r = f.remove("echo").await;
    assert!(r.ok, "{r:?}");
    assert_eq!(r.replaced.as_deref(), Some("1.0.0"));
    assert!(f.list().is_empty());
    let r = f.remove("echo").await;
    assert!(r
        .error
        .unwrap()
        .contains("no function \"echo\" is deployed"));
    f.shutdown().await;
    let registry = registry::Registry::open(&dir.path().join("functions.db")).unwrap();
    assert!(registry.versions("echo").unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_command_for_a_function_being_deployed_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker();
    let (f, _outputs) = start(&broker, dir.path()).await;
    // perch_init spins 50 million times: the deploy takes a while.
    let slow = GOOD_WAT.replace(
        "(call $log (i32.const 2) (i32.const 0) (i32.const 8))",
        "(local $i i32)
         (loop $spin
           (local.set $i (i32.add (local.get $i) (i32.const 1)))
           (br_if $spin (i32.lt_u (local.get $i) (i32.const 50000000))))",
    );
    let manifest = GOOD_MANIFEST.replace("fuel = 1000000", "fuel = 2000000000");
    let a = encode_bundle(&manifest, &wasm(&slow));
    let b = encode_bundle(&manifest.replace("1.0.0", "1.1.0"), &wasm(&slow));
    let (ra, rb) = tokio::join!(f.deploy(a.into()), f.deploy(b.into()));
    let (ok, refused) = if ra.ok { (ra, rb) } else { (rb, ra) };
    assert!(ok.ok, "{ok:?}");
    let err = refused.error.unwrap();
    assert!(
        err.contains("a deploy, rollback or remove of function \"echo\" is in progress"),
        "{err}"
    );
    // The worker switches right after the reply; the status follows.
    let version = ok.version.unwrap();
    wait_for(&f, "echo", |i| i.version == version).await;
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundles_over_the_limit_are_refused_with_the_limit_named() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker();
    let (tx, _rx) = mpsc::channel(64);
    let config = FunctionsConfig {
        max_bundle_bytes: 2048,
        ..FunctionsConfig::default()
    };
    let f = Functions::start(broker.links(), &config, dir.path(), "gw", tx)
        .await
        .unwrap();
    let mut big = wasm(GOOD_WAT);
    // A custom section pads the module past the limit.
    big.extend_from_slice(&[0, 0x80, 0x10, 1, b'x']);
    big.extend(std::iter::repeat_n(0u8, 2048 - 2));
    let r = f.deploy(encode_bundle(GOOD_MANIFEST, &big).into()).await;
    let err = r.error.unwrap();
    assert!(
        err.contains("more than this gateway accepts (2048 bytes"),
        "{err}"
    );
    assert!(err.contains("functions.max_bundle_bytes"), "{err}");
    assert!(f.list().is_empty());
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retained_status_follows_deploys_and_is_cleared_on_remove() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker();
    let (f, _outputs) = start(&broker, dir.path()).await;
    assert!(f.deploy(echo_bundle("1.0.0", "30.5").into()).await.ok);
    let info = status(&broker, "reader-1", "1.0.0").await;
    assert_eq!(info.state, "running");
    assert_eq!(info.triggers, ["sensors/#"]);
    assert!(f.deploy(echo_bundle("1.1.0", "30.5").into()).await.ok);
    let info = status(&broker, "reader-2", "1.1.0").await;
    assert_eq!(info.versions, ["1.0.0", "1.1.0"]);

    let (mut sub, mut rx) = broker.link("status-watcher").unwrap();
    sub.subscribe("perch/gw/fn/+/status").unwrap();
    let _ = next_publish(&mut rx).await;
    assert!(f.remove("echo").await.ok);
    // Removal clears the retained message: an empty payload.
    let (topic, payload) = next_publish(&mut rx).await;
    assert_eq!(
        (topic.as_str(), payload.len()),
        ("perch/gw/fn/echo/status", 0)
    );
    f.shutdown().await;
}

/// The retained status of `echo` as a new subscriber `id` sees it, once it
/// shows `version`.
async fn status(broker: &Broker, id: &str, version: &str) -> FunctionInfo {
    let (mut sub, mut rx) = broker.link(id).unwrap();
    sub.subscribe("perch/gw/fn/+/status").unwrap();
    loop {
        let (topic, payload) = next_publish(&mut rx).await;
        assert_eq!(topic, "perch/gw/fn/echo/status");
        let info: FunctionInfo = serde_json::from_slice(&payload).unwrap();
        if info.version == version {
            return info;
        }
    }
}

/// A deploy, rollback or promote answers only once the worker switched:
/// the status read right after the reply shows the new version, every
/// time, and no reply carries the "not confirmed" warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reply_comes_after_the_workers_switch() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker();
    let (f, _outputs) = start(&broker, dir.path()).await;
    for minor in 0..10 {
        let version = format!("1.{minor}.0");
        let r = f.deploy(echo_bundle(&version, "30.5").into()).await;
        assert!(r.ok && r.warning.is_none(), "{r:?}");
        let info = f.list().into_iter().find(|i| i.name == "echo").unwrap();
        assert_eq!(
            (info.version.as_str(), info.state.as_str()),
            (version.as_str(), "running")
        );
    }
    let r = f.rollback("echo").await;
    assert!(r.ok && r.warning.is_none(), "{r:?}");
    let info = f.list().into_iter().find(|i| i.name == "echo").unwrap();
    assert_eq!(info.version, "1.8.0");
}
