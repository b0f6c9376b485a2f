//! Holding a kept publish's acknowledgement until it is committed (the
//! design is in [`crate::broker::kept`]): rumqttd writes the PUBACK/PUBREC
//! through the codec, which waits for the writers' tickets before it lets
//! it out, and answers what cannot be kept in rumqttd's place.

use std::sync::atomic::Ordering;

use bytes::BytesMut;
use rumqttd::protocol::{self, Packet};

use super::{reason, Codec, Peeked, Version};
use crate::kit::durable::{self, Outcome};

impl Codec {
    /// Writes rumqttd's PUBACK/PUBREC for a client's publish once what the
    /// gateway keeps of it is committed (blocking this connection's task
    /// meanwhile: [`durable::wait_on`]). One the writers refused, or that
    /// was not committed in time, is answered 0x97 (0x80 after the time
    /// limit) in 5.0; in 3.1.1 the connection ends without it.
    pub(super) fn write_kept_ack(
        &self,
        packet: Packet,
        write: &mut BytesMut,
    ) -> Result<usize, protocol::Error> {
        let pkid = match &packet {
            Packet::PubAck(a, _) => a.pkid,
            Packet::PubRec(r, _) => r.pkid,
            _ => return self.inner_write(packet, write),
        };
        let waits = self.kept.lock().expect("codec lock").take(pkid);
        let Some((gate, wanted)) = waits else {
            return self.inner_write(packet, write);
        };
        let outcome = durable::wait_on(&gate, wanted, durable::WAIT_LIMIT);
        if outcome == Outcome::Committed {
            return self.inner_write(packet, write);
        }
        self.not_kept(outcome == Outcome::TimedOut);
        if self.version != Some(Version::V5) {
            // MQTT-4.3.2: without the PUBACK the client sends it again.
            return Err(protocol::Error::InvalidProtocol);
        }
        let timed_out = outcome == Outcome::TimedOut;
        let why = if timed_out {
            reason::NOT_KEPT_IN_TIME
        } else {
            reason::NOT_KEPT
        };
        // Fixed header, packet id, code, property length, the property.
        let fits = 5 + 2 + 1 + 2 + 3 + why.len() <= self.reason_room;
        let packet = match packet {
            Packet::PubAck(mut a, mut props) => {
                if fits {
                    let p = props.get_or_insert_with(|| protocol::PubAckProperties {
                        reason_string: None,
                        user_properties: Vec::new(),
                    });
                    p.reason_string = Some(why.to_owned());
                }
                a.reason = if timed_out {
                    protocol::PubAckReason::UnspecifiedError
                } else {
                    protocol::PubAckReason::QuotaExceeded
                };
                Packet::PubAck(a, props)
            }
            Packet::PubRec(mut r, mut props) => {
                if fits {
                    let p = props.get_or_insert_with(|| protocol::PubRecProperties {
                        reason_string: None,
                        user_properties: Vec::new(),
                    });
                    p.reason_string = Some(why.to_owned());
                }
                r.reason = if timed_out {
                    protocol::PubRecReason::UnspecifiedError
                } else {
                    protocol::PubRecReason::QuotaExceeded
                };
                Packet::PubRec(r, props)
            }
            other => other,
        };
        self.inner_write(packet, write)
    }

    /// A QoS 1/2 publish the gateway cannot keep now: 5.0 answers it 0x97
    /// in place of rumqttd (it is not routed); 3.1.1 has no refusal, so the
    /// connection ends without its PUBACK (`None` with `closing` set).
    pub(super) fn refuse_kept(&mut self, peeked: Peeked) -> Option<Packet> {
        self.not_kept(false);
        let pkid = peeked.pkid.unwrap_or(0);
        if self.version == Some(Version::V5) {
            let kind = if peeked.qos == 2 { 0x50 } else { 0x40 };
            let answer = reason::ack(
                kind,
                pkid,
                QUOTA_EXCEEDED,
                reason::NOT_KEPT,
                self.reason_room,
            );
            return Some(self.answer(answer));
        }
        self.closing = true;
        None
    }

    /// Counts and logs a refused publish (the log once per 1,000).
    fn not_kept(&self, timed_out: bool) {
        let n = self.refusals.not_kept.fetch_add(1, Ordering::Relaxed);
        if n.is_multiple_of(1000) {
            tracing::warn!(
                client_id = self.client_id,
                refused = n + 1,
                timed_out,
                "a QoS 1/2 publish was refused, not acknowledged: the gateway could not commit it \
                 (the buffer or the retained store is full or cannot write; see their errors and \
                 buffer.when_full)"
            );
        }
    }

    /// Ends the connection at the next read, after rumqttd has what it
    /// read before in this batch.
    pub(super) fn close_after_batch(&mut self) -> Result<Packet, protocol::Error> {
        if std::mem::take(&mut self.mid_batch) {
            return Err(protocol::Error::InsufficientBytes(1));
        }
        Err(protocol::Error::InvalidProtocol)
    }
}

/// 5.0 reason code 0x97 (Quota exceeded).
const QUOTA_EXCEEDED: u8 = 0x97;
