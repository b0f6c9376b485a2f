//! The functions control plane over MQTT: topics, the deploy request and
//! bundle, the replies; the thin client that `perch fn ...` uses is in
//! [`client`].
//!
//! # Topics (under `perch/<gateway-id>/fn/`)
//!
//! | topic | payload | answer on |
//! |---|---|---|
//! | `deploy` | a deploy request (below) | `deploy/reply`: [`DeployReply`] |
//! | `rollback` | `{"name": "..."}` | `rollback/reply`: [`CommandReply`] |
//! | `remove` | `{"name": "..."}` | `remove/reply`: [`CommandReply`] |
//! | `promote` | `{"name": "..."}` | `promote/reply`: [`CommandReply`] |
//! | `invoke` | [`InvokeRequest`] | `invoke/reply`: [`InvokeReply`] |
//! | `replay` | [`ReplayRequest`] | `replay/reply`: [`ReplayReply`] |
//! | `list` | anything (ignored) | `list/reply`: JSON array of [`FunctionInfo`] |
//! | `<name>/status` | (published by the gateway, retained) | [`FunctionInfo`] |
//! | `<name>/logs` | (published by the gateway, not retained) | one JSON log line |
//!
//! Replies are JSON. A request from an MQTT 5 client that carries a response
//! topic is answered there, with its correlation data; otherwise on the
//! `/reply` topic above. JSON requests may carry a `"request_id"` string,
//! echoed in the reply; a deploy reply also carries the SHA-256 of the
//! bundle it answers, so a client recognises its own reply among others.
//!
//! Commands that change a function (deploy, rollback, remove) run one at a
//! time per name: a second one for a name with a command under way is
//! refused ("in progress"), not queued. Commands for different names run
//! side by side; `list` is answered while a deploy is running.
//!
//! The reply to a deploy, rollback or promote is sent once the function's
//! worker has switched (bounded: past 5 s the reply carries a `warning`),
//! and after the statuses the command changed were published: an event sent
//! after the reply reaches the new version, and the retained status read
//! after it is current.
//!
//! The retained status of each function is republished after each command
//! and when it changes, at most about once a second (counters change with
//! every event; the status topic is not a per-event feed). Removing a
//! function clears it.
//!
//! `invoke` runs the running version once on one event, in an instance of
//! its own on a copy of the state, and returns its outputs and log lines
//! in the reply instead of delivering them; it changes nothing and claims
//! no name.
//!
//! `replay` runs a version (the live one, or `"version"`, one the registry
//! keeps) over the trigger events the buffer kept for the function since
//! `"since"` (`30s`, `10m`, `1h`, `1d`), in order, in an instance of its own
//! on a copy of the state; outputs are captured, counted and the first few
//! returned, never delivered. Only functions whose manifest sets
//! `[replay] keep_events_s` have events kept.
//!
//! # Deploy request
//!
//! ```text
//! [ options: one JSON object on one line, then "\n" ]  bundle
//! ```
//!
//! The options line is optional (a bundle starts with "PRCH", never "{"):
//! `{"force": true}` allows a version older than the running one (otherwise
//! refused, so nothing is downgraded by accident); `"request_id"` as above;
//! `{"canary": 10}` runs the new version as a canary on 10 % of the events
//! and `{"shadow": true}` as a shadow (`functions::rollout`), until
//! `promote` (or `rollback`).
//!
//! # Bundles
//!
//! The bundle formats (1, unsigned; 2, signed with ed25519) and their
//! checks are in [`super::bundle`]. The largest bundle is
//! `functions.max_bundle_bytes` (4 MiB by default, kept 64 KiB under the
//! broker's `max_packet_size_bytes`, because a deploy is one MQTT packet).
//! A larger bundle that still fits in a packet is refused with a reply; one
//! larger than the broker's packet limit closes the sender's connection
//! (MQTT has no other answer to an oversized packet).

pub use super::upgrade::StateNote;
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod client;
pub use client::{
    command, deploy, deploy_with_progress, follow_logs, invoke, list, refusal, replay, request,
    status, Endpoint,
};

/// First bytes of every bundle.
pub const BUNDLE_MAGIC: &[u8; 4] = b"PRCH";
/// The format [`encode_bundle`] writes (unsigned; see [`super::bundle`]).
pub const BUNDLE_FORMAT: u8 = super::bundle::FORMAT_UNSIGNED;
const HEADER_LEN: usize = 9;

