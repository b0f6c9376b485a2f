//! Observability end to end: the admin listener (metrics after a known
//! workload, health and readiness, logins), the status topic and `perch
//! status`, the status page in headless Chromium, systemd notifications
//! over a real datagram socket, journald-style and per-function logs.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rumqttc::QoS;

use crate::util::functions::{file, wasm_file};
use crate::util::{free_port, mqtt, perch, perch_with_stdin, workspace_root, Gateway};

/// How long anything here may take on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(30);

/// One HTTP/1.1 GET; returns (status, body).
pub(crate) fn get(addr: SocketAddr, path: &str, auth: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the admin listener");
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read the response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status code");
    (status, body.to_owned())
}

/// `/metrics` parsed: "name{labels}" -> value.
pub(crate) fn metrics(addr: SocketAddr) -> HashMap<String, f64> {
    let (status, body) = get(addr, "/metrics", None);
    assert_eq!(status, 200, "{body}");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').expect("name value");
            (k.to_owned(), v.parse().expect("a number"))
        })
        .collect()
}

pub(crate) fn metric(m: &HashMap<String, f64>, key: &str) -> f64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("no sample {key} in /metrics"))
}

const THRESHOLD: &str = r#"
name = "threshold-alert"
version = "1.2.3"
[triggers]
topics = ["sensors/+/temperature"]
[limits]
fuel = 1000000
max_consecutive_failures = 20
[publish]
allow = ["alerts/#"]
[config]
limit = 30.0
"#;

/// A gateway with a fixed id, the status topic every second, `admin_toml`
/// in its `[admin]` table and `extra_toml` appended to its config.
fn start(dir: &Path, id: &str, extra_toml: &str) -> Gateway {
    start_with_admin(dir, id, "", extra_toml)
}

fn start_with_admin(dir: &Path, id: &str, admin_toml: &str, extra_toml: &str) -> Gateway {
    let config = file(
        dir,
        "perch.toml",
        format!(
            "[gateway]\nid = \"{id}\"\n\n[admin]\nstatus_interval_s = 1\n{admin_toml}\n\n\
             [buffer]\ncommit_interval_ms = 20\n{extra_toml}"
        ),
    );
    Gateway::start(&[
        "--config",
        config.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ])
}

fn deploy(gw: &Gateway, dir: &Path, id: &str, wat: &str, manifest: &str) {
    let module = wasm_file(dir, wat);
    let manifest = file(dir, &format!("{wat}.toml"), manifest);
    let out = perch(&[
        "fn",
        "deploy",
        module.to_str().unwrap(),
        "--manifest",
        manifest.to_str().unwrap(),
        "--broker",
        &gw.addr().to_string(),
        "--gateway",
        id,
        "--timeout-ms",
        "20000",
    ]);
    assert!(
        out.status.success(),
        "deploy failed: {}{}\nlog:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        gw.log_text()
    );
}

