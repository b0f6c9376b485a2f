//! The MQTT codec perch puts between a client's socket and rumqttd: it
//! delegates framing to rumqttd's own V4/V5 codecs and adds what rumqttd
//! lacks, without forking it.
//!
//! rumqttd clones one codec value per connection and calls it for every packet
//! read from and written to that connection, so the codec is the one place
//! that sees a connection's whole conversation. It:
//!
//! - serves MQTT 3.1.1 and 5.0 on one port, picking the codec from the
//!   protocol level in the CONNECT (rumqttd needs one port per version);
//! - authenticates the CONNECT against [`Users`] and, when it refuses, answers
//!   with the right CONNACK code (rumqttd would close the socket without
//!   one). A refused CONNECT is handed to rumqttd under a throwaway client id
//!   with a clean session and no will, so it can never take over or wipe the
//!   session of the client whose id it used; the CONNACK rumqttd answers with
//!   is rewritten into the refusal, and the next read closes the connection;
//! - refuses remote clients that use a client id reserved for the gateway's
//!   own links (`perch-internal-*`), so no client can take over their
//!   sessions;
//! - accepts keep-alive 0 ("off", allowed by both specs; rumqttd refuses it)
//!   and enforces `broker.max_keep_alive_s` instead (the largest keep-alive
//!   by default), which a 5.0 client is told in the CONNACK's Server Keep
//!   Alive, as it is told `max_packet_size_bytes` (Maximum Packet Size);
//! - sends a 5.0 client that breaks the protocol a DISCONNECT with the
//!   reason (0x81, 0x82, 0x95 Packet too large) before closing;
//! - enforces the client's ACL on PUBLISH and SUBSCRIBE;
//! - hands what changes the retained set (retained publishes, empty
//!   payloads) to the retained store ([`super::retained`]), so it survives
//!   a restart, and what `upstream.forward_topics` asks for to the buffer,
//!   and holds the PUBACK/PUBREC of such a QoS 1/2 publish until it is
//!   committed ([`super::kept`]: a PUBACK means it is on disk);
//! - takes the will out of the CONNECT and hands it to [`super::will`] when
//!   the connection ends without DISCONNECT; a DISCONNECT is not passed on:
//!   the codec ends the connection itself after it (see `will` for why);
//! - closes connections that send malformed packets rumqttd would accept:
//!   reserved fixed-header flags set, the reserved connect flag set, a second
//!   CONNECT, a CONNECT announcing
//!   more than `max_packet_size_bytes` (rumqttd would buffer it whole);
//! - bounds the connections that have not finished their CONNECT
//!   ([`Connecting`], `broker.max_pending_connections`): past the bound a
//!   new connection is closed at its first read, so slowloris clients can
//!   hold at most that many sockets, each until `connection_timeout_ms`
//!   (rumqttd's deadline on the whole CONNECT, however it trickles in);
//! - honours a 5.0 client's Receive Maximum and Maximum Packet Size (see
//!   "Flow control" below);
//! - sends each message at the lower of its publish QoS and the
//!   subscription's, applies the 5.0 subscription options rumqttd ignores,
//!   and sends control requests to admins only ([`delivery`]);
//! - reads DISCONNECT itself, 5.0 session expiry included ([`disconnect`]).
//!
//! A denied publish is never routed. When the client expects an answer (QoS 1
//! or 2, or a SUBSCRIBE whose every filter is denied) the denied packet is
//! turned into a PINGREQ and the answer is queued: rumqttd answers the PINGREQ
//! in order with its other acks, and the PINGRESP is written out as the queued
//! answer instead. Real PINGREQs queue a real PINGRESP, so order is kept.
//! Answers follow the specs: 3.1.1 acknowledges a denied publish positively
//! (§3.3.5, MQTT-3.3.5-2) and fails a denied filter with 0x80; 5.0 uses reason
//! 0x87 (Not authorized) for both.
//!
//! # Flow control (5.0 §4.9, §3.1.2.11.3-4)
//!
//! rumqttd sends a client up to `max_inflight_count` unacknowledged QoS 1/2
//! publishes whatever the client asked for, and ignores the client's
//! Maximum Packet Size. The codec sits in between:
//!
//! - **Receive Maximum.** A QoS 1/2 PUBLISH written while the client already
//!   has its Receive Maximum unacknowledged (no PUBACK, PUBCOMP, or PUBREC
//!   with a failure code yet) is held, encoded, in the codec instead of being
//!   written. Each acknowledgement that frees a slot makes the next `read`
//!   hand rumqttd a PINGREQ of our own; its PINGRESP is written out as the
//!   oldest held publish. rumqttd counts held publishes as in flight, so
//!   `max_inflight_count` bounds how many can be held.
//! - **Maximum Packet Size.** A PUBLISH that encodes larger than the client's
//!   limit is not written, it is counted (`messages_too_large`) and,
//!   as MQTT-3.1.2-25 says, treated as delivered: the codec gives rumqttd the
//!   PUBACK (QoS 1) or PUBREC and PUBCOMP (QoS 2) the client would have sent.
//!   rumqttd only takes acknowledgements in the order it sent the publishes
//!   (an out-of-order one drops the client), so the codec keeps that order:
//!   a made-up acknowledgement waits until the client acknowledged every
//!   publish sent before it.
//!
//! Packets the codec makes up for rumqttd are queued (`inject`) and
//! returned by the next `read`, before anything from the socket; rumqttd
//! calls `read` again right after every write, so they never wait for the
//! client.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::v5::V5;
use rumqttd::protocol::{self, ConnectReturnCode, Packet, PingReq, Protocol};

