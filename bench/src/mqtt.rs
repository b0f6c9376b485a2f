//! The few MQTT 3.1.1 packets the load generator speaks, encoded and parsed
//! by hand: a client library's per-message work (channels, allocations,
//! state machines) would show up in the generator's own ceiling, and the
//! generator must not be the bottleneck of what it measures.

use std::io;

/// Packet types (the high nibble of the first byte).
pub const CONNECT: u8 = 1;
pub const CONNACK: u8 = 2;
pub const PUBLISH: u8 = 3;
pub const PUBACK: u8 = 4;
pub const SUBACK: u8 = 9;
pub const PINGREQ: u8 = 12;

/// Appends MQTT's variable-length "remaining length".
fn put_len(out: &mut Vec<u8>, mut len: usize) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// CONNECT with a clean session and keep-alive 0 (off): runs are short and
/// a reader that is busy measuring must not be disconnected for a late ping.
pub fn connect(client_id: &str) -> Vec<u8> {
    let mut body = Vec::new();
    put_str(&mut body, "MQTT");
    body.push(4); // protocol level 3.1.1
    body.push(0x02); // clean session
    body.extend_from_slice(&0u16.to_be_bytes());
    put_str(&mut body, client_id);
    let mut out = vec![CONNECT << 4];
    put_len(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

pub fn subscribe(packet_id: u16, filter: &str, qos: u8) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    put_str(&mut body, filter);
    body.push(qos);
    let mut out = vec![0x82];
    put_len(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

/// Appends one PUBLISH (packet id only for QoS 1) without allocating.
pub fn put_publish(out: &mut Vec<u8>, topic: &str, qos: u8, packet_id: u16, payload: &[u8]) {
    let id_len = if qos > 0 { 2 } else { 0 };
    out.push((PUBLISH << 4) | (qos << 1));
    put_len(out, 2 + topic.len() + id_len + payload.len());
    put_str(out, topic);
    if qos > 0 {
        out.extend_from_slice(&packet_id.to_be_bytes());
    }
    out.extend_from_slice(payload);
}

pub fn put_puback(out: &mut Vec<u8>, packet_id: u16) {
    out.push(PUBACK << 4);
    out.push(2);
    out.extend_from_slice(&packet_id.to_be_bytes());
}

/// One complete packet found in a read buffer.
pub struct Packet {
    /// The first byte: type in the high nibble, flags in the low one.
    pub header: u8,
    /// Where the body (after the remaining length) starts and ends.
    pub body: std::ops::Range<usize>,
}

/// The next complete packet starting at `at`, or `None` if `buf` holds only
/// part of it.
pub fn next_packet(buf: &[u8], at: usize) -> io::Result<Option<Packet>> {
    let mut pos = at + 1;
    let mut len = 0usize;
    let mut shift = 0;
    loop {
        let Some(&byte) = buf.get(pos) else {
            return Ok(None);
        };
        pos += 1;
        len |= ((byte & 0x7f) as usize) << shift;
        if byte & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 21 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "malformed MQTT remaining length from the broker",
            ));
        }
    }
    if buf.len() < pos + len {
        return Ok(None);
    }
    Ok(Some(Packet {
        header: buf[at],
        body: pos..pos + len,
    }))
}

/// Splits a PUBLISH body into (packet id if QoS > 0, payload).
pub fn publish_parts(header: u8, body: &[u8]) -> Option<(Option<u16>, &[u8])> {
    let topic_len = u16::from_be_bytes([*body.first()?, *body.get(1)?]) as usize;
    let mut at = 2 + topic_len;
    let qos = (header >> 1) & 3;
    let id = if qos > 0 {
        let id = u16::from_be_bytes([*body.get(at)?, *body.get(at + 1)?]);
        at += 2;
        Some(id)
    } else {
        None
    };
    Some((id, body.get(at..)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_round_trips_through_the_parser() {
        let mut buf = Vec::new();
        put_publish(&mut buf, "sensors/s1/temperature", 1, 7, &[b'x'; 300]);
        put_publish(&mut buf, "a", 0, 0, b"hi");
        let first = next_packet(&buf, 0).unwrap().unwrap();
        assert_eq!(first.header >> 4, PUBLISH);
        let (id, payload) = publish_parts(first.header, &buf[first.body.clone()]).unwrap();
        assert_eq!(id, Some(7));
        assert_eq!(payload.len(), 300);
        let second = next_packet(&buf, first.body.end).unwrap().unwrap();
        let (id, payload) = publish_parts(second.header, &buf[second.body.clone()]).unwrap();
        assert_eq!((id, payload), (None, &b"hi"[..]));
        assert_eq!(second.body.end, buf.len());
        // A partial packet waits for more bytes.
        assert!(next_packet(&buf[..buf.len() - 1], first.body.end)
            .unwrap()
            .is_none());
    }

    #[test]
    fn remaining_length_uses_continuation_bytes() {
        let mut out = Vec::new();
        put_len(&mut out, 321);
        assert_eq!(out, [0xC1, 0x02]);
    }
}
