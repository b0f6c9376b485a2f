//! `/metrics`: every counter in Prometheus text format (version 0.0.4).
//!
//! Nothing here runs per event: the stages count with relaxed atomics as
//! they go, and this module reads them when Prometheus scrapes.

use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::Sources;
use crate::functions::dispatch::{FunctionHandle, RunState, ERROR_KINDS};
use crate::telemetry::DURATION_BOUNDS_NS;

/// Renders every family. `functions` are the handles at scrape time;
/// `drain_rate` comes from the sampler.
pub fn render(sources: &Sources, functions: &[Arc<FunctionHandle>], drain_rate: f64) -> String {
    let mut m = Metrics(String::with_capacity(8 * 1024 + functions.len() * 2048));
    broker(&mut m, sources);
    for_functions(&mut m, functions);
    buffer(&mut m, sources);
    aggregate(&mut m, sources);
    upstream(&mut m, sources, drain_rate);
    process(&mut m, sources);
    m.0
}

struct Metrics(String);

impl Metrics {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// One sample; `labels` is the inside of `{}`, already escaped.
    fn value(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        if labels.is_empty() {
            let _ = writeln!(self.0, "{name} {value}");
        } else {
            let _ = writeln!(self.0, "{name}{{{labels}}} {value}");
        }
    }

    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.value(name, "", value);
    }
}

/// Escapes a label value (backslash, quote, newline).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn broker(m: &mut Metrics, s: &Sources) {
    let t = &s.traffic;
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    m.single(
        "perch_broker_connections",
        "gauge",
        "MQTT clients connected now (logged in; the gateway's own links not included).",
        get(&t.connections),
    );
    m.single(
        "perch_broker_connections_total",
        "counter",
        "MQTT clients that logged in since the start.",
        get(&t.connections_total),
    );
    m.single(
        "perch_broker_messages_received_total",
        "counter",
        "PUBLISH packets received from MQTT clients and routed.",
        get(&t.messages_in),
    );
    m.single(
        "perch_broker_messages_sent_total",
        "counter",
        "PUBLISH packets sent to MQTT clients.",
        get(&t.messages_out),
    );
    m.single(
        "perch_broker_messages_too_large_total",
        "counter",
        "PUBLISH packets not sent to an MQTT 5.0 client because they exceeded its Maximum Packet Size.",
        get(&t.messages_too_large),
    );
    m.single(
        "perch_broker_bytes_received_total",
        "counter",
        "Bytes of MQTT packets read from clients.",
        get(&t.bytes_in),
    );
    m.single(
        "perch_broker_bytes_sent_total",
        "counter",
        "Bytes of MQTT packets written to clients.",
        get(&t.bytes_out),
    );
    let r = &s.refusals;
    m.family(
        "perch_broker_refused_total",
        "counter",
        "What the broker refused: logins, publishes outside a client's ACL, subscriptions \
         (outside the ACL or past broker.max_filters; the latter also as what=\"filter\"), \
         QoS 1/2 publishes the gateway could not commit (what=\"not_kept\": the buffer or \
         the retained store full or failing; refused, never acknowledged).",
    );
    for (what, v) in [
        ("login", &r.logins),
        ("publish", &r.publishes),
        ("subscribe", &r.subscriptions),
        ("filter", &r.filters),
        ("not_kept", &r.not_kept),
    ] {
        m.value(
            "perch_broker_refused_total",
            &format!("what=\"{what}\""),
            get(v),
        );
    }
    m.single(
        "perch_broker_logins_throttled_total",
        "counter",
        "Logins refused without a password check because \
         broker.max_failed_logins_per_minute was spent (also counted as what=\"login\" above).",
        get(&r.logins_throttled),
    );
    m.single(
        "perch_broker_connections_shed_total",
        "counter",
        "Connections closed before their CONNECT was read because \
         broker.max_pending_connections were still waiting for theirs.",
        get(&r.connections_shed),
    );
}

/// A function with its labels, for the families below.
struct F<'a> {
    h: &'a FunctionHandle,
    labels: String,
    running: bool,
}

fn for_functions(m: &mut Metrics, functions: &[Arc<FunctionHandle>]) {
    let fs: Vec<F> = functions
        .iter()
        .map(|h| {
            let status = h.status();
            F {
                h,
                labels: format!(
                    "function=\"{}\",version=\"{}\"",
                    escape(&h.name),
                    escape(&status.version)
                ),
                running: status.state == RunState::Running,
            }
        })
        .collect();
    function_runs(m, &fs);
    function_outputs(m, &fs);
}

