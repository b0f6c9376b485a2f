//! Upstream: delivers the buffer's committed records to the cloud, and
//! captures local topics into the buffer.
//!
//! # Delivery (MQTT bridge)
//!
//! One task keeps one rumqttc connection to the upstream broker (TLS with CA
//! and optional client certificate, persistent session, retained last will
//! `perch/<id>/status = offline`). It reads records in `seq` order from its
//! own read-only buffer connection and publishes each at QoS 1 to
//! `<topic_prefix>/<stream>` as a JSON envelope:
//!
//! ```json
//! {"id":"<gateway>-<seq>","stream":"...","kind":"record","time_ms":...,"data":<the record>}
//! ```
//!
//! (`data` is the record itself when it is JSON, else a string.) At most
//! `max_inflight` records are unacknowledged at a time. perch tracks every
//! record's packet id itself and tells the buffer to delete a record only on
//! its PUBACK: rumqttc's own bookkeeping is known to lose publishes across a
//! session loss (rumqtt #1056), so it is never trusted with durability. After
//! any connection error the client is rebuilt and delivery starts again from
//! the oldest record still in the buffer, so what was in flight is sent again
//! (at least once; receivers drop duplicates by `id`), in order.
//!
//! Reconnects back off exponentially with jitter up to `backoff_max_ms`.
//!
//! # Delivery (HTTP)
//!
//! See [`http`]: CloudEvents batches, 2xx acknowledges, 408/429/5xx retry,
//! other 4xx go to the dead-letter table.
//!
//! # Capture
//!
//! `forward_topics` lists local topic filters whose messages go upstream
//! without a function: a task subscribes to them through an in-process link
//! and forwards each message as a record in the stream named by its topic.

mod config;
mod http;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{
    AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS, TlsConfiguration,
    Transport,
};
use tokio::sync::{watch, Notify};

pub use self::config::{
    HttpTls, HttpUpstreamConfig, MqttUpstreamConfig, UpstreamConfig, UpstreamTls,
};
pub use self::http::{cloud_events, HttpDelivery};
use crate::buffer::{Buffer, Intake, Reader, StoredRecord, KIND_AGGREGATE, KIND_SUMMARY};

