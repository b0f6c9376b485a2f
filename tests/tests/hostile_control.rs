//! Hostile control-plane input against the real gateway: manifests with
//! every field wrong in every way (wrong type, out of range, unknown key,
//! missing), non-text and cut-short manifests, and a deploy larger than the
//! broker's packet limit. Each gets a reply that names the problem (or,
//! for the oversized packet, that connection alone is closed), and the
//! version that ran before keeps running, untouched. (Truncated bundles,
//! garbage, an options line that is not JSON and bundles over
//! `functions.max_bundle_bytes` are in control.rs; signed bundles, tampered
//! or wrongly signed, belong with the signing tests.)

use std::time::Duration;

use perch::functions::control::encode_bundle;

use crate::util::functions::{file, wasm_file, Client, Gateway};

const ID: &str = "e2e-hostile-ctl";

/// A manifest for tests/wat/echo.wat with every field set, each on its own
/// line so that a case can replace exactly one.
const FULL: &str = r#"name = "echo"
version = "2.0.0"
description = "echoes"

[triggers]
topics = ["tests/in/#"]
every_ms = 0

[limits]
fuel = 1000000
memory_pages = 16
output_bytes = 65536
queue_len = 256
queue_policy = "drop_oldest"
max_consecutive_failures = 10

[publish]
allow = ["out/#"]

[config]
out = "out/v2"
"#;

