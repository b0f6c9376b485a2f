//! The sensor payload the load generator publishes:
//!
//! `{"device":"s0003","seq":41,"ts_us":1763800000123456,"temperature":24.5,"pad":"xx…"}`
//!
//! `device` names the publisher (`s` + its index), `seq` counts from 0 per
//! publisher, `ts_us` is the send time (Unix µs; the subscriber on the same
//! machine subtracts it from its receive time), `temperature` is
//! `20 + (seq % 20) / 2` so that a threshold at 29 is crossed by 1 reading in
//! 20, and `pad` fills the payload up to the requested size. The edge-job
//! peers forward the payload unchanged, so the subscriber finds these fields
//! inside whatever envelope the upstream adds.

use std::io::Write;

/// The reading for a sequence number (deterministic, so every peer sees the
/// same data).
pub fn temperature(seq: u64) -> f64 {
    20.0 + (seq % 20) as f64 * 0.5
}

/// Writes the payload into `out` (cleared first), padded to at least `size`.
pub fn write(out: &mut Vec<u8>, device: usize, seq: u64, ts_us: u64, size: usize) {
    out.clear();
    let _ = write!(
        out,
        r#"{{"device":"s{device:04}","seq":{seq},"ts_us":{ts_us},"temperature":{:.1},"pad":""#,
        temperature(seq)
    );
    let close = br#""}"#;
    let fill = size.saturating_sub(out.len() + close.len());
    out.resize(out.len() + fill, b'x');
    out.extend_from_slice(close);
}

/// What the subscriber reads back from a payload (or an envelope holding it).
#[derive(Debug, PartialEq, Eq)]
pub struct Stamp {
    pub device: usize,
    pub seq: u64,
    pub ts_us: u64,
}

fn number_after(hay: &[u8], key: &[u8]) -> Option<(u64, usize)> {
    let at = find(hay, key)? + key.len();
    let digits = hay[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    let mut n = 0u64;
    for &b in &hay[at..at + digits] {
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some((n, at + digits))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Finds the stamp in `payload`; `None` if it holds no sensor payload.
pub fn read(payload: &[u8]) -> Option<Stamp> {
    let (device, _) = number_after(payload, br#""device":"s"#)?;
    let (seq, _) = number_after(payload, br#""seq":"#)?;
    let (ts_us, _) = number_after(payload, br#""ts_us":"#)?;
    Some(Stamp {
        device: device as usize,
        seq,
        ts_us,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_has_the_size_asked_and_reads_back() {
        let mut out = Vec::new();
        write(&mut out, 3, 41, 1_763_800_000_123_456, 256);
        assert_eq!(out.len(), 256);
        let text = std::str::from_utf8(&out).unwrap();
        assert!(text.starts_with(
            r#"{"device":"s0003","seq":41,"ts_us":1763800000123456,"temperature":20.5,"pad":"xx"#
        ));
        assert!(text.ends_with(r#"xx"}"#));
        let stamp = read(&out).unwrap();
        assert_eq!(
            stamp,
            Stamp {
                device: 3,
                seq: 41,
                ts_us: 1_763_800_000_123_456
            }
        );
    }

    #[test]
    fn small_sizes_give_the_shortest_valid_payload() {
        let mut out = Vec::new();
        write(&mut out, 0, 0, 1, 10);
        assert!(out.ends_with(br#""pad":""}"#));
        assert!(read(&out).is_some());
    }

    #[test]
    fn finds_the_stamp_inside_an_envelope() {
        let mut inner = Vec::new();
        write(&mut inner, 12, 900, 5, 0);
        let mut env = br#"{"id":"gw-7","stream":"samples","data":"#.to_vec();
        env.extend_from_slice(&inner);
        env.push(b'}');
        assert_eq!(read(&env).unwrap().device, 12);
        assert_eq!(read(b"{\"window\":1}"), None);
    }

    #[test]
    fn one_reading_in_twenty_is_above_29() {
        let above = (0..100).filter(|&s| temperature(s) > 29.0).count();
        assert_eq!(above, 5);
    }
}
