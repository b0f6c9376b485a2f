//! A PUBACK means it is on disk (issue 18): what perch acknowledges to a
//! sensor on a forwarded topic survives `kill -9` at any moment and a burst
//! while upstream is down, and reaches the upstream broker (a real
//! Mosquitto). Duplicates are allowed (a receiver drops them by id); a gap
//! is not.
//!
//! Each test prints what it measured (`durable: ...` lines, shown with
//! `--nocapture` or on failure).

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, Outgoing, Packet, QoS};

use crate::store_forward::{Cloud, Mosquitto};
use crate::util::faults::{seed, Rng};
use crate::util::mqtt;
use crate::util::{free_port, temp_file, Gateway};

/// How long the backlog may take to reach the upstream once it can.
const DELIVERY: Duration = Duration::from_secs(60);

fn gateway_toml(id: &str, upstream_port: u16, extra: &str) -> String {
    format!(
        r#"
[gateway]
id = "{id}"

[[broker.listeners]]
name = "local"
listen = "127.0.0.1:0"
allow_anonymous = true

[upstream]
forward_topics = ["sensors/#"]
backoff_initial_ms = 100
backoff_max_ms = 500

[upstream.mqtt]
host = "127.0.0.1"
port = {upstream_port}
keep_alive_s = 5
{extra}
"#
    )
}

/// What a [`Sensor`] publishes: `{"n":N}` (with `pad` bytes of padding)
/// for N in `first..first + count`, to `topic` at `qos`, with up to
/// `inflight` unacknowledged, one every `pace` (zero: as fast as the
/// gateway acknowledges them).
#[derive(Clone, Copy)]
struct Spec {
    id: &'static str,
    topic: &'static str,
    qos: QoS,
    first: u64,
    count: u64,
    pad: usize,
    pace: Duration,
    inflight: u16,
}

