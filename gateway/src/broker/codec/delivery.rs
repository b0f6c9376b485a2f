//! What a subscriber is sent, where rumqttd's routing falls short of the
//! specs: the QoS of each delivery and the 5.0 subscription options. The
//! codec ([`super`]) applies them on every PUBLISH it writes; what
//! it leaves out is treated as delivered (see "Flow control" there).
//!
//! # Delivery QoS (3.1.1 §3.8.4, 5.0 §3.8.4)
//!
//! A message goes to a subscriber at the lower of its publish QoS and the
//! subscription's. rumqttd sends every message at the subscription's QoS
//! (it overwrites the publish's QoS when it reads its log), so a QoS 0
//! publish reached a QoS 2 subscriber as QoS 2. By the time the codec
//! writes it, the publish's own QoS is gone; so the codec writes it into
//! the message when the message enters the router ([`mark`]) and takes it
//! out when the message leaves ([`unmark`]), then lowers the written
//! packet's QoS ([`lower_qos`]).
//!
//! The carrier is the one publish property rumqttd keeps untouched through
//! its log (retained store and offline sessions included) that has room
//! to spare: the Payload Format Indicator, a byte whose only values are 0
//! and 1 (a client sending another value is closed: [`check`]). A marked
//! byte has its top bit set, bit 5 set if the codec handed the message to
//! the gateway's keeper (`broker::kept`: the upstream capture skips it),
//! bit 4 set if the message was published with
//! RETAIN=1, the QoS in bits 2-3 and the client's own indicator (none, 0
//! or 1) in bits 0-1. It costs no allocation: the
//! properties of a 3.1.1 publish are an empty struct in place of `None`.
//! Every way into the router marks: the codec for clients, and
//! `broker::local_publish` for wills, retained messages restored after a
//! restart and QoS 2 messages released after a reconnect. A publish that
//! arrives unmarked came from an in-process link (`LinkTx::publish`: the
//! gateway's functions, control replies, statuses), which can only publish
//! at QoS 0, and is delivered at QoS 0. In-process subscribers (function
//! triggers, the upstream capture) see the marked byte; none of them reads
//! the Payload Format Indicator.
//!
//! # Subscription options (5.0 §3.8.3.1)
//!
//! rumqttd ignores No Local, Retain As Published and Retain Handling. The
//! codec keeps each connection's subscriptions with their options
//! ([`Subscriptions`]; a persistent session's are kept for its next
//! connection by [`crate::broker::session::Sessions`]) and applies them to what it
//! writes:
//!
//! - **No Local**: a client must not be sent its own publishes through
//!   such a subscription. For each publish of the client that matches one,
//!   the codec keeps a copy of its payload handle
//!   ([`Subscriptions::published`]); the router hands the same buffer
//!   back when the message comes round to the client, so the codec
//!   recognises its own message by the payload's address (the handle held
//!   here keeps that address from being reused) and withholds it
//!   ([`Subscriptions::is_echo`]). A message the router dropped before it
//!   came back (a subscriber further behind than its filter's log) leaves
//!   a stale entry: at most [`MAX_ECHOES`] are kept, oldest dropped first.
//!   Overlapping subscriptions with and without No Local get one copy each
//!   from rumqttd; the codec withholds as many copies as No Local filters
//!   matched, whichever subscription they came through.
//! - **Retain As Published**: rumqttd clears RETAIN on every live delivery.
//!   The mark also says whether the message was published retained, and
//!   the codec sets RETAIN again when a matching subscription has the
//!   option.
//! - **Retain Handling**: rumqttd sends the retained messages for a
//!   subscription only when it is new (as Retain Handling 1 asks) whatever
//!   the option. For 2 (none at all) the codec withholds a retained message
//!   sent on subscribe (RETAIN=1 as rumqttd writes it) when the latest of
//!   the connection's subscriptions that matches it has 2. For 0, a
//!   SUBSCRIBE to a filter the client already has is not sent the retained
//!   messages again: a known gap (docs/broker.md).
//!
//! Withheld messages are treated as delivered (the codec makes up the
//! acknowledgement rumqttd waits for). With overlapping subscriptions the
//! codec cannot tell which of them a copy came through, so the options of
//! the matching ones decide together as said above.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use rumqttd::protocol::{self, Packet, Publish, PublishProperties, RetainForwardRule};

use super::{peek, remaining_length, Codec};
use crate::broker::session::Sub;
use crate::kit::topic;

/// Set in a marked Payload Format Indicator.
const MARK: u8 = 0x80;