/// Whether each function runs, its invocations, errors, durations, fuel.
fn function_runs(m: &mut Metrics, fs: &[F]) {
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    m.family(
        "perch_function_up",
        "gauge",
        "1 while the function runs, 0 when it is stopped (circuit breaker) or starting.",
    );
    for f in fs {
        m.value("perch_function_up", &f.labels, u8::from(f.running));
    }
    m.family(
        "perch_function_invocations_total",
        "counter",
        "Handler calls (events and ticks), successful or not.",
    );
    for f in fs {
        m.value(
            "perch_function_invocations_total",
            &f.labels,
            get(&f.h.counters.invocations),
        );
    }
    m.family(
        "perch_function_errors_total",
        "counter",
        "Failed invocations by kind: a trap (out_of_fuel, memory_limit, unreachable, ...), \
         handler_error (non-zero return), timeout (stopped at its wall-clock limit) or \
         event_too_large.",
    );
    for f in fs {
        for (kind, n) in ERROR_KINDS.iter().zip(&f.h.counters.errors_by_kind) {
            let n = get(n);
            if n > 0 {
                m.value(
                    "perch_function_errors_total",
                    &format!("{},kind=\"{kind}\"", f.labels),
                    n,
                );
            }
        }
    }
    m.family(
        "perch_function_duration_seconds",
        "histogram",
        "How long invocations took.",
    );
    for f in fs {
        let (cumulative, sum_ns) = f.h.counters.duration.snapshot();
        for (i, count) in cumulative.iter().enumerate() {
            let le = match DURATION_BOUNDS_NS.get(i) {
                Some(ns) => format!("{}", *ns as f64 / 1e9),
                None => "+Inf".to_owned(),
            };
            m.value(
                "perch_function_duration_seconds_bucket",
                &format!("{},le=\"{le}\"", f.labels),
                count,
            );
        }
        m.value(
            "perch_function_duration_seconds_sum",
            &f.labels,
            sum_ns as f64 / 1e9,
        );
        m.value(
            "perch_function_duration_seconds_count",
            &f.labels,
            cumulative[cumulative.len() - 1],
        );
    }
    m.family(
        "perch_function_fuel_used_total",
        "counter",
        "Fuel (wasm instructions, roughly) burnt by invocations.",
    );
    for f in fs {
        m.value(
            "perch_function_fuel_used_total",
            &f.labels,
            get(&f.h.counters.fuel_used),
        );
    }
}

/// Each function's queue, drops, refused outputs and dropped log lines.
fn function_outputs(m: &mut Metrics, fs: &[F]) {
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    m.family(
        "perch_function_queue_depth",
        "gauge",
        "Events waiting in the function's queue.",
    );
    for f in fs {
        m.value("perch_function_queue_depth", &f.labels, f.h.queued());
    }
    m.family(
        "perch_function_dropped_total",
        "counter",
        "Events dropped because the function's queue was full, by its queue policy.",
    );
    for f in fs {
        m.value(
            "perch_function_dropped_total",
            &format!("{},policy=\"{}\"", f.labels, f.h.queue_policy()),
            get(&f.h.counters.dropped),
        );
    }
    m.family(
        "perch_function_refused_outputs_total",
        "counter",
        "Outputs the host refused: denied (publish outside publish.allow), limit \
         (per-invocation output limits), full (the buffer's intake was full).",
    );
    for f in fs {
        let o = &f.h.counters.outputs;
        for (reason, v) in [
            ("denied", &o.denied),
            ("limit", &o.limited),
            ("full", &o.full),
        ] {
            m.value(
                "perch_function_refused_outputs_total",
                &format!("{},reason=\"{reason}\"", f.labels),
                get(v),
            );
        }
    }
    m.family(
        "perch_function_log_lines_dropped_total",
        "counter",
        "Log lines of the function dropped by the per-function rate limit.",
    );
    for f in fs {
        m.value(
            "perch_function_log_lines_dropped_total",
            &f.labels,
            get(&f.h.counters.outputs.log.dropped),
        );
    }
}

