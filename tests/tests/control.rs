//! The functions control plane end to end: versions, rollback, remove, the
//! retained status topic, replies to bad requests, the atomic switch, large
//! bundles and MQTT 5 response topics, against the real `perch` binary.

use std::path::Path;
use std::time::{Duration, Instant};

use perch::functions::control::{encode_bundle, encode_deploy_request, DeployOptions};

use crate::util::functions::{file, wasm_file, Client, Gateway, DEADLINE};

/// The echo function (tests/wat/echo.wat): publishes each event on
/// `tests/in/#` to `out/<tag>`, so the output says which version ran.
fn echo_manifest(version: &str, tag: &str) -> String {
    format!(
        r#"
name = "echo"
version = "{version}"

[triggers]
topics = ["tests/in/#"]

[limits]
queue_len = 4096
queue_policy = "drop_newest"

[publish]
allow = ["out/#"]

[config]
out = "out/{tag}"
"#
    )
}

/// Deploys echo `version` tagged `tag` with the CLI; returns (ok, output).
fn deploy_echo(
    gw: &Gateway,
    dir: &Path,
    version: &str,
    tag: &str,
    extra: &[&str],
) -> (bool, String) {
    let module = wasm_file(dir, "echo");
    let manifest = file(
        dir,
        &format!("echo-{version}.toml"),
        echo_manifest(version, tag),
    );
    let mut args = vec![
        "deploy",
        module.to_str().unwrap(),
        "--manifest",
        manifest.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    gw.perch_fn(&args)
}

/// Publishes one reading and returns the topic echo answered on.
async fn which_version(sensor: &Client, watcher: &mut Client, reading: &str) -> String {
    sensor.publish("tests/in/a", reading).await;
    let (topic, payload) = watcher.next().await;
    assert_eq!(payload, reading);
    topic
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_rollback_remove_and_restart_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let gw = Gateway::start("e2e-versions", d);
    let (ok, out) = deploy_echo(&gw, d, "1.0.0", "v1", &[]);
    assert!(ok, "{out}\n{}", gw.log());

    // Nothing to roll back to: a clear refusal, v1 keeps running.
    let (ok, out) = gw.perch_fn(&["rollback", "echo"]);
    assert!(!ok);
    assert!(out.contains("no previous version to roll back to"), "{out}");
    let mut watcher = Client::connect(gw.addr, "watcher", &["out/#"]).await;
    let sensor = Client::connect(gw.addr, "sensor", &[]).await;
    assert_eq!(which_version(&sensor, &mut watcher, "1").await, "out/v1");

    let (ok, out) = deploy_echo(&gw, d, "2.0.0", "v2", &[]);
    assert!(
        ok && out.contains("deployed echo 2.0.0 (was 1.0.0) on e2e-"),
        "{out}"
    );
    assert_eq!(which_version(&sensor, &mut watcher, "2").await, "out/v2");

    // An older version is refused unless forced.
    let (ok, out) = deploy_echo(&gw, d, "1.5.0", "v15", &[]);
    assert!(!ok);
    assert!(out.contains("runs version 2.0.0; 1.5.0 is older"), "{out}");
    assert!(out.contains("--force"), "{out}");
    assert_eq!(which_version(&sensor, &mut watcher, "3").await, "out/v2");

    // The human table and the retained status.
    let (ok, table) = gw.perch_fn(&["list"]);
    assert!(ok, "{table}");
    assert!(table.lines().next().unwrap().starts_with("NAME"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("echo") && l.contains("2.0.0") && l.contains("running")),
        "{table}"
    );
    let (ok, status) = gw.perch_fn(&["status", "echo", "--json"]);
    assert!(ok, "{status}");
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["version"], "2.0.0");
    assert_eq!(status["triggers"], serde_json::json!(["tests/in/#"]));
    assert_eq!(status["versions"], serde_json::json!(["1.0.0", "2.0.0"]));

    let (ok, out) = gw.perch_fn(&["rollback", "echo"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("rolled back echo to 1.0.0 (was 2.0.0)"),
        "{out}"
    );
    assert_eq!(which_version(&sensor, &mut watcher, "4").await, "out/v1");

    // The rollback survives a restart.
    drop((watcher, sensor));
    let gw = gw.restart();
    let mut watcher = Client::connect(gw.addr, "watcher", &["out/#"]).await;
    let sensor = Client::connect(gw.addr, "sensor", &[]).await;
    assert_eq!(which_version(&sensor, &mut watcher, "5").await, "out/v1");
    let mut status_watch =
        Client::connect(gw.addr, "status", &["perch/e2e-versions/fn/echo/status"]).await;
    // The retained status may still be the one from the start ("starting",
    // no version yet) for the few milliseconds until the worker switched.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, retained) = status_watch.next().await;
        if retained.contains("\"version\":\"1.0.0\"") {
            assert!(retained.contains("\"state\":\"running\""), "{retained}");
            break;
        }
        assert!(
            retained.contains("\"state\":\"starting\"") && Instant::now() < deadline,
            "the restored status: {retained}"
        );
    }

    let (ok, out) = gw.perch_fn(&["remove", "echo"]);
    assert!(ok, "{out}");
    // The retained status is cleared (an empty message), events go nowhere.
    let start = Instant::now();
    loop {
        let (_, payload) = status_watch.next().await;
        if payload.is_empty() {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "the status was not cleared");
    }
    sensor.publish("tests/in/a", "6").await;
    assert!(watcher.nothing_within(Duration::from_millis(500)).await);
    let (ok, out) = gw.perch_fn(&["status", "echo"]);
    assert!(!ok);
    assert!(
        out.contains("publishes no status for function \"echo\""),
        "{out}"
    );
    assert!(gw.list().is_empty());
    let (ok, out) = gw.perch_fn(&["remove", "echo"]);
    assert!(
        !ok && out.contains("no function \"echo\" is deployed"),
        "{out}"
    );
}