/// Polls `/metrics` until `check` holds.
fn wait_metrics(
    gw: &Gateway,
    what: &str,
    check: impl Fn(&HashMap<String, f64>) -> bool,
) -> HashMap<String, f64> {
    let start = Instant::now();
    loop {
        let m = metrics(gw.admin.unwrap());
        if check(&m) {
            return m;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "{what} did not happen within {DEADLINE:?}; log:\n{}",
            gw.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_known_workload_exactly() {
    let dir = tempfile::tempdir().unwrap();
    // The upstream is a port nobody listens on: stopped for the whole test.
    let dead = free_port();
    let gw = start(
        dir.path(),
        "metrics-gw",
        &format!(
            "[upstream]\nforward_topics = [\"alerts/#\"]\nbackoff_initial_ms = 50\nbackoff_max_ms = 200\n\
             [upstream.mqtt]\nhost = \"127.0.0.1\"\nport = {dead}\n"
        ),
    );
    let fn_labels = "function=\"threshold-alert\",version=\"1.2.3\"";
    deploy(&gw, dir.path(), "metrics-gw", "threshold", THRESHOLD);

    let (sub, mut sub_el) = mqtt::connect(mqtt::options("m-sub", gw.addr()))
        .await
        .unwrap();
    mqtt::subscribe(&sub, &mut sub_el, "alerts/#").await;
    let (publisher, mut pub_el) = mqtt::connect(mqtt::options("m-pub", gw.addr()))
        .await
        .unwrap();
    // The deploy's client has gone by now (or soon): two clients remain.
    let before = wait_metrics(&gw, "two clients connected", |m| {
        m.get("perch_broker_connections") == Some(&2.0)
    });
    assert_eq!(
        metric(&before, &format!("perch_function_up{{{fn_labels}}}")),
        1.0
    );

    // The workload: 20 readings, 7 of them above the limit (published as
    // alerts, captured into the buffer), and 5 that are not numbers (the
    // handler returns an error).
    const BELOW: u64 = 13;
    const ABOVE: u64 = 7;
    const BAD: u64 = 5;
    let mut payloads = Vec::new();
    payloads.extend((0..BELOW).map(|i| format!("2{}.5", i % 10)));
    payloads.extend((0..ABOVE).map(|i| format!("4{i}.0")));
    payloads.extend((0..BAD).map(|i| format!("not-a-number-{i}")));
    for p in &payloads {
        publisher
            .publish(
                "sensors/kitchen/temperature",
                QoS::AtLeastOnce,
                false,
                p.clone(),
            )
            .await
            .unwrap();
        mqtt::wait_puback(&mut pub_el).await;
    }
    let mut alerts = 0;
    while alerts < ABOVE {
        mqtt::next_publish(&mut sub_el, DEADLINE)
            .await
            .unwrap_or_else(|| panic!("only {alerts} alerts arrived\nlog:\n{}", gw.log_text()));
        alerts += 1;
    }
    let n = (BELOW + ABOVE + BAD) as f64;
    let after = wait_metrics(&gw, "the workload's counts", |m| {
        m.get(&format!("perch_function_invocations_total{{{fn_labels}}}")) == Some(&n)
            && m.get("perch_buffer_committed_records_total") == Some(&(ABOVE as f64))
            && m.get("perch_upstream_retries_total")
                .is_some_and(|&r| r >= 2.0)
    });
    let delta = |k: &str| metric(&after, k) - before.get(k).copied().unwrap_or(0.0);

    // Broker: exactly the workload's publishes in, the alerts out.
    assert_eq!(delta("perch_broker_messages_received_total"), n);
    assert_eq!(delta("perch_broker_messages_sent_total"), ABOVE as f64);
    assert!(delta("perch_broker_bytes_received_total") > n * 30.0);
    assert_eq!(metric(&after, "perch_broker_connections"), 2.0);
    // Functions.
    assert_eq!(
        metric(
            &after,
            &format!("perch_function_errors_total{{{fn_labels},kind=\"handler_error\"}}")
        ),
        BAD as f64
    );
    assert_eq!(
        after
            .keys()
            .filter(|k| k.starts_with("perch_function_errors_total"))
            .count(),
        1,
        "no other error kind"
    );
    assert_eq!(
        metric(
            &after,
            &format!("perch_function_duration_seconds_count{{{fn_labels}}}")
        ),
        n
    );
    assert_eq!(
        metric(
            &after,
            &format!("perch_function_duration_seconds_bucket{{{fn_labels},le=\"+Inf\"}}")
        ),
        n
    );
    assert!(
        metric(
            &after,
            &format!("perch_function_duration_seconds_sum{{{fn_labels}}}")
        ) > 0.0
    );
    assert!(
        metric(
            &after,
            &format!("perch_function_fuel_used_total{{{fn_labels}}}")
        ) > n
    );
    assert_eq!(
        metric(
            &after,
            &format!("perch_function_queue_depth{{{fn_labels}}}")
        ),
        0.0
    );
    assert_eq!(
        metric(
            &after,
            &format!("perch_function_dropped_total{{{fn_labels},policy=\"drop_oldest\"}}")
        ),
        0.0
    );
    for reason in ["denied", "limit", "full"] {
        assert_eq!(
            metric(
                &after,
                &format!("perch_function_refused_outputs_total{{{fn_labels},reason=\"{reason}\"}}")
            ),
            0.0
        );
    }
    // Buffer and upstream: the alerts wait, nothing acknowledged.
    assert_eq!(
        metric(&after, "perch_upstream_captured_total"),
        ABOVE as f64
    );
    assert_eq!(metric(&after, "perch_buffer_records"), ABOVE as f64);
    assert!(metric(&after, "perch_buffer_bytes") > 0.0);
    assert!(metric(&after, "perch_buffer_commits_total") >= 1.0);
    assert_eq!(metric(&after, "perch_buffer_acked_records_total"), 0.0);
    assert_eq!(metric(&after, "perch_upstream_connected"), 0.0);
    assert_eq!(metric(&after, "perch_upstream_acked_total"), 0.0);
    assert_eq!(metric(&after, "perch_upstream_connects_total"), 0.0);
    assert_eq!(metric(&after, "perch_buffer_writable"), 1.0);
    assert_eq!(
        metric(
            &after,
            "perch_buffer_dropped_records_total{reason=\"drop_oldest\"}"
        ),
        0.0
    );
    // Process.
    assert!(metric(&after, "perch_process_resident_memory_bytes") > 1e6);
    assert!(metric(&after, "perch_process_uptime_seconds") > 0.0);
    assert!(after.contains_key(&format!(
        "perch_build_info{{version=\"{}\",gateway=\"metrics-gw\"}}",
        env!("CARGO_PKG_VERSION")
    )));

    // The buffer's oldest age grows while the upstream stays down.
    std::thread::sleep(Duration::from_millis(1200));
    let later = metrics(gw.admin.unwrap());
    assert!(metric(&later, "perch_buffer_oldest_record_age_seconds") >= 1.0);
    drop((sub, publisher));
}

#[test]
fn health_and_readiness_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let dead = free_port();
    let gw = start(
        dir.path(),
        "health-gw",
        &format!("[upstream.mqtt]\nhost = \"127.0.0.1\"\nport = {dead}\n"),
    );
    let admin = gw.admin.expect("the ready line names the admin listener");
    let (status, body) = get(admin, "/healthz", None);
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["gateway"], "health-gw");

    let start = Instant::now();
    let v = loop {
        let (status, body) = get(admin, "/readyz", None);
        // The upstream being down does not make the gateway unready: its
        // records wait in the buffer.
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        if v["checks"]["upstream"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("last error"))
        {
            break v;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "no upstream error reported: {v:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(v["ready"], true);
    assert_eq!(v["checks"]["broker"]["ok"], true);
    assert_eq!(v["checks"]["database"]["ok"], true);
    assert_eq!(v["checks"]["upstream"]["ok"], false);
    assert_eq!(v["checks"]["upstream"]["kind"], "mqtt");
    let e = v["checks"]["upstream"]["error"].as_str().unwrap();
    assert!(
        e.contains("not connected") && e.contains("records wait in the buffer"),
        "{e}"
    );

    let (status, body) = get(admin, "/nope", None);
    assert_eq!(status, 404);
    assert!(
        body.contains("/metrics") && body.contains("/readyz"),
        "{body}"
    );
    let mut s = TcpStream::connect(admin).unwrap();
    write!(s, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 405"), "{text}");
    assert!(text.contains("read-only"), "{text}");
    let mut s = TcpStream::connect(admin).unwrap();
    write!(s, "garbage\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("not an HTTP/1.1 request"), "{text}");
}

#[test]
fn a_network_admin_listener_without_login_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = perch(&[
        "run",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "0.0.0.0:0",
    ]);
    assert_eq!(out.status.code(), Some(2), "a config error");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("admin.listen"), "{err}");
    assert!(err.contains("not a loopback address"), "{err}");
    assert!(
        err.contains("admin.token") && err.contains("admin.username"),
        "says what to do: {err}"
    );
    assert!(!err.contains("perch ready"), "{err}");
    // Nothing was written: the gateway never started.
    assert!(!dir.path().join("buffer.db").exists());
}

#[test]
fn a_taken_admin_port_refuses_to_start_with_what_to_do() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let err = match Gateway::try_start(&["--admin-listen", &addr]) {
        Ok(_) => panic!("started on a taken admin port"),
        Err(log) => log,
    };
    assert!(
        err.contains(&format!("cannot listen on {addr} (admin listener)")),
        "{err}"
    );
    assert!(err.contains("--admin-listen"), "{err}");
}

#[test]
fn a_configured_login_is_required() {
    let dir = tempfile::tempdir().unwrap();
    let hash = perch_with_stdin(&["passwd"], "s3cret-admin\n");
    assert!(hash.status.success());
    let hash = String::from_utf8(hash.stdout).unwrap().trim().to_owned();
    let token = "0123456789abcdef-token";
    let gw = start_with_admin(
        dir.path(),
        "auth-gw",
        &format!("token = \"{token}\"\nusername = \"ops\"\npassword_hash = \"{hash}\"\n"),
        "",
    );
    let admin = gw.admin.unwrap();
    for path in ["/", "/metrics", "/status.json", "/readyz", "/healthz"] {
        let (status, body) = get(admin, path, None);
        assert_eq!(status, 401, "{path}: {body}");
        assert!(body.contains("needs a login"), "{body}");
        assert!(
            body.contains("Bearer") && body.contains("basic auth"),
            "{body}"
        );
    }
    let (status, body) = get(admin, "/metrics", Some("Bearer wrong-token-0123456789"));
    assert_eq!(status, 401);
    assert!(body.contains("wrong credentials"), "{body}");
    let (status, _) = get(admin, "/metrics", Some(&format!("Bearer {token}")));
    assert_eq!(status, 200);
    // ops:s3cret-admin and ops:wrong
    let (status, _) = get(
        admin,
        "/status.json",
        Some("Basic b3BzOnMzY3JldC1hZG1pbg=="),
    );
    assert_eq!(status, 200);
    let (status, _) = get(admin, "/status.json", Some("Basic b3BzOndyb25n"));
    assert_eq!(status, 401);
}

/// Polls `perch status --json` until a summary lists `function`.
fn status_json(gw: &Gateway, id: &str, function: &str) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let v = status_once(gw, id);
        let listed = v["functions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["name"] == function && f["invocations"].as_u64() > Some(0));
        if listed {
            return v;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "{function} not in the status: {v:#}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_topic_is_retained_and_perch_status_prints_it() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path(), "status-gw", "");
    deploy(&gw, dir.path(), "status-gw", "threshold", THRESHOLD);
    let (client, mut el) = mqtt::connect(mqtt::options("s-pub", gw.addr()))
        .await
        .unwrap();
    client
        .publish("sensors/a/temperature", QoS::AtLeastOnce, false, "21.0")
        .await
        .unwrap();
    mqtt::wait_puback(&mut el).await;

    let v = status_json(&gw, "status-gw", "threshold-alert");
    assert_eq!(v["gateway"], "status-gw");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    let f = &v["functions"][0];
    assert_eq!(f["version"], "1.2.3");
    assert_eq!(f["state"], "running");
    assert_eq!(v["upstream"]["kind"], "none");
    assert!(v.get("history").is_none(), "the topic carries no history");

    // A plain MQTT client gets it retained.
    let (sub, mut sub_el) = mqtt::connect(mqtt::options("s-sub", gw.addr()))
        .await
        .unwrap();
    mqtt::subscribe(&sub, &mut sub_el, "perch/status-gw/status").await;
    let p = mqtt::next_publish(&mut sub_el, DEADLINE)
        .await
        .expect("the status");
    assert!(p.retain, "delivered as a retained message");
    let s: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
    assert_eq!(s["gateway"], "status-gw");

    // The table.
    let out = perch(&[
        "status",
        "--broker",
        &gw.addr().to_string(),
        "--gateway",
        "status-gw",
    ]);
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("gateway   status-gw"), "{table}");
    assert!(table.contains("FUNCTION"), "{table}");
    let row = table
        .lines()
        .find(|l| l.starts_with("threshold-alert"))
        .unwrap_or_else(|| panic!("no row: {table}"));
    assert!(row.contains("1.2.3") && row.contains("running"), "{row}");
    assert!(table.contains("upstream  not configured"), "{table}");

    // A wrong id says what to do.
    let out = perch(&[
        "status",
        "--broker",
        &gw.addr().to_string(),
        "--gateway",
        "no-such-gw",
        "--timeout-ms",
        "1500",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("perch/no-such-gw/status") && err.contains("--gateway"),
        "{err}"
    );
    drop((client, sub));
}

fn chromium() -> PathBuf {
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        if let Ok(out) = Command::new("which").arg(name).output() {
            if out.status.success() {
                return PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            }
        }
    }
    panic!("headless Chromium is needed for this test: `apt-get install chromium` (test.sh does)");
}

/// Runs headless Chromium on `url` with `args`; returns stdout.
fn run_chromium(url: &str, args: &[&str], profile: &Path) -> String {
    let child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            // Lets the page's script run (fetch, render) before the dump.
            "--virtual-time-budget=8000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting chromium");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(90)) {
        Ok(out) => {
            let out = out.unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("chromium did not finish within 90 s");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_renders_in_headless_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path(), "page-gw", "");
    deploy(&gw, dir.path(), "page-gw", "threshold", THRESHOLD);
    let (client, mut el) = mqtt::connect(mqtt::options("p-pub", gw.addr()))
        .await
        .unwrap();
    for reading in ["21.0", "35.5", "22.0"] {
        client
            .publish("sensors/hall/temperature", QoS::AtLeastOnce, false, reading)
            .await
            .unwrap();
        mqtt::wait_puback(&mut el).await;
    }
    wait_metrics(&gw, "three invocations", |m| {
        m.get("perch_function_invocations_total{function=\"threshold-alert\",version=\"1.2.3\"}")
            == Some(&3.0)
    });
    let url = format!("http://{}/", gw.admin.unwrap());
    let (status, page) = get(gw.admin.unwrap(), "/", None);
    assert_eq!(status, 200);
    assert!(
        page.len() < 16 * 1024,
        "the page stays small: {} bytes",
        page.len()
    );
    assert!(
        !page.contains("src=\"http") && !page.contains("href=\"http"),
        "no external assets"
    );

    let profile = tempfile::tempdir().unwrap();
    let dom = run_chromium(&url, &["--dump-dom"], profile.path());
    assert!(dom.contains("gateway page-gw"), "identity rendered:\n{dom}");
    let row = dom
        .split("<tr>")
        .find(|r| r.contains("<td>threshold-alert</td>"))
        .unwrap_or_else(|| panic!("the function's row is not rendered:\n{dom}"));
    assert!(
        row.contains("<td>1.2.3</td>") && row.contains("running"),
        "{row}"
    );
    let invocations: u64 = row
        .split("class=\"n inv\">")
        .nth(1)
        .and_then(|r| r.split('<').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no invocation count in {row}"));
    assert_eq!(invocations, 3, "{row}");
    assert!(
        dom.contains("not configured"),
        "the upstream state is rendered"
    );

    let artifacts = workspace_root().join("target").join("test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    run_chromium(
        &url,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1200,800",
        ],
        profile.path(),
    );
    let png =
        std::fs::read(&shot).unwrap_or_else(|e| panic!("no screenshot at {}: {e}", shot.display()));
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real screenshot"
    );
    drop(client);
}

