//! Upstream: delivers the buffer's committed records to the cloud, and
//! captures local topics into the buffer.
//!
//! # Delivery (MQTT bridge)
//!
//! One task keeps one rumqttc connection to the upstream broker (TLS with CA
//! and optional client certificate, persistent session, retained last will
//! `perch/<id>/status = offline`). It reads records in `seq` order from its
//! own read-only buffer connection (`batch_size` rows per query, into a
//! reusable batch; after a full batch the next query already runs while its
//! messages go out), packs them into messages and publishes each at QoS 1
//! to `<topic_prefix>/<stream>`. What was committed when the connection
//! came up is the backlog, read in a lane of its own and paced; live records
//! go first or after it as `drain.order` says ([`pacing`], [`drain`]).
//! Every message is counted per destination and stream when handed to the
//! client, written and acknowledged ([`crate::buffer::LinkTotals`]).
//!
//! ## Wire format
//!
//! Every record travels as a JSON envelope ([`envelope()`]), except a
//! mirrored one (`[[upstream.mirror]]`), which travels alone and raw to its
//! own topic ([`mirror`]):
//!
//! ```json
//! {"id":"<gateway>-<seq>","stream":"...","kind":"record","time_ms":...,"data":<the record>}
//! ```
//!
//! (`data` is the record itself when it is JSON, else a string; `kind` is
//! `record`, `aggregate` or `summary`.) A message carries up to
//! `max_records_per_message` records (default 100) and at most
//! `max_message_bytes` of payload, all of one stream, as a JSON array of
//! envelopes in `seq` order: `[{"id":"gw-7",...},{"id":"gw-8",...}]`. With
//! `max_records_per_message = 1` the payload is the bare envelope instead.
//! A stream's messages are published in order within a lane, so records
//! arrive in order per stream (within the backlog and within live records
//! under `live_first`); messages of different streams may interleave.
//!
//! ## Acknowledgement
//!
//! At most `max_inflight` messages are unacknowledged at a time. perch
//! tracks every message's packet id itself and tells the buffer to delete
//! exactly the records of that message on its PUBACK: rumqttc's own
//! bookkeeping is known to lose publishes across a session loss (rumqtt
//! #1056), so it is never trusted with durability. After any connection
//! error the client is rebuilt and delivery starts again from the oldest
//! record still in the buffer, so what was in flight is sent again (at least
//! once; receivers drop duplicates by `id`), in order.
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
//! without a function: see [`capture`]; `[[upstream.mirror]]` mirrors local
//! topics raw: see [`mirror`].

pub mod capture;
mod config;
mod drain;
mod envelope;
pub mod fleet;
mod http;
mod mirror;
pub mod pacing;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{
    AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS, TlsConfiguration,
    Transport,
};
use tokio::sync::{watch, Notify};

pub use self::capture::Forwarding;
pub use self::config::{
    HttpTls, HttpUpstreamConfig, MqttUpstreamConfig, UpstreamConfig, UpstreamTls,
};
use self::drain::Drain;
pub use self::envelope::envelope;
pub use self::http::{cloud_events, HttpDelivery};
pub use self::mirror::MirrorRule;
use crate::buffer::{Buffer, Intake, Reader, RecordRef, Slot, Stage, KIND_MIRROR};

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
    /// Messages on `forward_topics` handed to the buffer (by the codecs
    /// and by the capture link).
    pub captured: AtomicU64,
    pub capture_refused: AtomicU64,
    /// Messages on `forward_topics` the broker dropped before the capture
    /// link read them: it fell further behind than the broker keeps per
    /// filter (`max_message_log_bytes / max_filters`), and rumqttd moved its
    /// read cursor past what it had dropped. Those MQTT clients published
    /// were kept by the codecs anyway; only in-process publishes among them
    /// (functions, wills) were not forwarded.
    pub capture_lost: AtomicU64,
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