/// Set in a marked Payload Format Indicator of a message published with
/// RETAIN=1 (rumqttd clears the flag on live deliveries).
const RETAINED: u8 = 0x10;

/// Set in a marked Payload Format Indicator of a message the codec handed
/// to the gateway's keeper (`upstream.forward_topics`): the in-process
/// capture of those topics leaves it alone (see `broker::kept`).
const KEPT: u8 = 0x20;

/// Adds to a marked message that it was kept ([`KEPT`]).
pub fn kept(props: Option<PublishProperties>) -> Option<PublishProperties> {
    props.map(|mut p| {
        p.payload_format_indicator = p.payload_format_indicator.map(|b| b | KEPT);
        p
    })
}

/// Whether a message is marked as kept.
pub fn is_kept(props: Option<&PublishProperties>) -> bool {
    props
        .and_then(|p| p.payload_format_indicator)
        .is_some_and(|b| b & (MARK | KEPT) == MARK | KEPT)
}

/// What the mark says about a message: how it was published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub qos: u8,
    pub retain: bool,
}

/// Writes `qos` and `retain` (the publish's own) into `props` as the
/// message enters the router.
pub fn mark(props: Option<PublishProperties>, qos: u8, retain: bool) -> Option<PublishProperties> {
    let mut props = props.unwrap_or_default();
    let indicator = match props.payload_format_indicator {
        None => 0,
        Some(0) => 1,
        Some(_) => 2,
    };
    let retain = if retain { RETAINED } else { 0 };
    props.payload_format_indicator = Some(MARK | retain | (qos.min(2) << 2) | indicator);
    Some(props)
}

/// Takes the mark out of `props` as the message leaves the router,
/// restoring the client's own Payload Format Indicator. Unmarked: QoS 0,
/// not retained (see the module doc).
pub fn unmark(props: Option<PublishProperties>) -> (Option<PublishProperties>, Published) {
    let unmarked = Published {
        qos: 0,
        retain: false,
    };
    let Some(mut props) = props else {
        return (None, unmarked);
    };
    let Some(byte) = props.payload_format_indicator.filter(|b| b & MARK != 0) else {
        return (Some(props), unmarked);
    };
    props.payload_format_indicator = match byte & 0b11 {
        0 => None,
        1 => Some(0),
        _ => Some(1),
    };
    let published = Published {
        qos: (byte >> 2) & 0b11,
        retain: byte & RETAINED != 0,
    };
    (Some(props), published)
}

/// Refuses a PUBLISH whose Payload Format Indicator is not 0 or 1 (5.0
/// §3.3.2.3.2 defines no other value; Mosquitto closes such a client too).
pub fn check(packet: &Packet) -> Result<(), protocol::Error> {
    match packet {
        Packet::Publish(_, Some(p)) if p.payload_format_indicator.is_some_and(|b| b > 1) => {
            Err(protocol::Error::IncorrectPacketFormat)
        }
        _ => Ok(()),
    }
}

/// Lowers the QoS of the PUBLISH written at `write[start..]` (the end of
/// the buffer) to `qos` if it is higher. Returns the packet id it removed
/// when the result is QoS 0: the router still waits for that packet's
/// acknowledgement, which the codec then makes up.
pub fn lower_qos(write: &mut BytesMut, start: usize, qos: u8) -> Option<u16> {
    let first = *write.get(start)?;
    let written = (first >> 1) & 0b11;
    if qos >= written || first >> 4 != 3 {
        return None;
    }
    if qos > 0 {
        write[start] = (first & !0b0110) | (qos << 1);
        return None;
    }
    // QoS 0: no DUP (MQTT-3.3.1-2) and no packet id, so a shorter
    // remaining length, which may take one byte less.
    let (len, len_len) = remaining_length(&write[start + 1..])?;
    let body = start + 1 + len_len;
    let topic_len = usize::from(u16::from_be_bytes([
        *write.get(body)?,
        *write.get(body + 1)?,
    ]));
    let at = body + 2 + topic_len;
    let pkid = u16::from_be_bytes([*write.get(at)?, *write.get(at + 1)?]);
    write[start] = first & !0b1110;
    write.copy_within(at + 2.., at);
    write.truncate(write.len() - 2);
    let mut header = BytesMut::with_capacity(4);
    protocol::v4::write_remaining_length(&mut header, len - 2).ok()?;
    let shrink = len_len - header.len();
    if shrink > 0 {
        write.copy_within(body.., body - shrink);
        write.truncate(write.len() - shrink);
    }
    write[start + 1..start + 1 + header.len()].copy_from_slice(&header);
    Some(pkid)
}

