//! `[functions]`: gateway-wide settings of the functions stage. Per-function
//! limits live in each function's manifest, not here; what this module adds
//! to them is the gateway's caps (`max_fuel`, `max_memory_pages`,
//! `max_output_bytes`, `max_queue_len`, `max_timeout_ms`,
//! `max_consecutive_failures`), which no manifest may exceed, and the
//! wall-clock limit a manifest gets when it sets none
//! (`default_timeout_ms`).

use serde::Deserialize;

use super::bundle::PublicKey;
use super::manifest::{self, Limits};
use crate::kit::Problem;

/// `[functions]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FunctionsConfig {
    /// Most functions deployed at once. Each has its own thread, its own
    /// broker link and its queue, so this bounds what functions can take.
    pub max_functions: usize,
    /// How often changed function state is written to SQLite (one
    /// transaction per function per interval). State written by a function
    /// in the last interval before a crash or power cut is lost; a clean
    /// shutdown writes everything.
    pub state_commit_interval_ms: u64,
    /// Records (`emit`, `forward`) waiting for the aggregate and buffer
    /// stages. When it is full, functions get `FULL` and the record is
    /// dropped and counted.
    pub output_queue_len: usize,
    /// Versions of each function kept in the registry (the running one
    /// always among them); `rollback` can return to any of them.
    pub keep_versions: usize,
    /// Largest deploy bundle accepted. A deploy travels as one MQTT packet,
    /// so this must stay [`BUNDLE_HEADROOM_BYTES`] under
    /// `broker.max_packet_size_bytes`.
    pub max_bundle_bytes: usize,
    /// Public keys (`ed25519:<base64>`, as `perch key generate` prints
    /// them) whose signed bundles this gateway deploys. Empty: unsigned
    /// (format 1) bundles are accepted too, and anonymous loopback clients
    /// may use the control topics while no user is an admin. Set: every
    /// deploy must be signed by one of them.
    pub trusted_keys: Vec<String>,
    /// A canary (`perch fn deploy --canary PERCENT`) is judged over windows
    /// of this many of its own invocations.
    pub canary_window_events: u64,
    /// A canary is rolled back as soon as more than this share (percent) of
    /// the invocations of one window have failed.
    pub canary_max_error_percent: u8,
    /// The most fuel a manifest may give one invocation (`limits.fuel`).
    /// Fuel is about one wasm instruction: this bounds how long one
    /// invocation can keep its worker thread (and a core) busy.
    pub max_fuel: u64,
    /// The most 64 KiB memory pages a manifest may ask for
    /// (`limits.memory_pages`): bounds one function's linear memory.
    pub max_memory_pages: u32,
    /// The most publish and forward bytes per invocation a manifest may ask
    /// for (`limits.output_bytes`).
    pub max_output_bytes: usize,
    /// The longest event queue a manifest may ask for (`limits.queue_len`):
    /// each queued event holds its payload, so with
    /// `broker.max_packet_size_bytes` this bounds a function's queued memory.
    pub max_queue_len: usize,
    /// Wall-clock milliseconds one invocation may run when its manifest
    /// sets no `limits.timeout_ms`. Enforced whatever fuel is left, so a
    /// runaway loop holds its core for at most this long per event.
    pub default_timeout_ms: u64,
    /// The longest `limits.timeout_ms` a manifest may ask for.
    pub max_timeout_ms: u64,
    /// The most `limits.max_consecutive_failures` a manifest may ask for:
    /// with `max_timeout_ms` this bounds how long a function that fails
    /// every event keeps a core busy before the circuit breaker stops it.
    pub max_consecutive_failures: u32,
    /// State snapshots each function keeps (newest first): one is taken
    /// when a version takes over (deploy, promote) and restored when that
    /// takeover is rolled back, so this bounds how many rollbacks in a row
    /// restore state. At least 1.
    pub snapshots_keep: usize,
    /// Snapshots older than this are deleted and never restored.
    pub snapshots_max_age_s: u64,
}