/// What every delivery task shares: the buffer it drains, where it reports,
/// how it backs off.
pub struct Source {
    pub gateway: String,
    /// Where this delivery sends (`mqtt://host:port`, the HTTP endpoint
    /// without credentials): the name its link totals are kept under.
    pub destination: String,
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
            destination: config.endpoint().unwrap_or_default(),
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
    let mut tasks: Vec<_> = capture::capture(
        broker,
        mirror::Routes::new(&config.forward_topics, &config.mirror),
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

/// The connection settings every upstream MQTT client of this gateway
/// shares (the delivery's and the fleet's): address, keep-alive, packet
/// size, login, TLS.
pub(crate) fn connection_options(
    c: &MqttUpstreamConfig,
    client_id: String,
) -> Result<MqttOptions, UpstreamError> {
    let mut o = MqttOptions::new(client_id, c.host.clone(), c.port);
    o.set_keep_alive(Duration::from_secs(c.keep_alive_s));
    o.set_max_packet_size(c.max_packet_size_bytes, c.max_packet_size_bytes);
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

impl Delivery {
    fn options(&self) -> Result<MqttOptions, UpstreamError> {
        let c = &self.config;
        let client_id = if c.client_id.is_empty() {
            format!("perch-{}", self.source.gateway)
        } else {
            c.client_id.clone()
        };
        let mut o = connection_options(c, client_id)?;
        o.set_clean_session(false);
        o.set_inflight(c.max_inflight);
        o.set_last_will(LastWill::new(
            status_topic(&self.source.gateway),
            "offline",
            QoS::AtLeastOnce,
            true,
        ));
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

    /// Records no MQTT packet of this link can carry would block delivery
    /// for good: they go to the dead letters (visible, replayable once the
    /// limit is raised) and delivery goes on.
    fn dead_letter_too_big(&self, too_big: &mut Vec<(i64, usize)>) {
        for (seq, size) in too_big.drain(..) {
            let why = format!(
                "the record's message (its envelope, or a mirrored payload) is {size} bytes, \
                 more than fits in upstream.mqtt.max_packet_size_bytes ({}); raise it if the \
                 upstream broker accepts bigger messages, then run `perch buffer replay`",
                self.config.max_packet_size_bytes
            );
            tracing::error!(seq, "upstream: {why}; moved to the dead letters");
            self.source.intake.dead_letter(vec![seq], 413, why);
            self.source
                .stats
                .dead_lettered
                .fetch_add(1, Ordering::Relaxed);
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
        // What was committed before the link came up is the backlog.
        let mut drain = Drain::new(
            &self.config.drain,
            drain::watermark(reader).await?,
            self.config.batch_size,
        );
        let mut flights = Flights::default();
        let max_inflight = usize::from(self.config.max_inflight);
        let prefix = self
            .config
            .topic_prefix
            .replace("{id}", &self.source.gateway);
        let packing = Packing {
            gateway: &self.source.gateway,
            prefix: &prefix,
            max_records: self.config.max_records_per_message,
            max_bytes: self.config.max_message_bytes,
            max_packet: self.config.max_packet_size_bytes,
        };
        let mut too_big = Vec::new();
        let totals = &self.source.intake.stats().links;

        client
            .try_publish(
                status_topic(&self.source.gateway),
                QoS::AtLeastOnce,
                true,
                "online",
            )
            .map_err(|e| e.to_string())?;
        flights.unassigned.push_back(Flight::default());

        loop {
            while flights.len() < max_inflight {
                let next = drain.next(reader, &packing, &mut too_big).await?;
                self.dead_letter_too_big(&mut too_big);
                let Some((message, from)) = next else { break };
                let records = message.seqs.len() as u64;
                let bytes = message.payload.len() as u64;
                let slot = totals.slot(&self.source.destination, message.stream());
                client
                    .try_publish(message.topic, QoS::AtLeastOnce, false, message.payload)
                    .map_err(|e| e.to_string())?;
                totals.add(slot, Stage::Offered, records, bytes);
                if from == drain::From::Backlog {
                    drain.spent(records, bytes);
                }
                flights.unassigned.push_back(Flight {
                    seqs: message.seqs,
                    slot: Some(slot),
                    bytes,
                });
                self.source.stats.sent.fetch_add(records, Ordering::Relaxed);
            }
            let room = flights.len() < max_inflight;
            let paced = drain.paced_until().filter(|_| room);
            tokio::select! {
                event = el.poll() => match event.map_err(|e| e.to_string())? {
                    Event::Outgoing(Outgoing::Publish(pkid)) => flights.assigned(pkid, totals),
                    Event::Incoming(Packet::PubAck(ack)) => {
                        if let Some(f) = flights.by_pkid.remove(&ack.pkid) {
                            let n = f.seqs.len() as u64;
                            if let Some(slot) = f.slot {
                                totals.add(slot, Stage::Acked, n, f.bytes);
                            }
                            self.source.intake.ack_many(f.seqs);
                            self.source.stats.acked.fetch_add(n, Ordering::Relaxed);
                        }
                    }
                    _ => {}
                },
                _ = self.source.new_records.notified(), if room => drain.live_check = true,
                // New records may have been committed while the window was
                // full; look again now and then.
                _ = tokio::time::sleep(Duration::from_millis(500)), if room => {
                    drain.live_check = true;
                }
                _ = tokio::time::sleep_until(paced.unwrap_or_else(Instant::now).into()),
                    if paced.is_some() => {}
            }
        }
    }
}

/// One MQTT message between `try_publish` and its PUBACK: the records it
/// carries (deleted from the buffer on the PUBACK) and what it counts as.
/// No `slot`: perch's own status message.
#[derive(Debug, Default)]
struct Flight {
    seqs: Vec<i64>,
    slot: Option<Slot>,
    bytes: u64,
}

/// The messages of one connection not acknowledged yet.
#[derive(Debug, Default)]
struct Flights {
    /// In the order they were handed to the client, waiting for their
    /// packet id.
    unassigned: VecDeque<Flight>,
    /// Packet id -> the message, until its PUBACK.
    by_pkid: HashMap<u16, Flight>,
}

impl Flights {
    fn len(&self) -> usize {
        self.unassigned.len() + self.by_pkid.len()
    }

    /// The client wrote the next message's PUBLISH with packet id `pkid`.
    fn assigned(&mut self, pkid: u16, totals: &crate::buffer::LinkTotals) {
        if let Some(f) = self.unassigned.pop_front() {
            if let Some(slot) = f.slot {
                totals.add(slot, Stage::Sent, f.seqs.len() as u64, f.bytes);
            }
            self.by_pkid.insert(pkid, f);
        }
    }
}

/// One upstream MQTT message: its topic, its payload, and the records it
/// carries (deleted from the buffer on its PUBACK).
#[derive(Debug)]
pub struct Message {
    pub topic: String,
    /// Where the stream's name starts in `topic` (after `<topic_prefix>/`;
    /// 0 for a mirrored message, whose topic is its stream).
    pub stream_at: usize,
    pub payload: Vec<u8>,
    pub seqs: Vec<i64>,
}

/// How records are packed into MQTT messages.
pub struct Packing<'a> {
    pub gateway: &'a str,
    /// `topic_prefix` with `{id}` replaced.
    pub prefix: &'a str,
    /// 1: one bare envelope per message; more: a JSON array of envelopes.
    pub max_records: usize,
    /// Payload bytes at most when a message packs several records.
    pub max_bytes: usize,
    /// The largest packet the upstream link sends: a record whose envelope
    /// (with its topic) does not fit can never be delivered over MQTT.
    pub max_packet: usize,
}

impl Message {
    /// The stream of the records it carries.
    pub fn stream(&self) -> &str {
        &self.topic[self.stream_at..]
    }
}

impl Packing<'_> {
    /// Packs `rows` (in `seq` order) into messages appended to `out`: each
    /// message holds records of one stream in `seq` order, and a stream's
    /// messages are appended in order, so order per stream holds. Messages
    /// of different streams may interleave. Every row ends up in exactly
    /// one message.
    ///
    /// Records too big for any packet are not packed: their (seq, envelope
    /// size) go to `too_big`.
    pub fn pack<'r>(
        &self,
        rows: impl ExactSizeIterator<Item = RecordRef<'r>>,
        out: &mut VecDeque<Message>,
        too_big: &mut Vec<(i64, usize)>,
    ) {
        let n = rows.len();
        // Open messages, one per stream seen in this chunk (few streams:
        // a linear scan beats hashing).
        let mut open: Vec<Message> = Vec::new();
        let mut envelope_buf = Vec::with_capacity(512);
        for r in rows {
            if r.kind == KIND_MIRROR {
                mirror::pack(r, self.max_packet, out, too_big);
                continue;
            }
            envelope(self.gateway, r, &mut envelope_buf);
            // Fixed header (5), topic length (2), topic, packet id (2),
            // the array's brackets (2).
            let packet = 11 + self.prefix.len() + 1 + r.stream.len() + envelope_buf.len();
            if packet > self.max_packet {
                too_big.push((r.seq, envelope_buf.len()));
                continue;
            }
            let i = match open.iter().position(|m| {
                m.topic.len() == self.prefix.len() + 1 + r.stream.len()
                    && m.topic.ends_with(r.stream)
            }) {
                Some(i) => i,
                None => {
                    open.push(Message {
                        topic: format!("{}/{}", self.prefix, r.stream),
                        stream_at: self.prefix.len() + 1,
                        payload: Vec::new(),
                        seqs: Vec::with_capacity(self.max_records.min(n)),
                    });
                    open.len() - 1
                }
            };
            // Close the open message first if this record would not fit.
            let m = &open[i];
            if !m.seqs.is_empty() && m.payload.len() + envelope_buf.len() + 2 > self.max_bytes {
                let full = self.take(&mut open[i]);
                out.push_back(full);
            }
            let m = &mut open[i];
            if self.max_records > 1 {
                m.payload.push(if m.seqs.is_empty() { b'[' } else { b',' });
            }
            m.payload.extend_from_slice(&envelope_buf);
            m.seqs.push(r.seq);
            if m.seqs.len() >= self.max_records {
                let full = self.take(m);
                out.push_back(full);
            }
        }
        // Partial messages go in the order of their first record.
        open.retain(|m| !m.seqs.is_empty());
        open.sort_by_key(|m| m.seqs[0]);
        for mut m in open {
            if self.max_records > 1 {
                m.payload.push(b']');
            }
            out.push_back(m);
        }
    }

    /// Closes `m` and leaves an empty message for the same topic in its
    /// place.
    fn take(&self, m: &mut Message) -> Message {
        let empty = Message {
            topic: m.topic.clone(),
            stream_at: m.stream_at,
            payload: Vec::new(),
            seqs: Vec::with_capacity(self.max_records),
        };
        let mut full = std::mem::replace(m, empty);
        if self.max_records > 1 {
            full.payload.push(b']');
        }
        full
    }
}

/// `perch/<id>/status`: retained "online" while connected, "offline" after.
pub fn status_topic(gateway: &str) -> String {
    format!("perch/{gateway}/status")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::StoredRecord;

    #[test]
    fn backoff_grows_with_jitter_and_stays_under_the_cap() {
        let (i, m) = (Duration::from_millis(100), Duration::from_secs(5));
        for attempt in 0..30 {
            let d = backoff(i, m, attempt);
            let full = (i * 2u32.pow(attempt.min(20))).min(m);
            assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
        }
    }

    fn row(seq: i64, stream: &str) -> StoredRecord {
        StoredRecord {
            seq,
            stream: stream.into(),
            kind: 0,
            created_ms: seq,
            payload: format!("{{\"n\":{seq}}}").into_bytes(),
        }
    }

    /// (topic, ids in the message) of each message, in order.
    fn packed(
        max_records: usize,
        max_bytes: usize,
        rows: &[StoredRecord],
    ) -> Vec<(String, Vec<i64>)> {
        let packing = Packing {
            gateway: "gw",
            prefix: "up/gw",
            max_records,
            max_bytes,
            max_packet: 1 << 20,
        };
        let mut out = VecDeque::new();
        let mut too_big = Vec::new();
        packing.pack(
            rows.iter().map(StoredRecord::as_ref),
            &mut out,
            &mut too_big,
        );
        assert!(too_big.is_empty());
        out.into_iter()
            .map(|m| {
                let v: serde_json::Value = serde_json::from_slice(&m.payload).expect("JSON");
                let envelopes = if max_records == 1 {
                    vec![v]
                } else {
                    v.as_array().expect("an array of envelopes").clone()
                };
                let ids: Vec<i64> = envelopes
                    .iter()
                    .map(|e| {
                        let id = e["id"].as_str().unwrap();
                        id.strip_prefix("gw-").unwrap().parse().unwrap()
                    })
                    .collect();
                assert_eq!(ids, m.seqs, "the message acks exactly what it carries");
                for e in &envelopes {
                    assert_eq!(format!("up/gw/{}", e["stream"].as_str().unwrap()), m.topic);
                    assert_eq!(e["data"]["n"], e["time_ms"]);
                }
                (m.topic, m.seqs)
            })
            .collect()
    }

    #[test]
    fn records_of_a_stream_are_packed_in_order_up_to_the_count() {
        let rows: Vec<_> = (1..=7).map(|s| row(s, "a")).collect();
        assert_eq!(
            packed(3, 1 << 20, &rows),
            vec![
                ("up/gw/a".to_owned(), vec![1, 2, 3]),
                ("up/gw/a".to_owned(), vec![4, 5, 6]),
                ("up/gw/a".to_owned(), vec![7]),
            ]
        );
    }

    #[test]
    fn interleaved_streams_keep_their_own_order_and_every_record_once() {
        let streams = ["a", "b", "a", "c", "b", "a", "a"];
        let rows: Vec<_> = (1..=7).map(|s| row(s, streams[s as usize - 1])).collect();
        let messages = packed(2, 1 << 20, &rows);
        assert_eq!(
            messages,
            vec![
                // Full messages leave as they fill, partial ones at the end.
                ("up/gw/a".to_owned(), vec![1, 3]),
                ("up/gw/b".to_owned(), vec![2, 5]),
                ("up/gw/a".to_owned(), vec![6, 7]),
                ("up/gw/c".to_owned(), vec![4]),
            ]
        );
    }

    #[test]
    fn the_byte_bound_closes_a_message_and_a_big_record_travels_alone() {
        let mut rows: Vec<_> = (1..=4).map(|s| row(s, "a")).collect();
        rows[2].payload = br#"{"n":3,"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#.to_vec();
        // One small envelope is ~70 bytes: two fit in 150, the padded one
        // does not fit with anything.
        assert_eq!(
            packed(100, 150, &rows),
            vec![
                ("up/gw/a".to_owned(), vec![1, 2]),
                ("up/gw/a".to_owned(), vec![3]),
                ("up/gw/a".to_owned(), vec![4]),
            ]
        );
    }

    #[test]
    fn a_record_no_packet_can_carry_is_set_aside_and_the_rest_packed() {
        let mut rows: Vec<_> = (1..=3).map(|s| row(s, "a")).collect();
        rows[1].payload = format!("{{\"pad\":\"{}\"}}", "x".repeat(400)).into_bytes();
        let packing = Packing {
            gateway: "gw",
            prefix: "up/gw",
            max_records: 100,
            max_bytes: 200,
            max_packet: 300,
        };
        let (mut out, mut too_big) = (VecDeque::new(), Vec::new());
        packing.pack(
            rows.iter().map(StoredRecord::as_ref),
            &mut out,
            &mut too_big,
        );
        assert_eq!(too_big.len(), 1);
        assert_eq!(too_big[0].0, 2);
        assert!(too_big[0].1 > 400);
        let packed: Vec<_> = out.iter().flat_map(|m| m.seqs.clone()).collect();
        assert_eq!(packed, vec![1, 3]);
    }

    #[test]
    fn one_record_per_message_sends_the_bare_envelope() {
        let rows: Vec<_> = (1..=2).map(|s| row(s, "a")).collect();
        assert_eq!(
            packed(1, 1 << 20, &rows),
            vec![
                ("up/gw/a".to_owned(), vec![1]),
                ("up/gw/a".to_owned(), vec![2]),
            ]
        );
    }
}
