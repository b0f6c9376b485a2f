//! `[upstream]`: where records go, and which local topics are captured.

use std::path::PathBuf;

use serde::Deserialize;

use crate::kit::topic;
use crate::kit::Problem;

/// `[upstream]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// Local topic filters whose messages are forwarded upstream as records
    /// without a function (stream = the message's topic).
    pub forward_topics: Vec<String>,
    /// `[[upstream.mirror]]`: local topics sent to the upstream MQTT broker
    /// as they are (raw payload, same or prefixed topic), bridge-style,
    /// through the buffer like `forward_topics` ([`super::mirror`]).
    pub mirror: Vec<super::MirrorRule>,
    /// First reconnect delay; doubles per failed attempt, with jitter.
    pub backoff_initial_ms: u64,
    /// Longest reconnect delay.
    pub backoff_max_ms: u64,
    /// Deliver to an MQTT broker. Without `[upstream.mqtt]`, records stay in
    /// the buffer (within its bounds) and `perch buffer stats` shows them.
    pub mqtt: Option<MqttUpstreamConfig>,
    /// Deliver to an HTTP(S) endpoint as CloudEvents batches instead.
    pub http: Option<HttpUpstreamConfig>,
}

/// `[upstream.http]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpUpstreamConfig {
    /// The endpoint batches are POSTed to (`https://...`; `http://` only for
    /// tests and trusted networks).
    pub url: String,
    /// Sent as `Authorization: Bearer <token>` when not empty.
    #[serde(default)]
    pub bearer_token: String,
    /// Compress request bodies (`Content-Encoding: gzip`).
    #[serde(default)]
    pub gzip: bool,
    /// Records per POST at most.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Longest a POST may take, connection included.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// Extra CA and client certificate (mTLS).
    #[serde(default)]
    pub tls: Option<HttpTls>,
    /// `[upstream.http.drain]`: live first, backlog paced
    /// ([`super::pacing`]).
    #[serde(default)]
    pub drain: super::pacing::DrainConfig,
}

/// `[upstream.http.tls]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTls {
    /// CA to trust instead of the built-in web roots (PEM).
    #[serde(default)]
    pub ca_path: Option<PathBuf>,
    /// Client certificate for mTLS (PEM).
    #[serde(default)]
    pub cert_path: Option<PathBuf>,
    /// Its private key (PEM).
    #[serde(default)]
    pub key_path: Option<PathBuf>,
}

fn default_timeout() -> u64 {
    10_000
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            forward_topics: Vec::new(),
            mirror: Vec::new(),
            backoff_initial_ms: 500,
            backoff_max_ms: 30_000,
            mqtt: None,
            http: None,
        }
    }
}

/// `[upstream.mqtt]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttUpstreamConfig {
    /// Host name or address of the upstream broker.
    pub host: String,
    /// Its port (1883 plain, 8883 TLS, usually).
    #[serde(default = "default_port")]
    pub port: u16,
    /// MQTT client id; empty means `perch-<gateway id>`.
    #[serde(default)]
    pub client_id: String,
    /// User name, if the broker wants one.
    #[serde(default)]
    pub username: String,
    /// Password for `username`.
    #[serde(default)]
    pub password: String,
    /// Records go to `<topic_prefix>/<stream>`; `{id}` is the gateway id.
    #[serde(default = "default_prefix")]
    pub topic_prefix: String,
    /// MQTT keep-alive towards the upstream broker.
    #[serde(default = "default_keep_alive")]
    pub keep_alive_s: u64,
    /// MQTT messages published and not yet acknowledged (PUBACK), at most.
    /// Each message carries up to `max_records_per_message` records, so up
    /// to `max_inflight * max_records_per_message` records are in flight.
    /// 100 is also AWS IoT Core's limit per connection.
    #[serde(default = "default_inflight")]
    pub max_inflight: u16,
    /// Records read from the buffer per query.
    #[serde(default = "default_read_batch")]
    pub batch_size: usize,
    /// Records packed into one MQTT message at most (all of one stream, in
    /// order). 1 sends each record as its own message (the bare envelope);
    /// more sends a JSON array of envelopes.
    #[serde(default = "default_records_per_message")]
    pub max_records_per_message: usize,
    /// Payload bytes of one MQTT message at most when it packs several
    /// records (a record bigger than this travels alone). 131072 fits AWS
    /// IoT Core's 128 KiB message limit.
    #[serde(default = "default_message_bytes")]
    pub max_message_bytes: usize,
    /// Largest packet sent or accepted.
    #[serde(default = "default_packet")]
    pub max_packet_size_bytes: usize,
    /// TLS towards the broker (AWS IoT Core, EMQX, HiveMQ, Mosquitto...).
    #[serde(default)]
    pub tls: Option<UpstreamTls>,
    /// Fleet groups this gateway belongs to: it follows the retained deploy
    /// bundles on `perch/fleet/<group>/deploy/<name>` of the upstream
    /// broker (the fleet's desired state, see [`super::fleet`]).
    #[serde(default)]
    pub fleet_groups: Vec<String>,
    /// `[upstream.mqtt.drain]`: live first, backlog paced
    /// ([`super::pacing`]).
    #[serde(default)]
    pub drain: super::pacing::DrainConfig,
}

