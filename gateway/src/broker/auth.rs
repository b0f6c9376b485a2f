//! Who may connect and what they may touch: password hashes and topic ACLs.
//!
//! Passwords are stored as Argon2id hashes in PHC format. Verifying one costs
//! milliseconds and several MiB on purpose, which a reconnect storm of many
//! sensors would multiply; so a successful verification is remembered as a
//! salted SHA-256 of the password (salt random per process) and later logins
//! of the same user with the same password are checked against that instead.
//!
//! Failed logins are rate-limited (`broker.max_failed_logins_per_minute`, a
//! token bucket over all clients): once that many failed within the last
//! minute's worth of refill, a login that would need an Argon2 verification
//! is refused without one (3.1.1 CONNACK 3, server unavailable; 5.0 0x9F,
//! connection rate exceeded) until the bucket refills. That bounds both
//! password guessing and the CPU a flood of bad logins can burn; a user
//! whose password already verified since the start (the cache above) still
//! logs in at once.
//!
//! A login under a user name that does not exist is verified against a
//! decoy hash (made once, with [`hash_password`]'s parameters, on the
//! first such login) and fails after the same work as a wrong password:
//! how long a refusal takes does not tell an attacker which user names
//! exist. It spends the same failure budget.
//!
//! # `perch/` is for admins
//!
//! Everything under [`RESERVED_FILTER`] (`perch/#`: the control plane's
//! `perch/+/fn/#` topics, deploy, rollback, remove, list and whatever
//! commands it adds, plus the topics the gateway itself publishes there
//! such as its retained `perch/<id>/status`) may be published to only by
//! an admin, so that no other client can fake the gateway's status or a
//! control request: a `[[broker.users]]` entry with `admin = true`, or anonymous
//! clients when `[broker.anonymous] admin` says so (unset: while no user is
//! an admin and `functions.trusted_keys` is empty, which the gateway
//! resolves before starting the broker). No publish ACL grants it to anyone
//! else, `#` included; a non-admin's publish there is refused like any
//! other publish outside the ACL (5.0: PUBACK 0x87) and never reaches the
//! control plane or a subscriber. The gateway's own in-process links (the
//! control plane, the upstream side, telemetry) publish there without going
//! through an ACL. An admin may also subscribe within [`CONTROL_FILTER`],
//! to read replies, status and logs, whatever its subscribe list says.
//!
//! Reading is closed too where it matters: the control requests (a deploy
//! carries the module and the manifest, `[config]` values included) and
//! their replies are sent to admins only ([`ADMIN_ONLY_FILTERS`]), even to
//! a client whose subscribe list allows `#`; the codec withholds them
//! from anyone else ([`Acl::may_receive`]). Statuses and logs stay
//! readable by whoever the subscribe list lets in.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use sha2::{Digest, Sha256};

use super::config::{AclConfig, BrokerConfig};
use crate::kit::topic;

/// A stored password hash that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error(
    "is not an Argon2 password hash in PHC format ({0}); create one with `perch passwd` \
     and paste the line it prints"
)]
pub struct HashError(String);

/// Checks that `hash` is a usable Argon2 PHC string.
pub fn parse_hash(hash: &str) -> Result<(), HashError> {
    let parsed = PasswordHash::new(hash).map_err(|e| HashError(e.to_string()))?;
    match parsed.algorithm.as_str() {
        "argon2id" | "argon2i" | "argon2d" => Ok(()),
        other => Err(HashError(format!("algorithm {other:?} is not Argon2"))),
    }
}

/// Hashes a password for `[[broker.users]].password_hash`.
///
/// Parameters: Argon2id, 9 MiB, 4 passes, 1 lane: one of OWASP's equivalent
/// recommended settings, picked for the smallest memory so that a login on a
/// 512 MiB board does not hurt.
pub fn hash_password(password: &str) -> String {
    let params = Params::new(9 * 1024, 4, 1, None).expect("constant Argon2 parameters are valid");
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    argon
        .hash_password(password.as_bytes(), &salt)
        .expect("hashing with valid parameters cannot fail")
        .to_string()
}