use super::auth::{Acl, Users};
use super::kept::{Keeper, Kept};
use super::retained::Capture;
use super::session::Sessions;
use super::will::{Will, Wills};

mod acks;
mod connect;
pub(super) mod delivery;
mod disconnect;
mod dollar;
mod flow;
mod police;
mod reason;
mod refusal;
mod write;

use delivery::Subscriptions;
use flow::{Flow, Inject};

/// How long a CONNECT waits for an earlier connection of its client id to
/// end before rumqttd takes that one over (see `Sessions::wait_until_gone`):
/// long enough for a just-dropped connection's task to notice on a loaded
/// board, short enough not to matter for a real takeover.
const TAKEOVER_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

/// Settings shared by every connection on one listener.
pub struct Policy {
    pub users: Arc<Users>,
    /// Whether this listener lets clients in without a username.
    pub allow_anonymous: bool,
    /// `broker.max_packet_size_bytes`, told to 5.0 clients in the CONNACK.
    pub max_packet_size: usize,
    /// `broker.max_keep_alive_s`.
    pub max_keep_alive_s: u16,
    /// Where retained publishes go to be persisted; `None` keeps them in
    /// memory only.
    pub retained: Option<Capture>,
    /// What keeps the messages on `upstream.forward_topics` (the buffer);
    /// `None` when nothing is forwarded.
    pub keeper: Option<Arc<dyn Keeper>>,
    /// Where wills go when a connection ends without DISCONNECT.
    pub wills: Arc<Wills>,
    /// Persistent sessions: stored subscriptions, expiry timers.
    pub sessions: Arc<Sessions>,
    /// Packet ids of QoS 1/2 messages a persistent-session client had not
    /// acknowledged when its connection ended, by client id: rumqttd sends
    /// them again on reconnect but without DUP, which the codec sets.
    pub unacked: Arc<Mutex<HashMap<String, HashSet<u16>>>>,
    /// QoS 2 publishes a persistent-session client sent but had not
    /// released (PUBREL) when its connection ended, by client id.
    pub held_qos2: Arc<Mutex<HashMap<String, HashMap<u16, Will>>>>,
    /// The broker's traffic counters (shared by every listener).
    pub traffic: Arc<Traffic>,
    /// Connections that have not finished their CONNECT (shared by every
    /// listener).
    pub connecting: Arc<Connecting>,
    /// The distinct filters remote clients subscribed to (shared by every
    /// listener), bounded by `broker.max_filters`.
    pub filters: Arc<Filters>,
}

/// The distinct topic filters remote clients have subscribed to since the
/// start, at most `max`. rumqttd keeps a log per filter until the gateway
/// stops, and the segment size is derived from `max` (see
/// [`super::BrokerConfig::segment_size_bytes`]), so a filter past `max`
/// would take memory nobody budgeted for: it is refused.
pub struct Filters {
    max: usize,
    /// Locked once per filter of a SUBSCRIBE, never across an await.
    seen: Mutex<HashSet<String>>,
}

