//! The client's ACL applied to each packet it sends, and the bookkeeping
//! the codec does on the way (kept publishes, QoS 2 flows, acknowledgements
//! that free flow-control slots, subscriptions).

use std::sync::atomic::Ordering;

use rumqttd::protocol::{self, Packet, PingReq};

use super::{delivery, dollar, reason, Codec, Peeked, Pending, Version, NOT_AUTHORIZED};
use crate::broker::will::Will;

impl Codec {
    /// Applies the ACL to one packet; `None` drops it.
    pub(super) fn police(&mut self, packet: Packet, peeked: Peeked) -> Option<Packet> {
        self.acl.as_ref()?;
        match packet {
            Packet::Publish(publish, props) => self.police_publish(publish, props, peeked),
            Packet::PubRel(rel, props) => {
                if self.incoming_qos2.remove(&rel.pkid).is_some() {
                    // rumqttd ignores a PUBREL with properties.
                    return Some(Packet::PubRel(rel, None));
                }
                if let Some(held) = self.earlier_qos2.remove(&rel.pkid) {
                    // Received on an earlier connection of this session:
                    // rumqttd has forgotten it (and would drop the client
                    // for the PUBREL), so perch routes it now.
                    self.policy.wills.publish(held);
                }
                // Denied, already routed, or unknown: complete the flow
                // (MQTT-4.3.3: PUBREL is answered with PUBCOMP).
                self.denied_qos2.remove(&rel.pkid);
                let _ = props;
                Some(self.answer(ack(0x70, rel.pkid, false)))
            }
            Packet::PubAck(a, props) => {
                self.unacked
                    .get_mut()
                    .expect("codec lock")
                    .0
                    .remove(&a.pkid);
                let flow = self.flow.get_mut().expect("codec lock");
                let inject = self.inject.get_mut().expect("codec lock");
                flow.acked(a.pkid, inject);
                flow.freed(inject);
                Some(Packet::PubAck(a, props))
            }
            Packet::PubRec(r, props) => {
                self.unacked
                    .get_mut()
                    .expect("codec lock")
                    .0
                    .remove(&r.pkid);
                let flow = self.flow.get_mut().expect("codec lock");
                let inject = self.inject.get_mut().expect("codec lock");
                flow.acked(r.pkid, inject);
                // 5.0 §4.9: a PUBREC with a failure code ends the flow.
                if !matches!(
                    r.reason,
                    protocol::PubRecReason::Success | protocol::PubRecReason::NoMatchingSubscribers
                ) {
                    flow.freed(inject);
                }
                Some(Packet::PubRec(r, props))
            }
            Packet::PubComp(c, props) => {
                let flow = self.flow.get_mut().expect("codec lock");
                let inject = self.inject.get_mut().expect("codec lock");
                flow.completed(c.pkid, inject);
                flow.freed(inject);
                Some(Packet::PubComp(c, props))
            }
            Packet::Subscribe(subscribe, props) => self.police_subscribe(subscribe, props),
            Packet::Unsubscribe(unsubscribe, props) => {
                self.unsubscribed(&unsubscribe.filters);
                Some(Packet::Unsubscribe(unsubscribe, props))
            }
            Packet::PingReq(p) => {
                self.pending
                    .get_mut()
                    .expect("codec lock")
                    .push_back(Pending::Ping);
                Some(Packet::PingReq(p))
            }
            other => Some(other),
        }
    }

    /// A PUBLISH: routed (and kept, when the gateway must keep it) if the
    /// ACL allows its topic; otherwise dropped, or answered when the client
    /// expects an answer.
    fn police_publish(
        &mut self,
        publish: protocol::Publish,
        props: Option<protocol::PublishProperties>,
        peeked: Peeked,
    ) -> Option<Packet> {
        let acl = self.acl.as_ref()?;
        let topic = std::str::from_utf8(&publish.topic).unwrap_or("");
        let alias = props.as_ref().and_then(|p| p.topic_alias);
        let topic = match alias {
            Some(a) if topic.is_empty() => self.aliases.get(&a).map(String::as_str).unwrap_or(""),
            Some(a) => {
                self.aliases.insert(a, topic.to_owned());
                topic
            }
            None => topic,
        };
        if acl.may_publish(topic) {
            let kept = self.kept.get_mut().expect("codec lock");
            let (keeper, retained) = (self.policy.keeper.as_deref(), self.policy.retained.as_ref());
            let at = (peeked.qos, peeked.pkid);
            let Ok(forwarded) = kept.keep(keeper, retained, topic, &publish, &props, at) else {
                return self.refuse_kept(peeked);
            };
            if let (2, Some(pkid)) = (peeked.qos, peeked.pkid) {
                let held = Will {
                    topic: if publish.topic.is_empty() {
                        bytes::Bytes::from(topic.to_owned())
                    } else {
                        publish.topic.clone()
                    },
                    payload: publish.payload.clone(),
                    qos: 2,
                    retain: publish.retain,
                    props: props.clone().map(|mut p| {
                        p.topic_alias = None;
                        p
                    }),
                    delay_s: 0,
                };
                self.incoming_qos2.insert(pkid, held);
            }
            (self.subscriptions.get_mut().expect("codec lock")).published(topic, &publish.payload);
            let props = delivery::mark(props, peeked.qos, publish.retain);
            let props = if forwarded {
                delivery::kept(props)
            } else {
                props
            };
            return Some(Packet::Publish(publish, props));
        }
        self.refusals.publishes.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(topic, "publish outside the client's ACL not delivered");
        let v5 = self.version == Some(Version::V5);
        let denied = |kind, pkid| match v5 {
            true => reason::ack(
                kind,
                pkid,
                NOT_AUTHORIZED,
                reason::PUBLISH_DENIED,
                self.reason_room,
            ),
            false => ack(kind, pkid, false),
        };
        match (peeked.qos, peeked.pkid) {
            (1, Some(pkid)) => Some(self.answer(denied(0x40, pkid))),
            (2, Some(pkid)) => {
                let answer = denied(0x50, pkid);
                if !v5 {
                    self.denied_qos2.insert(pkid);
                }
                Some(self.answer(answer))
            }
            _ => None,
        }
    }