/// Why upstream could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot read {what} {path}: {source}")]
    ReadFile {
        what: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Buffer(#[from] crate::buffer::BufferError),
    #[error(transparent)]
    Broker(#[from] crate::broker::BrokerError),
}

/// Counters of the upstream link.
#[derive(Debug, Default)]
pub struct Stats {
    /// 1 while connected.
    pub connected: AtomicU64,
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub connects: AtomicU64,
    pub connection_errors: AtomicU64,
    pub captured: AtomicU64,
    pub capture_refused: AtomicU64,
    /// Records the HTTP endpoint refused for good (4xx), moved to dead letters.
    pub dead_lettered: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

/// Exponential backoff with jitter: attempt n waits a random time in
/// `[d/2, d]` where `d = min(initial * 2^n, max)`.
pub fn backoff(initial: Duration, max: Duration, attempt: u32) -> Duration {
    let d = initial.saturating_mul(1u32 << attempt.min(20)).min(max);
    let half = d / 2;
    half + half.mul_f64(rand::random::<f64>())
}

/// The JSON envelope a record travels in.
pub fn envelope(gateway: &str, record: &StoredRecord, out: &mut Vec<u8>) {
    use std::io::Write;
    out.clear();
    let kind = match record.kind {
        KIND_AGGREGATE => "aggregate",
        KIND_SUMMARY => "summary",
        _ => "record",
    };
    let _ = write!(
        out,
        "{{\"id\":{},\"stream\":{},\"kind\":\"{kind}\",\"time_ms\":{},\"data\":",
        serde_json::to_string(&format!("{gateway}-{}", record.seq)).expect("string"),
        serde_json::to_string(&record.stream).expect("string"),
        record.created_ms,
    );
    let is_json = serde_json::from_slice::<serde::de::IgnoredAny>(&record.payload).is_ok();
    if is_json {
        out.extend_from_slice(&record.payload);
    } else {
        let text = String::from_utf8_lossy(&record.payload);
        out.extend_from_slice(serde_json::to_string(&text).expect("string").as_bytes());
    }
    out.push(b'}');
}

/// What every delivery task shares: the buffer it drains, where it reports,
/// how it backs off.
pub struct Source {
    pub gateway: String,
    /// Its own read-only buffer connection; used on blocking threads.
    pub reader: Arc<Mutex<Reader>>,
    pub intake: Intake,
    pub new_records: Arc<Notify>,
    pub stats: Arc<Stats>,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl Source {
    pub fn new(
        gateway: &str,
        buffer: &Buffer,
        stats: Arc<Stats>,
        config: &UpstreamConfig,
    ) -> Result<Source, UpstreamError> {
        Ok(Source {
            gateway: gateway.to_owned(),
            reader: Arc::new(Mutex::new(buffer.reader()?)),
            intake: buffer.intake(),
            new_records: buffer.new_records(),
            stats,
            backoff_initial: Duration::from_millis(config.backoff_initial_ms),
            backoff_max: Duration::from_millis(config.backoff_max_ms),
        })
    }
}

impl Source {
    /// Records a failed attempt and returns how long to wait before the
    /// next one.
    fn failed(&self, why: &str, attempt: &mut u32) -> Duration {
        self.stats.connected.store(0, Ordering::Relaxed);
        self.stats.connection_errors.fetch_add(1, Ordering::Relaxed);
        *self.stats.last_error.lock().expect("lock") = Some(why.to_owned());
        let wait = backoff(self.backoff_initial, self.backoff_max, *attempt);
        *attempt = attempt.saturating_add(1);
        wait
    }
}

/// Starts what `config` asks for: capture of local topics, delivery over
/// MQTT or HTTP. Returns the tasks, named for the shutdown log.
pub fn start(
    config: &UpstreamConfig,
    gateway: &str,
    buffer: &Buffer,
    broker: &crate::broker::Broker,
    stats: Arc<Stats>,
    shutdown: watch::Receiver<bool>,
) -> Result<Vec<(&'static str, tokio::task::JoinHandle<()>)>, UpstreamError> {
    let mut tasks: Vec<_> = capture(
        broker,
        config.forward_topics.clone(),
        buffer.intake(),
        stats.clone(),
        shutdown.clone(),
    )?
    .into_iter()
    .map(|t| ("upstream capture", t))
    .collect();
    if let Some(mqtt) = &config.mqtt {
        let delivery = Delivery {
            config: mqtt.clone(),
            source: Source::new(gateway, buffer, stats.clone(), config)?,
        };
        tasks.push((
            "upstream delivery (mqtt)",
            tokio::spawn(delivery.run(shutdown.clone())),
        ));
    }
    if let Some(http) = &config.http {
        let delivery = HttpDelivery {
            config: http.clone(),
            source: Source::new(gateway, buffer, stats, config)?,
        };
        tasks.push((
            "upstream delivery (http)",
            tokio::spawn(delivery.run(shutdown)),
        ));
    }
    Ok(tasks)
}

/// Delivery to an MQTT broker.
pub struct Delivery {
    pub config: MqttUpstreamConfig,
    pub source: Source,
}

impl Delivery {
    fn options(&self) -> Result<MqttOptions, UpstreamError> {
        let c = &self.config;
        let client_id = if c.client_id.is_empty() {
            format!("perch-{}", self.source.gateway)
        } else {
            c.client_id.clone()
        };
        let mut o = MqttOptions::new(client_id, c.host.clone(), c.port);
        o.set_keep_alive(Duration::from_secs(c.keep_alive_s));
        o.set_clean_session(false);
        o.set_inflight(c.max_inflight);
        o.set_max_packet_size(c.max_packet_size_bytes, c.max_packet_size_bytes);
        o.set_last_will(LastWill::new(
            status_topic(&self.source.gateway),
            "offline",
            QoS::AtLeastOnce,
            true,
        ));
        if !c.username.is_empty() {
            o.set_credentials(c.username.clone(), c.password.clone());
        }
        if let Some(tls) = &c.tls {
            let read = |what, path: &std::path::Path| {
                std::fs::read(path).map_err(|source| UpstreamError::ReadFile {
                    what,
                    path: path.to_owned(),
                    source,
                })
            };
            let ca = read("CA file", &tls.ca_path)?;
            let client_auth = match (&tls.cert_path, &tls.key_path) {
                (Some(cert), Some(key)) => {
                    Some((read("client certificate", cert)?, read("client key", key)?))
                }
                _ => None,
            };
            o.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
                ca,
                alpn: None,
                client_auth,
            }));
        }
        Ok(o)
    }

    /// Delivers until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let reader = self.source.reader.clone();
        let mut attempt = 0u32;
        loop {
            let opts = match self.options_logged() {
                Some(o) => o,
                None => return,
            };
            let (client, el) = AsyncClient::new(opts, self.config.max_inflight as usize * 2 + 8);
            let outcome = tokio::select! {
                o = self.session(&client, el, &reader, &mut attempt) => o,
                _ = shutdown.changed() => Err("shutdown".to_owned()),
            };
            self.source.stats.connected.store(0, Ordering::Relaxed);
            if *shutdown.borrow() {
                // A clean goodbye: the will is for unclean ones.
                let _ = client.try_publish(
                    status_topic(&self.source.gateway),
                    QoS::AtLeastOnce,
                    true,
                    "offline",
                );
                let _ = client.try_disconnect();
                return;
            }
            if let Err(e) = outcome {
                let wait = self.source.failed(&e, &mut attempt);
                tracing::warn!(error = %e, retry_in = ?wait, "upstream: connection lost");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    }

    fn options_logged(&self) -> Option<MqttOptions> {
        match self.options() {
            Ok(o) => Some(o),
            Err(e) => {
                tracing::error!(error = %e, "upstream: cannot configure the connection; delivery stopped");
                *self.source.stats.last_error.lock().expect("lock") = Some(e.to_string());
                None
            }
        }
    }

    /// One connection's life: returns why it ended.
    async fn session(
        &self,
        client: &AsyncClient,
        mut el: EventLoop,
        reader: &Arc<Mutex<Reader>>,
        attempt: &mut u32,
    ) -> Result<(), String> {
        let connect_timeout = Duration::from_secs(self.config.keep_alive_s.max(5) * 2);
        loop {
            match tokio::time::timeout(connect_timeout, el.poll()).await {
                Err(_) => return Err("no CONNACK in time".to_owned()),
                Ok(Err(e)) => return Err(e.to_string()),
                Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => break,
                Ok(Ok(_)) => {}
            }
        }
        *attempt = 0;
        self.source.stats.connected.store(1, Ordering::Relaxed);
        self.source.stats.connects.fetch_add(1, Ordering::Relaxed);
        tracing::info!(host = %self.config.host, port = self.config.port, "upstream: connected");

        // Records in the order they were handed to the client, waiting for
        // their packet id; then packet id -> seq until the PUBACK. `-1`
        // marks perch's own status message.
        let mut unassigned: VecDeque<i64> = VecDeque::new();
        let mut by_pkid: HashMap<u16, i64> = HashMap::new();
        let mut inflight = 0usize;
        let mut cursor = 0i64;
        let mut queued: VecDeque<StoredRecord> = VecDeque::new();
        let mut payload = Vec::with_capacity(1024);
        let max_inflight = usize::from(self.config.max_inflight);

        client
            .try_publish(
                status_topic(&self.source.gateway),
                QoS::AtLeastOnce,
                true,
                "online",
            )
            .map_err(|e| e.to_string())?;
        unassigned.push_back(-1);
        inflight += 1;

        loop {
            while inflight < max_inflight {
                if queued.is_empty() {
                    let reader = reader.clone();
                    let after = cursor;
                    let limit = self.config.batch_size;
                    let rows = tokio::task::spawn_blocking(move || {
                        reader.lock().expect("reader lock").after(after, limit)
                    })
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| format!("reading the buffer: {e}"))?;
                    if rows.is_empty() {
                        break;
                    }
                    queued.extend(rows);
                }
                let record = queued.pop_front().expect("non-empty");
                envelope(&self.source.gateway, &record, &mut payload);
                let topic = format!(
                    "{}/{}",
                    self.config
                        .topic_prefix
                        .replace("{id}", &self.source.gateway),
                    record.stream
                );
                client
                    .try_publish(topic, QoS::AtLeastOnce, false, payload.clone())
                    .map_err(|e| e.to_string())?;
                unassigned.push_back(record.seq);
                cursor = record.seq;
                inflight += 1;
                self.source.stats.sent.fetch_add(1, Ordering::Relaxed);
            }
            tokio::select! {
                event = el.poll() => match event.map_err(|e| e.to_string())? {
                    Event::Outgoing(Outgoing::Publish(pkid)) => {
                        if let Some(seq) = unassigned.pop_front() {
                            by_pkid.insert(pkid, seq);
                        }
                    }
                    Event::Incoming(Packet::PubAck(ack)) => {
                        if let Some(seq) = by_pkid.remove(&ack.pkid) {
                            inflight -= 1;
                            if seq >= 0 {
                                self.source.intake.ack(seq);
                                self.source.stats.acked.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    _ => {}
                },
                _ = self.source.new_records.notified(), if inflight < max_inflight => {}
                // New records may have been committed while the window was
                // full; look again now and then.
                _ = tokio::time::sleep(Duration::from_millis(500)), if inflight < max_inflight => {}
            }
        }
    }
}

/// `perch/<id>/status`: retained "online" while connected, "offline" after.
pub fn status_topic(gateway: &str) -> String {
    format!("perch/{gateway}/status")
}

/// Subscribes to `filters` on the local broker and forwards every message
/// into the buffer (stream = topic), until `shutdown`.
///
/// rumqttd delivers a message once per matching subscription of a
/// connection and does not say which matched, so each filter gets its own
/// link, and a message is taken only by the first filter in the list that
/// matches it: overlapping filters forward it once.
pub fn capture(
    broker: &crate::broker::Broker,
    filters: Vec<String>,
    intake: Intake,
    stats: Arc<Stats>,
    shutdown: watch::Receiver<bool>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, UpstreamError> {
    let filters = Arc::new(filters);
    let mut tasks = Vec::new();
    for i in 0..filters.len() {
        let name = format!("upstream-capture-{i}");
        let (mut tx, mut rx) = broker.link(&name)?;
        tx.subscribe(filters[i].clone())
            .map_err(|e| crate::broker::BrokerError::Link {
                client_id: name.clone(),
                source: Box::new(e),
            })?;
        let (filters, intake, stats, mut shutdown) = (
            filters.clone(),
            intake.clone(),
            stats.clone(),
            shutdown.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let _tx = tx; // dropping it would end the link
            loop {
                let next = tokio::select! {
                    n = rx.next() => n,
                    _ = shutdown.changed() => return,
                };
                match next {
                    Ok(Some(rumqttd::Notification::Forward(f))) => {
                        let topic = String::from_utf8_lossy(&f.publish.topic);
                        if crate::topic::matches_any(&filters[..i], &topic) {
                            continue; // an earlier filter's link forwards it
                        }
                        match intake.forward(&topic, &f.publish.payload) {
                            Ok(()) => stats.captured.fetch_add(1, Ordering::Relaxed),
                            Err(_) => stats.capture_refused.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                    Ok(Some(rumqttd::Notification::Unschedule)) => {
                        // The router pauses a link with many pending
                        // notifications until it says it is ready again.
                        if rx.ready().is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "upstream capture: local link closed");
                        return;
                    }
                }
            }
        }));
    }
    Ok(tasks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_stays_under_the_cap() {
        let (i, m) = (Duration::from_millis(100), Duration::from_secs(5));
        for attempt in 0..30 {
            let d = backoff(i, m, attempt);
            let full = (i * 2u32.pow(attempt.min(20))).min(m);
            assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
        }
    }

    #[test]
    fn the_envelope_embeds_json_and_quotes_the_rest() {
        let mut out = Vec::new();
        let mut r = StoredRecord {
            seq: 42,
            stream: "alerts".into(),
            kind: 0,
            created_ms: 7,
            payload: br#"{"t":1}"#.to_vec(),
        };
        envelope("gw-1", &r, &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["id"], "gw-1-42");
        assert_eq!(v["data"]["t"], 1);
        r.payload = b"not \"json\"".to_vec();
        r.kind = KIND_AGGREGATE;
        envelope("gw-1", &r, &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["data"], "not \"json\"");
        assert_eq!(v["kind"], "aggregate");
    }
}