fn buffer(m: &mut Metrics, s: &Sources) {
    let b = s.buffer.stats();
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let records = get(&b.records);
    m.single(
        "perch_buffer_records",
        "gauge",
        "Records waiting for upstream.",
        records,
    );
    m.single(
        "perch_buffer_bytes",
        "gauge",
        "Bytes of records waiting for upstream.",
        get(&b.bytes),
    );
    let oldest = b.oldest_ms.load(Ordering::Relaxed);
    let age = if oldest > 0 && records > 0 {
        (crate::kit::clock::now_ms() - oldest).max(0) as f64 / 1000.0
    } else {
        0.0
    };
    m.single(
        "perch_buffer_oldest_record_age_seconds",
        "gauge",
        "Age of the oldest record waiting (0 when empty).",
        age,
    );
    m.single(
        "perch_buffer_commits_total",
        "counter",
        "SQLite transactions committed.",
        get(&b.commits),
    );
    m.single(
        "perch_buffer_committed_records_total",
        "counter",
        "Records committed to the buffer.",
        get(&b.committed),
    );
    m.single(
        "perch_buffer_acked_records_total",
        "counter",
        "Records deleted after upstream acknowledged them.",
        get(&b.acked),
    );
    m.family(
        "perch_buffer_dropped_records_total",
        "counter",
        "Records the buffer dropped: by when_full (drop_oldest, drop_newest, degraded into \
         summaries), by max_age_s (expired), or refused at intake (backlog).",
    );
    for (reason, v) in [
        ("drop_oldest", &b.dropped_oldest),
        ("drop_newest", &b.dropped_newest),
        ("degraded", &b.degraded),
        ("expired", &b.expired),
        ("backlog", &b.refused_backlog),
    ] {
        m.value(
            "perch_buffer_dropped_records_total",
            &format!("reason=\"{reason}\""),
            get(v),
        );
    }
    m.single(
        "perch_buffer_dead_letters_total",
        "counter",
        "Records the HTTP upstream refused for good (4xx), kept as dead letters.",
        get(&s.upstream.dead_lettered),
    );
    m.single(
        "perch_buffer_write_errors_total",
        "counter",
        "Failed commits (disk full, read-only); the batch is kept and retried.",
        get(&b.write_errors),
    );
    m.single(
        "perch_buffer_writable",
        "gauge",
        "1 when the last commit succeeded.",
        u8::from(!b.commit_failing.load(Ordering::Relaxed)),
    );
    m.single(
        "perch_buffer_disk_free_bytes",
        "gauge",
        "Free bytes on the data directory's file system, measured at start and before each commit.",
        get(&b.disk_free),
    );
    m.single(
        "perch_buffer_disk_full",
        "gauge",
        "1 while the buffer is full because the disk is at buffer.min_free_bytes.",
        u8::from(b.disk_full.load(Ordering::Relaxed)),
    );
}

/// The aggregate windows the buffer's writer hosts.
fn aggregate(m: &mut Metrics, s: &Sources) {
    let b = s.buffer.stats();
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    m.single(
        "perch_aggregate_windows_open",
        "gauge",
        "Aggregate windows open now.",
        get(&b.open_windows),
    );
    m.single(
        "perch_aggregate_windows_closed_total",
        "counter",
        "Aggregate windows closed and written to the buffer.",
        get(&b.aggregates),
    );
    m.family(
        "perch_aggregate_late_events_total",
        "counter",
        "Emitted values counted, not merged, by reason: after_grace (their window was \
         written, or its end plus aggregate.grace_ms has passed) or ahead (their time was \
         more than aggregate.max_ahead_ms ahead of the gateway's clock).",
    );
    for (reason, v) in [("after_grace", &b.late_events), ("ahead", &b.ahead_events)] {
        m.value(
            "perch_aggregate_late_events_total",
            &format!("reason=\"{reason}\""),
            get(v),
        );
    }
    m.single(
        "perch_aggregate_refused_total",
        "counter",
        "Emitted metrics refused (aggregate.max_series reached).",
        get(&b.refused_emits),
    );
}