/// While events stream in, v2 replaces v1: every event is handled exactly
/// once, all of v1's before all of v2's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_switch_to_a_new_version_loses_and_doubles_no_event() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_owned();
    let gw = std::sync::Arc::new(Gateway::start("e2e-switch", &d));
    let (ok, out) = deploy_echo(&gw, &d, "1.0.0", "v1", &[]);
    assert!(ok, "{out}");
    let mut watcher = Client::connect(gw.addr, "watcher", &["out/#"]).await;
    let sensor = Client::connect(gw.addr, "sensor", &[]).await;
    let mut sent = 0;
    for _ in 0..50 {
        sensor.publish("tests/in/a", &sent.to_string()).await;
        sent += 1;
    }
    let deployer = {
        let (gw, d) = (gw.clone(), d.clone());
        std::thread::spawn(move || deploy_echo(&gw, &d, "2.0.0", "v2", &[]))
    };
    while !deployer.is_finished() {
        sensor.publish("tests/in/a", &sent.to_string()).await;
        sent += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (ok, out) = deployer.join().unwrap();
    assert!(ok, "{out}");
    // The reply waited for the worker's switch: from here on, v2 only.
    let after_reply = sent;
    for _ in 0..50 {
        sensor.publish("tests/in/a", &sent.to_string()).await;
        sent += 1;
    }
    let mut seen = vec![None; sent];
    for _ in 0..sent {
        let (topic, payload) = watcher.next().await;
        let i: usize = payload.parse().unwrap();
        assert!(seen[i].is_none(), "event {i} was handled twice");
        seen[i] = Some(topic);
    }
    assert!(watcher.nothing_within(Duration::from_millis(300)).await);
    // Events still queued when the switch came go to v2 (the worker takes
    // the deploy before its queue), so where v2 starts depends on how far
    // behind the worker was; that it is one switch in order, and v2 for
    // everything sent after the reply, does not.
    let first_v2 = seen
        .iter()
        .position(|t| t.as_deref() == Some("out/v2"))
        .unwrap();
    assert!(
        first_v2 <= after_reply,
        "event {first_v2}, sent after the deploy reply, reached v1: {seen:?}"
    );
    assert!(
        seen[..first_v2]
            .iter()
            .all(|t| t.as_deref() == Some("out/v1"))
            && seen[first_v2..]
                .iter()
                .all(|t| t.as_deref() == Some("out/v2")),
        "v1 and v2 interleaved: {seen:?}"
    );
    let f = gw.function("echo");
    assert_eq!(f["invocations"], sent as u64);
    assert_eq!((&f["errors"], &f["dropped"]), (&0.into(), &0.into()));
}

