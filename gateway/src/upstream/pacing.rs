//! Live first, backlog paced: which records a delivery sends next, and how
//! fast it may send the backlog.
//!
//! # Live and backlog
//!
//! When a delivery's link comes up (an MQTT CONNACK; for HTTP, its start
//! and the first POST that succeeds after a failed one) it reads the
//! highest `seq` committed at that moment: the *watermark*. Records at or
//! below it are the **backlog** (what waited while the link was down, or
//! was in flight when it went); records above it are **live** (committed
//! after the link came back). The backlog is a list of `seq` ranges
//! ([`Backlog`]); live is everything after a cursor.
//!
//! With `order = "live_first"` a delivery sends live records as soon as
//! there are any and the backlog in between, at most at the configured
//! rate ([`Pacer`]). With `order = "oldest_first"` (the default: it keeps
//! the one order per stream perch has always promised, which mirrored
//! messages, sent without an id, cannot get back otherwise) it sends the
//! backlog first, then live, strictly in `seq` order; the rate caps the
//! backlog there too.
//!
//! Order: each of the two is sent in `seq` order, so records of one stream
//! arrive in order within the backlog and within live; a live record may
//! arrive before older backlog records of its stream. Every envelope
//! carries `<gateway id>-<seq>`, so a receiver that needs one order per
//! stream sorts by `seq`.
//!
//! # Pacing
//!
//! [`Pacer`] keeps a schedule: each backlog message moves the time the
//! next may go by its cost, `records / backlog_records_per_s` or
//! `bytes / backlog_bytes_per_s`, whichever is longer. A link idle for a
//! while earns at most [`BURST`] of credit, so the rate over any window
//! longer than a few messages is at most the cap. Live records are never
//! paced.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::kit::Problem;

/// Credit an idle link may save up for the backlog: it may send this much
/// time's worth at once after a pause.
pub const BURST: Duration = Duration::from_millis(100);

/// The least `backlog_bytes_per_s` accepted (other than 0, no cap): less
/// would take seconds per message of one record.
pub const MIN_BYTES_PER_S: u64 = 1024;

/// Which records go first after an outage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DrainOrder {
    /// Live records ahead of the backlog; the backlog in between.
    LiveFirst,
    /// The backlog first, then live: one `seq` order (FIFO), the order
    /// perch has always promised per stream.
    #[default]
    OldestFirst,
}

/// `[upstream.mqtt.drain]`, `[upstream.http.drain]`: how this destination
/// drains a backlog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DrainConfig {
    /// Live records ahead of the backlog, or one `seq` order.
    pub order: DrainOrder,
    /// The backlog's records per second at most; 0: no cap.
    pub backlog_records_per_s: u64,
    /// The backlog's payload bytes per second at most; 0: no cap.
    pub backlog_bytes_per_s: u64,
}

impl Default for DrainConfig {
    fn default() -> Self {
        DrainConfig {
            order: DrainOrder::OldestFirst,
            backlog_records_per_s: 0,
            backlog_bytes_per_s: 0,
        }
    }
}

impl DrainConfig {
    /// Checks the values; `at` is the table's key (`upstream.mqtt.drain`).
    pub(crate) fn validate(
        &self,
        at: &str,
        records_per_message: usize,
        problems: &mut Vec<Problem>,
    ) {
        let b = self.backlog_bytes_per_s;
        if b != 0 && b < MIN_BYTES_PER_S {
            problems.push(Problem::new(
                format!("{at}.backlog_bytes_per_s"),
                format!(
                    "{b} bytes/s is too low to drain anything: give at least {MIN_BYTES_PER_S} \
                     (1 KiB/s), or 0 for no cap"
                ),
            ));
        }
        let r = self.backlog_records_per_s;
        if r != 0 && (r as usize) < records_per_message.min(10) {
            problems.push(Problem::new(
                format!("{at}.backlog_records_per_s"),
                format!(
                    "{r} records/s is below the smallest useful rate ({}): one message of \
                     the backlog would take longer than a second; give more, or 0 for no cap",
                    records_per_message.min(10)
                ),
            ));
        }
    }
}

/// The schedule of the backlog: when its next message may go.
#[derive(Debug)]
pub struct Pacer {
    records_per_s: u64,
    bytes_per_s: u64,
    /// The earliest time the next backlog message may go; `None` until the
    /// first one.
    next: Option<Instant>,
}

impl Pacer {
    pub fn new(config: &DrainConfig) -> Pacer {
        Pacer {
            records_per_s: config.backlog_records_per_s,
            bytes_per_s: config.backlog_bytes_per_s,
            next: None,
        }
    }

    /// When the next backlog message may go, if that is later than `now`.
    pub fn wait_until(&self, now: Instant) -> Option<Instant> {
        self.next.filter(|&n| n > now)
    }

