//! Telemetry: what operators see. How perch logs, the metric primitives
//! the stages count with, systemd's notification protocol, and the admin
//! HTTP listener ([`admin`]: `/metrics`, `/healthz`, `/readyz`, the status
//! page and the retained status topic).
//!
//! # Logs
//!
//! One subscriber, three shapes, picked at start:
//!
//! - **journald** (`JOURNAL_STREAM` is set: systemd connected stderr to the
//!   journal): no ANSI colours, no timestamp (the journal stamps each line),
//!   and a `<N>` syslog priority prefix per line, which journald turns into
//!   the entry's priority (`journalctl -p warning` works) instead of a level
//!   word.
//! - **human** (the default): compact lines on stderr; colours only when
//!   stderr is a terminal and `NO_COLOR` is unset.
//! - **JSON lines** (`--log-format json`, also under systemd): one object per
//!   line for log shippers.
//!
//! `RUST_LOG` overrides the filter; the default keeps rumqttd's
//! per-connection chatter out. Function log lines carry `function` and
//! `version` fields and are rate-limited per function ([`LogLimiter`]).
//!
//! # Metrics
//!
//! Counters are plain atomics owned by the stage that counts (the admin
//! listener reads them at scrape time); [`Histogram`] is a fixed-bucket
//! histogram of atomics. Recording never locks and never allocates.
//!
//! # systemd
//!
//! [`systemd`] speaks sd_notify (READY=1, WATCHDOG=1) over the datagram
//! socket in `$NOTIFY_SOCKET`; without it, it does nothing.

pub mod admin;
pub mod systemd;

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};

use clap::ValueEnum;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Compact human-readable lines (journald-friendly under systemd).
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// The filter used when `RUST_LOG` is not set. rumqttd logs ordinary client
/// disconnects at error level, so it is silenced; perch logs what matters
/// about the broker itself. `RUST_LOG=info,rumqttd=warn` brings it back.
pub const DEFAULT_FILTER: &str = "info,rumqttd=off";

/// Whether systemd connected stderr to the journal.
pub fn under_journald() -> bool {
    std::env::var_os("JOURNAL_STREAM").is_some_and(|v| !v.is_empty())
}

/// Installs the global subscriber. Calling it twice is harmless (tests).
pub fn init(format: LogFormat) {
    init_with_default_filter(format, DEFAULT_FILTER);
}

/// [`init`], with another filter for when `RUST_LOG` is not set.
pub fn init_with_default_filter(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let journal = under_journald();
    let colour = !journal
        && std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(colour);
    let _ = match (format, journal) {
        (LogFormat::Json, _) => builder.json().flatten_event(true).try_init(),
        (LogFormat::Human, true) => builder
            .compact()
            .without_time()
            .event_format(Journald(
                tracing_subscriber::fmt::format()
                    .compact()
                    .without_time()
                    .with_level(false)
                    .with_target(false)
                    .with_ansi(false),
            ))
            .try_init(),
        (LogFormat::Human, false) => builder.compact().try_init(),
    };
}

/// Prefixes each line with its syslog priority (`<3>` error ... `<7>`
/// debug), which journald reads (`SyslogLevelPrefix=`, on by default).
struct Journald<F>(F);

