//! The functions control plane over MQTT: topics, the deploy bundle, the
//! replies, and the thin client that `perch fn ...` uses.
//!
//! # Topics (under `perch/<gateway-id>/fn/`)
//!
//! | topic | payload | answer on |
//! |---|---|---|
//! | `deploy` | a bundle (below) | `deploy/reply`: [`DeployReply`] as JSON |
//! | `list` | anything (ignored) | `list/reply`: JSON array of [`FunctionInfo`] |
//!
//! Every deploy reply carries the SHA-256 of the bundle it answers, so a
//! client that published a bundle recognises its own reply among others.
//!
//! # Bundle format, version 1
//!
//! ```text
//! offset  size  content
//! 0       4     magic "PRCH"
//! 4       1     bundle format version: 1
//! 5       4     manifest length M, u32 big-endian
//! 9       M     the manifest, UTF-8 TOML (sdk/ABI.md, "Manifest")
//! 9+M     rest  the WebAssembly module
//! ```
//!
//! The largest bundle is the broker's `max_packet_size_bytes`. Signing
//! (issue 5) will be a new format version; version 1 bundles are unsigned.

use std::time::Duration;

use bytes::Bytes;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// First bytes of every bundle.
pub const BUNDLE_MAGIC: &[u8; 4] = b"PRCH";
/// The bundle format this gateway reads and writes.
pub const BUNDLE_FORMAT: u8 = 1;
const HEADER_LEN: usize = 9;

/// Why a bundle or a control request failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "the deploy payload is not a perch bundle (it does not start with \"PRCH\"); \
         deploy with `perch fn deploy FILE.wasm --manifest FILE.toml`, which builds the bundle"
    )]
    NotABundle,
    #[error(
        "the bundle has format version {0}, this gateway reads version {BUNDLE_FORMAT}; \
         use a `perch fn deploy` of the same perch release as the gateway"
    )]
    BundleVersion(u8),
    #[error(
        "the bundle is cut short: its header announces a {announced}-byte manifest but only \
         {available} bytes follow"
    )]
    Truncated { announced: usize, available: usize },
    #[error("the manifest in the bundle is not UTF-8 text")]
    ManifestNotText,
    #[error("cannot reach the gateway's broker at {addr}: {message}")]
    Connect { addr: String, message: String },
    #[error(
        "no reply from gateway {gateway:?} within {timeout:?}: is the gateway running with that \
         id (--gateway) and is --broker its address?"
    )]
    Timeout { gateway: String, timeout: Duration },
}

/// Builds a bundle from a manifest and a module.
pub fn encode_bundle(manifest: &str, wasm: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + manifest.len() + wasm.len());
    out.extend_from_slice(BUNDLE_MAGIC);
    out.push(BUNDLE_FORMAT);
    out.extend_from_slice(&(manifest.len() as u32).to_be_bytes());
    out.extend_from_slice(manifest.as_bytes());
    out.extend_from_slice(wasm);
    out
}

/// Splits a bundle into manifest text and module bytes.
pub fn decode_bundle(bytes: &[u8]) -> Result<(&str, &[u8]), ControlError> {
    if bytes.len() < 5 || &bytes[..4] != BUNDLE_MAGIC {
        return Err(ControlError::NotABundle);
    }
    if bytes[4] != BUNDLE_FORMAT {
        return Err(ControlError::BundleVersion(bytes[4]));
    }
    let rest = &bytes[5..];
    let Some((len, rest)) = rest.split_first_chunk::<4>() else {
        return Err(ControlError::Truncated {
            announced: 0,
            available: rest.len(),
        });
    };
    let len = u32::from_be_bytes(*len) as usize;
    if len > rest.len() {
        return Err(ControlError::Truncated {
            announced: len,
            available: rest.len(),
        });
    }
    let (manifest, wasm) = rest.split_at(len);
    let manifest = std::str::from_utf8(manifest).map_err(|_| ControlError::ManifestNotText)?;
    Ok((manifest, wasm))
}

/// Hex SHA-256, as used in replies.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

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

/// The answer to a deploy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployReply {
    /// Whether the new version is live.
    pub ok: bool,
    /// SHA-256 of the bundle this answers.
    pub bundle_sha256: String,
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
}

/// How the `perch fn` client reaches a gateway.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `host:port` of the gateway's broker.
    pub broker: String,
    /// The gateway's id.
    pub gateway: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// How long to wait for the reply.
    pub timeout: Duration,
}