/// Sends `payload` to `perch/<id>/fn/<command>` with a plain MQTT client and
/// returns the JSON reply from `/reply`.
async fn raw(
    gw: &Gateway,
    client: &mut Client,
    command: &str,
    payload: Vec<u8>,
) -> serde_json::Value {
    client
        .publish_bytes(&format!("perch/{}/fn/{command}", gw.id), payload)
        .await;
    let (topic, reply) = client.next().await;
    assert_eq!(topic, format!("perch/{}/fn/{command}/reply", gw.id));
    serde_json::from_str(&reply).unwrap_or_else(|e| panic!("{e}: {reply}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_control_requests_get_a_reply_and_the_running_version_keeps_running() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let gw = Gateway::start_with("e2e-badctl", d, "max_bundle_bytes = 65536");
    let (ok, out) = deploy_echo(&gw, d, "1.0.0", "v1", &[]);
    assert!(ok, "{out}");
    let replies = ["deploy/reply", "rollback/reply", "remove/reply"]
        .map(|r| format!("perch/e2e-badctl/fn/{r}"));
    let filters: Vec<&str> = replies.iter().map(String::as_str).collect();
    let mut ctl = Client::connect(gw.addr, "ctl", &filters).await;

    let module = std::fs::read(wasm_file(d, "echo")).unwrap();
    let bundle = encode_bundle(&echo_manifest("2.0.0", "v2"), &module);
    let r = raw(&gw, &mut ctl, "deploy", bundle[..bundle.len() / 2].to_vec()).await;
    assert_eq!(r["ok"], false);
    let e = r["error"].as_str().unwrap();
    assert!(e.contains("unexpected end-of-file"), "{e}");
    let r = raw(&gw, &mut ctl, "deploy", bundle[..20].to_vec()).await;
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("the bundle is cut short"),
        "{r}"
    );
    let r = raw(&gw, &mut ctl, "deploy", b"hello".to_vec()).await;
    assert!(
        r["error"].as_str().unwrap().contains("not a perch bundle"),
        "{r}"
    );
    let r = raw(
        &gw,
        &mut ctl,
        "deploy",
        [b"{\"force\": yes}\n".as_slice(), &bundle].concat(),
    )
    .await;
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("deploy options line is not valid"),
        "{r}"
    );

    // Over functions.max_bundle_bytes (but within the broker's packet limit).
    let mut big = module.clone();
    push_custom_section(&mut big, 70_000);
    let big = encode_bundle(&echo_manifest("2.0.0", "v2"), &big);
    let r = raw(&gw, &mut ctl, "deploy", big).await;
    let e = r["error"].as_str().unwrap();
    assert!(
        e.contains("more than this gateway accepts (65536 bytes"),
        "{e}"
    );

    let r = raw(&gw, &mut ctl, "rollback", b"echo".to_vec()).await;
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("the rollback request is not valid"),
        "{r}"
    );
    let r = raw(
        &gw,
        &mut ctl,
        "rollback",
        br#"{"name":"echo","request_id":"r1"}"#.to_vec(),
    )
    .await;
    assert_eq!(r["request_id"], "r1");
    assert!(
        r["error"].as_str().unwrap().contains("no previous version"),
        "{r}"
    );
    let r = raw(&gw, &mut ctl, "remove", br#"{"name":"nope"}"#.to_vec()).await;
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("no function \"nope\" is deployed"),
        "{r}"
    );

    // A second deploy of a name whose deploy is under way: refused at once.
    let slow = std::fs::read(wasm_file(d, "slow_init")).unwrap();
    let slow_manifest = |v: &str| {
        format!("name = \"slow\"\nversion = \"{v}\"\n[triggers]\ntopics = [\"tests/slow\"]\n[limits]\nfuel = 4000000000\n")
    };
    ctl.publish_bytes(
        "perch/e2e-badctl/fn/deploy",
        encode_bundle(&slow_manifest("1.0.0"), &slow),
    )
    .await;
    ctl.publish_bytes(
        "perch/e2e-badctl/fn/deploy",
        encode_deploy_request(
            &DeployOptions {
                force: false,
                request_id: Some("second".into()),
                ..DeployOptions::default()
            },
            &encode_bundle(&slow_manifest("1.0.1"), &slow),
        ),
    )
    .await;
    let mut answers = Vec::new();
    for _ in 0..2 {
        let (_, reply) = ctl.next().await;
        answers.push(serde_json::from_str::<serde_json::Value>(&reply).unwrap());
    }
    let refused: Vec<_> = answers.iter().filter(|a| a["ok"] == false).collect();
    assert_eq!(refused.len(), 1, "{answers:?}");
    assert!(
        refused[0]["error"]
            .as_str()
            .unwrap()
            .contains("of function \"slow\" is in progress"),
        "{answers:?}"
    );

    // Through all of it, v1 ran.
    let mut watcher = Client::connect(gw.addr, "watcher", &["out/#"]).await;
    let sensor = Client::connect(gw.addr, "sensor", &[]).await;
    assert_eq!(which_version(&sensor, &mut watcher, "7").await, "out/v1");
    let f = gw.function("echo");
    assert_eq!(
        (&f["version"], &f["state"]),
        (&"1.0.0".into(), &"running".into())
    );
}

