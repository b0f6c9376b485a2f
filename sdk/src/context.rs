//! What a handler sees: the [`Event`] it was called for and the [`Context`]
//! through which it reaches the host.

use core::fmt::{self, Write as _};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::config_cache::{Cached, ConfigValue};
use crate::{json, sys, Error};

/// Bytes of the stack buffer behind [`Context::publish_json`],
/// [`Context::forward_json`] and [`Context::state_set_json`]. Larger outputs:
/// serialize into your own buffer and call the byte-slice variant.
pub const JSON_OUT_MAX: usize = 1024;

/// Bytes of the stack buffer behind [`Context::state_get_json`].
pub const JSON_STATE_MAX: usize = 1024;

/// Bytes a config value may have for the typed `config_*` helpers.
pub const CONFIG_VALUE_MAX: usize = 128;

/// Bytes of a formatted log line ([`Context::log_fmt`], [`crate::info!`] and
/// friends); longer lines are cut at this length.
pub const LOG_LINE_MAX: usize = 256;

/// One MQTT message that matched one of the function's `triggers.topics`.
///
/// Borrowed from the event buffer: valid for the handler call only.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Event<'a> {
    /// The topic it was published to (never a filter: no `+` or `#`).
    pub topic: &'a str,
    /// The payload as the sensor sent it.
    pub payload: &'a [u8],
    /// When the gateway received it, milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
}

impl<'a> Event<'a> {
    /// An event, as the host would deliver it. For tests.
    pub const fn new(topic: &'a str, payload: &'a [u8], timestamp_ms: i64) -> Self {
        Event {
            topic,
            payload,
            timestamp_ms,
        }
    }

    /// Parses the payload as JSON into `T`, which may borrow from it
    /// (`&'a str` fields work for strings without escapes).
    pub fn json<T: Deserialize<'a>>(&self) -> Result<T, Error> {
        serde_json_core::from_slice(self.payload)
            .map(|(value, _)| value)
            .map_err(|_| Error::Payload)
    }

    /// Finds top-level fields of the JSON payload in one pass, without serde
    /// (see [`crate::json`]): the lean way to read a few fields of a reading.
    ///
    /// ```
    /// # use perch_sdk::{Error, Event};
    /// let event = Event::new("sensors/t1/temperature", br#"{"temperature":21.5}"#, 0);
    /// let [device, temperature] = event.fields(["device", "temperature"])?;
    /// assert_eq!(device.opt_str()?, None);
    /// assert_eq!(temperature.f64()?, 21.5);
    /// # Ok::<(), Error>(())
    /// ```
    pub fn fields<const N: usize>(&self, names: [&str; N]) -> Result<[json::Field<'a>; N], Error> {
        json::fields(self.payload, names)
    }

    /// One top-level field of the JSON payload; see [`Event::fields`].
    pub fn field(&self, name: &str) -> Result<json::Field<'a>, Error> {
        json::field(self.payload, name)
    }

    /// The payload as UTF-8 text.
    pub fn payload_str(&self) -> Result<&'a str, Error> {
        core::str::from_utf8(self.payload).map_err(|_| Error::Payload)
    }

    /// The topic level at `index` (0-based): for `sensors/t1/temperature`,
    /// `topic_level(1)` is `Some("t1")`.
    pub fn topic_level(&self, index: usize) -> Option<&'a str> {
        // What `self.topic.split('/').nth(index)` gives, in one plain loop
        // over the bytes (core's `Split` costs a guest several times more).
        let bytes = self.topic.as_bytes();
        let (mut level, mut start) = (0, 0);
        for (i, &c) in bytes.iter().enumerate() {
            if c == b'/' {
                if level == index {
                    return self.topic.get(start..i);
                }
                level += 1;
                start = i + 1;
            }
        }
        if level == index {
            self.topic.get(start..)
        } else {
            None
        }
    }
}

/// Severity of a [`Context::log`] line; the values are the ABI's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(i32)]
pub enum Level {
    /// `0`
    Error = 0,
    /// `1`
    Warn = 1,
    /// `2`
    Info = 2,
    /// `3`
    Debug = 3,
    /// `4`
    Trace = 4,
}

