//! Store-and-forward against the world outside perch: a real Mosquitto as
//! the upstream (stopped and restarted mid-stream), and a data directory on
//! a tiny file system that fills up.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::QoS;

use crate::util::mqtt::{self, connect, subscribe, wait_puback};
use crate::util::{free_port, perch, perch_bin, temp_file, Gateway};

/// How long a record may take to reach the upstream once it can.
const DELIVERY: Duration = Duration::from_secs(60);

/// A Mosquitto broker on a loopback port, with persistence so that a
/// restart keeps the cloud subscriber's session and queued messages.
pub(crate) struct Mosquitto {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl Mosquitto {
    pub(crate) fn start(port: u16, dir: tempfile::TempDir) -> Mosquitto {
        let conf = dir.path().join("mosquitto.conf");
        // As root, Mosquitto drops to the `mosquitto` user unless told
        // otherwise, and that user cannot write our temp dir.
        let root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout.starts_with(b"0"))
            .unwrap_or(false);
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n\
                 persistence_location {}/\n{}",
                dir.path().display(),
                if root { "user root\n" } else { "" }
            ),
        )
        .unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.path().join("mosquitto.log")).unwrap(),
            ))
            .spawn()
            .expect("starting mosquitto (test.sh installs it: apt-get install mosquitto)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Mosquitto {
            child: Some(child),
            port,
            dir,
        }
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// SIGTERM (Mosquitto saves its persistence file) and wait; returns the
    /// directory for a restart.
    pub(crate) fn stop(mut self) -> tempfile::TempDir {
        let mut child = self.child.take().unwrap();
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "mosquitto did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One record as the cloud saw it.
#[derive(Debug, Clone)]
pub(crate) struct Arrival {
    pub(crate) id: String,
    pub(crate) stream: String,
    pub(crate) n: u64,
    /// Records in the MQTT message that carried it.
    pub(crate) batch: usize,
}

/// A subscriber on the upstream broker with a persistent session that
/// survives the broker's restart: `mosquitto_sub -c`, which reconnects by
/// itself and gets what was queued for it meanwhile.
pub(crate) struct Cloud {
    pub(crate) arrivals: Arc<Mutex<Vec<Arrival>>>,
    child: Child,
}

impl Cloud {
    pub(crate) async fn start(upstream: SocketAddr, filter: &str, client_id: &str) -> Cloud {
        // Line-buffered: into a pipe, its stdio would hold lines back.
        let mut child = Command::new("stdbuf")
            .args([
                "-oL",
                "mosquitto_sub",
                "-h",
                "127.0.0.1",
                "-p",
                &upstream.port().to_string(),
            ])
            .args(["-c", "-i", client_id, "-q", "1", "-d", "-t", filter])
            .args(["-F", "%t %p"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting mosquitto_sub (test.sh installs mosquitto-clients)");
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let (subscribed_tx, subscribed) = std::sync::mpsc::channel();
        let log = arrivals.clone();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // `-d` interleaves the client's debug lines ("Client ...").
                if line.contains("received SUBACK") {
                    let _ = subscribed_tx.send(());
                }
                let Some((topic, payload)) = line.split_once(' ') else {
                    continue;
                };
                if !topic.starts_with("perch/") {
                    continue;
                }
                let v: serde_json::Value = serde_json::from_str(payload).expect("a JSON payload");
                let envelopes = v.as_array().expect("a batch: a JSON array of envelopes");
                let mut log = log.lock().unwrap();
                for e in envelopes {
                    let stream = e["stream"].as_str().unwrap().to_owned();
                    assert!(topic.ends_with(&format!("/{stream}")), "{topic}");
                    log.push(Arrival {
                        id: e["id"].as_str().unwrap().to_owned(),
                        stream,
                        n: e["data"]["n"].as_u64().expect("the record, as JSON"),
                        batch: envelopes.len(),
                    });
                }
            }
        });
        let ready = tokio::task::spawn_blocking(move || subscribed.recv_timeout(mqtt::WAIT))
            .await
            .unwrap();
        if ready.is_err() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("mosquitto_sub did not subscribe within {:?}", mqtt::WAIT);
        }
        Cloud { arrivals, child }
    }

    /// Distinct record numbers seen so far.
    pub(crate) fn distinct(&self) -> usize {
        let a = self.arrivals.lock().unwrap();
        a.iter()
            .map(|r| r.n)
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    }

    pub(crate) async fn wait_distinct(&self, want: usize, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        while self.distinct() < want && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// After dedupe by id: each record number has one id, each id one
    /// record; first arrivals are in publish order within each stream.
    /// Returns the distinct record numbers.
    pub(crate) fn check(&self) -> Vec<u64> {
        let a = self.arrivals.lock().unwrap();
        let mut id_of: HashMap<u64, &str> = HashMap::new();
        let mut n_of: HashMap<&str, u64> = HashMap::new();
        let mut order: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        for r in a.iter() {
            assert_eq!(
                *id_of.entry(r.n).or_insert(&r.id),
                r.id,
                "record {} arrived under two ids",
                r.n
            );
            if n_of.insert(&r.id, r.n).is_none() {
                order.entry(&r.stream).or_default().push(r.n);
            } else {
                assert_eq!(n_of[r.id.as_str()], r.n, "id {} names two records", r.id);
            }
        }
        for (stream, ns) in &order {
            assert!(
                ns.windows(2).all(|w| w[0] < w[1]),
                "stream {stream} out of order: {ns:?}"
            );
        }
        let mut all: Vec<u64> = id_of.keys().copied().collect();
        all.sort_unstable();
        all
    }
}

