//! Delivery to an HTTP(S) ingestion endpoint: batches of records POSTed as
//! CloudEvents (`application/cloudevents-batch+json`), optionally gzipped,
//! with a bearer token or a client certificate.
//!
//! A 2xx acknowledges the whole batch. 408, 429 and 5xx (and transport
//! errors) are retried with backoff, the same batch again, so nothing is
//! lost and order holds. Any other 4xx means the endpoint will never take
//! that batch: it is moved to the buffer's dead-letter table with the status
//! and response, where `perch buffer dead` shows it and `perch buffer
//! replay` puts it back, and delivery goes on with the next batch.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::pacing::{Backlog, DrainOrder, Pacer};
use super::{Source, UpstreamError};
use crate::buffer::{Slot, Stage, StoredRecord, KIND_AGGREGATE, KIND_SUMMARY};

pub use super::config::HttpUpstreamConfig;

/// Delivery to an HTTP endpoint.
pub struct HttpDelivery {
    pub config: HttpUpstreamConfig,
    pub source: Source,
}

/// What became of one POST.
enum Outcome {
    Accepted,
    /// Not accepted now; `true` when an HTTP answer came (408, 429, 5xx),
    /// `false` when the request did not get through.
    Retry(String, bool),
    Rejected {
        status: u16,
        body: String,
    },
}

