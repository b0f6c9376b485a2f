//! `[functions]`: gateway-wide settings of the functions stage. Per-function
//! limits live in each function's manifest, not here.

use serde::Deserialize;

use super::bundle::PublicKey;
use crate::config::Problem;

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
}

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
        }
    }
}

impl FunctionsConfig {
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
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

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
}
