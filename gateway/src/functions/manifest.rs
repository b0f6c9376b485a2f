//! The function manifest: what a function is called, when it runs, what it
//! may do and how much it may use. The format is specified in `sdk/ABI.md`
//! ("Manifest"); this module parses it strictly (unknown keys are errors, so a
//! misspelt limit is never silently replaced by its default) and refuses
//! values that cannot make a working, bounded function.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

use crate::kit::topic;
use crate::kit::Problem;

/// One WebAssembly page.
pub const PAGE_BYTES: usize = 64 * 1024;
/// The most pages a wasm32 memory can have (4 GiB).
pub const MAX_MEMORY_PAGES: u32 = 65_536;
/// The largest queue a manifest may ask for: each queued event holds its
/// payload, so this bounds a function's queued memory with the packet size.
pub const MAX_QUEUE_LEN: usize = 65_536;
/// The largest payload MQTT can carry; more output than that per invocation
/// cannot be delivered anyway.
pub const MAX_OUTPUT_BYTES: usize = 268_435_455;
/// Shortest interval trigger: shorter ones would keep a core busy with timer
/// wake-ups alone.
pub const MIN_EVERY_MS: u64 = 10;
/// How long one invocation may run when neither the manifest
/// (`limits.timeout_ms`) nor the gateway (`functions.default_timeout_ms`)
/// says otherwise.
pub const DEFAULT_TIMEOUT_MS: u64 = 1_000;
/// Longest `replay.keep_events_s`: a day of trigger events. The kept events
/// are bounded by bytes as well (a quarter of `buffer.max_bytes`, see
/// [`crate::buffer`]); this bounds how stale a replay can be.
pub const MAX_KEEP_EVENTS_S: u64 = 24 * 3600;

/// Why a manifest was refused.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not TOML, or keys that the manifest format does not have, or a value of
    /// the wrong type. The TOML parser's message names the line and the key.
    #[error("the manifest is not valid: {0}")]
    Parse(String),
    /// It parsed, but its values do not make a working function.
    #[error("the manifest is not valid:\n{}", list(.0))]
    Invalid(Vec<Problem>),
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A parsed and checked manifest.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// `[a-z0-9-]`, 1 to 64 characters: names the function in topics, logs
    /// and the registry.
    pub name: String,
    /// Semantic version; one name may have many versions in the registry.
    pub version: String,
    /// Free text for people.
    #[serde(default)]
    pub description: String,
    /// When the function runs.
    #[serde(default)]
    pub triggers: Triggers,
    /// How much one invocation and the function's queue may use.
    #[serde(default)]
    pub limits: Limits,
    /// Where the function may publish.
    #[serde(default)]
    pub publish: PublishRules,
    /// Values the function reads with `config_get`.
    #[serde(default)]
    pub config: BTreeMap<String, toml::Value>,
    /// Whether the gateway keeps this function's trigger events for
    /// `perch fn replay`.
    #[serde(default)]
    pub replay: Replay,
}

/// `[replay]`
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Replay {
    /// Keep each trigger event (topic, payload, time) in the buffer for this
    /// many seconds, never forwarded, so `perch fn replay --since` can run a
    /// version over them; 0 (the default) keeps none.
    pub keep_events_s: u64,
}

/// `[triggers]`
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Triggers {
    /// MQTT topic filters (`+`, `#` allowed); each matching publish is one
    /// event for `perch_on_event`.
    pub topics: Vec<String>,
    /// Interval of `perch_on_timer` calls in milliseconds; 0 means none.
    pub every_ms: u64,
}

/// What a function's queue does when it is full.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum QueuePolicy {
    /// Drop the oldest queued event to make room: the function sees the
    /// newest data (right for sensor readings).
    #[default]
    DropOldest,
    /// Drop the arriving event: the function sees events in arrival order
    /// without gaps until the queue overflows.
    DropNewest,
}

impl fmt::Display for QueuePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            QueuePolicy::DropOldest => "drop_oldest",
            QueuePolicy::DropNewest => "drop_newest",
        })
    }
}

/// `[limits]`; the defaults are the ones `sdk/ABI.md` promises.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Fuel per invocation (about one unit per wasm instruction); running out
    /// traps the invocation. Translating a function's code on its first
    /// call is not charged (see the runtime's "Limits").
    pub fuel: u64,
    /// Most linear-memory pages of 64 KiB the module may have.
    pub memory_pages: u32,
    /// Most bytes of publish and forward payloads per invocation.
    pub output_bytes: usize,
    /// Most events queued for the function.
    pub queue_len: usize,
    /// What happens to an event that finds the queue full.
    pub queue_policy: QueuePolicy,
    /// Failed invocations in a row (traps or non-zero returns) after which
    /// the function is stopped.
    pub max_consecutive_failures: u32,
    /// Wall-clock milliseconds one invocation may run, whatever fuel it has
    /// left; past it the invocation is stopped (`timeout`). Unset: the
    /// gateway's `functions.default_timeout_ms`.
    pub timeout_ms: Option<u64>,
}

