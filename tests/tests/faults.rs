//! Fault injection: kill -9 at random points under load, an upstream that
//! goes down, partitions silently, flaps and acks slowly, all against the
//! real binary, a real Mosquitto as the upstream and real clients.
//!
//! Each test prints what it measured (`faults: ...` lines, shown with
//! `--nocapture` or on failure). The bounded form runs in `./test.sh`;
//! `tests/faults.sh --full` (`PERCH_FAULT_FULL=1`) runs the long form.
//! docs/reliability.md lists the promises, these tests and their figures.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, Packet, QoS};

use crate::store_forward::{publish_v5, Answered, Cloud, Mosquitto};
use crate::util::faults::{cycles, scale, seed, FaultProxy, Mode, Rng, RssPeak};
use crate::util::functions::{wasm_file, Client};
use crate::util::mqtt;
use crate::util::{free_port, perch_bin, temp_file, Gateway};

/// How long the backlog may take to reach the upstream once it can.
const DELIVERY: Duration = Duration::from_secs(90);

/// Resident memory the gateway stays under through every upstream fault.
const RSS_BOUND_KIB: u64 = 64 * 1024;

fn gateway_toml(id: &str, upstream_port: u16, keep_alive_s: u64) -> String {
    format!(
        r#"
[gateway]
id = "{id}"

[[broker.listeners]]
name = "local"
listen = "127.0.0.1:0"
allow_anonymous = true

[functions]
state_commit_interval_ms = 100

[upstream]
forward_topics = ["alerts/#"]
backoff_initial_ms = 100
backoff_max_ms = 1000

[upstream.mqtt]
host = "127.0.0.1"
port = {upstream_port}
keep_alive_s = {keep_alive_s}
"#
    )
}

/// `{"n":N}` on `alerts/a` (even N) or `alerts/b` (odd N).
fn reading(n: u64) -> (&'static str, String) {
    let topic = if n.is_multiple_of(2) {
        "alerts/a"
    } else {
        "alerts/b"
    };
    (topic, format!("{{\"n\":{n}}}"))
}

/// A sensor publishing readings at QoS 1 one after another, each after the
/// PUBACK of the one before (plus `pace`), until stopped or its connection
/// fails. Keeps (n, when its PUBACK arrived).
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(u64, Instant)>>>,
    task: tokio::task::JoinHandle<u64>,
}

impl Load {
    fn start(addr: SocketAddr, first: u64, pace: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let (s, a) = (stop.clone(), acked.clone());
        let task = tokio::spawn(async move {
            let (client, mut el) =
                AsyncClient::new(mqtt::options(&format!("sensor-{first}"), addr), 16);
            let mut n = first;
            'publishing: while !s.load(Ordering::Relaxed) {
                let (topic, payload) = reading(n);
                if client
                    .publish(topic, QoS::AtLeastOnce, false, payload)
                    .await
                    .is_err()
                {
                    break;
                }
                loop {
                    match tokio::time::timeout(mqtt::WAIT, el.poll()).await {
                        Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => break,
                        Ok(Ok(_)) => continue,
                        // The gateway is gone (killed) or stuck: stop.
                        _ => break 'publishing,
                    }
                }
                a.lock().unwrap().push((n, Instant::now()));
                n += 1;
                if !pace.is_zero() {
                    tokio::time::sleep(pace).await;
                }
            }
            // `n` may have been sent without its PUBACK: never reuse it.
            n + 1
        });
        Load { stop, acked, task }
    }

    /// Stops publishing; returns the next unused n and what was acked.
    async fn stop(self) -> (u64, Vec<(u64, Instant)>) {
        self.stop.store(true, Ordering::Relaxed);
        let next = tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("the sensor stops")
            .expect("the sensor task");
        let acked = std::mem::take(&mut *self.acked.lock().unwrap());
        (next, acked)
    }
}

