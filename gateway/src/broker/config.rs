//! `[broker]`: limits of the embedded broker, its listeners, its users and
//! their ACLs.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::config::Problem;
use crate::topic;

use super::auth;

/// `[broker]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// Most client connections at once, over all listeners, the gateway's own
    /// in-process links included. Each costs a few KiB plus its queues.
    pub max_connections: usize,
    /// Largest MQTT packet accepted from a client. Function bundles travel as
    /// one packet, so this also bounds the largest deployable bundle.
    pub max_packet_size_bytes: usize,
    /// Unacknowledged QoS 1/2 messages in flight per client.
    pub max_inflight_count: usize,
    /// How long a new connection may take to send its whole CONNECT,
    /// however it trickles in; then it is closed (slowloris).
    pub connection_timeout_ms: u16,
    /// Most connections at once, over all listeners, that have not sent
    /// their whole CONNECT yet; past it a new connection is closed at once.
    /// Bounds the sockets slowloris clients can hold.
    pub max_pending_connections: usize,
    /// Failed logins allowed per minute over all clients (a bucket holding
    /// a minute's worth); past it, logins that need a password check are
    /// refused without one until it refills. Bounds password guessing and
    /// the CPU bad logins burn (each check is an Argon2id hash).
    pub max_failed_logins_per_minute: u32,
    /// Size of one segment of the broker's in-memory log per subscribed
    /// filter. With `max_segment_count` this bounds the memory the broker
    /// keeps per filter: `max_segment_size_bytes * max_segment_count`.
    pub max_segment_size_bytes: usize,
    /// Segments kept per filter; the oldest is dropped when a new one starts.
    pub max_segment_count: usize,
    /// Most packets queued towards one client before the broker stops reading
    /// more for it (backpressure towards slow subscribers).
    pub max_outgoing_packet_count: u64,
    /// How long a client on a TLS listener may take to complete its
    /// handshake; a stalled one is dropped without holding up others.
    pub tls_handshake_timeout_ms: u64,
    /// Most retained messages (topics) kept on disk, so they survive a
    /// restart. A retained publish to a new topic past the bound is retained
    /// in memory only (logged and counted).
    pub max_retained_messages: u64,
    /// Most bytes (topic + payload) of retained messages kept on disk.
    pub max_retained_bytes: u64,
    /// Most persistent sessions (3.1.1 clean session 0, 5.0 a session
    /// expiry above 0) kept on disk, so they survive a restart. A session
    /// past the bound works until the next restart (logged and counted).
    pub max_persistent_sessions: u64,
    /// Most subscriptions kept on disk per persistent session.
    pub max_subscriptions_per_session: u64,
    /// Where the broker accepts MQTT clients. Each listener speaks MQTT 3.1.1
    /// and 5.0 on one port.
    pub listeners: Vec<ListenerConfig>,
    /// What clients without a username may do, on listeners that allow them.
    pub anonymous: AclConfig,
    /// Users who log in with a username and password.
    pub users: Vec<UserConfig>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            max_connections: 1_024,
            max_packet_size_bytes: 5 * 1024 * 1024,
            max_inflight_count: 100,
            connection_timeout_ms: 5_000,
            max_pending_connections: 256,
            max_failed_logins_per_minute: 60,
            max_segment_size_bytes: 1024 * 1024,
            max_segment_count: 4,
            max_outgoing_packet_count: 200,
            tls_handshake_timeout_ms: 10_000,
            max_retained_messages: 10_000,
            max_retained_bytes: 16 * 1024 * 1024,
            max_persistent_sessions: 1_000,
            max_subscriptions_per_session: 100,
            listeners: vec![ListenerConfig::default()],
            anonymous: AclConfig::default(),
            users: Vec::new(),
        }
    }
}

/// `[[broker.listeners]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// A name for logs and errors.
    pub name: String,
    /// Address and port to listen on. Port 0 picks a free port, which the
    /// ready line in the log names.
    pub listen: SocketAddr,
    /// Whether clients may connect without a username. Only allowed on a
    /// loopback address: anything reachable from the network must log in.
    #[serde(default)]
    pub allow_anonymous: bool,
    /// Serve MQTT over TLS on this listener.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            name: "local".to_owned(),
            listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
            allow_anonymous: true,
            tls: None,
        }
    }
}

/// `[broker.listeners.tls]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the server certificate chain, leaf first.
    pub cert_path: PathBuf,
    /// PEM file with the server's private key (PKCS#8, PKCS#1 or SEC1).
    pub key_path: PathBuf,
}

