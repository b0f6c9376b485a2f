//! DISCONNECT from the client, decoded by the codec itself: rumqttd's 5.0
//! codec cannot read the short form (a reason code without properties,
//! 5.0 §3.14.2.2.1) and waits forever for bytes that never come. A 5.0
//! DISCONNECT may also set the session's expiry (§3.14.2.2.2), which
//! rumqttd would ignore.

use bytes::BytesMut;
use rumqttd::protocol::{self, Packet};

use super::{reason, remaining_length, Codec, Pending, Version};

impl Codec {
    /// A DISCONNECT: decoded here because rumqttd's 5.0 codec cannot read
    /// the short form (reason code without properties, §3.14.2.2.1) and
    /// waits forever for bytes that never come.
    pub(super) fn read_disconnect(
        &mut self,
        stream: &mut BytesMut,
        version: Version,
    ) -> Result<Packet, protocol::Error> {
        let Some((len, len_len)) = remaining_length(&stream[1..]) else {
            return if stream.len() >= 5 {
                Err(protocol::Error::MalformedRemainingLength)
            } else {
                Err(protocol::Error::InsufficientBytes(1))
            };
        };
        let total = 1 + len_len + len;
        if stream.len() < total {
            return Err(protocol::Error::InsufficientBytes(total - stream.len()));
        }
        if version == Version::V4 && len != 0 {
            return Err(protocol::Error::IncorrectPacketFormat);
        }
        let reason = if len > 0 { stream[1 + len_len] } else { 0 };
        let expiry = match stream.get(2 + len_len..total) {
            Some(props) if !props.is_empty() => disconnect_session_expiry(props)?,
            _ => None,
        };
        let _ = stream.split_to(total);
        if let Some(expiry) = expiry {
            if self.connect_expiry == 0 && expiry != 0 {
                return Ok(self.protocol_error_disconnect());
            }
            self.session_expiry_set(expiry);
        }
        // 5.0 reason 0x04: disconnect, but publish the will.
        if reason != 0x04 {
            self.will = None;
        }
        self.closing = true;
        if self.mid_batch {
            // Let rumqttd deliver what it read before; the next read ends
            // the connection.
            self.mid_batch = false;
            return Err(protocol::Error::InsufficientBytes(1));
        }
        Err(protocol::Error::InvalidProtocol)
    }

    /// A 5.0 DISCONNECT set a non-zero Session Expiry Interval after a
    /// CONNECT with 0: a protocol error, not a valid DISCONNECT (5.0
    /// §3.14.2.2.2). The will stays due, the session ends with the
    /// connection as the CONNECT said, and the client is sent DISCONNECT
    /// 0x82 (Protocol Error) before the connection closes.
    fn protocol_error_disconnect(&mut self) -> Packet {
        tracing::debug!(
            client_id = self.client_id,
            "DISCONNECT set a session expiry after a CONNECT with none: protocol error"
        );
        self.closing = true;
        let answer = reason::disconnect_packet(PROTOCOL_ERROR, self.packet_room());
        self.answer(answer)
    }

    /// The largest packet the client takes (its Maximum Packet Size).
    fn packet_room(&mut self) -> usize {
        match self.flow.get_mut().expect("codec lock").max_packet {
            0 => usize::MAX,
            max => max,
        }
    }

    /// A 5.0 DISCONNECT set the Session Expiry Interval (§3.14.2.2.2): the
    /// session now lasts `expiry` seconds after the connection (0: it ends
    /// with it; 0xFFFFFFFF: never expires).
    fn session_expiry_set(&mut self, expiry: u32) {
        if self.connect_expiry == 0 {
            // 0 again: the session ends with the connection already.
            return;
        }
        if let Some((_, persistence)) = &mut self.session {
            *persistence = Some((expiry != u32::MAX).then_some(expiry));
            self.policy
                .sessions
                .expiry_changed(&self.client_id, *persistence);
        }
    }

