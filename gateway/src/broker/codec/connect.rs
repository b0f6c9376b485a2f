//! The CONNECT: the protocol level picks the codec, the login and the
//! will are checked, a refusal is answered with the right CONNACK, and
//! what the session, the will and flow control need is taken from it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::BytesMut;
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::v5::V5;
use rumqttd::protocol::{self, ConnectReturnCode, Packet, Protocol};

use super::reason;
use super::refusal::{connack_code, throwaway_connect};
use super::{dollar, remaining_length, Codec, Subscriptions, Version, TAKEOVER_WAIT};
use crate::broker::auth::{Acl, Refusal};
use crate::broker::will::{self, Will};
impl Codec {
    pub(super) fn read_connect(
        &mut self,
        stream: &mut BytesMut,
        max_size: usize,
    ) -> Result<Packet, protocol::Error> {
        if !self.started {
            // rumqttd's first read comes right after the accept.
            self.started = true;
            if !self.policy.connecting.enter() {
                return Err(protocol::Error::InvalidProtocol);
            }
            self.connecting = true;
        }
        let header = connect_header(stream, max_size)?;
        self.connected();
        let version = match header.level {
            4 => Version::V4,
            5 => Version::V5,
            _ => {
                // 3.1 ("MQIsdp", level 3) and unknown levels: answer CONNACK
                // 0x01 as §3.1.2.2 asks, in the 3.1.1 encoding the client can
                // read, and close.
                let _ = stream.split_to(header.total_len);
                self.version = Some(Version::V4);
                self.refused = Some(ConnectReturnCode::RefusedProtocolVersion);
                self.refusals.logins.fetch_add(1, Ordering::Relaxed);
                return Ok(throwaway_connect());
            }
        };
        self.version = Some(version);
        let packet = match version {
            Version::V4 => V4.read_mut(stream, max_size)?,
            Version::V5 => V5.read_mut(stream, max_size)?,
        };
        let Packet::Connect(connect, props, will, will_props, login) = packet else {
            return Err(protocol::Error::IncorrectPacketFormat);
        };
        // MQTT-1.5.3-2 (5.0 MQTT-1.5.4-2): a string holding U+0000 closes
        // the connection (the password is binary data, so it may hold one).
        // rumqttd's decoder lets it through.
        let has_nul = |s: &str| s.contains('\0');
        if has_nul(&connect.client_id)
            || login.as_ref().is_some_and(|l| has_nul(&l.username))
            || will.as_ref().is_some_and(|w| w.topic.contains(&0))
        {
            return Err(protocol::Error::IncorrectPacketFormat);
        }
        let outcome = self.keep_alive_refused(version, &connect).and_then(|()| {
            self.login_outcome(&connect, props.as_ref(), will.as_ref(), login.as_ref())
        });
        Ok(match outcome {
            Ok(acl) => self.accept(version, acl, connect, props, will, will_props, login),
            Err(refusal) => self.refuse_connect(refusal, version, &connect, login.as_ref()),
        })
    }

    /// Whether the CONNECT may log in: the client's ACL, or why not.
    fn login_outcome(
        &self,
        connect: &protocol::Connect,
        props: Option<&protocol::ConnectProperties>,
        will: Option<&protocol::LastWill>,
        login: Option<&protocol::Login>,
    ) -> Result<Arc<Acl>, Refusal> {
        let outcome = match login {
            _ if connect
                .client_id
                .starts_with(crate::broker::INTERNAL_PREFIX) =>
            {
                Err(Refusal::ReservedClientId)
            }
            _ if props.is_some_and(|p| p.authentication_method.is_some()) => {
                Err(Refusal::BadAuthenticationMethod)
            }
            Some(l) => self.policy.users.login(&l.username, &l.password),
            None if self.policy.allow_anonymous => Ok(self.policy.users.anonymous()),
            None => Err(Refusal::NotAuthorized),
        };
        // The will is published later through the gateway's own link, past
        // the ACL: check it now (a non-admin's will on a control topic would
        // otherwise be a deploy).
        outcome.and_then(|acl| match will {
            Some(w) if !std::str::from_utf8(&w.topic).is_ok_and(|topic| acl.may_publish(topic)) => {
                Err(Refusal::WillNotAllowed)
            }
            _ => Ok(acl),
        })
    }

    /// A 3.1.1 client cannot be told a Server Keep Alive: one asking for
    /// 0 (off) or more than a configured `broker.max_keep_alive_s` is
    /// refused, as Mosquitto refuses it, rather than dropped later for
    /// being silent as long as it said it could be.
    fn keep_alive_refused(
        &self,
        version: Version,
        connect: &protocol::Connect,
    ) -> Result<(), Refusal> {
        let (max, asked) = (self.policy.max_keep_alive_s, connect.keep_alive);
        if version == Version::V4 && max < u16::MAX && (asked == 0 || asked > max) {
            return Err(Refusal::KeepAliveTooLong);
        }
        Ok(())
    }

