//! The host's side of one wasm store: what the host imports may touch
//! (limits, state, the outputs an invocation stages until it returns), and
//! the host functions themselves, called through `imports`.

use super::*;

/// An output made during an invocation, released when it returns.
pub(super) enum Staged {
    Publish {
        topic: Bytes,
        payload: Bytes,
    },
    /// The permit holds a place in the output channel, so `FULL` is decided
    /// when the guest calls, and nothing is lost when the output is released.
    Output(mpsc::OwnedPermit<Output>, Output),
}

/// Topics under this prefix are the gateway's: no function may publish
/// there (refused with `DENIED`, counted like any other refusal).
pub const RESERVED_PREFIX: &str = "perch/";

/// The host's side of one store: what host imports may touch.
pub struct Host {
    pub(super) limits: StoreLimits,
    pub(super) ctx: Arc<Context>,
    pub(super) outputs: mpsc::Sender<Output>,
    pub(super) memory: Option<Memory>,
    pub(super) state: StateCache,
    pub(super) counters: Arc<OutputCounters>,
    /// Reused across invocations: cleared, never shrunk.
    pub(super) staged: Vec<Staged>,
    pub(super) output_bytes_left: usize,
    pub(super) log_lines_left: u32,
    /// Whether an `emit`/`forward` of this invocation was refused because
    /// the channel to the aggregator and buffer was full: back-pressure
    /// from the gateway, not a fault of the function.
    pub(super) backpressure: bool,
    /// Log lines of the last invocation for the logs topic (JSON), released
    /// with its outputs but kept after a trap: a failing function's last
    /// words are what its author needs. Rate-limited like the log itself.
    pub(super) logs: Vec<Bytes>,
    /// Fuel the last call into the guest burnt, over all its slices.
    pub(super) fuel_used: u64,
}

impl Host {
    pub(super) fn begin(&mut self) {
        self.staged.clear();
        self.output_bytes_left = self.ctx.output_bytes;
        self.log_lines_left = MAX_LOG_LINES_PER_INVOCATION;
        self.backpressure = false;
    }