impl Filters {
    pub fn new(max: usize) -> Filters {
        Filters {
            max,
            seen: Mutex::new(HashSet::new()),
        }
    }

    /// Whether a subscription to `filter` fits: it was seen before, or it
    /// is new and the bound is not reached (then it is counted in).
    fn admit(&self, filter: &str) -> bool {
        let mut seen = self.seen.lock().expect("filters lock");
        if seen.contains(filter) {
            return true;
        }
        if seen.len() >= self.max {
            return false;
        }
        seen.insert(filter.to_owned());
        true
    }
}

/// Connections accepted whose CONNECT has not arrived whole yet, bounded
/// by `broker.max_pending_connections`. A well-behaved client is counted
/// for the milliseconds its CONNECT takes; a slowloris client until
/// rumqttd's `connection_timeout_ms` closes it.
#[derive(Debug)]
pub struct Connecting {
    max: usize,
    now: AtomicUsize,
    /// Counts the connections closed at once because `max` were pending.
    refusals: Arc<Refusals>,
}

impl Connecting {
    pub fn new(max: usize, refusals: Arc<Refusals>) -> Connecting {
        Connecting {
            max,
            now: AtomicUsize::new(0),
            refusals,
        }
    }

    /// Counts a new connection in; `false` (not counted) if `max` are
    /// pending already.
    fn enter(&self) -> bool {
        let entered = self
            .now
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok();
        if !entered {
            let refused = self
                .refusals
                .connections_shed
                .fetch_add(1, Ordering::Relaxed)
                + 1;
            // 1, 2, 4, 8…: an attack cannot flood the log.
            if refused.is_power_of_two() {
                tracing::warn!(
                    pending = self.max,
                    refused_so_far = refused,
                    "a new connection was closed at once: {} connections have not finished \
                     their CONNECT (broker.max_pending_connections); something may be \
                     holding connections open (slowloris), or raise the limit if real \
                     clients are refused",
                    self.max
                );
            }
        }
        entered
    }

    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What remote clients sent and received, for metrics. Relaxed atomics,
/// added once per packet by the connection's own task.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Remote clients connected now (logged in).
    pub connections: AtomicU64,
    /// Remote clients that logged in since the start.
    pub connections_total: AtomicU64,
    /// PUBLISH packets from clients passed on to the router.
    pub messages_in: AtomicU64,
    /// PUBLISH packets written to clients.
    pub messages_out: AtomicU64,
    /// Bytes of MQTT packets read from clients.
    pub bytes_in: AtomicU64,
    /// Bytes of MQTT packets written to clients.
    pub bytes_out: AtomicU64,
    /// PUBLISH packets not sent because they were larger than the 5.0
    /// client's Maximum Packet Size (MQTT-3.1.2-25: discarded).
    pub messages_too_large: AtomicU64,
}

