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
//! histogram of atomics. Recording never locks and never allocates. The
//! primitives live in [`crate::kit::metrics`], below the stages, and are
//! re-exported here.
//!
//! # systemd
//!
//! [`systemd`] speaks sd_notify (READY=1, WATCHDOG=1) over the datagram
//! socket in `$NOTIFY_SOCKET`; without it, it does nothing.

pub mod admin;
pub mod systemd;

use std::io::IsTerminal;

use clap::ValueEnum;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

pub use crate::kit::metrics::{Histogram, LogLimiter, DURATION_BOUNDS_NS};

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

/// [`init`], with perch's own debug lines on top of `RUST_LOG` (or the
/// default filter) when `verbose` (`perch run -v`).
pub fn init_verbose(format: LogFormat, verbose: bool) {
    init_filtered(format, DEFAULT_FILTER, verbose);
    if verbose {
        tracing::debug!("verbose: perch logs at debug level");
    }
}

/// [`init`], with another filter for when `RUST_LOG` is not set.
pub fn init_with_default_filter(format: LogFormat, default_filter: &str) {
    init_filtered(format, default_filter, false);
}

fn init_filtered(format: LogFormat, default_filter: &str, verbose: bool) {
    let mut filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    if verbose {
        filter = filter.add_directive("perch=debug".parse().expect("a valid directive"));
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_map_to_syslog_priorities() {
        assert_eq!(syslog_priority(&tracing::Level::ERROR), 3);
        assert_eq!(syslog_priority(&tracing::Level::WARN), 4);
        assert_eq!(syslog_priority(&tracing::Level::INFO), 6);
        assert_eq!(syslog_priority(&tracing::Level::DEBUG), 7);
    }
}
