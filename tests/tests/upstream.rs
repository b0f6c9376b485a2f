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
            let v: serde_json::Value = serde_json::from_slice(&p.payload).expect("JSON");
            // A message carries a JSON array of envelopes.
            for v in v.as_array().expect("an array of envelopes") {
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
    buffered_records_in(gw.data_dir.path())
}

fn buffered_records_in(dir: &std::path::Path) -> u64 {
    let out = perch(&["buffer", "stats", "--data-dir", dir.to_str().unwrap()]);
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
    // Wait for the PUBACKs to be committed as deletions, so the outage
    // starts with an empty buffer (records whose PUBACK the cut would
    // swallow would be sent again: correct, but it blurs the count below).
    let dir = gw.data_dir.path().to_owned();
    let deadline = tokio::time::Instant::now() + mqtt::WAIT;
    loop {
        let dir = dir.clone();
        let n = tokio::task::spawn_blocking(move || buffered_records_in(&dir))
            .await
            .unwrap();
        if n == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{n} acknowledged records not deleted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

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

/// (authorization header, decoded body, status answered) per request.
type Requests = std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<u8>, u16)>>>;

/// A minimal HTTP/1.1 ingestion endpoint: records every POST and answers
/// with the status `answer` picks for it.
pub(crate) struct Endpoint {
    pub(crate) addr: std::net::SocketAddr,
    /// (authorization header, decoded body) of every request.
    requests: Requests,
}

impl Endpoint {
    pub(crate) async fn start(
        answer: impl Fn(usize, &[u8]) -> u16 + Send + Sync + 'static,
    ) -> Endpoint {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let answer = std::sync::Arc::new(answer);
        let log = requests.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (log, answer) = (log.clone(), answer.clone());
                tokio::spawn(async move {
                    let mut stream = BufReader::new(stream);
                    loop {
                        let mut line = String::new();
                        if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let (mut len, mut auth, mut gzip) = (0usize, String::new(), false);
                        loop {
                            let mut h = String::new();
                            stream.read_line(&mut h).await.unwrap();
                            let h = h.trim_end();
                            if h.is_empty() {
                                break;
                            }
                            let (name, value) = h.split_once(':').unwrap();
                            match name.to_ascii_lowercase().as_str() {
                                "content-length" => len = value.trim().parse().unwrap(),
                                "authorization" => auth = value.trim().to_owned(),
                                "content-encoding" => gzip = value.trim() == "gzip",
                                _ => {}
                            }
                        }
                        let mut body = vec![0; len];
                        stream.read_exact(&mut body).await.unwrap();
                        if gzip {
                            let mut plain = Vec::new();
                            std::io::Read::read_to_end(
                                &mut flate2::read::GzDecoder::new(&body[..]),
                                &mut plain,
                            )
                            .unwrap();
                            body = plain;
                        }
                        let n = log.lock().unwrap().len();
                        let status = answer(n, &body);
                        log.lock().unwrap().push((auth, body, status));
                        let reply =
                            format!("HTTP/1.1 {status} X\r\nContent-Length: 8\r\n\r\nanswered");
                        stream.get_mut().write_all(reply.as_bytes()).await.unwrap();
                    }
                });
            }
        });
        Endpoint { addr, requests }
    }

    /// The `n` of every record in accepted batches, in arrival order.
    fn accepted(&self) -> Vec<u64> {
        let mut out = Vec::new();
        for (_, body, status) in self.requests.lock().unwrap().iter() {
            if *status != 200 {
                continue;
            }
            let events: serde_json::Value = serde_json::from_slice(body).unwrap();
            for e in events.as_array().unwrap() {
                out.push(e["data"]["n"].as_u64().unwrap());
            }
        }
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_delivery_retries_5xx_and_dead_letters_4xx() {
    let reject_3 = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let reject = reject_3.clone();
    let endpoint = Endpoint::start(move |i, body| {
        let text = String::from_utf8_lossy(body);
        if i == 0 {
            503
        } else if reject.load(std::sync::atomic::Ordering::SeqCst) && text.contains("\"n\":3}") {
            400
        } else {
            200
        }
    })
    .await;
    let (_dir, config) = temp_file(
        "perch.toml",
        &format!(
            r#"
[gateway]
id = "gw-http"
[[broker.listeners]]
name = "local"
listen = "127.0.0.1:0"
allow_anonymous = true
[upstream]
forward_topics = ["alerts/#"]
backoff_initial_ms = 100
backoff_max_ms = 200
[upstream.http]
url = "http://{}/ingest"
bearer_token = "s3cret"
gzip = true
batch_size = 1
"#,
            endpoint.addr
        ),
    );
    let gw = Gateway::start(&["--config", config.to_str().unwrap()]);
    publish_alerts(&gw, 0..10).await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while endpoint.accepted().len() < 9 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        endpoint.accepted(),
        vec![0, 1, 2, 4, 5, 6, 7, 8, 9],
        "the 503 was retried, 3 refused; requests: {:?}\n{}",
        endpoint
            .requests
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.2)
            .collect::<Vec<_>>(),
        gw.log_text()
    );
    {
        let requests = endpoint.requests.lock().unwrap();
        assert_eq!(requests[0].2, 503);
        assert!(requests.iter().all(|(auth, _, _)| auth == "Bearer s3cret"));
        let first: serde_json::Value = serde_json::from_slice(&requests[1].1).unwrap();
        assert_eq!(first[0]["specversion"], "1.0");
        assert_eq!(first[0]["subject"], "alerts/a");
        assert!(first[0]["id"].as_str().unwrap().starts_with("gw-http-"));
    }

    let data_dir = gw.data_dir.path().to_str().unwrap().to_owned();
    // The refused batch reaches the dead-letter table with the buffer's next
    // commit, which may come a little after the endpoint saw record 9.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let dead = loop {
        let dead = tokio::task::spawn_blocking({
            let d = data_dir.clone();
            move || perch(&["buffer", "dead", "--data-dir", &d])
        })
        .await
        .unwrap();
        let dead = String::from_utf8_lossy(&dead.stdout).into_owned();
        if dead.contains("HTTP 400") || tokio::time::Instant::now() > deadline {
            break dead;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        dead.contains("HTTP 400") && dead.contains("\"n\":3"),
        "{dead}"
    );

    // The endpoint is fixed; replaying sends the dead letter again.
    reject_3.store(false, std::sync::atomic::Ordering::SeqCst);
    let replay =
        tokio::task::spawn_blocking(move || perch(&["buffer", "replay", "--data-dir", &data_dir]))
            .await
            .unwrap();
    assert!(String::from_utf8_lossy(&replay.stdout).contains("1 dead letters queued again"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while endpoint.accepted().len() < 10 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(endpoint.accepted().last(), Some(&3));
}
