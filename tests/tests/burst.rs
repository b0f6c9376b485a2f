//! Bursts: one client publishing far more messages than MQTT has packet ids
//! (65,535), flat out, and every one of them reaching the buffer exactly
//! once, in order; a QoS 0 burst the broker's own log cannot hold reaching
//! it whole.
//!
//! These tests use rumqttc, not `mosquitto_pub -l`: mosquitto_pub 2.0's
//! line mode disconnects as soon as the message whose packet id equals the
//! last line's id is acknowledged, and ids wrap at 65,535, so it silently
//! drops everything after the first 65,535 of a larger burst it has queued
//! (against Mosquitto just the same). That client bug was last session's
//! "burst loss"; see docs/store-and-forward.md.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, Outgoing, Packet, QoS};

use crate::admin::metrics;
use crate::util::{mqtt, perch, temp_file, Gateway};

/// How long a whole burst may take end to end on a loaded 2-core machine
/// (it takes 10-20 s when the machine is quiet).
const DEADLINE: Duration = Duration::from_secs(240);

fn capture_config(extra: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    temp_file(
        "perch.toml",
        &format!(
            r#"
[gateway]
id = "burst"

[[broker.listeners]]
name = "local"
listen = "127.0.0.1:0"
allow_anonymous = true

[upstream]
forward_topics = ["burst/#"]
{extra}
"#
        ),
    )
}