/// A manifest limit over the gateway's cap on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverCap {
    /// The manifest key, e.g. `limits.fuel`.
    pub field: &'static str,
    pub asked: u64,
    pub cap: u64,
    /// The config key that sets the cap, e.g. `functions.max_fuel`.
    pub key: &'static str,
}

impl std::fmt::Display for OverCap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} = {} is over this gateway's cap of {} ({}): lower it in the manifest, or raise \
             {} in the gateway's config",
            self.field, self.asked, self.cap, self.key, self.key
        )
    }
}

/// The most snapshots `functions.snapshots_keep` may ask for per function.
pub const MAX_SNAPSHOTS: usize = 100;

/// Room in a deploy packet for the topic, the MQTT header and the deploy
/// options line in front of the bundle.
pub const BUNDLE_HEADROOM_BYTES: usize = 64 * 1024;

impl Default for FunctionsConfig {
    fn default() -> Self {
        FunctionsConfig {
            max_functions: 64,
            state_commit_interval_ms: 1_000,
            output_queue_len: 1_024,
            keep_versions: 5,
            max_bundle_bytes: 4 * 1024 * 1024,
            trusted_keys: Vec::new(),
            canary_window_events: 20,
            canary_max_error_percent: 10,
            max_fuel: 5_000_000_000,
            max_memory_pages: 1_024,
            max_output_bytes: 5 * 1024 * 1024,
            max_queue_len: 16_384,
            default_timeout_ms: manifest::DEFAULT_TIMEOUT_MS,
            max_timeout_ms: 3_000,
            max_consecutive_failures: 20,
            snapshots_keep: 5,
            snapshots_max_age_s: 7 * 24 * 3600,
        }
    }
}

impl FunctionsConfig {
    /// The snapshot bounds, as the registry applies them.
    pub fn snapshot_bounds(&self) -> super::snapshot::Bounds {
        super::snapshot::Bounds {
            keep: self.snapshots_keep,
            max_age_ms: (self.snapshots_max_age_s as i64).saturating_mul(1000),
        }
    }

    /// The limits of `limits` over this gateway's caps, each with the cap and
    /// the key that raises it; empty when all fit.
    pub fn over_caps(&self, limits: &Limits) -> Vec<OverCap> {
        [
            (
                "limits.fuel",
                limits.fuel,
                self.max_fuel,
                "functions.max_fuel",
            ),
            (
                "limits.memory_pages",
                u64::from(limits.memory_pages),
                u64::from(self.max_memory_pages),
                "functions.max_memory_pages",
            ),
            (
                "limits.output_bytes",
                limits.output_bytes as u64,
                self.max_output_bytes as u64,
                "functions.max_output_bytes",
            ),
            (
                "limits.queue_len",
                limits.queue_len as u64,
                self.max_queue_len as u64,
                "functions.max_queue_len",
            ),
            (
                "limits.timeout_ms",
                // Unset: the gateway's default, which is within the cap.
                limits.timeout_ms.unwrap_or(0),
                self.max_timeout_ms,
                "functions.max_timeout_ms",
            ),
            (
                "limits.max_consecutive_failures",
                u64::from(limits.max_consecutive_failures),
                u64::from(self.max_consecutive_failures),
                "functions.max_consecutive_failures",
            ),
        ]
        .into_iter()
        .filter(|&(_, asked, cap, _)| asked > cap)
        .map(|(field, asked, cap, key)| OverCap {
            field,
            asked,
            cap,
            key,
        })
        .collect()
    }

    /// `trusted_keys`, parsed; the config check refused the config if one
    /// did not parse, so none are left out here in practice.
    pub fn trusted_public_keys(&self) -> Vec<PublicKey> {
        self.trusted_keys
            .iter()
            .filter_map(|k| k.parse().ok())
            .collect()
    }