fn upstream(m: &mut Metrics, s: &Sources, drain_rate: f64) {
    let u = &s.upstream;
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    m.single(
        "perch_upstream_connected",
        "gauge",
        "1 while the upstream link is connected.",
        get(&u.connected),
    );
    m.single(
        "perch_upstream_connects_total",
        "counter",
        "Successful connections to the upstream.",
        get(&u.connects),
    );
    m.single(
        "perch_upstream_retries_total",
        "counter",
        "Failed upstream attempts (connection or delivery errors), each retried after a backoff.",
        get(&u.connection_errors),
    );
    m.single(
        "perch_upstream_sent_total",
        "counter",
        "Records sent upstream (resends after a reconnect included).",
        get(&u.sent),
    );
    m.single(
        "perch_upstream_acked_total",
        "counter",
        "Records the upstream acknowledged (PUBACK or HTTP 2xx).",
        get(&u.acked),
    );
    m.single(
        "perch_upstream_captured_total",
        "counter",
        "Messages on upstream.forward_topics captured into the buffer.",
        get(&u.captured),
    );
    m.single(
        "perch_upstream_capture_lost_total",
        "counter",
        "Messages on upstream.forward_topics the broker dropped before the capture read them \
         (it fell behind by more than broker.max_message_log_bytes / max_filters).",
        get(&u.capture_lost),
    );
    m.single(
        "perch_upstream_drain_rate",
        "gauge",
        "Records acknowledged per second over the last sample (a few seconds).",
        drain_rate,
    );
    link_totals(m, s);
}

/// Records and bytes per destination and stream: counters that go on from
/// the totals persisted in `buffer.db`, so they do not reset at a restart.
fn link_totals(m: &mut Metrics, s: &Sources) {
    let rows = s.buffer.stats().links.snapshot();
    let labels: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "destination=\"{}\",stream=\"{}\"",
                escape(&r.destination),
                escape(&r.stream)
            )
        })
        .collect();
    for (name, help, pick) in [
        (
            "perch_upstream_link_records_total",
            "Records per upstream destination and stream: offered (handed to the link, resends \
             included), sent (written to it), acked (acknowledged). Kept across restarts.",
            (|t: &crate::buffer::Totals| [t.offered_records, t.sent_records, t.acked_records])
                as fn(&crate::buffer::Totals) -> [u64; 3],
        ),
        (
            "perch_upstream_link_bytes_total",
            "Payload bytes (MQTT message payloads, HTTP request bodies as sent) per upstream \
             destination and stream, by stage as perch_upstream_link_records_total. Kept across \
             restarts.",
            |t: &crate::buffer::Totals| [t.offered_bytes, t.sent_bytes, t.acked_bytes],
        ),
    ] {
        m.family(name, "counter", help);
        for (r, l) in rows.iter().zip(&labels) {
            for (stage, v) in ["offered", "sent", "acked"].iter().zip(pick(&r.totals)) {
                m.value(name, &format!("{l},stage=\"{stage}\""), v);
            }
        }
    }
}

fn process(m: &mut Metrics, s: &Sources) {
    let p = ProcessStats::read();
    if let Some(rss) = p.rss_bytes {
        m.single(
            "perch_process_resident_memory_bytes",
            "gauge",
            "Resident memory of the perch process.",
            rss,
        );
    }
    if let Some(cpu) = p.cpu_seconds {
        m.single(
            "perch_process_cpu_seconds_total",
            "counter",
            "CPU time (user + system) of the perch process.",
            cpu,
        );
    }
    m.single(
        "perch_process_uptime_seconds",
        "gauge",
        "Seconds since the gateway started.",
        s.started.elapsed().as_secs_f64(),
    );
    m.family(
        "perch_build_info",
        "gauge",
        "Always 1; the labels say which perch this is.",
    );
    m.value(
        "perch_build_info",
        &format!(
            "version=\"{}\",gateway=\"{}\"",
            env!("CARGO_PKG_VERSION"),
            escape(&s.id)
        ),
        1,
    );
}

/// The process's own resource use, from /proc (Linux).
#[derive(Debug, Default)]
pub struct ProcessStats {
    pub rss_bytes: Option<u64>,
    pub cpu_seconds: Option<f64>,
}

impl ProcessStats {
    pub fn read() -> ProcessStats {
        let rss_bytes = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
                let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
                Some(kb * 1024)
            });
        // Fields 14 and 15 (utime, stime) in clock ticks; USER_HZ is 100 on
        // every Linux architecture perch targets. The command name (field
        // 2) may hold spaces, so count from the closing parenthesis.
        let cpu_seconds = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| {
                let rest = &s[s.rfind(')')? + 2..];
                let mut f = rest.split_whitespace().skip(11);
                let utime: u64 = f.next()?.parse().ok()?;
                let stime: u64 = f.next()?.parse().ok()?;
                Some((utime + stime) as f64 / 100.0)
            });
        ProcessStats {
            rss_bytes,
            cpu_seconds,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_stats_are_read_from_proc() {
        let p = ProcessStats::read();
        assert!(p.rss_bytes.unwrap() > 1024 * 1024, "{p:?}");
        assert!(p.cpu_seconds.unwrap() >= 0.0, "{p:?}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
