//! `moving-average`: publishes the average of each device's last `window`
//! readings, keeping the window in state (so it survives restarts).
//!
//! In: `sensors/<device>/temperature` with `{"device":"t1","temperature":21.5}`
//! (`device` optional: the topic's second level is used without it).
//! Out: `averages/<device>/temperature` with
//! `{"device":"t1","average":21.25,"samples":2}`, and the raw reading emitted
//! as metric `temperature` keyed by device, for the aggregator's windows.
//! State: `window/<device>` = `{"values":[...]}`, oldest first.
//! Config: `window` (1..=32) [10].
// Tests run natively with std; the module itself never links it.
#![cfg_attr(not(test), no_std)]

use perch_sdk::heapless::{String, Vec};
use perch_sdk::{json, math, Context, Error, Event};
use serde::{Deserialize, Serialize};

/// The most readings a window can hold (what one state value stores).
pub const WINDOW_MAX: usize = 32;

/// The last readings of one device, oldest first.
#[derive(Serialize, Deserialize, Default, Debug, PartialEq)]
pub struct Window {
    values: Vec<f64, WINDOW_MAX>,
}

impl Window {
    /// Adds `value`, dropping the oldest readings beyond `size`.
    pub fn push(&mut self, value: f64, size: usize) {
        let size = size.clamp(1, WINDOW_MAX);
        while self.values.len() >= size {
            self.values.remove(0);
        }
        // Cannot fail: there is room after the loop.
        let _ = self.values.push(value);
    }

    /// The mean of the readings (0 when empty).
    pub fn average(&self) -> f64 {
        if self.values.is_empty() {
            return 0.0;
        }
        self.values.iter().sum::<f64>() / self.values.len() as f64
    }
}

fn key<const N: usize>(prefix: &str, device: &str, suffix: &str) -> Result<String<N>, Error> {
    let mut key = String::new();
    for part in [prefix, device, suffix] {
        key.push_str(part).map_err(|_| Error::Encode)?;
    }
    Ok(key)
}

/// Handles one reading.
pub fn on_event(ctx: &Context, event: &Event) -> Result<(), Error> {
    let [device, temperature] = event.fields(["device", "temperature"])?;
    let (device, temperature) = (device.opt_str()?, temperature.f64()?);
    let device = device.or(event.topic_level(1)).unwrap_or("unknown");
    let size = ctx.config_i64_or("window", 10)?;
    if !(1..=WINDOW_MAX as i64).contains(&size) {
        return Err(Error::Config);
    }

    let state_key: String<256> = key("window/", device, "")?;
    let mut window: Window = ctx.state_get_json(&state_key)?.unwrap_or_default();
    window.push(temperature, size as usize);
    ctx.state_set_json(&state_key, &window)?;

    ctx.emit_keyed("temperature", device, temperature)?;
    let topic: String<256> = key("averages/", device, "/temperature")?;
    let mut buf = [0u8; 512];
    let mut out = json::Object::new(&mut buf);
    out.str("device", device)
        .f64("average", math::round_to(window.average(), 3))
        .u64("samples", window.values.len() as u64);
    ctx.publish(&topic, out.finish()?)
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

    fn reading(host: &mut TestHost, device: &str, value: f64) {
        let payload = format!(r#"{{"temperature":{value}}}"#);
        host.event(
            on_event,
            &format!("sensors/{device}/temperature"),
            payload.as_bytes(),
            0,
        )
        .unwrap();
    }

    #[test]
    fn averages_the_last_window_per_device() {
        let mut host = host().with_config("window", "3");
        for v in [10.0, 20.0, 30.0, 40.0] {
            reading(&mut host, "a", v);
        }
        reading(&mut host, "b", 5.0);
        let last_a = &host.published()[3];
        assert_eq!(last_a.topic, "averages/a/temperature");
        assert_eq!(
            last_a.text(),
            r#"{"device":"a","average":30.0,"samples":3}"#
        );
        assert_eq!(
            host.published()[4].text(),
            r#"{"device":"b","average":5.0,"samples":1}"#
        );
        assert_eq!(
            host.state_text("window/a"),
            Some(r#"{"values":[20.0,30.0,40.0]}"#)
        );
        assert_eq!(host.emitted().len(), 5);
        assert_eq!(host.emitted()[4].key.as_deref(), Some("b"));
    }

    #[test]
    fn picks_up_the_window_from_state() {
        // As after a restart: the state is all the function remembers.
        let mut host = host();
        host.set_state("window/a", br#"{"values":[1.0,2.0]}"#);
        reading(&mut host, "a", 6.0);
        assert_eq!(
            host.published()[0].text(),
            r#"{"device":"a","average":3.0,"samples":3}"#
        );
    }

    #[test]
    fn shrinking_the_window_drops_the_oldest() {
        let mut w = Window::default();
        for v in 1..=5 {
            w.push(v as f64, 5);
        }
        w.push(6.0, 2);
        assert_eq!(w.values.as_slice(), [5.0, 6.0]);
    }

    #[test]
    fn refuses_a_window_it_cannot_keep() {
        let mut host = host().with_config("window", "33");
        let result = host.event(
            on_event,
            "sensors/a/temperature",
            br#"{"temperature":1}"#,
            0,
        );
        assert_eq!(result, Err(Error::Config));
    }

    #[test]
    fn corrupt_state_is_an_error_not_a_reset() {
        let mut host = host();
        host.set_state("window/a", b"{");
        let result = host.event(
            on_event,
            "sensors/a/temperature",
            br#"{"temperature":1}"#,
            0,
        );
        assert_eq!(result, Err(Error::Payload));
    }
}