    /// A backlog message of `records` and `bytes` went at `now`.
    pub fn spent(&mut self, now: Instant, records: u64, bytes: u64) {
        let per = |n: u64, rate: u64| match rate {
            0 => Duration::ZERO,
            rate => Duration::from_secs_f64(n as f64 / rate as f64),
        };
        let cost = per(records, self.records_per_s).max(per(bytes, self.bytes_per_s));
        if cost.is_zero() {
            return;
        }
        let earliest = now.checked_sub(BURST).unwrap_or(now);
        let from = self.next.map_or(earliest, |n| n.max(earliest));
        self.next = Some(from + cost);
    }
}

/// The backlog: ranges of `seq`, `(after, until]`, oldest first, not sent
/// yet on this link.
#[derive(Debug, Default)]
pub struct Backlog {
    pub ranges: VecDeque<(i64, i64)>,
}

impl Backlog {
    /// The link came up at `watermark` with live records sent up to
    /// `live_cursor`: what lies between is backlog now. Returns the new
    /// live cursor.
    pub fn link_up(&mut self, live_cursor: i64, watermark: i64) -> i64 {
        if watermark > live_cursor {
            self.ranges.push_back((live_cursor, watermark));
            watermark
        } else {
            live_cursor
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The records up to `last` were read: the front range moves on, and
    /// goes when `exhausted` (a read came back short) or reached its end.
    pub fn read_up_to(&mut self, last: Option<i64>, exhausted: bool) {
        let Some(front) = self.ranges.front_mut() else {
            return;
        };
        if let Some(last) = last {
            front.0 = front.0.max(last);
        }
        if exhausted || front.0 >= front.1 {
            self.ranges.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn the_pacer_holds_the_record_and_byte_caps() {
        let t0 = Instant::now();
        let mut p = Pacer::new(&DrainConfig {
            order: DrainOrder::LiveFirst,
            backlog_records_per_s: 100,
            backlog_bytes_per_s: 0,
        });
        assert_eq!(p.wait_until(t0), None);
        // Sending 100-record messages as soon as allowed: 10 messages are
        // 1000 records, which take 10 s less the burst credit.
        let mut now = t0;
        for _ in 0..10 {
            now = p.wait_until(now).unwrap_or(now);
            p.spent(now, 100, 10);
        }
        let took = now - t0;
        assert!(
            took >= Duration::from_secs(9) - BURST && took <= Duration::from_secs(9),
            "{took:?}"
        );
        // The byte cap is the longer one here: 5000 bytes at 1000 bytes/s.
        let mut p = Pacer::new(&DrainConfig {
            order: DrainOrder::LiveFirst,
            backlog_records_per_s: 1000,
            backlog_bytes_per_s: 1000,
        });
        p.spent(t0, 1, 5000);
        let wait = p.wait_until(t0).unwrap() - t0;
        assert_eq!(wait, Duration::from_secs(5) - BURST);
        // No cap: never waits.
        let mut p = Pacer::new(&DrainConfig::default());
        p.spent(t0, 1_000_000, 1 << 30);
        assert_eq!(p.wait_until(t0), None);
    }

    #[test]
    fn the_backlog_is_what_lay_below_each_watermark() {
        let mut b = Backlog::default();
        // Link up with 500 records committed: 1..=500 is the backlog.
        let live = b.link_up(0, 500);
        assert_eq!(live, 500);
        assert_eq!(b.ranges, VecDeque::from([(0, 500)]));
        b.read_up_to(Some(200), false);
        assert_eq!(b.ranges, VecDeque::from([(200, 500)]));
        // Live went on to 540, then the link went down and came back at 700.
        let live = b.link_up(540, 700);
        assert_eq!(live, 700);
        assert_eq!(b.ranges, VecDeque::from([(200, 500), (540, 700)]));
        b.read_up_to(Some(500), false);
        assert_eq!(b.ranges, VecDeque::from([(540, 700)]));
        b.read_up_to(Some(600), true);
        assert!(b.is_empty());
        // Nothing new: no backlog.
        assert_eq!(b.link_up(700, 700), 700);
        assert!(b.is_empty());
    }

    #[test]
    fn bad_drain_values_are_refused_with_the_key_named() {
        let err = Config::from_toml(
            "[upstream.mqtt]\nhost = \"h\"\n[upstream.mqtt.drain]\nbacklog_bytes_per_s = 10\n\
             backlog_records_per_s = 3\n",
            "t.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("upstream.mqtt.drain.backlog_bytes_per_s")
                && err.contains("at least 1024"),
            "{err}"
        );
        assert!(
            err.contains("upstream.mqtt.drain.backlog_records_per_s")
                && err.contains("0 for no cap"),
            "{err}"
        );
        let err = Config::from_toml(
            "[upstream.http]\nurl = \"https://x/\"\ndrain = { order = \"newest_first\" }\n",
            "t.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("newest_first")
                && err.contains("live_first")
                && err.contains("oldest_first"),
            "{err}"
        );
        let c = Config::from_toml("[upstream.mqtt]\nhost = \"h\"\n", "t.toml").unwrap();
        assert_eq!(c.upstream.mqtt.unwrap().drain, DrainConfig::default());
    }
}