/// Publishes `payload` to `topic` and returns the first message on
/// `reply_topic` that `accept` takes. Subscribes before publishing, so the
/// reply cannot be missed.
pub async fn request(
    endpoint: &Endpoint,
    topic: &str,
    reply_topic: &str,
    payload: Vec<u8>,
    accept: impl Fn(&[u8]) -> bool,
) -> Result<Bytes, ControlError> {
    let (host, port) = match endpoint.broker.rsplit_once(':') {
        Some((h, p)) => (h.trim_matches(['[', ']']), p.parse().unwrap_or(1883)),
        None => (endpoint.broker.as_str(), 1883),
    };
    let client_id = format!("perch-cli-{:016x}", rand::random::<u64>());
    let mut options = MqttOptions::new(client_id, host, port);
    options.set_keep_alive(Duration::from_secs(30));
    // A bundle is one packet; rumqttc's default limit is 10 KiB.
    options.set_max_packet_size(payload.len() + 1024 * 1024, payload.len() + 1024);
    if let (Some(u), Some(p)) = (&endpoint.username, &endpoint.password) {
        options.set_credentials(u, p);
    }
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    let connect_err = |message: String| ControlError::Connect {
        addr: endpoint.broker.clone(),
        message,
    };
    let exchange = async {
        client
            .subscribe(reply_topic, QoS::AtLeastOnce)
            .await
            .map_err(|e| connect_err(e.to_string()))?;
        let mut payload = Some(payload);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(payload) = payload.take() {
                        client
                            .publish(topic, QoS::AtLeastOnce, false, payload)
                            .await
                            .map_err(|e| connect_err(e.to_string()))?;
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p)))
                    if p.topic == reply_topic && accept(&p.payload) =>
                {
                    return Ok(p.payload);
                }
                Ok(_) => {}
                Err(e) => return Err(connect_err(e.to_string())),
            }
        }
    };
    let result = tokio::time::timeout(endpoint.timeout, exchange)
        .await
        .unwrap_or(Err(ControlError::Timeout {
            gateway: endpoint.gateway.clone(),
            timeout: endpoint.timeout,
        }));
    let _ = client.try_disconnect();
    result
}

/// Deploys a bundle and returns the gateway's reply.
pub async fn deploy(endpoint: &Endpoint, bundle: Vec<u8>) -> Result<DeployReply, ControlError> {
    let bundle_sha256 = sha256_hex(&bundle);
    let reply = request(
        endpoint,
        &deploy_topic(&endpoint.gateway),
        &deploy_reply_topic(&endpoint.gateway),
        bundle,
        |p| {
            serde_json::from_slice::<DeployReply>(p).is_ok_and(|r| r.bundle_sha256 == bundle_sha256)
        },
    )
    .await?;
    // `accept` parsed it already.
    Ok(
        serde_json::from_slice(&reply).unwrap_or_else(|_| DeployReply {
            ok: false,
            bundle_sha256: String::new(),
            name: None,
            version: None,
            sha256: None,
            replaced: None,
            error: Some("unreadable reply".into()),
        }),
    )
}

/// Lists the gateway's functions.
pub async fn list(endpoint: &Endpoint) -> Result<Vec<FunctionInfo>, ControlError> {
    let reply = request(
        endpoint,
        &list_topic(&endpoint.gateway),
        &list_reply_topic(&endpoint.gateway),
        b"{}".to_vec(),
        |p| serde_json::from_slice::<Vec<FunctionInfo>>(p).is_ok(),
    )
    .await?;
    Ok(serde_json::from_slice(&reply).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_round_trips() {
        let b = encode_bundle("name = \"x\"", b"\0asm\x01\0\0\0");
        assert_eq!(&b[..5], b"PRCH\x01");
        let (m, w) = decode_bundle(&b).unwrap();
        assert_eq!(m, "name = \"x\"");
        assert_eq!(w, b"\0asm\x01\0\0\0");
    }

    #[test]
    fn bad_bundles_say_what_is_wrong() {
        let err = decode_bundle(b"\0asm\x01\0\0\0").unwrap_err().to_string();
        assert!(err.contains("not a perch bundle"), "{err}");
        let err = decode_bundle(b"PRCH\x02\0\0\0\0").unwrap_err().to_string();
        assert!(err.contains("format version 2"), "{err}");
        let err = decode_bundle(b"PRCH\x01\0\0\0\x10abc")
            .unwrap_err()
            .to_string();
        assert!(err.contains("16-byte manifest but only 3 bytes"), "{err}");
    }
}
