//! The JSON envelope a buffered record travels in to an upstream MQTT
//! broker: its id, stream, kind, time and the record itself. The wire
//! format is described in [`super`]; mirrored records travel without it
//! ([`super::mirror`]).

use crate::buffer::{RecordRef, KIND_AGGREGATE, KIND_SUMMARY};

/// The JSON envelope a record travels in.
pub fn envelope(gateway: &str, record: RecordRef<'_>, out: &mut Vec<u8>) {
    out.clear();
    let kind: &[u8] = match record.kind {
        KIND_AGGREGATE => b"aggregate",
        KIND_SUMMARY => b"summary",
        _ => b"record",
    };
    // Written straight into `out`, numbers without `fmt`: this runs once
    // per record of a drain.
    let plain = |s: &str| !s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20);
    if plain(gateway) {
        out.extend_from_slice(b"{\"id\":\"");
        out.extend_from_slice(gateway.as_bytes());
        out.push(b'-');
        push_decimal(out, record.seq);
        out.push(b'"');
    } else {
        out.extend_from_slice(b"{\"id\":");
        let _ = serde_json::to_writer(&mut *out, &format!("{gateway}-{}", record.seq));
    }
    out.extend_from_slice(b",\"stream\":");
    let _ = serde_json::to_writer(&mut *out, record.stream);
    out.extend_from_slice(b",\"kind\":\"");
    out.extend_from_slice(kind);
    out.extend_from_slice(b"\",\"time_ms\":");
    push_decimal(out, record.created_ms);
    out.extend_from_slice(b",\"data\":");
    let is_json = serde_json::from_slice::<serde::de::IgnoredAny>(record.payload).is_ok();
    if is_json {
        out.extend_from_slice(record.payload);
    } else {
        let text = String::from_utf8_lossy(record.payload);
        let _ = serde_json::to_writer(&mut *out, &text);
    }
    out.push(b'}');
}

/// `n` as `Display` writes it, without going through `fmt`.
fn push_decimal(out: &mut Vec<u8>, n: i64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::StoredRecord;

    #[test]
    fn decimals_are_written_like_display() {
        for n in [0, 7, -7, 10, 1_796_588_880_000, i64::MAX, i64::MIN] {
            let mut out = b"x".to_vec();
            push_decimal(&mut out, n);
            assert_eq!(out, format!("x{n}").into_bytes());
        }
    }

    #[test]
    fn the_envelope_embeds_json_and_quotes_the_rest() {
        let mut out = Vec::new();
        let mut r = StoredRecord {
            seq: 42,
            stream: "alerts".into(),
            kind: 0,
            created_ms: 7,
            payload: br#"{"t":1}"#.to_vec(),
        };
        envelope("gw-1", r.as_ref(), &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["id"], "gw-1-42");
        assert_eq!(v["data"]["t"], 1);
        r.payload = b"not \"json\"".to_vec();
        r.kind = KIND_AGGREGATE;
        envelope("gw-1", r.as_ref(), &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["data"], "not \"json\"");
        assert_eq!(v["kind"], "aggregate");
        // Ids and streams that need escaping stay valid JSON.
        r.stream = "a\"b\\c\n".into();
        envelope("g\"w", r.as_ref(), &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["id"], "g\"w-42");
        assert_eq!(v["stream"], "a\"b\\c\n");
        assert_eq!(v["time_ms"], 7);
    }
}