    /// A 5.0 client sent what ends its connection: a packet past
    /// `broker.max_packet_size_bytes` (0x95, Packet too large) or a
    /// malformed one (0x81) or one breaking the protocol (0x82). It is sent
    /// a DISCONNECT with that reason before the connection closes (5.0
    /// §4.13.1), rather than a bare close; its will is published. What the
    /// codec returns to end a connection on purpose (`InvalidProtocol`) and
    /// a packet cut short pass through.
    pub(super) fn closed_on_error(
        &mut self,
        error: protocol::Error,
        stream: &mut BytesMut,
    ) -> Result<Packet, protocol::Error> {
        use protocol::Error as E;
        let reason = match error {
            E::InvalidProtocol | E::InsufficientBytes(_) => return Err(error),
            E::PayloadSizeLimitExceeded(_) => PACKET_TOO_LARGE,
            E::PacketIdZero
            | E::EmptySubscription
            | E::SubscriptionIdZero
            | E::InvalidQoS(_)
            | E::InvalidPacketType(_) => PROTOCOL_ERROR,
            _ => MALFORMED_PACKET,
        };
        tracing::debug!(
            client_id = self.client_id,
            %error,
            reason = format_args!("{reason:#04x}"),
            "client sent a packet that ends its connection: DISCONNECT sent"
        );
        // The rest of what was read belongs to the bad packet or follows it;
        // nothing of it is read any more.
        stream.clear();
        self.closing = true;
        let answer = reason::disconnect_packet(reason, self.packet_room());
        Ok(self.answer(answer))
    }

    /// Whether an answer of ours waits for its PINGRESP.
    pub(super) fn answer_pending(&mut self) -> bool {
        let pending = self.pending.get_mut().expect("codec lock");
        pending.iter().any(|p| matches!(p, Pending::Answer(_)))
    }
}

/// 5.0 reason codes of a DISCONNECT the server sends.
const MALFORMED_PACKET: u8 = 0x81;
const PROTOCOL_ERROR: u8 = 0x82;
const PACKET_TOO_LARGE: u8 = 0x95;

/// The Session Expiry Interval in a 5.0 DISCONNECT's properties (`props`:
/// everything after the reason code), if it sets one. Properties a
/// DISCONNECT may not carry, or one cut short, make it malformed.
fn disconnect_session_expiry(props: &[u8]) -> Result<Option<u32>, protocol::Error> {
    let malformed = protocol::Error::IncorrectPacketFormat;
    let (len, len_len) = remaining_length(props).ok_or(malformed)?;
    let mut rest = props
        .get(len_len..)
        .filter(|r| r.len() == len)
        .ok_or(malformed)?;
    let mut expiry = None;
    // Skips a length-prefixed string; `None` if it runs past the end.
    let string = |r: &[u8]| -> Option<usize> {
        let n = usize::from(u16::from_be_bytes([*r.first()?, *r.get(1)?]));
        (r.len() >= 2 + n).then_some(2 + n)
    };
    while let Some((&id, tail)) = rest.split_first() {
        let used = match id {
            // Session Expiry Interval, once at most.
            0x11 if expiry.is_none() => {
                let b: [u8; 4] = tail
                    .get(..4)
                    .and_then(|b| b.try_into().ok())
                    .ok_or(malformed)?;
                expiry = Some(u32::from_be_bytes(b));
                4
            }
            // Reason String, Server Reference.
            0x1f | 0x1c => string(tail).ok_or(malformed)?,
            // User Property: a string pair.
            0x26 => {
                let k = string(tail).ok_or(malformed)?;
                k + string(&tail[k..]).ok_or(malformed)?
            }
            _ => return Err(malformed),
        };
        rest = &tail[used..];
    }
    Ok(expiry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disconnects_session_expiry_is_found_among_its_properties() {
        let expiry = [0x11, 0, 0, 0, 5];
        assert_eq!(
            disconnect_session_expiry(&[5, 0x11, 0, 0, 0, 5]),
            Ok(Some(5))
        );
        assert_eq!(disconnect_session_expiry(&[0]), Ok(None));
        // A reason string and a user property around it.
        let mut props = vec![0x1f, 0, 2, b'h', b'i', 0x26, 0, 1, b'k', 0, 1, b'v'];
        props.extend(expiry);
        let mut packet = vec![props.len() as u8];
        packet.extend(&props);
        assert_eq!(disconnect_session_expiry(&packet), Ok(Some(5)));
        let malformed = Err(protocol::Error::IncorrectPacketFormat);
        // Cut short, twice, a property a DISCONNECT cannot carry, a length
        // that disagrees with the packet.
        assert_eq!(disconnect_session_expiry(&[3, 0x11, 0, 0]), malformed);
        let twice = [10, 0x11, 0, 0, 0, 5, 0x11, 0, 0, 0, 6];
        assert_eq!(disconnect_session_expiry(&twice), malformed);
        assert_eq!(disconnect_session_expiry(&[2, 0x23, 0]), malformed);
        assert_eq!(disconnect_session_expiry(&[9, 0x11, 0, 0, 0, 5]), malformed);
    }
}