/// Appends a custom section of about `size` bytes (named "pad").
fn push_custom_section(wasm: &mut Vec<u8>, size: usize) {
    let body_len = 1 + 3 + size;
    wasm.push(0);
    let mut n = body_len;
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            wasm.push(byte);
            break;
        }
        wasm.push(byte | 0x80);
    }
    wasm.push(3);
    wasm.extend_from_slice(b"pad");
    wasm.extend(std::iter::repeat_n(0xAB, size));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_3_mib_bundle_deploys_and_mqtt5_clients_get_replies_on_their_response_topic() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let gw = Gateway::start("e2e-big", d);
    let mut big = std::fs::read(wasm_file(d, "echo")).unwrap();
    push_custom_section(&mut big, 3 * 1024 * 1024);
    let (ok, out) = gw.perch_fn(&[
        "deploy",
        file(d, "big.wasm", &big).to_str().unwrap(),
        "--manifest",
        file(d, "big.toml", echo_manifest("1.0.0", "big"))
            .to_str()
            .unwrap(),
    ]);
    assert!(ok, "{out}\n{}", gw.log());
    let mut watcher = Client::connect(gw.addr, "watcher", &["out/#"]).await;
    let sensor = Client::connect(gw.addr, "sensor", &[]).await;
    assert_eq!(which_version(&sensor, &mut watcher, "1").await, "out/big");

    // MQTT 5: the reply goes to the request's response topic, with its
    // correlation data, not to the /reply topic.
    use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let mut options = MqttOptions::new("v5-client", gw.addr.ip().to_string(), gw.addr.port());
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut el) = AsyncClient::new(options, 10);
    client
        .subscribe("my/replies/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    client
        .subscribe("perch/e2e-big/fn/+/reply", QoS::AtLeastOnce)
        .await
        .unwrap();
    let exchange = async {
        let mut subacks = 0;
        loop {
            match el.poll().await.unwrap() {
                Event::Incoming(Packet::SubAck(_)) => {
                    subacks += 1;
                    if subacks == 2 {
                        let properties = PublishProperties {
                            response_topic: Some("my/replies/42".into()),
                            correlation_data: Some(bytes::Bytes::from_static(b"corr-42")),
                            ..Default::default()
                        };
                        client
                            .publish_with_properties(
                                "perch/e2e-big/fn/list",
                                QoS::AtLeastOnce,
                                false,
                                "{}",
                                properties,
                            )
                            .await
                            .unwrap();
                    }
                }
                Event::Incoming(Packet::Publish(p)) => return p,
                _ => {}
            }
        }
    };
    let reply = tokio::time::timeout(DEADLINE, exchange)
        .await
        .expect("a v5 reply");
    assert_eq!(&reply.topic[..], b"my/replies/42");
    let correlation = reply.properties.and_then(|p| p.correlation_data);
    assert_eq!(correlation.as_deref(), Some(&b"corr-42"[..]));
    let list: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(list[0]["name"], "echo");
}