    /// `max_packet_size_bytes` is the broker's, which carries the bundles.
    pub(crate) fn validate(&self, max_packet_size_bytes: usize, problems: &mut Vec<Problem>) {
        if self.keep_versions < 2 {
            problems.push(Problem::new(
                "functions.keep_versions",
                "must be at least 2: the running version and one to roll back to",
            ));
        }
        if self.max_bundle_bytes == 0 {
            problems.push(Problem::new(
                "functions.max_bundle_bytes",
                "must be greater than 0",
            ));
        } else if self.max_bundle_bytes.saturating_add(BUNDLE_HEADROOM_BYTES)
            > max_packet_size_bytes
        {
            problems.push(Problem::new(
                "functions.max_bundle_bytes",
                format!(
                    "{} does not fit in one MQTT packet: a bundle travels as one, and \
                     broker.max_packet_size_bytes is {max_packet_size_bytes}; raise that to at \
                     least {} or lower this",
                    self.max_bundle_bytes,
                    self.max_bundle_bytes.saturating_add(BUNDLE_HEADROOM_BYTES)
                ),
            ));
        }
        for (i, key) in self.trusted_keys.iter().enumerate() {
            if let Err(e) = key.parse::<PublicKey>() {
                problems.push(Problem::new(
                    format!("functions.trusted_keys[{i}]"),
                    e.to_string(),
                ));
            }
        }
        if self.max_functions == 0 {
            problems.push(Problem::new(
                "functions.max_functions",
                "must be at least 1 (no functions at all cannot be configured here)",
            ));
        }
        if self.state_commit_interval_ms == 0 {
            problems.push(Problem::new(
                "functions.state_commit_interval_ms",
                "must be greater than 0: a commit per write is what this interval avoids",
            ));
        }
        if !(1..=MAX_SNAPSHOTS).contains(&self.snapshots_keep) {
            problems.push(Problem::new(
                "functions.snapshots_keep",
                format!(
                    "{} is out of range: give 1 to {MAX_SNAPSHOTS} (each is a copy of a \
                     function's state, up to 1 MiB, kept to restore it on rollback)",
                    self.snapshots_keep
                ),
            ));
        }
        if self.snapshots_max_age_s < 60 {
            problems.push(Problem::new(
                "functions.snapshots_max_age_s",
                format!(
                    "{} s is too short to roll back in: give at least 60 (the default keeps \
                     snapshots for 604800 s, a week)",
                    self.snapshots_max_age_s
                ),
            ));
        }
        if self.canary_window_events == 0 {
            problems.push(Problem::new(
                "functions.canary_window_events",
                "must be at least 1: a canary is judged over windows of this many invocations",
            ));
        }
        if self.canary_max_error_percent > 100 {
            problems.push(Problem::new(
                "functions.canary_max_error_percent",
                format!(
                    "{} is not a percentage: give 0 to 100 (0 rolls a canary back at its first \
                     error)",
                    self.canary_max_error_percent
                ),
            ));
        }
        if self.output_queue_len == 0 {
            problems.push(Problem::new(
                "functions.output_queue_len",
                "must be greater than 0",
            ));
        }
        self.validate_time_limits(problems);
        self.validate_caps(problems);
    }

    /// The default wall-clock limit of a call is at least 1 ms and fits
    /// under the cap.
    fn validate_time_limits(&self, problems: &mut Vec<Problem>) {
        if self.default_timeout_ms == 0 {
            problems.push(Problem::new(
                "functions.default_timeout_ms",
                format!(
                    "must be at least 1 millisecond (the default is {})",
                    manifest::DEFAULT_TIMEOUT_MS
                ),
            ));
        } else if self.default_timeout_ms > self.max_timeout_ms {
            problems.push(Problem::new(
                "functions.default_timeout_ms",
                format!(
                    "{} is over functions.max_timeout_ms ({}), so a manifest that sets no \
                     limits.timeout_ms would be refused: lower this or raise that",
                    self.default_timeout_ms, self.max_timeout_ms
                ),
            ));
        }
    }

