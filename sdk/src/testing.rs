//! An in-memory host for native tests of functions (not on wasm32).
//!
//! Off wasm32 the `perch` imports do not exist, so the SDK's host calls go to
//! the [`TestHost`] that the current thread is running a handler in. It
//! keeps state and config in maps, records every output, and applies the
//! rules of `ABI.md` that a function can observe: `publish.allow` topic
//! filters, topic names, key and value sizes, and the per-invocation output
//! byte limit, answering with the same error codes the gateway uses.
//!
//! It is a model of the gateway for unit tests of a function's logic, not a
//! replacement for running the `.wasm` in the real runtime: fuel, memory and
//! traps exist only there.
//!
//! ```
//! use perch_sdk::testing::TestHost;
//! use perch_sdk::{Context, Error, Event};
//!
//! fn on_event(ctx: &Context, event: &Event) -> Result<(), Error> {
//!     let limit = ctx.config_f64("limit")?;
//!     let value: f64 = event.json()?;
//!     if value > limit {
//!         ctx.publish("alerts/hot", event.payload)?;
//!     }
//!     Ok(())
//! }
//!
//! let mut host = TestHost::from_manifest(r#"
//!     name = "hot"
//!     version = "1.0.0"
//!     [publish]
//!     allow = ["alerts/#"]
//!     [config]
//!     limit = 30.0
//! "#).unwrap();
//! host.event(on_event, "sensors/t1/temperature", b"31.5", 1_000).unwrap();
//! host.event(on_event, "sensors/t1/temperature", b"12", 2_000).unwrap();
//! assert_eq!(host.published().len(), 1);
//! assert_eq!(host.published()[0].topic, "alerts/hot");
//! ```

extern crate std;

use std::borrow::ToOwned;
use std::boxed::Box;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::format;
use std::string::{String, ToString};
use std::vec::Vec;

use crate::config_cache::ConfigCache;
use crate::export::{self, EventBuffer, DEFAULT_EVENT_BUFFER};
use crate::{Context, Error, Event, Level};

/// Largest state key, in bytes (`ABI.md`, "State").
pub const STATE_KEY_MAX: usize = 256;
/// Largest state value, in bytes (`ABI.md`, "State").
pub const STATE_VALUE_MAX: usize = 64 * 1024;
/// Default output bytes per invocation (`ABI.md`, "Limits").
pub const OUTPUT_BYTES_DEFAULT: usize = 65_536;

/// A message a handler published (`topic`) or forwarded (`stream` in `topic`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Topic for `publish`, stream for `forward`.
    pub topic: String,
    /// The bytes as the handler passed them.
    pub payload: Vec<u8>,
}

impl Message {
    /// The payload as text; panics if it is not UTF-8 (tests only).
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.payload).expect("payload is not UTF-8")
    }
}

/// A value a handler emitted to the aggregator.
#[derive(Clone, Debug, PartialEq)]
pub struct Emitted {
    /// Metric name.
    pub metric: String,
    /// Key, if the handler used `emit_keyed` with a non-empty key.
    pub key: Option<String>,
    /// The value.
    pub value: f64,
    /// The reading's own time, if the handler used `emit_at` (event time);
    /// `None`: the gateway's clock at `emit`.
    pub at_ms: Option<i64>,
}

/// A line a handler logged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    /// Its level (an out-of-range ABI level is recorded as `Trace`).
    pub level: Level,
    /// Its text (invalid UTF-8 replaced).
    pub message: String,
}

/// The gateway's side of the ABI, in memory. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct TestHost {
    config: BTreeMap<String, String>,
    /// `None` means every topic is allowed (no manifest given).
    publish_allow: Option<Vec<String>>,
    output_bytes_max: usize,
    /// Output bytes used by the current invocation; reset by each `run`.
    output_bytes_used: usize,
    /// Typed config values read so far: what an instance keeps in memory.
    /// Emptied when the config changes ([`TestHost::with_config`]).
    config_cache: ConfigCache,
    /// How many times a handler asked for a config value (`config_get`).
    config_reads: usize,
    state: BTreeMap<Vec<u8>, Vec<u8>>,
    now_ms: i64,
    published: Vec<Message>,
    forwarded: Vec<Message>,
    emitted: Vec<Emitted>,
    logs: Vec<LogLine>,
}