    /// Lets a judged CONNECT in: the session, the will and flow control
    /// are set up, and the CONNECT goes on to rumqttd without its will.
    #[allow(clippy::too_many_arguments)]
    fn accept(
        &mut self,
        version: Version,
        acl: Arc<Acl>,
        mut connect: protocol::Connect,
        mut props: Option<protocol::ConnectProperties>,
        will: Option<protocol::LastWill>,
        will_props: Option<protocol::LastWillProperties>,
        login: Option<protocol::Login>,
    ) -> Packet {
        if !connect.client_id.is_empty() {
            // See `Sessions::wait_until_gone`: rumqttd's same-id
            // reconnect race.
            self.policy
                .sessions
                .wait_until_gone(&connect.client_id, TAKEOVER_WAIT);
        }
        self.acl = Some(acl);
        let traffic = &self.policy.traffic;
        traffic.connections.fetch_add(1, Ordering::Relaxed);
        traffic.connections_total.fetch_add(1, Ordering::Relaxed);
        self.counted = true;
        self.policy
            .wills
            .connected(&connect.client_id, connect.clean_session);
        self.client_id.clone_from(&connect.client_id);
        if let Some(p) = props.as_mut() {
            self.connect_properties(p);
        }
        self.persistent = !connect.clean_session && !connect.client_id.is_empty();
        let earlier = self
            .policy
            .unacked
            .lock()
            .expect("unacked lock")
            .remove(&connect.client_id);
        if let (Some(earlier), true) = (earlier, self.persistent) {
            self.unacked.get_mut().expect("codec lock").1 = earlier;
        }
        let held = self
            .policy
            .held_qos2
            .lock()
            .expect("held lock")
            .remove(&connect.client_id);
        if let (Some(held), true) = (held, self.persistent) {
            self.earlier_qos2 = held;
        }
        let subs = self.policy.sessions.take_subscriptions(&connect.client_id);
        if self.persistent {
            *self.subscriptions.get_mut().expect("codec lock") = Subscriptions::resumed(subs);
        }
        if let Some(w) = will {
            // 5.0 §3.1.3.2.2: the will waits for its delay or for the
            // session to end, whichever comes first.
            let session_expiry = props
                .as_ref()
                .and_then(|p| p.session_expiry_interval)
                .unwrap_or(0);
            let delay = will_props
                .as_ref()
                .and_then(|p| p.delay_interval)
                .unwrap_or(0);
            let key = if connect.client_id.is_empty() {
                // rumqttd assigns an id the codec never learns; any
                // unique key will do, nothing can reconnect to it.
                static NEXT: AtomicU64 = AtomicU64::new(0);
                format!("\0anonymous-{}", NEXT.fetch_add(1, Ordering::Relaxed))
            } else {
                connect.client_id.clone()
            };
            self.will = Some((
                key,
                Will {
                    topic: w.topic,
                    payload: w.message,
                    qos: w.qos as u8,
                    retain: w.retain,
                    props: will_props.as_ref().map(will::publish_props),
                    delay_s: delay.min(session_expiry),
                },
            ));
        }
        if !connect.client_id.is_empty() {
            let persistence = persistence(version, connect.clean_session, props.as_ref());
            if persistence.is_some() && connect.clean_session {
                // 5.0 clean start with a session expiry: a new
                // session that outlives the connection. rumqttd
                // forgets clean sessions, so the old one is ended
                // here and rumqttd is told to keep the new one.
                self.policy.sessions.end_now(&connect.client_id);
                connect.clean_session = false;
                self.persistent = true;
            }
            let generation = self
                .policy
                .sessions
                .connected(&connect.client_id, persistence);
            self.session = Some((generation, persistence));
        }
        let (will, will_props) = (None, None);
        let max = self.policy.max_keep_alive_s;
        if connect.keep_alive == 0 || connect.keep_alive > max {
            // A 3.1.1 client gets here only when max is 65535 (see
            // `keep_alive_refused`): its keep-alive 0 becomes the largest.
            connect.keep_alive = max;
            self.server_keep_alive = version == Version::V5;
        }
        Packet::Connect(connect, props, will, will_props, login)
    }

    /// Refuses a CONNECT: rumqttd gets a throwaway one, and its CONNACK
    /// is rewritten into the refusal.
    fn refuse_connect(
        &mut self,
        refusal: Refusal,
        version: Version,
        connect: &protocol::Connect,
        login: Option<&protocol::Login>,
    ) -> Packet {
        tracing::info!(
            client_id = %connect.client_id,
            user = login.map(|l| l.username.as_str()).unwrap_or(""),
            reason = ?refusal,
            "login refused"
        );
        self.refusals.logins.fetch_add(1, Ordering::Relaxed);
        if refusal == Refusal::TooManyFailures {
            self.refusals
                .logins_throttled
                .fetch_add(1, Ordering::Relaxed);
        }
        self.refused = Some(connack_code(refusal, version));
        self.refused_reason = Some(reason::connack(refusal));
        throwaway_connect()
    }