/// Own publishes kept for No Local (see the module doc); past this the
/// oldest is forgotten.
pub const MAX_ECHOES: usize = 1_000;

/// One subscription's options that rumqttd ignores (5.0 §3.8.3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubOptions {
    pub filter: String,
    pub no_local: bool,
    pub retain_as_published: bool,
    /// Retain Handling 2: no retained messages when subscribing.
    pub no_retained_on_subscribe: bool,
}

/// One connection's subscriptions, as far as their 5.0 options go, and its
/// publishes on their way back to it through a No Local one.
#[derive(Default)]
pub struct Subscriptions {
    /// Every filter subscribed to, oldest subscription first.
    subs: Vec<SubOptions>,
    /// Its publishes that match a No Local filter: topic, payload (the
    /// handle keeps the address unique), copies still to withhold.
    echoes: VecDeque<(String, Bytes, usize)>,
}

impl Subscriptions {
    /// A connection that resumes a session with these subscriptions.
    pub fn resumed(subs: Vec<SubOptions>) -> Subscriptions {
        Subscriptions {
            subs,
            echoes: VecDeque::new(),
        }
    }

    /// The subscriptions, for the session's next connection.
    pub fn into_subs(self) -> Vec<SubOptions> {
        self.subs
    }

    /// A SUBSCRIBE (replacing any earlier one to the same filter).
    pub fn subscribed(&mut self, options: SubOptions) {
        self.unsubscribed(&options.filter);
        self.subs.push(options);
    }

    pub fn unsubscribed(&mut self, filter: &str) {
        self.subs.retain(|s| s.filter != filter);
    }

    /// The client published `payload` to `topic`, and the router has it.
    pub fn published(&mut self, topic: &str, payload: &Bytes) {
        let copies = self
            .subs
            .iter()
            .filter(|s| s.no_local && topic::matches(&s.filter, topic))
            .count();
        if copies == 0 {
            return;
        }
        if self.echoes.len() >= MAX_ECHOES {
            self.echoes.pop_front();
        }
        self.echoes
            .push_back((topic.to_owned(), payload.clone(), copies));
    }

    /// Whether a publish the router sends this client is its own, come
    /// back through a No Local subscription (then it is counted off).
    pub fn is_echo(&mut self, topic: &[u8], payload: &Bytes) -> bool {
        if self.echoes.is_empty() {
            return false;
        }
        let found = self.echoes.iter().position(|(t, p, _)| {
            p.as_ptr() == payload.as_ptr() && p.len() == payload.len() && t.as_bytes() == topic
        });
        let Some(i) = found else {
            return false;
        };
        self.echoes[i].2 -= 1;
        if self.echoes[i].2 == 0 {
            self.echoes.remove(i);
        }
        true
    }

    /// Whether a retained message rumqttd sends because of a subscription
    /// (RETAIN=1) must not go out: the latest subscription matching it
    /// has Retain Handling 2 (see the module doc).
    pub fn refuses_retained(&self, topic: &[u8]) -> bool {
        self.latest_matching(topic)
            .is_some_and(|s| s.no_retained_on_subscribe)
    }

    /// Whether a message published with RETAIN=1 keeps the flag on its way
    /// to this client: a subscription matching it has Retain As Published.
    pub fn keeps_retain(&self, topic: &[u8]) -> bool {
        let Ok(topic) = std::str::from_utf8(topic) else {
            return false;
        };
        self.subs
            .iter()
            .any(|s| s.retain_as_published && topic::matches(&s.filter, topic))
    }

    fn latest_matching(&self, topic: &[u8]) -> Option<&SubOptions> {
        let topic = std::str::from_utf8(topic).ok()?;
        self.subs
            .iter()
            .rev()
            .find(|s| topic::matches(&s.filter, topic))
    }
}

impl Codec {
    /// Writes a PUBLISH from the router as this client is to get it (see
    /// the module doc); `None` when it is withheld and nothing is written.
    pub(super) fn write_delivered(
        &self,
        publish: Publish,
        props: Option<PublishProperties>,
        write: &mut BytesMut,
    ) -> Result<Option<usize>, protocol::Error> {
        let start = write.len();
        let (props, published) = unmark(props);
        let (withheld, retain) = self.judge(&publish, published);
        self.inner_write(Packet::Publish(publish, props), write)?;
        Ok(self.deliver(write, start, published.qos, withheld, retain))
    }