/// A function that makes one output of each kind and logs a line, for
/// `perch fn invoke`.
const ALL_OUTPUTS_WAT: &str = r#"
(module
  (import "perch" "publish" (func $publish (param i32 i32 i32 i32) (result i32)))
  (import "perch" "emit" (func $emit (param i32 i32 i32 i32 f64) (result i32)))
  (import "perch" "forward" (func $forward (param i32 i32 i32 i32) (result i32)))
  (import "perch" "log" (func $log (param i32 i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "out/all")
  (data (i32.const 16) "temp")
  (data (i32.const 24) "room")
  (data (i32.const 32) "raw")
  (data (i32.const 40) "hello from invoke")
  (func (export "perch_abi_version") (result i32) (i32.const 1))
  (func (export "perch_event_buffer") (result i32) (i32.const 1024))
  (func (export "perch_event_buffer_len") (result i32) (i32.const 4096))
  (func (export "perch_on_event") (param $tl i32) (param $pl i32) (param $ts i64) (result i32)
    (call $log (i32.const 2) (i32.const 40) (i32.const 17))
    (drop (call $publish (i32.const 0) (i32.const 7)
                         (i32.add (i32.const 1024) (local.get $tl)) (local.get $pl)))
    (drop (call $emit (i32.const 16) (i32.const 4) (i32.const 24) (i32.const 4) (f64.const 21.5)))
    (drop (call $forward (i32.const 32) (i32.const 3)
                         (i32.add (i32.const 1024) (local.get $tl)) (local.get $pl)))
    (i32.const 0))
)
"#;

/// `perch fn invoke` runs the live version once on one event and prints
/// what it published, emitted, forwarded and logged; nothing is delivered
/// and the function's counters do not move. A failing invocation is shown
/// and exits non-zero; an unknown or stopped function, bad JSON, a topic
/// with wildcards and a malformed request are refused with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_runs_a_function_once_and_delivers_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let gw = Gateway::start("e2e-invoke", d);
    let wasm = file(d, "all.wasm", wat::parse_str(ALL_OUTPUTS_WAT).unwrap());
    let manifest = file(
        d,
        "all.toml",
        "name = \"all\"\nversion = \"1.0.0\"\n\n[triggers]\ntopics = [\"tests/all/+\"]\n\n\
         [publish]\nallow = [\"out/#\"]\n",
    );
    let (ok, out) = gw.perch_fn(&[
        "deploy",
        wasm.to_str().unwrap(),
        "--manifest",
        manifest.to_str().unwrap(),
    ]);
    assert!(ok, "{out}\n{}", gw.log());
    let mut watcher = Client::connect(gw.addr, "watcher", &["out/#"]).await;

    let (ok, out) = gw.perch_fn(&[
        "invoke",
        "all",
        "--payload",
        "{\"t\": 1}",
        "--topic",
        "tests/all/x",
    ]);
    assert!(ok, "{out}\n{}", gw.log());
    assert!(
        out.contains("invoked all 1.0.0 on tests/all/x in "),
        "{out}"
    );
    assert!(out.contains("): ok"), "{out}");
    assert!(out.contains("publish  out/all  {\"t\": 1}"), "{out}");
    assert!(out.contains("emit     temp [room] = 21.5"), "{out}");
    assert!(out.contains("forward  raw  {\"t\": 1}"), "{out}");
    assert!(out.contains("log      INFO  hello from invoke"), "{out}");
    assert!(out.contains("nothing was delivered"), "{out}");

    // The default topic comes from the trigger; --payload-file; --json.
    let payload = file(d, "event.json", "[1, 2]");
    let (ok, out) = gw.perch_fn(&[
        "invoke",
        "all",
        "--payload-file",
        payload.to_str().unwrap(),
        "--json",
    ]);
    assert!(ok, "{out}");
    let reply: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(reply["topic"], "tests/all/invoke", "{reply:#}");
    assert_eq!(
        reply["outputs"][0],
        serde_json::json!({"kind": "publish", "topic": "out/all", "payload": "[1, 2]"})
    );
    assert_eq!(reply["outputs"][2]["kind"], "forward", "{reply:#}");
    assert_eq!(
        reply["logs"][0]["message"], "hello from invoke",
        "{reply:#}"
    );

    // Nothing was delivered, nothing counted.
    assert!(watcher.nothing_within(Duration::from_millis(500)).await);
    let f = gw.function("all");
    assert_eq!(f["invocations"], 0, "{f:#}");

    // Bad input.
    let (ok, out) = gw.perch_fn(&["invoke", "nope", "--payload", "1"]);
    assert!(
        !ok && out.contains("no function \"nope\" is deployed"),
        "{out}"
    );
    let (ok, out) = gw.perch_fn(&["invoke", "all", "--payload", "{\"t\": "]);
    assert!(!ok && out.contains("--payload is not valid JSON"), "{out}");
    let (ok, out) = gw.perch_fn(&["invoke", "all", "--payload", "1", "--topic", "a/+"]);
    assert!(
        !ok && out.contains("is not one a client could publish on"),
        "{out}"
    );
    let mut ctl = Client::connect(gw.addr, "ctl", &["perch/e2e-invoke/fn/invoke/reply"]).await;
    let r = raw(&gw, &mut ctl, "invoke", b"all".to_vec()).await;
    assert_eq!(r["ok"], false);
    let e = r["error"].as_str().unwrap();
    assert!(e.contains("the invoke request is not valid"), "{e}");
    assert!(e.contains("\"name\": \"my-function\""), "{e}");

    // A failing invocation is shown, and the function stays as it was;
    // once the circuit breaker stopped it, invoke refuses it.
    let failing = file(
        d,
        "failing.toml",
        "name = \"failing\"\nversion = \"1.0.0\"\n\n[triggers]\ntopics = [\"tests/fail\"]\n\n\
         [limits]\nmax_consecutive_failures = 1\n\n[publish]\nallow = [\"out/#\"]\n\n\
         [config]\nout = \"out/f\"\nfail = \"yes\"\n",
    );
    let echo = wasm_file(d, "echo");
    let (ok, out) = gw.perch_fn(&[
        "deploy",
        echo.to_str().unwrap(),
        "--manifest",
        failing.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    let (ok, out) = gw.perch_fn(&["invoke", "failing", "--payload", "1"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("invoked failing 1.0.0 on tests/fail in "),
        "{out}"
    );
    assert!(
        out.contains("the invocation failed: handler returned error 1"),
        "{out}"
    );
    assert_eq!(gw.function("failing")["state"], "running");
    let sensor = Client::connect(gw.addr, "sensor", &[]).await;
    sensor.publish("tests/fail", "1").await;
    gw.wait_for_function("failing", |f| f["state"] == "stopped");
    let (ok, out) = gw.perch_fn(&["invoke", "failing", "--payload", "1"]);
    assert!(!ok, "{out}");
    assert!(out.contains("function \"failing\" is stopped"), "{out}");
    assert!(out.contains("deploy it again to start it"), "{out}");
}

/// `perch fn replay`: a function with `[replay] keep_events_s` has its
/// trigger events kept in the buffer (never as records for upstream); a
/// replay runs the live version, or a kept one, over them in order and
/// reports counts and the first outputs without delivering anything. An
/// unknown function or version, a function that keeps no events, a bad
/// duration and an empty window are refused with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_runs_a_version_over_kept_events_and_delivers_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let gw = Gateway::start("e2e-replay", d);
    let wasm = file(d, "all.wasm", wat::parse_str(ALL_OUTPUTS_WAT).unwrap());
    let deploy = |version: &str, replay: &str| {
        let manifest = file(
            d,
            "all.toml",
            format!(
                "name = \"all\"\nversion = \"{version}\"\n\n[triggers]\n\
                 topics = [\"tests/all/+\"]\n\n[publish]\nallow = [\"out/#\"]\n{replay}"
            ),
        );
        gw.perch_fn(&[
            "deploy",
            wasm.to_str().unwrap(),
            "--manifest",
            manifest.to_str().unwrap(),
        ])
    };
    let (ok, out) = deploy("1.0.0", "\n[replay]\nkeep_events_s = 3600\n");
    assert!(ok, "{out}\n{}", gw.log());
    let mut watcher = Client::connect(gw.addr, "watcher", &["out/#"]).await;
    for i in 0..5 {
        watcher
            .publish(&format!("tests/all/{i}"), &format!("{{\"i\": {i}}}"))
            .await;
    }
    for _ in 0..5 {
        watcher.next().await;
    }
    let published = Instant::now();

    // The kept events are committed with the buffer's next batch.
    let deadline = Instant::now() + DEADLINE;
    let reply = loop {
        let (ok, out) = gw.perch_fn(&["replay", "all", "--since", "1h", "--json"]);
        if ok {
            let reply: serde_json::Value = serde_json::from_str(&out).unwrap();
            if reply["events"] == 5 {
                break reply;
            }
        }
        assert!(Instant::now() < deadline, "{out}\n{}", gw.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(reply["ok"], true, "{reply:#}");
    assert_eq!(reply["version"], "1.0.0", "{reply:#}");
    for (key, n) in [
        ("events", 5),
        ("replayed", 5),
        ("errors", 0),
        ("publishes", 5),
        ("emits", 5),
        ("forwards", 5),
    ] {
        assert_eq!(reply[key], n, "{key}: {reply:#}");
    }
    assert!(reply.get("differed").is_none(), "{reply:#}");
    assert_eq!(
        reply["outputs"][0],
        serde_json::json!({"kind": "publish", "topic": "out/all", "payload": "{\"i\": 0}"})
    );
    assert_eq!(
        reply["outputs"][14],
        serde_json::json!({"kind": "forward", "stream": "raw", "record": "{\"i\": 4}"})
    );
    let (ok, out) = gw.perch_fn(&["replay", "all", "--since", "10m"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("replayed all 1.0.0 over 5 of 5 kept events in "),
        "{out}"
    );
    assert!(out.contains(": 0 failed"), "{out}");
    assert!(
        out.contains("outputs  5 publishes, 5 emits, 5 forwards"),
        "{out}"
    );
    assert!(out.contains("publish  out/all  {\"i\": 0}"), "{out}");
    assert!(out.contains("nothing was delivered"), "{out}");

    // Nothing from the replays was delivered or buffered for upstream: the
    // buffer holds the live run's 5 forwards and, if a window of its 5
    // emits closed meanwhile, their aggregate; nothing else.
    assert!(watcher.nothing_within(Duration::from_millis(500)).await);
    let reader = perch::buffer::Reader::open(&d.join(perch::buffer::FILE_NAME)).unwrap();
    let records = reader.after(0, 100).unwrap();
    let (forwards, others): (Vec<_>, Vec<_>) = records
        .iter()
        .partition(|r| r.kind == perch::buffer::KIND_RECORD);
    assert_eq!(forwards.len(), 5, "{records:?}");
    assert!(forwards.iter().all(|r| r.stream == "raw"), "{records:?}");
    assert!(
        others
            .iter()
            .all(|r| r.kind == perch::buffer::KIND_AGGREGATE),
        "{records:?}"
    );
    assert!(
        others.len() <= 2,
        "at most the two windows the live emits straddle: {records:?}"
    );
    assert_eq!(reader.event_totals().unwrap().0, 5);
    assert_eq!(gw.function("all")["invocations"], 5);

    // Another version: the kept one runs, compared with the live one.
    let (ok, out) = deploy("1.1.0", "\n[replay]\nkeep_events_s = 3600\n");
    assert!(ok, "{out}");
    let (ok, out) = gw.perch_fn(&[
        "replay",
        "all",
        "--since",
        "1h",
        "--version",
        "1.0.0",
        "--json",
    ]);
    assert!(ok, "{out}");
    let reply: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(reply["version"], "1.0.0", "{reply:#}");
    assert_eq!(reply["replayed"], 5, "{reply:#}");
    assert_eq!(reply["differed"], 0, "same code: {reply:#}");

    // Bad input.
    let (ok, out) = gw.perch_fn(&["replay", "nope", "--since", "1h"]);
    assert!(
        !ok && out.contains("no function \"nope\" is deployed"),
        "{out}"
    );
    let (ok, out) = gw.perch_fn(&["replay", "all", "--since", "1y"]);
    assert!(!ok && out.contains("\"1y\" is not a duration"), "{out}");
    assert!(out.contains("such as 30s, 10m, 1h or 1d"), "{out}");
    let (ok, out) = gw.perch_fn(&["replay", "all", "--since", "1h", "--version", "9.9.9"]);
    assert!(
        !ok && out.contains("has no version \"9.9.9\" on this gateway (kept: 1.0.0, 1.1.0)"),
        "{out}"
    );
    let mut ctl = Client::connect(gw.addr, "ctl", &["perch/e2e-replay/fn/replay/reply"]).await;
    let r = raw(
        &gw,
        &mut ctl,
        "replay",
        br#"{"name": "all", "since": "0s"}"#.to_vec(),
    )
    .await;
    assert!(r["error"].as_str().unwrap().contains("it is zero"), "{r:#}");
    let r = raw(&gw, &mut ctl, "replay", b"all".to_vec()).await;
    let e = r["error"].as_str().unwrap();
    assert!(e.contains("the replay request is not valid"), "{e}");
    // A window with no kept events.
    while published.elapsed() < Duration::from_millis(1_500) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (ok, out) = gw.perch_fn(&["replay", "all", "--since", "1s"]);
    assert!(
        !ok && out.contains("no trigger events of function \"all\" were kept in the last 1s"),
        "{out}"
    );
    // A version without the option keeps nothing and says how to.
    let (ok, out) = deploy("1.2.0", "");
    assert!(ok, "{out}");
    let (ok, out) = gw.perch_fn(&["replay", "all", "--since", "1h"]);
    assert!(
        !ok && out.contains("does not keep its trigger events"),
        "{out}"
    );
    assert!(out.contains("[replay] keep_events_s = 3600"), "{out}");
}