impl<S, N, F> FormatEvent<S, N> for Journald<F>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        write!(writer, "<{}>", syslog_priority(event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

/// The syslog priority of a tracing level.
pub fn syslog_priority(level: &tracing::Level) -> u8 {
    match *level {
        tracing::Level::ERROR => 3,
        tracing::Level::WARN => 4,
        tracing::Level::INFO => 6,
        _ => 7,
    }
}

/// Upper bounds of [`Histogram`]'s buckets, in nanoseconds (the last bucket,
/// +Inf, is implicit). From 10 µs (a trivial function) to 100 ms (a function
/// near a large fuel budget).
pub const DURATION_BOUNDS_NS: [u64; 9] = [
    10_000,
    50_000,
    100_000,
    500_000,
    1_000_000,
    5_000_000,
    10_000_000,
    50_000_000,
    100_000_000,
];

/// A duration histogram: one atomic per bucket plus the sum. Recording is two
/// relaxed atomic adds; the count is the sum of the buckets, read at scrape.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Per bucket, not cumulative; the last one is +Inf.
    buckets: [AtomicU64; DURATION_BOUNDS_NS.len() + 1],
    sum_ns: AtomicU64,
}

impl Histogram {
    /// Records one duration.
    #[inline]
    pub fn observe_ns(&self, ns: u64) {
        let i = DURATION_BOUNDS_NS
            .iter()
            .position(|&b| ns <= b)
            .unwrap_or(DURATION_BOUNDS_NS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Cumulative counts per bound (Prometheus `le`), the last being +Inf
    /// (the total count), and the sum in nanoseconds.
    pub fn snapshot(&self) -> ([u64; DURATION_BOUNDS_NS.len() + 1], u64) {
        let mut out = [0u64; DURATION_BOUNDS_NS.len() + 1];
        let mut total = 0;
        for (o, b) in out.iter_mut().zip(&self.buckets) {
            total += b.load(Ordering::Relaxed);
            *o = total;
        }
        (out, self.sum_ns.load(Ordering::Relaxed))
    }
}

/// Per-function log rate limit: a token bucket of [`LogLimiter::BURST`]
/// lines refilled at [`LogLimiter::PER_SECOND`]. Owned by one function's
/// instances (one thread at a time), shared through an `Arc` so the budget
/// survives an instance being re-created after a trap. Lines over the
/// budget are counted, and the count is logged once when lines flow again.
#[derive(Debug, Default)]
pub struct LogLimiter {
    /// Tokens left, scaled by 1000 so refills need no floats.
    milli_tokens: AtomicU64,
    /// When tokens were last added (ms since the epoch); 0: never used.
    refilled_ms: AtomicU64,
    /// Lines dropped since the gateway started (for metrics).
    pub dropped: AtomicU64,
    /// Lines dropped since the last summary line.
    unreported: AtomicU64,
}

impl LogLimiter {
    /// Lines a function may log in a burst.
    pub const BURST: u64 = 100;
    /// Lines per second a function may log over time.
    pub const PER_SECOND: u64 = 20;

    /// Takes one line's token at `now_ms`. `Some(n)`: log it, and first say
    /// that `n` lines were dropped if `n > 0`. `None`: drop it (counted).
    pub fn take(&self, now_ms: u64) -> Option<u64> {
        let last = self.refilled_ms.load(Ordering::Relaxed);
        let mut tokens = self.milli_tokens.load(Ordering::Relaxed);
        if last == 0 {
            tokens = Self::BURST * 1000;
            self.refilled_ms.store(now_ms, Ordering::Relaxed);
        } else if now_ms > last {
            tokens = (tokens + (now_ms - last) * Self::PER_SECOND).min(Self::BURST * 1000);
            self.refilled_ms.store(now_ms, Ordering::Relaxed);
        }
        if tokens < 1000 {
            self.milli_tokens.store(tokens, Ordering::Relaxed);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            self.unreported.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.milli_tokens.store(tokens - 1000, Ordering::Relaxed);
        Some(self.unreported.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_count_everything() {
        let h = Histogram::default();
        for ns in [5_000, 10_000, 10_001, 2_000_000, 1_000_000_000] {
            h.observe_ns(ns);
        }
        let (cum, sum) = h.snapshot();
        assert_eq!(cum[0], 2, "<= 10 µs: 5 µs and exactly 10 µs");
        assert_eq!(cum[1], 3);
        assert_eq!(cum[4], 3, "<= 1 ms");
        assert_eq!(cum[5], 4, "<= 5 ms");
        assert_eq!(cum[8], 4, "<= 100 ms");
        assert_eq!(cum[9], 5, "+Inf is the count");
        assert_eq!(sum, 5_000 + 10_000 + 10_001 + 2_000_000 + 1_000_000_000);
    }

    #[test]
    fn the_log_limiter_allows_a_burst_then_the_rate_and_reports_drops() {
        let l = LogLimiter::default();
        let t0 = 1_000_000;
        for _ in 0..LogLimiter::BURST {
            assert_eq!(l.take(t0), Some(0));
        }
        assert_eq!(l.take(t0), None);
        assert_eq!(l.take(t0), None);
        assert_eq!(l.dropped.load(Ordering::Relaxed), 2);
        // 20 lines/s: one token every 50 ms.
        assert_eq!(l.take(t0 + 49), None);
        assert_eq!(
            l.take(t0 + 49 + 50),
            Some(3),
            "the next line reports 3 dropped"
        );
        assert_eq!(l.take(t0 + 99), None);
        // A long pause refills the burst, not more.
        for _ in 0..LogLimiter::BURST {
            assert!(l.take(t0 + 60_000).is_some());
        }
        assert_eq!(l.take(t0 + 60_000), None);
        assert_eq!(l.dropped.load(Ordering::Relaxed), 5);
    }

    #[test]
    fn levels_map_to_syslog_priorities() {
        assert_eq!(syslog_priority(&tracing::Level::ERROR), 3);
        assert_eq!(syslog_priority(&tracing::Level::WARN), 4);
        assert_eq!(syslog_priority(&tracing::Level::INFO), 6);
        assert_eq!(syslog_priority(&tracing::Level::DEBUG), 7);
    }
}