/// Records in the buffer, from `perch buffer stats` (works while perch runs).
fn buffered(gw: &Gateway) -> u64 {
    let out = perch(&[
        "buffer",
        "stats",
        "--data-dir",
        &gw.data_dir.path().display().to_string(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("records:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no records: line in {text}"))
}

/// Publishes `n` messages `1`..=`n` to `topic` on one connection as fast as
/// the broker acknowledges them; returns once every PUBACK is in.
async fn publish_burst(addr: SocketAddr, topic: &str, n: u64) {
    let mut opts = mqtt::options("burst-publisher", addr);
    opts.set_inflight(100);
    let (client, mut el) = AsyncClient::new(opts, 1024);
    let poller = tokio::spawn(async move {
        let mut acked = 0u64;
        while acked < n {
            match el.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(e) => panic!("the publisher's connection failed after {acked} PUBACKs: {e}"),
            }
        }
        el
    });
    for i in 1..=n {
        client
            .publish(topic, QoS::AtLeastOnce, false, i.to_string())
            .await
            .expect("queueing a publish");
    }
    let el = tokio::time::timeout(DEADLINE, poller)
        .await
        .expect("every PUBACK within the deadline")
        .expect("the publisher task");
    drop(el);
}

/// Last session's "burst loss", reproduced with a client that does not drop
/// its own queue: 150,000 QoS 1 messages on one connection wrap the packet
/// id twice, and the buffer must hold each once, in publish order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_past_the_packet_id_range_reaches_the_buffer_whole_and_in_order() {
    const N: u64 = 150_000;
    let (_dir, config) = capture_config("");
    let gw = Gateway::start(&["--config", config.to_str().unwrap()]);
    let admin = gw.admin.expect("the admin listener");
    let started = Instant::now();
    publish_burst(gw.addr(), "burst/readings", N).await;
    let published = started.elapsed();

    // The capture and the buffer's commits run behind the PUBACKs.
    let deadline = Instant::now() + DEADLINE;
    let mut last = (0, Instant::now());
    loop {
        let n = buffered(&gw);
        if n >= N {
            break;
        }
        if n != last.0 {
            last = (n, Instant::now());
        }
        assert!(
            Instant::now() < deadline && last.1.elapsed() < Duration::from_secs(30),
            "the buffer holds {n} of {N} records; metrics: {:?}\nlog:\n{}",
            metrics(admin)
                .into_iter()
                .filter(|(k, _)| k.contains("broker") || k.contains("capture"))
                .collect::<Vec<_>>(),
            gw.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let m = metrics(admin);
    assert_eq!(m["perch_broker_messages_received_total"], N as f64);
    assert_eq!(m["perch_upstream_captured_total"], N as f64);
    assert_eq!(m["perch_upstream_capture_lost_total"], 0.0);

    // Each message once, in publish order (one connection, one stream).
    let out = perch(&[
        "buffer",
        "tail",
        "-n",
        &(N + 10).to_string(),
        "--data-dir",
        &gw.data_dir.path().display().to_string(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let payloads: Vec<u64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            l.split_whitespace()
                .last()
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("a numeric payload in {l:?}"))
        })
        .collect();
    assert_eq!(payloads.len() as u64, N, "records in the buffer");
    if let Some(i) = (0..payloads.len()).find(|&i| payloads[i] != i as u64 + 1) {
        panic!(
            "record {} holds message {} (expected {}): lost, duplicated or reordered",
            i + 1,
            payloads[i],
            i + 1
        );
    }
    eprintln!(
        "{N} QoS 1 messages on one connection: published and acknowledged in {published:?}, \
         all in the buffer after {:?}",
        started.elapsed()
    );
}

/// Publishes `n` QoS 0 messages flat out on one connection; returns once
/// the broker has read every one.
async fn publish_qos0_burst(addr: SocketAddr, topic: &str, n: u64) {
    let (client, mut el) = AsyncClient::new(mqtt::options("burst-qos0", addr), 1024);
    // Every QoS 0 publish, then one QoS 1 marker outside the capture: its
    // PUBACK means the broker has read everything sent before it.
    let poller = tokio::spawn(async move {
        let mut written = 0u64;
        loop {
            match el.poll().await {
                Ok(Event::Outgoing(Outgoing::Publish(_))) => written += 1,
                Ok(Event::Incoming(Packet::PubAck(_))) => return el,
                Ok(_) => {}
                Err(e) => {
                    panic!("the publisher's connection failed after {written} publishes: {e}")
                }
            }
        }
    });
    for i in 1..=n {
        client
            .publish(topic, QoS::AtMostOnce, false, i.to_string())
            .await
            .expect("queueing a publish");
    }
    client
        .publish("marker/end", QoS::AtLeastOnce, false, "end")
        .await
        .expect("queueing the marker");
    let el = tokio::time::timeout(DEADLINE, poller)
        .await
        .expect("every publish written within the deadline")
        .expect("the publisher task");
    drop(el);
}

/// A QoS 0 burst far past what the broker keeps per filter (here 1 KiB, so
/// a reader of the filter's log falls behind for sure) still reaches the
/// buffer whole: the broker's codec hands each message on `forward_topics`
/// to the buffer as it reads it, so no internal reader can fall behind and
/// lose it. (Before, the capture read them from the filter's log and lost
/// what the broker dropped, counted in `perch_upstream_capture_lost_total`;
/// that counter now only matters for in-process publishes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos0_burst_past_the_brokers_log_reaches_the_buffer_whole() {
    const N: u64 = 20_000;
    let (_dir, config) =
        capture_config("[broker]\nmax_segment_size_bytes = 1024\nmax_segment_count = 1\n");
    let gw = Gateway::start(&["--config", config.to_str().unwrap()]);
    let admin = gw.admin.expect("the admin listener");
    publish_qos0_burst(gw.addr(), "burst/readings", N).await;

    let deadline = Instant::now() + DEADLINE;
    loop {
        let m = metrics(admin);
        let counts = (
            m["perch_broker_messages_received_total"],
            m["perch_upstream_captured_total"],
        );
        // The broker also received the marker, which nobody captures.
        if counts.0 == (N + 1) as f64 && counts.1 == N as f64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "received, captured: {counts:?}, of {N}\nlog:\n{}",
            gw.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = Instant::now() + DEADLINE;
    while buffered(&gw) < N {
        assert!(
            Instant::now() < deadline,
            "the captured records were not committed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(buffered(&gw), N);
    eprintln!("QoS 0 burst of {N} with a 1 KiB log per filter: all {N} in the buffer");
}
