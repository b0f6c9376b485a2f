//! `threshold-alert`: publishes an alert when a temperature reading is above
//! the `limit` from config.
//!
//! In: `sensors/<device>/temperature` with `{"device":"t1","temperature":31.5}`
//! (`device` optional: the topic's second level is used without it).
//! Out: `alerts/<device>/temperature` with
//! `{"device":"t1","temperature":31.5,"limit":30.0}`, for every reading above
//! the limit. The C example in `sdk/examples/c-threshold/` does the same.
//!
//! It reads the payload and writes the alert with `perch_sdk::json` (the
//! lean path for a few fields: no serde, less than half the fuel) and reads
//! the limit with `config_f64`, which asks the host once per instance.
// Tests run natively with std; the module itself never links it.
#![cfg_attr(not(test), no_std)]

use perch_sdk::{json, Context, Error, Event};

/// Handles one reading.
pub fn on_event(ctx: &Context, event: &Event) -> Result<(), Error> {
    let [device, temperature] = event.fields(["device", "temperature"])?;
    let (device, temperature) = (device.opt_str()?, temperature.f64()?);
    let limit = ctx.config_f64("limit")?;
    if temperature <= limit {
        return Ok(());
    }
    let device = device.or(event.topic_level(1)).unwrap_or("unknown");
    let mut topic: perch_sdk::heapless::String<128> = perch_sdk::heapless::String::new();
    for part in ["alerts/", device, "/temperature"] {
        topic.push_str(part).map_err(|_| Error::Encode)?;
    }
    let mut buf = [0u8; 256];
    let mut alert = json::Object::new(&mut buf);
    alert
        .str("device", device)
        .f64("temperature", temperature)
        .f64("limit", limit);
    ctx.publish(&topic, alert.finish()?)
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
    fn alerts_above_the_limit_only() {
        let mut host = host();
        let topic = "sensors/t1/temperature";
        host.event(on_event, topic, br#"{"device":"t1","temperature":31.5}"#, 1)
            .unwrap();
        host.event(on_event, topic, br#"{"device":"t1","temperature":30.0}"#, 2)
            .unwrap();
        host.event(on_event, topic, br#"{"device":"t1","temperature":12}"#, 3)
            .unwrap();
        assert_eq!(host.published().len(), 1);
        let alert = &host.published()[0];
        assert_eq!(alert.topic, "alerts/t1/temperature");
        assert_eq!(
            alert.text(),
            r#"{"device":"t1","temperature":31.5,"limit":30.0}"#
        );
    }

    #[test]
    fn device_defaults_to_the_topic_level() {
        let mut host = host().with_config("limit", "0");
        host.event(
            on_event,
            "sensors/kitchen/temperature",
            br#"{"temperature":1}"#,
            1,
        )
        .unwrap();
        assert_eq!(host.published()[0].topic, "alerts/kitchen/temperature");
        assert_eq!(
            host.published()[0].text(),
            r#"{"device":"kitchen","temperature":1.0,"limit":0.0}"#
        );
    }

    #[test]
    fn refuses_payloads_it_cannot_read() {
        let mut host = host();
        for bad in [
            &b"31.5"[..],
            b"{\"temp\":31.5}",
            b"not json",
            b"",
            br#"{"temperature":"31.5"}"#,
            br#"{"device":5,"temperature":31.5}"#,
            br#"{"temperature":31.5,"temperature":32}"#,
            br#"{"temperature":31.5"#,
        ] {
            assert_eq!(
                host.event(on_event, "sensors/t1/temperature", bad, 1),
                Err(Error::Payload)
            );
        }
        assert!(host.published().is_empty());
    }

    #[test]
    fn reads_the_limit_once_per_instance() {
        let mut host = host();
        for t in ["12", "31.5", "29.99", "30.01"] {
            let payload = format!(r#"{{"device":"t1","temperature":{t}}}"#);
            host.event(on_event, "sensors/t1/temperature", payload.as_bytes(), 1)
                .unwrap();
        }
        assert_eq!(host.config_reads(), 1);
        let alerts: Vec<_> = host.published().iter().map(|m| m.text()).collect();
        assert_eq!(
            alerts,
            [
                r#"{"device":"t1","temperature":31.5,"limit":30.0}"#,
                r#"{"device":"t1","temperature":30.01,"limit":30.0}"#
            ]
        );
    }

    #[test]
    fn needs_a_numeric_limit() {
        let payload = br#"{"temperature":31.5}"#;
        let mut host = TestHost::new();
        assert_eq!(
            host.event(on_event, "sensors/t1/temperature", payload, 1),
            Err(Error::NotFound)
        );
        let mut host = TestHost::new().with_config("limit", "hot");
        assert_eq!(
            host.event(on_event, "sensors/t1/temperature", payload, 1),
            Err(Error::Config)
        );
    }
}