impl Default for TestHost {
    fn default() -> Self {
        TestHost::new()
    }
}

std::thread_local! {
    /// The host of the handler this thread is running, if any.
    static CURRENT: RefCell<Option<TestHost>> = const { RefCell::new(None) };
}

/// Runs `f` on the current thread's host; panics outside [`TestHost::run`].
pub(crate) fn with_host<R>(f: impl FnOnce(&mut TestHost) -> R) -> R {
    CURRENT.with(|current| {
        let mut current = current.borrow_mut();
        let host = current.as_mut().expect(
            "perch-sdk: a host call ran outside TestHost::run (natively there is no gateway; \
             call handlers through TestHost::run or TestHost::event)",
        );
        f(host)
    })
}

impl TestHost {
    /// A host with no config, no state, every publish topic allowed, and the
    /// default output limit.
    pub fn new() -> Self {
        TestHost {
            config: BTreeMap::new(),
            publish_allow: None,
            output_bytes_max: OUTPUT_BYTES_DEFAULT,
            output_bytes_used: 0,
            config_cache: ConfigCache::new(),
            config_reads: 0,
            state: BTreeMap::new(),
            now_ms: 0,
            published: Vec::new(),
            forwarded: Vec::new(),
            emitted: Vec::new(),
            logs: Vec::new(),
        }
    }

