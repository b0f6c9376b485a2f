//! The admin listener: what operators and their tools see of a running
//! gateway, over HTTP and on the local broker.
//!
//! It owns:
//!
//! - the admin HTTP listener (`[admin] listen`, default `127.0.0.1:9181`;
//!   a non-loopback address is refused by the config check unless a bearer
//!   token or a basic-auth user is configured, and then every request must
//!   log in). A minimal HTTP/1.1 responder on tokio ([`http`]): one request
//!   per connection, at most [`MAX_CONNECTIONS`] at once, bounded head size
//!   and read time.
//! - `/metrics` ([`metrics`]): Prometheus text, read from the stages'
//!   atomics at scrape time;
//! - `/healthz` (liveness: the runtime answers) and `/readyz` (broker
//!   listening, database writable, upstream state), JSON bodies that say
//!   what is wrong;
//! - `/` (the status page: one self-contained HTML file, `page.html`,
//!   embedded in the binary, refreshing itself from `/status.json`);
//! - the summary ([`status`]): sampled every few seconds, kept with a short
//!   history, and published retained on `perch/<id>/status` every
//!   `admin.status_interval_s` (also when the HTTP listener is disabled)
//!   and at once when asked on `perch/<id>/status/refresh`.
//!
//! Nothing here touches the hot path: the stages count with relaxed atomics
//! and this module only reads them.

pub mod config;
pub mod http;
pub mod links;
pub mod metrics;
pub mod status;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

pub use self::config::AdminConfig;
use self::http::{BadRequest, Request, Response};
use self::status::Derived;
use crate::broker::{Links, Refusals, Traffic};
use crate::functions::Observer;

/// Most admin connections served at once; more wait in the accept queue.
pub const MAX_CONNECTIONS: usize = 16;

/// The status page, self-contained (inline CSS and script).
const PAGE: &str = include_str!("page.html");

/// Why the admin listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(
        "cannot listen on {addr} (admin listener): {source}; is another perch running? \
         Pick another address with --admin-listen or admin.listen, or set admin.enabled = false"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// What the admin listener reads: the stages' counters and handles.
pub struct Sources {
    pub id: String,
    /// `mqtt://addr (name)` per broker listener.
    pub listeners: Vec<String>,
    /// Bound addresses of the broker listeners, probed by `/readyz`.
    pub listener_addrs: Vec<SocketAddr>,
    pub traffic: Arc<Traffic>,
    pub refusals: Arc<Refusals>,
    pub functions: Observer,
    pub buffer: crate::buffer::Intake,
    pub upstream: Arc<crate::upstream::Stats>,
    /// `mqtt`, `http` or `none`.
    pub upstream_kind: &'static str,
    /// Where records go (`mqtt://host:port`, the HTTP endpoint), if
    /// anywhere: [`crate::upstream::UpstreamConfig::endpoint`].
    pub upstream_endpoint: Option<String>,
    /// For publishing the status topic.
    pub links: Links,
    pub started: Instant,
}

/// The admin listener, bound but not serving yet: the gateway binds it
/// before starting the stages, so a taken port fails the start before
/// anything runs.
pub struct Bound {
    listener: Option<TcpListener>,
    config: AdminConfig,
}

impl Bound {
    /// Where the HTTP listener is bound (the real port for port 0); `None`
    /// when `admin.enabled = false`.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Starts serving and the status sampler; both end when `stop` turns
    /// true.
    pub fn start(
        self,
        sources: Sources,
        stop: watch::Receiver<bool>,
    ) -> Vec<(&'static str, JoinHandle<()>)> {
        let sources = Arc::new(sources);
        let derived = Arc::new(Mutex::new(Derived::default()));
        let mut tasks = vec![(
            "status sampler",
            tokio::spawn(status::run_sampler(
                sources.clone(),
                derived.clone(),
                Duration::from_secs(self.config.status_interval_s),
                stop.clone(),
            )),
        )];
        if let Some(listener) = self.listener {
            let state = Arc::new(State {
                sources,
                derived,
                auth: Auth::new(&self.config),
            });
            tasks.push(("admin listener", tokio::spawn(serve(listener, state, stop))));
        }
        tasks
    }
}

/// Binds the admin listener when it is enabled. Must run inside a tokio
/// runtime.
pub fn bind(config: &AdminConfig) -> Result<Bound, AdminError> {
    let listener = if config.enabled {
        let err = |source| AdminError::Bind {
            addr: config.listen,
            source,
        };
        let std = std::net::TcpListener::bind(config.listen).map_err(err)?;
        std.set_nonblocking(true).map_err(err)?;
        Some(TcpListener::from_std(std).map_err(err)?)
    } else {
        None
    };
    Ok(Bound {
        listener,
        config: config.clone(),
    })
}