/// Why a bundle or a control request failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "the bundle is {size} bytes, more than this gateway accepts ({max} bytes, \
         functions.max_bundle_bytes); make the module smaller (build with opt-level \"s\" and \
         strip it) or raise the limit in the gateway's config"
    )]
    TooLarge { size: usize, max: usize },
    #[error(
        "the deploy options line is not valid: {0}; it is one JSON object such as \
         {{\"force\": true}} followed by a newline, in front of the bundle"
    )]
    Options(String),
    #[error(
        "the {command} request is not valid: {message}; send JSON such as \
         {{\"name\": \"my-function\"}}"
    )]
    Request { command: String, message: String },
    #[error(
        "the invoke request is not valid: {0}; send JSON such as {{\"name\": \"my-function\", \
         \"topic\": \"sensors/a\", \"payload\": \"{{\\\"temp\\\": 21.5}}\"}}"
    )]
    Invoke(String),
    #[error(
        "the replay request is not valid: {0}; send JSON such as {{\"name\": \"my-function\", \
         \"since\": \"1h\"}}"
    )]
    Replay(String),
    #[error("cannot reach the gateway's broker at {addr}: {message}")]
    Connect { addr: String, message: String },
    #[error(
        "gateway {gateway:?} publishes no status for function {name:?}: is it deployed there \
         (`perch fn list`)?"
    )]
    NoStatus { gateway: String, name: String },
    #[error(
        "no reply from gateway {gateway:?} within {timeout:?}, logged in {login}: is the gateway \
         running with that id (--gateway) and is --broker its address? Control requests from \
         clients that are not admins are dropped by the broker: log in with --user NAME \
         --password PASSWORD (-u/-P) as a [[broker.users]] entry with admin = true"
    )]
    Timeout {
        gateway: String,
        timeout: Duration,
        login: String,
    },
    /// The broker refused the client's login or subscription: says who the
    /// client was, what it needs and the flags that supply it.
    #[error("{0}")]
    Refused(String),
}

/// Builds an unsigned (format 1) bundle from a manifest and a module;
/// [`super::bundle::SigningKey::sign`] builds a signed one.
pub fn encode_bundle(manifest: &str, wasm: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + manifest.len() + wasm.len());
    out.extend_from_slice(BUNDLE_MAGIC);
    out.push(BUNDLE_FORMAT);
    out.extend_from_slice(&(manifest.len() as u32).to_be_bytes());
    out.extend_from_slice(manifest.as_bytes());
    out.extend_from_slice(wasm);
    out
}

/// Options of a deploy, sent in front of the bundle.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployOptions {
    /// Allow a version older than the running one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Run the new version as a canary taking this share (1–99 percent) of
    /// the events beside the running one (`functions::rollout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<u8>,
    /// Run the new version as a shadow on a copy of the events, its outputs
    /// discarded (`functions::rollout`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shadow: bool,
}

/// Splits a deploy request into its options and the bundle.
pub fn decode_deploy_request(payload: &[u8]) -> Result<(DeployOptions, &[u8]), ControlError> {
    if payload.first() != Some(&b'{') {
        return Ok((DeployOptions::default(), payload));
    }
    let Some(end) = payload.iter().position(|&b| b == b'\n') else {
        return Err(ControlError::Options(
            "it has no newline after it (or there is no bundle)".into(),
        ));
    };
    let options = serde_json::from_slice(&payload[..end])
        .map_err(|e| ControlError::Options(e.to_string()))?;
    Ok((options, &payload[end + 1..]))
}

/// Builds a deploy request: the options line (when there are options) and
/// the bundle.
pub fn encode_deploy_request(options: &DeployOptions, bundle: &[u8]) -> Vec<u8> {
    if options == &DeployOptions::default() {
        return bundle.to_vec();
    }
    let mut out = serde_json::to_vec(options).unwrap_or_default();
    out.push(b'\n');
    out.extend_from_slice(bundle);
    out
}

/// A rollback or remove request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandRequest {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl CommandRequest {
    pub fn decode(command: &str, payload: &[u8]) -> Result<CommandRequest, ControlError> {
        serde_json::from_slice(payload).map_err(|e| ControlError::Request {
            command: command.to_owned(),
            message: e.to_string(),
        })
    }
}

/// The answer to a rollback or remove.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandReply {
    pub ok: bool,
    /// `rollback` or `remove`.
    pub command: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The version running now (after a rollback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The version that ran before the command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced: Option<String>,
    /// Why the command was refused; nothing changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Something the caller should know although the command went through
    /// (the worker did not confirm the switch in time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    /// What the command did to the function's state (a rollback's restored
    /// snapshot and re-run events, or why they were not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<super::upgrade::StateNote>,
}

/// An `invoke` request: run function `name` once on one event, its outputs
/// captured and returned, never delivered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvokeRequest {
    pub name: String,
    /// The event's topic (default: the function's first trigger filter,
    /// each wildcard level replaced by `invoke`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// The event's payload, as text.
    #[serde(default)]
    pub payload: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl InvokeRequest {
    pub fn decode(payload: &[u8]) -> Result<InvokeRequest, ControlError> {
        serde_json::from_slice(payload).map_err(|e| ControlError::Invoke(e.to_string()))
    }
}

