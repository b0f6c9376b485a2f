//! The gateway's summary: what the status page, `/status.json`, the
//! retained `perch/<id>/status` topic and `perch status` show.
//!
//! A sampler task reads the counters every few seconds, keeps a short
//! history (buffer depth and oldest age over the last
//! [`HISTORY_S`] seconds, for the page's chart) and the rates derived from
//! two samples (events per second per function, upstream drain rate), and
//! publishes the summary, retained, on the local broker every
//! `admin.status_interval_s`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttd::protocol::{Packet, Publish};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::Sources;
use crate::functions::control::FunctionInfo;

/// How far back the history goes.
pub const HISTORY_S: u64 = 600;
/// Longest time between two samples.
pub const MAX_SAMPLE_PERIOD_S: u64 = 5;

/// The summary, as JSON on the status topic and `/status.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub gateway: String,
    pub version: String,
    /// When this summary was made (ms since the epoch).
    pub time_ms: i64,
    pub uptime_s: u64,
    pub broker: BrokerSummary,
    pub functions: Vec<FunctionSummary>,
    pub buffer: BufferSummary,
    pub upstream: UpstreamSummary,
    /// Buffer depth over the last minutes (on `/status.json` only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<Sample>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BrokerSummary {
    /// `mqtt://addr (name)` per listener.
    pub listeners: Vec<String>,
    pub connections: u64,
    pub messages_in: u64,
    pub messages_out: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FunctionSummary {
    pub name: String,
    pub version: String,
    /// `running`, `stopped` or `starting`.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub invocations: u64,
    pub errors: u64,
    pub dropped: u64,
    pub queued: usize,
    /// Invocations per second over the last sample period.
    pub rate_per_s: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BufferSummary {
    pub records: u64,
    pub bytes: u64,
    /// Age of the oldest record waiting; `None` when empty.
    pub oldest_age_s: Option<f64>,
    /// Records dropped by the bounds (oldest, newest, expired, refused).
    pub dropped: u64,
    /// Whether the last commit succeeded.
    pub writable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UpstreamSummary {
    /// `mqtt`, `http` or `none`.
    pub kind: String,
    /// Where records go: `mqtt://host:port` or the HTTP endpoint (absent
    /// without an upstream, and from gateways before this field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    pub connected: bool,
    pub acked: u64,
    /// Records acknowledged per second over the last sample period.
    pub drain_rate_per_s: f64,
    /// Records and bytes offered, sent and acknowledged per destination
    /// and stream, kept across restarts (absent from gateways before it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destinations: Vec<super::links::DestinationSummary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// One point of the history.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Sample {
    pub time_ms: i64,
    pub records: u64,
    pub oldest_age_s: f64,
}

/// What the sampler derived; read by the HTTP handlers.
#[derive(Debug, Default)]
pub struct Derived {
    history: VecDeque<Sample>,
    /// Invocations per second by function name.
    rates: HashMap<String, f64>,
    drain_rate: f64,
    /// The previous sample's counters, to derive rates from.
    last: Option<(Instant, HashMap<String, u64>, u64)>,
}

impl Derived {
    pub fn drain_rate(&self) -> f64 {
        self.drain_rate
    }

    /// Takes a sample: history point and rates.
    fn sample(&mut self, sources: &Sources, functions: &[FunctionInfo], period: Duration) {
        let now = Instant::now();
        let acked = sources.upstream.acked.load(Ordering::Relaxed);
        let counts: HashMap<String, u64> = functions
            .iter()
            .map(|f| (f.name.clone(), f.invocations))
            .collect();
        if let Some((then, before, acked_before)) = &self.last {
            let secs = now.duration_since(*then).as_secs_f64().max(1e-3);
            self.rates = counts
                .iter()
                .map(|(name, n)| {
                    let before = before.get(name).copied().unwrap_or(0);
                    (name.clone(), n.saturating_sub(before) as f64 / secs)
                })
                .collect();
            self.drain_rate = acked.saturating_sub(*acked_before) as f64 / secs;
        }
        self.last = Some((now, counts, acked));
        let (records, oldest_age_s) = buffer_depth(sources);
        self.history.push_back(Sample {
            time_ms: crate::kit::clock::now_ms(),
            records,
            oldest_age_s: oldest_age_s.unwrap_or(0.0),
        });
        let keep = (HISTORY_S / period.as_secs().max(1)) as usize + 1;
        while self.history.len() > keep {
            self.history.pop_front();
        }
    }
}

fn buffer_depth(sources: &Sources) -> (u64, Option<f64>) {
    let stats = sources.buffer.stats();
    let records = stats.records.load(Ordering::Relaxed);
    let oldest = stats.oldest_ms.load(Ordering::Relaxed);
    let age = (oldest > 0 && records > 0)
        .then(|| (crate::kit::clock::now_ms() - oldest).max(0) as f64 / 1000.0);
    (records, age)
}

/// Builds the summary from the counters, the function list and what the
/// sampler derived.
pub fn summary(
    sources: &Sources,
    functions: Vec<FunctionInfo>,
    derived: &Derived,
    with_history: bool,
) -> Summary {
    let t = &sources.traffic;
    let b = sources.buffer.stats();
    let u = &sources.upstream;
    let (records, oldest_age_s) = buffer_depth(sources);
    let last = |m: &Mutex<Option<String>>| m.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Summary {
        gateway: sources.id.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        time_ms: crate::kit::clock::now_ms(),
        uptime_s: sources.started.elapsed().as_secs(),
        broker: BrokerSummary {
            listeners: sources.listeners.clone(),
            connections: t.connections.load(Ordering::Relaxed),
            messages_in: t.messages_in.load(Ordering::Relaxed),
            messages_out: t.messages_out.load(Ordering::Relaxed),
        },
        functions: functions
            .into_iter()
            .map(|f| FunctionSummary {
                rate_per_s: derived.rates.get(&f.name).copied().unwrap_or(0.0),
                name: f.name,
                version: f.version,
                state: f.state,
                reason: f.reason,
                invocations: f.invocations,
                errors: f.errors,
                dropped: f.dropped,
                queued: f.queued,
                last_error: f.last_error,
            })
            .collect(),
        buffer: BufferSummary {
            records,
            bytes: b.bytes.load(Ordering::Relaxed),
            oldest_age_s,
            dropped: b.dropped_oldest.load(Ordering::Relaxed)
                + b.dropped_newest.load(Ordering::Relaxed)
                + b.expired.load(Ordering::Relaxed)
                + b.refused_backlog.load(Ordering::Relaxed),
            writable: !b.commit_failing.load(Ordering::Relaxed),
            last_error: last(&b.last_error),
        },
        upstream: UpstreamSummary {
            kind: sources.upstream_kind.to_owned(),
            endpoint: sources.upstream_endpoint.clone(),
            connected: u.connected.load(Ordering::Relaxed) == 1,
            acked: u.acked.load(Ordering::Relaxed),
            drain_rate_per_s: derived.drain_rate,
            destinations: super::links::summarize(b.links.snapshot()),
            last_error: last(&u.last_error),
        },
        history: if with_history {
            derived.history.iter().copied().collect()
        } else {
            Vec::new()
        },
    }
}

/// The retained status topic of gateway `id`.
pub fn topic(id: &str) -> String {
    format!("perch/{id}/status")
}

/// Where a client asks for a summary now: `perch/<id>/status/refresh`
/// (any payload). `perch status` does, so it never shows a summary up to
/// `status_interval_s` old (after `perch fn rollback`, say).
pub fn refresh_topic(id: &str) -> String {
    format!("perch/{id}/status/refresh")
}

/// Samples every `min(status_interval_s, 5)` seconds and publishes the
/// summary every `status_interval_s`, the first time at once, and at once
/// when asked on [`refresh_topic`]. Ends when `stop` turns true.
pub async fn run_sampler(
    sources: Arc<Sources>,
    derived: Arc<Mutex<Derived>>,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let period = interval.min(Duration::from_secs(MAX_SAMPLE_PERIOD_S));
    let topic = Bytes::from(topic(&sources.id));
    // The link's receiver is read for refresh requests; a link whose
    // receiver is gone looks dead to the router.
    let mut link = match sources.links.open("admin-status") {
        Ok(mut link) => {
            if let Err(e) = link.0.subscribe(refresh_topic(&sources.id)) {
                tracing::warn!(error = %e, "status topic: cannot subscribe to refresh requests");
            }
            Some(link)
        }
        Err(e) => {
            tracing::error!(error = %e, "status topic: cannot open a broker link; not publishing");
            None
        }
    };
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_publish = Instant::now();
    loop {
        let asked = tokio::select! {
            _ = ticks.tick() => false,
            asked = refresh_requested(&mut link) => asked,
            _ = stop.changed() => return,
        };
        let observer = sources.functions.clone();
        let Ok(functions) = tokio::task::spawn_blocking(move || observer.list()).await else {
            continue;
        };
        let payload = {
            let mut d = derived.lock().unwrap_or_else(|p| p.into_inner());
            // A refresh publishes without sampling, so the rates and the
            // history keep their period.
            if !asked {
                d.sample(&sources, &functions, period);
                if Instant::now() < next_publish {
                    continue;
                }
                next_publish = Instant::now() + interval - period / 2;
            }
            serde_json::to_vec(&summary(&sources, functions, &d, false)).unwrap_or_default()
        };
        if let Some((tx, _rx)) = link.as_mut() {
            let publish = Publish::new(topic.clone(), Bytes::from(payload), true);
            if let Err(e) = tx.send(Packet::Publish(publish, None)).await {
                tracing::warn!(error = %e, "status topic: publish failed");
            }
        }
    }
}

/// Waits for a request on the refresh topic: true when one came, false
/// when the link failed (it is dropped then, and this never returns
/// again). Never returns without a link.
async fn refresh_requested(
    link: &mut Option<(rumqttd::local::LinkTx, rumqttd::local::LinkRx)>,
) -> bool {
    let Some((_, rx)) = link.as_mut() else {
        return std::future::pending().await;
    };
    loop {
        match rx.next().await {
            Ok(Some(rumqttd::Notification::Forward(_))) => return true,
            // The router pauses a link with many pending notifications
            // until it says it is ready again.
            Ok(Some(rumqttd::Notification::Unschedule)) if rx.wake().await.is_ok() => {}
            Ok(Some(rumqttd::Notification::Unschedule)) | Err(_) => {
                tracing::warn!("status topic: the broker link closed; publishing stopped");
                *link = None;
                return false;
            }
            Ok(_) => {}
        }
    }
}

/// Why `perch status` could not get the summary.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(
        "cannot reach the gateway's broker at {addr}: {message}; is perch running? (--broker)"
    )]
    Connect { addr: String, message: String },
    #[error(
        "no status on {topic} within {timeout:?}: is a gateway with id {gateway:?} running \
         on this broker? Pass its id with --gateway (gateway.id; the host name when unset)"
    )]
    Timeout {
        topic: String,
        gateway: String,
        timeout: Duration,
    },
    /// The broker refused the login: who, what it needs, which flags.
    #[error("{0}")]
    Refused(String),
    #[error("the status on {topic} is not a perch summary: {message}")]
    Unreadable { topic: String, message: String },
}