/// The functions control plane's topics: admins may subscribe within them
/// whatever their subscribe list says.
pub const CONTROL_FILTER: &str = "perch/+/fn/#";

/// The gateway's own topics, control plane included: only admins may
/// publish there.
pub const RESERVED_FILTER: &str = "perch/#";

/// What only admins are sent, whatever they subscribed to: the control
/// plane's requests (`perch/<id>/fn/<command>`: bundles with their module
/// and manifest, `[config]` values included; events to invoke) and its
/// replies (`perch/<id>/fn/<command>/reply`). A function's `status` and
/// `logs` below `perch/<id>/fn/<name>/` stay readable by the ACL.
pub const ADMIN_ONLY_FILTERS: [&str; 2] = ["perch/+/fn/+", "perch/+/fn/+/reply"];

/// What one client may publish and subscribe to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acl {
    publish: Vec<String>,
    subscribe: Vec<String>,
    /// May publish under [`RESERVED_FILTER`] and subscribe within
    /// [`CONTROL_FILTER`].
    admin: bool,
}

impl Acl {
    pub fn new(publish: &[String], subscribe: &[String], admin: bool) -> Acl {
        Acl {
            publish: publish.to_vec(),
            subscribe: subscribe.to_vec(),
            admin,
        }
    }

    /// Whether a publish to `topic` may be delivered.
    pub fn may_publish(&self, topic: &str) -> bool {
        if topic::matches(RESERVED_FILTER, topic) {
            return self.admin;
        }
        topic::matches_any(&self.publish, topic)
    }

    /// Whether a message on `topic` may be sent to this client, once its
    /// subscription matched: not under [`ADMIN_ONLY_FILTERS`] unless it is
    /// an admin.
    pub fn may_receive(&self, topic: &[u8]) -> bool {
        self.admin
            || !std::str::from_utf8(topic).is_ok_and(|t| topic::matches_any(&ADMIN_ONLY_FILTERS, t))
    }

    /// Whether a subscription to `filter` stays inside what this client may
    /// read. A shared subscription (`$share/group/filter`) is judged by the
    /// filter it shares.
    pub fn may_subscribe(&self, filter: &str) -> bool {
        let filter = shared_inner(filter).unwrap_or(filter);
        if self.admin && topic::covers(CONTROL_FILTER, filter) {
            return true;
        }
        self.subscribe
            .iter()
            .any(|allowed| topic::covers(allowed, filter))
    }
}

fn shared_inner(filter: &str) -> Option<&str> {
    let rest = filter.strip_prefix("$share/")?;
    rest.split_once('/').map(|(_, f)| f)
}

/// Why a login was refused; each maps to its CONNACK code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Unknown user or wrong password (3.1.1: 4, 5.0: 0x86).
    BadCredentials,
    /// No username on a listener that requires one (3.1.1: 5, 5.0: 0x87).
    NotAuthorized,
    /// A will whose topic the client may not publish to (3.1.1: 5, 5.0:
    /// 0x87): the gateway publishes wills itself, so the ACL is checked
    /// when the will is handed over, in the CONNECT.
    WillNotAllowed,
    /// A client id reserved for the gateway's own links (3.1.1: 2, 5.0:
    /// 0x85).
    ReservedClientId,
    /// Too many failed logins lately; try again later (3.1.1: 3, 5.0:
    /// 0x9F).
    TooManyFailures,
    /// A 5.0 CONNECT asks for enhanced authentication (an Authentication
    /// Method), which perch does not offer (0x8C, MQTT-4.12.0-1).
    BadAuthenticationMethod,
    /// A 3.1.1 keep-alive of 0 or over `broker.max_keep_alive_s` (3.1.1:
    /// 2); a 5.0 client is told the maximum instead.
    KeepAliveTooLong,
}

/// Failed logins allowed: a token bucket holding at most a minute's worth,
/// refilled continuously.
struct FailureBudget {
    per_minute: f64,
    tokens: f64,
    at: Instant,
}

impl FailureBudget {
    fn refill(&mut self) -> f64 {
        let now = Instant::now();
        let elapsed = now.duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.per_minute / 60.0).min(self.per_minute);
        self.tokens
    }
}