/// `[upstream.mqtt.tls]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// PEM file with the CA certificate(s) that sign the broker's certificate.
    pub ca_path: PathBuf,
    /// Client certificate (PEM) for brokers that authenticate by certificate.
    #[serde(default)]
    pub cert_path: Option<PathBuf>,
    /// Its private key (PEM).
    #[serde(default)]
    pub key_path: Option<PathBuf>,
}

fn default_port() -> u16 {
    1883
}
fn default_prefix() -> String {
    "perch/{id}/up".to_owned()
}
fn default_keep_alive() -> u64 {
    30
}
fn default_inflight() -> u16 {
    100
}
fn default_batch() -> usize {
    100
}
fn default_read_batch() -> usize {
    1000
}
fn default_records_per_message() -> usize {
    100
}
fn default_message_bytes() -> usize {
    128 * 1024
}
fn default_packet() -> usize {
    1024 * 1024
}

impl UpstreamConfig {
    /// Where records go, for people to read (status page, `perch status`):
    /// `mqtt://host:port` (`mqtts://` with TLS) or the HTTP endpoint without
    /// its user info and query, which may hold credentials; `None` without
    /// an upstream.
    pub fn endpoint(&self) -> Option<String> {
        if let Some(m) = &self.mqtt {
            let scheme = if m.tls.is_some() { "mqtts" } else { "mqtt" };
            return Some(format!("{scheme}://{}:{}", m.host, m.port));
        }
        let url = self.http.as_ref()?.url.as_str();
        let url = url.split(['?', '#']).next().unwrap_or(url);
        Some(match url.split_once("://") {
            Some((scheme, rest)) => {
                let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
                let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
                format!("{scheme}://{host}{path}")
            }
            None => url.to_owned(),
        })
    }

    /// `[upstream.mqtt.drain]` and `[upstream.http.drain]`.
    fn validate_drains(&self, problems: &mut Vec<Problem>) {
        if let Some(m) = &self.mqtt {
            let at = "upstream.mqtt.drain";
            m.drain.validate(at, m.max_records_per_message, problems);
        }
        if let Some(h) = &self.http {
            h.drain
                .validate("upstream.http.drain", h.batch_size, problems);
        }
    }

