//! Stateful upgrades end to end (docs/deploying.md, "State across
//! versions"): `perch_migrate` converts the state a version before left,
//! a failing migration changes nothing, a canary works on a fork and its
//! rollback leaves the state exactly as the live version alone would have
//! made it, a rollback restores the snapshot and re-runs the kept events,
//! kill -9 during a migration leaves the old state or the migrated one,
//! snapshots are bounded and removed with the function.
//!
//! The modules are tests/wat/count_v1.wat (counts into "n", a u32) and
//! count_v2.wat (counts into "count", an i64, migrating "n").

use std::path::Path;
use std::time::Duration;

use perch::functions::registry::{Registry, StateRows};

use crate::util::functions::{file, wasm_file, Client, Gateway};

const TOPIC: &str = "tests/count";

/// A manifest of `counter` with these config flags set, keeping its
/// trigger events when `keep`.
fn manifest(version: &str, flags: &[&str], keep: bool) -> String {
    let config: String = flags.iter().map(|f| format!("{f} = \"yes\"\n")).collect();
    let replay = if keep {
        "[replay]\nkeep_events_s = 3600\n"
    } else {
        ""
    };
    format!(
        "name = \"counter\"\nversion = \"{version}\"\n\n[triggers]\ntopics = [\"{TOPIC}\"]\n\n\
         [limits]\nqueue_len = 4096\ntimeout_ms = 1000\n\n{replay}\n[config]\n{config}"
    )
}

/// Deploys `module` (a WAT file of tests/wat) as `version`; returns (ok,
/// the reply as JSON when ok, else the output).
fn deploy(
    gw: &Gateway,
    dir: &Path,
    module: &str,
    version: &str,
    flags: &[&str],
    extra: &[&str],
) -> (bool, serde_json::Value, String) {
    let wasm = wasm_file(dir, module);
    let name = format!("counter-{version}-{}.toml", flags.join("-"));
    let keep = !flags.contains(&"nokeep");
    let toml = file(dir, &name, manifest(version, flags, keep));
    let mut args = vec![
        "deploy",
        wasm.to_str().unwrap(),
        "--manifest",
        toml.to_str().unwrap(),
        "--json",
    ];
    args.extend_from_slice(extra);
    let (ok, out) = gw.perch_fn(&args);
    let json = if ok {
        json_reply(&out)
    } else {
        serde_json::Value::Null
    };
    (ok, json, out)
}

/// The JSON reply `perch fn ... --json` printed, before any `warning:`
/// line it wrote to stderr.
fn json_reply(out: &str) -> serde_json::Value {
    serde_json::Deserializer::from_str(out)
        .into_iter::<serde_json::Value>()
        .next()
        .and_then(Result::ok)
        .unwrap_or_else(|| panic!("no JSON reply in {out}"))
}

/// Publishes `n` events and waits until the live version has run
/// `invocations` in all.
async fn feed(gw: &Gateway, sensor: &Client, n: usize, invocations: u64) {
    for _ in 0..n {
        sensor.publish(TOPIC, "x").await;
    }
    gw.wait_for_function("counter", |f| f["invocations"] == invocations);
}

/// The function's state as stored (the gateway stopped).
fn stored_state(dir: &Path) -> StateRows {
    let registry = Registry::open(&dir.join("functions.db")).unwrap();
    let mut rows = registry.load_state("counter").unwrap();
    rows.sort();
    rows
}

fn count(n: i64) -> StateRows {
    vec![(b"count".to_vec(), n.to_le_bytes().to_vec())]
}

fn old_count(n: u32) -> StateRows {
    vec![(b"n".to_vec(), n.to_le_bytes().to_vec())]
}

