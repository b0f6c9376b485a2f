//! `event-stats`: counts the events on `sensors/#` and publishes the running
//! count, keeping it in state; an example of a version that changes its
//! state's format and converts what the version before left
//! (`perch_migrate`, sdk/ABI.md).
//!
//! State, 2.x: `stats` = `{"events":42,"last_ms":1700000000000}`.
//! State, 1.x (what `migrate` converts): `total` = the count as decimal
//! text, e.g. `42`.
//! Out: `stats/events` with the 2.x `stats` value after each event.
//!
//! The ABI has no call that lists keys, so a migration converts the keys it
//! knows by name; a state it already converted (or a fresh one) is left as
//! it is, so running it twice is harmless.
// Tests run natively with std; the module itself never links it.
#![cfg_attr(not(test), no_std)]

use perch_sdk::{Context, Error, Event, Level};
use serde::{Deserialize, Serialize};

/// The 2.x state.
#[derive(Serialize, Deserialize, Default, Debug, PartialEq)]
pub struct Stats {
    pub events: u64,
    pub last_ms: i64,
}

/// Converts 1.x's `total` (decimal text) into 2.x's `stats`.
pub fn migrate(ctx: &Context, from_version: &str) -> Result<(), Error> {
    let mut buf = [0u8; 32];
    let Some(total) = ctx.state_get("total", &mut buf)? else {
        // Nothing of 1.x's: a fresh state, or converted already.
        return Ok(());
    };
    let events = core::str::from_utf8(total)
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok())
        .ok_or(Error::Payload)?;
    ctx.state_set_json("stats", &Stats { events, last_ms: 0 })?;
    ctx.state_delete("total")?;
    ctx.log_fmt(
        Level::Info,
        format_args!("migrated {events} events from the state of {from_version}"),
    );
    Ok(())
}

/// Counts one event.
pub fn on_event(ctx: &Context, event: &Event) -> Result<(), Error> {
    let mut stats: Stats = ctx.state_get_json("stats")?.unwrap_or_default();
    stats.events += 1;
    stats.last_ms = event.timestamp_ms;
    ctx.state_set_json("stats", &stats)?;
    let mut buf = [0u8; 128];
    let mut out = perch_sdk::json::Object::new(&mut buf);
    out.u64("events", stats.events)
        .i64("last_ms", stats.last_ms);
    ctx.publish("stats/events", out.finish()?)
}

perch_sdk::function! {
    on_event: on_event,
    migrate: migrate,
    event_buffer: 1024,
}

#[cfg(test)]
mod tests {
    use super::*;
    use perch_sdk::testing::TestHost;

    fn host() -> TestHost {
        TestHost::from_manifest(include_str!("../manifest.toml")).unwrap()
    }

    #[test]
    fn the_count_of_1x_carries_over_and_the_old_key_goes() {
        let mut host = host();
        host.set_state("total", b"41");
        host.migrate(migrate, "1.3.0").unwrap();
        assert_eq!(host.state("total"), None);
        assert_eq!(
            host.state_text("stats"),
            Some(r#"{"events":41,"last_ms":0}"#)
        );
        host.event(on_event, "sensors/a", b"{}", 7).unwrap();
        assert_eq!(host.published()[0].text(), r#"{"events":42,"last_ms":7}"#);
    }

    #[test]
    fn a_fresh_or_converted_state_is_left_alone() {
        let mut host = host();
        host.migrate(migrate, "1.0.0").unwrap();
        assert_eq!(host.state("stats"), None);
        host.set_state("stats", br#"{"events":3,"last_ms":1}"#);
        host.migrate(migrate, "2.0.0").unwrap();
        assert_eq!(
            host.state_text("stats"),
            Some(r#"{"events":3,"last_ms":1}"#)
        );
    }

    #[test]
    fn a_1x_count_that_is_not_a_number_fails_the_migration() {
        let mut host = host();
        host.set_state("total", b"many");
        assert_eq!(host.migrate(migrate, "1.0.0"), Err(Error::Payload));
        assert_eq!(host.state_text("total"), Some("many"), "left as it was");
    }
}
