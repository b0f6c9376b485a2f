//! Link-aware forwarding against a real Mosquitto: after an outage, live
//! records overtake the backlog and the backlog drains at its cap
//! (`[upstream.mqtt.drain]`); the link totals per destination and stream
//! survive a restart exactly; bad drain values are refused by name.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, Packet, QoS};

use crate::admin::{get, metric, metrics};
use crate::store_forward::{publish, Mosquitto};
use crate::util::faults::{FaultProxy, Mode};
use crate::util::mqtt::{self, connect, subscribe, wait_puback};
use crate::util::{free_port, perch, temp_file, Gateway};

/// The longest anything here may take on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(90);

/// One record as the upstream subscriber saw it.
#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    stream: String,
    seq: u64,
    n: u64,
}

/// A subscriber on the upstream broker, connected for the whole test
/// (perch's outage is between perch and the broker), noting when each
/// record arrives.
struct Upstream {
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    async fn start(broker: SocketAddr, gateway: &str) -> Upstream {
        let (client, mut el) = connect(mqtt::options("upstream-watch", broker))
            .await
            .unwrap();
        subscribe(&client, &mut el, &format!("perch/{gateway}/up/#")).await;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let prefix = format!("{gateway}-");
        let task = tokio::spawn(async move {
            let _client: AsyncClient = client;
            while let Ok(event) = el.poll().await {
                let Event::Incoming(Packet::Publish(p)) = event else {
                    continue;
                };
                let at = Instant::now();
                let v: serde_json::Value = serde_json::from_slice(&p.payload).expect("JSON");
                let envelopes = v.as_array().expect("an array of envelopes");
                let mut log = log.lock().unwrap();
                for e in envelopes {
                    let id = e["id"].as_str().unwrap();
                    log.push(Seen {
                        at,
                        stream: e["stream"].as_str().unwrap().to_owned(),
                        seq: id.strip_prefix(&prefix).unwrap().parse().unwrap(),
                        n: e["data"]["n"].as_u64().unwrap(),
                    });
                }
            }
        });
        Upstream { seen, task }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    async fn wait_for(&self, count: usize) {
        let deadline = Instant::now() + DEADLINE;
        while self.seen().len() < count {
            assert!(
                Instant::now() < deadline,
                "{} of {count} records upstream",
                self.seen().len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn config(id: &str, upstream_port: u16, drain: &str) -> String {
    format!(
        r#"
[gateway]
id = "{id}"

[[broker.listeners]]
name = "local"
listen = "127.0.0.1:0"
allow_anonymous = true

[upstream]
forward_topics = ["alerts/#", "live/#"]
backoff_initial_ms = 100
backoff_max_ms = 300

[upstream.mqtt]
host = "127.0.0.1"
port = {upstream_port}
keep_alive_s = 5
max_records_per_message = 10

[upstream.mqtt.drain]
{drain}
"#
    )
}

/// Polls `/metrics` until `key` reaches `want`.
async fn wait_metric(admin: SocketAddr, key: &str, want: f64) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let m = tokio::task::spawn_blocking(move || metrics(admin))
            .await
            .unwrap();
        if m.get(key).copied().unwrap_or(0.0) >= want {
            return;
        }
        assert!(Instant::now() < deadline, "{key} never reached {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The outage's backlog, the cap it drains at, and the live readings sent
/// while it drains.
const BACKLOG: u64 = 1200;
const CAP: f64 = 200.0;
const LIVE: u64 = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_outage_live_records_overtake_the_backlog_which_holds_its_cap() {
    let broker = Mosquitto::start(free_port(), tempfile::tempdir().unwrap());
    let upstream = Upstream::start(broker.addr(), "gw-live").await;
    let proxy = FaultProxy::start(broker.addr()).await;
    proxy.set(Mode::Refuse);
    let drain = format!("order = \"live_first\"\nbacklog_records_per_s = {CAP}");
    let (_dir, file) = temp_file("perch.toml", &config("gw-live", proxy.addr.port(), &drain));
    let gw = Gateway::start(&["--config", file.to_str().unwrap()]);
    let admin = gw.admin.unwrap();

    // The outage: the backlog waits in the buffer.
    publish(gw.addr(), 0..BACKLOG, 0).await;
    wait_metric(admin, "perch_buffer_records", BACKLOG as f64).await;

    // The link comes back; once perch is connected, a live reading every
    // 100 ms.
    proxy.set(Mode::Pass);
    wait_metric(admin, "perch_upstream_connected", 1.0).await;
    let (sensor, mut el) = connect(mqtt::options("live-sensor", gw.addr()))
        .await
        .unwrap();
    let mut sent_at = Vec::new();
    for n in 0..LIVE {
        let payload = format!("{{\"n\":{}}}", 1_000_000 + n);
        sensor
            .publish("live/x", QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
        wait_puback(&mut el).await;
        sent_at.push(Instant::now());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    upstream.wait_for((BACKLOG + LIVE) as usize).await;
    let seen = upstream.seen();
    let (live, backlog): (Vec<&Seen>, Vec<&Seen>) = seen.iter().partition(|s| s.stream == "live/x");
    assert_eq!(live.len() as u64, LIVE, "each live reading once");
    assert_eq!(backlog.len() as u64, BACKLOG, "each backlog record once");

    // Live first: every live reading arrived while the backlog was still
    // draining (a FIFO drain delivers them all after the backlog), and
    // soon after it was sent.
    let backlog_end = backlog.iter().map(|s| s.at).max().unwrap();
    let mut latencies: Vec<Duration> = live
        .iter()
        .map(|s| {
            assert!(
                s.at < backlog_end,
                "live reading {} arrived after the whole backlog",
                s.n
            );
            s.at - sent_at[(s.n - 1_000_000) as usize]
        })
        .collect();
    latencies.sort();
    let median = latencies[latencies.len() / 2];
    assert!(
        median < Duration::from_secs(1),
        "live readings took {latencies:?} while the backlog drained"
    );

    // The cap: records per second over the drain window, with wide
    // margins (the machine is shared and noisy).
    let start = backlog.iter().map(|s| s.at).min().unwrap();
    let rate = (BACKLOG - 10) as f64 / (backlog_end - start).as_secs_f64();
    assert!(
        rate > CAP * 0.5 && rate < CAP * 1.5,
        "the backlog drained at {rate:.0} records/s against a cap of {CAP}"
    );

    eprintln!(
        "backlog of {BACKLOG} drained at {rate:.0} records/s (cap {CAP}); live median \
         {median:?}, worst {:?}",
        latencies.last().unwrap()
    );

    // Order: within the backlog and within live, by seq and by stream;
    // the ids carry the seq a receiver sorts by.
    for lane in [&backlog, &live] {
        for stream in ["alerts/a", "alerts/b", "live/x"] {
            let ns: Vec<(u64, u64)> = lane
                .iter()
                .filter(|s| s.stream == stream)
                .map(|s| (s.seq, s.n))
                .collect();
            assert!(
                ns.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1),
                "{stream} out of order within its lane: {ns:?}"
            );
        }
    }
    let last_backlog_seq = backlog.iter().map(|s| s.seq).max().unwrap();
    assert!(
        live.iter().all(|s| s.seq > last_backlog_seq),
        "live records have the higher seqs"
    );
}

/// `/metrics` sample of one link total.
fn total(m: &std::collections::HashMap<String, f64>, dest: &str, what: &str) -> Vec<f64> {
    ["alerts/a", "alerts/b"]
        .iter()
        .flat_map(|stream| {
            ["offered", "sent", "acked"].map(|stage| {
                metric(
                    m,
                    &format!(
                        "perch_upstream_link_{what}_total{{destination=\"{dest}\",\
                         stream=\"{stream}\",stage=\"{stage}\"}}"
                    ),
                )
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_totals_per_destination_and_stream_survive_a_restart_exactly() {
    let broker = Mosquitto::start(free_port(), tempfile::tempdir().unwrap());
    let upstream = Upstream::start(broker.addr(), "gw-totals").await;
    let (_dir, file) = temp_file("perch.toml", &config("gw-totals", broker.addr().port(), ""));
    let data = tempfile::tempdir().unwrap();
    let args = [
        "--config",
        file.to_str().unwrap(),
        "--data-dir",
        data.path().to_str().unwrap(),
    ];
    let dest = format!("mqtt://127.0.0.1:{}", broker.addr().port());
    let acked_a = format!(
        "perch_upstream_link_records_total{{destination=\"{dest}\",stream=\"alerts/a\",\
         stage=\"acked\"}}"
    );

    let mut gw = Gateway::start(&args);
    publish(gw.addr(), 0..50, 20).await;
    upstream.wait_for(50).await;
    wait_metric(gw.admin.unwrap(), &acked_a, 25.0).await;
    let admin = gw.admin.unwrap();
    let before = tokio::task::spawn_blocking(move || metrics(admin))
        .await
        .unwrap();
    let records = total(&before, &dest, "records");
    assert_eq!(records, vec![25.0; 6], "25 records a stream, each stage");
    let bytes = total(&before, &dest, "bytes");
    assert!(bytes.iter().all(|&b| b > 25.0 * 20.0), "{bytes:?}");

    gw.signal("TERM");
    assert!(gw.wait(Duration::from_secs(30)).is_some(), "perch stops");
    let gw = Gateway::start(&args);
    let admin = gw.admin.unwrap();
    let after = tokio::task::spawn_blocking(move || metrics(admin))
        .await
        .unwrap();
    assert_eq!(total(&after, &dest, "records"), records, "records kept");
    assert_eq!(total(&after, &dest, "bytes"), bytes, "bytes kept");
    let (_, status) = tokio::task::spawn_blocking(move || get(admin, "/status.json", None))
        .await
        .unwrap();
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let d = &status["upstream"]["destinations"][0];
    assert_eq!(d["destination"], dest.as_str(), "{status}");
    assert_eq!(d["acked_records"], 50, "{status}");
    assert_eq!(d["acked_bytes"].as_f64().unwrap(), bytes[2] + bytes[5]);

    // Counting goes on from the persisted totals.
    publish(gw.addr(), 50..60, 20).await;
    upstream.wait_for(60).await;
    wait_metric(admin, &acked_a, 30.0).await;
    let again = tokio::task::spawn_blocking(move || metrics(admin))
        .await
        .unwrap();
    assert_eq!(metric(&again, &acked_a), 30.0);
}

#[test]
fn bad_drain_values_are_refused_with_the_key_named() {
    let (_dir, file) = temp_file(
        "perch.toml",
        &config(
            "gw-bad",
            1883,
            "order = \"live_first\"\nbacklog_bytes_per_s = 100\nbacklog_records_per_s = 2",
        ),
    );
    let out = perch(&["config", "check", file.to_str().unwrap()]);
    let text = crate::util::output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("upstream.mqtt.drain.backlog_bytes_per_s") && text.contains("1024"),
        "{text}"
    );
    assert!(
        text.contains("upstream.mqtt.drain.backlog_records_per_s"),
        "{text}"
    );
    let (_dir, file) = temp_file(
        "perch.toml",
        &config("gw-bad", 1883, "order = \"newest_first\""),
    );
    let out = perch(&["config", "check", file.to_str().unwrap()]);
    let text = crate::util::output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("newest_first") && text.contains("live_first"),
        "{text}"
    );
}

/// One POST as the HTTP endpoint answered it.
struct Post {
    at: Instant,
    status: u16,
    bytes: usize,
    /// (subject, n) of each event.
    events: Vec<(String, u64)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http_live_batches_overtake_the_paced_backlog_and_every_body_byte_is_counted() {
    use std::sync::atomic::{AtomicBool, Ordering};
    const BACKLOG: u64 = 400;
    const LIVE: u64 = 15;
    const CAP: f64 = 100.0;
    let down = Arc::new(AtomicBool::new(true));
    let posts: Arc<Mutex<Vec<Post>>> = Arc::default();
    let endpoint = {
        let (down, posts) = (down.clone(), posts.clone());
        crate::upstream::Endpoint::start(move |_, body| {
            let status = if down.load(Ordering::SeqCst) {
                503
            } else {
                200
            };
            let v: serde_json::Value = serde_json::from_slice(body).unwrap();
            let events = v
                .as_array()
                .unwrap()
                .iter()
                .map(|e| {
                    let subject = e["subject"].as_str().unwrap().to_owned();
                    (subject, e["data"]["n"].as_u64().unwrap())
                })
                .collect();
            posts.lock().unwrap().push(Post {
                at: Instant::now(),
                status,
                bytes: body.len(),
                events,
            });
            status
        })
        .await
    };
    let url = format!("http://{}/ingest", endpoint.addr);
    let (_dir, file) = temp_file(
        "perch.toml",
        &format!(
            r#"
[gateway]
id = "gw-http-live"
[[broker.listeners]]
name = "local"
listen = "127.0.0.1:0"
allow_anonymous = true
[upstream]
forward_topics = ["alerts/#", "live/#"]
backoff_initial_ms = 100
backoff_max_ms = 300
[upstream.http]
url = "{url}"
batch_size = 10
[upstream.http.drain]
order = "live_first"
backlog_records_per_s = {CAP}
"#
        ),
    );
    let gw = Gateway::start(&["--config", file.to_str().unwrap()]);
    let admin = gw.admin.unwrap();
    publish(gw.addr(), 0..BACKLOG, 0).await;
    wait_metric(admin, "perch_buffer_records", BACKLOG as f64).await;
    down.store(false, Ordering::SeqCst);
    let deadline = Instant::now() + DEADLINE;
    while !posts.lock().unwrap().iter().any(|p| p.status == 200) {
        assert!(Instant::now() < deadline, "no POST accepted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (sensor, mut el) = connect(mqtt::options("live-sensor", gw.addr()))
        .await
        .unwrap();
    for n in 0..LIVE {
        let payload = format!("{{\"n\":{}}}", 1_000_000 + n);
        sensor
            .publish("live/x", QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
        wait_puback(&mut el).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let accepted = |posts: &[Post]| -> usize {
        posts
            .iter()
            .filter(|p| p.status == 200)
            .map(|p| p.events.len())
            .sum()
    };
    while accepted(&posts.lock().unwrap()) < (BACKLOG + LIVE) as usize {
        assert!(Instant::now() < deadline, "not everything was accepted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let posts = std::mem::take(&mut *posts.lock().unwrap());
    let ok: Vec<&Post> = posts.iter().filter(|p| p.status == 200).collect();
    let is_live = |p: &&Post| p.events.iter().any(|(s, _)| s == "live/x");
    let backlog_at: Vec<Instant> = ok.iter().filter(|p| !is_live(p)).map(|p| p.at).collect();
    let backlog_end = *backlog_at.iter().max().unwrap();
    for p in ok.iter().filter(|p| is_live(p)) {
        assert!(
            p.at < backlog_end,
            "a live batch came after the whole backlog"
        );
    }
    let rate = (BACKLOG - 10) as f64 / (backlog_end - backlog_at[0]).as_secs_f64();
    assert!(
        rate > CAP * 0.5 && rate < CAP * 1.5,
        "the backlog drained at {rate:.0} records/s against a cap of {CAP}"
    );

    // Every body byte the endpoint got is counted: sent (any answer),
    // acked (2xx); nothing failed in transport, so offered = sent.
    let m = tokio::task::spawn_blocking(move || metrics(admin))
        .await
        .unwrap();
    let sum = |what: &str, stage: &str| -> f64 {
        m.iter()
            .filter(|(k, _)| {
                k.starts_with(&format!(
                    "perch_upstream_link_{what}_total{{destination=\"{url}\","
                )) && k.ends_with(&format!("stage=\"{stage}\"}}"))
            })
            .map(|(_, v)| v)
            .sum()
    };
    let all_bytes: usize = posts.iter().map(|p| p.bytes).sum();
    let ok_bytes: usize = ok.iter().map(|p| p.bytes).sum();
    let all_records: usize = posts.iter().map(|p| p.events.len()).sum();
    assert_eq!(sum("bytes", "sent"), all_bytes as f64);
    assert_eq!(sum("bytes", "offered"), all_bytes as f64);
    assert_eq!(sum("bytes", "acked"), ok_bytes as f64);
    assert_eq!(sum("records", "sent"), all_records as f64);
    assert_eq!(sum("records", "acked"), (BACKLOG + LIVE) as f64);
    assert!(posts.iter().any(|p| p.status == 503), "the outage was seen");
    eprintln!(
        "http: backlog drained at {rate:.0} records/s (cap {CAP}); {} POSTs, {all_bytes} bytes sent, \
         {ok_bytes} acked",
        posts.len()
    );
}