/// Topic filters a client may publish and subscribe to.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AclConfig {
    /// Filters the client may publish to; a publish elsewhere is not delivered.
    pub publish: Vec<String>,
    /// Filters the client may subscribe within; a subscription reaching
    /// outside them is refused with SUBACK failure.
    pub subscribe: Vec<String>,
    /// (`[broker.anonymous]` only.) Whether anonymous clients may use the
    /// functions control topics (`perch/+/fn/#`: deploy, rollback, remove…).
    /// Unset: yes while no `[[broker.users]]` entry is an admin and
    /// `functions.trusted_keys` is empty; no otherwise.
    pub admin: Option<bool>,
}

impl Default for AclConfig {
    fn default() -> Self {
        AclConfig {
            publish: vec!["#".to_owned()],
            subscribe: vec!["#".to_owned()],
            admin: None,
        }
    }
}

/// `[[broker.users]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// The MQTT username.
    pub name: String,
    /// Argon2 hash of the password in PHC format (`$argon2id$...`), as printed
    /// by `perch passwd`. Plain passwords are never stored.
    pub password_hash: String,
    /// Filters this user may publish to. Empty: none.
    #[serde(default)]
    pub publish: Vec<String>,
    /// Filters this user may subscribe within. Empty: none.
    #[serde(default)]
    pub subscribe: Vec<String>,
    /// Whether this user may use the functions control topics
    /// (`perch/+/fn/#`: deploy, rollback, remove, list…), which no publish
    /// filter grants. Naming an admin takes that right from anonymous
    /// clients (unless `[broker.anonymous] admin = true`).
    #[serde(default)]
    pub admin: bool,
}

impl BrokerConfig {
    pub(crate) fn validate(&self, problems: &mut Vec<Problem>) {
        let positive: [(&str, u64); 14] = [
            (
                "broker.max_failed_logins_per_minute",
                u64::from(self.max_failed_logins_per_minute),
            ),
            ("broker.max_connections", self.max_connections as u64),
            (
                "broker.max_packet_size_bytes",
                self.max_packet_size_bytes as u64,
            ),
            ("broker.max_inflight_count", self.max_inflight_count as u64),
            (
                "broker.connection_timeout_ms",
                u64::from(self.connection_timeout_ms),
            ),
            (
                "broker.max_pending_connections",
                self.max_pending_connections as u64,
            ),
            (
                "broker.max_segment_size_bytes",
                self.max_segment_size_bytes as u64,
            ),
            ("broker.max_segment_count", self.max_segment_count as u64),
            (
                "broker.max_outgoing_packet_count",
                self.max_outgoing_packet_count,
            ),
            (
                "broker.tls_handshake_timeout_ms",
                self.tls_handshake_timeout_ms,
            ),
            ("broker.max_retained_messages", self.max_retained_messages),
            ("broker.max_retained_bytes", self.max_retained_bytes),
            (
                "broker.max_persistent_sessions",
                self.max_persistent_sessions,
            ),
            (
                "broker.max_subscriptions_per_session",
                self.max_subscriptions_per_session,
            ),
        ];
        for (key, value) in positive {
            if value == 0 {
                problems.push(Problem::new(key, "must be greater than 0"));
            }
        }
        if self.max_segment_size_bytes != 0 && self.max_segment_size_bytes < 1024 {
            problems.push(Problem::new(
                "broker.max_segment_size_bytes",
                "must be at least 1024 (the broker's log cannot work with smaller segments)",
            ));
        }
        if self.max_inflight_count > usize::from(u16::MAX) {
            problems.push(Problem::new(
                "broker.max_inflight_count",
                "must be at most 65535 (MQTT packet ids are 16 bit)",
            ));
        }
        if self.max_packet_size_bytes > 268_435_455 {
            problems.push(Problem::new(
                "broker.max_packet_size_bytes",
                "must be at most 268435455 (the largest packet MQTT can frame)",
            ));
        }

        if self.listeners.is_empty() {
            problems.push(Problem::new(
                "broker.listeners",
                "at least one listener is needed; add a [[broker.listeners]] table",
            ));
        }
        let mut names = HashSet::new();
        let mut addrs = HashSet::new();
        for (i, l) in self.listeners.iter().enumerate() {
            let key = format!("broker.listeners[{i}]");
            if l.name.is_empty() {
                problems.push(Problem::new(format!("{key}.name"), "must not be empty"));
            } else if !names.insert(l.name.as_str()) {
                problems.push(Problem::new(
                    format!("{key}.name"),
                    format!(
                        "{:?} is used by two listeners; names must be unique",
                        l.name
                    ),
                ));
            }
            if l.listen.port() != 0 && !addrs.insert(l.listen) {
                problems.push(Problem::new(
                    format!("{key}.listen"),
                    format!("{} is used by two listeners", l.listen),
                ));
            }
            let loopback = l.listen.ip().is_loopback();
            if l.allow_anonymous && !loopback {
                problems.push(Problem::new(
                    format!("{key}.allow_anonymous"),
                    format!(
                        "anonymous clients are only allowed on a loopback address, and {} is not \
                         one; set allow_anonymous = false and add [[broker.users]]",
                        l.listen
                    ),
                ));
            }
            if !loopback && self.users.is_empty() {
                problems.push(Problem::new(
                    format!("{key}.listen"),
                    format!(
                        "{} is reachable from the network but no [[broker.users]] are configured; \
                         perch will not open an unauthenticated listener. Add a user (hash its \
                         password with `perch passwd`) or listen on 127.0.0.1",
                        l.listen
                    ),
                ));
            }
            if let Some(tls) = &l.tls {
                if let Err(e) = super::tls_check(tls) {
                    problems.push(Problem::new(format!("{key}.tls"), e.to_string()));
                }
            }
        }

        check_acl(
            "broker.anonymous",
            &self.anonymous.publish,
            &self.anonymous.subscribe,
            problems,
        );
        let mut users = HashSet::new();
        for (i, u) in self.users.iter().enumerate() {
            let key = format!("broker.users[{i}]");
            if u.name.is_empty() {
                problems.push(Problem::new(format!("{key}.name"), "must not be empty"));
            } else if !users.insert(u.name.as_str()) {
                problems.push(Problem::new(
                    format!("{key}.name"),
                    format!("user {:?} is defined twice", u.name),
                ));
            }
            if let Err(e) = auth::parse_hash(&u.password_hash) {
                problems.push(Problem::new(format!("{key}.password_hash"), e.to_string()));
            }
            check_acl(&key, &u.publish, &u.subscribe, problems);
        }
    }
}

