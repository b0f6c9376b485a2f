//! What a subscriber is sent, where rumqttd's routing falls short of the
//! specs: the QoS of each delivery and the 5.0 No Local option. The codec
//! ([`super::codec`]) applies both on every PUBLISH it writes; what it
//! leaves out is treated as delivered (see "Flow control" there).
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
//! byte has its top bit set, the QoS in bits 2-3 and the client's own
//! indicator (none, 0 or 1) in bits 0-1. It costs no allocation: the
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
//! # No Local (5.0 §3.8.3.1)
//!
//! A client that subscribes with No Local must not be sent its own
//! publishes through that subscription. rumqttd ignores the option. The
//! codec keeps, per connection, the filters subscribed with it and, for
//! each publish of the client that matches any of them, a copy of its
//! payload handle ([`NoLocal::published`]); the router hands the same
//! buffer back when the message comes round to the client, so the codec
//! recognises its own message by the payload's address (the handle held
//! here keeps that address from being reused) and withholds it
//! ([`NoLocal::is_echo`]). A message the router dropped before it came
//! back (a subscriber further behind than its filter's log) leaves a
//! stale entry: at most [`MAX_ECHOES`] are kept, oldest dropped first.
//! Overlapping subscriptions with and without No Local get one copy each
//! from rumqttd; the codec withholds as many copies as No Local filters
//! matched, whichever subscription they came through.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use rumqttd::protocol::{self, Packet, PublishProperties};

use super::codec::remaining_length;
use crate::kit::topic;

/// Set in a marked Payload Format Indicator.
const MARK: u8 = 0x80;

/// Writes `qos` (the publish's own) into `props` as the message enters the
/// router.
pub fn mark(props: Option<PublishProperties>, qos: u8) -> Option<PublishProperties> {
    let mut props = props.unwrap_or_default();
    let indicator = match props.payload_format_indicator {
        None => 0,
        Some(0) => 1,
        Some(_) => 2,
    };
    props.payload_format_indicator = Some(MARK | (qos.min(2) << 2) | indicator);
    Some(props)
}

/// Takes the publish QoS out of `props` as the message leaves the router,
/// restoring the client's own Payload Format Indicator. Unmarked: 0 (see
/// the module doc).
pub fn unmark(props: Option<PublishProperties>) -> (Option<PublishProperties>, u8) {
    let Some(mut props) = props else {
        return (None, 0);
    };
    let Some(byte) = props.payload_format_indicator.filter(|b| b & MARK != 0) else {
        return (Some(props), 0);
    };
    props.payload_format_indicator = match byte & 0b11 {
        0 => None,
        1 => Some(0),
        _ => Some(1),
    };
    (Some(props), (byte >> 2) & 0b11)
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

/// One connection's No Local subscriptions and its publishes on their way
/// back to it.
#[derive(Default)]
pub struct NoLocal {
    /// Filters the client subscribed to with No Local.
    filters: Vec<String>,
    /// Its publishes that match `filters`: topic, payload (the handle keeps
    /// the address unique), copies still to withhold.
    echoes: VecDeque<(String, Bytes, usize)>,
}

impl NoLocal {
    /// A connection that resumes a session with these No Local filters.
    pub fn resumed(filters: Vec<String>) -> NoLocal {
        NoLocal {
            filters,
            echoes: VecDeque::new(),
        }
    }

    /// The No Local filters, for the session's next connection.
    pub fn into_filters(self) -> Vec<String> {
        self.filters
    }

    /// A SUBSCRIBE to `filter` (replacing any earlier one to it).
    pub fn subscribed(&mut self, filter: &str, no_local: bool) {
        self.unsubscribed(filter);
        if no_local {
            self.filters.push(filter.to_owned());
        }
    }

    pub fn unsubscribed(&mut self, filter: &str) {
        self.filters.retain(|f| f != filter);
    }

    /// The client published `payload` to `topic`, and the router has it.
    pub fn published(&mut self, topic: &str, payload: &Bytes) {
        if self.filters.is_empty() {
            return;
        }
        let copies = self
            .filters
            .iter()
            .filter(|f| topic::matches(f, topic))
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
                let (back, got) = unmark(mark(Some(props.clone()), qos));
                assert_eq!((back, got), (Some(props), qos));
            }
        }
        assert_eq!(unmark(None), (None, 0), "unmarked is QoS 0");
        assert_eq!(unmark(mark(None, 1)).1, 1);
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

    #[test]
    fn no_local_withholds_own_messages_only() {
        let mut n = NoLocal::default();
        let own = Bytes::from_static(b"mine");
        n.published("a/b", &own);
        assert!(!n.is_echo(b"a/b", &own), "no No Local filter yet");
        n.subscribed("a/#", true);
        n.subscribed("a/+", true);
        n.published("a/b", &own);
        let same_bytes_elsewhere = Bytes::from(b"mine".to_vec());
        assert!(
            !n.is_echo(b"a/b", &same_bytes_elsewhere),
            "another's message"
        );
        assert!(n.is_echo(b"a/b", &own), "first copy");
        assert!(n.is_echo(b"a/b", &own), "second copy (two filters)");
        assert!(!n.is_echo(b"a/b", &own), "counted off");
        n.subscribed("a/+", false);
        n.unsubscribed("a/#");
        n.published("a/b", &own);
        assert!(!n.is_echo(b"a/b", &own), "no No Local filter left");
    }
}