#[test]
fn systemd_gets_ready_watchdog_and_stopping_over_a_real_socket() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut gw = Gateway::try_start_with_env(
        &[],
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            // 200 ms: pings every 100 ms.
            ("WATCHDOG_USEC", "200000"),
        ],
    )
    .unwrap();
    let recv = || {
        let mut buf = [0u8; 256];
        let n = socket.recv(&mut buf).expect("a notification in time");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert_eq!(recv(), "READY=1", "READY first, once ready");
    // READY=1 is sent after the ready line is written; the test's log
    // reader thread may append that line a moment later.
    let start = Instant::now();
    while !gw.log_text().contains("perch ready") {
        assert!(start.elapsed() < DEADLINE, "READY=1 without the ready line");
        std::thread::sleep(Duration::from_millis(20));
    }
    let started = Instant::now();
    for _ in 0..3 {
        assert_eq!(recv(), "WATCHDOG=1");
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    gw.signal("TERM");
    let mut seen = Vec::new();
    loop {
        let m = recv();
        if m == "STOPPING=1" {
            break;
        }
        assert_eq!(m, "WATCHDOG=1", "only pings before STOPPING: {seen:?}");
        seen.push(m);
    }
    assert!(gw.wait(DEADLINE).is_some_and(|s| s.success()));
}

#[test]
fn under_journald_lines_carry_priorities_and_no_timestamps() {
    let gw = Gateway::try_start_with_env(&[], &[("JOURNAL_STREAM", "8:12345")]).unwrap();
    let start = Instant::now();
    let ready = loop {
        // The log reader thread may append the line just after it
        // reported it.
        if let Some(l) = gw.log_text().lines().find(|l| l.contains("perch ready")) {
            break l.to_owned();
        }
        assert!(start.elapsed() < DEADLINE);
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        ready.starts_with("<6>perch ready: gateway "),
        "syslog priority prefix, then the message: no timestamp (journald adds its \
         own), no level word (the priority says it): {ready:?}"
    );
    assert!(!ready.contains('\u{1b}'), "no colours: {ready:?}");
}

/// Logs one line per event at info level.
const CHATTY_WAT: &str = r#"
(module
  (import "perch" "log" (func $log (param i32 i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "chatty line")
  (func (export "perch_abi_version") (result i32) (i32.const 1))
  (func (export "perch_event_buffer") (result i32) (i32.const 1024))
  (func (export "perch_event_buffer_len") (result i32) (i32.const 4096))
  (func (export "perch_on_event") (param i32 i32 i64) (result i32)
    (call $log (i32.const 2) (i32.const 0) (i32.const 11))
    (i32.const 0)))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_noisy_function_is_rate_limited_and_its_lines_are_tagged() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path(), "logs-gw", "");
    std::fs::write(
        dir.path().join("chatty.wasm"),
        wat::parse_str(CHATTY_WAT).unwrap(),
    )
    .unwrap();
    let manifest = file(
        dir.path(),
        "chatty.toml",
        "name = \"chatty\"\nversion = \"0.9.1\"\n[triggers]\ntopics = [\"noise\"]\n\
         [limits]\nqueue_len = 1000\n",
    );
    let out = perch(&[
        "fn",
        "deploy",
        dir.path().join("chatty.wasm").to_str().unwrap(),
        "--manifest",
        manifest.to_str().unwrap(),
        "--broker",
        &gw.addr().to_string(),
        "--gateway",
        "logs-gw",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (client, mut el) = mqtt::connect(mqtt::options("noise", gw.addr()))
        .await
        .unwrap();
    const EVENTS: usize = 400;
    for _ in 0..EVENTS {
        client
            .publish("noise", QoS::AtLeastOnce, false, "x")
            .await
            .unwrap();
        mqtt::wait_puback(&mut el).await;
    }
    let labels = "function=\"chatty\",version=\"0.9.1\"";
    let m = wait_metrics(&gw, "400 invocations", |m| {
        m.get(&format!("perch_function_invocations_total{{{labels}}}")) == Some(&(EVENTS as f64))
    });
    let dropped = metric(
        &m,
        &format!("perch_function_log_lines_dropped_total{{{labels}}}"),
    );
    assert!(dropped > 0.0, "400 lines in a burst exceed the limit");
    // Every line is logged or counted (the log pipe may lag the metrics).
    let start = Instant::now();
    let logged = loop {
        let logged = gw
            .log_text()
            .lines()
            .filter(|l| l.contains("chatty line"))
            .count();
        if logged as f64 + dropped == EVENTS as f64 {
            break logged;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "{logged} logged + {dropped} dropped != {EVENTS}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(logged >= 100, "the burst got through: {logged}");
    let line = gw
        .log_text()
        .lines()
        .find(|l| l.contains("chatty line"))
        .unwrap()
        .to_owned();
    assert!(
        line.contains("function=\"chatty\"") || line.contains("function=chatty"),
        "{line}"
    );
    assert!(line.contains("0.9.1"), "tagged with the version: {line}");

    // After a pause lines flow again, and the drops are summarized.
    std::thread::sleep(Duration::from_millis(300));
    client
        .publish("noise", QoS::AtLeastOnce, false, "x")
        .await
        .unwrap();
    mqtt::wait_puback(&mut el).await;
    let start = Instant::now();
    while !gw.log_text().contains("dropped by the rate limit") {
        assert!(start.elapsed() < DEADLINE, "no summary:\n{}", gw.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(client);
}

/// Regression: `/readyz` said `free_bytes: 0` until the buffer's first
/// commit, so a gateway with nothing to forward yet looked like one on a
/// full disk. The free space is measured when the buffer opens.
#[test]
fn readyz_reports_the_free_disk_space_before_anything_is_committed() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path(), "free-gw", "");
    let (status, body) = get(gw.admin.unwrap(), "/readyz", None);
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let reported = v["checks"]["disk"]["free_bytes"]
        .as_u64()
        .unwrap_or_else(|| panic!("no checks.disk.free_bytes in {body}"));
    // What `df` says of the data directory, allowing for what the tests
    // running beside this one write meanwhile.
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(gw.data_dir.path())
        .output()
        .expect("running df");
    let df: u64 = String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("df's available bytes");
    assert!(
        reported > 0 && reported.abs_diff(df) < df / 10 + (64 << 20),
        "readyz says {reported} bytes free, df {df}\n{}",
        gw.log_text()
    );
}

/// `perch status --json` once, as JSON.
fn status_once(gw: &Gateway, id: &str) -> serde_json::Value {
    let out = perch(&[
        "status",
        "--json",
        "--broker",
        &gw.addr().to_string(),
        "--gateway",
        id,
        "--timeout-ms",
        "10000",
    ]);
    assert!(
        out.status.success(),
        "perch status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Regression: `perch status` read the retained summary, which the gateway
/// republishes only every `admin.status_interval_s` (10 s by default), so
/// right after `perch fn rollback` it still showed the version rolled back
/// from. It now asks the gateway for a summary made at once.
#[test]
fn perch_status_right_after_a_rollback_shows_the_rolled_back_version() {
    let dir = tempfile::tempdir().unwrap();
    let id = "rollback-status-gw";
    // An interval far longer than the test: only a fresh summary can pass.
    let config = file(
        dir.path(),
        "perch.toml",
        format!("[gateway]\nid = \"{id}\"\n\n[admin]\nstatus_interval_s = 3600\n"),
    );
    let gw = Gateway::start(&[
        "--config",
        config.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    deploy(&gw, dir.path(), id, "threshold", THRESHOLD);
    let v = status_once(&gw, id);
    assert_eq!(v["functions"][0]["version"], "1.2.3", "{v:#}");
    deploy(
        &gw,
        dir.path(),
        id,
        "threshold",
        &THRESHOLD.replace("1.2.3", "1.3.0"),
    );
    assert_eq!(status_once(&gw, id)["functions"][0]["version"], "1.3.0");

    let out = perch(&[
        "fn",
        "rollback",
        "threshold-alert",
        "--broker",
        &gw.addr().to_string(),
        "--gateway",
        id,
    ]);
    assert!(
        out.status.success(),
        "rollback failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = status_once(&gw, id);
    let f = &v["functions"][0];
    assert_eq!(
        (f["version"].as_str(), f["state"].as_str()),
        (Some("1.2.3"), Some("running")),
        "{v:#}"
    );
    // The table says the same.
    let table = perch(&[
        "status",
        "--broker",
        &gw.addr().to_string(),
        "--gateway",
        id,
    ]);
    let table = String::from_utf8_lossy(&table.stdout);
    let row = table
        .lines()
        .find(|l| l.starts_with("threshold-alert"))
        .unwrap_or_else(|| panic!("no row: {table}"));
    assert!(row.contains("1.2.3") && row.contains("running"), "{row}");
}

/// Serves `page` at `/page` on a loopback port of its own, relays
/// `/status.json` from the admin listener (so a script added to the page
/// runs same-origin with what it renders), and at `/<width>` a frame of
/// that many pixels around it: headless Chromium's windows are at least
/// 500 px wide, a frame can be a 360 px phone screen. The frame copies the
/// page's measurement (see [`MEASURE`]) into its own DOM for `--dump-dom`.
/// Serves until the test ends.
fn serve_framed(page: String, admin: SocketAddr) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            let _ = s.set_read_timeout(Some(DEADLINE));
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).is_ok_and(|n| n == 1) {
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head);
            let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
            let (kind, body) = match path.as_str() {
                "/status.json" => ("application/json", get(admin, "/status.json", None).1),
                "/page" => ("text/html; charset=utf-8", page.clone()),
                width => (
                    "text/html; charset=utf-8",
                    format!(
                        "<!doctype html><body style=margin:0><iframe src=page \
                         style='width:{}px;height:800px;border:0'></iframe><script>\
                         setTimeout(()=>{{const m=frames[0].document.getElementById('measure');\
                         const p=document.createElement('pre');p.id='measure';\
                         p.textContent=m?m.textContent:'';document.body.appendChild(p)}},5000)\
                         </script></body>",
                        width.trim_start_matches('/')
                    ),
                ),
            };
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

/// Measures the rendered page (after its first refresh) into a `<pre
/// id=measure>` the DOM dump carries: the page's width against the
/// viewport's, and for each numeric column of the functions table the
/// horizontal distance between the right edges of the header's text and
/// the first row's number (0: aligned); and the upstream section.
const MEASURE: &str = r##"<script>
setTimeout(()=>{
  const d=document.documentElement,ups=document.getElementById("ups").innerHTML;
  const out={scroll:d.scrollWidth,inner:innerWidth,columns:[],ups};
  const right=el=>{const r=document.createRange();r.selectNodeContents(el);return r.getBoundingClientRect().right};
  const row=document.querySelector("#fns tr");
  document.querySelectorAll("section.wide thead th").forEach((th,i)=>{
    const td=row&&row.children[i];
    if(td&&td.classList.contains("n"))out.columns.push([th.textContent,Math.round(right(th)-right(td))]);
  });
  const m=document.createElement("pre");m.id="measure";m.textContent=JSON.stringify(out);
  document.body.appendChild(m);
},3000);
</script></body>"##;

/// Issue 21: numeric headers line up with their numbers, nothing overflows
/// a 360 px wide phone screen, and the upstream's endpoint and link state
/// are on the page. Screenshots at 360 and 1280 px go to
/// target/test-artifacts/.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_fits_a_phone_aligns_numbers_and_names_the_upstream() {
    let upstream_port = free_port();
    let _mosquitto =
        crate::store_forward::Mosquitto::start(upstream_port, tempfile::tempdir().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let gw = start(
        dir.path(),
        "layout-gw",
        &format!("[upstream.mqtt]\nhost = \"127.0.0.1\"\nport = {upstream_port}\n"),
    );
    deploy(&gw, dir.path(), "layout-gw", "threshold", THRESHOLD);
    let (client, mut el) = mqtt::connect(mqtt::options("l-pub", gw.addr()))
        .await
        .unwrap();
    for reading in ["21.0", "35.5"] {
        client
            .publish("sensors/hall/temperature", QoS::AtLeastOnce, false, reading)
            .await
            .unwrap();
        mqtt::wait_puback(&mut el).await;
    }
    let admin = gw.admin.unwrap();
    let start = Instant::now();
    loop {
        let (_, body) = get(admin, "/status.json", None);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        if v["upstream"]["connected"] == true {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the upstream never connected: {v:#}\n{}",
            gw.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let (_, page) = get(admin, "/", None);
    let framed = serve_framed(page.replacen("</body>", MEASURE, 1), admin);
    let profile = tempfile::tempdir().unwrap();
    let endpoint = format!("mqtt://127.0.0.1:{upstream_port}");
    for width in [360, 1280] {
        let size = format!("--window-size={},800", width.max(500));
        let dom = run_chromium(
            &format!("http://{framed}/{width}"),
            &["--dump-dom", &size],
            profile.path(),
        );
        let measure = dom
            .split("<pre id=\"measure\">")
            .nth(1)
            .and_then(|m| m.split("</pre>").next())
            .unwrap_or_else(|| panic!("the page was not measured at {width} px:\n{dom}"));
        // The dump escapes the text of the <pre>.
        let measure = measure
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&amp;", "&");
        let m: serde_json::Value = serde_json::from_str(&measure)
            .unwrap_or_else(|e| panic!("no measurement at {width} px ({e}):\n{dom}"));
        assert_eq!(m["inner"], width, "the viewport: {m}");
        let ups = m["ups"].as_str().unwrap();
        assert!(
            ups.contains(&endpoint) && ups.contains("<span class=\"ok\">connected</span>"),
            "the upstream's endpoint and link state at {width} px: {ups}"
        );
        assert!(
            m["scroll"].as_u64() <= m["inner"].as_u64(),
            "the page is wider than the screen at {width} px: {m}"
        );
        let columns = m["columns"].as_array().unwrap();
        assert_eq!(columns.len(), 5, "five numeric columns: {m}");
        for c in columns {
            assert!(
                c[1].as_i64().unwrap().abs() <= 1,
                "{} is not aligned with its numbers at {width} px: {m}",
                c[0]
            );
        }

        let artifacts = workspace_root().join("target").join("test-artifacts");
        std::fs::create_dir_all(&artifacts).unwrap();
        let shot = artifacts.join(format!("status-page-{width}.png"));
        let _ = std::fs::remove_file(&shot);
        run_chromium(
            &format!("http://{framed}/{width}"),
            &[&format!("--screenshot={}", shot.display()), &size],
            profile.path(),
        );
        let png = std::fs::read(&shot)
            .unwrap_or_else(|e| panic!("no screenshot at {}: {e}", shot.display()));
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 10_000,
            "a real screenshot"
        );
    }
    drop(client);
}
