//! Store-and-forward end to end: messages captured on the gateway reach a
//! real upstream broker (a second perch) through outages and kill -9, once
//! each after dedupe by id, in order per stream.

use std::collections::BTreeMap;
use std::time::Duration;

use rumqttc::QoS;

use crate::util::mqtt::{self, connect, subscribe, wait_puback};
use crate::util::{perch, temp_file, Gateway, Proxy};

/// A gateway config that captures `alerts/#` and delivers to `upstream`.
fn gateway_config(upstream: std::net::SocketAddr) -> (tempfile::TempDir, std::path::PathBuf) {
    temp_file(
        "perch.toml",
        &format!(
            r#"
[gateway]
id = "gw-test"

[[broker.listeners]]
name = "local"
listen = "127.0.0.1:0"
allow_anonymous = true

[upstream]
forward_topics = ["alerts/#"]
backoff_initial_ms = 100
backoff_max_ms = 400

[upstream.mqtt]
host = "127.0.0.1"
port = {}
keep_alive_s = 5
"#,
            upstream.port()
        ),
    )
}

/// Collects envelopes on the upstream broker until `want` distinct records
/// arrived or the time is up: record number -> (first arrival index, id).
struct Cloud {
    el: rumqttc::EventLoop,
    _client: rumqttc::AsyncClient,
    seen: BTreeMap<u64, (usize, String)>,
    arrivals: usize,
}

impl Cloud {
    async fn connect(upstream: std::net::SocketAddr) -> Cloud {
        let (client, mut el) = connect(mqtt::options("cloud", upstream)).await.unwrap();
        subscribe(&client, &mut el, "perch/gw-test/up/#").await;
        Cloud {
            el,
            _client: client,
            seen: BTreeMap::new(),
            arrivals: 0,
        }
    }

    async fn collect(&mut self, want: usize, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        while self.seen.len() < want {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(p) = mqtt::next_publish(&mut self.el, left).await else {
                break;
            };
            let v: serde_json::Value = serde_json::from_slice(&p.payload).expect("JSON envelope");
            assert_eq!(v["stream"], "alerts/a");
            let n = v["data"]["n"]
                .as_u64()
                .expect("the record is embedded as JSON");
            let id = v["id"].as_str().unwrap().to_owned();
            assert!(id.starts_with("gw-test-"), "{id}");
            self.arrivals += 1;
            let entry = self.seen.entry(n).or_insert((self.arrivals, id.clone()));
            assert_eq!(entry.1, id, "one record, one id, however often it is sent");
        }
    }

    /// All of 0..n arrived, and first arrivals follow the publish order.
    fn assert_complete_and_ordered(&self, n: u64) {
        let missing: Vec<u64> = (0..n).filter(|i| !self.seen.contains_key(i)).collect();
        assert!(missing.is_empty(), "lost records: {missing:?}");
        let order: Vec<usize> = (0..n).map(|i| self.seen[&i].0).collect();
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "out of order: {order:?}"
        );
    }
}

async fn publish_alerts(gw: &Gateway, range: std::ops::Range<u64>) {
    let (client, mut el) = connect(mqtt::options("sensor", gw.addr())).await.unwrap();
    for n in range {
        client
            .publish(
                "alerts/a",
                QoS::AtLeastOnce,
                false,
                format!("{{\"n\":{n}}}"),
            )
            .await
            .unwrap();
        wait_puback(&mut el).await;
    }
}

fn buffered_records(gw: &Gateway) -> u64 {
    let out = perch(&[
        "buffer",
        "stats",
        "--data-dir",
        gw.data_dir.path().to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .find_map(|l| l.strip_prefix("records:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no record count in: {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_reach_upstream_across_an_outage() {
    let upstream = Gateway::start(&[]);
    let proxy = Proxy::start(upstream.addr()).await;
    let mut cloud = Cloud::connect(upstream.addr()).await;
    let (_dir, config) = gateway_config(proxy.addr);
    let gw = Gateway::start(&["--config", config.to_str().unwrap()]);

    publish_alerts(&gw, 0..40).await;
    cloud.collect(40, mqtt::WAIT).await;
    assert_eq!(cloud.seen.len(), 40, "delivered while the link is up");

    proxy.down();
    publish_alerts(&gw, 40..80).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let waiting = tokio::task::spawn_blocking({
        let dir = gw.data_dir.path().to_owned();
        move || {
            let out = perch(&["buffer", "stats", "--data-dir", dir.to_str().unwrap()]);
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    })
    .await
    .unwrap();
    assert!(
        waiting.contains("records: 40"),
        "the outage's records wait in the buffer:\n{waiting}"
    );

    proxy.up();
    cloud.collect(80, Duration::from_secs(20)).await;
    cloud.assert_complete_and_ordered(80);
    // Acknowledged records leave the buffer.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        tokio::task::spawn_blocking(move || buffered_records(&gw))
            .await
            .unwrap(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_records_survive_kill_9() {
    let upstream = Gateway::start(&[]);
    let proxy = Proxy::start(upstream.addr()).await;
    proxy.down();
    let mut cloud = Cloud::connect(upstream.addr()).await;
    let (_dir, config) = gateway_config(proxy.addr);
    let data_dir = tempfile::tempdir().unwrap();
    let data = data_dir.path().to_str().unwrap();

    let mut gw = Gateway::start(&["--config", config.to_str().unwrap(), "--data-dir", data]);
    publish_alerts(&gw, 0..100).await;
    // Longer than commit_interval_ms: all 100 are committed.
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.signal("KILL");
    gw.wait(Duration::from_secs(5)).expect("killed");

    let _gw = Gateway::start(&["--config", config.to_str().unwrap(), "--data-dir", data]);
    proxy.up();
    cloud.collect(100, Duration::from_secs(20)).await;
    cloud.assert_complete_and_ordered(100);
}
