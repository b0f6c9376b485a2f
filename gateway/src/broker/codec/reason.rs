//! Reason Strings (5.0 §3.1.2.11.7, §3.2.2.3.9, §3.4.2.2.2, §3.14.2.2.3):
//! each refusal the codec answers tells a 5.0 client why, in words, and
//! what to do. A client that set Request Problem Information to 0 gets
//! them only where the spec still allows one (CONNACK, DISCONNECT); none
//! is sent past the client's Maximum Packet Size.

use bytes::{BufMut, BytesMut};
use rumqttd::protocol;

use crate::broker::auth::Refusal;

/// A publish outside the client's publish ACL (PUBACK/PUBREC 0x87).
pub(super) const PUBLISH_DENIED: &str =
    "the topic is outside this client's publish ACL (broker.users / broker.anonymous)";
/// Filters outside the client's subscribe ACL (SUBACK 0x87).
pub(super) const SUBSCRIBE_DENIED: &str =
    "the filter is outside this client's subscribe ACL, or past broker.max_filters";
/// A QoS 1/2 publish the gateway could not commit (PUBACK/PUBREC 0x97).
pub(super) const NOT_KEPT: &str = "the gateway cannot commit the message now (its buffer or \
     retained store is full or cannot write); nothing was kept: send it again later";
/// A QoS 1/2 publish whose commit did not come in time (0x80).
pub(super) const NOT_KEPT_IN_TIME: &str =
    "the gateway did not commit the message in time; nothing was acknowledged: send it again";

/// 5.0 property identifier of the Reason String.
const REASON_STRING: u8 = 0x1F;

/// What a refused CONNECT is told, by refusal.
pub(super) fn connack(refusal: Refusal) -> &'static str {
    match refusal {
        Refusal::BadCredentials => "unknown user name or wrong password",
        Refusal::NotAuthorized => {
            "this listener needs a user name and password (anonymous clients only on loopback \
             listeners with allow_anonymous)"
        }
        Refusal::WillNotAllowed => "the will's topic is outside this client's publish ACL",
        Refusal::ReservedClientId => {
            "client ids starting with perch-internal- are the gateway's own"
        }
        Refusal::TooManyFailures => {
            "too many failed logins lately (broker.max_failed_logins_per_minute); try again later"
        }
        Refusal::BadAuthenticationMethod => {
            "perch offers no enhanced authentication (AUTH); log in with a user name and password"
        }
        Refusal::KeepAliveTooLong => "keep-alive 0 or over broker.max_keep_alive_s",
    }
}

/// What a DISCONNECT the server sends says, by reason code.
pub(super) fn disconnect(code: u8) -> &'static str {
    match code {
        0x81 => "malformed packet",
        0x95 => "packet larger than broker.max_packet_size_bytes",
        _ => "protocol error",
    }
}

/// A PUBACK (`kind` 0x40) or PUBREC (0x50) with reason `code` and, if the
/// packet fits in `room` bytes, `reason` as its Reason String.
pub(super) fn ack(kind: u8, pkid: u16, code: u8, reason: &str, room: usize) -> Vec<u8> {
    with_reason(kind, &pkid.to_be_bytes(), code, reason, room)
}

/// A DISCONNECT with reason `code` and its Reason String, if the packet
/// fits in `room` bytes (a DISCONNECT may carry one whatever the client
/// asked: 5.0 MQTT-3.1.2-29 names it).
pub(super) fn disconnect_packet(code: u8, room: usize) -> Vec<u8> {
    with_reason(0xe0, &[], code, disconnect(code), room)
}

/// `first`, remaining length, `header`, reason code, properties.
fn with_reason(first: u8, header: &[u8], code: u8, reason: &str, room: usize) -> Vec<u8> {
    let reason = &reason.as_bytes()[..reason.len().min(u16::MAX as usize)];
    // Property length (1-2 bytes here) + identifier + string length + text.
    let props = 3 + reason.len();
    let mut prop_len = BytesMut::new();
    // Cannot fail: far below the largest remaining length.
    let _ = protocol::v4::write_remaining_length(&mut prop_len, props);
    let remaining = header.len() + 1 + prop_len.len() + props;
    let mut out = BytesMut::with_capacity(remaining + 5);
    out.put_u8(first);
    let _ = protocol::v4::write_remaining_length(&mut out, remaining);
    if out.len() + remaining > room {
        // Without the Reason String.
        let mut short = vec![first, (header.len() + 1) as u8];
        short.extend_from_slice(header);
        short.push(code);
        return short;
    }
    out.put_slice(header);
    out.put_u8(code);
    out.put_slice(&prop_len);
    out.put_u8(REASON_STRING);
    out.put_u16(reason.len() as u16);
    out.put_slice(reason);
    out.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttd::protocol::v5::V5;
    use rumqttd::protocol::{Packet, Protocol};

    fn read_v5(bytes: Vec<u8>) -> Packet {
        let mut buf = BytesMut::from(&bytes[..]);
        V5.read_mut(&mut buf, 1 << 20).expect("a valid 5.0 packet")
    }

    #[test]
    fn acks_carry_the_reason_when_it_fits() {
        match read_v5(ack(0x40, 9, 0x87, PUBLISH_DENIED, usize::MAX)) {
            Packet::PubAck(a, Some(p)) => {
                assert_eq!(
                    (a.pkid, a.reason),
                    (9, protocol::PubAckReason::NotAuthorized)
                );
                assert_eq!(p.reason_string.as_deref(), Some(PUBLISH_DENIED));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(ack(0x50, 9, 0x97, NOT_KEPT, 10), vec![0x50, 3, 0, 9, 0x97]);
        assert_eq!(
            ack(0x40, 9, 0x87, PUBLISH_DENIED, 0),
            vec![0x40, 3, 0, 9, 0x87]
        );
    }

    #[test]
    fn a_disconnect_says_why() {
        let bytes = disconnect_packet(0x95, usize::MAX);
        assert_eq!(&bytes[..3], &[0xe0, bytes.len() as u8 - 2, 0x95]);
        let text = std::str::from_utf8(&bytes[7..]).unwrap();
        assert_eq!(text, "packet larger than broker.max_packet_size_bytes");
        assert_eq!(disconnect_packet(0x81, 3), vec![0xe0, 1, 0x81]);
    }
}
