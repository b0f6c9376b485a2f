//! The embedded MQTT broker: rumqttd's router and listeners, composed on
//! perch's own runtime so that perch has what `rumqttd::Broker` lacks.
//!
//! - **Bind errors and readiness.** `rumqttd::Broker::start` only logs a bind
//!   error and never says when it listens. perch runs each listener's
//!   `rumqttd::Server` future itself and polls it once: binding is the first
//!   thing it does and completes in that poll, so after it either the error is
//!   in hand or the socket is listening.
//! - **Shutdown.** Each listener is a task perch holds and aborts.
//! - **Validation without panics.** The config is checked by
//!   [`BrokerConfig::validate`] before anything starts; rumqttd's own checks
//!   (which panic) never see a bad value.
//! - **Bounded memory.** rumqttd keeps a log per subscribed filter in
//!   segments, and keeps a message there after delivering it until its
//!   segment is dropped. perch sizes the segments so that `max_filters`
//!   logs together keep at most `max_message_log_bytes`
//!   ([`BrokerConfig::segment_size_bytes`]), and the codec refuses
//!   subscriptions to new filters past `max_filters` (rumqttd never frees a
//!   filter's log). `max_connections` bounds the connections' own buffers.
//! - **Auth, ACLs, both protocol versions on one port, keep-alive 0 and the
//!   right CONNACK codes**: see [`codec`].
//! - **TLS** is terminated by perch, with a handshake deadline, in front of a
//!   loopback rumqttd listener: see [`tls`].
//! - **Retained messages survive a restart**: the codecs capture them into a
//!   bounded SQLite store, restored through an in-process link before any
//!   listener opens: see [`retained`].
//! - **A PUBACK means it is on disk**: a QoS 1/2 publish the gateway keeps
//!   (retained, or on `upstream.forward_topics`) is acknowledged only once
//!   it is committed: see [`kept`].
//! - **Persistent sessions survive a restart**: the codecs capture their
//!   subscriptions into SQLite; they are recreated in the router before any
//!   listener opens, and 5.0 session expiry is enforced: see [`session`].
//! - **Nagle off.** Every accepted connection has `TCP_NODELAY`, set on
//!   rumqttd's listening socket (see `no_delay_for_accepted`).
//! - **Will messages** are kept and published by perch (rumqttd's own
//!   handling races a clean DISCONNECT against the socket closing and can
//!   disconnect an unrelated client): see [`will`].
//!
//! The gateway's own parts (functions, upstream) talk to the router through
//! in-process links ([`Broker::link`]), not TCP.

pub mod auth;
mod codec;
mod config;
pub mod kept;
pub mod retained;
pub mod session;
mod tls;
mod will;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use rumqttd::local::{LinkBuilder, LinkError, LinkRx, LinkTx};
use rumqttd::{ConnectionSettings, LinkType, Router, RouterConfig, Server, ServerSettings};
use tokio::task::JoinHandle;

use self::auth::Users;
use self::codec::{Codec, Connecting, Filters, Policy};
pub use self::codec::{Refusals, Traffic};
pub use self::config::{AclConfig, BrokerConfig, ListenerConfig, TlsConfig, UserConfig};

