//! Rollouts end to end: canary with automatic rollback, promote, shadow,
//! the issue's "Done means" walk through the CLI, and bad rollout requests,
//! against the real `perch` binary.

use std::path::Path;
use std::time::Duration;

use crate::util::functions::{file, wasm_file, Client, Gateway};

/// The echo function (tests/wat/echo.wat): publishes each event on
/// `tests/in/#` to `out/<tag>`; with `fail` set, every event fails.
fn echo_manifest(version: &str, tag: &str, fail: bool) -> String {
    let fail = if fail { "fail = \"yes\"\n" } else { "" };
    format!(
        r#"
name = "echo"
version = "{version}"

[triggers]
topics = ["tests/in/#"]

[limits]
queue_len = 4096

[publish]
allow = ["out/#"]

[config]
out = "out/{tag}"
{fail}"#
    )
}

/// Deploys echo with the CLI; returns (ok, output).
fn deploy(
    gw: &Gateway,
    dir: &Path,
    version: &str,
    tag: &str,
    fail: bool,
    extra: &[&str],
) -> (bool, String) {
    let module = wasm_file(dir, "echo");
    let manifest = file(
        dir,
        &format!("echo-{version}-{tag}.toml"),
        echo_manifest(version, tag, fail),
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

/// Publishes `payloads` in order, then returns the first `expect` outputs
/// as (topic, payload).
async fn run(
    sensor: &Client,
    watcher: &mut Client,
    payloads: &[&str],
    expect: usize,
) -> Vec<(String, String)> {
    for p in payloads {
        sensor.publish("tests/in/a", p).await;
    }
    let mut out = Vec::new();
    for _ in 0..expect {
        out.push(watcher.next().await);
    }
    out
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(t, p)| (t.to_string(), p.to_string()))
        .collect()
}

/// The issue's "Done means", through the CLI: v1 live in `perch fn list`,
/// v2 as a canary that errors and is rolled back by itself, v3 as a canary
/// promoted to the only version, a restart, v3 runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_rolls_back_by_itself_then_a_promoted_canary_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Judged over windows of 4 canary invocations: 2 failures are too many.
    let gw = Gateway::start_with(
        "e2e-canary",
        d,
        "canary_window_events = 4\ncanary_max_error_percent = 25",
    );
    let (ok, out) = deploy(&gw, d, "1.0.0", "v1", false, &[]);
    assert!(ok, "{out}\n{}", gw.log());
    let (ok, table) = gw.perch_fn(&["list"]);
    assert!(ok, "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("echo") && l.contains("1.0.0") && l.contains("running")),
        "{table}"
    );
    let mut watcher = Client::connect(gw.addr, "watcher", &["out/#"]).await;
    let sensor = Client::connect(gw.addr, "sensor", &[]).await;

    // v2 takes every second event, and fails on each.
    let (ok, out) = deploy(&gw, d, "2.0.0", "v2", true, &["--canary", "50"]);
    assert!(ok, "{out}\n{}", gw.log());
    let f = gw.function("echo");
    assert_eq!(f["version"], "1.0.0", "{f:#}");
    assert_eq!(f["canary"]["version"], "2.0.0", "{f:#}");
    assert_eq!(f["canary"]["percent"], 50, "{f:#}");
    assert_eq!(f["canary"]["state"], "running", "{f:#}");
    let got = run(&sensor, &mut watcher, &["1", "2", "3", "4"], 2).await;
    assert_eq!(got, pairs(&[("out/v1", "1"), ("out/v1", "3")]));
    let f = gw.wait_for_function("echo", |f| f["canary"]["state"] == "rolled_back");
    assert_eq!(f["version"], "1.0.0", "{f:#}");
    assert_eq!(f["state"], "running", "{f:#}");
    assert_eq!(f["canary"]["invocations"], 2, "{f:#}");
    assert_eq!(f["canary"]["errors"], 2, "{f:#}");
    let reason = f["canary"]["reason"].as_str().unwrap();
    assert!(
        reason
            .contains("canary 2.0.0 rolled back automatically: 2 of its last 2 invocations failed"),
        "{reason}"
    );
    assert!(
        f["last_error"]
            .as_str()
            .unwrap()
            .contains("rolled back automatically"),
        "{f:#}"
    );
    // The retained status says so too (an automatic rollback is not a
    // command: the status follows within about a second).
    let mut status = Client::connect(gw.addr, "status", &["perch/e2e-canary/fn/echo/status"]).await;
    loop {
        let (_, retained) = status.next().await;
        if retained.contains("\"state\":\"rolled_back\"") {
            break;
        }
    }
    drop(status);
    // Every event goes to v1 now; nothing is left to promote.
    let got = run(&sensor, &mut watcher, &["5", "6"], 2).await;
    assert_eq!(got, pairs(&[("out/v1", "5"), ("out/v1", "6")]));
    let (ok, out) = gw.perch_fn(&["promote", "echo"]);
    assert!(!ok, "{out}");
    assert!(out.contains("has no canary or shadow to promote"), "{out}");

    // v3 as a canary: exactly every second event, then promoted.
    let (ok, out) = deploy(&gw, d, "3.0.0", "v3", false, &["--canary", "50"]);
    assert!(ok, "{out}\n{}", gw.log());
    let got = run(&sensor, &mut watcher, &["7", "8", "9", "10"], 4).await;
    assert_eq!(
        got,
        pairs(&[
            ("out/v1", "7"),
            ("out/v3", "8"),
            ("out/v1", "9"),
            ("out/v3", "10")
        ])
    );
    let (ok, out) = gw.perch_fn(&["promote", "echo"]);
    assert!(ok, "{out}\n{}", gw.log());
    assert!(out.contains("promoted echo 3.0.0 (was 1.0.0)"), "{out}");
    let got = run(&sensor, &mut watcher, &["11", "12"], 2).await;
    assert_eq!(got, pairs(&[("out/v3", "11"), ("out/v3", "12")]));
    let f = gw.function("echo");
    assert_eq!(f["version"], "3.0.0", "{f:#}");
    assert!(f.get("canary").is_none(), "{f:#}");

    // A restart finds v3 running.
    drop((watcher, sensor));
    let gw = gw.restart();
    let f = gw.wait_for_function("echo", |f| f["state"] == "running");
    assert_eq!(f["version"], "3.0.0", "{f:#}");
    let mut watcher = Client::connect(gw.addr, "watcher", &["out/#"]).await;
    let sensor = Client::connect(gw.addr, "sensor", &[]).await;
    let got = run(&sensor, &mut watcher, &["13"], 1).await;
    assert_eq!(got, pairs(&[("out/v3", "13")]));
    // v3 rolls back to v1, the version that ran before it.
    let (ok, out) = gw.perch_fn(&["rollback", "echo"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("rolled back echo to 1.0.0 (was 3.0.0)"),
        "{out}"
    );
}

/// A shadow sees every event, delivers nothing, counts how often its
/// outputs differ from the live version's; promote makes it live. A
/// rollback during a rollout ends it and changes nothing else; a restart
/// ends it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_delivers_nothing_counts_differences_and_can_be_promoted() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let gw = Gateway::start("e2e-shadow", d);
    let (ok, out) = deploy(&gw, d, "1.0.0", "v1", false, &[]);
    assert!(ok, "{out}\n{}", gw.log());
    let mut watcher = Client::connect(gw.addr, "watcher", &["out/#"]).await;
    let sensor = Client::connect(gw.addr, "sensor", &[]).await;

    // A shadow whose outputs differ (another topic): only v1's arrive.
    let (ok, out) = deploy(&gw, d, "2.0.0", "v2", false, &["--shadow"]);
    assert!(ok, "{out}\n{}", gw.log());
    let got = run(&sensor, &mut watcher, &["1", "2", "3"], 3).await;
    assert_eq!(
        got,
        pairs(&[("out/v1", "1"), ("out/v1", "2"), ("out/v1", "3")])
    );
    assert!(watcher.nothing_within(Duration::from_millis(500)).await);
    let f = gw.wait_for_function("echo", |f| f["shadow"]["invocations"] == 3);
    assert_eq!(f["version"], "1.0.0", "{f:#}");
    assert_eq!(f["shadow"]["version"], "2.0.0", "{f:#}");
    assert_eq!(f["shadow"]["differing"], 3, "{f:#}");
    assert_eq!(f["shadow"]["errors"], 0, "{f:#}");
    assert_eq!(f["invocations"], 3, "{f:#}");

    // A rollback ends the shadow; v1 stays.
    let (ok, out) = gw.perch_fn(&["rollback", "echo"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("rolled back echo to 1.0.0 (was 2.0.0)"),
        "{out}"
    );
    let f = gw.function("echo");
    assert!(f.get("shadow").is_none(), "{f:#}");

    // A shadow with the same outputs and one that fails: counted apart.
    let (ok, out) = deploy(&gw, d, "2.0.1", "v1", false, &["--shadow"]);
    assert!(ok, "{out}\n{}", gw.log());
    let got = run(&sensor, &mut watcher, &["4", "5"], 2).await;
    assert_eq!(got, pairs(&[("out/v1", "4"), ("out/v1", "5")]));
    let f = gw.wait_for_function("echo", |f| f["shadow"]["invocations"] == 2);
    assert_eq!(f["shadow"]["differing"], 0, "{f:#}");
    let (ok, out) = deploy(&gw, d, "2.0.2", "v2", true, &["--shadow"]);
    assert!(ok, "{out}\n{}", gw.log());
    let got = run(&sensor, &mut watcher, &["6"], 1).await;
    assert_eq!(got, pairs(&[("out/v1", "6")]));
    let f = gw.wait_for_function("echo", |f| f["shadow"]["invocations"] == 1);
    assert_eq!(f["shadow"]["errors"], 1, "{f:#}");
    // A failing shadow is not rolled back: it can take nothing down.
    assert_eq!(f["shadow"]["state"], "running", "{f:#}");

    // Promote a good one: it becomes the live version.
    let (ok, out) = deploy(&gw, d, "2.1.0", "v21", false, &["--shadow"]);
    assert!(ok, "{out}\n{}", gw.log());
    let (ok, out) = gw.perch_fn(&["promote", "echo"]);
    assert!(ok, "{out}\n{}", gw.log());
    let got = run(&sensor, &mut watcher, &["7"], 1).await;
    assert_eq!(got, pairs(&[("out/v21", "7")]));

    // A rollout does not survive a restart: the live version comes back.
    let (ok, out) = deploy(&gw, d, "2.2.0", "v22", false, &["--canary", "50"]);
    assert!(ok, "{out}\n{}", gw.log());
    drop((watcher, sensor));
    let gw = gw.restart();
    let f = gw.wait_for_function("echo", |f| f["state"] == "running");
    assert_eq!(f["version"], "2.1.0", "{f:#}");
    assert!(f.get("canary").is_none(), "{f:#}");
    let mut watcher = Client::connect(gw.addr, "watcher", &["out/#"]).await;
    let sensor = Client::connect(gw.addr, "sensor", &[]).await;
    let got = run(&sensor, &mut watcher, &["8", "9"], 2).await;
    assert_eq!(got, pairs(&[("out/v21", "8"), ("out/v21", "9")]));
}

/// Bad rollout requests get a reply that says what is wrong, and what ran
/// keeps running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rollout_requests_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let gw = Gateway::start("e2e-rollout-bad", d);
    // Nothing runs yet: no canary beside it.
    let (ok, out) = deploy(&gw, d, "1.0.0", "v1", false, &["--canary", "10"]);
    assert!(!ok, "{out}");
    assert!(out.contains("has no running version for a canary"), "{out}");
    let (ok, out) = deploy(&gw, d, "1.0.0", "v1", false, &[]);
    assert!(ok, "{out}");
    for (percent, says) in [("0", "canary 0 is not a share"), ("100", "canary 100")] {
        let (ok, out) = deploy(&gw, d, "2.0.0", "v2", false, &["--canary", percent]);
        assert!(!ok, "{out}");
        assert!(out.contains(says), "{out}");
        assert!(out.contains("from 1 to 99 percent"), "{out}");
    }
    // The CLI refuses both at once before sending anything.
    let (ok, out) = deploy(&gw, d, "2.0.0", "v2", false, &["--canary", "5", "--shadow"]);
    assert!(!ok, "{out}");
    assert!(out.contains("cannot be used with"), "{out}");
    let (ok, out) = gw.perch_fn(&["promote", "echo"]);
    assert!(!ok, "{out}");
    assert!(out.contains("has no canary or shadow to promote"), "{out}");
    let (ok, out) = gw.perch_fn(&["promote", "nope"]);
    assert!(!ok, "{out}");
    assert!(out.contains("no function \"nope\" is deployed"), "{out}");
    // An older canary is refused like an older deploy.
    let (ok, out) = deploy(&gw, d, "0.9.0", "v09", false, &["--canary", "10"]);
    assert!(!ok, "{out}");
    assert!(out.contains("is older"), "{out}");
    let mut watcher = Client::connect(gw.addr, "watcher", &["out/#"]).await;
    let sensor = Client::connect(gw.addr, "sensor", &[]).await;
    let got = run(&sensor, &mut watcher, &["1"], 1).await;
    assert_eq!(got, pairs(&[("out/v1", "1")]));
    let f = gw.function("echo");
    assert_eq!(f["version"], "1.0.0", "{f:#}");
    assert!(f.get("canary").is_none(), "{f:#}");
}