/// A sensor publishing a [`Spec`] until it is done, stopped, or its
/// connection fails. It keeps every N the gateway acknowledged: PUBACK at
/// QoS 1, PUBREC at QoS 2 (the gateway took the message over).
struct Sensor {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<u64>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sensor {
    fn start(addr: SocketAddr, spec: Spec) -> Sensor {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let mut opts = mqtt::options(spec.id, addr);
        opts.set_inflight(spec.inflight);
        opts.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut el) = AsyncClient::new(opts, 64);
        let padding = "x".repeat(spec.pad);
        let feeding = stop.clone();
        let feeder = tokio::spawn(async move {
            let mut ticks = (!spec.pace.is_zero()).then(|| tokio::time::interval(spec.pace));
            for n in spec.first..spec.first.saturating_add(spec.count) {
                if let Some(t) = ticks.as_mut() {
                    t.tick().await;
                }
                if feeding.load(Ordering::Relaxed) {
                    break;
                }
                let payload = if padding.is_empty() {
                    format!("{{\"n\":{n}}}")
                } else {
                    format!("{{\"n\":{n},\"pad\":\"{padding}\"}}")
                };
                if client
                    .publish(spec.topic, spec.qos, false, payload)
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        let (s, a) = (stop.clone(), acked.clone());
        let task = tokio::spawn(async move {
            // Publishes go out in the order they were queued: the k-th one
            // written carries N = first + k.
            let (mut written, mut answered) = (0u64, 0u64);
            let mut n_of: HashMap<u16, u64> = HashMap::new();
            while !s.load(Ordering::Relaxed) && answered < spec.count {
                let event = match tokio::time::timeout(Duration::from_millis(200), el.poll()).await
                {
                    Err(_) => continue,
                    Ok(Ok(e)) => e,
                    // The gateway is gone (killed) or closed the connection.
                    Ok(Err(_)) => break,
                };
                let pkid = match event {
                    Event::Outgoing(Outgoing::Publish(pkid)) => {
                        n_of.insert(pkid, spec.first + written);
                        written += 1;
                        continue;
                    }
                    Event::Incoming(Packet::PubAck(ack)) => ack.pkid,
                    Event::Incoming(Packet::PubRec(rec)) => rec.pkid,
                    _ => continue,
                };
                if let Some(n) = n_of.remove(&pkid) {
                    answered += 1;
                    a.lock().unwrap().push(n);
                }
            }
            s.store(true, Ordering::Relaxed);
            feeder.abort();
        });
        Sensor { stop, acked, task }
    }

    /// Stops publishing; returns the acknowledged N.
    async fn stop(self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.finish(Duration::from_secs(30)).await
    }

    /// Waits (at most `wait`) until every message is acknowledged or the
    /// connection failed; returns the acknowledged N.
    async fn finish(self, wait: Duration) -> Vec<u64> {
        tokio::time::timeout(wait, self.task)
            .await
            .expect("the sensor finishes in time")
            .expect("the sensor task");
        std::mem::take(&mut *self.acked.lock().unwrap())
    }
}

/// Waits until every N in `want` reached the cloud (or `DELIVERY` passes);
/// returns those that did not.
async fn missing_after_delivery(cloud: &Cloud, want: &BTreeSet<u64>) -> Vec<u64> {
    let deadline = Instant::now() + DELIVERY;
    loop {
        let arrived: BTreeSet<u64> = cloud.arrivals.lock().unwrap().iter().map(|a| a.n).collect();
        let missing: Vec<u64> = want.difference(&arrived).copied().collect();
        if missing.is_empty() || Instant::now() > deadline {
            return missing;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// 30 cycles of: start perch on the same data directory, two sensors
/// publishing flat out (one at QoS 1, one at QoS 2), `kill -9` at a random
/// moment. Then a last start drains the buffer: every message the gateway
/// acknowledged must reach the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_message_survives_kill_9_and_reaches_upstream() {
    const CYCLES: u64 = 30;
    // About 1,000 messages a second per sensor.
    const PACE: Duration = Duration::from_millis(1);
    let started = Instant::now();
    let seed = seed();
    eprintln!(
        "durable: kill -9 cycles: {CYCLES}, seed {seed} (PERCH_FAULT_SEED={seed} replays them)"
    );
    let mut rng = Rng::new(seed);
    let id = "gw-durable";
    let port = free_port();
    let _broker = Mosquitto::start(port, tempfile::tempdir().unwrap());
    let cloud = Cloud::start(
        SocketAddr::from(([127, 0, 0, 1], port)),
        &format!("perch/{id}/up/#"),
        "cloud-durable",
    )
    .await;
    let (_cfg_dir, config) = temp_file("perch.toml", &gateway_toml(id, port, ""));
    let data = tempfile::tempdir().unwrap();
    let start = || {
        Gateway::try_start(&[
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
            data.path().to_str().unwrap(),
        ])
        .unwrap_or_else(|log| panic!("seed {seed}: perch did not restart:\n{log}"))
    };

    let mut acked: BTreeSet<u64> = BTreeSet::new();
    let (mut acked_qos1, mut acked_qos2) = (0usize, 0usize);
    for c in 0..CYCLES {
        let mut gw = start();
        // N: the cycle in the millions, QoS 2 from half a million.
        let qos1 = Sensor::start(
            gw.addr(),
            Spec {
                id: "sensor-q1",
                topic: "sensors/q1",
                qos: QoS::AtLeastOnce,
                first: c * 1_000_000,
                count: u64::MAX,
                pad: 0,
                pace: PACE,
                inflight: 20,
            },
        );
        let qos2 = Sensor::start(
            gw.addr(),
            Spec {
                id: "sensor-q2",
                topic: "sensors/q2",
                qos: QoS::ExactlyOnce,
                first: c * 1_000_000 + 500_000,
                count: u64::MAX,
                pad: 0,
                pace: PACE,
                inflight: 20,
            },
        );
        tokio::time::sleep(Duration::from_millis(rng.range(100, 900))).await;
        gw.signal("KILL");
        gw.wait(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("seed {seed}, cycle {c}: perch outlived kill -9"));
        let (a1, a2) = (qos1.stop().await, qos2.stop().await);
        (acked_qos1, acked_qos2) = (acked_qos1 + a1.len(), acked_qos2 + a2.len());
        acked.extend(a1);
        acked.extend(a2);
        let log = gw.log_text();
        assert!(
            !log.contains("panicked"),
            "seed {seed}, cycle {c}: perch panicked:\n{log}"
        );
    }
    let killed = started.elapsed();

    let last_start = Instant::now();
    let gw = start();
    let missing = missing_after_delivery(&cloud, &acked).await;
    assert!(
        missing.is_empty(),
        "seed {seed}: {} of {} acknowledged messages never reached upstream \
         (QoS 1 {}, QoS 2 {}): {:?}\n{}",
        missing.len(),
        acked.len(),
        missing.iter().filter(|n| *n % 1_000_000 < 500_000).count(),
        missing.iter().filter(|n| *n % 1_000_000 >= 500_000).count(),
        &missing[..missing.len().min(30)],
        gw.log_text()
    );
    assert!(
        acked_qos1 > 0 && acked_qos2 > 0,
        "the sensors published nothing"
    );
    eprintln!(
        "durable: {CYCLES} kill -9 cycles in {killed:?}: {acked_qos1} QoS 1 and {acked_qos2} \
         QoS 2 messages acknowledged, all of them upstream {:?} after the last start",
        last_start.elapsed()
    );
}

/// 20,000 QoS 1 messages of 1 KB on a forwarded topic, as fast as perch
/// acknowledges them, while the upstream broker is down; then it comes back:
/// every acknowledged message arrives. (Before perch kept them in the codec,
/// the broker dropped up to 1,326 of them from its per-filter log before the
/// capture had read them, after acknowledging them.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_while_upstream_is_down_arrives_whole_once_it_is_back() {
    const N: u64 = 20_000;
    let id = "gw-burst-down";
    let port = free_port();
    let broker = Mosquitto::start(port, tempfile::tempdir().unwrap());
    let cloud = Cloud::start(broker.addr(), &format!("perch/{id}/up/#"), "cloud-burst").await;
    let persistence = broker.stop();
    let (_cfg_dir, config) = temp_file("perch.toml", &gateway_toml(id, port, ""));
    let gw = Gateway::start(&["--config", config.to_str().unwrap()]);

    let started = Instant::now();
    let burst = Sensor::start(
        gw.addr(),
        Spec {
            id: "burst",
            topic: "sensors/burst",
            qos: QoS::AtLeastOnce,
            first: 0,
            count: N,
            pad: 1000,
            pace: Duration::ZERO,
            inflight: 100,
        },
    );
    let acked: BTreeSet<u64> = burst.finish(DELIVERY).await.into_iter().collect();
    let published = started.elapsed();
    assert_eq!(
        acked.len() as u64,
        N,
        "every message of the burst is acknowledged\n{}",
        gw.log_text()
    );

    let _broker = Mosquitto::start(port, persistence);
    let back = Instant::now();
    let missing = missing_after_delivery(&cloud, &acked).await;
    assert!(
        missing.is_empty(),
        "{} of {N} acknowledged messages never reached upstream: {:?}\n{}",
        missing.len(),
        &missing[..missing.len().min(30)],
        gw.log_text()
    );
    eprintln!(
        "durable: burst of {N} QoS 1 messages of 1 KB with the upstream down: acknowledged in \
         {published:?}, all {N} upstream {:?} after it returned",
        back.elapsed()
    );
}