impl Level {
    /// The level an ABI value stands for.
    pub const fn from_i32(level: i32) -> Option<Level> {
        Some(match level {
            0 => Level::Error,
            1 => Level::Warn,
            2 => Level::Info,
            3 => Level::Debug,
            4 => Level::Trace,
            _ => return None,
        })
    }
}

/// The handler's way to the host: outputs, state, config, log and clock.
///
/// A `Context` is handed to every handler by the code [`crate::function!`]
/// generates; it holds nothing and costs nothing to pass around. It cannot be
/// created elsewhere in a guest, so host calls happen only inside a handler,
/// where the host expects them. Native tests get one from
/// [`crate::testing::TestHost::run`].
#[derive(Debug)]
pub struct Context {
    _only_from_handlers: (),
}

impl Context {
    pub(crate) const fn new() -> Self {
        Context {
            _only_from_handlers: (),
        }
    }

    /// Publishes `payload` to `topic` on the gateway's broker (QoS 0, not
    /// retained). The topic must match the manifest's `publish.allow`
    /// ([`Error::Denied`] otherwise).
    pub fn publish(&self, topic: &str, payload: &[u8]) -> Result<(), Error> {
        Error::check(sys::publish(topic.as_bytes(), payload))
    }

    /// Publishes `value` serialized as JSON (at most [`JSON_OUT_MAX`] bytes).
    pub fn publish_json<T: Serialize + ?Sized>(&self, topic: &str, value: &T) -> Result<(), Error> {
        let mut buf = [0u8; JSON_OUT_MAX];
        let len = to_json(value, &mut buf)?;
        self.publish(topic, &buf[..len])
    }

    /// Feeds `value` to the aggregator's windows for `metric`.
    pub fn emit(&self, metric: &str, value: f64) -> Result<(), Error> {
        Error::check(sys::emit(metric.as_bytes(), &[], value))
    }

    /// Feeds `value` to the aggregator's windows for `metric`, one window per
    /// `key` (a device id, say). An empty key is the same as [`Context::emit`].
    pub fn emit_keyed(&self, metric: &str, key: &str, value: f64) -> Result<(), Error> {
        Error::check(sys::emit(metric.as_bytes(), key.as_bytes(), value))
    }

    /// Like [`Context::emit_keyed`], with the reading's own time
    /// (`timestamp_ms`, Unix milliseconds, read from the reading): the value
    /// counts in the window of that time (event time), even when the
    /// reading arrives late or out of order, as long as the window's grace
    /// (`aggregate.grace_ms`) has not passed. A value whose window was
    /// already written is counted as late, not merged.
    pub fn emit_at(
        &self,
        metric: &str,
        key: &str,
        value: f64,
        timestamp_ms: i64,
    ) -> Result<(), Error> {
        Error::check(sys::emit_at(
            metric.as_bytes(),
            key.as_bytes(),
            value,
            timestamp_ms,
        ))
    }

    /// Appends `record` to the store-and-forward buffer for upstream, in
    /// order within `stream`.
    pub fn forward(&self, stream: &str, record: &[u8]) -> Result<(), Error> {
        Error::check(sys::forward(stream.as_bytes(), record))
    }

    /// Forwards `value` serialized as JSON (at most [`JSON_OUT_MAX`] bytes).
    pub fn forward_json<T: Serialize + ?Sized>(
        &self,
        stream: &str,
        value: &T,
    ) -> Result<(), Error> {
        let mut buf = [0u8; JSON_OUT_MAX];
        let len = to_json(value, &mut buf)?;
        self.forward(stream, &buf[..len])
    }

