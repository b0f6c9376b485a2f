//! `unit-convert`: re-publishes Fahrenheit readings in Celsius.
//!
//! In: `sensors/<device>/temperature_f` with `98.6` or
//! `{"device":"t1","temperature":98.6}` (`device` optional: the topic's
//! second level is used without it).
//! Out: `sensors/<device>/temperature_c` with
//! `{"device":"t1","temperature":37.0}`, rounded to config `decimals` [2].
// Tests run natively with std; the module itself never links it.
#![cfg_attr(not(test), no_std)]

use perch_sdk::heapless::String;
use perch_sdk::{json, math, Context, Error, Event};

/// °F to °C.
pub fn fahrenheit_to_celsius(f: f64) -> f64 {
    (f - 32.0) * 5.0 / 9.0
}

/// Handles one reading.
pub fn on_event(ctx: &Context, event: &Event) -> Result<(), Error> {
    // A bare number or an object.
    let (device, fahrenheit) = match json::number(event.payload) {
        Ok(fahrenheit) => (None, fahrenheit),
        Err(_) => {
            let [device, temperature] = event.fields(["device", "temperature"])?;
            (device.opt_str()?, temperature.f64()?)
        }
    };
    let decimals = ctx.config_i64_or("decimals", 2)?.clamp(0, 15) as u32;
    let device = device.or(event.topic_level(1)).unwrap_or("unknown");
    let celsius = math::round_to(fahrenheit_to_celsius(fahrenheit), decimals);

    let base = event.topic.strip_suffix("_f").unwrap_or(event.topic);
    let mut topic: String<256> = String::new();
    topic.push_str(base).map_err(|_| Error::Encode)?;
    topic.push_str("_c").map_err(|_| Error::Encode)?;
    let mut buf = [0u8; 512];
    let mut out = json::Object::new(&mut buf);
    out.str("device", device).f64("temperature", celsius);
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

    #[test]
    fn converts() {
        assert_eq!(fahrenheit_to_celsius(32.0), 0.0);
        assert_eq!(fahrenheit_to_celsius(212.0), 100.0);
        assert_eq!(fahrenheit_to_celsius(-40.0), -40.0);
    }

    #[test]
    fn republishes_objects_and_bare_numbers_in_celsius() {
        let mut host = host();
        host.event(
            on_event,
            "sensors/t1/temperature_f",
            br#"{"device":"t1","temperature":98.6}"#,
            1,
        )
        .unwrap();
        host.event(on_event, "sensors/porch/temperature_f", b"-40", 2)
            .unwrap();
        let out: Vec<_> = host
            .published()
            .iter()
            .map(|m| (m.topic.as_str(), m.text()))
            .collect();
        assert_eq!(
            out,
            [
                (
                    "sensors/t1/temperature_c",
                    r#"{"device":"t1","temperature":37.0}"#
                ),
                (
                    "sensors/porch/temperature_c",
                    r#"{"device":"porch","temperature":-40.0}"#
                ),
            ]
        );
    }

    #[test]
    fn rounds_to_the_configured_decimals() {
        let mut host = host().with_config("decimals", "0");
        host.event(on_event, "sensors/t1/temperature_f", b"100", 1)
            .unwrap();
        assert_eq!(
            host.published()[0].text(),
            r#"{"device":"t1","temperature":38.0}"#
        );
    }

    #[test]
    fn refuses_what_is_not_a_reading() {
        let mut host = host();
        assert_eq!(
            host.event(on_event, "sensors/t1/temperature_f", b"\"warm\"", 1),
            Err(Error::Payload)
        );
        assert!(host.published().is_empty());
    }

    #[test]
    fn publishing_outside_the_allow_list_is_denied() {
        // The manifest allows only `*_c` topics under sensors/.
        let mut host = host();
        assert_eq!(
            host.event(on_event, "other/t1/temperature_f", b"1", 1),
            Err(Error::Denied)
        );
    }
}