    /// What becomes of a publish the router sends this client: whether it
    /// is withheld (a control request or reply and the client is not an
    /// admin, see [`Acl::may_receive`]; its own message come back through a
    /// No Local subscription; a retained message sent on subscribe to a
    /// subscription with Retain Handling 2), and whether it goes with
    /// RETAIN=1 though rumqttd cleared it (Retain As Published).
    fn judge(&self, publish: &protocol::Publish, published: Published) -> (bool, bool) {
        let topic = &publish.topic;
        let admin_only = self.acl.as_ref().is_none_or(|acl| !acl.may_receive(topic));
        let mut subs = self.subscriptions.lock().expect("codec lock");
        let withheld = admin_only
            || subs.is_echo(topic, &publish.payload)
            || (publish.retain && subs.refuses_retained(topic));
        let retain = !publish.retain && published.retain && subs.keeps_retain(topic);
        (withheld, retain)
    }

    /// Applies the rules above to the PUBLISH just written at `write[start..]`:
    /// lowers it to the publish's own `qos` and sets RETAIN if `retain`,
    /// or takes it back out when `withheld`. The acknowledgement rumqttd
    /// then waits for in vain is made up, in its turn (a PUBACK, which
    /// rumqttd takes for QoS 1 and 2 alike). Returns the bytes now written;
    /// `None` when nothing is.
    fn deliver(
        &self,
        write: &mut BytesMut,
        start: usize,
        qos: u8,
        withheld: bool,
        retain: bool,
    ) -> Option<usize> {
        if retain && !withheld {
            write[start] |= 1;
        }
        let pkid = if withheld {
            let pkid = peek(&write[start..]).pkid;
            write.truncate(start);
            pkid
        } else {
            lower_qos(write, start, qos)
        };
        if let Some(pkid) = pkid {
            let mut flow = self.flow.lock().expect("codec lock");
            flow.acks.push_back((pkid, 1, true));
            flow.flush_acks(&mut self.inject.lock().expect("codec lock"));
        }
        (!withheld).then(|| write.len() - start)
    }

    /// Keeps what a SUBSCRIBE granted (the filters not `denied`): their
    /// options for delivery, and a persistent session's subscriptions for
    /// the session store.
    pub(super) fn subscribed(&mut self, filters: &[protocol::Filter], denied: &[bool]) {
        let granted = || {
            filters
                .iter()
                .zip(denied)
                .filter(|(_, &d)| !d)
                .map(|(f, _)| f)
        };
        let subs = self.subscriptions.get_mut().expect("codec lock");
        for f in granted() {
            subs.subscribed(SubOptions {
                filter: f.path.clone(),
                no_local: f.nolocal,
                retain_as_published: f.preserve_retain,
                no_retained_on_subscribe: f.retain_forward_rule == RetainForwardRule::Never,
            });
        }
        if let Some((_, Some(_))) = self.session {
            for f in granted() {
                let sub = Sub {
                    filter: f.path.clone(),
                    qos: f.qos as u8,
                    no_local: f.nolocal,
                    retain_as_published: f.preserve_retain,
                };
                self.policy.sessions.subscribed(&self.client_id, sub);
            }
        }
    }