/// Counts of what the codecs refused, for logs and metrics.
#[derive(Debug, Default)]
pub struct Refusals {
    /// Every refused CONNECT, whatever the reason.
    pub logins: AtomicU64,
    /// Of `logins`: refused without a password check because
    /// `broker.max_failed_logins_per_minute` was spent.
    pub logins_throttled: AtomicU64,
    /// Connections closed before their CONNECT was read because
    /// `broker.max_pending_connections` were still waiting for theirs.
    pub connections_shed: AtomicU64,
    pub publishes: AtomicU64,
    pub subscriptions: AtomicU64,
    /// Subscriptions refused because `broker.max_filters` distinct filters
    /// were subscribed already (also counted in `subscriptions`).
    pub filters: AtomicU64,
    /// QoS 1/2 publishes the gateway could not commit (the buffer or the
    /// retained store full or failing): refused, never acknowledged.
    pub not_kept: AtomicU64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Version {
    V4,
    V5,
}

/// What the next PINGRESP from rumqttd stands for.
enum Pending {
    /// The client sent a PINGREQ and gets a PINGRESP.
    Ping,
    /// Our answer to a packet we turned into a PINGREQ, already encoded.
    Answer(Vec<u8>),
    /// A slot in the client's Receive Maximum came free: the oldest held
    /// publish goes out.
    Release,
}

/// One connection's codec. Cloned from a template per connection.
pub struct Codec {
    policy: Arc<Policy>,
    refusals: Arc<Refusals>,
    version: Option<Version>,
    acl: Option<Arc<Acl>>,
    /// Set when the CONNECT was refused: the CONNACK to send instead of
    /// rumqttd's, after which nothing else is read or written.
    refused: Option<ConnectReturnCode>,
    /// Why, for the refusal CONNACK's Reason String (5.0).
    refused_reason: Option<&'static str>,
    /// `write` takes `&self`, so the answers it pops sit behind a lock. One
    /// task uses the codec, so the lock is never contended nor held across
    /// an await.
    pending: Mutex<VecDeque<Pending>>,
    /// SUBSCRIBEs from which denied filters were removed: packet id -> which
    /// positions of the client's list were denied.
    partial_subacks: Mutex<HashMap<u16, Vec<bool>>>,
    /// 3.1.1 QoS 2 publishes we denied and answered with PUBREC: their PUBREL
    /// is answered by us too.
    denied_qos2: HashSet<u16>,
    /// 5.0 topic aliases the client set up, so aliased publishes are judged
    /// by their real topic.
    aliases: HashMap<u16, String>,
    /// The client's will and id, published when the connection ends
    /// without DISCONNECT (see `Drop`).
    will: Option<(String, Will)>,
    /// The client sent DISCONNECT: the next read ends the connection.
    closing: bool,
    /// The Session Expiry Interval of the 5.0 CONNECT (0 when absent, and
    /// for 3.1.1): a DISCONNECT may change it, but not from 0 (§3.14.2.2.2).
    connect_expiry: u32,
    /// A 5.0 client asked for keep-alive 0, which rumqttd cannot do, or for
    /// more than `broker.max_keep_alive_s`: its CONNACK carries the
    /// keep-alive enforced instead (Server Keep Alive, 5.0 §3.2.2.3.14).
    server_keep_alive: bool,
    /// The client id and whether its session outlives the connection.
    client_id: String,
    persistent: bool,
    /// Bytes a 5.0 SUBACK with a Reason String may take (`dollar`).
    reason_room: usize,
    /// This connection's generation in [`Sessions`] and how its session
    /// persists (see [`Sessions::connected`]); `None` for an assigned id.
    session: Option<(u64, Option<Option<u32>>)>,
    /// Outgoing QoS 1/2 publishes not yet acknowledged (PUBACK / PUBREC),
    /// and those to mark DUP because they were sent on an earlier
    /// connection. Locked because `write` takes `&self`; one task uses it.
    unacked: Mutex<(HashSet<u16>, HashSet<u16>)>,
    /// QoS 2 publishes received on this connection whose PUBREL is due
    /// (rumqttd routes them on PUBREL), and those received on an earlier
    /// connection of this session, which rumqttd has forgotten: perch
    /// routes those itself when their PUBREL comes.
    incoming_qos2: HashMap<u16, Will>,
    earlier_qos2: HashMap<u16, Will>,
    /// Flow control towards the client; locked because `write` takes
    /// `&self` (one task uses it, never contended).
    flow: Mutex<Flow>,
    /// Packets for rumqttd made up by the codec, returned by the next reads.
    inject: Mutex<VecDeque<Inject>>,
    /// The client's subscriptions with their 5.0 options, and its publishes
    /// coming back through No Local ones (see [`delivery`]); locked because
    /// `write` takes `&self` (one task uses it).
    subscriptions: Mutex<Subscriptions>,
    /// Kept publishes whose PUBACK/PUBREC waits for a commit ([`acks`]);
    /// locked because `write` takes `&self` (one task uses it).
    kept: Mutex<Kept>,
    /// A packet was handed to rumqttd since it last saw InsufficientBytes:
    /// rumqttd is in the middle of a batch whose packets an error would
    /// throw away.
    mid_batch: bool,
    /// Whether this connection logged in (and is counted as connected).
    counted: bool,
    /// Whether the codec has read yet (the first read counts the
    /// connection in [`Connecting`]).
    started: bool,
    /// Whether this connection is counted in [`Connecting`].
    connecting: bool,
}

impl Codec {
    pub fn new(policy: Arc<Policy>, refusals: Arc<Refusals>) -> Codec {
        Codec {
            policy,
            refusals,
            version: None,
            acl: None,
            refused: None,
            refused_reason: None,
            pending: Mutex::new(VecDeque::new()),
            partial_subacks: Mutex::new(HashMap::new()),
            denied_qos2: HashSet::new(),
            aliases: HashMap::new(),
            will: None,
            closing: false,
            connect_expiry: 0,
            server_keep_alive: false,
            client_id: String::new(),
            reason_room: usize::MAX,
            persistent: false,
            session: None,
            unacked: Mutex::new((HashSet::new(), HashSet::new())),
            incoming_qos2: HashMap::new(),
            earlier_qos2: HashMap::new(),
            flow: Mutex::new(Flow {
                receive_max: usize::from(u16::MAX),
                ..Flow::default()
            }),
            inject: Mutex::new(VecDeque::new()),
            subscriptions: Mutex::new(Subscriptions::default()),
            kept: Mutex::default(),
            mid_batch: false,
            counted: false,
            started: false,
            connecting: false,
        }
    }
}

impl Drop for Codec {
    /// rumqttd drops the codec when the connection ends: the will (still
    /// here unless a DISCONNECT discarded it) is due.
    fn drop(&mut self) {
        self.connected();
        if self.counted {
            self.policy
                .traffic
                .connections
                .fetch_sub(1, Ordering::Relaxed);
        }
        if let Some((client_id, will)) = self.will.take() {
            self.policy.wills.ended(client_id, will);
        }
        if self.persistent {
            let subs = std::mem::take(self.subscriptions.get_mut().expect("codec lock"));
            (self.policy.sessions).keep_subscriptions(&self.client_id, subs.into_subs());
        }
        if let Some((generation, persistence)) = self.session.take() {
            self.policy
                .sessions
                .ended(self.client_id.clone(), generation, persistence);
        }
        if self.persistent {
            let mut held = std::mem::take(&mut self.incoming_qos2);
            held.extend(self.earlier_qos2.drain());
            if !held.is_empty() {
                self.policy
                    .held_qos2
                    .lock()
                    .expect("held lock")
                    .insert(self.client_id.clone(), held);
            }
            let (unacked, _) = std::mem::take(self.unacked.get_mut().expect("codec lock"));
            if !unacked.is_empty() {
                self.policy
                    .unacked
                    .lock()
                    .expect("unacked lock")
                    .insert(std::mem::take(&mut self.client_id), unacked);
            }
        }
    }
}

impl Clone for Codec {
    /// A clone is a fresh connection's codec: it shares the policy, not the
    /// state.
    fn clone(&self) -> Codec {
        Codec::new(self.policy.clone(), self.refusals.clone())
    }
}

impl Protocol for Codec {
    fn read_mut(
        &mut self,
        stream: &mut BytesMut,
        max_size: usize,
    ) -> Result<Packet, protocol::Error> {
        let before = stream.len();
        let packet = self.read_packet(stream, max_size);
        let traffic = &self.policy.traffic;
        let read = before.saturating_sub(stream.len()) as u64;
        traffic.bytes_in.fetch_add(read, Ordering::Relaxed);
        if let Ok(Packet::Publish(..)) = &packet {
            traffic.messages_in.fetch_add(1, Ordering::Relaxed);
        }
        packet
    }

