//! What the codec writes to a client in rumqttd's place: publishes at the
//! delivery QoS, held by Receive Maximum or dropped past the Maximum Packet
//! Size, queued answers for PINGRESPs, SUBACKs with refused filters put
//! back, and 3.1.1 packets without 5.0 properties.

use std::sync::atomic::Ordering;

use bytes::BytesMut;
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::v5::V5;
use rumqttd::protocol::{self, Packet, Protocol};

use super::refusal::encode_refusal;
use super::{peek, Codec, Pending, Version, NOT_AUTHORIZED};
impl Codec {
    pub(super) fn write_packet(
        &self,
        packet: Packet,
        write: &mut BytesMut,
    ) -> Result<usize, protocol::Error> {
        let version = self.version.unwrap_or(Version::V4);
        if let Some(code) = self.refused {
            return Ok(match packet {
                Packet::ConnAck(..) => encode_refusal(version, code, self.refused_reason, write),
                _ => 0,
            });
        }
        match packet {
            Packet::Publish(publish, props) => self.write_publish(publish, props, write),
            Packet::PingResp(resp) => {
                let next = self.pending.lock().expect("codec lock").pop_front();
                match next {
                    Some(Pending::Answer(bytes)) => {
                        write.extend_from_slice(&bytes);
                        Ok(bytes.len())
                    }
                    Some(Pending::Release) => Ok(self.release(write)),
                    Some(Pending::Ping) | None => self.inner_write(Packet::PingResp(resp), write),
                }
            }
            Packet::PubRel(rel, props) => {
                let mut flow = self.flow.lock().expect("codec lock");
                let discarded = flow.discarded_qos2.remove(&rel.pkid);
                flow.rels.push_back((rel.pkid, discarded));
                if discarded {
                    flow.flush_rels(&mut self.inject.lock().expect("codec lock"));
                    return Ok(0);
                }
                drop(flow);
                self.inner_write(Packet::PubRel(rel, props), write)
            }
            Packet::SubAck(mut ack, props) => {
                let denied = self
                    .partial_subacks
                    .lock()
                    .expect("codec lock")
                    .remove(&ack.pkid);
                let Some(denied) = denied else {
                    return self.inner_write(Packet::SubAck(ack, props), write);
                };
                let mut granted = ack.return_codes.into_iter();
                ack.return_codes = denied
                    .iter()
                    .map(|&d| {
                        if d {
                            protocol::SubscribeReasonCode::Failure
                        } else {
                            granted
                                .next()
                                .unwrap_or(protocol::SubscribeReasonCode::Failure)
                        }
                    })
                    .collect();
                let n = self.inner_write(Packet::SubAck(ack, props), write)?;
                if version == Version::V5 {
                    // rumqttd cannot say 0x87; the codes are the packet's last bytes.
                    let start = write.len() - denied.len();
                    for (i, &d) in denied.iter().enumerate() {
                        if d {
                            write[start + i] = NOT_AUTHORIZED;
                        }
                    }
                }
                Ok(n)
            }
            Packet::PubAck(..) | Packet::PubRec(..) => self.write_kept_ack(packet, write),
            Packet::ConnAck(ack, props) if version == Version::V5 => {
                let mut props = props.unwrap_or_default();
                // 5.0 §3.2.2.3.6: larger packets end the connection (0x95).
                props.max_packet_size = u32::try_from(self.policy.max_packet_size).ok();
                if self.server_keep_alive {
                    props.server_keep_alive = Some(self.policy.max_keep_alive_s);
                }
                self.inner_write(Packet::ConnAck(ack, Some(props)), write)
            }
            packet => self.inner_write(packet, write),
        }
    }

    /// A PUBLISH for the client: at the delivery QoS, marked DUP when sent
    /// again, held while the client's Receive Maximum is used up, or not
    /// sent (and treated as delivered) past its Maximum Packet Size.
    fn write_publish(
        &self,
        publish: protocol::Publish,
        props: Option<protocol::PublishProperties>,
        write: &mut BytesMut,
    ) -> Result<usize, protocol::Error> {
        let start = write.len();
        let Some(n) = self.write_delivered(publish, props, write)? else {
            return Ok(0);
        };
        let sent = peek(&write[start..]);
        let mut flow = self.flow.lock().expect("codec lock");
        if flow.max_packet > 0 && write.len() - start > flow.max_packet {
            // MQTT-3.1.2-25: discarded, and treated as delivered.
            write.truncate(start);
            self.policy
                .traffic
                .messages_too_large
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                client_id = self.client_id,
                max_packet_size = flow.max_packet,
                "message larger than the client's Maximum Packet Size not sent"
            );
            if let Some(pkid) = sent.pkid {
                flow.acks.push_back((pkid, sent.qos, true));
                flow.flush_acks(&mut self.inject.lock().expect("codec lock"));
            }
            return Ok(0);
        }
        let Some(pkid) = sent.pkid else {
            return Ok(n);
        };
        let mut unacked = self.unacked.lock().expect("codec lock");
        if unacked.1.remove(&pkid) {
            // MQTT-3.3.1-1: a re-delivery carries DUP.
            write[start] |= 0x08;
        }
        flow.acks.push_back((pkid, sent.qos, false));
        if !flow.held.is_empty() || flow.in_flight >= flow.receive_max {
            // 5.0 §4.9: the client has no room; hold it.
            flow.held.push_back((pkid, write[start..].to_vec()));
            write.truncate(start);
            flow.schedule(&mut self.inject.lock().expect("codec lock"));
            return Ok(0);
        }
        flow.in_flight += 1;
        unacked.0.insert(pkid);
        Ok(n)
    }

    /// Writes the oldest held publish (a slot in the client's Receive
    /// Maximum came free); returns the bytes written.
    fn release(&self, write: &mut BytesMut) -> usize {
        let mut flow = self.flow.lock().expect("codec lock");
        flow.releasing = flow.releasing.saturating_sub(1);
        let Some((pkid, bytes)) = flow.held.pop_front() else {
            return 0;
        };
        flow.in_flight += 1;
        self.unacked.lock().expect("codec lock").0.insert(pkid);
        write.extend_from_slice(&bytes);
        self.policy
            .traffic
            .messages_out
            .fetch_add(1, Ordering::Relaxed);
        bytes.len()
    }

    pub(super) fn inner_write(
        &self,
        packet: Packet,
        write: &mut BytesMut,
    ) -> Result<usize, protocol::Error> {
        match self.version {
            Some(Version::V5) => V5.write(packet, write),
            // rumqttd's V4 codec panics on 5.0 properties (which reach a
            // 3.1.1 subscriber whenever a 5.0 client publishes with any),
            // killing the connection's task without telling the router.
            _ => V4.write(without_properties(packet), write),
        }
    }
}

/// The packet as 3.1.1 can carry it: 5.0 properties dropped.
fn without_properties(packet: Packet) -> Packet {
    match packet {
        Packet::Publish(p, Some(_)) => Packet::Publish(p, None),
        Packet::PubAck(p, Some(_)) => Packet::PubAck(p, None),
        Packet::PubRec(p, Some(_)) => Packet::PubRec(p, None),
        Packet::PubRel(p, Some(_)) => Packet::PubRel(p, None),
        Packet::PubComp(p, Some(_)) => Packet::PubComp(p, None),
        Packet::SubAck(p, Some(_)) => Packet::SubAck(p, None),
        Packet::UnsubAck(p, Some(_)) => Packet::UnsubAck(p, None),
        Packet::Disconnect(p, Some(_)) => Packet::Disconnect(p, None),
        other => other,
    }
}