/// How long `perch status` waits for the summary it asked for before it
/// shows the retained one.
const REFRESH_WAIT: Duration = Duration::from_secs(1);

/// Reads the summary of a gateway from its broker: the one it asks the
/// gateway for on [`refresh_topic`], or else the retained one.
pub async fn fetch(endpoint: &crate::functions::control::Endpoint) -> Result<Summary, FetchError> {
    use rumqttc::{AsyncClient, Event, Packet as P, QoS};
    let topic = topic(&endpoint.gateway);
    let options = endpoint.mqtt_options(4 * 1024 * 1024, 64 * 1024);
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    let connect_err = |message: String| FetchError::Connect {
        addr: endpoint.broker.clone(),
        message,
    };
    // The retained summary may be up to `status_interval_s` old: ask for
    // one made now and take the freshest that arrives. A gateway that does
    // not answer (an older perch, or a login that may not publish under
    // `perch/`) leaves the retained one, after REFRESH_WAIT.
    let wait = async {
        client
            .subscribe(topic.as_str(), QoS::AtMostOnce)
            .await
            .map_err(|e| connect_err(e.to_string()))?;
        let mut best: Option<Summary> = None;
        let mut give_up = None;
        // REFRESH_WAIT passed with nothing at all: take whatever comes.
        let mut waited = false;
        loop {
            let deadline = async {
                match give_up {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            let event = tokio::select! {
                e = eventloop.poll() => e,
                _ = deadline => match best {
                    Some(s) => return Ok(s),
                    // Nothing retained either: wait on for the answer.
                    None => { give_up = None; waited = true; continue }
                },
            };
            match event {
                Ok(Event::Incoming(P::SubAck(_))) => {
                    give_up = Some(tokio::time::Instant::now() + REFRESH_WAIT);
                    let refresh = refresh_topic(&endpoint.gateway);
                    let _ = client.try_publish(refresh, QoS::AtMostOnce, false, "");
                }
                Ok(Event::Incoming(P::Publish(p))) if p.topic == topic => {
                    let s = serde_json::from_slice::<Summary>(&p.payload).map_err(|e| {
                        FetchError::Unreadable {
                            topic: topic.clone(),
                            message: e.to_string(),
                        }
                    })?;
                    // Not retained: the answer to the request, made now.
                    let fresh = !p.retain;
                    if best.as_ref().is_none_or(|b| s.time_ms >= b.time_ms) {
                        best = Some(s);
                    }
                    if fresh || waited {
                        return Ok(best.expect("just set"));
                    }
                }
                Ok(_) => {}
                Err(rumqttc::ConnectionError::ConnectionRefused(code)) => {
                    let needs =
                        format!("reading {topic} takes a login whose subscribe list covers it");
                    return Err(FetchError::Refused(crate::functions::control::refusal(
                        endpoint, code, &needs,
                    )));
                }
                Err(e) => return Err(connect_err(e.to_string())),
            }
        }
    };
    let result = tokio::time::timeout(endpoint.timeout, wait)
        .await
        .unwrap_or_else(|_| {
            Err(FetchError::Timeout {
                topic: topic.clone(),
                gateway: endpoint.gateway.clone(),
                timeout: endpoint.timeout,
            })
        });
    let _ = client.try_disconnect();
    result
}

/// The summary as the table `perch status` prints.
pub fn table(s: &Summary, now_ms: i64) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let age_s = (now_ms - s.time_ms).max(0) / 1000;
    let _ = writeln!(
        out,
        "gateway   {} (perch {}, up {}; as of {age_s} s ago)",
        s.gateway,
        s.version,
        duration(s.uptime_s)
    );
    let _ = writeln!(
        out,
        "broker    {}; {} clients; {} messages in, {} out",
        s.broker.listeners.join(", "),
        s.broker.connections,
        s.broker.messages_in,
        s.broker.messages_out
    );
    let b = &s.buffer;
    let _ = writeln!(
        out,
        "buffer    {} records, {} bytes, oldest {}; {} dropped; disk {}",
        b.records,
        b.bytes,
        b.oldest_age_s
            .map_or_else(|| "-".to_owned(), |a| duration(a as u64)),
        b.dropped,
        if b.writable {
            "writable".to_owned()
        } else {
            format!(
                "NOT writable ({})",
                b.last_error.as_deref().unwrap_or("commit failing")
            )
        }
    );
    let u = &s.upstream;
    let to = u.endpoint.as_deref().unwrap_or(&u.kind);
    let state = match (u.kind.as_str(), u.connected) {
        ("none", _) => "not configured".to_owned(),
        (_, true) => format!("{to} connected"),
        (_, false) => format!(
            "{to} DISCONNECTED{}",
            u.last_error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        ),
    };
    let _ = writeln!(
        out,
        "upstream  {state}; {} acked; {:.1} records/s",
        u.acked, u.drain_rate_per_s
    );
    super::links::table(&mut out, &u.destinations);
    let _ = writeln!(out);
    if s.functions.is_empty() {
        let _ = writeln!(out, "no functions deployed");
        return out;
    }
    let w = s
        .functions
        .iter()
        .map(|f| f.name.len())
        .max()
        .unwrap_or(0)
        .max(8);
    let v = s
        .functions
        .iter()
        .map(|f| f.version.len())
        .max()
        .unwrap_or(0)
        .max(7);
    let _ = writeln!(
        out,
        "{:<w$}  {:<v$}  {:<8}  {:>8}  {:>11}  {:>6}  {:>7}  {:>6}  LAST ERROR",
        "FUNCTION", "VERSION", "STATE", "EVENTS/S", "INVOCATIONS", "ERRORS", "DROPPED", "QUEUED"
    );
    for f in &s.functions {
        let note = f
            .reason
            .as_deref()
            .or(f.last_error.as_deref())
            .unwrap_or("");
        let _ = writeln!(
            out,
            "{:<w$}  {:<v$}  {:<8}  {:>8.1}  {:>11}  {:>6}  {:>7}  {:>6}  {note}",
            f.name, f.version, f.state, f.rate_per_s, f.invocations, f.errors, f.dropped, f.queued
        );
    }
    out
}

fn duration(s: u64) -> String {
    match s {
        0..120 => format!("{s} s"),
        120..7200 => format!("{} min", s / 60),
        _ => format!("{} h {} min", s / 3600, s % 3600 / 60),
    }
}