    /// Reads state `key` into `out`: `Ok(None)` if the key is absent,
    /// [`Error::TooLarge`] (with the value's length) if it does not fit.
    pub fn state_get<'b>(&self, key: &str, out: &'b mut [u8]) -> Result<Option<&'b [u8]>, Error> {
        match fill(sys::state_get(key.as_bytes(), out), out) {
            Err(Error::NotFound) => Ok(None),
            other => other.map(Some),
        }
    }

    /// Writes state `key` (≤ 256 bytes) = `value` (≤ 64 KiB). It outlives the
    /// instance: restarts and redeploys of the same function name keep it.
    pub fn state_set(&self, key: &str, value: &[u8]) -> Result<(), Error> {
        Error::check(sys::state_set(key.as_bytes(), value))
    }

    /// Removes state `key`; `Ok(false)` if it was not there.
    pub fn state_delete(&self, key: &str) -> Result<bool, Error> {
        match Error::check(sys::state_delete(key.as_bytes())) {
            Ok(()) => Ok(true),
            Err(Error::NotFound) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// Reads state `key` as JSON (at most [`JSON_STATE_MAX`] bytes);
    /// `Ok(None)` if absent. A value that is not `T`'s JSON is
    /// [`Error::Payload`].
    pub fn state_get_json<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Error> {
        let mut buf = [0u8; JSON_STATE_MAX];
        match self.state_get(key, &mut buf)? {
            None => Ok(None),
            Some(bytes) => serde_json_core::from_slice(bytes)
                .map(|(value, _)| Some(value))
                .map_err(|_| Error::Payload),
        }
    }

    /// Writes state `key` as JSON (at most [`JSON_OUT_MAX`] bytes).
    pub fn state_set_json<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<(), Error> {
        let mut buf = [0u8; JSON_OUT_MAX];
        let len = to_json(value, &mut buf)?;
        self.state_set(key, &buf[..len])
    }

    /// Reads config `key` (the manifest's `[config]`, as text: numbers and
    /// booleans in their TOML spelling) into `out`. A missing key is
    /// [`Error::NotFound`]; a value longer than `out` is [`Error::TooLarge`].
    pub fn config_get<'b>(&self, key: &str, out: &'b mut [u8]) -> Result<&'b str, Error> {
        let bytes = fill(sys::config_get(key.as_bytes(), out), out)?;
        core::str::from_utf8(bytes).map_err(|_| Error::Config)
    }

    /// Config `key` as text, copied into a `heapless::String` of capacity `N`.
    pub fn config_str<const N: usize>(&self, key: &str) -> Result<heapless::String<N>, Error> {
        let mut buf = [0u8; N];
        let text = self.config_get(key, &mut buf)?;
        heapless::String::try_from(text).map_err(|_| Error::TooLarge { needed: text.len() })
    }

    /// Config `key` as a number (`30`, `30.0`, `-1.5e3`).
    ///
    /// The typed `config_*` helpers ask the host once per instance and keep
    /// the value (config is fixed for an instance's life), so calling them
    /// on every event costs a lookup, not a host call and a parse.
    pub fn config_f64(&self, key: &str) -> Result<f64, Error> {
        self.config_parsed(key)
    }

    /// Config `key` as a number, or `default` if the manifest does not set it.
    pub fn config_f64_or(&self, key: &str, default: f64) -> Result<f64, Error> {
        or_default(self.config_f64(key), default)
    }

    /// Config `key` as an integer.
    pub fn config_i64(&self, key: &str) -> Result<i64, Error> {
        self.config_parsed(key)
    }

    /// Config `key` as an integer, or `default` if the manifest does not set it.
    pub fn config_i64_or(&self, key: &str, default: i64) -> Result<i64, Error> {
        or_default(self.config_i64(key), default)
    }

    /// Config `key` as a boolean (`true` / `false`).
    pub fn config_bool(&self, key: &str) -> Result<bool, Error> {
        self.config_parsed(key)
    }

    /// Config `key` as a boolean, or `default` if the manifest does not set it.
    pub fn config_bool_or(&self, key: &str, default: bool) -> Result<bool, Error> {
        or_default(self.config_bool(key), default)
    }

    /// A typed config value, fetched and parsed once per instance (config is
    /// fixed for an instance's life; see `config_cache`).
    fn config_parsed<T: ConfigValue>(&self, key: &str) -> Result<T, Error> {
        if let Some(cached) = sys::with_config_cache(|c| c.get(key.as_bytes(), T::accepts)) {
            return T::from_cached(&cached).ok_or(Error::NotFound);
        }
        let mut buf = [0u8; CONFIG_VALUE_MAX];
        let text = match self.config_get(key, &mut buf) {
            // Too long to be a number or a boolean.
            Err(Error::TooLarge { .. }) => return Err(Error::Config),
            Err(Error::NotFound) => {
                sys::with_config_cache(|c| c.put(key.as_bytes(), Cached::Missing));
                return Err(Error::NotFound);
            }
            other => other?,
        };
        let value = T::parse(text.trim()).ok_or(Error::Config)?;
        sys::with_config_cache(|c| c.put(key.as_bytes(), value.to_cached()));
        Ok(value)
    }

    /// Writes `msg` to the gateway's log, tagged with the function's name.
    pub fn log(&self, level: Level, msg: &str) {
        sys::log(level as i32, msg.as_bytes());
    }

    /// Formats and logs a line of at most [`LOG_LINE_MAX`] bytes (longer
    /// ones are cut). The [`crate::info!`] family of macros calls this.
    pub fn log_fmt(&self, level: Level, args: fmt::Arguments<'_>) {
        let mut line = Truncating(heapless::String::new());
        // Truncating never fails; a failing Display impl just ends the line.
        let _ = line.write_fmt(args);
        self.log(level, &line.0);
    }

    /// Wall-clock milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> i64 {
        sys::now_ms()
    }
}