/// The issue's check: v1 counts, v2 migrates the format, a v3 that
/// corrupts the state is canaried and rolled back by itself, and the state
/// is exactly what v2 alone would have made of the same events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_that_corrupts_state_leaves_exactly_what_the_live_version_alone_makes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let gw = Gateway::start_with(
        "e2e-upgrade-canary",
        d,
        "canary_window_events = 4\ncanary_max_error_percent = 25",
    );
    let sensor = Client::connect(gw.addr, "sensor", &[]).await;
    let (ok, _, out) = deploy(&gw, d, "count_v1", "1.0.0", &[], &[]);
    assert!(ok, "{out}\n{}", gw.log());
    feed(&gw, &sensor, 5, 5).await;

    let (ok, reply, out) = deploy(&gw, d, "count_v2", "2.0.0", &[], &[]);
    assert!(ok, "{out}\n{}", gw.log());
    assert_eq!(reply["state"]["migrated_from"], "1.0.0", "{reply:#}");
    assert!(reply["state"]["snapshot_taken"].is_i64(), "{reply:#}");
    feed(&gw, &sensor, 5, 10).await;

    // v3 adds 1000 per event on its fork and fails each: it takes every
    // second event and is rolled back at its second failure (the 4th event).
    let (ok, _, out) = deploy(
        &gw,
        d,
        "count_v2",
        "3.0.0",
        &["corrupt"],
        &["--canary", "50"],
    );
    assert!(ok, "{out}\n{}", gw.log());
    feed(&gw, &sensor, 8, 16).await;
    let f = gw.wait_for_function("counter", |f| f["canary"]["state"] == "rolled_back");
    assert_eq!(f["version"], "2.0.0", "{f:#}");
    let note = &f["state_upgrade"];
    assert_eq!(note["kind"], "canary_ended", "{f:#}");
    assert_eq!(
        note["events_rerun"], 4,
        "the canary's 4 events, re-run: {f:#}"
    );
    assert!(note["events_not_rerun"].is_null(), "{f:#}");
    feed(&gw, &sensor, 3, 19).await;

    let mut gw = gw;
    gw.terminate();
    // 5 counted by v1 and migrated, 5 + 8 + 3 by v2: the canary's share
    // too, and none of its +1000s.
    assert_eq!(stored_state(d), count(21));
    let registry = Registry::open(&d.join("functions.db")).unwrap();
    let snapshots = registry.snapshots("counter").unwrap();
    assert_eq!(snapshots.len(), 1, "{snapshots:?}");
    assert_eq!(snapshots[0].version, "1.0.0", "the state v1 left");
}

/// A promoted canary's state is rebuilt through it from the canary's start
/// (migrated, then every event since, both versions' shares); rolling the
/// promotion back rebuilds it through the old version from the same point.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_canary_owns_every_event_since_it_started_and_its_rollback_too() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let gw = Gateway::start("e2e-upgrade-promote", d);
    let sensor = Client::connect(gw.addr, "sensor", &[]).await;
    assert!(deploy(&gw, d, "count_v1", "1.0.0", &[], &[]).0);
    feed(&gw, &sensor, 3, 3).await;
    let (ok, _, out) = deploy(&gw, d, "count_v2", "2.0.0", &[], &["--canary", "50"]);
    assert!(ok, "{out}");
    feed(&gw, &sensor, 4, 5).await;
    gw.wait_for_function("counter", |f| f["canary"]["invocations"] == 2);
    let (ok, out) = gw.perch_fn(&["promote", "counter", "--json"]);
    assert!(ok, "{out}");
    let reply = json_reply(&out);
    assert_eq!(reply["state"]["migrated_from"], "1.0.0", "{reply:#}");
    assert_eq!(reply["state"]["events_rerun"], 4, "{reply:#}");
    feed(&gw, &sensor, 2, 7).await;

    // Back to 1.0.0: the state at the canary's start, and the 6 events
    // since, counted in 1.0.0's format.
    let (ok, out) = gw.perch_fn(&["rollback", "counter", "--json"]);
    assert!(ok, "{out}");
    let reply = json_reply(&out);
    assert_eq!(reply["state"]["events_rerun"], 6, "{reply:#}");
    let mut gw = gw;
    gw.terminate();
    assert_eq!(stored_state(d), old_count(9));
}

/// A clean stop during a canary ends it as a rollback does: the canary's
/// share of the events is in the live state the restarted gateway runs on,
/// without the canary's writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_during_a_canary_keeps_its_share_in_the_live_state() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let gw = Gateway::start("e2e-upgrade-stop", d);
    let sensor = Client::connect(gw.addr, "sensor", &[]).await;
    assert!(deploy(&gw, d, "count_v2", "1.0.0", &[], &[]).0);
    feed(&gw, &sensor, 2, 2).await;
    // 2.0.0 adds 1000 per event, healthy-looking: it stays a canary.
    let (ok, _, out) = deploy(&gw, d, "count_v2", "2.0.0", &["bad"], &["--canary", "50"]);
    assert!(ok, "{out}");
    feed(&gw, &sensor, 4, 4).await;
    let f = gw.wait_for_function("counter", |f| f["canary"]["invocations"] == 2);
    assert_eq!(f["canary"]["state"], "running", "{f:#}");
    drop(sensor);
    let mut gw = gw.restart();
    let f = gw.wait_for_function("counter", |f| f["state"] == "running");
    assert_eq!(f["version"], "1.0.0", "{f:#}");
    assert!(f["canary"].is_null(), "{f:#}");
    gw.terminate();
    // 2 + the 2 live events + the canary's 2, through 1.0.0.
    assert_eq!(stored_state(d), count(6));
}