    /// Every operator cap on what a manifest may ask for lies between the
    /// default a manifest gets and the most it could ask for.
    fn validate_caps(&self, problems: &mut Vec<Problem>) {
        // A cap under the default would refuse every manifest that leaves
        // the limit out; a cap over what a manifest can ask is no cap.
        let default = Limits::default();
        let caps: [(&str, u64, u64, u64, &str); 5] = [
            (
                "functions.max_fuel",
                self.max_fuel,
                default.fuel,
                u64::MAX,
                "",
            ),
            (
                "functions.max_memory_pages",
                u64::from(self.max_memory_pages),
                u64::from(default.memory_pages),
                u64::from(manifest::MAX_MEMORY_PAGES),
                " (4 GiB, all a wasm32 memory can address)",
            ),
            (
                "functions.max_output_bytes",
                self.max_output_bytes as u64,
                default.output_bytes as u64,
                manifest::MAX_OUTPUT_BYTES as u64,
                " (the largest MQTT payload)",
            ),
            (
                "functions.max_queue_len",
                self.max_queue_len as u64,
                default.queue_len as u64,
                manifest::MAX_QUEUE_LEN as u64,
                "",
            ),
            (
                "functions.max_consecutive_failures",
                u64::from(self.max_consecutive_failures),
                u64::from(default.max_consecutive_failures),
                u64::from(u32::MAX),
                "",
            ),
        ];
        for (key, value, least, most, why) in caps {
            if value < least {
                problems.push(Problem::new(
                    key,
                    format!(
                        "{value} is under {least}, the default a manifest gets when it sets no \
                         limit, so every such manifest would be refused: give at least {least}"
                    ),
                ));
            } else if value > most {
                problems.push(Problem::new(
                    key,
                    format!("{value} is over {most}, the most a manifest can ask for{why}"),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{FunctionsConfig, Limits};
    use crate::config::Config;

    #[test]
    fn snapshot_bounds_out_of_range_are_refused_with_the_range() {
        let err = Config::from_toml(
            "[functions]\nsnapshots_keep = 0\nsnapshots_max_age_s = 5\n",
            "test.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("functions.snapshots_keep: 0 is out of range: give 1 to 100"),
            "{err}"
        );
        assert!(
            err.contains("functions.snapshots_max_age_s: 5 s is too short to roll back in"),
            "{err}"
        );
        let ok = Config::from_toml("[functions]\nsnapshots_keep = 2\n", "test.toml").unwrap();
        assert_eq!(ok.functions.snapshot_bounds().keep, 2);
    }

    #[test]
    fn a_bundle_limit_the_broker_cannot_carry_is_refused_with_the_fix() {
        let err = Config::from_toml(
            "[broker]\nmax_packet_size_bytes = 1048576\n[functions]\nmax_bundle_bytes = 1048576\n\
             keep_versions = 1\n",
            "test.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("functions.max_bundle_bytes: 1048576 does not fit in one MQTT packet"),
            "{err}"
        );
        assert!(err.contains("raise that to at least 1114112"), "{err}");
        assert!(
            err.contains("functions.keep_versions: must be at least 2"),
            "{err}"
        );
        let err = Config::from_toml(
            "[functions]\ntrusted_keys = [\"ed25519:AAAA\", \"ssh-ed25519 AAAAC3\"]\n",
            "test.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains(
                "functions.trusted_keys[0]: \"ed25519:AAAA\" is not an ed25519 public key"
            ),
            "{err}"
        );
        assert!(err.contains("functions.trusted_keys[1]"), "{err}");
        assert!(err.contains("as `perch key generate` prints it"), "{err}");
        // The defaults fit: 4 MiB bundles in 5 MiB packets.
        Config::from_toml("", "empty.toml").unwrap();
    }

    #[test]
    fn caps_under_the_manifest_defaults_or_over_the_format_are_refused() {
        let err = Config::from_toml(
            "[functions]
max_fuel = 1000
max_memory_pages = 65537
max_output_bytes = 0
\
             max_queue_len = 65537
",
            "test.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("functions.max_fuel: 1000 is under 10000000, the default a manifest gets"),
            "{err}"
        );
        assert!(
            err.contains("functions.max_memory_pages: 65537 is over 65536"),
            "{err}"
        );
        assert!(
            err.contains("functions.max_output_bytes: 0 is under 65536"),
            "{err}"
        );
        assert!(
            err.contains("functions.max_queue_len: 65537 is over 65536"),
            "{err}"
        );
        // At the format's own bounds: accepted.
        Config::from_toml(
            "[functions]
max_fuel = 18446744073709551615
max_memory_pages = 65536
\
             max_queue_len = 65536
",
            "test.toml",
        )
        .unwrap();
    }

    #[test]
    fn limits_over_the_caps_are_each_named_with_the_key_to_raise() {
        let caps = FunctionsConfig::default();
        assert!(caps.over_caps(&Limits::default()).is_empty());
        let limits = Limits {
            fuel: u64::MAX,
            memory_pages: 65_536,
            output_bytes: caps.max_output_bytes + 1,
            queue_len: caps.max_queue_len,
            ..Limits::default()
        };
        let over: Vec<String> = caps
            .over_caps(&limits)
            .iter()
            .map(|o| o.to_string())
            .collect();
        assert_eq!(over.len(), 3, "{over:?}");
        assert_eq!(
            over[0],
            "limits.fuel = 18446744073709551615 is over this gateway's cap of 5000000000 \
             (functions.max_fuel): lower it in the manifest, or raise functions.max_fuel in the \
             gateway's config"
        );
        assert!(over[1].starts_with("limits.memory_pages = 65536 is over this gateway's cap of 1024 (functions.max_memory_pages)"), "{over:?}");
        assert!(over[2].starts_with("limits.output_bytes = 5242881 is over this gateway's cap of 5242880 (functions.max_output_bytes)"), "{over:?}");
    }

    #[test]
    fn time_and_failures_in_a_row_are_capped_and_the_default_must_fit_the_cap() {
        let caps = FunctionsConfig::default();
        let limits = Limits {
            timeout_ms: Some(caps.max_timeout_ms + 1),
            max_consecutive_failures: caps.max_consecutive_failures + 1,
            ..Limits::default()
        };
        let over: Vec<String> = caps
            .over_caps(&limits)
            .iter()
            .map(|o| o.to_string())
            .collect();
        assert_eq!(
            over,
            [
                "limits.timeout_ms = 3001 is over this gateway's cap of 3000 \
                 (functions.max_timeout_ms): lower it in the manifest, or raise \
                 functions.max_timeout_ms in the gateway's config",
                "limits.max_consecutive_failures = 21 is over this gateway's cap of 20 \
                 (functions.max_consecutive_failures): lower it in the manifest, or raise \
                 functions.max_consecutive_failures in the gateway's config",
            ]
        );
        // At the caps: accepted.
        let limits = Limits {
            timeout_ms: Some(caps.max_timeout_ms),
            max_consecutive_failures: caps.max_consecutive_failures,
            ..Limits::default()
        };
        assert!(caps.over_caps(&limits).is_empty());
        let err = Config::from_toml(
            "[functions]\ndefault_timeout_ms = 5000\nmax_timeout_ms = 2000\n\
             max_consecutive_failures = 3\n",
            "test.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains(
                "functions.default_timeout_ms: 5000 is over functions.max_timeout_ms (2000)"
            ),
            "{err}"
        );
        assert!(
            err.contains("functions.max_consecutive_failures: 3 is under 10"),
            "{err}"
        );
        let err = Config::from_toml("[functions]\ndefault_timeout_ms = 0\n", "test.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("functions.default_timeout_ms: must be at least 1 millisecond"),
            "{err}"
        );
    }
}