/// Why the broker could not start or serve a request.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(
        "cannot listen on {addr} (listener {name:?}): {source}; \
         is another MQTT broker running there? Pick another address with --listen or in \
         [[broker.listeners]]"
    )]
    Bind {
        name: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Retained(#[from] retained::RetainedError),
    #[error(transparent)]
    Session(#[from] session::SessionError),
    #[error("cannot open an in-process link {client_id:?} to the broker: {source}")]
    Link {
        client_id: String,
        // Boxed: rumqttd's LinkError is over 800 bytes.
        source: Box<LinkError>,
    },
}

/// A listener that is accepting connections.
#[derive(Debug, Clone)]
pub struct Listening {
    pub name: String,
    /// The bound address (the real port when port 0 was asked for).
    pub addr: SocketAddr,
    pub tls: bool,
}

type Linker = dyn Fn(&str) -> Result<(LinkTx, LinkRx), Box<LinkError>> + Send + Sync;

/// Opens in-process links to the router; cheap to clone, so a stage can keep
/// one and open links later (e.g. when a function with a new trigger is
/// deployed).
#[derive(Clone)]
pub struct Links {
    /// A closure because the router's channel type is private to rumqttd: it
    /// can be captured, not named.
    linker: Arc<Linker>,
}

/// Client ids of in-process links start with this; remote clients may not
/// use it (the codec refuses them), so none can take over an internal
/// session.
pub const INTERNAL_PREFIX: &str = "perch-internal-";

impl Links {
    /// An in-process connection to the router, as client
    /// `perch-internal-<name>`. Blocks until the router has accepted it
    /// (microseconds; the router answers from its own thread).
    pub fn open(&self, name: &str) -> Result<(LinkTx, LinkRx), BrokerError> {
        let client_id = format!("{INTERNAL_PREFIX}{name}");
        (self.linker)(&client_id).map_err(|source| BrokerError::Link { client_id, source })
    }
}

/// The running broker.
pub struct Broker {
    links: Links,
    listening: Vec<Listening>,
    /// Accept loops, aborted on shutdown.
    tasks: Vec<JoinHandle<()>>,
    refusals: Arc<Refusals>,
    /// The retained-message store, when the broker has a data directory.
    retained: Option<retained::Store>,
    /// Persistent sessions (stored when the broker has a data directory).
    sessions: Option<Arc<session::Sessions>>,
    traffic: Arc<Traffic>,
}

impl Broker {
    /// Starts the router and every listener, with retained messages in
    /// memory only (for tests of other stages).
    pub fn start(config: &BrokerConfig) -> Result<Broker, BrokerError> {
        Broker::start_in(config, None, None)
    }

    /// Starts the router, restores the retained messages stored in
    /// `data_dir` (if given; new ones are persisted there), then starts every
    /// listener; returns once all are listening. `keeper` keeps what clients
    /// publish on the topics it asks for before their PUBACK goes out
    /// ([`kept`]). Must be called inside a tokio runtime: the listeners run
    /// on it.
    pub fn start_in(
        config: &BrokerConfig,
        data_dir: Option<&Path>,
        keeper: Option<Arc<dyn kept::Keeper>>,
    ) -> Result<Broker, BrokerError> {
        let router = RouterConfig {
            max_connections: config.max_connections,
            max_outgoing_packet_count: config.max_outgoing_packet_count,
            max_segment_size: config.segment_size_bytes(),
            max_segment_count: config.max_segment_count,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        };
        let router_tx = Router::new(0, router).spawn();
        let users = Arc::new(Users::new(config));
        let refusals = Arc::new(Refusals::default());
        let traffic = Arc::new(Traffic::default());

        // Every in-process link has dynamic filters: without them the router
        // *disconnects* a link that publishes to a topic nobody has
        // subscribed to yet (`NoMatchingFilters`), and the link's later sends
        // go to a dead connection id. Remote clients get the same setting
        // from `ConnectionSettings`.
        let opener: Arc<session::Opener> = Arc::new({
            let router_tx = router_tx.clone();
            move |id: &str, clean: bool| {
                LinkBuilder::new(id, router_tx.clone())
                    .clean_session(clean)
                    .dynamic_filters(true)
                    .build()
                    .map(|(tx, rx, _ack)| (tx, rx))
                    .map_err(Box::new)
            }
        });
        let mut broker = Broker {
            links: Links {
                linker: Arc::new({
                    let opener = opener.clone();
                    move |id: &str| opener(id, true)
                }),
            },
            listening: Vec::new(),
            tasks: Vec::new(),
            refusals: refusals.clone(),
            retained: None,
            sessions: None,
            traffic: traffic.clone(),
        };
        if let Some(dir) = data_dir {
            broker.open_retained(config, dir)?;
        }
        // After the retained messages: a restored subscription is sent the
        // matching ones when its client comes back, as any new one is.
        let sessions = open_sessions(config, data_dir, opener)?;
        broker.sessions = Some(sessions.clone());
        let capture = broker.retained.as_ref().map(retained::Store::capture);
        let (will_tx, will_rx) = broker.links.open("wills")?;
        let wills = Arc::new(will::Wills::new(will_tx, capture.clone()));
        broker.tasks.push(drain((None, will_rx)));
        let unacked: Arc<std::sync::Mutex<_>> = Arc::default();
        let held_qos2: Arc<std::sync::Mutex<_>> = Arc::default();
        let connecting = Arc::new(Connecting::new(
            config.max_pending_connections,
            refusals.clone(),
        ));
        let filters = Arc::new(Filters::new(config.max_filters));
        for l in &config.listeners {
            let bind_err = |addr, source| BrokerError::Bind {
                name: l.name.clone(),
                addr,
                source,
            };
            // A TLS listener: perch accepts and terminates TLS on the public
            // address (see `tls`), rumqttd serves the plain side on loopback.
            let front = tls_front(l)?;
            let addr = match &front {
                Some(_) => resolve_port(&ListenerConfig {
                    listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                    ..l.clone()
                })?,
                None => resolve_port(l)?,
            };
            let settings = server_settings(config, l, addr);
            let policy = Arc::new(Policy {
                users: users.clone(),
                allow_anonymous: l.allow_anonymous,
                max_packet_size: config.max_packet_size_bytes,
                max_keep_alive_s: config.max_keep_alive_s,
                retained: capture.clone(),
                keeper: keeper.clone(),
                wills: wills.clone(),
                sessions: sessions.clone(),
                unacked: unacked.clone(),
                held_qos2: held_qos2.clone(),
                traffic: traffic.clone(),
                connecting: connecting.clone(),
                filters: filters.clone(),
            });
            let server = Server::new(
                settings,
                router_tx.clone(),
                Codec::new(policy, refusals.clone()),
            );
            let task = listen(async move {
                let mut server = server;
                server.start(LinkType::Remote).await
            })
            .map_err(|source| bind_err(addr, source))?;
            broker.tasks.push(task);
            no_delay_for_accepted(addr);
            broker.expose(l, front, addr, config)?;
        }
        Ok(broker)
    }

    /// Makes a started listener reachable: a TLS listener's public side
    /// starts terminating TLS towards `addr`; the address clients use is
    /// recorded either way.
    fn expose(
        &mut self,
        l: &ListenerConfig,
        front: Option<(tokio::net::TcpListener, Arc<rustls::ServerConfig>)>,
        addr: SocketAddr,
        config: &BrokerConfig,
    ) -> Result<(), BrokerError> {
        let public = match front {
            Some((listener, tls_config)) => {
                let public = listener.local_addr().map_err(|source| BrokerError::Bind {
                    name: l.name.clone(),
                    addr: l.listen,
                    source,
                })?;
                let timeout = Duration::from_millis(config.tls_handshake_timeout_ms);
                self.tasks
                    .push(tls::serve(listener, tls_config, addr, timeout));
                public
            }
            None => addr,
        };
        self.listening.push(Listening {
            name: l.name.clone(),
            addr: public,
            tls: l.tls.is_some(),
        });
        Ok(())
    }

    /// Opens the retained-message store in `dir` and publishes what it
    /// holds, before any listener opens.
    fn open_retained(&mut self, config: &BrokerConfig, dir: &Path) -> Result<(), BrokerError> {
        let bounds = retained::Bounds {
            max_messages: config.max_retained_messages,
            max_bytes: config.max_retained_bytes,
        };
        let mut store = retained::Store::open(dir, bounds)?;
        let restored = store.take_restored();
        if !restored.is_empty() {
            let n = restored.len();
            let (mut tx, rx) = self.links.open("retained")?;
            restore_retained(&mut tx, restored);
            self.tasks.push(drain((Some(tx), rx)));
            tracing::info!(messages = n, "retained messages restored");
        }
        self.retained = Some(store);
        Ok(())
    }

    /// An in-process connection to the router, for the gateway's own parts.
    pub fn link(&self, client_id: &str) -> Result<(LinkTx, LinkRx), BrokerError> {
        self.links.open(client_id)
    }

    /// A handle that opens in-process links, for stages that open them later.
    pub fn links(&self) -> Links {
        self.links.clone()
    }

    /// The listeners, with the addresses they are bound to.
    pub fn listening(&self) -> &[Listening] {
        &self.listening
    }

    /// What the broker refused so far (logins, publishes, subscriptions).
    pub fn refusals(&self) -> &Arc<Refusals> {
        &self.refusals
    }

    /// What remote clients sent and received.
    pub fn traffic(&self) -> &Arc<Traffic> {
        &self.traffic
    }

    /// What the retained store could not keep, if there is one.
    pub fn retained_stats(&self) -> Option<&retained::RetainedStats> {
        self.retained.as_ref().map(retained::Store::stats)
    }

    /// Stops accepting connections and commits the retained messages
    /// captured so far. Connected clients are dropped when the runtime that
    /// serves them stops.
    pub fn stop_listening(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
        if let Some(store) = &self.retained {
            if !store.flush(Duration::from_secs(2)) {
                tracing::warn!("the retained-message store did not finish its last commit");
            }
        }
        if let Some(sessions) = &self.sessions {
            if !sessions.flush(Duration::from_secs(2)) {
                tracing::warn!("the session store did not finish its last commit");
            }
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop_listening();
    }
}
/// What rumqttd's server for listener `l` is told; it serves on `addr`
/// (the listener's own, or the loopback side of a TLS listener).
fn server_settings(config: &BrokerConfig, l: &ListenerConfig, addr: SocketAddr) -> ServerSettings {
    ServerSettings {
        name: l.name.clone(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 0,
        connections: ConnectionSettings {
            connection_timeout_ms: config.connection_timeout_ms,
            max_payload_size: config.max_packet_size_bytes,
            max_inflight_count: config.max_inflight_count,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    }
}

/// Opens the persistent sessions (`<data_dir>/sessions.db`) and restores
/// what they hold, or keeps them in memory without a data directory.
fn open_sessions(
    config: &BrokerConfig,
    data_dir: Option<&Path>,
    opener: Arc<session::Opener>,
) -> Result<Arc<session::Sessions>, BrokerError> {
    let Some(dir) = data_dir else {
        return Ok(Arc::new(session::Sessions::in_memory(opener)));
    };
    let bounds = session::Bounds {
        max_sessions: config.max_persistent_sessions,
        max_subscriptions: config.max_subscriptions_per_session,
    };
    let (sessions, stored) = session::open(dir, bounds, opener)?;
    let sessions = Arc::new(sessions);
    if !stored.is_empty() {
        let n = stored.len();
        sessions.restore(stored);
        tracing::info!(sessions = n, "persistent sessions restored");
    }
    Ok(sessions)
}

/// A TLS listener's public side: perch accepts and terminates TLS on the
/// listener's address (see `tls`), rumqttd serves the plain side on
/// loopback. `None` for a plain listener.
fn tls_front(
    l: &ListenerConfig,
) -> Result<Option<(tokio::net::TcpListener, Arc<rustls::ServerConfig>)>, BrokerError> {
    let Some(t) = &l.tls else {
        return Ok(None);
    };
    let bind_err = |source| BrokerError::Bind {
        name: l.name.clone(),
        addr: l.listen,
        source,
    };
    let tls_config = tls::server_config(t).map_err(|e| bind_err(std::io::Error::other(e)))?;
    let public = std::net::TcpListener::bind(l.listen)
        .and_then(|s| s.set_nonblocking(true).map(|()| s))
        .and_then(tokio::net::TcpListener::from_std)
        .map_err(bind_err)?;
    Ok(Some((public, tls_config)))
}

/// Publishes the stored retained messages through `link`, before any
/// listener opens.
fn restore_retained(tx: &mut LinkTx, restored: Vec<retained::Retained>) {
    for (i, r) in restored.into_iter().enumerate() {
        let props = r.expiry_s.map(|s| rumqttd::protocol::PublishProperties {
            message_expiry_interval: Some(s),
            ..Default::default()
        });
        let pkid = (i % usize::from(u16::MAX)) as u16 + 1;
        let packet = local_publish(r.topic.clone().into(), r.payload, r.qos, true, props, pkid);
        let Some(packet) = packet else {
            tracing::warn!(
                topic = r.topic,
                "stored retained message is malformed; skipped"
            );
            continue;
        };
        if let Err(e) = send_now(tx, packet) {
            tracing::warn!(error = %e, topic = r.topic, "cannot restore a retained message");
        }
    }
}

/// Keeps reading a link the gateway only publishes on: the router
/// acknowledges its QoS 1 publishes, and an undrained link stalls.
fn drain((tx, mut rx): (Option<LinkTx>, LinkRx)) -> JoinHandle<()> {
    tokio::spawn(async move {
        // A link's sender must live as long as the link.
        let _tx = tx;
        loop {
            match rx.next().await {
                Ok(Some(rumqttd::Notification::Unschedule)) => {
                    if rx.wake().await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    })
}

/// Sends `packet` on an in-process link. `LinkTx::send` is async only in
/// name (a blocking channel send inside), so one poll completes it.
fn send_now(tx: &mut LinkTx, packet: rumqttd::protocol::Packet) -> Result<(), Box<LinkError>> {
    let mut send = std::pin::pin!(tx.send(packet));
    match send.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(r) => r.map(|_| ()).map_err(Box::new),
        Poll::Pending => Ok(()),
    }
}

/// A PUBLISH for an in-process link, with any QoS and properties: rumqttd
/// only lets code outside it build QoS 0 publishes, so this encodes one
/// with its V5 codec, sets the QoS and packet id in the bytes, and decodes
/// the result. The link runs QoS 0 and 1 only (a QoS 2 publish would wait
/// for a PUBREL): the message is routed at `qos.min(1)` and marked with
/// `qos`, at which subscribers get it (see [`codec::delivery`]).
fn local_publish(
    topic: bytes::Bytes,
    payload: bytes::Bytes,
    qos: u8,
    retain: bool,
    props: Option<rumqttd::protocol::PublishProperties>,
    pkid: u16,
) -> Option<rumqttd::protocol::Packet> {
    use bytes::BufMut;
    use rumqttd::protocol::{v5::V5, Packet, Protocol, Publish};
    let props = codec::delivery::mark(props, qos, retain);
    let qos = qos.min(1);
    let mut q0 = bytes::BytesMut::new();
    V5.write(
        Packet::Publish(Publish::new(topic, payload, retain), props),
        &mut q0,
    )
    .ok()?;
    if qos == 0 {
        return V5.read_mut(&mut q0, usize::MAX).ok();
    }
    let (len, len_len) = codec::remaining_length(&q0[1..])?;
    let body = &q0[1 + len_len..];
    let topic_end = 2 + usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    let mut out = bytes::BytesMut::with_capacity(q0.len() + 3);
    out.put_u8(q0[0] | (qos << 1));
    rumqttd::protocol::v4::write_remaining_length(&mut out, len + 2).ok()?;
    out.put_slice(body.get(..topic_end)?);
    out.put_u16(pkid);
    out.put_slice(body.get(topic_end..)?);
    V5.read_mut(&mut out, usize::MAX).ok()
}

/// Picks a concrete port for port 0, since rumqttd cannot report the port it
/// bound. The port is free when picked and rumqttd binds it microseconds
/// later; another process taking it in between shows up as a bind error.
fn resolve_port(l: &ListenerConfig) -> Result<SocketAddr, BrokerError> {
    if l.listen.port() != 0 {
        return Ok(l.listen);
    }
    let bind_err = |source| BrokerError::Bind {
        name: l.name.clone(),
        addr: l.listen,
        source,
    };
    let probe = std::net::TcpListener::bind(l.listen).map_err(bind_err)?;
    probe.local_addr().map_err(bind_err)
}

/// Runs a listener's accept loop as a task, once it is bound.
fn listen<F, E>(run: F) -> Result<JoinHandle<()>, std::io::Error>
where
    F: Future<Output = Result<(), E>> + Send + 'static,
    E: std::error::Error + 'static,
{
    let mut run = Box::pin(run);
    // Binding is the first thing the server does and completes within the
    // first poll (the address is already resolved), so Pending means
    // "listening" and Ready means it could not bind.
    let mut cx = Context::from_waker(Waker::noop());
    match run.as_mut().poll(&mut cx) {
        Poll::Ready(Err(e)) => {
            // rumqttd's error type is private; its source is the io::Error.
            let kind = std::error::Error::source(&e)
                .and_then(|s| s.downcast_ref::<std::io::Error>())
                .map_or(std::io::ErrorKind::Other, std::io::Error::kind);
            let message =
                std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string());
            return Err(std::io::Error::new(kind, message));
        }
        Poll::Ready(Ok(())) => return Err(std::io::Error::other("the listener stopped at once")),
        Poll::Pending => {}
    }
    Ok(tokio::spawn(async move {
        if let Err(e) = run.await {
            tracing::error!(error = %e, "listener stopped");
        }
    }))
}

/// Turns Nagle's algorithm off for every connection rumqttd accepts on
/// `addr`. MQTT packets are small and each is a message someone waits for:
/// with Nagle on, a small packet written while an earlier one is
/// unacknowledged waits for that ACK, up to the peer's delayed-ACK timer
/// (40 ms on Linux; what it cost: docs/performance.md). rumqttd binds its
/// listener itself and sets no option on the sockets it accepts, but Linux
/// copies TCP_NODELAY from a listening socket to every socket accepted from
/// it, so perch sets it on rumqttd's listening socket, found among the
/// process's descriptors by its address. Failing to is logged, not fatal:
/// the broker works, only slower.
fn no_delay_for_accepted(addr: SocketAddr) {
    #[cfg(target_os = "linux")]
    {
        let found = find_socket(|s| {
            let bound = s.local_addr().ok()?.as_socket()?;
            (bound == addr && s.is_listener().ok()?).then(|| s.set_tcp_nodelay(true))
        });
        let error = match found {
            Ok(Some(Ok(()))) => return,
            Ok(Some(Err(e))) => e.to_string(),
            Ok(None) => "not found among the process's sockets".to_owned(),
            Err(e) => format!(
                "cannot look at the process's sockets ({e}); this needs Linux 5.6 or later \
                 and the pidfd_getfd system call allowed (a container's seccomp profile may \
                 deny it)"
            ),
        };
        tracing::warn!(
            %addr,
            error,
            "cannot set TCP_NODELAY on the broker's listener; small messages may wait for \
             the client's delayed ACK (up to 40 ms)"
        );
    }
    #[cfg(not(target_os = "linux"))]
    tracing::debug!(%addr, "TCP_NODELAY is not set on the broker's connections");
}

/// Runs `f` on each socket this process has open until it returns `Some`.
///
/// Without `unsafe`: each descriptor that /proc/self/fd lists as a socket
/// is duplicated with `pidfd_getfd` on this process's own pidfd (Linux 5.6
/// or later; the kernel always lets a process do that to itself) and looked
/// at through the duplicate, which `f` borrows and which is closed after
/// it. Options set through the duplicate are set on the socket itself,
/// which both descriptors share.
///
/// Only sockets are duplicated, and a duplicate that turns out not to be
/// one is leaked, never closed: closing *any* descriptor of a file drops
/// every POSIX record lock the process holds on it, and SQLite's locks on
/// the databases and their `-shm` files are such locks. Without them the
/// next `perch buffer stats` (or any other process opening a database)
/// takes itself for the first user, truncates the `-shm` file under
/// perch's mapping, and perch dies of SIGBUS on its next write. A socket
/// closed since it was listed fails to duplicate and is skipped; a number
/// reused meanwhile by a file is the one leak, at most one per call.
#[cfg(target_os = "linux")]
fn find_socket<T>(
    mut f: impl FnMut(socket2::SockRef<'_>) -> Option<T>,
) -> std::io::Result<Option<T>> {
    use rustix::fs::{fstat, FileType};
    use rustix::process::{getpid, pidfd_getfd, pidfd_open, PidfdFlags, PidfdGetfdFlags};
    let me = pidfd_open(getpid(), PidfdFlags::empty())?;
    for entry in std::fs::read_dir("/proc/self/fd")?.flatten() {
        let Some(raw) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
        if !is_socket {
            continue;
        }
        let fd = match pidfd_getfd(&me, raw, PidfdGetfdFlags::empty()) {
            Ok(fd) => fd,
            // Closed since it was listed.
            Err(rustix::io::Errno::BADF) => continue,
            Err(e) => return Err(e.into()),
        };
        if !fstat(&fd).is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Socket) {
            // Reused by a file since it was listed: closing this duplicate
            // would drop the process's locks on that file.
            std::mem::forget(fd);
            continue;
        }
        if let Some(found) = f(socket2::SockRef::from(&fd)) {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

/// Checks that a listener's certificate and key load, so a bad path is a
/// config error instead of every TLS handshake failing later.
pub(crate) fn tls_check(t: &TlsConfig) -> Result<(), String> {
    tls::server_config(t).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the socket connected to `peer` (the far end of a client's
    /// connection, i.e. the broker's side of it) has TCP_NODELAY set.
    #[cfg(target_os = "linux")]
    fn accepted_no_delay(peer: SocketAddr) -> Option<bool> {
        find_socket(|s| {
            let remote = s.peer_addr().ok()?.as_socket()?;
            (remote == peer).then(|| s.tcp_nodelay().expect("TCP_NODELAY of a TCP socket"))
        })
        .expect("this process's sockets can be looked at (pidfd_getfd)")
    }

    #[cfg(target_os = "linux")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn accepted_connections_have_nagle_off() {
        let config = BrokerConfig {
            listeners: vec![ListenerConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                ..ListenerConfig::default()
            }],
            ..BrokerConfig::default()
        };
        let broker = Broker::start(&config).unwrap();
        let client = std::net::TcpStream::connect(broker.listening()[0].addr).unwrap();
        let me = client.local_addr().unwrap();
        // rumqttd accepts on its own task: wait until the socket exists.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let nodelay = loop {
            if let Some(n) = accepted_no_delay(me) {
                break n;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the broker never accepted the connection"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert!(
            nodelay,
            "the broker's side of a client connection has Nagle on"
        );
    }
}