/// Serializes `value` into `buf`, returning the length.
fn to_json<T: Serialize + ?Sized>(value: &T, buf: &mut [u8]) -> Result<usize, Error> {
    serde_json_core::to_slice(value, buf).map_err(|_| Error::Encode)
}

/// Maps a length-returning host call to the filled part of `out`.
fn fill(status: i32, out: &[u8]) -> Result<&[u8], Error> {
    let len = Error::check_len(status)?;
    if len > out.len() {
        return Err(Error::TooLarge { needed: len });
    }
    Ok(&out[..len])
}

fn or_default<T>(value: Result<T, Error>, default: T) -> Result<T, Error> {
    match value {
        Err(Error::NotFound) => Ok(default),
        other => other,
    }
}

/// A `fmt::Write` that keeps what fits and drops the rest.
struct Truncating(heapless::String<LOG_LINE_MAX>);

impl fmt::Write for Truncating {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            if self.0.push(c).is_err() {
                break;
            }
        }
        Ok(())
    }
}

/// Logs a formatted line at `error` level: `error!(ctx, "bad {}", x)`.
#[macro_export]
macro_rules! error {
    ($ctx:expr, $($arg:tt)+) => { $ctx.log_fmt($crate::Level::Error, format_args!($($arg)+)) };
}

/// Logs a formatted line at `warn` level: `warn!(ctx, "odd {}", x)`.
#[macro_export]
macro_rules! warn {
    ($ctx:expr, $($arg:tt)+) => { $ctx.log_fmt($crate::Level::Warn, format_args!($($arg)+)) };
}

/// Logs a formatted line at `info` level: `info!(ctx, "got {}", x)`.
#[macro_export]
macro_rules! info {
    ($ctx:expr, $($arg:tt)+) => { $ctx.log_fmt($crate::Level::Info, format_args!($($arg)+)) };
}

/// Logs a formatted line at `debug` level: `debug!(ctx, "x = {}", x)`.
#[macro_export]
macro_rules! debug {
    ($ctx:expr, $($arg:tt)+) => { $ctx.log_fmt($crate::Level::Debug, format_args!($($arg)+)) };
}

/// Logs a formatted line at `trace` level: `trace!(ctx, "x = {}", x)`.
#[macro_export]
macro_rules! trace {
    ($ctx:expr, $($arg:tt)+) => { $ctx.log_fmt($crate::Level::Trace, format_args!($($arg)+)) };
}

#[cfg(test)]
mod tests {
    use super::Event;

    #[test]
    fn topic_level_is_split_nth() {
        for topic in [
            "",
            "/",
            "a",
            "a/",
            "/a",
            "a/b",
            "a//b",
            "sensors/t1/temperature",
            "é/ü/x",
            "a/b/c/",
        ] {
            let event = Event::new(topic, b"", 0);
            for index in 0..6 {
                assert_eq!(
                    event.topic_level(index),
                    topic.split('/').nth(index),
                    "{topic:?} {index}"
                );
            }
        }
    }
}