/// A `perch_migrate` that traps refuses the deploy with a reply that says
/// so; the old version keeps running on its state, untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_that_traps_refuses_the_deploy_and_leaves_the_state() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut gw = Gateway::start("e2e-upgrade-trap", d);
    let sensor = Client::connect(gw.addr, "sensor", &[]).await;
    let (ok, _, out) = deploy(&gw, d, "count_v1", "1.0.0", &[], &[]);
    assert!(ok, "{out}");
    feed(&gw, &sensor, 3, 3).await;
    let (ok, _, out) = deploy(&gw, d, "count_v2", "2.0.0", &["trap"], &[]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("`perch_migrate` failed on the state version 1.0.0 left")
            && out.contains("unreachable")
            && out.contains("the state is unchanged"),
        "{out}"
    );
    let f = gw.function("counter");
    assert_eq!(f["version"], "1.0.0", "{f:#}");
    feed(&gw, &sensor, 2, 5).await;
    gw.terminate();
    assert_eq!(
        stored_state(d),
        old_count(5),
        "no \"count\" from the migration"
    );

    // A perch_migrate of the wrong type is refused at deploy, naming it.
    let mut gw = Gateway::start("e2e-upgrade-trap", d);
    let wasm = wat::parse_str(
        r#"(module (memory (export "memory") 1)
             (func (export "perch_abi_version") (result i32) (i32.const 1))
             (func (export "perch_event_buffer") (result i32) (i32.const 0))
             (func (export "perch_event_buffer_len") (result i32) (i32.const 64))
             (func (export "perch_on_event") (param i32 i32 i64) (result i32) (i32.const 0))
             (func (export "perch_migrate") (result i32) (i32.const 0)))"#,
    )
    .unwrap();
    let module = file(d, "wrong_migrate.wasm", wasm);
    let toml = file(d, "wrong.toml", manifest("3.0.0", &[], false));
    let (ok, out) = gw.perch_fn(&[
        "deploy",
        module.to_str().unwrap(),
        "--manifest",
        toml.to_str().unwrap(),
    ]);
    assert!(!ok, "{out}");
    assert!(
        out.contains(
            "exports `perch_migrate` as func () -> i32, but the perch ABI needs func (i32) -> i32"
        ),
        "{out}"
    );
    gw.terminate();
}

/// kill -9 while `perch_migrate` runs leaves the old version on the old
/// state; kill -9 right after a deploy's reply leaves the new version on
/// the migrated state (both were committed in one transaction, before the
/// state's own flush). Never a mix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_or_after_a_migration_leaves_old_or_migrated_state_never_a_mix() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A flush interval longer than the test: only the takeover's own
    // transaction can have written the migrated state.
    let gw = Gateway::start_with("e2e-upgrade-kill", d, "state_commit_interval_ms = 60000");
    let sensor = Client::connect(gw.addr, "sensor", &[]).await;
    let (ok, _, out) = deploy(&gw, d, "count_v1", "1.0.0", &[], &[]);
    assert!(ok, "{out}");
    feed(&gw, &sensor, 4, 4).await;
    drop(sensor);
    // Make v1's state durable the only way this config allows: a restart.
    let gw = gw.restart();

    // The slow migration writes "migrating" and rewrites "count" until its
    // 1 s time limit: kill -9 in the middle of it.
    let wasm = wasm_file(d, "count_v2");
    let toml = file(d, "slow.toml", manifest("2.0.0", &["slow"], true));
    let deployer = std::process::Command::new(crate::util::perch_bin())
        .args(["fn", "deploy", wasm.to_str().unwrap(), "--manifest"])
        .arg(&toml)
        .args(["--broker", &gw.addr.to_string(), "--gateway", &gw.id])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let gw = gw.kill_and_restart();
    let _ = deployer.wait_with_output();
    let f = gw.wait_for_function("counter", |f| f["state"] == "running");
    assert_eq!(f["version"], "1.0.0", "{f:#}");
    let mut gw = gw;
    gw.terminate();
    assert_eq!(
        stored_state(d),
        old_count(4),
        "the old state, nothing of the migration"
    );

    let gw = Gateway::start_with("e2e-upgrade-kill", d, "state_commit_interval_ms = 60000");
    let (ok, reply, out) = deploy(&gw, d, "count_v2", "2.0.0", &[], &[]);
    assert!(ok, "{out}");
    assert_eq!(reply["state"]["migrated_from"], "1.0.0", "{reply:#}");
    let mut gw = gw.kill_and_restart();
    let f = gw.wait_for_function("counter", |f| f["state"] == "running");
    assert_eq!(f["version"], "2.0.0", "{f:#}");
    gw.terminate();
    assert_eq!(
        stored_state(d),
        count(4),
        "the migrated state, with its version"
    );
}