/// A `replay` request: run a version of `name` over the trigger events
/// kept since `since` ago.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    pub name: String,
    /// How far back: a number and a unit, `30s`, `10m`, `1h` or `1d`.
    pub since: String,
    /// A version the registry keeps (default: the live one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl ReplayRequest {
    pub fn decode(payload: &[u8]) -> Result<ReplayRequest, ControlError> {
        serde_json::from_slice(payload).map_err(|e| ControlError::Replay(e.to_string()))
    }
}

/// The answer to a `replay`: a summary and the first outputs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplayReply {
    /// Whether the replay ran (even if the function failed on some events).
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The version that ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Kept events in the window, and how many were run (fewer when the
    /// replay hit its limits: 10 000 events, 5 s; `perch fn replay` waits
    /// 10 s for the reply by default).
    #[serde(default)]
    pub events: u64,
    #[serde(default)]
    pub replayed: u64,
    /// Events on which the function failed, and the first few messages.
    #[serde(default)]
    pub errors: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub first_errors: Vec<String>,
    /// Outputs by kind.
    #[serde(default)]
    pub publishes: u64,
    #[serde(default)]
    pub emits: u64,
    #[serde(default)]
    pub forwards: u64,
    /// With another version than the live one: events whose outputs
    /// differed from the live version's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub differed: Option<u64>,
    /// The first outputs, in order; none was delivered.
    #[serde(default)]
    pub outputs: Vec<InvokeOutput>,
    #[serde(default)]
    pub duration_us: u64,
    /// Why nothing ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Parses a replay window: a whole number and a unit (`s`, `m`, `h`, `d`),
/// such as `30s`, `10m`, `1h`; returns seconds.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let bad = |why: &str| {
        format!(
            "{text:?} is not a duration: {why}; write a whole number and a unit, such as 30s, \
             10m, 1h or 1d"
        )
    };
    let text_trim = text.trim();
    let split = text_trim
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| bad("it has no unit"))?;
    let (number, unit) = text_trim.split_at(split);
    if number.is_empty() {
        return Err(bad("it does not start with a number"));
    }
    let n: u64 = number.parse().map_err(|_| bad("the number is too large"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad(&format!("{unit:?} is not a unit"))),
    };
    if n == 0 {
        return Err(bad("it is zero, so there is nothing to replay"));
    }
    n.checked_mul(scale)
        .ok_or_else(|| bad("the number is too large"))
}

/// One output an invoked function made (captured, not delivered).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum InvokeOutput {
    Publish {
        topic: String,
        payload: String,
    },
    Emit {
        metric: String,
        key: String,
        value: f64,
    },
    Forward {
        stream: String,
        record: String,
    },
}

/// The answer to an `invoke`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InvokeReply {
    /// Whether the function ran and returned cleanly.
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The version that ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The event's topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// How long the invocation took, in microseconds, and the fuel it
    /// burnt.
    #[serde(default)]
    pub duration_us: u64,
    #[serde(default)]
    pub fuel_used: u64,
    /// What it published, emitted and forwarded, in order; none of it was
    /// delivered.
    #[serde(default)]
    pub outputs: Vec<InvokeOutput>,
    /// Its log lines (the JSON objects of `perch fn logs --json`).
    #[serde(default)]
    pub logs: Vec<serde_json::Value>,
    /// Why the invocation failed (a trap, a non-zero return): it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// Why nothing ran (unknown or stopped function, bad request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Hex SHA-256, as used in replies.
pub use crate::kit::digest::sha256_hex;

pub fn deploy_topic(gateway: &str) -> String {
    format!("perch/{gateway}/fn/deploy")
}

pub fn deploy_reply_topic(gateway: &str) -> String {
    format!("perch/{gateway}/fn/deploy/reply")
}

pub fn list_topic(gateway: &str) -> String {
    format!("perch/{gateway}/fn/list")
}

pub fn list_reply_topic(gateway: &str) -> String {
    format!("perch/{gateway}/fn/list/reply")
}

/// `perch/<gateway>/fn/<command>`.
pub fn command_topic(gateway: &str, command: &str) -> String {
    format!("perch/{gateway}/fn/{command}")
}

/// `perch/<gateway>/fn/<command>/reply`.
pub fn reply_topic(gateway: &str, command: &str) -> String {
    format!("perch/{gateway}/fn/{command}/reply")
}

/// The log lines of one function (JSON, non-retained; see `runtime`).
pub fn logs_topic(gateway: &str, name: &str) -> String {
    format!("perch/{gateway}/fn/{name}/logs")
}

