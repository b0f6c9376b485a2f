//! `[[upstream.mirror]]`: local topics sent to a real Mosquitto upstream
//! under the same (prefixed) topic with the raw payload, through the
//! buffer: nothing acknowledged is lost across an upstream outage and a
//! `kill -9` of perch, and a bad rule is refused naming its key.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use crate::store_forward::Mosquitto;
use crate::util::mqtt::{self, connect, wait_puback};
use crate::util::{free_port, perch, temp_file, Gateway};

/// How long a message may take to reach the upstream once it can.
const DELIVERY: Duration = Duration::from_secs(60);

/// Message `n`'s payload: bytes that are neither UTF-8 nor JSON, so an
/// envelope or any re-encoding would show.
fn raw(n: u32) -> Vec<u8> {
    let mut p = vec![0xff, 0x00, 0xfe];
    p.extend_from_slice(&n.to_be_bytes());
    p
}

/// (topic, payload) of each message a subscriber received, in order.
type Arrivals = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A subscriber on the upstream broker with a persistent session, which
/// reconnects by itself after the broker restarts: every (topic, payload)
/// it receives, in order.
struct Receiver {
    got: Arrivals,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(upstream: SocketAddr, filter: &str) -> Receiver {
        let mut opts = MqttOptions::new("cloud-mirror", "127.0.0.1", upstream.port());
        opts.set_keep_alive(Duration::from_secs(5));
        opts.set_clean_session(false);
        let (client, mut el) = AsyncClient::new(opts, 64);
        client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
        let got: Arrivals = Arc::default();
        let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
        let log = got.clone();
        let task = tokio::spawn(async move {
            let _client = client; // dropping it would end the event loop
            let mut subscribed_tx = Some(subscribed_tx);
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = subscribed_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let topic = p.topic.clone();
                        log.lock().unwrap().push((topic, p.payload.to_vec()));
                    }
                    Ok(_) => {}
                    // The broker is down: try again shortly.
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(mqtt::WAIT, subscribed)
            .await
            .expect("the upstream subscriber got no SUBACK")
            .unwrap();
        Receiver { got, task }
    }

    /// The payloads that arrived on `topic`, in arrival order.
    fn on(&self, topic: &str) -> Vec<Vec<u8>> {
        let got = self.got.lock().unwrap();
        got.iter()
            .filter(|(t, _)| t == topic)
            .map(|(_, p)| p.clone())
            .collect()
    }

    /// Waits until `want` distinct payloads arrived on `topic`.
    async fn wait(&self, topic: &str, want: usize) {
        let deadline = Instant::now() + DELIVERY;
        loop {
            let mut seen = self.on(topic);
            seen.sort();
            seen.dedup();
            if seen.len() >= want || Instant::now() > deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Publishes `raw(n)` for each n on `topic` at QoS 1, each after the
/// PUBACK of the one before: every one returned was acknowledged.
async fn publish(addr: SocketAddr, topic: &str, range: std::ops::Range<u32>) {
    let (client, mut el) = connect(mqtt::options("sensor-mirror", addr)).await.unwrap();
    for n in range {
        client
            .publish(topic, QoS::AtLeastOnce, false, raw(n))
            .await
            .unwrap();
        wait_puback(&mut el).await;
    }
}

fn config(upstream_port: u16) -> String {
    format!(
        r#"
[gateway]
id = "gw-mirror"

[[broker.listeners]]
name = "local"
listen = "127.0.0.1:0"
allow_anonymous = true

[upstream]
forward_topics = ["alerts/#"]
backoff_initial_ms = 100
backoff_max_ms = 500

[[upstream.mirror]]
topics = ["sensors/#"]
prefix = "site1/"

[upstream.mqtt]
host = "127.0.0.1"
port = {upstream_port}
keep_alive_s = 5
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrored_topics_reach_mosquitto_raw_and_an_outage_and_kill_9_lose_nothing_acknowledged() {
    let port = free_port();
    let broker = Mosquitto::start(port, tempfile::tempdir().unwrap());
    let cloud = Receiver::start(broker.addr(), "#").await;
    let (_cfg_dir, config_path) = temp_file("perch.toml", &config(port));
    let data = tempfile::tempdir().unwrap();
    let args = [
        "--config",
        config_path.to_str().unwrap(),
        "--data-dir",
        data.path().to_str().unwrap(),
    ];
    let mut gw = Gateway::start(&args);

    // Up: the exact bytes under the prefixed topic; the envelope of
    // forward_topics still works beside it.
    publish(gw.addr(), "sensors/x", 0..20).await;
    publish(gw.addr(), "alerts/a", 0..1).await;
    cloud.wait("site1/sensors/x", 20).await;
    assert_eq!(
        cloud.on("site1/sensors/x"),
        (0..20).map(raw).collect::<Vec<_>>(),
        "raw payloads, in order, under site1/\n{}",
        gw.log_text()
    );
    cloud.wait("perch/gw-mirror/up/alerts/a", 1).await;
    let envelope = cloud.on("perch/gw-mirror/up/alerts/a");
    let v: serde_json::Value = serde_json::from_slice(&envelope[0]).expect("an envelope");
    assert!(
        v[0]["id"].as_str().unwrap().starts_with("gw-mirror-"),
        "{v}"
    );
    assert!(
        cloud.on("sensors/x").is_empty(),
        "only the prefixed topic upstream"
    );

    // What the gateway publishes itself (here a will, as for a function's
    // publish) is mirrored through the in-process capture.
    let mut opts = mqtt::options("sensor-will", gw.addr());
    opts.set_last_will(rumqttc::LastWill::new(
        "sensors/will",
        raw(7777),
        QoS::AtLeastOnce,
        false,
    ));
    let (will_client, will_el) = connect(opts).await.unwrap();
    drop((will_client, will_el)); // the socket closes without DISCONNECT
    cloud.wait("site1/sensors/will", 1).await;
    assert_eq!(
        cloud.on("site1/sensors/will"),
        vec![raw(7777)],
        "{}",
        gw.log_text()
    );

    // Down: what perch acknowledges waits in its buffer, through a kill -9.
    let persistence = broker.stop();
    publish(gw.addr(), "sensors/x", 20..120).await;
    gw.signal("KILL");
    gw.wait(Duration::from_secs(10)).expect("perch died");
    let gw = Gateway::start(&args);
    publish(gw.addr(), "sensors/x", 120..150).await;

    // Back: every acknowledged message arrives, first arrivals in order.
    let _broker = Mosquitto::start(port, persistence);
    cloud.wait("site1/sensors/x", 150).await;
    let mut first = Vec::new();
    for p in cloud.on("site1/sensors/x") {
        if !first.contains(&p) {
            first.push(p);
        }
    }
    assert_eq!(
        first,
        (0..150).map(raw).collect::<Vec<_>>(),
        "every acknowledged message once after dedupe, in order\n{}",
        gw.log_text()
    );
}

#[test]
fn a_bad_mirror_rule_is_refused_naming_its_key() {
    let (_dir, path) = temp_file(
        "perch.toml",
        "[[upstream.mirror]]\ntopics = [\"sensors/#\"]\nprefix = \"site/+/\"\n\
         [[upstream.mirror]]\ntopics = []\n",
    );
    let out = perch(&["config", "check", path.to_str().unwrap()]);
    let err =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("upstream.mirror[0].prefix"), "{err}");
    assert!(err.contains("upstream.mirror[1].topics"), "{err}");
    assert!(err.contains("e.g. topics = [\"sensors/#\"]"), "{err}");

    let (_dir, path) = temp_file(
        "perch.toml",
        "[[upstream.mirror]]\ntopics = [\"sensors/#\"]\nprefixes = \"site1/\"\n",
    );
    let err = match Gateway::try_start(&["--config", path.to_str().unwrap()]) {
        Ok(_) => panic!("perch started with an unknown key in [[upstream.mirror]]"),
        Err(log) => log,
    };
    assert!(err.contains("prefixes"), "the unknown key is named: {err}");
}