/// (what is wrong, the line of FULL to replace, its replacement, what the
/// reply must say). An empty replacement removes the line.
const CASES: &[(&str, &str, &str, &[&str])] = &[
    // Wrong type.
    ("name not a string", r#"name = "echo""#, "name = 5", &["invalid type: integer `5`, expected a string", "name = 5"]),
    ("version a float", r#"version = "2.0.0""#, "version = 2.0", &["invalid type: floating point `2.0`, expected a string", "version = 2.0"]),
    ("description a list", r#"description = "echoes""#, r#"description = ["x"]"#, &["invalid type: sequence, expected a string", "description"]),
    ("topics a string", r#"topics = ["tests/in/#"]"#, r#"topics = "tests/in/#""#, &["invalid type: string \"tests/in/#\", expected a sequence", "topics"]),
    ("every_ms a string", "every_ms = 0", r#"every_ms = "soon""#, &["invalid type: string \"soon\", expected u64", "every_ms"]),
    ("fuel a string", "fuel = 1000000", r#"fuel = "lots""#, &["invalid type: string \"lots\", expected u64", "fuel"]),
    ("memory_pages a float", "memory_pages = 16", "memory_pages = 1.5", &["invalid type: floating point `1.5`, expected u32", "memory_pages"]),
    ("output_bytes a bool", "output_bytes = 65536", "output_bytes = true", &["invalid type: boolean `true`", "output_bytes"]),
    ("queue_len a string", "queue_len = 256", r#"queue_len = "256""#, &["invalid type: string \"256\"", "queue_len"]),
    ("queue_policy a number", r#"queue_policy = "drop_oldest""#, "queue_policy = 1", &["queue_policy = 1", "wanted string or table"]),
    ("max_consecutive_failures a string", "max_consecutive_failures = 10", r#"max_consecutive_failures = "10""#, &["invalid type: string \"10\"", "max_consecutive_failures"]),
    ("allow a string", r#"allow = ["out/#"]"#, r#"allow = "out/#""#, &["invalid type: string \"out/#\", expected a sequence", "allow"]),
    ("config value a list", r#"out = "out/v2""#, r#"out = ["out/v2"]"#, &["config.out: must be a string, number, boolean or date"]),
    ("triggers not a table", "[triggers]", "triggers = 1\n[x]", &["triggers"]),
    // Out of range.
    ("name with bad characters", r#"name = "echo""#, r#"name = "Echo Two!""#, &["name: \"Echo Two!\" is not a usable function name: use 1-64 characters from a-z, 0-9 and '-'"]),
    ("name too long", r#"name = "echo""#, "name = \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"", &["is not a usable function name"]),
    ("version not semver", r#"version = "2.0.0""#, r#"version = "two""#, &["version: \"two\" is not a semantic version", "write e.g. \"1.0.0\""]),
    ("topic filter invalid", r#"topics = ["tests/in/#"]"#, r#"topics = ["tests/#/in"]"#, &["triggers.topics[0]: \"tests/#/in\" is not a valid MQTT topic filter"]),
    ("every_ms too short", "every_ms = 0", "every_ms = 5", &["triggers.every_ms: must be 0 (no interval) or at least 10 milliseconds"]),
    ("fuel zero", "fuel = 1000000", "fuel = 0", &["limits.fuel: must be greater than 0"]),
    ("fuel negative", "fuel = 1000000", "fuel = -1", &["invalid value: integer `-1`, expected u64", "fuel"]),
    ("memory_pages over 4 GiB", "memory_pages = 16", "memory_pages = 65537", &["limits.memory_pages: 65537 is impossible"]),
    ("memory_pages over u32", "memory_pages = 16", "memory_pages = 4294967296", &["invalid value: integer `4294967296`, expected u32"]),
    ("output_bytes over an MQTT payload", "output_bytes = 65536", "output_bytes = 268435456", &["limits.output_bytes: must be at most 268435455"]),
    ("queue_len zero", "queue_len = 256", "queue_len = 0", &["limits.queue_len: must be between 1 and 65536 events"]),
    ("queue_len too long", "queue_len = 256", "queue_len = 65537", &["limits.queue_len: must be between 1 and 65536 events"]),
    ("queue_policy unknown", r#"queue_policy = "drop_oldest""#, r#"queue_policy = "drop_everything""#, &["unknown variant `drop_everything`, expected `drop_oldest` or `drop_newest`"]),
    ("max_consecutive_failures zero", "max_consecutive_failures = 10", "max_consecutive_failures = 0", &["limits.max_consecutive_failures: must be at least 1"]),
    ("allow filter invalid", r#"allow = ["out/#"]"#, r#"allow = ["out/+x"]"#, &["publish.allow[0]: \"out/+x\" is not a valid MQTT topic filter"]),
    // Unknown keys, at every level.
    ("unknown top-level key", r#"description = "echoes""#, "descripton = \"echoes\"", &["unknown field `descripton`"]),
    ("unknown trigger key", "every_ms = 0", "every_s = 1", &["unknown field `every_s`", "expected `topics` or `every_ms`"]),
    ("unknown limit key", "fuel = 1000000", "feul = 1000000", &["unknown field `feul`"]),
    ("unknown publish key", r#"allow = ["out/#"]"#, r#"deny = ["out/#"]"#, &["unknown field `deny`", "expected `allow`"]),
    ("unknown table", "[publish]", "[extra]\nx = 1\n[publish]", &["unknown field `extra`"]),
    // Missing.
    ("no name", r#"name = "echo""#, "", &["missing field `name`"]),
    ("no version", r#"version = "2.0.0""#, "", &["missing field `version`"]),
    ("no trigger", r#"topics = ["tests/in/#"]"#, "", &["triggers: the function has no trigger, so it would never run"]),
    // Not a manifest at all.
    ("not TOML", "[triggers]", "[triggers", &["the manifest is not valid", "TOML parse error"]),
];

/// Sends `payload` to the deploy topic and returns the reply.
async fn deploy_raw(ctl: &mut Client, payload: Vec<u8>) -> serde_json::Value {
    ctl.publish_bytes(&format!("perch/{ID}/fn/deploy"), payload)
        .await;
    let (topic, reply) = ctl.next().await;
    assert_eq!(topic, format!("perch/{ID}/fn/deploy/reply"));
    serde_json::from_str(&reply).unwrap_or_else(|e| panic!("{e}: {reply}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_with_every_field_wrong_get_a_clear_reply_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A packet limit small enough to overrun cheaply (the bundle limit must
    // stay 64 KiB under it).
    let gw = Gateway::start_with(
        ID,
        d,
        "max_bundle_bytes = 65536\n\n[broker]\nmax_packet_size_bytes = 196608",
    );
    let echo = wasm_file(d, "echo");
    let v1 = FULL
        .replace(r#"version = "2.0.0""#, r#"version = "1.0.0""#)
        .replace("out/v2", "out/v1");
    let (ok, out) = gw.perch_fn(&[
        "deploy",
        echo.to_str().unwrap(),
        "--manifest",
        file(d, "v1.toml", &v1).to_str().unwrap(),
    ]);
    assert!(ok, "{out}\n{}", gw.log());
    let module = std::fs::read(&echo).unwrap();

    let mut ctl = Client::connect(gw.addr, "ctl", &[&format!("perch/{ID}/fn/deploy/reply")]).await;
    // The full manifest itself is valid: each case below breaks one field.
    assert!(perch::functions::manifest::Manifest::from_toml(FULL).is_ok());
    let mut failures = Vec::new();
    for (what, line, replacement, expect) in CASES {
        assert!(FULL.contains(line), "{what}: FULL has no line {line:?}");
        let manifest = FULL.replacen(line, replacement, 1);
        let reply = deploy_raw(&mut ctl, encode_bundle(&manifest, &module)).await;
        let error = reply["error"].as_str().unwrap_or_default();
        if reply["ok"] != false || expect.iter().any(|e| !error.contains(e)) {
            failures.push(format!(
                "{what}: expected {expect:?} in the reply, got {reply}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // A manifest that is not UTF-8, and one whose announced length runs
    // past the end of the bundle.
    let mut bundle = encode_bundle("name = \"\u{e9}\"", &module);
    bundle[10] = 0xff;
    let reply = deploy_raw(&mut ctl, bundle).await;
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .contains("the manifest in the bundle is not UTF-8 text"),
        "{reply}"
    );
    let mut bundle = encode_bundle(FULL, &module);
    bundle[5..9].copy_from_slice(&u32::MAX.to_be_bytes());
    let reply = deploy_raw(&mut ctl, bundle).await;
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .contains("the bundle is cut short: 4294967304 bytes were announced by its header"),
        "{reply}"
    );

    // Over the broker's packet limit: MQTT's only answer is to close that
    // connection (docs/deploying.md); the gateway and the other clients go
    // on, and the sender can connect again.
    let big = Client::connect(gw.addr, "big", &[]).await;
    big.publish_bytes(&format!("perch/{ID}/fn/deploy"), vec![b'P'; 300_000])
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reply = deploy_raw(&mut ctl, b"garbage".to_vec()).await;
    assert!(reply["error"]
        .as_str()
        .unwrap()
        .contains("not a perch bundle"));
    let log = gw.log();
    assert!(
        log.contains("big") || log.contains("packet"),
        "the oversized packet's connection is logged:\n{log}"
    );

    // Through all of it, v1 ran and still runs.
    let f = gw.function("echo");
    assert_eq!(
        (&f["version"], &f["state"], &f["errors"]),
        (&"1.0.0".into(), &"running".into(), &0.into()),
        "{f}"
    );
    let mut watcher = Client::connect(gw.addr, "watcher", &["out/#"]).await;
    let sensor = Client::connect(gw.addr, "sensor", &[]).await;
    sensor.publish("tests/in/x", "7").await;
    assert_eq!(watcher.next().await, ("out/v1".to_owned(), "7".to_owned()));
}