fn check_acl(key: &str, publish: &[String], subscribe: &[String], problems: &mut Vec<Problem>) {
    for (field, filters) in [("publish", publish), ("subscribe", subscribe)] {
        for (i, f) in filters.iter().enumerate() {
            if let Err(e) = topic::validate_filter(f) {
                problems.push(Problem::new(
                    format!("{key}.{field}[{i}]"),
                    format!("{f:?} is not a valid MQTT topic filter: it {e}"),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn problems(toml: &str) -> String {
        match Config::from_toml(toml, "t.toml") {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_network_listener_without_users_is_refused() {
        let err = problems("[[broker.listeners]]\nname = \"lan\"\nlisten = \"0.0.0.0:1883\"\n");
        assert!(err.contains("broker.listeners[0].listen"), "{err}");
        assert!(err.contains("no [[broker.users]]"), "{err}");
    }

    #[test]
    fn anonymous_on_a_network_listener_is_refused() {
        let err = problems(
            "[[broker.listeners]]\nname = \"lan\"\nlisten = \"192.168.1.2:1883\"\nallow_anonymous = true\n",
        );
        assert!(err.contains("broker.listeners[0].allow_anonymous"), "{err}");
    }

    #[test]
    fn a_bad_password_hash_and_a_bad_filter_are_named() {
        let err = problems(
            "[[broker.users]]\nname = \"u\"\npassword_hash = \"hunter2\"\npublish = [\"a/#/b\"]\n",
        );
        assert!(err.contains("broker.users[0].password_hash"), "{err}");
        assert!(err.contains("broker.users[0].publish[0]"), "{err}");
    }

    #[test]
    fn tiny_segments_and_zero_limits_are_refused() {
        let err = problems(
            "[broker]\nmax_segment_size_bytes = 100\nmax_connections = 0\n\
             max_pending_connections = 0\nconnection_timeout_ms = 0\n",
        );
        assert!(err.contains("broker.max_segment_size_bytes"), "{err}");
        assert!(err.contains("broker.max_connections"), "{err}");
        assert!(err.contains("broker.max_pending_connections"), "{err}");
        assert!(err.contains("broker.connection_timeout_ms"), "{err}");
        let err = problems("[broker]\nmax_failed_logins_per_minute = 0\n");
        assert!(err.contains("broker.max_failed_logins_per_minute"), "{err}");
    }

    #[test]
    fn missing_tls_files_are_named() {
        let err = problems(
            "[[broker.listeners]]\nname = \"tls\"\nlisten = \"127.0.0.1:8883\"\n\
             tls = { cert_path = \"/nonexistent/cert.pem\", key_path = \"/nonexistent/key.pem\" }\n",
        );
        assert!(err.contains("broker.listeners[0].tls"), "{err}");
        assert!(err.contains("/nonexistent/cert.pem"), "{err}");
    }

    #[test]
    fn duplicate_listener_names_and_addresses_are_refused() {
        let err = problems(
            "[[broker.listeners]]\nname = \"a\"\nlisten = \"127.0.0.1:1883\"\n\
             [[broker.listeners]]\nname = \"a\"\nlisten = \"127.0.0.1:1883\"\n",
        );
        assert!(err.contains("broker.listeners[1].name"), "{err}");
        assert!(err.contains("broker.listeners[1].listen"), "{err}");
    }
}