    pub(super) fn refuse(&self, code: i32) -> i32 {
        let counter = match code {
            code::DENIED => &self.counters.denied,
            code::LIMIT => &self.counters.limited,
            code::FULL => &self.counters.full,
            _ => return code,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        code
    }

    pub(super) fn publish(&mut self, topic: &[u8], payload: &[u8]) -> i32 {
        let Ok(topic) = std::str::from_utf8(topic) else {
            return code::INVALID;
        };
        if topic::validate_name(topic).is_err() {
            return code::INVALID;
        }
        // Everything under `perch/` is the gateway's own, whatever a
        // manifest allows: its status, the control topics, function
        // statuses and logs, fleet requests. A function must neither deploy
        // functions nor fake what a gateway reports (its own or, once
        // forwarded upstream, another's).
        if topic.starts_with(RESERVED_PREFIX) || !topic::matches_any(&self.ctx.allow, topic) {
            return self.refuse(code::DENIED);
        }
        if self.staged.len() >= MAX_OUTPUTS_PER_INVOCATION || payload.len() > self.output_bytes_left
        {
            return self.refuse(code::LIMIT);
        }
        self.output_bytes_left -= payload.len();
        self.staged.push(Staged::Publish {
            topic: Bytes::copy_from_slice(topic.as_bytes()),
            payload: Bytes::copy_from_slice(payload),
        });
        code::OK
    }

    pub(super) fn stage_output(&mut self, output: impl FnOnce(Arc<str>) -> Output) -> i32 {
        if self.staged.len() >= MAX_OUTPUTS_PER_INVOCATION {
            return self.refuse(code::LIMIT);
        }
        match self.outputs.clone().try_reserve_owned() {
            Ok(permit) => {
                let output = output(self.ctx.name.clone());
                self.staged.push(Staged::Output(permit, output));
                code::OK
            }
            Err(_) => {
                self.backpressure = true;
                self.refuse(code::FULL)
            }
        }
    }

    /// `emit`: the value's time is the gateway's clock (processing time).
    pub(super) fn emit(&mut self, metric: &[u8], key: &[u8], value: f64) -> i32 {
        self.emit_at(metric, key, value, now_ms())
    }

    /// `emit_at`: the value's time is `timestamp_ms`, which the function
    /// read from the reading (event time; Unix milliseconds).
    pub(super) fn emit_at(
        &mut self,
        metric: &[u8],
        key: &[u8],
        value: f64,
        timestamp_ms: i64,
    ) -> i32 {
        let inline = |b: &[u8]| name_text(b).and_then(|s| crate::buffer::Name::try_from(s).ok());
        let (Some(metric), Some(key)) = (inline(metric), inline(key)) else {
            return code::INVALID;
        };
        if metric.is_empty() {
            return code::INVALID;
        }
        self.stage_output(|function| Output::Metric {
            function,
            metric,
            key,
            value,
            timestamp_ms,
        })
    }

    pub(super) fn forward(&mut self, stream: &[u8], record: &[u8]) -> i32 {
        let Some(stream) = name_text(stream).filter(|s| !s.is_empty()) else {
            return code::INVALID;
        };
        if record.len() > self.output_bytes_left {
            return self.refuse(code::LIMIT);
        }
        let timestamp_ms = now_ms();
        let code = self.stage_output(|function| Output::Record {
            function,
            stream: stream.to_owned(),
            record: Bytes::copy_from_slice(record),
            timestamp_ms,
        });
        if code == code::OK {
            self.output_bytes_left -= record.len();
        }
        code
    }

    pub(super) fn log(&mut self, level: i32, message: &[u8]) {
        if self.log_lines_left == 0 {
            // Over the per-invocation cap: counted with the rate limit's.
            self.counters.log.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.log_lines_left -= 1;
        let function = &*self.ctx.name;
        let version = &*self.ctx.version;
        let now = u64::try_from(now_ms()).unwrap_or(0);
        match self.counters.log.take(now) {
            None => return,
            Some(0) => {}
            Some(dropped) => tracing::warn!(
                function,
                version,
                dropped,
                "function log lines dropped by the rate limit ({} lines/s, bursts of {})",
                crate::kit::metrics::LogLimiter::PER_SECOND,
                crate::kit::metrics::LogLimiter::BURST
            ),
        }
        let mut end = message.len().min(MAX_LOG_LINE_BYTES);
        let text = loop {
            // Cut at a character boundary; invalid UTF-8 is shown replaced.
            match std::str::from_utf8(&message[..end]) {
                Ok(t) => break std::borrow::Cow::Borrowed(t),
                Err(e) if e.error_len().is_none() => end = e.valid_up_to(),
                Err(_) => break String::from_utf8_lossy(&message[..end]),
            }
        };
        if self.ctx.log_topic.is_some() {
            let line = serde_json::json!({
                "ts_ms": now_ms(),
                "level": level_name(level),
                "function": function,
                "version": version,
                "message": &*text,
            });
            self.logs.push(Bytes::from(line.to_string()));
        }
        match level {
            0 => tracing::error!(function, version, "{text}"),
            1 => tracing::warn!(function, version, "{text}"),
            2 => tracing::info!(function, version, "{text}"),
            3 => tracing::debug!(function, version, "{text}"),
            _ => tracing::trace!(function, version, "{text}"),
        }
    }
}

/// The name of a `log` level, as the logs topic carries it.
fn level_name(level: i32) -> &'static str {
    match level {
        0 => "error",
        1 => "warn",
        2 => "info",
        3 => "debug",
        _ => "trace",
    }
}

/// A metric, key or stream name: UTF-8 and short.
pub(super) fn name_text(bytes: &[u8]) -> Option<&str> {
    if bytes.len() > MAX_NAME_BYTES {
        return None;
    }
    std::str::from_utf8(bytes).ok()
}