/// Record numbers of every record in the buffer at `data_dir` (committed,
/// not yet acknowledged), read with perch's own reader while perch is dead.
fn committed_in(data_dir: &Path) -> Vec<u64> {
    let path = data_dir.join(perch::buffer::FILE_NAME);
    let reader = perch::buffer::Reader::open(&path)
        .unwrap_or_else(|e| panic!("the buffer at {} opens after kill -9: {e}", path.display()));
    let rows = reader
        .after(0, 10_000_000)
        .unwrap_or_else(|e| panic!("the buffer at {} reads: {e}", path.display()));
    rows.iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_slice(&r.payload).unwrap_or_else(|e| {
                panic!(
                    "record {} is not the JSON it was: {e}: {:?}",
                    r.seq,
                    String::from_utf8_lossy(&r.payload)
                )
            });
            v["n"].as_u64().expect("a reading")
        })
        .collect()
}

/// Records waiting in a running gateway's buffer.
fn buffered(data_dir: &Path) -> u64 {
    let path = data_dir.join(perch::buffer::FILE_NAME);
    let reader = perch::buffer::Reader::open(&path).expect("the buffer opens");
    reader.totals().expect("buffer totals").0
}

/// The echo function (tests/wat/echo.wat) at version `1.0.<k>`, publishing
/// each event on `tests/in/#` to `out/v<k>`: the topic says which version
/// answered.
fn echo_manifest(dir: &Path, k: u32) -> PathBuf {
    let path = dir.join(format!("echo-{k}.toml"));
    std::fs::write(
        &path,
        format!(
            "name = \"echo\"\nversion = \"1.0.{k}\"\n[triggers]\ntopics = [\"tests/in/#\"]\n\
             [publish]\nallow = [\"out/#\"]\n[config]\nout = \"out/v{k}\"\n"
        ),
    )
    .unwrap();
    path
}