    fn write(&self, packet: Packet, write: &mut BytesMut) -> Result<usize, protocol::Error> {
        let before = write.len();
        let publish = matches!(packet, Packet::Publish(..));
        let result = self.write_packet(packet, write);
        let traffic = &self.policy.traffic;
        let written = write.len().saturating_sub(before) as u64;
        traffic.bytes_out.fetch_add(written, Ordering::Relaxed);
        if publish && written > 0 {
            traffic.messages_out.fetch_add(1, Ordering::Relaxed);
        }
        result
    }
}

impl Codec {
    fn read_packet(
        &mut self,
        stream: &mut BytesMut,
        max_size: usize,
    ) -> Result<Packet, protocol::Error> {
        if self.refused.is_some() {
            // The refusal CONNACK has been written; end the connection.
            return Err(protocol::Error::InvalidProtocol);
        }
        let version = match self.version {
            Some(v) => v,
            None => return self.read_connect(stream, max_size),
        };
        if self.closing {
            if self.answer_pending() {
                // Our answer (a DISCONNECT of our own) goes out first.
                return Err(protocol::Error::InsufficientBytes(1));
            }
            // After a DISCONNECT (MQTT-3.14.4-1: the server closes).
            return Err(protocol::Error::InvalidProtocol);
        }
        if let Some(injected) = self.inject.get_mut().expect("codec lock").pop_front() {
            self.mid_batch = true;
            return Ok(match injected {
                Inject::PubAck(pkid) => Packet::PubAck(
                    protocol::PubAck {
                        pkid,
                        reason: protocol::PubAckReason::Success,
                    },
                    None,
                ),
                Inject::PubRec(pkid) => Packet::PubRec(
                    protocol::PubRec {
                        pkid,
                        reason: protocol::PubRecReason::Success,
                    },
                    None,
                ),
                Inject::PubComp(pkid) => Packet::PubComp(
                    protocol::PubComp {
                        pkid,
                        reason: protocol::PubCompReason::Success,
                    },
                    None,
                ),
                Inject::Release => {
                    self.pending
                        .get_mut()
                        .expect("codec lock")
                        .push_back(Pending::Release);
                    Packet::PingReq(PingReq)
                }
            });
        }
        let read = self.read_next(stream, max_size, version);
        match read {
            Err(e) if version == Version::V5 => self.closed_on_error(e, stream),
            read => read,
        }
    }

