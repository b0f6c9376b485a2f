//! `[admin]`: the admin HTTP listener and the status summary.

use std::net::SocketAddr;

use serde::Deserialize;

use crate::kit::Problem;

/// Shortest bearer token accepted: a guessable token is no protection.
pub const MIN_TOKEN_LEN: usize = 16;

/// `[admin]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Whether the admin listener runs at all (the status topic is
    /// published either way).
    pub enabled: bool,
    /// Address of the admin listener. Port 0 picks a free port, named in the
    /// ready line. A non-loopback address needs `token` or
    /// `username`/`password_hash`.
    pub listen: SocketAddr,
    /// Bearer token (`Authorization: Bearer <token>`), at least
    /// [`MIN_TOKEN_LEN`] characters. Empty: no token.
    pub token: String,
    /// Basic-auth user (for browsers). Empty: no basic auth.
    pub username: String,
    /// Argon2id hash of the basic-auth password (`perch passwd`).
    pub password_hash: String,
    /// How often the summary is published (retained) on
    /// `perch/<id>/status` on the local broker.
    pub status_interval_s: u64,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 9181)),
            token: String::new(),
            username: String::new(),
            password_hash: String::new(),
            status_interval_s: 10,
        }
    }
}

impl AdminConfig {
    /// Whether requests must authenticate.
    pub fn auth_configured(&self) -> bool {
        !self.token.is_empty() || !self.username.is_empty()
    }

    pub fn validate(&self, problems: &mut Vec<Problem>) {
        if self.status_interval_s == 0 {
            problems.push(Problem::new(
                "admin.status_interval_s",
                "must be at least 1 (seconds between status publishes)",
            ));
        }
        if !self.token.is_empty() && self.token.chars().count() < MIN_TOKEN_LEN {
            problems.push(Problem::new(
                "admin.token",
                format!(
                    "is {} characters; use at least {MIN_TOKEN_LEN} random ones \
                     (e.g. `head -c 24 /dev/urandom | base64`)",
                    self.token.chars().count()
                ),
            ));
        }
        match (self.username.is_empty(), self.password_hash.is_empty()) {
            (false, true) => problems.push(Problem::new(
                "admin.password_hash",
                "admin.username is set but admin.password_hash is empty: hash the password \
                 with `perch passwd` and put the line here",
            )),
            (true, false) => problems.push(Problem::new(
                "admin.username",
                "admin.password_hash is set but admin.username is empty: name the user",
            )),
            (false, false) => {
                if let Err(e) = crate::broker::auth::parse_hash(&self.password_hash) {
                    problems.push(Problem::new("admin.password_hash", e.to_string()));
                }
            }
            (true, true) => {}
        }
        if self.enabled && !self.listen.ip().is_loopback() && !self.auth_configured() {
            problems.push(Problem::new(
                "admin.listen",
                format!(
                    "{} is not a loopback address and the admin listener has no login: anyone \
                     on the network could read it. Set admin.token (a bearer token for \
                     Prometheus) or admin.username and admin.password_hash (`perch passwd`, \
                     for browsers), or listen on 127.0.0.1",
                    self.listen
                ),
            ));
        }
    }
}
