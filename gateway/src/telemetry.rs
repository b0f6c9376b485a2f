//! Logging: where perch's log lines go and in which format.
//!
//! Human-readable lines by default (compact, to stderr), JSON lines for log
//! shippers with `--log-format json`. `RUST_LOG` overrides the filter; the
//! default keeps rumqttd's per-connection chatter out.

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Compact human-readable lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// The filter used when `RUST_LOG` is not set. rumqttd logs ordinary client
/// disconnects at error level, so it is silenced; perch logs what matters
/// about the broker itself. `RUST_LOG=info,rumqttd=warn` brings it back.
pub const DEFAULT_FILTER: &str = "info,rumqttd=off";

/// Installs the global subscriber. Calling it twice is harmless (tests).
pub fn init(format: LogFormat) {
    init_with_default_filter(format, DEFAULT_FILTER);
}

/// [`init`], with another filter for when `RUST_LOG` is not set.
pub fn init_with_default_filter(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match format {
        LogFormat::Human => builder.compact().try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