    /// The next packet from the client, past the ACL and the checks
    /// rumqttd does not make.
    fn read_next(
        &mut self,
        stream: &mut BytesMut,
        max_size: usize,
        version: Version,
    ) -> Result<Packet, protocol::Error> {
        loop {
            if let Some(&first) = stream.first() {
                check_fixed_header(first, version)?;
                if first == 0xe0 {
                    return self.read_disconnect(stream, version);
                }
            }
            let peeked = peek(stream);
            let read = match version {
                Version::V4 => V4.read_mut(stream, max_size),
                Version::V5 => V5.read_mut(stream, max_size),
            };
            let packet = match read {
                Ok(p) => p,
                Err(e) => {
                    if matches!(e, protocol::Error::InsufficientBytes(_)) {
                        self.mid_batch = false;
                    }
                    return Err(e);
                }
            };
            check_topics(&packet, &self.aliases)?;
            delivery::check(&packet)?;
            match self.police(packet, peeked) {
                Some(packet) => {
                    self.mid_batch = true;
                    return Ok(packet);
                }
                // A 3.1.1 publish the gateway could not keep: the
                // connection ends without its PUBACK (see `refuse_kept`).
                None if self.closing => return self.close_after_batch(),
                // Dropped (a denied QoS 0 publish): read the next one.
                None => continue,
            }
        }
    }
}

/// 5.0 reason code 0x87.
const NOT_AUTHORIZED: u8 = 0x87;

impl Codec {
    /// The connection is no longer waiting for its CONNECT.
    fn connected(&mut self) {
        if std::mem::take(&mut self.connecting) {
            self.policy.connecting.leave();
        }
    }
}

/// Rejects a fixed header whose reserved flags are wrong (3.1.1 §2.2.2,
/// 5.0 §2.1.3: PUBREL, SUBSCRIBE and UNSUBSCRIBE carry 0010, other packets
/// except PUBLISH 0000; a PUBLISH may not have QoS 3) or that is a second
/// CONNECT (MQTT-3.1.0-2), or of a type the version does not have (0;
/// AUTH in 3.1.1). rumqttd's codecs accept the former and panic on the
/// latter, which kills the connection's task without telling the router
/// (a leaked connection slot).
fn check_fixed_header(first: u8, version: Version) -> Result<(), protocol::Error> {
    let (kind, flags) = (first >> 4, first & 0x0f);
    let ok = match kind {
        0 | 1 => false,
        15 if version == Version::V4 => false,
        3 => flags & 0b0110 != 0b0110,
        6 | 8 | 10 => flags == 0b0010,
        _ => flags == 0,
    };
    if ok {
        Ok(())
    } else {
        Err(protocol::Error::IncorrectPacketFormat)
    }
}

/// Rejects an empty topic name or filter (3.1.1 §4.7.3, MQTT-4.7.3-1; 5.0
/// §4.7.3): rumqttd's codecs accept both and route the publish nowhere.
/// 5.0 allows an empty topic name only with a topic alias the client has
/// set (§3.3.2.3.4); one it never set is a protocol error too.
fn check_topics(packet: &Packet, aliases: &HashMap<u16, String>) -> Result<(), protocol::Error> {
    let ok = match packet {
        Packet::Publish(publish, props) => {
            !publish.topic.is_empty()
                || props
                    .as_ref()
                    .and_then(|p| p.topic_alias)
                    .is_some_and(|a| aliases.contains_key(&a))
        }
        Packet::Subscribe(subscribe, _) => subscribe.filters.iter().all(|f| !f.path.is_empty()),
        Packet::Unsubscribe(unsubscribe, _) => unsubscribe.filters.iter().all(|f| !f.is_empty()),
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(protocol::Error::IncorrectPacketFormat)
    }
}

/// QoS and packet id of a PUBLISH at the head of `stream`, read before the
/// inner codec consumes it (rumqttd keeps them private in `Publish`).
#[derive(Clone, Copy, Default)]
struct Peeked {
    qos: u8,
    pkid: Option<u16>,
}

fn peek(stream: &[u8]) -> Peeked {
    let Some(&first) = stream.first() else {
        return Peeked::default();
    };
    let qos = (first >> 1) & 0b11;
    if first >> 4 != 3 || qos == 0 {
        return Peeked { qos, pkid: None };
    }
    let pkid = (|| {
        let (_, len_len) = remaining_length(&stream[1..])?;
        let at = 1 + len_len;
        let topic_len = usize::from(u16::from_be_bytes([*stream.get(at)?, *stream.get(at + 1)?]));
        let at = at + 2 + topic_len;
        Some(u16::from_be_bytes([*stream.get(at)?, *stream.get(at + 1)?]))
    })();
    Peeked { qos, pkid }
}

/// Decodes an MQTT variable-length integer: (value, bytes used).
pub(super) fn remaining_length(bytes: &[u8]) -> Option<(usize, usize)> {
    let mut value = 0usize;
    for (i, &b) in bytes.iter().take(4).enumerate() {
        value |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_past_the_bound_are_refused_and_known_ones_still_admitted() {
        let f = Filters::new(2);
        assert!(f.admit("a/#"));
        assert!(f.admit("b"));
        assert!(!f.admit("c"), "a third distinct filter is past the bound");
        assert!(
            f.admit("a/#"),
            "a filter already counted takes no new place"
        );
        assert!(!f.admit("c"), "a refused filter was not counted in");
    }

    #[test]
    fn remaining_length_decodes_the_spec_examples() {
        assert_eq!(remaining_length(&[0x00]), Some((0, 1)));
        assert_eq!(remaining_length(&[0x7f]), Some((127, 1)));
        assert_eq!(remaining_length(&[0x80, 0x01]), Some((128, 2)));
        assert_eq!(
            remaining_length(&[0xff, 0xff, 0xff, 0x7f]),
            Some((268_435_455, 4))
        );
        assert_eq!(remaining_length(&[0xff, 0xff, 0xff, 0xff, 0x01]), None);
    }

    #[test]
    fn peek_finds_qos_and_packet_id() {
        // PUBLISH QoS 1, topic "a/b", pkid 0x1234, payload "x".
        let p = [0x32, 8, 0, 3, b'a', b'/', b'b', 0x12, 0x34, b'x'];
        let got = peek(&p);
        assert_eq!((got.qos, got.pkid), (1, Some(0x1234)));
        let q0 = [0x30, 6, 0, 3, b'a', b'/', b'b', b'x'];
        assert_eq!(peek(&q0).pkid, None);
    }

    #[test]
    fn fixed_header_flags_are_checked_per_packet_type() {
        let ok = |b| check_fixed_header(b, Version::V4).is_ok();
        assert!(ok(0x30) && ok(0x3b) && ok(0x62) && ok(0x82) && ok(0xa2) && ok(0xc0));
        // QoS 3, SUBSCRIBE/PUBREL without 0010, PINGREQ with flags, CONNECT
        assert!(!ok(0x36) && !ok(0x80) && !ok(0x60) && !ok(0xc1) && !ok(0x10));
        // AUTH exists in 5.0 only; type 0 in neither
        assert!(!ok(0xf0) && check_fixed_header(0xf0, Version::V5).is_ok());
        assert!(!ok(0x00));
    }
}