    /// Forgets what an UNSUBSCRIBE ends.
    pub(super) fn unsubscribed(&mut self, filters: &[String]) {
        let subs = self.subscriptions.get_mut().expect("codec lock");
        for f in filters {
            subs.unsubscribed(f);
        }
        if let Some((_, Some(_))) = self.session {
            for f in filters {
                self.policy.sessions.unsubscribed(&self.client_id, f);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttd::protocol::v5::V5;
    use rumqttd::protocol::{Protocol, Publish};

    #[test]
    fn the_mark_carries_the_qos_and_keeps_the_clients_indicator() {
        for qos in 0..=2 {
            for indicator in [None, Some(0), Some(1)] {
                let props = PublishProperties {
                    payload_format_indicator: indicator,
                    ..Default::default()
                };
                for retain in [false, true] {
                    let (back, got) = unmark(mark(Some(props.clone()), qos, retain));
                    assert_eq!(
                        (back, got),
                        (Some(props.clone()), Published { qos, retain })
                    );
                }
            }
        }
        let unmarked = Published {
            qos: 0,
            retain: false,
        };
        assert_eq!(unmark(None), (None, unmarked), "unmarked is QoS 0");
        assert_eq!(unmark(mark(None, 1, false)).1.qos, 1);
    }

    /// A QoS 2 PUBLISH as rumqttd writes it for a subscriber.
    fn written(topic: &str, payload: &[u8], pkid: u16, props: bool) -> BytesMut {
        let q0 = local(topic, payload, props);
        // Set QoS 2 and insert the packet id, as `broker::local_publish`.
        let (len, len_len) = remaining_length(&q0[1..]).unwrap();
        let body = &q0[1 + len_len..];
        let topic_end = 2 + topic.len();
        let mut out = BytesMut::new();
        bytes::BufMut::put_u8(&mut out, q0[0] | 0b0100 | 0b1000);
        protocol::v4::write_remaining_length(&mut out, len + 2).unwrap();
        out.extend_from_slice(&body[..topic_end]);
        out.extend_from_slice(&pkid.to_be_bytes());
        out.extend_from_slice(&body[topic_end..]);
        out
    }

    fn local(topic: &str, payload: &[u8], props: bool) -> BytesMut {
        let mut out = BytesMut::new();
        let props = props.then(PublishProperties::default);
        V5.write(
            Packet::Publish(
                Publish::new(
                    Bytes::from(topic.to_owned()),
                    Bytes::from(payload.to_vec()),
                    false,
                ),
                props,
            ),
            &mut out,
        )
        .unwrap();
        out
    }

    #[test]
    fn lowering_to_qos_0_drops_the_packet_id_and_dup_and_fixes_the_length() {
        // 124 + 2 + 2 + 1 = 129 bytes of body: a two-byte remaining length
        // that becomes 127, one byte.
        for (payload_len, prefix) in [(10, &b"pre"[..]), (124, &b""[..]), (300, &b"xy"[..])] {
            let payload = vec![7u8; payload_len];
            let mut write = BytesMut::from(prefix);
            let start = write.len();
            write.extend_from_slice(&written("ab", &payload, 0x1234, true));
            assert_eq!(lower_qos(&mut write, start, 0), Some(0x1234));
            assert_eq!(&write[..start], prefix, "what was written before stays");
            assert_eq!(&write[start..], &local("ab", &payload, true)[..]);
        }
    }

    #[test]
    fn lowering_to_qos_1_keeps_the_packet_id() {
        let mut write = written("t", b"x", 9, false);
        let before = write.clone();
        assert_eq!(lower_qos(&mut write, 0, 1), None);
        assert_eq!(write[0], (before[0] & !0b0110) | 0b0010);
        assert_eq!(&write[1..], &before[1..]);
        // Never raised, never touched when equal.
        assert_eq!(lower_qos(&mut write, 0, 2), None);
        assert_eq!(lower_qos(&mut write, 0, 1), None);
        assert_eq!((write[0] >> 1) & 3, 1);
    }

    fn sub(filter: &str, no_local: bool, rap: bool, rh2: bool) -> SubOptions {
        SubOptions {
            filter: filter.to_owned(),
            no_local,
            retain_as_published: rap,
            no_retained_on_subscribe: rh2,
        }
    }

    #[test]
    fn no_local_withholds_own_messages_only() {
        let mut n = Subscriptions::default();
        let own = Bytes::from_static(b"mine");
        n.published("a/b", &own);
        assert!(!n.is_echo(b"a/b", &own), "no No Local filter yet");
        n.subscribed(sub("a/#", true, false, false));
        n.subscribed(sub("a/+", true, false, false));
        n.published("a/b", &own);
        let same_bytes_elsewhere = Bytes::from(b"mine".to_vec());
        assert!(
            !n.is_echo(b"a/b", &same_bytes_elsewhere),
            "another's message"
        );
        assert!(n.is_echo(b"a/b", &own), "first copy");
        assert!(n.is_echo(b"a/b", &own), "second copy (two filters)");
        assert!(!n.is_echo(b"a/b", &own), "counted off");
        n.subscribed(sub("a/+", false, false, false));
        n.unsubscribed("a/#");
        n.published("a/b", &own);
        assert!(!n.is_echo(b"a/b", &own), "no No Local filter left");
    }

    #[test]
    fn retain_options_follow_the_matching_subscriptions() {
        let mut n = Subscriptions::default();
        n.subscribed(sub("r/#", false, false, true));
        assert!(n.refuses_retained(b"r/x"), "Retain Handling 2");
        assert!(!n.keeps_retain(b"r/x"));
        // A later subscription that matches too decides for the retained
        // messages sent on subscribe.
        n.subscribed(sub("r/+", false, true, false));
        assert!(!n.refuses_retained(b"r/x"));
        assert!(n.keeps_retain(b"r/x"), "Retain As Published");
        assert!(n.refuses_retained(b"r/x/y"), "only r/# matches");
        assert!(!n.keeps_retain(b"r/x/y"));
        assert!(!n.refuses_retained(b"other"));
    }
}