/// A rollback restores the snapshot taken when the rolled-back version
/// took over and re-runs the kept events through the version it returns
/// to; where the events were not kept, the reply and the status say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_restores_the_snapshot_and_reruns_the_kept_events() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let gw = Gateway::start("e2e-upgrade-rollback", d);
    let sensor = Client::connect(gw.addr, "sensor", &[]).await;
    assert!(deploy(&gw, d, "count_v1", "1.0.0", &[], &[]).0);
    feed(&gw, &sensor, 3, 3).await;
    assert!(deploy(&gw, d, "count_v2", "2.0.0", &[], &[]).0);
    feed(&gw, &sensor, 2, 5).await;
    // 3.0.0 looks healthy but adds 1000 per event.
    assert!(deploy(&gw, d, "count_v2", "3.0.0", &["bad"], &[]).0);
    feed(&gw, &sensor, 3, 8).await;
    let (ok, out) = gw.perch_fn(&["rollback", "counter", "--json"]);
    assert!(ok, "{out}");
    let reply = json_reply(&out);
    assert_eq!(reply["version"], "2.0.0", "{reply:#}");
    assert!(reply["state"]["snapshot_restored"].is_i64(), "{reply:#}");
    assert_eq!(reply["state"]["events_rerun"], 3, "{reply:#}");
    feed(&gw, &sensor, 2, 10).await;

    // 4.0.0 keeps no events: its rollback restores the snapshot and says
    // that the events since are not in the state.
    assert!(deploy(&gw, d, "count_v2", "4.0.0", &["bad", "nokeep"], &[]).0);
    feed(&gw, &sensor, 2, 12).await;
    let (ok, out) = gw.perch_fn(&["rollback", "counter", "--json"]);
    assert!(ok, "{out}");
    let reply = json_reply(&out);
    let why = reply["state"]["events_not_rerun"]
        .as_str()
        .unwrap_or_default();
    assert!(
        why.contains("2 of the 2 events since were not kept"),
        "{reply:#}"
    );
    let f = gw.function("counter");
    assert_eq!(f["state_upgrade"], reply["state"], "{f:#}");
    let mut gw = gw;
    gw.terminate();
    // 3 + 2 + 3 re-run + 2 = 10; 4.0.0's two events are lost, not +2000.
    assert_eq!(stored_state(d), count(10));
}

/// `functions.snapshots_keep` bounds the snapshots; `fn remove` deletes
/// them with the versions and the state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_bounded_and_removed_with_the_function() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut gw = Gateway::start_with("e2e-upgrade-bounds", d, "snapshots_keep = 2");
    let sensor = Client::connect(gw.addr, "sensor", &[]).await;
    for (i, v) in ["1.0.0", "2.0.0", "3.0.0", "4.0.0"].iter().enumerate() {
        let (ok, _, out) = deploy(&gw, d, "count_v2", v, &[], &[]);
        assert!(ok, "{out}");
        feed(&gw, &sensor, 1, i as u64 + 1).await;
    }
    let f = gw.function("counter");
    let kept: Vec<&str> = f["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["version"].as_str().unwrap())
        .collect();
    assert_eq!(kept, ["2.0.0", "3.0.0"], "the newest two: {f:#}");
    let (ok, out) = gw.perch_fn(&["remove", "counter"]);
    assert!(ok, "{out}");
    gw.terminate();
    let registry = Registry::open(&d.join("functions.db")).unwrap();
    assert!(registry.snapshots("counter").unwrap().is_empty());
    assert!(registry.load_state("counter").unwrap().is_empty());
}
