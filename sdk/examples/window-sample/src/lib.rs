//! `window-sample`: the typical edge job, and the one the benchmarks in
//! `bench/` run against the alternatives: keep the windows, send up a sample.
//!
//! In: `sensors/<device>/temperature` with
//! `{"device":"t1","temperature":31.5,"seq":700}` (`device` optional: the
//! topic's second level is used without it; `seq` optional, see below).
//! Out, per reading:
//! - metric `temperature` keyed by device (the aggregator's windows: count,
//!   min, max, mean per `[aggregate] window_s`, 10 s by default);
//! - metric `over_limit` keyed by device, value 1, when the reading is above
//!   config `limit` (so the window counts the excursions);
//! - the raw reading forwarded to stream `samples` for 1 reading in
//!   `forward_every`: those whose `seq` is a multiple of it, or, without a
//!   `seq`, every `forward_every`-th reading since the function started.
//!
//! Config: `limit` (required), `forward_every` (>= 1) [100].
// Tests run natively with std; the module itself never links it.
#![cfg_attr(not(test), no_std)]

use core::sync::atomic::{AtomicU64, Ordering};

use perch_sdk::{Context, Error, Event};

/// Readings without a `seq` seen since the instance started.
static UNNUMBERED: AtomicU64 = AtomicU64::new(0);

/// Handles one reading.
pub fn on_event(ctx: &Context, event: &Event) -> Result<(), Error> {
    let [device, temperature, seq] = event.fields(["device", "temperature", "seq"])?;
    let (device, temperature, seq) = (device.opt_str()?, temperature.f64()?, seq.opt_u64()?);
    let limit = ctx.config_f64("limit")?;
    let every = ctx.config_i64_or("forward_every", 100)?;
    if every < 1 {
        return Err(Error::Config);
    }
    let device = device.or(event.topic_level(1)).unwrap_or("unknown");
    ctx.emit_keyed("temperature", device, temperature)?;
    if temperature > limit {
        ctx.emit_keyed("over_limit", device, 1.0)?;
    }
    let seq = match seq {
        Some(seq) => seq,
        None => UNNUMBERED.fetch_add(1, Ordering::Relaxed),
    };
    if seq % every as u64 == 0 {
        ctx.forward("samples", event.payload)?;
    }
    Ok(())
}

perch_sdk::function! {
    on_event: on_event,
    event_buffer: 4096,
}

#[cfg(test)]
mod tests {
    use super::*;
    use perch_sdk::testing::TestHost;

    fn host() -> TestHost {
        TestHost::from_manifest(include_str!("../manifest.toml")).unwrap()
    }

    #[test]
    fn windows_every_reading_and_forwards_one_in_a_hundred() {
        let mut host = host();
        for seq in 0..250u64 {
            let payload = format!(
                r#"{{"device":"s0001","seq":{seq},"ts_us":17,"temperature":{:.1},"pad":"xxxx"}}"#,
                20.0 + (seq % 20) as f64 * 0.5
            );
            host.event(on_event, "sensors/s0001/temperature", payload.as_bytes(), 1)
                .unwrap();
        }
        let temperatures = host
            .emitted()
            .iter()
            .filter(|e| e.metric == "temperature" && e.key.as_deref() == Some("s0001"))
            .count();
        assert_eq!(temperatures, 250);
        // 29.5 is the only reading above 29, once every 20.
        let over = host
            .emitted()
            .iter()
            .filter(|e| e.metric == "over_limit")
            .count();
        assert_eq!(over, 12);
        let seqs: Vec<&str> = host
            .forwarded()
            .iter()
            .map(|m| {
                assert_eq!(m.topic, "samples");
                m.text()
            })
            .collect();
        assert_eq!(seqs.len(), 3);
        assert!(seqs[0].contains(r#""seq":0,"#));
        assert!(seqs[1].contains(r#""seq":100,"#));
        assert!(seqs[2].contains(r#""seq":200,"#));
    }

    #[test]
    fn counts_readings_without_a_seq() {
        let mut host = host().with_config("forward_every", "3");
        for _ in 0..7 {
            host.event(
                on_event,
                "sensors/kitchen/temperature",
                br#"{"temperature":21}"#,
                1,
            )
            .unwrap();
        }
        assert_eq!(host.forwarded().len(), 3);
        assert_eq!(host.emitted()[0].key.as_deref(), Some("kitchen"));
    }

    #[test]
    fn refuses_payloads_it_cannot_read_and_a_bad_config() {
        let mut host = host();
        for bad in [&b"31.5"[..], b"{\"temp\":31.5}", b"not json", b""] {
            assert_eq!(
                host.event(on_event, "sensors/t1/temperature", bad, 1),
                Err(Error::Payload)
            );
        }
        let mut host = host.with_config("forward_every", "0");
        assert_eq!(
            host.event(
                on_event,
                "sensors/t1/temperature",
                br#"{"temperature":1}"#,
                1
            ),
            Err(Error::Config)
        );
        assert!(host.forwarded().is_empty());
        assert!(host.emitted().is_empty());
    }
}