    /// Takes what the codec enforces from a 5.0 CONNECT's properties.
    fn connect_properties(&mut self, p: &mut protocol::ConnectProperties) {
        let flow = self.flow.get_mut().expect("codec lock");
        // 0 is a protocol error (§3.1.2.11.3); read as "no limit".
        if let Some(max) = p.receive_maximum.filter(|&m| m > 0) {
            flow.receive_max = usize::from(max);
        }
        if let Some(max) = p.max_packet_size {
            flow.max_packet = max as usize;
        }
        self.reason_room = dollar::reason_room(p.request_problem_info, flow.max_packet);
        self.connect_expiry = p.session_expiry_interval.unwrap_or(0);
        // perch sends no topic aliases (5.0 §3.2.2.3.8 lets a server send
        // none): rumqttd keys them by the subscription's filter, not the
        // topic, so a wildcard subscriber would get every topic under the
        // first one's alias; and the codec reads the topic of every
        // PUBLISH it writes.
        p.topic_alias_max = None;
    }
}

/// How a CONNECT's session persists, as [`Sessions::connected`] takes it:
/// `None` ends with the connection; `Some(None)` never expires (3.1.1 clean
/// session 0, 5.0 expiry 0xFFFFFFFF); `Some(Some(s))` expires `s` seconds
/// after the connection ends (5.0 §3.1.2.11.2; 0 when absent).
fn persistence(
    version: Version,
    clean: bool,
    props: Option<&protocol::ConnectProperties>,
) -> Option<Option<u32>> {
    match version {
        Version::V4 => (!clean).then_some(None),
        Version::V5 => {
            let expiry = props.and_then(|p| p.session_expiry_interval).unwrap_or(0);
            if clean && expiry == 0 {
                None
            } else if expiry == u32::MAX {
                Some(None)
            } else {
                Some(Some(expiry))
            }
        }
    }
}

struct ConnectHeader {
    level: u8,
    total_len: usize,
}

/// Reads the protocol level of the CONNECT at the head of `stream` without
/// consuming it, once the whole CONNECT is there; refuses one announcing
/// more than `max_size` bytes at once, before its body is read.
fn connect_header(stream: &[u8], max_size: usize) -> Result<ConnectHeader, protocol::Error> {
    let Some(&first) = stream.first() else {
        return Err(protocol::Error::InsufficientBytes(2));
    };
    if first != 0x10 {
        // MQTT-3.1.0-1: the first packet must be CONNECT.
        return Err(protocol::Error::InvalidPacketType(first >> 4));
    }
    let (remaining, len_len) = match remaining_length(&stream[1..]) {
        Some(r) => r,
        None if stream.len() >= 5 => return Err(protocol::Error::MalformedRemainingLength),
        None => return Err(protocol::Error::InsufficientBytes(1)),
    };
    if remaining > max_size {
        return Err(protocol::Error::PayloadSizeLimitExceeded(remaining));
    }
    let body = 1 + len_len;
    let need = |n: usize| protocol::Error::InsufficientBytes(n.saturating_sub(stream.len()).max(1));
    let name_len = match (stream.get(body), stream.get(body + 1)) {
        (Some(&h), Some(&l)) => usize::from(u16::from_be_bytes([h, l])),
        _ => return Err(need(body + 2)),
    };
    if name_len > 6 {
        return Err(protocol::Error::InvalidProtocol);
    }
    let level_at = body + 2 + name_len;
    let Some(&level) = stream.get(level_at) else {
        return Err(need(level_at + 1));
    };
    let total_len = body + remaining;
    if stream.len() < total_len {
        return Err(need(total_len));
    }
    // MQTT-3.1.2-3 (5.0 §3.1.2.3): the reserved connect flag is 0, or the
    // CONNECT is malformed; rumqttd's decoders ignore it.
    if stream.get(level_at + 1).is_some_and(|flags| flags & 1 != 0) {
        return Err(protocol::Error::IncorrectPacketFormat);
    }
    Ok(ConnectHeader { level, total_len })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connect_header_tells_the_level_and_waits_for_bytes() {
        // CONNECT, 3.1.1: name "MQTT", level 4, flags, keep-alive, client id "".
        let c = [0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 0];
        let h = connect_header(&c, 1024).unwrap();
        assert_eq!((h.level, h.total_len), (4, 14));
        assert!(matches!(
            connect_header(&c[..5], 1024),
            Err(protocol::Error::InsufficientBytes(_))
        ));
        assert!(matches!(
            connect_header(&[0x30, 0], 1024),
            Err(protocol::Error::InvalidPacketType(3))
        ));
        // The reserved connect flag set (MQTT-3.1.2-3).
        let mut reserved = c;
        reserved[9] |= 1;
        assert!(matches!(
            connect_header(&reserved, 1024),
            Err(protocol::Error::IncorrectPacketFormat)
        ));
        // Over the limit: refused on the header alone.
        assert!(matches!(
            connect_header(&c[..3], 11),
            Err(protocol::Error::PayloadSizeLimitExceeded(12))
        ));
    }
}