struct State {
    sources: Arc<Sources>,
    derived: Arc<Mutex<Derived>>,
    auth: Auth,
}

async fn serve(listener: TcpListener, state: Arc<State>, mut stop: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p,
            _ = stop.changed() => return,
        };
        let Ok(permit) = permit else { return };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => return,
        };
        match accepted {
            Ok((stream, _)) => {
                let state = state.clone();
                tokio::spawn(async move {
                    handle(stream, &state).await;
                    drop(permit);
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: wait instead of
                // spinning.
                tracing::warn!(error = %e, "admin listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn handle(mut stream: TcpStream, state: &State) {
    let (response, head_only) = match http::read_request(&mut stream).await {
        Ok(request) => (respond(&request, state).await, request.method == "HEAD"),
        Err(BadRequest::Closed) => return,
        Err(BadRequest::TooLarge) => (
            error(
                431,
                format!("the request head is over {} bytes", http::MAX_HEAD_BYTES),
            ),
            false,
        ),
        Err(BadRequest::Timeout) => (
            error(
                408,
                format!(
                    "no complete request within {} s",
                    http::READ_TIMEOUT.as_secs()
                ),
            ),
            false,
        ),
        Err(BadRequest::Malformed(what)) => (
            error(400, format!("not an HTTP/1.1 request: {what}")),
            false,
        ),
    };
    let _ = response.write(&mut stream, head_only).await;
}

fn error(status: u16, message: String) -> Response {
    Response::json(status, &serde_json::json!({ "error": message }))
}

async fn respond(request: &Request, state: &State) -> Response {
    if request.method != "GET" && request.method != "HEAD" {
        let mut r = error(
            405,
            format!(
                "{} is not served here: the admin listener is read-only, use GET",
                request.method
            ),
        );
        r.headers.push("Allow: GET, HEAD".into());
        return r;
    }
    if let Err(response) = state.auth.check(request.authorization.as_deref()).await {
        return response;
    }
    match request.path.as_str() {
        "/" | "/index.html" => Response::new(200, "text/html; charset=utf-8", PAGE),
        "/status.json" => {
            let functions = list(&state.sources).await;
            let summary = {
                let d = state.derived.lock().unwrap_or_else(|p| p.into_inner());
                status::summary(&state.sources, functions, &d, true)
            };
            Response::json(200, &serde_json::to_value(summary).unwrap_or_default())
        }
        "/metrics" => {
            let observer = state.sources.functions.clone();
            let handles = tokio::task::spawn_blocking(move || observer.handles())
                .await
                .unwrap_or_default();
            let drain = state
                .derived
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .drain_rate();
            Response::new(
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                metrics::render(&state.sources, &handles, drain),
            )
        }
        "/healthz" => Response::json(
            200,
            &serde_json::json!({
                "status": "ok",
                "gateway": state.sources.id,
                "version": env!("CARGO_PKG_VERSION"),
                "uptime_s": state.sources.started.elapsed().as_secs(),
            }),
        ),
        "/readyz" => readiness(&state.sources).await,
        other => error(
            404,
            format!(
                "nothing at {other}: the admin listener serves /, /status.json, /metrics, \
                 /healthz and /readyz"
            ),
        ),
    }
}

async fn list(sources: &Sources) -> Vec<crate::functions::control::FunctionInfo> {
    let observer = sources.functions.clone();
    tokio::task::spawn_blocking(move || observer.list())
        .await
        .unwrap_or_default()
}

/// `/readyz`: 200 when the broker accepts connections, the buffer's
/// database takes commits and its disk has more than `buffer.min_free_bytes`
/// free; 503 otherwise. The upstream is reported but does
/// not make the gateway unready: while it is down records wait in the
/// buffer, which is the gateway doing its job.
async fn readiness(sources: &Sources) -> Response {
    use serde_json::json;
    let mut broker_problems = Vec::new();
    for (addr, name) in sources.listener_addrs.iter().zip(&sources.listeners) {
        let probe = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await;
        match probe {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => broker_problems.push(format!("{name} does not accept connections: {e}")),
            Err(_) => broker_problems.push(format!("{name} did not accept a connection in 2 s")),
        }
    }
    let broker = if broker_problems.is_empty() {
        json!({ "ok": true, "listeners": sources.listeners })
    } else {
        json!({ "ok": false, "error": broker_problems.join("; ") })
    };
    let stats = sources.buffer.stats();
    let writable = !stats.commit_failing.load(Ordering::Relaxed);
    let database = if writable {
        json!({ "ok": true })
    } else {
        let last = stats
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_default();
        json!({
            "ok": false,
            "error": format!(
                "the buffer's last commit failed ({last}); records wait in memory: free \
                 disk space or fix the data directory's permissions"
            ),
        })
    };
    let low = stats.disk_full.load(Ordering::Relaxed);
    let disk = if low {
        json!({
            "ok": false,
            "error": format!(
                "{} bytes free on the data directory's file system: the buffer is full \
                 at the disk's reserve (buffer.min_free_bytes) and when_full drops records \
                 until upstream drains it or space is freed",
                stats.disk_free.load(Ordering::Relaxed)
            ),
        })
    } else {
        json!({ "ok": true, "free_bytes": stats.disk_free.load(Ordering::Relaxed) })
    };
    let u = &sources.upstream;
    let upstream = match sources.upstream_kind {
        "none" => json!({ "ok": true, "kind": "none",
            "note": "no [upstream.mqtt] or [upstream.http]: records stay in the buffer" }),
        kind if u.connected.load(Ordering::Relaxed) == 1 => json!({ "ok": true, "kind": kind }),
        kind => {
            let last = u
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            json!({
                "ok": false,
                "kind": kind,
                "error": format!(
                    "not connected{}; records wait in the buffer and are retried",
                    last.map(|e| format!(" (last error: {e})")).unwrap_or_default()
                ),
            })
        }
    };
    let ready = broker_problems.is_empty() && writable && !low;
    Response::json(
        if ready { 200 } else { 503 },
        &json!({
            "ready": ready,
            "checks": {
                "broker": broker, "database": database, "disk": disk, "upstream": upstream,
            },
        }),
    )
}

/// The admin listener's login: a bearer token, a basic-auth user, both, or
/// none (loopback only; the config check enforces it).
struct Auth {
    token_digest: Option<[u8; 32]>,
    basic: Option<(String, String)>,
    /// Digest of the last `user:password` that verified, so a page
    /// refreshing every few seconds costs one Argon2 verification, not one
    /// per request.
    verified: Mutex<Option<[u8; 32]>>,
}

impl Auth {
    fn new(config: &AdminConfig) -> Auth {
        Auth {
            token_digest: (!config.token.is_empty()).then(|| digest(config.token.as_bytes())),
            basic: (!config.username.is_empty())
                .then(|| (config.username.clone(), config.password_hash.clone())),
            verified: Mutex::new(None),
        }
    }

    async fn check(&self, authorization: Option<&str>) -> Result<(), Response> {
        if self.token_digest.is_none() && self.basic.is_none() {
            return Ok(());
        }
        let (scheme, value) = authorization
            .and_then(|a| a.split_once(' '))
            .map(|(s, v)| (s.to_ascii_lowercase(), v.trim()))
            .unwrap_or_default();
        let ok = match (scheme.as_str(), &self.token_digest, &self.basic) {
            ("bearer", Some(expected), _) => constant_time_eq(&digest(value.as_bytes()), expected),
            ("basic", _, Some((user, hash))) => self.check_basic(value, user, hash).await,
            _ => false,
        };
        if ok {
            return Ok(());
        }
        let mut how = Vec::new();
        if self.token_digest.is_some() {
            how.push("`Authorization: Bearer <admin.token>`");
        }
        if self.basic.is_some() {
            how.push("basic auth as admin.username");
        }
        let mut r = error(
            401,
            format!(
                "{}; log in with {}",
                if authorization.is_some() {
                    "wrong credentials"
                } else {
                    "this admin listener needs a login"
                },
                how.join(" or ")
            ),
        );
        r.headers.push(if self.basic.is_some() {
            "WWW-Authenticate: Basic realm=\"perch\", charset=\"UTF-8\"".into()
        } else {
            "WWW-Authenticate: Bearer realm=\"perch\"".into()
        });
        Err(r)
    }

    async fn check_basic(&self, value: &str, user: &str, hash: &str) -> bool {
        let Some(decoded) = http::base64_decode(value) else {
            return false;
        };
        let d = digest(&decoded);
        let cached = *self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if cached.is_some_and(|c| constant_time_eq(&c, &d)) {
            return true;
        }
        let Ok(text) = String::from_utf8(decoded) else {
            return false;
        };
        let Some((u, password)) = text.split_once(':') else {
            return false;
        };
        if u != user {
            return false;
        }
        let (hash, password) = (hash.to_owned(), password.to_owned());
        // Argon2 takes milliseconds of CPU: off the async threads.
        let ok = tokio::task::spawn_blocking(move || {
            use argon2::{Argon2, PasswordHash, PasswordVerifier};
            PasswordHash::new(&hash)
                .map(|h| {
                    Argon2::default()
                        .verify_password(password.as_bytes(), &h)
                        .is_ok()
                })
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        if ok {
            *self.verified.lock().unwrap_or_else(|p| p.into_inner()) = Some(d);
        }
        ok
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