/// The retained status of one function.
pub fn status_topic(gateway: &str, name: &str) -> String {
    format!("perch/{gateway}/fn/{name}/status")
}

/// The answer to a deploy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployReply {
    /// Whether the new version is live.
    pub ok: bool,
    /// SHA-256 of the bundle this answers.
    pub bundle_sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// SHA-256 of the module.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The version it replaced, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced: Option<String>,
    /// Why the deploy was refused; whatever ran before still runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Something the caller should know although the deploy went through
    /// (the worker did not confirm the switch in time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    /// What the deploy did to the function's state: the snapshot taken of
    /// what the version before left, `perch_migrate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<super::upgrade::StateNote>,
}

/// One function in `perch fn list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionInfo {
    pub name: String,
    pub version: String,
    /// `running`, `stopped` or `starting`.
    pub state: String,
    /// Why it is stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub invocations: u64,
    pub errors: u64,
    /// Events dropped because its queue was full.
    pub dropped: u64,
    /// Events waiting now.
    pub queued: usize,
    /// Publishes refused by `publish.allow` (`DENIED`).
    pub denied: u64,
    /// Outputs past the per-invocation limits (`LIMIT`).
    pub limited: u64,
    /// Outputs dropped because the stage behind was full (`FULL`).
    pub full: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    pub sha256: String,
    pub deployed_at_ms: i64,
    /// The trigger filters of the running version.
    #[serde(default)]
    pub triggers: Vec<String>,
    /// Its timer interval (0: none).
    #[serde(default)]
    pub every_ms: u64,
    /// The versions kept in the registry, oldest deploy first.
    #[serde(default)]
    pub versions: Vec<String>,
    /// A canary beside the running version (`functions::rollout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<super::rollout::RolloutInfo>,
    /// A shadow beside the running version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<super::rollout::RolloutInfo>,
    /// What the last upgrade did to the state (deploy, promote, rollback,
    /// a canary's end), until the next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_upgrade: Option<super::upgrade::StateNote>,
    /// The state snapshots kept, oldest first (`functions::snapshot`).
    #[serde(default)]
    pub snapshots: Vec<super::snapshot::SnapshotInfo>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_round_trips() {
        let b = encode_bundle("name = \"x\"", b"\0asm\x01\0\0\0");
        assert_eq!(&b[..5], b"PRCH\x01");
        let parsed = super::super::bundle::parse(&b).unwrap();
        assert_eq!(parsed.manifest, "name = \"x\"");
        assert_eq!(parsed.wasm, b"\0asm\x01\0\0\0");
    }

    #[test]
    fn deploy_options_travel_in_front_of_the_bundle() {
        let bundle = encode_bundle("name = \"x\"", b"\0asm");
        let (o, b) = decode_deploy_request(&bundle).unwrap();
        assert_eq!((o, b), (DeployOptions::default(), &bundle[..]));
        let force = DeployOptions {
            force: true,
            request_id: Some("r1".into()),
            ..DeployOptions::default()
        };
        let request = encode_deploy_request(&force, &bundle);
        assert!(request.starts_with(b"{\"force\":true,\"request_id\":\"r1\"}\n"));
        let (o, b) = decode_deploy_request(&request).unwrap();
        assert_eq!((o, b), (force, &bundle[..]));
        let err = decode_deploy_request(b"{\"forse\": true}\nPRCH")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `forse`"), "{err}");
        assert!(err.contains("followed by a newline"), "{err}");
        let err = decode_deploy_request(b"{\"force\": true}")
            .unwrap_err()
            .to_string();
        assert!(err.contains("no newline"), "{err}");
        let err = CommandRequest::decode("rollback", b"my-fn")
            .unwrap_err()
            .to_string();
        assert!(err.contains("the rollback request is not valid"), "{err}");
    }
}

#[cfg(test)]
mod replay_tests {
    use super::parse_duration;

    #[test]
    fn replay_durations_parse_and_bad_ones_say_what_to_write() {
        assert_eq!(parse_duration("30s"), Ok(30));
        assert_eq!(parse_duration("10m"), Ok(600));
        assert_eq!(parse_duration("1h"), Ok(3600));
        assert_eq!(parse_duration(" 2d "), Ok(172_800));
        for (bad, why) in [
            ("1", "has no unit"),
            ("h", "does not start with a number"),
            ("", "has no unit"),
            ("1w", "\"w\" is not a unit"),
            ("1.5h", "\".5h\" is not a unit"),
            ("-1h", "does not start with a number"),
            ("0s", "it is zero"),
            ("99999999999999999999s", "too large"),
            ("999999999999999999d", "too large"),
        ] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
            assert!(e.contains("such as 30s, 10m, 1h or 1d"), "{e}");
        }
    }
}
