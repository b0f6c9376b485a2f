//! The gateway's configuration: one strict TOML file.
//!
//! Every stage owns its own section (`[broker]` lives in `broker::config`);
//! this module owns the file as a whole: parsing (strict, so a misspelt key is
//! an error, not a silently ignored default), the semantic checks that span
//! sections, and the annotated default that `perch config default` prints.
//!
//! A config is either entirely valid or refused: [`Config::from_toml`] returns
//! every problem it finds, each naming the key, so `perch config check` can
//! print them all and a bad file never starts a half-working gateway.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::aggregate::AggregateConfig;
use crate::broker::BrokerConfig;
use crate::buffer::BufferConfig;
use crate::functions::FunctionsConfig;
use crate::telemetry::admin::AdminConfig;
use crate::upstream::UpstreamConfig;

/// The annotated default configuration, printed by `perch config default`.
/// `Config::default()` and this text describe the same values; a unit test
/// keeps them in step.
pub const DEFAULT_TOML: &str = include_str!("default.toml");

/// Everything perch reads from its config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Identity and local state of this gateway.
    pub gateway: GatewayConfig,
    /// The embedded MQTT broker: limits, listeners, users and their ACLs.
    pub broker: BrokerConfig,
    /// Gateway-wide settings of the functions stage.
    pub functions: FunctionsConfig,
    /// The store-and-forward outbox.
    pub buffer: BufferConfig,
    /// Windows over emitted metrics.
    pub aggregate: AggregateConfig,
    /// Delivery of records to the cloud.
    pub upstream: UpstreamConfig,
    /// The admin HTTP listener (metrics, health, status page) and the
    /// status topic.
    pub admin: AdminConfig,
}

/// `[gateway]`: who this gateway is and where it keeps its state.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Identity of this gateway: names its control topics (`perch/<id>/...`)
    /// and prefixes the ids of the records it forwards. Empty means the host
    /// name.
    pub id: String,
    /// Directory for perch's state (SQLite databases). Created if missing.
    pub data_dir: PathBuf,
    /// How long a shutdown may take before the stages still running are named
    /// in the log and stopped.
    pub shutdown_timeout_ms: u64,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            id: String::new(),
            data_dir: PathBuf::from("./perch-data"),
            shutdown_timeout_ms: 5_000,
        }
    }
}

impl GatewayConfig {
    /// The configured id, or the host name when none is configured.
    pub fn resolved_id(&self) -> String {
        if !self.id.is_empty() {
            return self.id.clone();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| valid_id(h))
            .unwrap_or_else(|| "perch".to_owned())
    }
}

/// A gateway id is used in topic names, so it may not contain MQTT wildcards
/// or separators.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

/// One thing wrong with a config (defined in the foundation, so that each
/// stage's config check can report with it without importing this module).
pub use crate::kit::Problem;

mod check;

/// Why a config was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {error}")]
    Read {
        path: PathBuf,
        /// Not `source`: the message above already says it, so it is not
        /// a cause to print again.
        error: std::io::Error,
    },
    /// The file is not valid TOML, does not match the schema, or its values
    /// do not make a gateway: every problem found, each with its key and,
    /// from a file, its line and column.
    #[error("{origin} is not a valid perch config:\n{}", list(.origin, .problems))]
    Invalid {
        origin: String,
        problems: Vec<Problem>,
    },
}

impl ConfigError {
    /// The problems, for `perch config check --json`: a file that cannot be
    /// read is one problem with no key.
    pub fn problems(&self) -> Vec<Problem> {
        match self {
            ConfigError::Read { path, error } => vec![Problem::new(
                "",
                format!("cannot read config file {}: {error}", path.display()),
            )],
            ConfigError::Invalid { problems, .. } => problems.clone(),
        }
    }
}

