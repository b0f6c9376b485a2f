//! `[broker]`: limits of the embedded broker, its listeners, its users and
//! their ACLs.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::kit::topic;
use crate::kit::Problem;

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
    /// The longest keep-alive a client may ask for, in seconds (65535, the
    /// default, lets any through). A 5.0 client asking for more, or for 0
    /// (off), is told this one in the CONNACK's Server Keep Alive and held
    /// to it; a 3.1.1 client, which cannot be told, is refused (CONNACK 2,
    /// identifier rejected), as Mosquitto's `max_keepalive` does. A lower
    /// value finds dead clients (and publishes their wills) sooner.
    pub max_keep_alive_s: u16,
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
    /// filter, at most: [`BrokerConfig::segment_size_bytes`] lowers it so
    /// that all filters together stay within `max_message_log_bytes`.
    pub max_segment_size_bytes: usize,
    /// Segments kept per filter; the oldest is dropped when a new one starts.
    pub max_segment_count: usize,
    /// Message data the broker's in-memory logs keep over all filters, as
    /// rumqttd counts it (topic + payload + 4 bytes per message). Each of
    /// `max_filters` filters gets an equal share. rumqttd keeps a message
    /// in a filter's log after delivering it, until the log's oldest segment
    /// is dropped, so this, not the traffic, sets the broker's memory; each
    /// kept message also costs a few hundred bytes of bookkeeping that this
    /// does not count (docs/broker.md, "Memory").
    pub max_message_log_bytes: u64,
    /// Most distinct topic filters remote clients may subscribe to while the
    /// gateway runs. rumqttd keeps a filter's log until the gateway stops,
    /// unsubscribed or not; a SUBSCRIBE to a new filter past the bound is
    /// refused (SUBACK failure) and counted.
    pub max_filters: usize,
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
            max_keep_alive_s: u16::MAX,
            connection_timeout_ms: 5_000,
            max_pending_connections: 256,
            max_failed_logins_per_minute: 60,
            max_segment_size_bytes: 1024 * 1024,
            max_segment_count: 4,
            max_message_log_bytes: 32 * 1024 * 1024,
            max_filters: 256,
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

/// rumqttd refuses (panics on) smaller log segments.
const MIN_SEGMENT_BYTES: u64 = 1024;

impl BrokerConfig {
    /// The segment size the broker's per-filter logs use: at most
    /// `max_segment_size_bytes`, and small enough that `max_filters` logs of
    /// `max_segment_count` segments stay within `max_message_log_bytes`.
    /// [`BrokerConfig::validate`] refuses settings that make it less than
    /// 1024 bytes.
    pub fn segment_size_bytes(&self) -> usize {
        let share = self.max_message_log_bytes
            / (self.max_filters.max(1) as u64 * self.max_segment_count.max(1) as u64);
        usize::try_from(share)
            .unwrap_or(usize::MAX)
            .min(self.max_segment_size_bytes)
    }

    pub(crate) fn validate(&self, problems: &mut Vec<Problem>) {
        self.validate_limits(problems);
        self.validate_listeners(problems);
        self.validate_overlaps(problems);
        self.validate_users(problems);
    }