/// Polls `perch fn list` until echo is listed and `check` holds for it.
fn wait_listed(gw: &Gateway, check: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let start = std::time::Instant::now();
    loop {
        if let Some(f) = gw.list().into_iter().find(|f| f["name"] == "echo") {
            if check(&f) {
                return f;
            }
        }
        assert!(
            start.elapsed() < crate::util::functions::DEADLINE * 3,
            "echo did not reach the expected state on {}\nlog:\n{}",
            gw.id,
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Publishes `payload` retained on the upstream broker at `addr` (the
/// fleet's desired state) and waits for the PUBACK.
async fn publish_desired(addr: std::net::SocketAddr, topic: &str, payload: Vec<u8>) {
    use crate::util::mqtt;
    let mut options = mqtt::options(&format!("ci-{}", payload.len()), addr);
    options.set_max_packet_size(8 << 20, 8 << 20);
    let (client, mut el) = mqtt::connect(options).await.expect("connect upstream");
    client
        .publish(topic, rumqttc::QoS::AtLeastOnce, true, payload)
        .await
        .unwrap();
    mqtt::wait_puback(&mut el).await;
    let _ = client.disconnect().await;
}

/// A fleet deploy request, as `perch fn deploy` would send it: the options
/// line when `canary` is given, then the bundle. (Built with the real
/// encoder: an options line without its newline is refused.)
fn fleet_request(version: &str, tag: &str, fail: bool, canary: Option<u8>) -> Vec<u8> {
    use perch::functions::control::{encode_bundle, encode_deploy_request, DeployOptions};
    let dir = tempfile::tempdir().unwrap();
    let wasm = std::fs::read(wasm_file(dir.path(), "echo")).unwrap();
    let bundle = encode_bundle(&echo_manifest(version, tag, fail), &wasm);
    let options = DeployOptions {
        canary,
        ..DeployOptions::default()
    };
    encode_deploy_request(&options, &bundle)
}

/// Reads what the gateways report upstream until, for every id in `ids`, a
/// status of echo (`perch/<id>/fn/echo/status`) satisfies `check`. One
/// long-lived subscription: no `perch fn list` process per poll.
async fn wait_upstream_status(
    cloud: &mut Client,
    ids: &[&str],
    check: impl Fn(&serde_json::Value) -> bool,
) {
    let mut seen = std::collections::HashSet::new();
    while seen.len() < ids.len() {
        let (t, p) = cloud.next().await;
        let Ok(status) = serde_json::from_str::<serde_json::Value>(&p) else {
            continue;
        };
        for id in ids {
            if t == format!("perch/{id}/fn/echo/status") && check(&status) {
                seen.insert(*id);
            }
        }
    }
}

/// The issue's "Done means" with three gateways through one upstream broker
/// (Mosquitto), every step delivered as the fleet's desired state on
/// `perch/fleet/lab/deploy/echo`: v1 reaches the two gateways that are up
/// (statuses and replies come back upstream) and the third when it starts;
/// v2 as a canary that errors is rolled back by each gateway by itself
/// (its status, upstream too, says so); v3 as a canary, then promoted (on
/// one gateway with `perch fn promote`, on all by publishing v3 without the
/// canary option as the desired state); after a restart of all three, v3
/// runs everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_gateways_follow_the_fleet_desired_state() {
    let mosquitto = crate::store_forward::Mosquitto::start(
        crate::util::free_port(),
        tempfile::tempdir().unwrap(),
    );
    // The canary keys belong to [functions], so before [upstream.mqtt].
    let config = format!(
        "canary_window_events = 4\ncanary_max_error_percent = 25\n\n\
         [upstream.mqtt]\nhost = \"127.0.0.1\"\nport = {}\nfleet_groups = [\"lab\"]\n",
        mosquitto.addr().port()
    );
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let ids = ["fleet-1", "fleet-2", "fleet-3"];
    let topic = "perch/fleet/lab/deploy/echo";
    let mut cloud = Client::connect(
        mosquitto.addr(),
        "cloud",
        &["perch/+/fn/echo/status", "perch/+/fn/deploy/reply"],
    )
    .await;
    let gw1 = Gateway::start_with(ids[0], dirs[0].path(), &config);
    let gw2 = Gateway::start_with(ids[1], dirs[1].path(), &config);

    // v1 is the desired state: both gateways that are up run it.
    publish_desired(
        mosquitto.addr(),
        topic,
        fleet_request("1.0.0", "v1", false, None),
    )
    .await;
    // Their statuses and replies come back upstream under their ids.
    let mut seen = std::collections::HashSet::new();
    while seen.len() < 4 {
        let (t, p) = cloud.next().await;
        let status = t.ends_with("/fn/echo/status") && p.contains("\"version\":\"1.0.0\"");
        let reply = t.ends_with("/fn/deploy/reply") && p.contains("\"ok\":true");
        if status || reply {
            seen.insert(t);
        }
    }
    // The third was offline; it converges when it starts.
    let gw3 = Gateway::start_with(ids[2], dirs[2].path(), &config);
    wait_listed(&gw3, |f| f["version"] == "1.0.0" && f["state"] == "running");
    let gws = [gw1, gw2, gw3];

    // v2 as a canary on half the events; it fails on each of them.
    publish_desired(
        mosquitto.addr(),
        topic,
        fleet_request("2.0.0", "v2", true, Some(50)),
    )
    .await;
    wait_upstream_status(&mut cloud, &ids, |f| {
        f["canary"]["version"] == "2.0.0" && f["canary"]["state"] == "running"
    })
    .await;
    for gw in &gws {
        let mut watcher = Client::connect(gw.addr, "watcher", &["out/#"]).await;
        let sensor = Client::connect(gw.addr, "sensor", &[]).await;
        let got = run(&sensor, &mut watcher, &["1", "2", "3", "4"], 2).await;
        assert_eq!(got, pairs(&[("out/v1", "1"), ("out/v1", "3")]), "{}", gw.id);
    }
    // Each gateway rolled it back by itself and says so (upstream too);
    // v1 runs on.
    wait_upstream_status(&mut cloud, &ids, |f| {
        f["canary"]["state"] == "rolled_back"
            && f["canary"]["errors"] == 2
            && f["version"] == "1.0.0"
            && f["canary"]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("rolled back automatically"))
    })
    .await;

    // v3 as a canary: it takes every second event.
    publish_desired(
        mosquitto.addr(),
        topic,
        fleet_request("3.0.0", "v3", false, Some(50)),
    )
    .await;
    wait_upstream_status(&mut cloud, &ids, |f| {
        f["canary"]["version"] == "3.0.0" && f["canary"]["state"] == "running"
    })
    .await;
    for gw in &gws {
        let mut watcher = Client::connect(gw.addr, "watcher", &["out/#"]).await;
        let sensor = Client::connect(gw.addr, "sensor", &[]).await;
        let got = run(&sensor, &mut watcher, &["5", "6"], 2).await;
        assert_eq!(got, pairs(&[("out/v1", "5"), ("out/v3", "6")]), "{}", gw.id);
    }
    // Promoted on one gateway by hand, then on all by the desired state
    // without the canary option (which a restart also finds).
    let (ok, out) = gws[0].perch_fn(&["promote", "echo"]);
    assert!(ok, "{out}");
    publish_desired(
        mosquitto.addr(),
        topic,
        fleet_request("3.0.0", "v3", false, None),
    )
    .await;
    wait_upstream_status(&mut cloud, &ids, |f| {
        f["version"] == "3.0.0" && f["state"] == "running" && f.get("canary").is_none()
    })
    .await;

    // A restart of all three (side by side) finds v3 running, and only v3.
    let restarts: Vec<_> = gws
        .into_iter()
        .map(|gw| std::thread::spawn(move || gw.restart()))
        .collect();
    let gws: Vec<Gateway> = restarts.into_iter().map(|t| t.join().unwrap()).collect();
    wait_upstream_status(&mut cloud, &ids, |f| {
        f["version"] == "3.0.0" && f["state"] == "running" && f.get("canary").is_none()
    })
    .await;
    for gw in &gws {
        let mut watcher = Client::connect(gw.addr, "watcher", &["out/#"]).await;
        let sensor = Client::connect(gw.addr, "sensor", &[]).await;
        let got = run(&sensor, &mut watcher, &["7", "8"], 2).await;
        assert_eq!(got, pairs(&[("out/v3", "7"), ("out/v3", "8")]), "{}", gw.id);
    }
}
