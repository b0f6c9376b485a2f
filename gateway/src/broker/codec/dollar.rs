//! Subscriptions to `$`-filters, `$SYS/#` above all (a Mosquitto habit):
//! perch serves no `$`-topics, and rumqttd's router matches no topic that
//! starts with `$` and drops a client that subscribes to such a filter. So
//! the codec refuses the filter (SUBACK 0x80; 5.0: 0x87), keeps the
//! connection, and says where the same facts are, in the log and, to a
//! 5.0 client, in the SUBACK's Reason String: the retained JSON summary on
//! `perch/<gateway id>/status` (connections, messages in and out, uptime,
//! version) and the admin listener's `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{BufMut, BytesMut};
use rumqttd::protocol;

/// What a refused `$`-subscription is told.
pub(super) const REASON: &str = "perch has no $SYS topics: subscribe to perch/<gateway id>/status \
     (retained JSON: connections, messages, uptime, version) or scrape /metrics on the admin \
     listener";

/// 5.0 SUBACK reason code: Not authorized.
const NOT_AUTHORIZED: u8 = 0x87;
/// 5.0 property identifier of the Reason String.
const REASON_STRING: u8 = 0x1F;

/// Whether `filter` is a `$`-filter perch refuses (`$share/...` is a
/// shared subscription, not one); logs the refusal, with where to look
/// instead, the 1st, 2nd, 4th, 8th... time, so no client floods the log.
pub(super) fn refused(filter: &protocol::Filter, client_id: &str) -> bool {
    if !is_dollar(&filter.path) {
        return false;
    }
    static REFUSED: AtomicU64 = AtomicU64::new(0);
    let n = REFUSED.fetch_add(1, Ordering::Relaxed) + 1;
    if n.is_power_of_two() {
        let filter = filter.path.as_str();
        tracing::info!(
            client_id,
            filter,
            refused = n,
            "subscription refused: {REASON}"
        );
    }
    true
}

/// Whether `filter` is a `$`-filter perch refuses, without a word.
fn is_dollar(filter: &str) -> bool {
    filter.starts_with('$') && !filter.starts_with("$share/")
}

/// How big a SUBACK with a Reason String may be for a 5.0 client, from its
/// CONNECT: none when it set Request Problem Information to 0 (5.0
/// §3.1.2.11.7), else its Maximum Packet Size (0: none).
pub(super) fn reason_room(request_problem_info: Option<u8>, max_packet: usize) -> usize {
    match (request_problem_info, max_packet) {
        (Some(0), _) => 0,
        (_, 0) => usize::MAX,
        (_, max) => max,
    }
}

/// The SUBACK of a SUBSCRIBE whose filters were all refused: 0x80 each
/// (5.0: 0x87). A 5.0 one carries a Reason String, if the packet fits in
/// `room` bytes (see [`reason_room`]): [`REASON`] when one of them was a
/// `$`-filter, else that they are outside the ACL.
pub(super) fn all_failed_suback(subscribe: &protocol::Subscribe, v5: bool, room: usize) -> Vec<u8> {
    let (pkid, n) = (subscribe.pkid, subscribe.filters.len());
    let dollar = subscribe.filters.iter().any(|f| is_dollar(&f.path));
    let why = if dollar {
        REASON
    } else {
        super::reason::SUBSCRIBE_DENIED
    };
    let mut props = BytesMut::new();
    if v5 {
        props.put_u8(REASON_STRING);
        props.put_u16(why.len() as u16);
        props.put_slice(why.as_bytes());
        // Fixed header (at most 5) + packet id + property length (1-2).
        if 5 + 2 + 2 + props.len() + n > room {
            props.clear();
        }
    }
    let mut len = BytesMut::new();
    if v5 {
        // Cannot fail: the properties are far below the largest length.
        let _ = protocol::v4::write_remaining_length(&mut len, props.len());
    }
    let mut out = BytesMut::new();
    out.put_u8(0x90);
    // Cannot fail: a SUBSCRIBE that fit in a packet has fewer filters than
    // the largest remaining length.
    let _ = protocol::v4::write_remaining_length(&mut out, 2 + len.len() + props.len() + n);
    out.put_u16(pkid);
    out.put_slice(&len);
    out.put_slice(&props);
    out.put_bytes(if v5 { NOT_AUTHORIZED } else { 0x80 }, n);
    out.to_vec()
}

/// A SUBSCRIBE of `n` filters `path` (for tests).
#[cfg(test)]
pub(super) fn subscribe(pkid: u16, path: &str, n: usize) -> protocol::Subscribe {
    let filter = protocol::Filter {
        path: path.to_owned(),
        qos: protocol::QoS::AtMostOnce,
        nolocal: false,
        preserve_retain: false,
        retain_forward_rule: protocol::RetainForwardRule::OnEverySubscribe,
    };
    protocol::Subscribe {
        pkid,
        filters: vec![filter; n],
    }
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
    fn a_refused_dollar_filter_is_told_where_to_look_in_5_0() {
        match read_v5(all_failed_suback(
            &subscribe(7, "$SYS/#", 2),
            true,
            usize::MAX,
        )) {
            Packet::SubAck(ack, Some(props)) => {
                assert_eq!(ack.pkid, 7);
                assert_eq!(ack.return_codes.len(), 2);
                assert_eq!(props.reason_string.as_deref(), Some(REASON));
            }
            other => panic!("{other:?}"),
        }
        // No room, or not asked for: the bare SUBACK, as before.
        for room in [0, 40] {
            match read_v5(all_failed_suback(&subscribe(7, "$SYS/#", 1), true, room)) {
                Packet::SubAck(ack, props) => {
                    assert_eq!(ack.return_codes.len(), 1);
                    assert!(props.is_none_or(|p| p.reason_string.is_none()));
                }
                other => panic!("{other:?}"),
            }
        }
        let v4 = all_failed_suback(&subscribe(1, "$SYS/#", 1), false, usize::MAX);
        assert_eq!(v4, vec![0x90, 3, 0, 1, 0x80]);
        assert_eq!(reason_room(Some(0), 0), 0);
        assert_eq!(reason_room(Some(1), 0), usize::MAX);
        assert_eq!(reason_room(None, 300), 300);
        let refused = |path| refused(&subscribe(1, path, 1).filters[0], "c");
        assert!(refused("$SYS/#") && !refused("$share/g/a") && !refused("a/$b"));
        // Not a `$`-filter: outside the ACL, said when there is room.
        match read_v5(all_failed_suback(&subscribe(7, "a", 1), true, usize::MAX)) {
            Packet::SubAck(_, Some(props)) => assert_eq!(
                props.reason_string.as_deref(),
                Some(crate::broker::codec::reason::SUBSCRIBE_DENIED)
            ),
            other => panic!("{other:?}"),
        }
        let plain = all_failed_suback(&subscribe(7, "a", 1), true, 0);
        assert_eq!(plain, vec![0x90, 4, 0, 7, 0, 0x87]);
    }
}