impl Drop for Cloud {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Record `n` as the publishers here send it: `{"n":n,"pad":...}` on
/// `alerts/a` or `alerts/b` by parity.
fn alert(n: u64, padding: &str) -> (&'static str, String) {
    let topic = if n.is_multiple_of(2) {
        "alerts/a"
    } else {
        "alerts/b"
    };
    (topic, format!("{{\"n\":{n},\"pad\":\"{padding}\"}}"))
}

/// Publishes `{"n":i}` for each i at QoS 1, alternating `alerts/a` and
/// `alerts/b` by parity, each with a padding of `pad` bytes.
pub(crate) async fn publish(addr: SocketAddr, range: std::ops::Range<u64>, pad: usize) {
    let (client, mut el) = connect(mqtt::options("sensor", addr)).await.unwrap();
    let padding = "x".repeat(pad);
    for n in range {
        let (topic, payload) = alert(n, &padding);
        client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
        wait_puback(&mut el).await;
    }
}

/// What a publisher's messages became: those acknowledged (the gateway
/// committed them) and those refused.
#[derive(Debug, Default)]
pub(crate) struct Answered {
    pub(crate) acked: Vec<u64>,
    pub(crate) refused: Vec<u64>,
}

/// [`publish`] over MQTT 5 as client `id`, one message after the other,
/// sorting them by the PUBACK's reason code: success, or 0x97 (Quota
/// exceeded: the gateway could not commit it). Any other answer, or none,
/// fails the test.
pub(crate) async fn publish_v5(
    addr: SocketAddr,
    id: &str,
    range: std::ops::Range<u64>,
    pad: usize,
) -> Answered {
    use rumqttc::v5::mqttbytes::v5::{Packet as P5, PubAckReason};
    use rumqttc::v5::{mqttbytes::QoS as Q5, AsyncClient as C5, Event as E5, MqttOptions as O5};
    let mut opts = O5::new(id, addr.ip().to_string(), addr.port());
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut el) = C5::new(opts, 16);
    let padding = "x".repeat(pad);
    let mut answered = Answered::default();
    for n in range {
        let (topic, payload) = alert(n, &padding);
        client
            .publish(topic, Q5::AtLeastOnce, false, payload)
            .await
            .unwrap();
        let reason = tokio::time::timeout(mqtt::WAIT, async {
            loop {
                match el.poll().await {
                    Ok(E5::Incoming(P5::PubAck(ack))) => return ack.reason,
                    Ok(_) => continue,
                    Err(e) => panic!("the 5.0 connection failed at message {n}: {e}"),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no PUBACK for message {n}"));
        match reason {
            PubAckReason::Success => answered.acked.push(n),
            PubAckReason::QuotaExceeded => answered.refused.push(n),
            other => panic!("message {n} answered {other:?}"),
        }
    }
    answered
}

/// [`publish`] over MQTT 3.1.1 as client `id`, which has no way to refuse
/// a publish: when the gateway cannot commit one it closes the connection
/// without the PUBACK. Returns the messages acknowledged before that, and
/// the one that was not (if the connection was closed).
pub(crate) async fn publish_until_refused(
    addr: SocketAddr,
    id: &str,
    range: std::ops::Range<u64>,
    pad: usize,
) -> Answered {
    use rumqttc::{Event, Packet};
    let (client, mut el) = connect(mqtt::options(id, addr)).await.unwrap();
    let padding = "x".repeat(pad);
    let mut answered = Answered::default();
    for n in range {
        let (topic, payload) = alert(n, &padding);
        client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
        let acked = tokio::time::timeout(mqtt::WAIT, async {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => return true,
                    Ok(_) => continue,
                    Err(_) => return false,
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("neither a PUBACK nor a closed connection for message {n}"));
        if !acked {
            answered.refused.push(n);
            break;
        }
        answered.acked.push(n);
    }
    answered
}

fn buffered(dir: &Path) -> u64 {
    let out = perch(&["buffer", "stats", "--data-dir", dir.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("records:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no record count in: {text}"))
}

fn gateway_toml(id: &str, upstream_port: u16, buffer: &str) -> String {
    format!(
        r#"
[gateway]
id = "{id}"

[[broker.listeners]]
name = "local"
listen = "127.0.0.1:0"
allow_anonymous = true

[buffer]
{buffer}

[upstream]
forward_topics = ["alerts/#"]
backoff_initial_ms = 100
backoff_max_ms = 500

[upstream.mqtt]
host = "127.0.0.1"
port = {upstream_port}
keep_alive_s = 5
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_upstream_restarted_mid_stream_gets_every_record_once_in_order() {
    let port = free_port();
    let broker = Mosquitto::start(port, tempfile::tempdir().unwrap());
    let cloud = Cloud::start(broker.addr(), "perch/gw-mosq/up/#", "cloud-mosq").await;
    let (_cfg_dir, config) = temp_file("perch.toml", &gateway_toml("gw-mosq", port, ""));
    let gw = Gateway::start(&["--config", config.to_str().unwrap()]);

    publish(gw.addr(), 0..200, 0).await;
    cloud.wait_distinct(200, DELIVERY).await;
    assert_eq!(cloud.distinct(), 200, "delivered while Mosquitto is up");

    let persistence = broker.stop();
    publish(gw.addr(), 200..600, 0).await;
    let dir = gw.data_dir.path().to_owned();
    let deadline = Instant::now() + DELIVERY;
    loop {
        let dir = dir.clone();
        let n = tokio::task::spawn_blocking(move || buffered(&dir))
            .await
            .unwrap();
        if n >= 400 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the outage's 400 records should wait in the buffer; it holds {n}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let _broker = Mosquitto::start(port, persistence);
    cloud.wait_distinct(600, DELIVERY).await;
    let all = cloud.check();
    assert_eq!(
        all,
        (0..600).collect::<Vec<_>>(),
        "every record exactly once after dedupe\n{}",
        gw.log_text()
    );
    let biggest = cloud
        .arrivals
        .lock()
        .unwrap()
        .iter()
        .map(|a| a.batch)
        .max()
        .unwrap();
    assert!(
        biggest > 1,
        "the backlog travels several records per message"
    );
}

/// `perch run` inside its own user and mount namespace, with its data
/// directory on a small tmpfs that only it sees. A helper shell in the same
/// namespace fills the tmpfs and frees it again when the test drops a file
/// into the control directory (`fill`, `free`, `stop`), and lists it once
/// (`ls`: `ls -l` and `df -k` of the tmpfs).
pub(crate) struct Confined {
    child: Child,
    control: tempfile::TempDir,
    log: Arc<Mutex<Vec<String>>>,
    pub(crate) addr: SocketAddr,
    /// The admin listener (`/readyz`).
    pub(crate) admin: SocketAddr,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

impl Confined {
    /// Starts perch with a tmpfs of `size` (`mount -o size=`) as its data
    /// directory.
    pub(crate) fn start_sized(config: &Path, size: &str) -> Confined {
        let data = tempfile::tempdir().unwrap();
        let control = tempfile::tempdir().unwrap();
        let cfg_dir = tempfile::tempdir().unwrap();
        let script = format!(
            r#"set -e
D='{data}'; C='{control}'
mount -t tmpfs -o size={size} tmpfs "$D"
(
  i=0
  while [ $i -lt 6000 ] && [ ! -e "$C/stop" ]; do
    if [ -e "$C/fill" ] && [ ! -e "$C/filled" ]; then
      dd if=/dev/zero of="$D/filler" bs=4k 2>/dev/null || true
      df -k "$D" > "$C/filled"
    fi
    if [ -e "$C/free" ] && [ ! -e "$C/freed" ]; then
      rm -f "$D/filler"; df -k "$D" > "$C/freed"
    fi
    if [ -e "$C/ls" ] && [ ! -e "$C/listed" ]; then
      (ls -l "$D"; df -k "$D") > "$C/listed.tmp"; mv "$C/listed.tmp" "$C/listed"
    fi
    i=$((i + 1)); sleep 0.05
  done
) &
exec '{perch}' run --config '{config}' --data-dir "$D" --admin-listen 127.0.0.1:0
"#,
            data = data.path().display(),
            control = control.path().display(),
            perch = perch_bin().display(),
            config = config.display(),
        );
        let mut child = Command::new("unshare")
            .args(["-Urm", "sh", "-c", &script])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running unshare (util-linux)");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        {
            let log = log.clone();
            let stderr = child.stderr.take().unwrap();
            std::thread::spawn(move || {
                // Lossy: a line that is not UTF-8 must not stop the reader
                // (the pipe would fill and block perch).
                for line in BufReader::new(stderr).split(b'\n').map_while(Result::ok) {
                    let line = String::from_utf8_lossy(&line).into_owned();
                    if line.contains("perch ready") {
                        let _ = ready_tx.send(line.clone());
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        let line = match ready_rx.recv_timeout(crate::util::READY_TIMEOUT) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "perch under `unshare -Urm` with a tmpfs data dir did not get ready:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
        };
        let addr = line
            .split("mqtt://")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line}"));
        let admin = line
            .split("admin on http://")
            .nth(1)
            .and_then(|s| s.split([',', ' ']).next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no admin address in {line}"));
        Confined {
            child,
            control,
            log,
            addr,
            admin,
            _dirs: (data, cfg_dir),
        }
    }

    /// Drops `name` into the control dir and waits for the helper's answer
    /// (`df` of the tmpfs), which it returns.
    pub(crate) async fn ask(&self, name: &str, answer: &str) -> String {
        std::fs::write(self.control.path().join(name), "").unwrap();
        let path = self.control.path().join(answer);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(text) = std::fs::read_to_string(&path) {
                if !text.is_empty() {
                    return text;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the namespace helper did not answer {name}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(crate) fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Polls `/readyz` until it answers `want` (or 30 s pass); returns the
    /// last answer.
    pub(crate) async fn readyz_until(&self, want: u16) -> (u16, String) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let admin = self.admin;
            let answer =
                tokio::task::spawn_blocking(move || crate::admin::get(admin, "/readyz", None))
                    .await
                    .unwrap();
            if answer.0 == want || tokio::time::Instant::now() > deadline {
                return answer;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub(crate) async fn wait_log(&self, needle: &str, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if self.log_text().contains(needle) {
                return true;
            }
            if tokio::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(crate) fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Confined {
    fn drop(&mut self) {
        let _ = std::fs::write(self.control.path().join("stop"), "");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_reported_the_gateway_keeps_serving_and_recovers() {
    let upstream = Gateway::start(&[]);
    let cloud = Cloud::start(upstream.addr(), "perch/gw-full/up/#", "cloud-full").await;
    // At most 50 records wait in memory for the disk: beyond them the
    // newest are refused (counted and logged), so memory stays bounded. The
    // reserve is the smallest allowed (the tmpfs is 2 MiB); at it,
    // drop_newest keeps what is committed.
    let (_cfg_dir, config) = temp_file(
        "perch.toml",
        &gateway_toml(
            "gw-full",
            upstream.addr().port(),
            "max_pending_records = 50\nmin_free_bytes = 1048576\nwhen_full = \"drop_newest\"",
        ),
    );
    // 4 MiB: after the filler goes, twice the reserve is free again.
    let mut gw = Confined::start_sized(&config, "4m");

    publish(gw.addr, 0..20, 0).await;
    cloud.wait_distinct(20, DELIVERY).await;
    assert_eq!(cloud.distinct(), 20, "delivered before the disk fills");

    let df = gw.ask("fill", "filled").await;
    // Each record ~2 KiB: the free space is below the reserve now, so the
    // buffer is full at its size; drop_newest refuses what does not fit
    // into the pages the acknowledged records left. A PUBACK means it is
    // on disk: a 5.0 client is told 0x97 for each refused one.
    let full = publish_v5(gw.addr, "sensor-full", 20..320, 2000).await;
    assert!(
        gw.wait_log("the disk is at buffer.min_free_bytes", DELIVERY)
            .await,
        "the reserve is logged (df: {df}):\n{}",
        gw.log_text()
    );
    assert!(
        !full.refused.is_empty(),
        "none of the 300 was refused (df: {df}):\n{}",
        gw.log_text()
    );
    // A 3.1.1 client cannot be told: its connection is closed without the
    // PUBACK.
    let v311 = publish_until_refused(gw.addr, "sensor-311", 600..650, 2000).await;
    assert_eq!(
        v311.refused.len(),
        1,
        "the 3.1.1 connection is closed at a refused message: {v311:?}\n{}",
        gw.log_text()
    );

    // The broker still serves: a round trip through it while the disk is
    // full.
    let (client, mut el) = connect(mqtt::options("while-full", gw.addr)).await.unwrap();
    subscribe(&client, &mut el, "chat/#").await;
    client
        .publish("chat/x", QoS::AtLeastOnce, false, "still here")
        .await
        .unwrap();
    let p = mqtt::next_publish(&mut el, mqtt::WAIT)
        .await
        .expect("the broker delivers while the disk is full");
    assert_eq!(&p.payload[..], b"still here");
    drop((client, el));
    assert!(gw.running(), "perch is up:\n{}", gw.log_text());
    // /readyz says the gateway is not ready, and why.
    let (status, body) = gw.readyz_until(503).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("buffer.min_free_bytes"), "{body}");

    gw.ask("free", "freed").await;
    // The next commit sees the space (records published now make one).
    publish(gw.addr, 900..901, 0).await;
    assert!(
        gw.wait_log("the buffer is no longer full", DELIVERY).await,
        "recovery is logged:\n{}",
        gw.log_text()
    );
    let (status, body) = gw.readyz_until(200).await;
    assert_eq!(status, 200, "ready again once commits work: {body}");
    publish(gw.addr, 1000..1010, 0).await;
    let deadline = tokio::time::Instant::now() + DELIVERY;
    while tokio::time::Instant::now() < deadline
        && !(1000..1010).all(|n| cloud.arrivals.lock().unwrap().iter().any(|a| a.n == n))
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all = cloud.check();
    // Nothing acknowledged was lost, and nothing refused was kept: of the
    // records published while the disk was full exactly those the gateway
    // acknowledged arrived.
    let during: Vec<u64> = all
        .iter()
        .copied()
        .filter(|n| (20..320).contains(n) || (600..650).contains(n))
        .collect();
    assert!(all.starts_with(&(0..20).collect::<Vec<_>>()), "{all:?}");
    let mut acked = full.acked.clone();
    acked.extend(&v311.acked);
    assert_eq!(
        during,
        acked,
        "what arrived of the full-disk phase is not what was acknowledged \
         ({} refused with 0x97, 3.1.1: {v311:?})\n{}",
        full.refused.len(),
        gw.log_text()
    );
    assert!(
        (1000..1010).all(|n| all.contains(&n)),
        "records after recovery arrive: {all:?}\n{}",
        gw.log_text()
    );
    assert!(gw.running());
}