    /// A host set up from a function's manifest (`ABI.md`, "Manifest"):
    /// its `[config]` values (as text, numbers and booleans in their TOML
    /// spelling), `publish.allow` and `limits.output_bytes`. Other keys are
    /// not checked here; the gateway checks them at deploy.
    pub fn from_manifest(manifest: &str) -> Result<Self, String> {
        let table: toml::Table = manifest
            .parse()
            .map_err(|e| format!("manifest is not TOML: {e}"))?;
        let mut host = TestHost::new();
        if let Some(config) = table.get("config") {
            let config = config.as_table().ok_or("`config` must be a table")?;
            for (key, value) in config {
                let text = match value {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                host.config.insert(key.clone(), text);
            }
        }
        if let Some(publish) = table.get("publish") {
            let allow = publish
                .get("allow")
                .and_then(|a| a.as_array())
                .ok_or("`publish.allow` must be an array of topic filters")?;
            let filters = allow
                .iter()
                .map(|f| f.as_str().map(ToOwned::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or("`publish.allow` must hold strings")?;
            host.publish_allow = Some(filters);
        } else {
            // The gateway allows no topic when the manifest lists none.
            host.publish_allow = Some(Vec::new());
        }
        if let Some(limit) = table.get("limits").and_then(|l| l.get("output_bytes")) {
            let limit = limit
                .as_integer()
                .ok_or("`limits.output_bytes` must be an integer")?;
            host.output_bytes_max =
                usize::try_from(limit).map_err(|_| "`limits.output_bytes` must be positive")?;
        }
        Ok(host)
    }

    /// Sets config `key` to `value` (the text the host would hand over).
    ///
    /// Like a redeploy with a new config, it also forgets the typed values
    /// the function has read so far.
    pub fn with_config(mut self, key: &str, value: &str) -> Self {
        self.config.insert(key.to_owned(), value.to_owned());
        self.config_cache = ConfigCache::new();
        self
    }

    /// How many times handlers asked this host for a config value. The
    /// SDK's typed helpers (`config_f64` and friends) ask once per key and
    /// instance, as on the gateway.
    pub fn config_reads(&self) -> usize {
        self.config_reads
    }

    pub(crate) fn config_cache(&mut self) -> &mut ConfigCache {
        &mut self.config_cache
    }

    /// Adds a `publish.allow` filter; from the first one on, topics that
    /// match none are [`Error::Denied`].
    pub fn allow_publish(mut self, filter: &str) -> Self {
        self.publish_allow
            .get_or_insert_with(Vec::new)
            .push(filter.to_owned());
        self
    }

    /// Sets the output bytes allowed per invocation (publish + forward).
    pub fn with_output_bytes(mut self, max: usize) -> Self {
        self.output_bytes_max = max;
        self
    }

    /// Sets what `now_ms` returns.
    pub fn set_now_ms(&mut self, now_ms: i64) {
        self.now_ms = now_ms;
    }

    /// Seeds or overwrites state `key`.
    pub fn set_state(&mut self, key: &str, value: &[u8]) {
        self.state.insert(key.as_bytes().to_vec(), value.to_vec());
    }

    /// State `key`, if set.
    pub fn state(&self, key: &str) -> Option<&[u8]> {
        self.state.get(key.as_bytes()).map(Vec::as_slice)
    }

    /// State `key` as text, if set (panics if it is not UTF-8).
    pub fn state_text(&self, key: &str) -> Option<&str> {
        self.state(key)
            .map(|v| std::str::from_utf8(v).expect("state value is not UTF-8"))
    }

    /// Everything published so far, in order.
    pub fn published(&self) -> &[Message] {
        &self.published
    }

    /// Everything forwarded so far, in order (`topic` holds the stream).
    pub fn forwarded(&self) -> &[Message] {
        &self.forwarded
    }

    /// Everything emitted so far, in order.
    pub fn emitted(&self) -> &[Emitted] {
        &self.emitted
    }

    /// Everything logged so far, in order.
    pub fn logs(&self) -> &[LogLine] {
        &self.logs
    }

    /// Forgets recorded outputs and logs (state and config stay).
    pub fn clear_outputs(&mut self) {
        self.published.clear();
        self.forwarded.clear();
        self.emitted.clear();
        self.logs.clear();
    }

    /// Runs `f` as one invocation: host calls made inside go to this host,
    /// and the output byte limit starts afresh.
    pub fn run<R>(&mut self, f: impl FnOnce(&Context) -> R) -> R {
        /// Puts the host back even if `f` panics (a failing assert).
        struct Restore<'h>(&'h mut TestHost);
        impl Drop for Restore<'_> {
            fn drop(&mut self) {
                if let Some(host) = CURRENT.with(|c| c.borrow_mut().take()) {
                    *self.0 = host;
                }
            }
        }

        self.output_bytes_used = 0;
        let host = std::mem::take(self);
        CURRENT.with(|c| {
            let mut current = c.borrow_mut();
            assert!(current.is_none(), "perch-sdk: TestHost::run does not nest");
            *current = Some(host);
        });
        let _restore = Restore(self);
        f(&Context::new())
    }

    /// Delivers one event the way the gateway does: topic and payload are
    /// written into a 16 KiB event buffer and framed back out of it, then
    /// `handler` runs; its result comes back as the host would see it.
    pub fn event<F>(
        &mut self,
        handler: F,
        topic: &str,
        payload: &[u8],
        timestamp_ms: i64,
    ) -> Result<(), Error>
    where
        F: FnOnce(&Context, &Event<'_>) -> Result<(), Error>,
    {
        let buf: Box<EventBuffer<DEFAULT_EVENT_BUFFER>> = Box::default();
        // SAFETY: `buf` is ours alone; nothing borrows it yet.
        unsafe { buf.write(topic.as_bytes(), payload) }?;
        let (topic_len, payload_len) = (topic.len() as i32, payload.len() as i32);
        // SAFETY: nothing writes `buf` during the call.
        let code = self.run(|_| unsafe {
            export::dispatch_event(&buf, topic_len, payload_len, timestamp_ms, handler)
        });
        Error::check(code)
    }

    /// Runs a timer handler as the gateway does on an interval tick.
    pub fn timer<F>(&mut self, handler: F, timestamp_ms: i64) -> Result<(), Error>
    where
        F: FnOnce(&Context, i64) -> Result<(), Error>,
    {
        Error::check(self.run(|_| export::dispatch_timer(timestamp_ms, handler)))
    }

    /// Runs a migration as the gateway does when this version takes over
    /// the state version `from` left (set that state first with
    /// [`TestHost::set_state`]).
    pub fn migrate<F>(&mut self, handler: F, from: &str) -> Result<(), Error>
    where
        F: FnOnce(&Context, &str) -> Result<(), Error>,
    {
        let buf: export::EventBuffer<256> = export::EventBuffer::new();
        // SAFETY: `buf` is local and nothing else refers to it.
        if unsafe { buf.write(from.as_bytes(), b"") }.is_err() {
            return Err(Error::BadEvent);
        }
        let len = from.len() as i32;
        // SAFETY: nothing writes to `buf` while the handler runs.
        Error::check(self.run(|_| unsafe { export::dispatch_migrate(&buf, len, handler) }))
    }

    /// Runs an init handler as the gateway does after instantiation.
    pub fn init<F>(&mut self, handler: F) -> Result<(), Error>
    where
        F: FnOnce(&Context) -> Result<(), Error>,
    {
        Error::check(self.run(|_| export::dispatch_init(handler)))
    }

    // The host side of each import, answering with the ABI's codes.

    pub(crate) fn publish(&mut self, topic: &[u8], payload: &[u8]) -> i32 {
        let Some(topic) = std::str::from_utf8(topic)
            .ok()
            .filter(|t| valid_topic_name(t))
        else {
            return Error::Invalid.code();
        };
        if let Some(allow) = &self.publish_allow {
            if !allow.iter().any(|filter| topic_matches(filter, topic)) {
                return Error::Denied.code();
            }
        }
        if let Err(err) = self.spend_output(payload.len()) {
            return err.code();
        }
        self.published.push(Message {
            topic: topic.to_owned(),
            payload: payload.to_vec(),
        });
        0
    }

    pub(crate) fn forward(&mut self, stream: &[u8], record: &[u8]) -> i32 {
        let Some(stream) = std::str::from_utf8(stream).ok().filter(|s| !s.is_empty()) else {
            return Error::Invalid.code();
        };
        if let Err(err) = self.spend_output(record.len()) {
            return err.code();
        }
        self.forwarded.push(Message {
            topic: stream.to_owned(),
            payload: record.to_vec(),
        });
        0
    }

    pub(crate) fn emit(
        &mut self,
        metric: &[u8],
        key: &[u8],
        value: f64,
        at_ms: Option<i64>,
    ) -> i32 {
        let (Ok(metric), Ok(key)) = (std::str::from_utf8(metric), std::str::from_utf8(key)) else {
            return Error::Invalid.code();
        };
        if metric.is_empty() {
            return Error::Invalid.code();
        }
        self.emitted.push(Emitted {
            metric: metric.to_owned(),
            key: (!key.is_empty()).then(|| key.to_owned()),
            value,
            at_ms,
        });
        0
    }

    pub(crate) fn state_get(&mut self, key: &[u8], out: &mut [u8]) -> i32 {
        if !valid_state_key(key) {
            return Error::Invalid.code();
        }
        match self.state.get(key) {
            None => Error::NotFound.code(),
            Some(value) => copy_out(value, out),
        }
    }

    pub(crate) fn state_set(&mut self, key: &[u8], value: &[u8]) -> i32 {
        if !valid_state_key(key) || value.len() > STATE_VALUE_MAX {
            return Error::Invalid.code();
        }
        self.state.insert(key.to_vec(), value.to_vec());
        0
    }

    pub(crate) fn state_delete(&mut self, key: &[u8]) -> i32 {
        if !valid_state_key(key) {
            return Error::Invalid.code();
        }
        match self.state.remove(key) {
            Some(_) => 0,
            None => Error::NotFound.code(),
        }
    }

    pub(crate) fn config_get(&mut self, key: &[u8], out: &mut [u8]) -> i32 {
        self.config_reads += 1;
        let Ok(key) = std::str::from_utf8(key) else {
            return Error::Invalid.code();
        };
        match self.config.get(key) {
            None => Error::NotFound.code(),
            Some(value) => copy_out(value.as_bytes(), out),
        }
    }

    pub(crate) fn log(&mut self, level: i32, msg: &[u8]) {
        self.logs.push(LogLine {
            level: Level::from_i32(level).unwrap_or(Level::Trace),
            message: String::from_utf8_lossy(msg).into_owned(),
        });
    }

    pub(crate) fn now_ms(&mut self) -> i64 {
        self.now_ms
    }

    fn spend_output(&mut self, bytes: usize) -> Result<(), Error> {
        let used = self.output_bytes_used.saturating_add(bytes);
        if used > self.output_bytes_max {
            return Err(Error::Limit);
        }
        self.output_bytes_used = used;
        Ok(())
    }
}

/// Copies `min(len, out.len())` bytes and returns the full length, as
/// `state_get` and `config_get` do.
fn copy_out(value: &[u8], out: &mut [u8]) -> i32 {
    let n = value.len().min(out.len());
    out[..n].copy_from_slice(&value[..n]);
    value.len() as i32
}

fn valid_state_key(key: &[u8]) -> bool {
    !key.is_empty() && key.len() <= STATE_KEY_MAX && std::str::from_utf8(key).is_ok()
}

/// An MQTT topic name one may publish to: not empty, no wildcards, no NUL.
pub fn valid_topic_name(topic: &str) -> bool {
    !topic.is_empty() && topic.len() <= 65_535 && !topic.contains(['+', '#', '\0'])
}

/// Whether MQTT topic filter `filter` (with `+` and `#`) matches `topic`.
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    // Filters starting with a wildcard do not match `$`-topics (MQTT 4.7.2).
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut levels = topic.split('/');
    for part in filter.split('/') {
        match (part, levels.next()) {
            ("#", _) => return true,
            ("+", Some(_)) => {}
            (part, Some(level)) if part == level => {}
            _ => return false,
        }
    }
    levels.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::JSON_OUT_MAX;

    #[test]
    fn topic_filters() {
        assert!(topic_matches("alerts/#", "alerts/t1/temperature"));
        assert!(topic_matches("alerts/#", "alerts"));
        assert!(topic_matches(
            "sensors/+/temperature",
            "sensors/t1/temperature"
        ));
        assert!(!topic_matches(
            "sensors/+/temperature",
            "sensors/t1/humidity"
        ));
        assert!(!topic_matches("sensors/+", "sensors/t1/temperature"));
        assert!(!topic_matches("a/b", "a"));
        assert!(!topic_matches("#", "$SYS/uptime"));
        assert!(topic_matches("$SYS/#", "$SYS/uptime"));
    }

    #[test]
    fn publish_checks_name_allow_list_and_output_bytes() {
        let mut host = TestHost::new().allow_publish("out/#").with_output_bytes(10);
        host.run(|ctx| {
            assert_eq!(ctx.publish("out/+", b"x"), Err(Error::Invalid));
            assert_eq!(ctx.publish("", b"x"), Err(Error::Invalid));
            assert_eq!(ctx.publish("elsewhere", b"x"), Err(Error::Denied));
            assert_eq!(ctx.publish("out/a", b"123456"), Ok(()));
            assert_eq!(ctx.forward("s", b"1234"), Ok(()));
            assert_eq!(ctx.publish("out/a", b"1"), Err(Error::Limit));
        });
        // The limit is per invocation.
        host.run(|ctx| assert_eq!(ctx.publish("out/b", b"1234567890"), Ok(())));
        let topics: Vec<_> = host.published().iter().map(|m| m.topic.as_str()).collect();
        assert_eq!(topics, ["out/a", "out/b"]);
        assert_eq!(host.forwarded()[0].text(), "1234");
    }

    #[test]
    fn state_round_trips_and_reports_length() {
        let mut host = TestHost::new();
        host.run(|ctx| {
            let mut buf = [0u8; 4];
            assert_eq!(ctx.state_get("k", &mut buf), Ok(None));
            ctx.state_set("k", b"hello").unwrap();
            assert_eq!(
                ctx.state_get("k", &mut buf),
                Err(Error::TooLarge { needed: 5 })
            );
            let mut buf = [0u8; 8];
            assert_eq!(ctx.state_get("k", &mut buf), Ok(Some(&b"hello"[..])));
            assert_eq!(ctx.state_delete("k"), Ok(true));
            assert_eq!(ctx.state_delete("k"), Ok(false));
            assert_eq!(ctx.state_set("", b"x"), Err(Error::Invalid));
            let long_key = "k".repeat(STATE_KEY_MAX + 1);
            assert_eq!(ctx.state_set(&long_key, b"x"), Err(Error::Invalid));
            assert_eq!(
                ctx.state_set("big", &vec_of(STATE_VALUE_MAX + 1)),
                Err(Error::Invalid)
            );
        });
    }

    fn vec_of(len: usize) -> Vec<u8> {
        std::vec![b'x'; len]
    }

    #[test]
    fn state_json_helpers() {
        #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
        struct Counter {
            n: u32,
            mean: f64,
        }
        let mut host = TestHost::new();
        host.run(|ctx| {
            assert_eq!(ctx.state_get_json::<Counter>("c"), Ok(None));
            ctx.state_set_json("c", &Counter { n: 2, mean: 1.5 })
                .unwrap();
            assert_eq!(
                ctx.state_get_json("c"),
                Ok(Some(Counter { n: 2, mean: 1.5 }))
            );
        });
        assert_eq!(host.state_text("c"), Some(r#"{"n":2,"mean":1.5}"#));
        host.set_state("c", b"not json");
        host.run(|ctx| assert_eq!(ctx.state_get_json::<Counter>("c"), Err(Error::Payload)));
    }

    #[test]
    fn json_output_larger_than_the_buffer_is_encode() {
        let long = "x".repeat(JSON_OUT_MAX);
        let mut host = TestHost::new();
        host.run(|ctx| assert_eq!(ctx.publish_json("t", long.as_str()), Err(Error::Encode)));
        assert!(host.published().is_empty());
    }

    #[test]
    fn config_from_manifest_in_toml_spelling() {
        let mut host = TestHost::from_manifest(
            r#"
            name = "x"
            [publish]
            allow = ["a/#"]
            [limits]
            output_bytes = 5
            [config]
            limit = 30.0
            count = 7
            on = true
            label = "hot"
            "#,
        )
        .unwrap();
        host.run(|ctx| {
            let mut buf = [0u8; 16];
            assert_eq!(ctx.config_get("limit", &mut buf), Ok("30.0"));
            assert_eq!(ctx.config_f64("limit"), Ok(30.0));
            assert_eq!(ctx.config_f64("count"), Ok(7.0));
            assert_eq!(ctx.config_i64("count"), Ok(7));
            assert_eq!(ctx.config_bool("on"), Ok(true));
            assert_eq!(ctx.config_str::<8>("label").as_deref(), Ok("hot"));
            assert_eq!(
                ctx.config_str::<2>("label"),
                Err(Error::TooLarge { needed: 3 })
            );
            assert_eq!(ctx.config_f64("label"), Err(Error::Config));
            assert_eq!(ctx.config_f64("missing"), Err(Error::NotFound));
            assert_eq!(ctx.config_f64_or("missing", 1.5), Ok(1.5));
            assert_eq!(ctx.config_f64_or("label", 1.5), Err(Error::Config));
            assert_eq!(ctx.publish("b", b""), Err(Error::Denied));
            assert_eq!(ctx.publish("a/1", b"123456"), Err(Error::Limit));
        });
    }

    #[test]
    fn typed_config_is_read_once_per_instance() {
        let mut host = TestHost::new()
            .with_config("limit", "30.0")
            .with_config("label", "hot");
        for _ in 0..3 {
            host.run(|ctx| {
                assert_eq!(ctx.config_f64("limit"), Ok(30.0));
                assert_eq!(ctx.config_f64_or("missing", 1.5), Ok(1.5));
                assert_eq!(ctx.config_bool("missing"), Err(Error::NotFound));
                // Failures are not kept: each read asks again.
                assert_eq!(ctx.config_f64("label"), Err(Error::Config));
            });
        }
        // limit and missing once each, label three times.
        assert_eq!(host.config_reads(), 5);
        // Another type for the same key is its own read.
        host.run(|ctx| assert_eq!(ctx.config_i64("limit"), Err(Error::Config)));
        assert_eq!(host.config_reads(), 6);
        // A new config (a redeploy) forgets what was read.
        let mut host = host.with_config("limit", "-1.5e3");
        host.run(|ctx| assert_eq!(ctx.config_f64("limit"), Ok(-1500.0)));
        assert_eq!(host.config_reads(), 7);
    }

    #[test]
    fn a_manifest_without_publish_allows_nothing() {
        let mut host = TestHost::from_manifest("name = \"x\"").unwrap();
        host.run(|ctx| assert_eq!(ctx.publish("a", b""), Err(Error::Denied)));
    }

    #[test]
    fn bad_manifests_say_what_is_wrong() {
        assert!(TestHost::from_manifest("name = ")
            .unwrap_err()
            .contains("not TOML"));
        assert!(TestHost::from_manifest("[publish]\nallow = [1]")
            .unwrap_err()
            .contains("strings"));
    }

    #[test]
    fn logs_emits_and_clock() {
        let mut host = TestHost::new();
        host.set_now_ms(42);
        host.run(|ctx| {
            crate::info!(ctx, "value {}", 1.5);
            ctx.log(Level::Error, "bad");
            ctx.emit("m", 1.0).unwrap();
            ctx.emit_keyed("m", "k", 2.0).unwrap();
            ctx.emit_at("m", "k", 3.0, 1_700_000_000_000).unwrap();
            assert_eq!(ctx.emit("", 1.0), Err(Error::Invalid));
            assert_eq!(ctx.now_ms(), 42);
        });
        assert_eq!(
            host.logs(),
            [
                LogLine {
                    level: Level::Info,
                    message: "value 1.5".into()
                },
                LogLine {
                    level: Level::Error,
                    message: "bad".into()
                },
            ]
        );
        assert_eq!(host.emitted()[0].key, None);
        assert_eq!(host.emitted()[1].key.as_deref(), Some("k"));
        assert_eq!(host.emitted()[1].at_ms, None);
        assert_eq!(host.emitted()[2].at_ms, Some(1_700_000_000_000));
    }

    #[test]
    fn long_log_lines_are_cut() {
        let mut host = TestHost::new();
        let long = "é".repeat(crate::context::LOG_LINE_MAX);
        host.run(|ctx| crate::warn!(ctx, "{long}"));
        let line = &host.logs()[0].message;
        assert!(
            line.len() <= crate::context::LOG_LINE_MAX
                && line.len() > crate::context::LOG_LINE_MAX - 2
        );
        assert!(line.chars().all(|c| c == 'é'));
    }

    #[test]
    fn event_goes_through_the_buffer_and_back() {
        let mut host = TestHost::new();
        let result = host.event(
            |ctx, ev| {
                assert_eq!(ev.topic_level(1), Some("t1"));
                let v: f64 = ev.json()?;
                ctx.publish("out", ev.topic.as_bytes())?;
                if v > 1.0 {
                    Err(Error::Config)
                } else {
                    Ok(())
                }
            },
            "sensors/t1/x",
            b"2.5",
            9,
        );
        assert_eq!(result, Err(Error::Config));
        assert_eq!(host.published()[0].text(), "sensors/t1/x");
        assert_eq!(
            host.event(|_, ev| ev.json::<f64>().map(drop), "t", b"nope", 0),
            Err(Error::Payload)
        );
        let too_big = vec_of(DEFAULT_EVENT_BUFFER);
        assert_eq!(
            host.event(|_, _| Ok(()), "t", &too_big, 0),
            Err(Error::BadEvent)
        );
    }

    #[test]
    #[should_panic(expected = "outside TestHost::run")]
    fn host_calls_outside_run_say_so() {
        crate::sys::now_ms();
    }

    #[test]
    fn run_puts_the_host_back_after_a_panic() {
        let mut host = TestHost::new();
        host.set_state("kept", b"1");
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            host.run(|_| panic!("handler assertion failed"));
        }));
        assert!(caught.is_err());
        assert_eq!(host.state("kept"), Some(&b"1"[..]));
        host.run(|ctx| ctx.now_ms()); // usable again, not "does not nest"
    }
}