impl HttpDelivery {
    fn agent(&self) -> Result<ureq::Agent, UpstreamError> {
        use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig};
        let read = |what, path: &std::path::Path| {
            std::fs::read(path).map_err(|source| UpstreamError::ReadFile {
                what,
                path: path.to_owned(),
                source,
            })
        };
        let bad = |what: &'static str, path: &std::path::Path| {
            let path = path.to_owned();
            move |_| UpstreamError::ReadFile {
                what,
                path,
                source: std::io::Error::other("not a PEM file"),
            }
        };
        let mut tls = TlsConfig::builder();
        if let Some(t) = &self.config.tls {
            if let Some(ca) = &t.ca_path {
                let pem = read("CA file", ca)?;
                let cert = Certificate::from_pem(&pem).map_err(bad("CA file", ca))?;
                tls = tls.root_certs(RootCerts::new_with_certs(&[cert]));
            }
            if let (Some(cert), Some(key)) = (&t.cert_path, &t.key_path) {
                let c = read("client certificate", cert)?;
                let k = read("client key", key)?;
                let c = Certificate::from_pem(&c).map_err(bad("client certificate", cert))?;
                let k = PrivateKey::from_pem(&k).map_err(bad("client key", key))?;
                tls = tls.client_cert(Some(ClientCert::new_with_certs(&[c], k)));
            }
        }
        Ok(ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_millis(self.config.timeout_ms)))
            .http_status_as_error(false)
            .tls_config(tls.build())
            .build()
            .into())
    }

    /// Delivers until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let agent = match self.agent() {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, "upstream http: cannot configure; delivery stopped");
                *self.source.stats.last_error.lock().expect("lock") = Some(e.to_string());
                return;
            }
        };
        let mut link = Link::new(self.config.drain);
        let mut attempt = 0u32;
        // Every record committed before the start is backlog, and so is
        // every record committed while POSTs fail (the watermark is taken
        // again before each retry).
        let mut link_up = true;
        loop {
            if link_up {
                match self.read(Read::Newest).await {
                    Ok(Got::Newest(watermark)) => {
                        link.live = link.backlog.link_up(link.live, watermark);
                        link_up = false;
                    }
                    _ => {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }
            let (rows, from) = match self.next_batch(&mut link).await {
                Ok(Next::Batch(rows, from)) => (rows, from),
                Ok(Next::Wait(until)) => {
                    let at = until.unwrap_or_else(|| Instant::now() + Duration::from_millis(500));
                    tokio::select! {
                        _ = self.source.new_records.notified() => {}
                        _ = tokio::time::sleep_until(at.into()) => {}
                        _ = shutdown.changed() => return,
                    }
                    continue;
                }
                Err(e) => {
                    tracing::error!(error = %e, "upstream http: cannot read the buffer");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let body = cloud_events(&self.source.gateway, &rows, self.config.gzip);
            let counts = self.counts(&rows, body.len() as u64);
            self.count(&counts, Stage::Offered);
            if from == Lane::Backlog {
                link.pacer
                    .spent(Instant::now(), rows.len() as u64, body.len() as u64);
            }
            let request = {
                let agent = agent.clone();
                let config = self.config.clone();
                tokio::task::spawn_blocking(move || post(&agent, &config, body))
            };
            let outcome = tokio::select! {
                o = request => o.expect("http task"),
                _ = shutdown.changed() => return,
            };
            if !matches!(outcome, Outcome::Retry(_, false)) {
                self.count(&counts, Stage::Sent);
            }
            let last = rows.last().expect("non-empty").seq;
            let n = rows.len() as u64;
            match outcome {
                Outcome::Accepted => {
                    self.count(&counts, Stage::Acked);
                    attempt = 0;
                    self.source.stats.connected.store(1, Ordering::Relaxed);
                    self.source
                        .intake
                        .ack_many(rows.iter().map(|r| r.seq).collect());
                    self.source.stats.sent.fetch_add(n, Ordering::Relaxed);
                    self.source.stats.acked.fetch_add(n, Ordering::Relaxed);
                    link.done(from, last, rows.len() < self.config.batch_size);
                }
                Outcome::Rejected { status, body } => {
                    tracing::warn!(
                        status,
                        records = rows.len(),
                        "upstream http: batch rejected; moved to dead letters (see `perch buffer dead`)"
                    );
                    let seqs = rows.iter().map(|r| r.seq).collect();
                    self.source.intake.dead_letter(seqs, status, body);
                    self.source
                        .stats
                        .dead_lettered
                        .fetch_add(n, Ordering::Relaxed);
                    link.done(from, last, rows.len() < self.config.batch_size);
                }
                Outcome::Retry(why, _) => {
                    // The link is down: what was committed until the next
                    // attempt is backlog.
                    link_up = true;
                    let wait = self.source.failed(&why, &mut attempt);
                    tracing::warn!(error = %why, retry_in = ?wait, "upstream http: batch not accepted");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.changed() => return,
                    }
                }
            }
        }
    }

    /// The batch to POST next: live records first when the order says so,
    /// else the backlog if its pace allows; or how long to wait.
    async fn next_batch(&self, link: &mut Link) -> rusqlite::Result<Next> {
        loop {
            let backlog_left = !link.backlog.is_empty();
            if link.order == DrainOrder::LiveFirst || !backlog_left {
                if let Got::Rows(rows) = self.read(Read::Between(link.live, i64::MAX)).await? {
                    if !rows.is_empty() {
                        return Ok(Next::Batch(rows, Lane::Live));
                    }
                }
            }
            let Some(&range) = link.backlog.ranges.front() else {
                return Ok(Next::Wait(None));
            };
            if let Some(at) = link.pacer.wait_until(Instant::now()) {
                return Ok(Next::Wait(Some(at)));
            }
            if let Got::Rows(rows) = self.read(Read::Between(range.0, range.1)).await? {
                if !rows.is_empty() {
                    return Ok(Next::Batch(rows, Lane::Backlog));
                }
            }
            link.backlog.read_up_to(None, true);
        }
    }

    async fn read(&self, what: Read) -> rusqlite::Result<Got> {
        let reader = self.source.reader.clone();
        let limit = self.config.batch_size;
        tokio::task::spawn_blocking(move || {
            let reader = reader.lock().expect("reader");
            match what {
                Read::Newest => reader.newest_seq().map(Got::Newest),
                Read::Between(after, until) => reader.between(after, until, limit).map(Got::Rows),
            }
        })
        .await
        .expect("reader task")
    }

    /// Records and body bytes of a batch per stream: bytes are shared out
    /// by record count (the body is one, maybe gzipped, document).
    fn counts(&self, rows: &[StoredRecord], body: u64) -> Vec<(Slot, u64, u64)> {
        let totals = &self.source.intake.stats().links;
        let mut per: Vec<(&str, u64)> = Vec::new();
        for r in rows {
            match per.iter_mut().find(|(s, _)| *s == r.stream) {
                Some((_, n)) => *n += 1,
                None => per.push((&r.stream, 1)),
            }
        }
        let all = rows.len().max(1) as u64;
        let mut out: Vec<(Slot, u64, u64)> = per
            .iter()
            .map(|&(stream, n)| {
                let slot = totals.slot(&self.source.destination, stream);
                (slot, n, body * n / all)
            })
            .collect();
        let shared: u64 = out.iter().map(|c| c.2).sum();
        if let Some(first) = out.first_mut() {
            first.2 += body - shared;
        }
        out
    }

    fn count(&self, counts: &[(Slot, u64, u64)], stage: Stage) {
        let totals = &self.source.intake.stats().links;
        for &(slot, records, bytes) in counts {
            totals.add(slot, stage, records, bytes);
        }
    }
}

/// Where the HTTP delivery is in the buffer.
struct Link {
    order: DrainOrder,
    pacer: Pacer,
    backlog: Backlog,
    /// Live records up to here were delivered (or dead-lettered).
    live: i64,
}

impl Link {
    fn new(config: super::pacing::DrainConfig) -> Link {
        Link {
            order: config.order,
            pacer: Pacer::new(&config),
            backlog: Backlog::default(),
            live: 0,
        }
    }

    /// A batch of `lane` up to `last` is done with; `short`: the read came
    /// back with less than a batch.
    fn done(&mut self, lane: Lane, last: i64, short: bool) {
        match lane {
            Lane::Live => self.live = last,
            Lane::Backlog => self.backlog.read_up_to(Some(last), short),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    Live,
    Backlog,
}

enum Next {
    Batch(Vec<StoredRecord>, Lane),
    /// Nothing to send now: wait for new records, or until the backlog's
    /// pace allows the next batch.
    Wait(Option<Instant>),
}

enum Read {
    Newest,
    Between(i64, i64),
}

enum Got {
    Newest(i64),
    Rows(Vec<StoredRecord>),
}

fn post(agent: &ureq::Agent, config: &HttpUpstreamConfig, body: Vec<u8>) -> Outcome {
    let mut request = agent
        .post(&config.url)
        .header("Content-Type", "application/cloudevents-batch+json");
    if config.gzip {
        request = request.header("Content-Encoding", "gzip");
    }
    if !config.bearer_token.is_empty() {
        request = request.header("Authorization", &format!("Bearer {}", config.bearer_token));
    }
    match request.send(&body[..]) {
        Err(e) => Outcome::Retry(e.to_string(), false),
        Ok(mut response) => {
            let status = response.status().as_u16();
            let text = response
                .body_mut()
                .with_config()
                .limit(4096)
                .read_to_string()
                .unwrap_or_default();
            match status {
                200..=299 => Outcome::Accepted,
                408 | 429 | 500..=599 => Outcome::Retry(format!("HTTP {status}: {text}"), true),
                _ => Outcome::Rejected { status, body: text },
            }
        }
    }
}

/// A CloudEvents 1.0 JSON batch of `rows`, gzipped if asked.
pub fn cloud_events(gateway: &str, rows: &[StoredRecord], gzip: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(rows.len() * 256);
    out.push(b'[');
    for (i, r) in rows.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let kind = match r.kind {
            KIND_AGGREGATE => "aggregate",
            KIND_SUMMARY => "summary",
            _ => "record",
        };
        let _ = write!(
            out,
            "{{\"specversion\":\"1.0\",\"id\":{},\"source\":{},\"type\":\"io.perch.{kind}\",\
             \"subject\":{},\"time\":\"{}\",",
            serde_json::to_string(&format!("{gateway}-{}", r.seq)).expect("string"),
            serde_json::to_string(&format!("perch/{gateway}")).expect("string"),
            serde_json::to_string(&r.stream).expect("string"),
            rfc3339(r.created_ms),
        );
        if serde_json::from_slice::<serde::de::IgnoredAny>(&r.payload).is_ok() {
            out.extend_from_slice(b"\"datacontenttype\":\"application/json\",\"data\":");
            out.extend_from_slice(&r.payload);
        } else {
            let text = String::from_utf8_lossy(&r.payload);
            let _ = write!(
                out,
                "\"datacontenttype\":\"text/plain\",\"data\":{}",
                serde_json::to_string(&text).expect("string")
            );
        }
        out.push(b'}');
    }
    out.push(b']');
    if !gzip {
        return out;
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&out).expect("writing to memory");
    gz.finish().expect("writing to memory")
}

/// UTC time in RFC 3339 with milliseconds, from Unix milliseconds.
pub fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_matches_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(1_795_305_600_000), "2026-11-22T00:00:00.000Z");
    }

    #[test]
    fn a_batch_is_valid_cloud_events_json_and_gzips() {
        let rows = vec![
            StoredRecord {
                seq: 1,
                stream: "alerts".into(),
                kind: 0,
                created_ms: 0,
                payload: br#"{"t":31}"#.to_vec(),
            },
            StoredRecord {
                seq: 2,
                stream: "aggregates".into(),
                kind: KIND_AGGREGATE,
                created_ms: 0,
                payload: b"plain".to_vec(),
            },
        ];
        let body = cloud_events("gw", &rows, false);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v[0]["specversion"], "1.0");
        assert_eq!(v[0]["id"], "gw-1");
        assert_eq!(v[0]["data"]["t"], 31);
        assert_eq!(v[1]["type"], "io.perch.aggregate");
        assert_eq!(v[1]["data"], "plain");
        let gz = cloud_events("gw", &rows, true);
        let mut text = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut text).unwrap();
        assert_eq!(text, body);
    }
}
