//! How a refused CONNECT is answered: rumqttd is handed a throwaway
//! CONNECT (so the refused client can neither take over nor wipe a real
//! session) and its CONNACK is rewritten into the refusal's code.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::BytesMut;
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::v5::V5;
use rumqttd::protocol::{self, ConnAck, ConnectReturnCode, Packet, Protocol};

use super::Version;
use crate::broker::auth::Refusal;

/// The CONNACK code of a refused CONNECT.
pub(super) fn connack_code(refusal: Refusal, version: Version) -> ConnectReturnCode {
    match refusal {
        Refusal::BadCredentials => ConnectReturnCode::BadUserNamePassword,
        Refusal::NotAuthorized | Refusal::WillNotAllowed => ConnectReturnCode::NotAuthorized,
        Refusal::ReservedClientId | Refusal::KeepAliveTooLong => {
            ConnectReturnCode::ClientIdentifierNotValid
        }
        Refusal::BadAuthenticationMethod => ConnectReturnCode::BadAuthenticationMethod,
        Refusal::TooManyFailures if version == Version::V5 => {
            ConnectReturnCode::ConnectionRateExceeded
        }
        Refusal::TooManyFailures => ConnectReturnCode::ServiceUnavailable,
    }
}

/// A CONNECT that rumqttd can register without touching any real session.
pub(super) fn throwaway_connect() -> Packet {
    // rumqttd refuses ids starting with '$'; a per-process random part keeps
    // these from colliding with any real client's id.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static NONCE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let nonce = *NONCE.get_or_init(rand::random);
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    let connect = protocol::Connect {
        keep_alive: 10,
        client_id: format!("perch-refused-{nonce:016x}-{id}"),
        clean_session: true,
    };
    Packet::Connect(connect, None, None, None, None)
}

/// The refusal CONNACK; a 5.0 one says `reason` in its Reason String.
pub(super) fn encode_refusal(
    version: Version,
    code: ConnectReturnCode,
    reason: Option<&str>,
    write: &mut BytesMut,
) -> usize {
    let ack = ConnAck {
        session_present: false,
        code,
    };
    let result = match version {
        Version::V4 => V4.write(Packet::ConnAck(ack, None), write),
        Version::V5 => {
            let props = reason.map(|r| protocol::ConnAckProperties {
                reason_string: Some(r.to_owned()),
                ..Default::default()
            });
            V5.write(Packet::ConnAck(ack, props), write)
        }
    };
    result.unwrap_or(0)
}