impl Limits {
    /// Reports each impossible limit to `bad` (key, message).
    fn check(&self, bad: &mut impl FnMut(&str, String)) {
        let l = self;
        if l.fuel == 0 {
            bad(
                "limits.fuel",
                "must be greater than 0: with no fuel the function cannot run a single \
                     instruction (the default is 10000000)"
                    .into(),
            );
        }
        if l.memory_pages == 0 || l.memory_pages > MAX_MEMORY_PAGES {
            bad(
                "limits.memory_pages",
                format!(
                    "{} is impossible: a module needs 1 to {MAX_MEMORY_PAGES} pages of 64 KiB \
                         (the default is 16, i.e. 1 MiB)",
                    l.memory_pages
                ),
            );
        }
        if l.output_bytes > MAX_OUTPUT_BYTES {
            bad(
                "limits.output_bytes",
                format!("must be at most {MAX_OUTPUT_BYTES}, the largest MQTT payload"),
            );
        }
        if l.queue_len == 0 || l.queue_len > MAX_QUEUE_LEN {
            bad(
                "limits.queue_len",
                format!("must be between 1 and {MAX_QUEUE_LEN} events"),
            );
        }
        if l.max_consecutive_failures == 0 {
            bad(
                "limits.max_consecutive_failures",
                "must be at least 1 (the default is 10)".into(),
            );
        }
        if l.timeout_ms == Some(0) {
            bad(
                "limits.timeout_ms",
                format!(
                    "must be at least 1 millisecond; leave it out for the gateway's default \
                         (functions.default_timeout_ms, {DEFAULT_TIMEOUT_MS} unless configured)"
                ),
            );
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel: 10_000_000,
            memory_pages: 16,
            output_bytes: 65_536,
            queue_len: 256,
            queue_policy: QueuePolicy::DropOldest,
            max_consecutive_failures: 10,
            timeout_ms: None,
        }
    }
}

/// `[publish]`
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PublishRules {
    /// Topic filters the function may publish to; anything else is refused
    /// with `DENIED` and counted.
    pub allow: Vec<String>,
}

impl Manifest {
    /// Parses and checks manifest text.
    pub fn from_toml(text: &str) -> Result<Manifest, ManifestError> {
        let manifest: Manifest =
            toml::from_str(text).map_err(|e| ManifestError::Parse(e.to_string().trim().into()))?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// Checks what the schema alone cannot; returns every problem at once.
    pub fn validate(&self) -> Result<(), ManifestError> {
        let mut problems = Vec::new();
        let mut bad = |key: &str, message: String| problems.push(Problem::new(key, message));

        if !valid_name(&self.name) {
            bad(
                "name",
                format!(
                    "{:?} is not a usable function name: use 1-64 characters from a-z, 0-9 and '-'",
                    self.name
                ),
            );
        }
        if let Err(e) = semver::Version::parse(&self.version) {
            bad(
                "version",
                format!(
                    "{:?} is not a semantic version ({e}); write e.g. \"1.0.0\"",
                    self.version
                ),
            );
        }
        if self.triggers.topics.is_empty() && self.triggers.every_ms == 0 {
            bad(
                "triggers",
                "the function has no trigger, so it would never run: set triggers.topics, \
                 triggers.every_ms, or both"
                    .into(),
            );
        }
        for (i, f) in self.triggers.topics.iter().enumerate() {
            if let Err(e) = topic::validate_filter(f) {
                bad(
                    &format!("triggers.topics[{i}]"),
                    format!("{f:?} is not a valid MQTT topic filter: it {e}"),
                );
            }
        }
        if self.triggers.every_ms != 0 && self.triggers.every_ms < MIN_EVERY_MS {
            bad(
                "triggers.every_ms",
                format!("must be 0 (no interval) or at least {MIN_EVERY_MS} milliseconds"),
            );
        }
        self.limits.check(&mut bad);
        for (i, f) in self.publish.allow.iter().enumerate() {
            if let Err(e) = topic::validate_filter(f) {
                bad(
                    &format!("publish.allow[{i}]"),
                    format!("{f:?} is not a valid MQTT topic filter: it {e}"),
                );
            }
        }
        if self.replay.keep_events_s > MAX_KEEP_EVENTS_S {
            bad(
                "replay.keep_events_s",
                format!(
                    "{} is too long: trigger events are kept at most {MAX_KEEP_EVENTS_S} seconds \
                     (24 hours); use 0 to keep none",
                    self.replay.keep_events_s
                ),
            );
        }
        if self.replay.keep_events_s > 0 && self.triggers.topics.is_empty() {
            bad(
                "replay.keep_events_s",
                "the function has no topic trigger, so there are no events to keep: set \
                 triggers.topics or remove [replay]"
                    .into(),
            );
        }
        for (key, value) in &self.config {
            if config_text(value).is_none() {
                bad(
                    &format!("config.{key}"),
                    "must be a string, number, boolean or date: functions read config values \
                     as text, so arrays and tables are not supported"
                        .into(),
                );
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ManifestError::Invalid(problems))
        }
    }

    /// The `[config]` values as the text `config_get` returns: strings as
    /// they are, numbers, booleans and dates in their TOML spelling.
    pub fn config_texts(&self) -> impl Iterator<Item = (&str, String)> {
        self.config
            .iter()
            .filter_map(|(k, v)| config_text(v).map(|t| (k.as_str(), t)))
    }

    /// The trigger filters without repeats, in manifest order.
    pub fn trigger_filters(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::with_capacity(self.triggers.topics.len());
        for f in &self.triggers.topics {
            if !out.contains(f) {
                out.push(f.clone());
            }
        }
        out
    }
}

fn config_text(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(_)
        | toml::Value::Float(_)
        | toml::Value::Boolean(_)
        | toml::Value::Datetime(_) => Some(value.to_string()),
        toml::Value::Array(_) | toml::Value::Table(_) => None,
    }
}