/// One line per problem: `  origin:line:column: key: message`.
fn list(origin: &str, problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| match (p.line, p.column) {
            (Some(line), Some(column)) => format!("  {origin}:{line}:{column}: {p}"),
            _ => format!("  {origin}: {p}"),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

impl Config {
    /// The broker's settings with what depends on other sections filled
    /// in: anonymous clients are not admins of a gateway with trusted keys
    /// unless `[broker.anonymous] admin` says so.
    pub fn broker_resolved(&self) -> crate::broker::BrokerConfig {
        let mut broker = self.broker.clone();
        if broker.anonymous.admin.is_none() && !self.functions.trusted_keys.is_empty() {
            broker.anonymous.admin = Some(false);
        }
        broker
    }

    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        Config::from_toml(&text, &path.display().to_string())
    }

    /// Parses and validates config text; `origin` names it in errors,
    /// which list every problem found, each at its line and column.
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        check::parse(text).map_err(|problems| ConfigError::Invalid {
            origin: origin.to_owned(),
            problems,
        })
    }

    /// Checks what the schema alone cannot: values that are in range one by
    /// one but do not make a safe, working gateway together.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if !self.gateway.id.is_empty() && !valid_id(&self.gateway.id) {
            problems.push(Problem::new(
                "gateway.id",
                format!(
                    "{:?} is not a usable id: use 1-64 characters from a-z, A-Z, 0-9, '-', '_', '.' \
                     (it becomes part of MQTT topic names)",
                    self.gateway.id
                ),
            ));
        }
        if self.gateway.data_dir.as_os_str().is_empty() {
            problems.push(Problem::new(
                "gateway.data_dir",
                "must not be empty: give a directory perch may write to",
            ));
        }
        if self.gateway.shutdown_timeout_ms == 0 {
            problems.push(Problem::new(
                "gateway.shutdown_timeout_ms",
                "must be greater than 0",
            ));
        }
        self.broker.validate(&mut problems);
        self.functions
            .validate(self.broker.max_packet_size_bytes, &mut problems);
        self.buffer.validate(&mut problems);
        self.aggregate.validate(&mut problems);
        self.upstream.validate(&mut problems);
        self.admin.validate(&mut problems);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid {
                origin: origin.to_owned(),
                problems,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_printed_default_is_the_default() {
        let parsed = Config::from_toml(DEFAULT_TOML, "default").expect("default config is valid");
        let built = Config::default();
        assert_eq!(format!("{parsed:?}"), format!("{built:?}"));
    }

    /// The configs the .deb installs on each board are valid for this build
    /// (cross/ci.sh checks them again with the ARM binaries).
    #[test]
    fn every_board_config_is_valid() {
        let boards = Path::new(env!("CARGO_MANIFEST_DIR")).join("../boards");
        let mut checked = 0;
        for entry in std::fs::read_dir(&boards).unwrap() {
            let path = entry.unwrap().path().join("perch.toml");
            if path.exists() {
                Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
                checked += 1;
            }
        }
        assert!(checked >= 6, "only {checked} board configs found");
    }

    #[test]
    fn an_empty_file_is_the_default() {
        let parsed = Config::from_toml("", "empty").unwrap();
        assert_eq!(format!("{parsed:?}"), format!("{:?}", Config::default()));
    }

    #[test]
    fn unknown_keys_are_refused_with_line_and_expected_keys() {
        let err = Config::from_toml("[gateway]\nid = \"a\"\ndata_dri = \"/x\"\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("t.toml:3:1: gateway.data_dri: unknown field"),
            "{err}"
        );
        assert!(err.contains("expected one of `id`, `data_dir`"), "{err}");
        assert!(err.contains("did you mean `data_dir`?"), "{err}");
    }

    #[test]
    fn a_wrong_type_names_the_key_and_the_line() {
        let err = Config::from_toml("[gateway]\nshutdown_timeout_ms = \"soon\"\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("t.toml:2:23: gateway.shutdown_timeout_ms"),
            "{err}"
        );
    }

    #[test]
    fn an_id_with_topic_characters_is_refused() {
        let err = Config::from_toml("[gateway]\nid = \"a/#\"\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("gateway.id"), "{err}");
    }

    #[test]
    fn bad_buffer_aggregate_and_upstream_values_are_named() {
        let err = Config::from_toml(
            "[buffer]\nmax_bytes = 10\ncommit_batch = 0\nwhen_full = \"drop_oldest\"\n\
             [aggregate]\nwindow_s = 0\n\
             [upstream]\nforward_topics = [\"a/#/b\"]\n\
             [upstream.mqtt]\nhost = \"\"\ntls = { ca_path = \"/nonexistent/ca.pem\", cert_path = \"/c.pem\" }\n\
             [upstream.http]\nurl = \"ftp://x\"\n",
            "t.toml",
        )
        .unwrap_err()
        .to_string();
        for key in [
            "buffer.max_bytes",
            "buffer.commit_batch",
            "aggregate.window_s",
            "upstream.forward_topics[0]",
            "upstream.mqtt.host",
            "upstream.mqtt.tls.ca_path",
            "upstream.mqtt.tls: cert_path and key_path go together",
            "upstream: both [upstream.mqtt] and [upstream.http]",
            "upstream.http.url",
        ] {
            assert!(err.contains(key), "{key} missing from: {err}");
        }
    }

    #[test]
    fn an_unknown_policy_lists_the_known_ones() {
        let err = Config::from_toml("[buffer]\nwhen_full = \"drop_all\"\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("drop_oldest") && err.contains("degrade"),
            "{err}"
        );
    }

    #[test]
    fn bad_admin_values_are_named_with_what_to_do() {
        let err = Config::from_toml(
            "[admin]\nlisten = \"0.0.0.0:9181\"\nstatus_interval_s = 0\n",
            "t.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("admin.listen"), "{err}");
        assert!(err.contains("admin.token"), "says how to fix it: {err}");
        assert!(err.contains("admin.status_interval_s"), "{err}");
        let err = Config::from_toml("[admin]\ntoken = \"short\"\nusername = \"ops\"\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("admin.token: is 5 characters"), "{err}");
        assert!(err.contains("admin.password_hash"), "{err}");
        // With a token a network address is fine.
        Config::from_toml(
            "[admin]\nlisten = \"0.0.0.0:9181\"\ntoken = \"0123456789abcdef\"\n",
            "t.toml",
        )
        .unwrap();
    }

    #[test]
    fn the_host_name_is_the_id_when_none_is_set() {
        let id = GatewayConfig::default().resolved_id();
        assert!(valid_id(&id), "{id}");
    }
}
