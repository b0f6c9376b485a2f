//! `--json` on the commands that print data (issue 21): `perch buffer
//! stats|tail|dead|replay`, `perch fn build`, `perch fn test`. Each prints
//! JSON alone on stdout, with the fields a script reads.

use std::path::Path;
use std::process::{Command, Output};

use rumqttc::QoS;

use crate::util::mqtt::{self, connect, wait_puback};
use crate::util::{free_port, perch, perch_bin, temp_file, Gateway};

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffer_commands_print_json() {
    // Records are kept for an upstream that is down.
    let (_cfg, config) = temp_file(
        "perch.toml",
        &format!(
            "[gateway]\nid = \"json-buffer\"\n\
             [upstream]\nforward_topics = [\"data/#\"]\n\
             [upstream.mqtt]\nhost = \"127.0.0.1\"\nport = {}\n",
            free_port()
        ),
    );
    let gw = Gateway::start(&["--config", config.to_str().unwrap()]);
    let (client, mut el) = connect(mqtt::options("json-pub", gw.addr())).await.unwrap();
    for n in 0..3 {
        client
            .publish("data/x", QoS::AtLeastOnce, false, format!("{{\"n\":{n}}}"))
            .await
            .unwrap();
        // The PUBACK waits for the record's commit.
        wait_puback(&mut el).await;
    }
    let dir = gw.data_dir.path().to_str().unwrap().to_owned();

    let stats = json(&perch(&["buffer", "stats", "--json", "--data-dir", &dir]));
    assert_eq!(stats["records"], 3, "{stats}");
    assert!(stats["bytes"].as_u64().unwrap() > 0, "{stats}");
    assert!(stats["oldest_ms"].as_i64().unwrap() > 0, "{stats}");
    assert!(stats["oldest_age_s"].as_f64().unwrap() >= 0.0, "{stats}");
    assert!(
        stats["buffer"].as_str().unwrap().starts_with(&dir),
        "{stats}"
    );

    let tail = json(&perch(&[
        "buffer",
        "tail",
        "-n",
        "2",
        "--json",
        "--data-dir",
        &dir,
    ]));
    let tail = tail.as_array().expect("an array");
    assert_eq!(tail.len(), 2, "{tail:?}");
    assert_eq!(tail[1]["payload"], "{\"n\":2}", "{tail:?}");
    assert_eq!(tail[1]["stream"], "data/x", "{tail:?}");
    assert_eq!(tail[1]["kind"], "record", "{tail:?}");
    assert!(
        tail[0]["seq"].as_i64() < tail[1]["seq"].as_i64(),
        "{tail:?}"
    );

    let dead = json(&perch(&["buffer", "dead", "--json", "--data-dir", &dir]));
    assert_eq!(dead, serde_json::json!([]));
    let replay = json(&perch(&["buffer", "replay", "--json", "--data-dir", &dir]));
    assert_eq!(replay, serde_json::json!({ "requeued": 0 }));
    drop(client);
}

fn perch_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(perch_bin())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running perch")
}

/// A C project (clang builds it in a second).
#[test]
fn fn_build_and_fn_test_print_json() {
    let tmp = tempfile::tempdir().unwrap();
    let out = perch_in(tmp.path(), &["fn", "new", "json-door", "--lang", "c"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let project = tmp.path().join("json-door");

    let built = json(&perch_in(&project, &["fn", "build", "--json"]));
    assert_eq!(built["name"], "json-door", "{built}");
    assert!(built["version"].is_string(), "{built}");
    let wasm = built["wasm"].as_str().unwrap();
    assert!(
        wasm.ends_with("build/json-door.wasm") && Path::new(wasm).exists(),
        "{built}"
    );
    let bytes = std::fs::metadata(wasm).unwrap().len();
    assert_eq!(built["bytes"].as_u64(), Some(bytes), "{built}");
    assert_eq!(built["sha256"].as_str().unwrap().len(), 64, "{built}");
    assert!(built["manifest"]
        .as_str()
        .unwrap()
        .ends_with("manifest.toml"));

    let tested = json(&perch_in(&project, &["fn", "test", "--json"]));
    let summary = &tested["summary"];
    assert_eq!(summary["events"], 3, "{tested}");
    assert_eq!(summary["failures"], 0, "{tested}");
    assert_eq!(summary["publishes"], 2, "{tested}");
    let events = tested["events"].as_array().unwrap();
    assert_eq!(events.len(), 3, "{tested}");
    let alert = events
        .iter()
        .flat_map(|e| e["outputs"].as_array().unwrap())
        .find(|o| o["kind"] == "publish")
        .expect("a publish");
    assert_eq!(alert["topic"], "alerts/t1/temperature", "{tested}");
    assert!(events.iter().all(|e| e["triggered"] == true), "{tested}");

    // A failing event: exit 1, its error in the JSON, nothing on stdout
    // but the JSON.
    std::fs::write(
        project.join("bad.jsonl"),
        "{\"topic\":\"sensors/t1/temperature\",\"payload\":\"not json\"}\n",
    )
    .unwrap();
    let out = perch_in(&project, &["fn", "test", "--json", "--events", "bad.jsonl"]);
    assert_eq!(out.status.code(), Some(1));
    let tested: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(tested["summary"]["failures"], 1, "{tested}");
    assert!(
        tested["events"][0]["error"]
            .as_str()
            .unwrap()
            .contains("error 1 (PAYLOAD: "),
        "{tested}"
    );
}
