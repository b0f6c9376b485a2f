//! `anomaly-zscore`: forwards outliers upstream.
//!
//! For each device it keeps the running mean and variance of its readings in
//! state (Welford's method: three numbers, however many readings). A reading
//! more than `z_threshold` standard deviations from the mean, once
//! `min_samples` readings are known, is forwarded to stream `stream` as
//! `{"device":"t1","value":80.0,"mean":21.0,"stddev":0.5,"z":118.0,"timestamp_ms":...}`.
//! Every reading, outlier or not, then updates the statistics, so a lasting
//! change of level stops being an outlier after a while.
//!
//! In: `sensors/<device>/temperature` with `{"device":"t1","temperature":21.5}`.
//! State: `stats/<device>` = `{"n":..,"mean":..,"m2":..}`.
//! Config: `z_threshold` [3.0], `min_samples` [10], `stream` ["anomalies"].
// Tests run natively with std; the module itself never links it.
#![cfg_attr(not(test), no_std)]

use perch_sdk::heapless::String;
use perch_sdk::{json, math, Context, Error, Event, Level};
use serde::{Deserialize, Serialize};

/// Running count, mean and sum of squared deviations (Welford).
#[derive(Serialize, Deserialize, Default, Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    n: u64,
    mean: f64,
    m2: f64,
}

impl Stats {
    /// Adds one value.
    pub fn update(&mut self, x: f64) {
        self.n += 1;
        let delta = x - self.mean;
        self.mean += delta / self.n as f64;
        self.m2 += delta * (x - self.mean);
    }

    /// Sample standard deviation (0 below two values).
    pub fn stddev(&self) -> f64 {
        if self.n < 2 {
            return 0.0;
        }
        math::sqrt(self.m2 / (self.n - 1) as f64)
    }

    /// How many standard deviations `x` is from the mean; `None` while the
    /// deviation is 0 (all values equal so far).
    pub fn z(&self, x: f64) -> Option<f64> {
        let sd = self.stddev();
        (sd > 0.0).then(|| (x - self.mean) / sd)
    }
}

/// Handles one reading.
pub fn on_event(ctx: &Context, event: &Event) -> Result<(), Error> {
    let [device, temperature] = event.fields(["device", "temperature"])?;
    let (device, x) = (device.opt_str()?, temperature.f64()?);
    let device = device.or(event.topic_level(1)).unwrap_or("unknown");
    let threshold = ctx.config_f64_or("z_threshold", 3.0)?;
    let min_samples = ctx.config_i64_or("min_samples", 10)?.max(2) as u64;

    let mut key: String<256> = String::new();
    key.push_str("stats/").map_err(|_| Error::Encode)?;
    key.push_str(device).map_err(|_| Error::Encode)?;
    let mut stats: Stats = ctx.state_get_json(&key)?.unwrap_or_default();

    if stats.n >= min_samples {
        if let Some(z) = stats.z(x).filter(|z| z.abs() > threshold) {
            let stream = match ctx.config_str::<64>("stream") {
                Err(Error::NotFound) => String::try_from("anomalies").map_err(|_| Error::Encode)?,
                other => other?,
            };
            let mut buf = [0u8; 512];
            let mut outlier = json::Object::new(&mut buf);
            outlier
                .str("device", device)
                .f64("value", x)
                .f64("mean", math::round_to(stats.mean, 3))
                .f64("stddev", math::round_to(stats.stddev(), 3))
                .f64("z", math::round_to(z, 2))
                .i64("timestamp_ms", event.timestamp_ms);
            ctx.forward(&stream, outlier.finish()?)?;
            perch_sdk::debug!(ctx, "outlier on {}: z = {}", device, math::round_to(z, 2));
        }
    }
    stats.update(x);
    ctx.state_set_json(&key, &stats)?;
    if stats.n == min_samples {
        ctx.log(
            Level::Info,
            "anomaly-zscore: baseline complete for a device",
        );
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

    fn reading(host: &mut TestHost, value: f64, ts: i64) {
        let payload = format!(r#"{{"device":"t1","temperature":{value}}}"#);
        host.event(on_event, "sensors/t1/temperature", payload.as_bytes(), ts)
            .unwrap();
    }

    #[test]
    fn welford_matches_the_two_pass_formula() {
        let values = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0];
        let mut s = Stats::default();
        values.iter().for_each(|&v| s.update(v));
        let mean = values.iter().sum::<f64>() / 8.0;
        let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / 7.0;
        assert!((s.mean - mean).abs() < 1e-12);
        assert!((s.stddev() - var.sqrt()).abs() < 1e-12);
        assert_eq!(Stats::default().z(1.0), None);
    }

    #[test]
    fn forwards_outliers_only_after_the_baseline() {
        let mut host = host();
        // An early spike: not enough samples to judge, nothing forwarded.
        for (i, v) in [21.0, 21.5, 20.5, 21.0, 50.0].into_iter().enumerate() {
            reading(&mut host, v, i as i64);
        }
        assert!(host.forwarded().is_empty());
        for i in 0..20 {
            reading(&mut host, 21.0 + (i % 3) as f64 * 0.5, 10 + i);
        }
        assert!(host.forwarded().is_empty(), "{:?}", host.forwarded());
        reading(&mut host, 80.0, 99);
        assert_eq!(host.forwarded().len(), 1);
        let record = &host.forwarded()[0];
        assert_eq!(record.topic, "anomalies");
        assert!(
            record
                .text()
                .starts_with(r#"{"device":"t1","value":80.0,"mean":"#),
            "{}",
            record.text()
        );
        assert!(
            record.text().ends_with(r#""timestamp_ms":99}"#),
            "{}",
            record.text()
        );
        // A normal reading right after is not an outlier.
        reading(&mut host, 21.0, 100);
        assert_eq!(host.forwarded().len(), 1);
    }

    #[test]
    fn statistics_live_in_state() {
        let mut host = host();
        let stats = Stats {
            n: 100,
            mean: 20.0,
            m2: 99.0, // stddev 1
        };
        host.set_state(
            "stats/t1",
            serde_json::to_string(&stats).unwrap().as_bytes(),
        );
        reading(&mut host, 23.5, 1);
        assert_eq!(host.forwarded().len(), 1);
        let z: serde_json::Value = serde_json::from_slice(&host.forwarded()[0].payload).unwrap();
        assert_eq!(z["z"], 3.5);
        let after: Stats = serde_json::from_str(host.state_text("stats/t1").unwrap()).unwrap();
        assert_eq!(after.n, 101);
    }
}
