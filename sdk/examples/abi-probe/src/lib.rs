//! `abi-probe`: calls every host import of `ABI.md` and has every export, so
//! a host (or the checker in `sdk/tests/abi.rs`) can see the whole ABI in one
//! module. Not a useful function; a test fixture for runtimes.
//!
//! - `perch_init`: logs `abi-probe: init` at info.
//! - `perch_on_event` (`probe/in/#`): counts events in state key `count`
//!   (JSON number; a payload of exactly `reset` deletes it instead), then
//!   publishes the payload to `probe/echo`, publishes
//!   `{"count":N,"greeting":G,"now_ms":T,"timestamp_ms":E,"topic":"..."}` to
//!   `probe/info` (`G` = config `greeting`, default `hello`), emits
//!   `probe.events` = 1, `probe.bytes` (keyed by topic) = payload length,
//!   and `probe.at` = 1 at the event's own timestamp (`emit_at`),
//!   forwards the payload to stream `probe`, and logs at debug.
//! - `perch_on_timer`: publishes `{"timestamp_ms":T}` to `probe/tick`.
//! - `perch_migrate`: logs `abi-probe: migrate from <version>` at info and
//!   keeps the state as it is (its `count` is in every version's format).
// Tests run natively with std; the module itself never links it.
#![cfg_attr(not(test), no_std)]

use perch_sdk::{Context, Error, Event, Level};
use serde::Serialize;

#[derive(Serialize)]
struct Info<'a> {
    count: u64,
    greeting: &'a str,
    now_ms: i64,
    timestamp_ms: i64,
    topic: &'a str,
}

#[derive(Serialize)]
struct Tick {
    timestamp_ms: i64,
}

/// Logs that the instance started.
pub fn init(ctx: &Context) -> Result<(), Error> {
    ctx.log(Level::Info, "abi-probe: init");
    Ok(())
}

/// Calls every import once (see the crate docs for what it does).
pub fn on_event(ctx: &Context, event: &Event) -> Result<(), Error> {
    let count = if event.payload == b"reset" {
        ctx.state_delete("count")?;
        0
    } else {
        let count = ctx.state_get_json::<u64>("count")?.unwrap_or(0) + 1;
        ctx.state_set_json("count", &count)?;
        count
    };
    let greeting = match ctx.config_str::<64>("greeting") {
        Err(Error::NotFound) => {
            perch_sdk::heapless::String::try_from("hello").map_err(|_| Error::Encode)?
        }
        other => other?,
    };
    ctx.publish("probe/echo", event.payload)?;
    ctx.publish_json(
        "probe/info",
        &Info {
            count,
            greeting: &greeting,
            now_ms: ctx.now_ms(),
            timestamp_ms: event.timestamp_ms,
            topic: event.topic,
        },
    )?;
    ctx.emit("probe.events", 1.0)?;
    ctx.emit_keyed("probe.bytes", event.topic, event.payload.len() as f64)?;
    ctx.emit_at("probe.at", "", 1.0, event.timestamp_ms)?;
    ctx.forward("probe", event.payload)?;
    perch_sdk::debug!(ctx, "abi-probe: event {} on {}", count, event.topic);
    Ok(())
}

/// Publishes the tick's timestamp.
pub fn migrate(ctx: &Context, from_version: &str) -> Result<(), Error> {
    ctx.log_fmt(
        Level::Info,
        format_args!("abi-probe: migrate from {from_version}"),
    );
    Ok(())
}

pub fn on_timer(ctx: &Context, timestamp_ms: i64) -> Result<(), Error> {
    ctx.publish_json("probe/tick", &Tick { timestamp_ms })
}

perch_sdk::function! {
    on_event: on_event,
    on_timer: on_timer,
    init: init,
    migrate: migrate,
}

#[cfg(test)]
mod tests {
    use super::*;
    use perch_sdk::testing::TestHost;

    #[test]
    fn calls_every_import() {
        let mut host = TestHost::from_manifest(include_str!("../manifest.toml")).unwrap();
        host.set_now_ms(7);
        host.init(init).unwrap();
        host.event(on_event, "probe/in/a", b"xy", 5).unwrap();
        host.event(on_event, "probe/in/a", b"xyz", 6).unwrap();
        assert_eq!(host.state_text("count"), Some("2"));
        let texts: Vec<_> = host
            .published()
            .iter()
            .map(|m| (m.topic.as_str(), m.text()))
            .collect();
        assert_eq!(texts[0], ("probe/echo", "xy"));
        assert_eq!(
            texts[3],
            (
                "probe/info",
                r#"{"count":2,"greeting":"hi there","now_ms":7,"timestamp_ms":6,"topic":"probe/in/a"}"#
            )
        );
        assert_eq!(host.emitted().len(), 6);
        assert_eq!(host.emitted()[1].key.as_deref(), Some("probe/in/a"));
        assert_eq!(host.emitted()[1].value, 2.0);
        assert_eq!(host.emitted()[2].at_ms, Some(5));
        assert_eq!(host.forwarded()[1].text(), "xyz");
        assert_eq!(host.logs()[0].message, "abi-probe: init");
        assert_eq!(host.logs()[2].message, "abi-probe: event 2 on probe/in/a");

        host.event(on_event, "probe/in/a", b"reset", 8).unwrap();
        assert_eq!(host.state("count"), None);
        host.timer(on_timer, 9).unwrap();
        assert_eq!(
            host.published().last().unwrap().text(),
            r#"{"timestamp_ms":9}"#
        );
    }
}