/// Function names become part of MQTT client ids and log fields.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "threshold-alert"
version = "1.0.0"
description = "Alert when a temperature crosses a limit"

[triggers]
topics = ["sensors/+/temperature"]

[publish]
allow = ["alerts/#"]

[config]
limit = 30.0
label = "hot"
"#;

    #[test]
    fn the_abi_example_parses_with_the_documented_defaults() {
        let m = Manifest::from_toml(GOOD).unwrap();
        assert_eq!(m.limits, Limits::default());
        assert_eq!(m.limits.fuel, 10_000_000);
        assert_eq!(m.limits.memory_pages, 16);
        assert_eq!(m.limits.queue_policy, QueuePolicy::DropOldest);
        let config: Vec<_> = m.config_texts().collect();
        assert_eq!(
            config,
            vec![("label", "hot".to_owned()), ("limit", "30.0".to_owned())]
        );
    }

    #[test]
    fn unknown_keys_are_refused_naming_the_key() {
        let text = GOOD.replace("[publish]", "[limits]\nfule = 5\n\n[publish]");
        let err = Manifest::from_toml(&text).unwrap_err().to_string();
        assert!(err.contains("fule"), "{err}");
        assert!(err.contains("unknown field"), "{err}");
    }

    #[test]
    fn impossible_limits_are_refused_each_by_key() {
        let text = GOOD.replace(
            "[publish]",
            "[limits]\nfuel = 0\nmemory_pages = 0\nqueue_len = 0\nmax_consecutive_failures = 0\n\
             timeout_ms = 0\n\n[publish]",
        );
        let err = Manifest::from_toml(&text).unwrap_err().to_string();
        for key in [
            "limits.fuel: must be greater than 0",
            "limits.memory_pages: 0 is impossible",
            "limits.queue_len",
            "limits.max_consecutive_failures",
            "limits.timeout_ms: must be at least 1 millisecond",
        ] {
            assert!(err.contains(key), "{key} missing in {err}");
        }
        let text = GOOD.replace("[publish]", "[limits]\nmemory_pages = 65537\n\n[publish]");
        let err = Manifest::from_toml(&text).unwrap_err().to_string();
        assert!(
            err.contains("limits.memory_pages: 65537 is impossible"),
            "{err}"
        );
    }

    #[test]
    fn names_versions_filters_and_triggers_are_checked() {
        let text = r#"
name = "Bad_Name"
version = "one"
[triggers]
topics = ["a/#/b"]
[publish]
allow = ["x+"]
[config]
list = [1, 2]
"#;
        let err = Manifest::from_toml(text).unwrap_err().to_string();
        for key in [
            "name: \"Bad_Name\"",
            "version: \"one\" is not a semantic version",
            "triggers.topics[0]",
            "publish.allow[0]",
            "config.list",
        ] {
            assert!(err.contains(key), "{key} missing in {err}");
        }
        let err = Manifest::from_toml("name = \"a\"\nversion = \"1.0.0\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("has no trigger"), "{err}");
    }

    #[test]
    fn replay_keep_events_is_bounded_and_needs_a_topic_trigger() {
        let m = Manifest::from_toml(&format!("{GOOD}\n[replay]\nkeep_events_s = 3600\n")).unwrap();
        assert_eq!(m.replay.keep_events_s, 3600);
        assert_eq!(Manifest::from_toml(GOOD).unwrap().replay.keep_events_s, 0);
        let err = Manifest::from_toml(&format!("{GOOD}\n[replay]\nkeep_events_s = 86401\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("replay.keep_events_s: 86401 is too long"),
            "{err}"
        );
        let err = Manifest::from_toml(&format!("{GOOD}\n[replay]\nkeep = true\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `keep`"), "{err}");
        let ticker = "name = \"t\"\nversion = \"1.0.0\"\n[triggers]\nevery_ms = 1000\n\
                      [replay]\nkeep_events_s = 60\n";
        let err = Manifest::from_toml(ticker).unwrap_err().to_string();
        assert!(err.contains("no topic trigger"), "{err}");
    }

    #[test]
    fn repeated_trigger_filters_are_kept_once() {
        let text = GOOD.replace(
            "topics = [\"sensors/+/temperature\"]",
            "topics = [\"a/#\", \"b\", \"a/#\"]",
        );
        let m = Manifest::from_toml(&text).unwrap();
        assert_eq!(m.trigger_filters(), vec!["a/#".to_owned(), "b".to_owned()]);
    }
}