    pub(crate) fn validate(&self, problems: &mut Vec<Problem>) {
        for (i, f) in self.forward_topics.iter().enumerate() {
            if let Err(e) = topic::validate_filter(f) {
                problems.push(Problem::new(
                    format!("upstream.forward_topics[{i}]"),
                    format!("{f:?} is not a valid MQTT topic filter: it {e}"),
                ));
            }
        }
        super::mirror::validate(&self.mirror, self.http.is_some(), problems);
        self.validate_drains(problems);
        if self.backoff_initial_ms == 0 || self.backoff_max_ms < self.backoff_initial_ms {
            problems.push(Problem::new(
                "upstream.backoff_initial_ms",
                "must be greater than 0 and at most upstream.backoff_max_ms",
            ));
        }
        if let Some(m) = &self.mqtt {
            for (i, g) in m.fleet_groups.iter().enumerate() {
                if g.is_empty() || g.contains(['/', '+', '#']) {
                    problems.push(Problem::new(
                        format!("upstream.mqtt.fleet_groups[{i}]"),
                        format!(
                            "{g:?} is not a fleet group name: it is one MQTT topic level, not \
                             empty, without '/', '+' or '#' (e.g. \"greenhouses\")"
                        ),
                    ));
                }
            }
        }
        if let Some(h) = &self.http {
            if self.mqtt.is_some() {
                problems.push(Problem::new(
                    "upstream",
                    "both [upstream.mqtt] and [upstream.http] are set; choose one",
                ));
            }
            if !(h.url.starts_with("https://") || h.url.starts_with("http://")) {
                problems.push(Problem::new(
                    "upstream.http.url",
                    format!("{:?} is not an http:// or https:// URL", h.url),
                ));
            }
            if h.batch_size == 0 || h.timeout_ms == 0 {
                problems.push(Problem::new(
                    "upstream.http.batch_size",
                    "batch_size and timeout_ms must be greater than 0",
                ));
            }
            if let Some(t) = &h.tls {
                for (k, p) in [
                    ("ca_path", &t.ca_path),
                    ("cert_path", &t.cert_path),
                    ("key_path", &t.key_path),
                ] {
                    if let Some(p) = p.as_ref().filter(|p| !p.exists()) {
                        problems.push(Problem::new(
                            format!("upstream.http.tls.{k}"),
                            format!("{} does not exist", p.display()),
                        ));
                    }
                }
                if t.cert_path.is_some() != t.key_path.is_some() {
                    problems.push(Problem::new(
                        "upstream.http.tls",
                        "cert_path and key_path go together: give both or neither",
                    ));
                }
            }
        }
        let Some(m) = &self.mqtt else { return };
        if m.host.is_empty() {
            problems.push(Problem::new("upstream.mqtt.host", "must not be empty"));
        }
        if m.keep_alive_s < 5 {
            problems.push(Problem::new(
                "upstream.mqtt.keep_alive_s",
                "must be at least 5",
            ));
        }
        if m.max_inflight == 0 || m.batch_size == 0 || m.max_records_per_message == 0 {
            problems.push(Problem::new(
                "upstream.mqtt.max_inflight",
                "max_inflight, batch_size and max_records_per_message must be greater than 0",
            ));
        }
        // The topic and the fixed header need room in the packet too.
        if m.max_message_bytes == 0 || m.max_message_bytes + 1024 > m.max_packet_size_bytes {
            problems.push(Problem::new(
                "upstream.mqtt.max_message_bytes",
                format!(
                    "must be greater than 0 and at least 1024 below max_packet_size_bytes \
                     ({}); lower it or raise max_packet_size_bytes",
                    m.max_packet_size_bytes
                ),
            ));
        }
        if m.topic_prefix.is_empty() || m.topic_prefix.contains(['+', '#']) {
            problems.push(Problem::new(
                "upstream.mqtt.topic_prefix",
                "must be a topic name without wildcards",
            ));
        }
        if let Some(tls) = &m.tls {
            if !tls.ca_path.exists() {
                problems.push(Problem::new(
                    "upstream.mqtt.tls.ca_path",
                    format!("{} does not exist", tls.ca_path.display()),
                ));
            }
            if tls.cert_path.is_some() != tls.key_path.is_some() {
                problems.push(Problem::new(
                    "upstream.mqtt.tls",
                    "cert_path and key_path go together: give both or neither",
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn message_packing_values_are_checked_against_the_packet_size() {
        let err = Config::from_toml(
            "[upstream.mqtt]\nhost = \"h\"\nmax_records_per_message = 0\n\
             max_message_bytes = 1048576\nmax_packet_size_bytes = 1048576\n",
            "t.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("upstream.mqtt.max_inflight")
                && err.contains("max_records_per_message must be greater than 0"),
            "{err}"
        );
        assert!(
            err.contains("upstream.mqtt.max_message_bytes")
                && err.contains("raise max_packet_size_bytes"),
            "{err}"
        );
    }

    #[test]
    fn the_endpoint_shown_carries_no_credentials() {
        let endpoint = |toml: &str| {
            Config::from_toml(toml, "t.toml")
                .unwrap()
                .upstream
                .endpoint()
        };
        assert_eq!(endpoint(""), None);
        assert_eq!(
            endpoint("[upstream.mqtt]\nhost = \"h.example\"\nport = 1884\n").as_deref(),
            Some("mqtt://h.example:1884")
        );
        assert_eq!(
            endpoint("[upstream.http]\nurl = \"https://u:secret@in.example/p?key=secret\"\n")
                .as_deref(),
            Some("https://in.example/p")
        );
    }

    #[test]
    fn packing_defaults_fit_aws_iot_core() {
        let c = Config::from_toml("[upstream.mqtt]\nhost = \"h\"\n", "t.toml").unwrap();
        let m = c.upstream.mqtt.unwrap();
        assert_eq!(m.max_records_per_message, 100);
        assert_eq!(m.max_message_bytes, 128 * 1024);
        assert_eq!(m.max_inflight, 100);
    }
}