    /// A SUBSCRIBE: filters outside the ACL, reserved `$` filters and
    /// filters past `broker.max_filters` are refused; the rest go on.
    fn police_subscribe(
        &mut self,
        mut subscribe: protocol::Subscribe,
        props: Option<protocol::SubscribeProperties>,
    ) -> Option<Packet> {
        let acl = self.acl.as_ref()?;
        let denied: Vec<bool> = subscribe
            .filters
            .iter()
            .map(|f| dollar::refused(f, &self.client_id) || !acl.may_subscribe(&f.path))
            .collect();
        // Only filters the ACL allows take a place in the bound.
        let mut over_limit = 0u64;
        let denied: Vec<bool> = subscribe
            .filters
            .iter()
            .zip(denied)
            .map(|(f, d)| {
                if d {
                    return true;
                }
                let fits = self.policy.filters.admit(&f.path);
                over_limit += u64::from(!fits);
                !fits
            })
            .collect();
        if over_limit > 0 {
            let total = self
                .refusals
                .filters
                .fetch_add(over_limit, Ordering::Relaxed)
                + over_limit;
            // 1, 2, 4, 8…: a client cannot flood the log.
            if (total - over_limit + 1..=total).any(u64::is_power_of_two) {
                tracing::warn!(
                    max_filters = self.policy.filters.max,
                    refused = total,
                    "subscription to a new filter refused: broker.max_filters \
                     distinct filters are subscribed already"
                );
            }
        }
        let n_denied = denied.iter().filter(|&&d| d).count();
        self.subscribed(&subscribe.filters, &denied);
        if n_denied == 0 {
            return Some(Packet::Subscribe(subscribe, props));
        }
        self.refusals
            .subscriptions
            .fetch_add(n_denied as u64, Ordering::Relaxed);
        tracing::debug!(
            denied = n_denied,
            "subscription outside the client's ACL refused"
        );
        if n_denied == denied.len() {
            let v5 = self.version == Some(Version::V5);
            let ack = dollar::all_failed_suback(&subscribe, v5, self.reason_room);
            return Some(self.answer(ack));
        }
        let mut i = 0;
        subscribe.filters.retain(|_| {
            i += 1;
            !denied[i - 1]
        });
        self.partial_subacks
            .get_mut()
            .expect("codec lock")
            .insert(subscribe.pkid, denied);
        Some(Packet::Subscribe(subscribe, props))
    }

    /// Queues `bytes` as the answer to the PINGREQ returned in its place.
    pub(super) fn answer(&mut self, bytes: Vec<u8>) -> Packet {
        self.pending
            .get_mut()
            .expect("codec lock")
            .push_back(Pending::Answer(bytes));
        Packet::PingReq(PingReq)
    }
}

/// A PUBACK (0x40), PUBREC (0x50) or PUBCOMP (0x70); in 5.0 with reason 0x87.
fn ack(kind: u8, pkid: u16, v5: bool) -> Vec<u8> {
    let [hi, lo] = pkid.to_be_bytes();
    if v5 {
        vec![kind, 3, hi, lo, NOT_AUTHORIZED]
    } else {
        vec![kind, 2, hi, lo]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_encoded_per_version() {
        assert_eq!(ack(0x40, 7, false), vec![0x40, 2, 0, 7]);
        assert_eq!(ack(0x40, 7, true), vec![0x40, 3, 0, 7, 0x87]);
        let suback = |n, v5| dollar::all_failed_suback(&dollar::subscribe(9, "a", n), v5, 0);
        assert_eq!(suback(2, false), vec![0x90, 4, 0, 9, 0x80, 0x80]);
        assert_eq!(suback(1, true), vec![0x90, 4, 0, 9, 0, 0x87]);
    }
}
