//! Signed deploys and admin-only control topics, end to end: `perch key
//! generate`, `perch fn sign`, `perch fn deploy --key`, a gateway with
//! `functions.trusted_keys` refusing unsigned, untrusted, tampered, cut and
//! oversized bundles, and the broker refusing control publishes from
//! clients that are not admins. Each refusal is checked for its reply text
//! and for the running version still running.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::util::functions::{file, wasm_file, Client, Gateway};
use crate::util::{perch, perch_with_stdin};

fn echo_manifest(version: &str, tag: &str) -> String {
    format!(
        "name = \"echo\"\nversion = \"{version}\"\n[triggers]\ntopics = [\"tests/in/#\"]\n\
         [publish]\nallow = [\"out/#\"]\n[config]\nout = \"out/{tag}\"\n"
    )
}

/// `perch key generate --out DIR/NAME.key`; returns (key file, public key).
fn generate_key(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(format!("{name}.key"));
    let out = perch(&["key", "generate", "--out", path.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("ed25519:"), "{stdout}");
    (path, stdout)
}

/// `perch fn sign` of echo `version`; returns the bundle file.
fn sign_echo(dir: &Path, key: &Path, version: &str, tag: &str) -> PathBuf {
    let module = wasm_file(dir, "echo");
    let manifest = file(
        dir,
        &format!("echo-{version}.toml"),
        echo_manifest(version, tag),
    );
    let bundle = dir.join(format!("echo-{version}.bundle"));
    let out = perch(&[
        "fn",
        "sign",
        module.to_str().unwrap(),
        "--manifest",
        manifest.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "-o",
        bundle.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    bundle
}

/// Publishes a deploy payload and returns the gateway's JSON reply to it
/// (recognised by its `bundle_sha256`: the CLI's replies arrive here too).
async fn raw_deploy(gw: &Gateway, ctl: &mut Client, payload: Vec<u8>) -> serde_json::Value {
    let sha256 = perch::functions::control::sha256_hex(&payload);
    ctl.publish_bytes(&format!("perch/{}/fn/deploy", gw.id), payload)
        .await;
    loop {
        let (topic, reply) = ctl.next().await;
        assert_eq!(topic, format!("perch/{}/fn/deploy/reply", gw.id));
        let reply: serde_json::Value =
            serde_json::from_str(&reply).unwrap_or_else(|e| panic!("{e}: {reply}"));
        if reply["bundle_sha256"] == sha256.as_str() {
            return reply;
        }
    }
}

/// The version echo answers with now.
async fn which_version(sensor: &Client, watcher: &mut Client, reading: &str) -> String {
    sensor.publish("tests/in/a", reading).await;
    let (topic, payload) = watcher.next().await;
    assert_eq!(payload, reading);
    topic
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_with_trusted_keys_deploys_only_what_they_signed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (key, public) = generate_key(d, "release");
    let (other_key, other_public) = generate_key(d, "intruder");
    // The private key is the owner's alone.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
    // Never over an existing key.
    let again = perch(&["key", "generate", "--out", key.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists already"));
    let printed = perch(&["key", "public", key.to_str().unwrap()]);
    assert_eq!(String::from_utf8_lossy(&printed.stdout).trim(), public);

    // Anonymous clients are admins here on purpose, so the raw MQTT client
    // below can send the bundles the CLI would refuse to send.
    let gw = Gateway::start_with(
        "e2e-signed",
        d,
        &format!(
            "max_bundle_bytes = 65536\ntrusted_keys = [\"{public}\"]\n\
             [broker.anonymous]\nadmin = true\n"
        ),
    );
    let module = wasm_file(d, "echo");
    let v1_manifest = file(d, "echo-1.0.0.toml", echo_manifest("1.0.0", "v1"));
    let (ok, out) = gw.perch_fn(&[
        "deploy",
        module.to_str().unwrap(),
        "--manifest",
        v1_manifest.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    assert!(ok, "{out}\n{}", gw.log());
    assert!(out.contains("uploading"), "{out}");
    assert!(out.contains("deployed echo 1.0.0 on "), "{out}");

    let mut watcher = Client::connect(gw.addr, "watcher", &["out/#"]).await;
    let sensor = Client::connect(gw.addr, "sensor", &[]).await;
    assert_eq!(which_version(&sensor, &mut watcher, "1").await, "out/v1");

    // Unsigned, through the CLI.
    let v2_manifest = file(d, "echo-2.0.0.toml", echo_manifest("2.0.0", "v2"));
    let (ok, out) = gw.perch_fn(&[
        "deploy",
        module.to_str().unwrap(),
        "--manifest",
        v2_manifest.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        out.contains("this gateway accepts only signed bundles (functions.trusted_keys is set)"),
        "{out}"
    );
    // Signed by a key the gateway does not trust.
    let (ok, out) = gw.perch_fn(&[
        "deploy",
        module.to_str().unwrap(),
        "--manifest",
        v2_manifest.to_str().unwrap(),
        "--key",
        other_key.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        out.contains(&format!(
            "the bundle is signed by {other_public}, which is not one of this gateway's \
             functions.trusted_keys"
        )),
        "{out}"
    );
    assert_eq!(which_version(&sensor, &mut watcher, "2").await, "out/v1");

    // A signed bundle, then tampered with in each of its parts. (The
    // client subscribes only now, so the CLI's replies above are not
    // among its messages.)
    let mut ctl = Client::connect(gw.addr, "ctl", &["perch/e2e-signed/fn/deploy/reply"]).await;
    let signed = std::fs::read(sign_echo(d, &key, "2.0.0", "v2")).unwrap();
    let wasm_len = std::fs::metadata(&module).unwrap().len() as usize;
    let module_at = signed.len() - 96 - wasm_len;
    let mut in_module = signed.clone();
    in_module[module_at + wasm_len / 2] ^= 0x20;
    let r = raw_deploy(&gw, &mut ctl, in_module.clone()).await;
    assert_eq!(r["ok"], false);
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("the bundle was altered after it was signed"),
        "{r}"
    );
    let mut in_manifest = signed.clone();
    let version_at = signed
        .windows(5)
        .position(|w| w == b"2.0.0")
        .expect("the version is in the manifest");
    in_manifest[version_at] = b'9';
    let r = raw_deploy(&gw, &mut ctl, in_manifest).await;
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("the bundle was altered after it was signed"),
        "{r}"
    );
    let mut in_signature = signed.clone();
    let last = in_signature.len() - 1;
    in_signature[last] ^= 0x01;
    let r = raw_deploy(&gw, &mut ctl, in_signature).await;
    assert!(
        r["error"].as_str().unwrap().contains(&format!(
            "the bundle's signature does not verify with the key it names ({public})"
        )),
        "{r}"
    );
    // Cut inside the module: format 2 knows the module's length.
    let r = raw_deploy(&gw, &mut ctl, signed[..module_at + 10].to_vec()).await;
    assert!(
        r["error"].as_str().unwrap().contains(&format!(
            "the bundle is cut short: {} bytes were announced by its header but it is {} bytes \
             long",
            signed.len(),
            module_at + 10
        )),
        "{r}"
    );
    // Over functions.max_bundle_bytes.
    let mut big = signed.clone();
    big.resize(70_000, 0);
    let r = raw_deploy(&gw, &mut ctl, big).await;
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("more than this gateway accepts (65536 bytes"),
        "{r}"
    );
    // `perch fn deploy BUNDLE` checks a damaged file before sending it.
    let damaged = file(d, "damaged.bundle", &in_module);
    let (ok, out) = gw.perch_fn(&["deploy", damaged.to_str().unwrap()]);
    assert!(!ok);
    assert!(out.contains("damaged.bundle cannot be deployed"), "{out}");
    assert!(out.contains("altered after it was signed"), "{out}");
    assert_eq!(which_version(&sensor, &mut watcher, "3").await, "out/v1");

    // The genuine bundle deploys, through the CLI.
    let bundle = file(d, "echo-2.0.0.bundle", &signed);
    let (ok, out) = gw.perch_fn(&["deploy", bundle.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(out.contains("deployed echo 2.0.0 (was 1.0.0)"), "{out}");
    assert_eq!(which_version(&sensor, &mut watcher, "4").await, "out/v2");

    // Replays: an older signed bundle is a downgrade and refused; the
    // running version's own bundle installs the same code again.
    let v1_signed = std::fs::read(sign_echo(d, &key, "1.0.0", "v1")).unwrap();
    let r = raw_deploy(&gw, &mut ctl, v1_signed).await;
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("runs version 2.0.0; 1.0.0 is older"),
        "{r}"
    );
    let r = raw_deploy(&gw, &mut ctl, signed.clone()).await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["version"], "2.0.0");
    assert_eq!(which_version(&sensor, &mut watcher, "5").await, "out/v2");
    let f = gw.function("echo");
    assert_eq!(f["versions"], serde_json::json!(["1.0.0", "2.0.0"]));
}

#[test]
fn a_bad_trusted_key_is_refused_by_the_config_check() {
    let dir = tempfile::tempdir().unwrap();
    let config = file(
        dir.path(),
        "perch.toml",
        "[functions]\ntrusted_keys = [\"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5\"]\n",
    );
    let out = perch(&["config", "check", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "functions.trusted_keys[0]: \"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5\" is not an ed25519 \
             public key"
        ),
        "{err}"
    );
}

/// A 5.0 client logged in as `user` (anonymous when `None`) publishes a
/// deploy; returns the PUBACK's reason code.
async fn v5_deploy_reason(
    gw: &Gateway,
    user: Option<(&str, &str)>,
    payload: Vec<u8>,
) -> rumqttc::v5::mqttbytes::v5::PubAckReason {
    let topic = format!("perch/{}/fn/deploy", gw.id);
    v5_publish_reason(gw, user, &topic, false, payload).await
}

/// A 5.0 client logged in as `user` (anonymous when `None`) publishes to
/// `topic` at QoS 1; returns the PUBACK's reason code.
async fn v5_publish_reason(
    gw: &Gateway,
    user: Option<(&str, &str)>,
    topic: &str,
    retain: bool,
    payload: Vec<u8>,
) -> rumqttc::v5::mqttbytes::v5::PubAckReason {
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let mut o = MqttOptions::new("v5-deployer", gw.addr.ip().to_string(), gw.addr.port());
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(Some(8 << 20));
    if let Some((u, p)) = user {
        o.set_credentials(u, p);
    }
    let (client, mut el) = AsyncClient::new(o, 10);
    client
        .publish(topic, QoS::AtLeastOnce, retain, payload)
        .await
        .unwrap();
    let wait = async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::PubAck(ack))) => return ack.reason,
                Ok(_) => {}
                Err(e) => panic!("5.0 deployer: {e:?}"),
            }
        }
    };
    tokio::time::timeout(crate::util::functions::DEADLINE, wait)
        .await
        .expect("a PUBACK")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admins_may_publish_to_the_control_topics() {
    use rumqttc::v5::mqttbytes::v5::PubAckReason;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let hash = |pw: &str| {
        let out = perch_with_stdin(&["passwd"], &format!("{pw}\n"));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let gw = Gateway::start_with(
        "e2e-admin",
        d,
        &format!(
            "[[broker.users]]\nname = \"ops\"\npassword_hash = \"{}\"\nadmin = true\n\
             [[broker.users]]\nname = \"sensor\"\npassword_hash = \"{}\"\n\
             publish = [\"#\"]\nsubscribe = [\"#\"]\n",
            hash("ops-pw"),
            hash("sensor-pw"),
        ),
    );
    let module = wasm_file(d, "echo");
    let v1 = file(d, "echo-1.0.0.toml", echo_manifest("1.0.0", "v1"));
    let deploy_as = |user: &str, pw: &str, manifest: &Path| {
        gw.perch_fn(&[
            "deploy",
            module.to_str().unwrap(),
            "--manifest",
            manifest.to_str().unwrap(),
            "--user",
            user,
            "--password",
            pw,
        ])
    };
    let (ok, out) = deploy_as("ops", "ops-pw", &v1);
    assert!(ok, "{out}\n{}", gw.log());

    // A user whose ACL allows "#" and anonymous clients (now that a user
    // is the admin) are refused with 0x87, and the deploy never happens.
    let wasm = std::fs::read(&module).unwrap();
    let bundle = |v: &str| perch::functions::control::encode_bundle(&echo_manifest(v, v), &wasm);
    let reason = v5_deploy_reason(&gw, Some(("sensor", "sensor-pw")), bundle("3.0.0")).await;
    assert_eq!(reason, PubAckReason::NotAuthorized);
    let reason = v5_deploy_reason(&gw, None, bundle("4.0.0")).await;
    assert_eq!(reason, PubAckReason::NotAuthorized);
    let reason = v5_deploy_reason(&gw, Some(("ops", "ops-pw")), bundle("2.0.0")).await;
    assert_eq!(reason, PubAckReason::Success);
    // What the non-admins sent reached nothing: neither 3.0.0 nor 4.0.0
    // was ever deployed, nor refused by the control plane.
    // `perch fn list` as the admin (anonymous clients are not admins here).
    let deadline = std::time::Instant::now() + crate::util::functions::DEADLINE;
    let f = loop {
        let (ok, out) = gw.perch_fn(&["list", "--json", "--user", "ops", "--password", "ops-pw"]);
        assert!(ok, "{out}");
        let list: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
        let f = list.into_iter().find(|f| f["name"] == "echo").unwrap();
        if f["version"] == "2.0.0" || std::time::Instant::now() > deadline {
            break f;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(f["version"], "2.0.0");
    assert_eq!(f["versions"], serde_json::json!(["1.0.0", "2.0.0"]));
    let log = gw.log();
    assert!(!log.contains("deploy refused"), "{log}");

    // The admin's rollback works through the CLI; a non-admin's status
    // read (a subscription its ACL allows) still works.
    let (ok, out) = gw.perch_fn(&["rollback", "echo", "--user", "ops", "--password", "ops-pw"]);
    assert!(ok, "{out}");
    // The retained status follows the switch within about a second.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let (ok, out) = loop {
        let (ok, out) = gw.perch_fn(&[
            "status",
            "echo",
            "--json",
            "--user",
            "sensor",
            "--password",
            "sensor-pw",
        ]);
        if (ok && out.contains("\"version\": \"1.0.0\"")) || std::time::Instant::now() > deadline {
            break (ok, out);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(ok && out.contains("\"version\": \"1.0.0\""), "{out}");
}

/// Nobody but an admin publishes under `perch/`: the anonymous loopback
/// client, whose ACL is `#`, cannot fake the gateway's retained status
/// (5.0 PUBACK 0x87), nor leave a will there (CONNACK 5), and subscribers
/// never see the fake; an admin can publish there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admins_may_publish_under_perch() {
    use rumqttc::v5::mqttbytes::v5::PubAckReason;
    let dir = tempfile::tempdir().unwrap();
    let out = perch_with_stdin(&["passwd"], "ops-pw\n");
    let hash = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let gw = Gateway::start_with(
        "e2e-reserved",
        dir.path(),
        &format!("[[broker.users]]\nname = \"ops\"\npassword_hash = \"{hash}\"\nadmin = true\n"),
    );
    let status = format!("perch/{}/status", gw.id);
    let mut watcher = Client::connect(gw.addr, "status-watcher", &[&status]).await;
    let (topic, real) = watcher.next().await;
    assert_eq!(topic, status, "the retained status first");
    assert!(!real.contains("fake"), "{real}");

    for topic in [
        status.as_str(),
        "perch/e2e-reserved/anything",
        "perch/fleet/lab/deploy/echo",
    ] {
        let fake = b"{\"state\":\"fake\"}".to_vec();
        let reason = v5_publish_reason(&gw, None, topic, true, fake).await;
        assert_eq!(reason, PubAckReason::NotAuthorized, "{topic}");
    }
    // Outside `perch/` the anonymous client still publishes anything.
    let reason = v5_publish_reason(&gw, None, "sensors/perch/status", false, b"1".to_vec()).await;
    assert_eq!(reason, PubAckReason::Success);
    // The gateway republishes its real status every few seconds; only a
    // fake one is a failure.
    let leaked = watcher
        .any_containing_within("fake", Duration::from_millis(500))
        .await;
    assert!(
        leaked.is_none(),
        "a refused publish reached a subscriber: {leaked:?}"
    );
    let mut late = Client::connect(gw.addr, "status-late", &[&status]).await;
    let (_, retained) = late.next().await;
    assert!(!retained.contains("fake"), "{retained}");

    // Nor can a will there: the gateway publishes wills itself, so the
    // broker refuses the CONNECT of a client whose will is outside its
    // ACL (3.1.1: code 5) instead of publishing it later.
    for will_topic in [status.clone(), format!("perch/{}/fn/deploy", gw.id)] {
        let mut o = crate::util::mqtt::options("will-faker", gw.addr);
        o.set_last_will(rumqttc::LastWill::new(
            &will_topic,
            "{\"state\":\"fake\"}",
            rumqttc::QoS::AtLeastOnce,
            true,
        ));
        match crate::util::mqtt::connect(o).await {
            Err(rumqttc::ConnectionError::ConnectionRefused(code)) => {
                assert_eq!(
                    code,
                    rumqttc::ConnectReturnCode::NotAuthorized,
                    "{will_topic}"
                )
            }
            Err(e) => panic!("will on {will_topic}: {e}"),
            Ok(_) => panic!("a client with a will on {will_topic} was let in"),
        }
    }
    let mut o = crate::util::mqtt::options("will-ok", gw.addr);
    o.set_last_will(rumqttc::LastWill::new(
        "sensors/will",
        "gone",
        rumqttc::QoS::AtMostOnce,
        false,
    ));
    assert!(
        crate::util::mqtt::connect(o).await.is_ok(),
        "a will inside the ACL"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !gw.log().contains("WillNotAllowed") {
        assert!(
            std::time::Instant::now() < deadline,
            "the refusal is logged with its reason:\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The admin may (here, an admin's non-retained test message).
    let reason = v5_publish_reason(
        &gw,
        Some(("ops", "ops-pw")),
        "perch/e2e-reserved/note",
        false,
        b"hello".to_vec(),
    )
    .await;
    assert_eq!(reason, PubAckReason::Success);
}

/// Logs every event's payload at level info (`perch fn logs`).
const LOGGER_WAT: &str = r#"
(module
  (import "perch" "log" (func $log (param i32 i32 i32)))
  (memory (export "memory") 1)
  (func (export "perch_abi_version") (result i32) (i32.const 1))
  (func (export "perch_event_buffer") (result i32) (i32.const 1024))
  (func (export "perch_event_buffer_len") (result i32) (i32.const 4096))
  (func (export "perch_on_event") (param $tl i32) (param $pl i32) (param $ts i64) (result i32)
    (call $log (i32.const 2) (i32.add (i32.const 1024) (local.get $tl)) (local.get $pl))
    (i32.const 0)))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn perch_fn_logs_prints_a_functions_log_lines() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let gw = Gateway::start("e2e-logs", d);
    let module = file(d, "logger.wasm", wat::parse_str(LOGGER_WAT).unwrap());
    let manifest = file(
        d,
        "logger.toml",
        "name = \"logger\"\nversion = \"1.0.0\"\n[triggers]\ntopics = [\"tests/log\"]\n",
    );
    let (ok, out) = gw.perch_fn(&[
        "deploy",
        module.to_str().unwrap(),
        "--manifest",
        manifest.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    let logs = std::process::Command::new(crate::util::perch_bin())
        .args(["fn", "logs", "logger", "--broker", &gw.addr.to_string()])
        .args(["--gateway", "e2e-logs", "--timeout-ms", "6000"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Events all through the window, so when the CLI subscribes does not
    // matter (the lines are live, not kept).
    let sensor = Client::connect(gw.addr, "sensor", &[]).await;
    for i in 0..40 {
        sensor.publish("tests/log", &format!("reading {i}")).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = logs.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text
        .lines()
        .find(|l| l.contains("reading "))
        .unwrap_or_else(|| panic!("no log line: {text}"));
    assert!(line.contains(" INFO  1.0.0"), "{line}");
}