/// The users of one broker and the cache of verified logins.
pub struct Users {
    users: HashMap<String, (String, Arc<Acl>)>,
    anonymous: Arc<Acl>,
    /// Salt for the cache of verified logins, random per process.
    salt: [u8; 16],
    /// user name -> salted digest of the password that last verified.
    verified: Mutex<HashMap<String, [u8; 32]>>,
    /// Failed logins still allowed (see the module doc).
    failures: Mutex<FailureBudget>,
    /// The hash unknown user names are verified against (see the module
    /// doc), made on first use: most gateways never need it, and it costs
    /// one Argon2 hash.
    decoy: OnceLock<String>,
    /// Argon2 verifications run so far, decoys included: the costly step
    /// the failure budget bounds. Logins refused before it count nothing.
    pub verifications: AtomicU64,
}

impl Users {
    pub fn new(config: &BrokerConfig) -> Users {
        let users = config
            .users
            .iter()
            .map(|u| {
                let acl = Arc::new(Acl::new(&u.publish, &u.subscribe, u.admin));
                (u.name.clone(), (u.password_hash.clone(), acl))
            })
            .collect();
        let AclConfig {
            publish,
            subscribe,
            admin,
        } = &config.anonymous;
        let admin = admin.unwrap_or_else(|| !config.users.iter().any(|u| u.admin));
        Users {
            users,
            anonymous: Arc::new(Acl::new(publish, subscribe, admin)),
            salt: rand::random(),
            verified: Mutex::new(HashMap::new()),
            failures: Mutex::new(FailureBudget {
                per_minute: f64::from(config.max_failed_logins_per_minute),
                tokens: f64::from(config.max_failed_logins_per_minute),
                at: Instant::now(),
            }),
            decoy: OnceLock::new(),
            verifications: AtomicU64::new(0),
        }
    }

    /// The ACL of a client without a username.
    pub fn anonymous(&self) -> Arc<Acl> {
        self.anonymous.clone()
    }

    /// Checks a username and password; returns the user's ACL.
    pub fn login(&self, user: &str, password: &str) -> Result<Arc<Acl>, Refusal> {
        let Some((hash, acl)) = self.users.get(user) else {
            // Same work as a wrong password (see the module doc).
            if self.budget_spent() {
                return Err(Refusal::TooManyFailures);
            }
            let decoy = self.decoy.get_or_init(|| hash_password(&password_like()));
            self.verify(decoy, password);
            return Err(self.failed());
        };
        let digest = self.digest(password);
        let cached = self
            .verified
            .lock()
            .expect("lock poisoned")
            .get(user)
            .copied();
        if cached.is_some_and(|d| constant_time_eq(&d, &digest)) {
            return Ok(acl.clone());
        }
        if self.budget_spent() {
            return Err(Refusal::TooManyFailures);
        }
        if !self.verify(hash, password) {
            return Err(self.failed());
        }
        self.verified
            .lock()
            .expect("lock poisoned")
            .insert(user.to_owned(), digest);
        Ok(acl.clone())
    }

    /// True when no failed login is left in the budget: the login is
    /// refused without an Argon2 verification.
    fn budget_spent(&self) -> bool {
        self.failures.lock().expect("lock poisoned").refill() < 1.0
    }

    /// The one Argon2 verification, counted.
    fn verify(&self, hash: &str, password: &str) -> bool {
        self.verifications.fetch_add(1, Ordering::Relaxed);
        PasswordHash::new(hash)
            .map(|h| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
            .unwrap_or(false)
    }

    /// Spends one failed login from the budget; `TooManyFailures` once it
    /// is spent (unknown users too, so guessing names is bounded alike).
    fn failed(&self) -> Refusal {
        let mut budget = self.failures.lock().expect("lock poisoned");
        if budget.refill() < 1.0 {
            return Refusal::TooManyFailures;
        }
        budget.tokens -= 1.0;
        Refusal::BadCredentials
    }

    fn digest(&self, password: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.salt);
        h.update(password.as_bytes());
        h.finalize().into()
    }
}