    /// The numeric limits: positive, and within what rumqttd and MQTT can do.
    fn validate_limits(&self, problems: &mut Vec<Problem>) {
        let positive: [(&str, u64); 17] = [
            ("broker.max_keep_alive_s", u64::from(self.max_keep_alive_s)),
            ("broker.max_message_log_bytes", self.max_message_log_bytes),
            ("broker.max_filters", self.max_filters as u64),
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
        let per_filter = self.max_message_log_bytes / (self.max_filters.max(1) as u64);
        if self.max_message_log_bytes != 0
            && self.max_filters != 0
            && self.max_segment_count != 0
            && (self.segment_size_bytes() as u64) < MIN_SEGMENT_BYTES
            && self.max_segment_size_bytes as u64 >= MIN_SEGMENT_BYTES
        {
            let needed =
                MIN_SEGMENT_BYTES * self.max_filters as u64 * self.max_segment_count as u64;
            problems.push(Problem::new(
                "broker.max_message_log_bytes",
                format!(
                    "{} bytes shared by max_filters = {} filters gives each {per_filter} bytes, \
                     less than max_segment_count = {} segments of 1024 bytes (the smallest \
                     the broker's log can use); raise it to at least {needed} or lower \
                     max_filters or max_segment_count",
                    self.max_message_log_bytes, self.max_filters, self.max_segment_count
                ),
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
    }

    /// The listeners: at least one, unique names and addresses, no
    /// anonymous or unauthenticated clients from the network, TLS files that
    /// load.
    /// A wildcard address (`0.0.0.0`, `::`) takes its port on every address
    /// of its family, so another listener of that family on the same port
    /// (`127.0.0.1:1883` beside `0.0.0.0:1883`) cannot bind: perch would
    /// pass the check and fail at start.
    fn validate_overlaps(&self, problems: &mut Vec<Problem>) {
        for (i, a) in self.listeners.iter().enumerate() {
            let overlapping = self.listeners[..i].iter().find(|b| {
                a.listen.port() != 0
                    && a.listen.port() == b.listen.port()
                    && a.listen.is_ipv4() == b.listen.is_ipv4()
                    && a.listen.ip() != b.listen.ip()
                    && (a.listen.ip().is_unspecified() || b.listen.ip().is_unspecified())
            });
            if let Some(b) = overlapping {
                problems.push(Problem::new(
                    format!("broker.listeners[{i}].listen"),
                    format!(
                        "{} overlaps listener {:?} on {}: a wildcard address takes the port on \
                         every address, so one of the two would not bind; give one another \
                         port, or listen on the board's own address (e.g. 192.168.1.20:{}) \
                         instead of the wildcard",
                        a.listen,
                        b.name,
                        b.listen,
                        a.listen.port()
                    ),
                ));
            }
        }
    }

    fn validate_listeners(&self, problems: &mut Vec<Problem>) {
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
    }

    /// The anonymous ACL and the users: unique names, hashes that parse,
    /// ACL filters that are valid.
    fn validate_users(&self, problems: &mut Vec<Problem>) {
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
        let err = problems("[broker]\nmax_keep_alive_s = 0\n");
        assert!(
            err.contains("broker.max_keep_alive_s: must be greater than 0"),
            "{err}"
        );
    }

    #[test]
    fn the_message_log_budget_is_shared_by_the_filters() {
        let c = Config::from_toml(
            "[broker]\nmax_message_log_bytes = 8388608\nmax_filters = 1024\n\
             max_segment_count = 4\nmax_segment_size_bytes = 1048576\n",
            "t.toml",
        )
        .unwrap();
        // 8 MiB over 1024 filters of 4 segments: 2 KiB segments.
        assert_eq!(c.broker.segment_size_bytes(), 2048);
        // A smaller max_segment_size_bytes is kept.
        let c = Config::from_toml("[broker]\nmax_segment_size_bytes = 1024\n", "t.toml").unwrap();
        assert_eq!(c.broker.segment_size_bytes(), 1024);
        let err = problems("[broker]\nmax_message_log_bytes = 1048576\nmax_filters = 1024\n");
        assert!(err.contains("broker.max_message_log_bytes"), "{err}");
        assert!(err.contains("at least 4194304"), "{err}");
        let err = problems("[broker]\nmax_filters = 0\nmax_message_log_bytes = 0\n");
        assert!(err.contains("broker.max_filters"), "{err}");
        assert!(err.contains("broker.max_message_log_bytes"), "{err}");
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

    #[test]
    fn a_wildcard_listener_beside_another_on_its_port_is_refused() {
        let users = "[[broker.users]]\nname = \"u\"\n\
            password_hash = \"$argon2id$v=19$m=9216,t=4,p=1$c2FsdHNhbHQ$YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXo\"\n";
        let err = problems(&format!(
            "[[broker.listeners]]\nname = \"local\"\nlisten = \"127.0.0.1:1883\"\n\
             [[broker.listeners]]\nname = \"lan\"\nlisten = \"0.0.0.0:1883\"\n\
             allow_anonymous = false\n{users}"
        ));
        assert!(
            err.contains("broker.listeners[1].listen: 0.0.0.0:1883 overlaps listener \"local\""),
            "{err}"
        );
        // Another port, or the board's own address, is fine.
        for lan in ["0.0.0.0:1884", "192.168.1.20:1883"] {
            let text = format!(
                "[[broker.listeners]]\nname = \"local\"\nlisten = \"127.0.0.1:1883\"\n\
                 [[broker.listeners]]\nname = \"lan\"\nlisten = \"{lan}\"\n\
                 allow_anonymous = false\n{users}"
            );
            crate::config::Config::from_toml(&text, "t.toml")
                .unwrap_or_else(|e| panic!("{lan}: {e}"));
        }
    }
}