/// `perch fn deploy` of echo `1.0.<k>` against the gateway at `addr`,
/// started, not waited for.
fn start_deploy(addr: SocketAddr, gateway: &str, dir: &Path, k: u32) -> Child {
    let wasm = wasm_file(dir, "echo");
    Command::new(perch_bin())
        .args(["fn", "deploy", wasm.to_str().unwrap(), "--manifest"])
        .arg(echo_manifest(dir, k))
        .args(["--broker", &addr.to_string(), "--gateway", gateway])
        .args(["--timeout-ms", "20000"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running perch fn deploy")
}

/// Waits for a deploy at most `wait`, then kills it; true when it
/// succeeded (the gateway acknowledged the deploy).
fn finish_deploy(mut child: Child, wait: Duration) -> (bool, String) {
    let deadline = Instant::now() + wait;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            return (status.success(), text);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return (false, "no answer: killed".to_owned());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What the function registry must show after a restart.
#[derive(Debug, Default)]
struct Deploys {
    /// The version the last acknowledged deploy installed.
    acked: u32,
    /// A deploy cut by the kill before its answer: it may or may not have
    /// been installed, but never half.
    cut: Option<u32>,
    acknowledged: usize,
    cut_total: usize,
    cut_installed: usize,
}

impl Deploys {
    /// Checks the running gateway: `perch fn list` names an allowed
    /// version, and an event is answered by that same version's code and
    /// config.
    async fn check(&mut self, gw: &Gateway, id: &str, round: usize, context: &str) {
        let out = std::process::Command::new(perch_bin())
            .args(["fn", "list", "--json", "--broker", &gw.addr().to_string()])
            .args(["--gateway", id, "--timeout-ms", "20000"])
            .output()
            .expect("running perch fn list");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{context}: perch fn list failed after a restart: {text}{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            gw.log_text()
        );
        let list: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
        let echo = list
            .iter()
            .find(|f| f["name"] == "echo")
            .unwrap_or_else(|| panic!("{context}: echo is gone from the registry: {text}"));
        let version = echo["version"].as_str().unwrap();
        let k: u32 = version
            .strip_prefix("1.0.")
            .and_then(|k| k.parse().ok())
            .unwrap_or_else(|| panic!("{context}: unexpected version {version}"));
        let allowed = [Some(self.acked), self.cut];
        assert!(
            allowed.contains(&Some(k)),
            "{context}: the registry runs 1.0.{k}; the last acknowledged deploy installed \
             1.0.{} and the cut one was {:?}",
            self.acked,
            self.cut
        );
        // The code and config that answer are that version's.
        let mut watcher = Client::connect(gw.addr(), &format!("watch-{round}"), &["out/#"]).await;
        let sensor = Client::connect(gw.addr(), &format!("poke-{round}"), &[]).await;
        sensor.publish("tests/in/x", &format!("r{round}")).await;
        let (topic, payload) = watcher.next().await;
        assert_eq!(payload, format!("r{round}"), "{context}");
        assert_eq!(
            topic,
            format!("out/v{k}"),
            "{context}: the listed version 1.0.{k} is not the one answering"
        );
        if self.cut == Some(k) {
            self.cut_installed += 1;
        }
        self.acked = k;
        self.cut = None;
    }
}

/// Where a cycle kills the gateway.
#[derive(Debug, Clone, Copy)]
enum KillPoint {
    /// Under load, at a random moment: commits are going on.
    Commit,
    /// Right after the upstream received records in this cycle.
    Forwarding,
    /// While a deploy is being handled.
    Deploy,
}

/// One kill cycle's record: what the sensor had acknowledged, and when the
/// kill came.
struct Cycle {
    acked: Vec<(u64, Instant)>,
    killed_at: Instant,
    point: KillPoint,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_points_loses_nothing_committed_and_never_half_applies_a_deploy() {
    let started = Instant::now();
    let seed = seed();
    let n_cycles = cycles();
    eprintln!(
        "faults: crash cycles: {n_cycles}, seed {seed} (PERCH_FAULT_SEED={seed} replays them)"
    );
    let mut rng = Rng::new(seed);
    let id = "gw-crash";
    let port = free_port();
    let _broker = Mosquitto::start(port, tempfile::tempdir().unwrap());
    let cloud = Cloud::start(
        SocketAddr::from(([127, 0, 0, 1], port)),
        &format!("perch/{id}/up/#"),
        "cloud-crash",
    )
    .await;
    let (_cfg_dir, config) = temp_file("perch.toml", &gateway_toml(id, port, 5));
    let data = tempfile::tempdir().unwrap();
    let fn_dir = tempfile::tempdir().unwrap();
    let start = || {
        Gateway::try_start(&[
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
            data.path().to_str().unwrap(),
        ])
        .unwrap_or_else(|log| panic!("seed {seed}: perch did not restart:\n{log}"))
    };

    let mut deploys = Deploys::default();
    let mut committed: BTreeSet<u64> = BTreeSet::new();
    let mut history: Vec<Cycle> = Vec::new();
    let mut next_n = 0u64;
    let mut next_version = 1u32;
    for c in 0..n_cycles {
        let context = format!("seed {seed}, cycle {c}");
        let mut gw = start();
        if c == 0 {
            let d = start_deploy(gw.addr(), id, fn_dir.path(), next_version);
            let (ok, out) =
                tokio::task::spawn_blocking(move || finish_deploy(d, Duration::from_secs(30)))
                    .await
                    .unwrap();
            assert!(ok, "the first deploy: {out}\n{}", gw.log_text());
            deploys.acked = next_version;
            deploys.acknowledged += 1;
            next_version += 1;
        }
        deploys.check(&gw, id, c, &context).await;

        let load = Load::start(gw.addr(), next_n, Duration::ZERO);
        let point = match rng.range(0, 3) {
            0 => KillPoint::Commit,
            1 => KillPoint::Forwarding,
            _ => KillPoint::Deploy,
        };
        let mut deploy = None;
        match point {
            KillPoint::Commit => {
                tokio::time::sleep(Duration::from_millis(rng.range(30, 1000))).await;
            }
            KillPoint::Forwarding => {
                let before = cloud.distinct();
                let deadline = Instant::now() + DELIVERY;
                while cloud.distinct() == before && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                tokio::time::sleep(Duration::from_millis(rng.range(0, 200))).await;
            }
            KillPoint::Deploy => {
                tokio::time::sleep(Duration::from_millis(rng.range(50, 500))).await;
                deploy = Some((
                    next_version,
                    start_deploy(gw.addr(), id, fn_dir.path(), next_version),
                ));
                next_version += 1;
                tokio::time::sleep(Duration::from_millis(rng.range(0, 400))).await;
            }
        }
        gw.signal("KILL");
        let killed_at = Instant::now();
        gw.wait(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("{context}: perch outlived kill -9"));
        let (next, acked) = load.stop().await;
        next_n = next;
        if let Some((k, child)) = deploy {
            let (ok, _) =
                tokio::task::spawn_blocking(move || finish_deploy(child, Duration::from_secs(2)))
                    .await
                    .unwrap();
            if ok {
                deploys.acked = k;
                deploys.acknowledged += 1;
            } else {
                deploys.cut = Some(k);
                deploys.cut_total += 1;
            }
        }
        let log = gw.log_text();
        assert!(
            !log.contains("panicked"),
            "{context}: perch panicked:\n{log}"
        );
        committed.extend(committed_in(data.path()));
        history.push(Cycle {
            acked,
            killed_at,
            point,
        });
    }

    // A last start: everything committed drains.
    let gw = start();
    deploys
        .check(&gw, id, n_cycles, &format!("seed {seed}, final start"))
        .await;
    let deadline = Instant::now() + DELIVERY;
    loop {
        let dir = data.path().to_owned();
        let left = tokio::task::spawn_blocking(move || buffered(&dir))
            .await
            .unwrap();
        let arrived: BTreeSet<u64> = cloud.arrivals.lock().unwrap().iter().map(|a| a.n).collect();
        if left == 0 && committed.is_subset(&arrived) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "seed {seed}: {left} records still buffered, {} committed ones not delivered\n{}",
            committed.difference(&arrived).count(),
            gw.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Stragglers of the last messages.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let delivered: BTreeSet<u64> = cloud.check().into_iter().collect();
    let missing: Vec<u64> = committed.difference(&delivered).copied().collect();
    assert!(
        missing.is_empty(),
        "seed {seed}: committed records never delivered: {missing:?}"
    );

    // A PUBACK means it is on disk: no kill lost a record the sensor had
    // been acknowledged.
    let mut acked_total = 0usize;
    let mut points: BTreeMap<String, usize> = BTreeMap::new();
    for (c, cycle) in history.iter().enumerate() {
        *points.entry(format!("{:?}", cycle.point)).or_default() += 1;
        acked_total += cycle.acked.len();
        let lost: Vec<(u64, Duration)> = cycle
            .acked
            .iter()
            .filter(|(n, _)| !delivered.contains(n))
            .map(|(n, at)| (*n, cycle.killed_at.saturating_duration_since(*at)))
            .collect();
        assert!(
            lost.is_empty(),
            "seed {seed}, cycle {c}: acknowledged records lost (record, acknowledged this long \
             before the kill): {lost:?}"
        );
    }
    assert!(acked_total > 0, "the sensor published nothing");
    eprintln!(
        "faults: crash ({:?}): {n_cycles} kill -9 cycles survived ({points:?}); {acked_total} records \
         acknowledged, {} delivered after dedupe, {} committed checked, 0 committed and 0 \
         acknowledged lost; deploys: {} acknowledged, {} cut by the kill ({} of them installed), none half \
         applied",
        started.elapsed(),
        delivered.len(),
        committed.len(),
        deploys.acknowledged,
        deploys.cut_total,
        deploys.cut_installed,
    );
}

/// A gateway delivering through a [`FaultProxy`] to Mosquitto, a cloud
/// subscriber on Mosquitto, a sensor under load, and the gateway's RSS.
struct Rig {
    _broker: Mosquitto,
    cloud: Cloud,
    proxy: FaultProxy,
    gw: Gateway,
    rss: RssPeak,
    load: Option<Load>,
    _cfg: tempfile::TempDir,
}

impl Rig {
    async fn start(id: &str, keep_alive_s: u64) -> Rig {
        let port = free_port();
        let broker = Mosquitto::start(port, tempfile::tempdir().unwrap());
        let cloud = Cloud::start(broker.addr(), &format!("perch/{id}/up/#"), "cloud").await;
        let proxy = FaultProxy::start(broker.addr()).await;
        let (cfg, config) = temp_file(
            "perch.toml",
            &gateway_toml(id, proxy.addr.port(), keep_alive_s),
        );
        let gw = Gateway::start(&["--config", config.to_str().unwrap()]);
        let rss = RssPeak::watch(gw.pid());
        // About 200 readings a second.
        let load = Some(Load::start(gw.addr(), 0, Duration::from_millis(5)));
        let rig = Rig {
            _broker: broker,
            cloud,
            proxy,
            gw,
            rss,
            load,
            _cfg: cfg,
        };
        rig.wait_delivery().await;
        rig
    }

    /// Waits until records reach the cloud (the link works).
    async fn wait_delivery(&self) {
        let before = self.cloud.distinct();
        let deadline = Instant::now() + DELIVERY;
        while self.cloud.distinct() == before {
            assert!(
                Instant::now() < deadline,
                "nothing reached the upstream:\n{}",
                self.gw.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the load, heals the link, waits until every accepted record
    /// arrived; checks once each after dedupe, in order per stream, and the
    /// memory bound. Returns (records accepted, peak RSS KiB).
    async fn finish(mut self, what: &str) -> (usize, u64) {
        let (_, acked) = self.load.take().unwrap().stop().await;
        self.proxy.delay(Duration::ZERO);
        self.proxy.set(Mode::Pass);
        let want: BTreeSet<u64> = acked.iter().map(|(n, _)| *n).collect();
        let deadline = Instant::now() + DELIVERY;
        loop {
            let arrived: BTreeSet<u64> = self
                .cloud
                .arrivals
                .lock()
                .unwrap()
                .iter()
                .map(|a| a.n)
                .collect();
            if want.is_subset(&arrived) {
                break;
            }
            if let Some(status) = self.gw.wait(Duration::ZERO) {
                panic!("{what}: perch exited ({status}):\n{}", self.gw.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {} accepted records never arrived (of {}): {:?}\n{}",
                want.difference(&arrived).count(),
                want.len(),
                want.difference(&arrived).take(20).collect::<Vec<_>>(),
                self.gw.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Once each after dedupe by id, first arrivals in order per stream.
        self.cloud.check();
        let peak = self.rss.peak_kib();
        assert!(
            peak > 0 && peak <= RSS_BOUND_KIB,
            "{what}: peak RSS {peak} KiB (bound {RSS_BOUND_KIB} KiB)"
        );
        let log = self.gw.log_text();
        assert!(!log.contains("panicked"), "{what}: perch panicked:\n{log}");
        (want.len(), peak)
    }
}

/// The most connection attempts a backoff of 100 ms doubling to 1 s (with
/// jitter in [d/2, d]) can make in `span`: the ramp, then one per 500 ms at
/// the least, plus slack for an attempt in flight at either end.
fn max_attempts(span: Duration) -> usize {
    5 + (span.as_millis() / 500) as usize + 3
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_for_a_while_loses_nothing_and_reconnects_with_backoff() {
    let outage = scale(Duration::from_secs(8), Duration::from_secs(180));
    let rig = Rig::start("gw-down", 5).await;
    rig.proxy.set(Mode::Refuse);
    let t0 = Instant::now();
    let mut waited = false;
    while t0.elapsed() < outage {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let dir = rig.gw.data_dir.path().to_owned();
        waited |= tokio::task::spawn_blocking(move || buffered(&dir))
            .await
            .unwrap()
            > 0;
    }
    let attempts = rig.proxy.attempts_since(t0).len();
    assert!(waited, "records wait in the buffer during the outage");
    assert!(
        attempts >= 2 && attempts <= max_attempts(outage),
        "{attempts} connection attempts in {outage:?} (backoff allows at most {})",
        max_attempts(outage)
    );
    let (records, peak) = rig.finish("upstream down").await;
    eprintln!(
        "faults: upstream down {outage:?}: {attempts} reconnect attempts (bound {}), {records} \
         records accepted, all delivered once in order, lost 0, peak RSS {} KiB",
        max_attempts(outage),
        peak
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_partition_is_detected_by_keep_alive_and_heals() {
    // The shortest keep-alive perch accepts.
    let keep_alive = Duration::from_secs(5);
    let partition = scale(Duration::from_secs(30), Duration::from_secs(180));
    let rig = Rig::start("gw-partition", keep_alive.as_secs()).await;
    rig.proxy.set(Mode::Freeze);
    let t0 = Instant::now();
    // rumqttc pings after keep-alive and gives up when the next ping is
    // due without an answer: a new connection within about 2 keep-alives.
    let detect_bound = keep_alive * 3 + Duration::from_secs(5);
    let detected = loop {
        if let Some(t) = rig.proxy.attempts_since(t0).first() {
            break t.duration_since(t0);
        }
        assert!(
            t0.elapsed() < detect_bound,
            "no reconnect {detect_bound:?} into a silent partition (keep-alive {keep_alive:?}):\n{}",
            rig.gw.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    while t0.elapsed() < partition {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let attempts = rig.proxy.attempts_since(t0).len();
    assert!(attempts <= max_attempts(partition), "{attempts} attempts");
    rig.proxy.set(Mode::Pass);
    rig.wait_delivery().await;
    let (records, peak) = rig.finish("silent partition").await;
    eprintln!(
        "faults: silent partition {partition:?}: detected after {detected:?} (keep-alive \
         {keep_alive:?}), {attempts} connection attempts, {records} records accepted, all \
         delivered once in order, lost 0, peak RSS {peak} KiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_link_loses_nothing_and_reorders_nothing() {
    let seed = seed();
    eprintln!("faults: flapping link, seed {seed}");
    let mut rng = Rng::new(seed);
    let span = scale(Duration::from_secs(15), Duration::from_secs(180));
    let rig = Rig::start("gw-flap", 5).await;
    let t0 = Instant::now();
    let mut flaps = 0usize;
    while t0.elapsed() < span {
        tokio::time::sleep(Duration::from_millis(rng.range(1000, 3000))).await;
        rig.proxy.cut_all();
        flaps += 1;
    }
    let attempts = rig.proxy.attempts_since(t0).len();
    // One reconnect per cut (the backoff starts over after each CONNACK);
    // more would be a storm.
    assert!(
        attempts <= 2 * flaps + 3,
        "seed {seed}: {attempts} connection attempts for {flaps} cuts"
    );
    rig.wait_delivery().await;
    let (records, peak) = rig.finish(&format!("flapping link, seed {seed}")).await;
    eprintln!(
        "faults: flapping link {span:?}: {flaps} cuts, {attempts} reconnects, {records} records \
         accepted, all delivered once in order, lost 0, peak RSS {peak} KiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upstream_gets_everything_in_order() {
    let delay = scale(Duration::from_millis(300), Duration::from_millis(1500));
    let span = scale(Duration::from_secs(10), Duration::from_secs(120));
    let rig = Rig::start("gw-slow", 5).await;
    rig.proxy.delay(delay);
    let before = rig.cloud.distinct();
    tokio::time::sleep(span).await;
    let during = rig.cloud.distinct() - before;
    assert!(during > 0, "nothing delivered through a slow upstream");
    let attempts = rig.proxy.attempts();
    assert_eq!(attempts, 1, "a slow upstream is no reason to reconnect");
    let (records, peak) = rig.finish("slow upstream").await;
    eprintln!(
        "faults: upstream acking {delay:?} late for {span:?}: {during} records delivered \
         meanwhile, {records} accepted, all delivered once in order, lost 0, 1 connection, \
         peak RSS {peak} KiB"
    );
}

/// The value of an unlabelled metric (or the first with `labels`) in a
/// Prometheus text page.
fn metric(page: &str, name: &str, labels: &str) -> f64 {
    let prefix = if labels.is_empty() {
        format!("{name} ")
    } else {
        format!("{name}{{{labels}}} ")
    };
    page.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in /metrics:\n{page}"))
}

async fn metrics(admin: SocketAddr) -> String {
    let (status, page) =
        tokio::task::spawn_blocking(move || crate::admin::get(admin, "/metrics", None))
            .await
            .unwrap();
    assert_eq!(status, 200, "{page}");
    page
}

/// The buffer grows on a tiny file system (the upstream is down, and
/// `max_bytes` is larger than the disk): it stops at `min_free_bytes`, never
/// at ENOSPC; the reserve is reported in the log, /metrics and /readyz, the
/// records `when_full` refuses are counted, and the broker keeps serving.
/// When the upstream returns, with no restart, the backlog drains, /readyz
/// is 200 again, new records are committed and delivered, and every
/// committed record arrives once, in order. (Before the reserve the buffer
/// filled the disk and no commit ever worked again. The other full-disk
/// test, `store_forward::a_full_disk_...`, fills the disk from outside.)
///
/// The data directory is an 8 MiB tmpfs mounted in a private mount
/// namespace (`unshare -Urm`): the test fails, never skips, when that is
/// impossible.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_buffer_filling_a_tiny_disk_stops_at_the_reserve_and_recovers() {
    use crate::store_forward::Confined;
    let port = free_port();
    let broker = Mosquitto::start(port, tempfile::tempdir().unwrap());
    let cloud = Cloud::start(broker.addr(), "perch/gw-disk/up/#", "cloud-disk").await;
    let proxy = FaultProxy::start(broker.addr()).await;
    proxy.set(Mode::Refuse);
    // max_bytes (64 MiB by default) is far above the 8 MiB disk: only the
    // 2 MiB reserve stops the buffer. drop_newest, so nothing committed is
    // dropped and every committed record must arrive.
    let (_cfg_dir, config) = temp_file(
        "perch.toml",
        &format!(
            "{}\n[buffer]\nmax_pending_records = 200\nwhen_full = \"drop_newest\"\n\
             min_free_bytes = 2097152\n",
            gateway_toml("gw-disk", proxy.addr.port(), 5)
        ),
    );
    let mut gw = Confined::start_sized(&config, "8m");
    // MQTT 5, so that the gateway can say which records it refused (PUBACK
    // 0x97) and the connection stays. One client id per connection:
    // reconnecting with the same id within milliseconds can hit the
    // broker's id-reuse race (issue 11).
    let mut answered = Answered::default();
    let addr = gw.addr;
    let mut publish = async |range: std::ops::Range<u64>| {
        let id = format!("sensor-{}", range.start);
        let a = publish_v5(addr, &id, range, 2000).await;
        answered.acked.extend(a.acked);
        answered.refused.extend(a.refused);
    };

    // ~2 KiB records until the free space reaches the reserve (at most
    // 16 MiB worth).
    let reserve_hit = "the disk is at buffer.min_free_bytes";
    let mut sent = 0u64;
    while !gw.log_text().contains(reserve_hit) {
        assert!(
            sent < 8000,
            "{sent} records of 2 KiB and the reserve never reached:\n{}",
            gw.log_text()
        );
        publish(sent..sent + 100).await;
        sent += 100;
    }
    // More while it is full: refused by drop_newest, and counted.
    publish(sent..sent + 300).await;
    sent += 300;
    // Until every record published is either committed or dropped (the
    // last ones wait up to a commit interval). Refused means by drop_newest
    // at the reserve, or at intake while `max_pending_records` wait for the
    // slowed writer (`backlog`: seen with a release binary, whose intake
    // outruns commits near the reserve).
    let refused = |page: &str| {
        metric(
            page,
            "perch_buffer_dropped_records_total",
            "reason=\"drop_newest\"",
        ) + metric(
            page,
            "perch_buffer_dropped_records_total",
            "reason=\"backlog\"",
        )
    };
    let deadline = Instant::now() + DELIVERY;
    let page = loop {
        let page = metrics(gw.admin).await;
        let done = metric(&page, "perch_buffer_committed_records_total", "") + refused(&page);
        if done >= sent as f64 {
            break page;
        }
        assert!(
            Instant::now() < deadline,
            "{done} of {sent} handled:\n{page}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let dropped = refused(&page);
    let free = metric(&page, "perch_buffer_disk_free_bytes", "");
    // Near the reserve a later commit can find room again (WAL pages
    // checkpointed, the bound recomputed), so not every record published
    // after the reserve was hit is refused: what holds is that refusals
    // happen, are counted, and committed + refused = published (above).
    assert!(dropped > 0.0, "the refused records are counted:\n{page}");
    assert_eq!(metric(&page, "perch_buffer_disk_full", ""), 1.0, "{page}");
    // The disk never filled: no commit failed, and what is free is the
    // reserve, less at most a commit or two of WAL.
    assert_eq!(
        metric(&page, "perch_buffer_write_errors_total", ""),
        0.0,
        "{page}\n{}",
        gw.log_text()
    );
    assert_eq!(metric(&page, "perch_buffer_writable", ""), 1.0, "{page}");
    let listing = gw.ask("ls", "listed").await;
    assert!(
        free > 1024.0 * 1024.0,
        "{free} bytes free:\n{listing}\n{page}\n{}",
        gw.log_text()
    );
    assert!(
        !gw.log_text().contains("database or disk is full"),
        "{}",
        gw.log_text()
    );
    let (status, body) = gw.readyz_until(503).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("buffer.min_free_bytes"), "{body}");
    // The broker serves meanwhile.
    let (client, mut el) = mqtt::connect(mqtt::options("while-full", gw.addr))
        .await
        .unwrap();
    mqtt::subscribe(&client, &mut el, "chat/#").await;
    client
        .publish("chat/x", QoS::AtLeastOnce, false, "still here")
        .await
        .unwrap();
    let p = mqtt::next_publish(&mut el, mqtt::WAIT)
        .await
        .expect("the broker delivers while the disk is at the reserve");
    assert_eq!(&p.payload[..], b"still here");
    drop((client, el));
    assert!(gw.running(), "perch is up:\n{}", gw.log_text());

    // The upstream returns: the backlog drains (acknowledged records are
    // deleted, their pages reused), the reserve no longer binds, /readyz
    // is 200 again, with no restart.
    proxy.set(Mode::Pass);
    let deadline = Instant::now() + DELIVERY;
    loop {
        let page = metrics(gw.admin).await;
        if metric(&page, "perch_buffer_records", "") == 0.0
            && metric(&page, "perch_buffer_disk_full", "") == 0.0
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the backlog does not drain:\n{page}\n{}",
            gw.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, body) = gw.readyz_until(200).await;
    assert_eq!(status, 200, "ready again once the backlog drained: {body}");
    // New records are committed and delivered again.
    let fresh = 100_000..100_200;
    publish(fresh.clone()).await;
    let deadline = Instant::now() + DELIVERY;
    while !fresh
        .clone()
        .all(|n| cloud.arrivals.lock().unwrap().iter().any(|a| a.n == n))
    {
        assert!(
            Instant::now() < deadline,
            "records after the recovery do not arrive:\n{}",
            gw.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let page = metrics(gw.admin).await;
    assert_eq!(metric(&page, "perch_buffer_writable", ""), 1.0, "{page}");
    assert_eq!(
        metric(&page, "perch_buffer_write_errors_total", ""),
        0.0,
        "{page}"
    );
    let committed = metric(&page, "perch_buffer_committed_records_total", "") as usize;
    // Every committed record arrives once (one id each, in order per
    // stream: `check`), and every record published before the recovery was
    // either committed and delivered or counted as dropped. (Near the
    // reserve drop_newest refuses what does not fit in that commit, and a
    // later commit may find room again, so the refused ones are not only a
    // tail.) A PUBACK means it is on disk: what was acknowledged is exactly
    // what arrived, and each refused record was answered 0x97.
    let all = cloud.check();
    let before: Vec<u64> = all.iter().copied().filter(|n| *n < sent).collect();
    let acked_before: Vec<u64> = answered
        .acked
        .iter()
        .copied()
        .filter(|n| *n < sent)
        .collect();
    assert_eq!(before, acked_before, "delivered = acknowledged");
    assert_eq!(
        answered.refused.len() as f64,
        dropped,
        "each dropped record was refused to its client\n{page}"
    );
    assert_eq!(
        all.len(),
        committed,
        "every committed record arrived, and nothing else:\n{page}"
    );
    assert_eq!(all.len(), before.len() + (fresh.end - fresh.start) as usize);
    assert_eq!(
        before.len() as f64 + dropped,
        sent as f64,
        "each record published before the recovery was committed or counted as dropped\n{page}"
    );
    assert!(gw.running(), "perch is up:\n{}", gw.log_text());
    let log = gw.log_text();
    assert!(!log.contains("panicked"), "perch panicked:\n{log}");
    eprintln!(
        "faults: the buffer on an 8 MiB disk with a 2 MiB reserve: {sent} records of 2 KiB \
         published, {} committed, {dropped} refused at the reserve \
         (counted), {free} bytes free at the reserve, no failed commit; after the upstream \
         returned the backlog drained and {} fresh records were committed and delivered; \
         the tmpfs at the reserve:\n{listing}",
        before.len(),
        fresh.end - fresh.start
    );
}