/// A random password for the decoy hash: nobody can log in with it, and
/// nobody needs to.
fn password_like() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::config::UserConfig;

    fn users() -> Users {
        let mut config = BrokerConfig::default();
        config.users.push(UserConfig {
            name: "sensor".into(),
            password_hash: hash_password("s3cret"),
            publish: vec!["sensors/#".into()],
            subscribe: vec!["alerts/+".into()],
            admin: false,
        });
        Users::new(&config)
    }

    #[test]
    fn the_right_password_logs_in_and_wrong_ones_do_not() {
        let users = users();
        assert!(users.login("sensor", "s3cret").is_ok());
        // Twice: the second goes through the cache.
        assert!(users.login("sensor", "s3cret").is_ok());
        assert_eq!(users.login("sensor", "wrong"), Err(Refusal::BadCredentials));
        assert_eq!(
            users.login("nobody", "s3cret"),
            Err(Refusal::BadCredentials)
        );
    }

    #[test]
    fn failed_logins_past_the_budget_are_refused_without_a_hash() {
        let mut config = BrokerConfig {
            max_failed_logins_per_minute: 3,
            ..BrokerConfig::default()
        };
        for name in ["sensor", "other"] {
            config.users.push(UserConfig {
                name: name.into(),
                password_hash: hash_password("s3cret"),
                publish: vec![],
                subscribe: vec![],
                admin: false,
            });
        }
        let users = Users::new(&config);
        // "sensor" logs in once, so its password is cached.
        assert!(users.login("sensor", "s3cret").is_ok());
        assert_eq!(users.login("sensor", "a"), Err(Refusal::BadCredentials));
        assert_eq!(users.login("nobody", "b"), Err(Refusal::BadCredentials));
        assert_eq!(users.login("other", "c"), Err(Refusal::BadCredentials));
        // The budget of 3 is spent (refill: one per 20 s): no more hashing,
        // the right password of an uncached user included.
        let hashed = users.verifications.load(Ordering::Relaxed);
        for (user, password) in [("other", "d"), ("other", "s3cret"), ("nobody", "e")] {
            assert_eq!(
                users.login(user, password),
                Err(Refusal::TooManyFailures),
                "{user}"
            );
        }
        assert_eq!(
            users.verifications.load(Ordering::Relaxed),
            hashed,
            "refused without an Argon2 verification"
        );
        // A password verified before still logs in.
        assert!(users.login("sensor", "s3cret").is_ok());
        // The bucket refills: 20 s later one more attempt is allowed.
        users.failures.lock().unwrap().at -= std::time::Duration::from_secs(20);
        assert!(users.login("other", "s3cret").is_ok());
    }

    #[test]
    fn an_unknown_user_name_costs_the_same_verification_as_a_wrong_password() {
        // Regression: an unknown name was refused at once and a known one
        // after an Argon2 verification, so the time of a refusal told
        // which user names exist.
        let users = users();
        assert_eq!(users.login("nobody", "x"), Err(Refusal::BadCredentials));
        assert_eq!(users.verifications.load(Ordering::Relaxed), 1);
        assert_eq!(users.login("sensor", "x"), Err(Refusal::BadCredentials));
        assert_eq!(users.verifications.load(Ordering::Relaxed), 2);
        // The decoy is made once and never matches, not even the empty
        // password.
        assert_eq!(users.login("nobody2", ""), Err(Refusal::BadCredentials));
        assert_eq!(users.verifications.load(Ordering::Relaxed), 3);
        let decoy = users.decoy.get().expect("the decoy was made");
        assert!(parse_hash(decoy).is_ok());
        // Its parameters are those of `perch passwd`'s hashes, so the work
        // is the same.
        let params = |h: &str| {
            let h = PasswordHash::new(h).unwrap();
            (h.algorithm.to_string(), format!("{:?}", h.params))
        };
        assert_eq!(params(decoy), params(&hash_password("y")));
    }

    #[test]
    fn hashes_are_salted_and_parse() {
        let a = hash_password("x");
        let b = hash_password("x");
        assert_ne!(a, b);
        assert!(parse_hash(&a).is_ok());
        assert!(parse_hash("$5$rounds=5000$abc$def").is_err());
        assert!(parse_hash("plain").is_err());
    }

    #[test]
    fn acls_bound_publish_and_subscribe() {
        let acl = users().login("sensor", "s3cret").unwrap();
        assert!(acl.may_publish("sensors/t1/temp"));
        assert!(!acl.may_publish("alerts/t1"));
        assert!(acl.may_subscribe("alerts/fire"));
        assert!(acl.may_subscribe("alerts/+"));
        assert!(!acl.may_subscribe("alerts/#"));
        assert!(!acl.may_subscribe("#"));
        assert!(acl.may_subscribe("$share/g/alerts/x"));
        assert!(!acl.may_subscribe("$share/g/sensors/x"));
    }

    #[test]
    fn only_admins_publish_to_the_control_topics_whatever_their_acl_says() {
        let everything = vec!["#".to_owned()];
        let user = Acl::new(&everything, &everything, false);
        let admin = Acl::new(&[], &[], true);
        for topic in [
            "perch/gw/fn/deploy",
            "perch/gw/fn/rollback",
            "perch/other/fn/list",
            "perch/gw/fn/x/status",
        ] {
            assert!(!user.may_publish(topic), "{topic}");
            assert!(admin.may_publish(topic), "{topic}");
        }
        assert!(!admin.may_publish("sensors/x"));
        assert!(admin.may_subscribe("perch/gw/fn/deploy/reply"));
        assert!(admin.may_subscribe("perch/+/fn/#"));
        assert!(!admin.may_subscribe("perch/#"));
        assert!(user.may_subscribe("perch/gw/fn/deploy/reply"));
    }

    #[test]
    fn only_admins_are_sent_control_requests_and_replies_whatever_they_subscribed() {
        let everything = vec!["#".to_owned()];
        let user = Acl::new(&everything, &everything, false);
        let admin = Acl::new(&[], &[], true);
        for topic in [
            "perch/gw/fn/deploy",
            "perch/gw/fn/remove",
            "perch/gw/fn/invoke",
            "perch/other/fn/list",
            "perch/gw/fn/deploy/reply",
            "perch/gw/fn/invoke/reply",
        ] {
            assert!(!user.may_receive(topic.as_bytes()), "{topic}");
            assert!(admin.may_receive(topic.as_bytes()), "{topic}");
        }
        for topic in [
            "perch/gw/fn/echo/status",
            "perch/gw/fn/echo/logs",
            "perch/gw/status",
            "perch/gw/fn",
            "sensors/fn/deploy",
        ] {
            assert!(user.may_receive(topic.as_bytes()), "{topic}");
        }
    }

    #[test]
    fn only_admins_publish_under_perch_whatever_their_acl_says() {
        let everything = vec!["#".to_owned()];
        let perch = vec!["perch/#".to_owned()];
        let user = Acl::new(&everything, &everything, false);
        let perch_user = Acl::new(&perch, &perch, false);
        let admin = Acl::new(&[], &[], true);
        for topic in [
            "perch/gw/status",
            "perch/gw/up",
            "perch/fleet/g/deploy/f",
            "perch/x",
            "perch",
        ] {
            assert!(!user.may_publish(topic), "{topic}");
            assert!(!perch_user.may_publish(topic), "{topic}");
            assert!(admin.may_publish(topic), "{topic}");
        }
        // Only the `perch` level itself is reserved.
        for topic in ["perchx/status", "sensors/perch/status", "/perch/gw/status"] {
            assert!(user.may_publish(topic), "{topic}");
        }
    }

    #[test]
    fn anonymous_clients_are_admins_only_until_a_user_is_one() {
        let mut config = BrokerConfig::default();
        let control = "perch/gw/fn/deploy";
        assert!(Users::new(&config).anonymous().may_publish(control));
        config.users.push(UserConfig {
            name: "ops".into(),
            password_hash: hash_password("pw"),
            publish: vec![],
            subscribe: vec![],
            admin: true,
        });
        assert!(!Users::new(&config).anonymous().may_publish(control));
        config.anonymous.admin = Some(true);
        assert!(Users::new(&config).anonymous().may_publish(control));
        config.users.clear();
        config.anonymous.admin = Some(false);
        assert!(!Users::new(&config).anonymous().may_publish(control));
    }
}
