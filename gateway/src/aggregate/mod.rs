//! Windowed aggregates of the metrics functions `emit`.
//!
//! Each (metric, key) series has at most one open tumbling window of
//! `window_s` (per metric, or the default), aligned to the Unix epoch so that
//! every gateway cuts the same windows. A window keeps count, min, max, sum
//! and last; when it closes it becomes one aggregate record for the buffer.
//!
//! A value's timestamp picks its window: the gateway's clock at `emit`
//! (processing time), or the time the function read from the reading
//! itself with `emit_at` (event time), so readings that arrive out of order
//! or late, from a sensor behind a flaky link, still count in the window of
//! their own time. A window stays open until the gateway's clock passes its
//! end plus `grace_ms` (so a series can have several open windows); then it
//! is written. A value for a window already written, or whose end plus
//! `grace_ms` has passed, is *late*; one more than `max_ahead_ms` ahead of
//! the gateway's clock (a sensor whose clock is wrong) is *ahead*. Both are
//! counted by reason and not merged, so a written aggregate never changes.
//!
//! This module is pure logic. The buffer hosts the [`Aggregator`] on its
//! writer thread so that open windows are saved in the same SQLite
//! transaction as the records (see `buffer`): a restart resumes every open
//! window exactly as of the last commit.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::kit::Problem;

/// `[aggregate]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AggregateConfig {
    /// Length of a window when the metric has no entry in `window_s_by_metric`.
    pub window_s: u64,
    /// Window length per metric name, overriding `window_s`.
    pub window_s_by_metric: HashMap<String, u64>,
    /// The buffer stream aggregate records are written to.
    pub stream: String,
    /// Most (metric, key) series tracked at once; emits for new series beyond
    /// it are refused and counted, so a function inventing keys cannot eat
    /// memory.
    pub max_series: usize,
    /// How long after its end a window still takes values (allowed
    /// lateness) before it is written. 0: written at its end.
    pub grace_ms: u64,
    /// How far ahead of the gateway's clock a value's time may be; a value
    /// further ahead is refused as late (reason `ahead`).
    pub max_ahead_ms: u64,
}

impl Default for AggregateConfig {
    fn default() -> Self {
        AggregateConfig {
            window_s: 10,
            window_s_by_metric: HashMap::new(),
            stream: "aggregates".to_owned(),
            max_series: 10_000,
            grace_ms: 0,
            max_ahead_ms: 60_000,
        }
    }
}

impl AggregateConfig {
    pub(crate) fn validate(&self, problems: &mut Vec<Problem>) {
        if self.window_s == 0 {
            problems.push(Problem::new("aggregate.window_s", "must be greater than 0"));
        }
        for (metric, w) in &self.window_s_by_metric {
            if *w == 0 {
                problems.push(Problem::new(
                    format!("aggregate.window_s_by_metric.{metric}"),
                    "must be greater than 0",
                ));
            }
        }
        if self.stream.is_empty() {
            problems.push(Problem::new("aggregate.stream", "must not be empty"));
        }
        // A day: windows are kept in memory until their grace ends.
        if self.grace_ms > DAY_MS {
            problems.push(Problem::new(
                "aggregate.grace_ms",
                format!("must be at most {DAY_MS} (a day): open windows wait in memory that long"),
            ));
        }
        if self.max_ahead_ms > DAY_MS {
            problems.push(Problem::new(
                "aggregate.max_ahead_ms",
                format!("must be at most {DAY_MS} (a day)"),
            ));
        }
        if self.max_series == 0 {
            problems.push(Problem::new(
                "aggregate.max_series",
                "must be greater than 0",
            ));
        }
    }
}

/// The longest `grace_ms` and `max_ahead_ms` allowed.
const DAY_MS: u64 = 24 * 3600 * 1000;

/// One window of one series; also the aggregate record's JSON body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Window {
    pub metric: String,
    pub key: String,
    pub start_ms: i64,
    pub window_ms: i64,
    pub count: u64,
    pub min: f64,
    pub max: f64,
    pub sum: f64,
    pub last: f64,
}

impl Window {
    fn new(metric: &str, key: &str, start_ms: i64, window_ms: i64, value: f64) -> Window {
        Window {
            metric: metric.to_owned(),
            key: key.to_owned(),
            start_ms,
            window_ms,
            count: 1,
            min: value,
            max: value,
            sum: value,
            last: value,
        }
    }

    fn add(&mut self, value: f64) {
        self.count += 1;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        self.sum += value;
        self.last = value;
    }

    pub fn end_ms(&self) -> i64 {
        self.start_ms + self.window_ms
    }

    pub fn mean(&self) -> f64 {
        self.sum / self.count as f64
    }

    /// The aggregate record written when the window closes.
    pub fn to_record(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Record<'a> {
            metric: &'a str,
            key: &'a str,
            window_start_ms: i64,
            window_end_ms: i64,
            count: u64,
            min: f64,
            max: f64,
            sum: f64,
            mean: f64,
            last: f64,
        }
        serde_json::to_vec(&Record {
            metric: &self.metric,
            key: &self.key,
            window_start_ms: self.start_ms,
            window_end_ms: self.end_ms(),
            count: self.count,
            min: self.min,
            max: self.max,
            sum: self.sum,
            mean: self.mean(),
            last: self.last,
        })
        .expect("an aggregate always serialises")
    }
}

/// What became of one emitted value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emitted {
    Merged,
    /// Its window was already written, or its grace has passed.
    Late,
    /// Its time is more than `max_ahead_ms` ahead of the gateway's clock.
    Ahead,
    /// A new series would exceed `max_series`.
    TooManySeries,
    /// NaN or infinite values are refused: they would poison min/max/mean.
    NotFinite,
}

#[derive(Debug)]
struct Series {
    /// Open windows, oldest first (more than one only within `grace_ms`).
    open: Vec<Window>,
    /// End of the last window written for this series; earlier timestamps
    /// are late.
    closed_until_ms: i64,
    /// Changed since the last commit.
    dirty: bool,
}

/// The open windows of every series.
#[derive(Debug)]
pub struct Aggregator {
    config: AggregateConfig,
    /// metric -> key -> series. Two levels so lookups by `&str` allocate
    /// nothing.
    series: HashMap<String, HashMap<String, Series>>,
    n_series: usize,
    pub late: u64,
    pub ahead: u64,
    pub refused: u64,
    pub closed: u64,
}

impl Default for Series {
    fn default() -> Self {
        Series {
            open: Vec::new(),
            closed_until_ms: i64::MIN,
            dirty: false,
        }
    }
}

impl Aggregator {
    pub fn new(config: AggregateConfig) -> Aggregator {
        Aggregator {
            config,
            series: HashMap::new(),
            n_series: 0,
            late: 0,
            ahead: 0,
            refused: 0,
            closed: 0,
        }
    }

    pub fn config(&self) -> &AggregateConfig {
        &self.config
    }

    fn window_ms(&self, metric: &str) -> i64 {
        let s = self
            .config
            .window_s_by_metric
            .get(metric)
            .copied()
            .unwrap_or(self.config.window_s);
        (s * 1000) as i64
    }

    /// Adds one value with time `ts_ms`, the gateway's clock being
    /// `now_ms`; windows of its series whose grace has passed are closed
    /// and pushed to `closed`.
    pub fn emit(
        &mut self,
        metric: &str,
        key: &str,
        value: f64,
        ts_ms: i64,
        now_ms: i64,
        closed: &mut Vec<Window>,
    ) -> Emitted {
        if !value.is_finite() {
            self.refused += 1;
            return Emitted::NotFinite;
        }
        if ts_ms.saturating_sub(now_ms) > self.config.max_ahead_ms as i64 {
            self.ahead += 1;
            return Emitted::Ahead;
        }
        let window_ms = self.window_ms(metric);
        let grace = self.config.grace_ms as i64;
        let start = ts_ms - ts_ms.rem_euclid(window_ms);
        let max = self.config.max_series;
        let Some(series) = series_mut(&mut self.series, &mut self.n_series, max, metric, key)
        else {
            self.refused += 1;
            return Emitted::TooManySeries;
        };
        let n = close_series(series, now_ms, grace, closed);
        self.closed += n;
        if ts_ms < series.closed_until_ms || start + window_ms + grace <= now_ms {
            self.late += 1;
            return Emitted::Late;
        }
        series.dirty = true;
        match series.open.binary_search_by_key(&start, |w| w.start_ms) {
            Ok(i) => series.open[i].add(value),
            Err(i) => {
                let w = Window::new(metric, key, start, window_ms, value);
                series.open.insert(i, w);
            }
        }
        Emitted::Merged
    }

    /// Closes every window whose end plus `grace_ms` is at or before
    /// `now_ms`.
    pub fn close_due(&mut self, now_ms: i64, closed: &mut Vec<Window>) {
        let grace = self.config.grace_ms as i64;
        for by_key in self.series.values_mut() {
            for series in by_key.values_mut() {
                self.closed += close_series(series, now_ms, grace, closed);
            }
        }
    }

    /// Calls `f` for each series changed since the last call, with its open
    /// windows (none: it has none any more), and marks it clean.
    pub fn drain_dirty(&mut self, mut f: impl FnMut(&str, &str, &[Window], i64)) {
        for (metric, by_key) in &mut self.series {
            for (key, series) in by_key.iter_mut() {
                if series.dirty {
                    f(metric, key, &series.open, series.closed_until_ms);
                    series.dirty = false;
                }
            }
        }
    }

    /// Marks every series changed, after a commit that did not save them.
    pub fn mark_all_dirty(&mut self) {
        for series in self.series.values_mut().flat_map(|m| m.values_mut()) {
            series.dirty = true;
        }
    }

    /// Puts back the windows saved by the buffer at its last commit.
    pub fn restore(&mut self, windows: Vec<Window>, metric: &str, key: &str, closed_until_ms: i64) {
        let by_key = self.series.entry(metric.to_owned()).or_default();
        if !by_key.contains_key(key) {
            self.n_series += 1;
        }
        by_key.insert(
            key.to_owned(),
            Series {
                open: windows,
                closed_until_ms,
                dirty: false,
            },
        );
    }

    /// Open windows right now.
    pub fn open_windows(&self) -> usize {
        self.series
            .values()
            .flat_map(|m| m.values())
            .map(|s| s.open.len())
            .sum()
    }
}

/// The series of (metric, key), created if there is room for one more
/// (`n_series` of at most `max`). Looked up before inserting, so the hot
/// path allocates no name.
fn series_mut<'a>(
    series: &'a mut HashMap<String, HashMap<String, Series>>,
    n_series: &mut usize,
    max: usize,
    metric: &str,
    key: &str,
) -> Option<&'a mut Series> {
    let full = *n_series >= max;
    if !series.contains_key(metric) {
        if full {
            return None;
        }
        series.insert(metric.to_owned(), HashMap::new());
    }
    let by_key = series.get_mut(metric).expect("inserted above");
    if by_key.contains_key(key) {
        return by_key.get_mut(key);
    }
    if full {
        return None;
    }
    *n_series += 1;
    Some(by_key.entry(key.to_owned()).or_default())
}

/// Closes the windows of `series` whose end plus `grace` is at or before
/// `now_ms` (the oldest first); returns how many.
fn close_series(series: &mut Series, now_ms: i64, grace: i64, closed: &mut Vec<Window>) -> u64 {
    let due = series
        .open
        .iter()
        .take_while(|w| w.end_ms() + grace <= now_ms)
        .count();
    if due == 0 {
        return 0;
    }
    for done in series.open.drain(..due) {
        series.closed_until_ms = done.end_ms();
        closed.push(done);
    }
    series.dirty = true;
    due as u64
}

/// A series' open windows as the buffer saves them: none is `None`, one is
/// a window's JSON object (what earlier versions saved), more a JSON array.
pub fn open_to_json(open: &[Window]) -> Option<String> {
    match open {
        [] => None,
        [one] => Some(serde_json::to_string(one).expect("windows serialise")),
        many => Some(serde_json::to_string(many).expect("windows serialise")),
    }
}

/// The open windows [`open_to_json`] saved (unreadable JSON: none).
pub fn open_from_json(json: &str) -> Vec<Window> {
    serde_json::from_str::<Vec<Window>>(json)
        .or_else(|_| serde_json::from_str::<Window>(json).map(|w| vec![w]))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agg() -> Aggregator {
        Aggregator::new(AggregateConfig::default())
    }

    #[test]
    fn a_window_keeps_count_min_max_sum_mean_last() {
        let mut a = agg();
        let mut closed = Vec::new();
        for (v, t) in [(3.0, 10_000), (1.0, 12_000), (5.0, 19_999)] {
            assert_eq!(a.emit("temp", "t1", v, t, t, &mut closed), Emitted::Merged);
        }
        assert!(closed.is_empty());
        a.close_due(20_000, &mut closed);
        let w = &closed[0];
        assert_eq!((w.start_ms, w.end_ms(), w.count), (10_000, 20_000, 3));
        assert_eq!((w.min, w.max, w.sum, w.last), (1.0, 5.0, 9.0, 5.0));
        assert_eq!(w.mean(), 3.0);
        let json: serde_json::Value = serde_json::from_slice(&w.to_record()).unwrap();
        assert_eq!(json["mean"], 3.0);
        assert_eq!(json["key"], "t1");
    }

    #[test]
    fn the_next_window_closes_the_previous_one() {
        let mut a = agg();
        let mut closed = Vec::new();
        a.emit("temp", "t1", 1.0, 5_000, 5_000, &mut closed);
        a.emit("temp", "t1", 2.0, 15_000, 15_000, &mut closed);
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].start_ms, 0);
        assert_eq!(a.open_windows(), 1);
    }

    #[test]
    fn late_events_are_counted_not_merged() {
        let mut a = agg();
        let mut closed = Vec::new();
        a.emit("temp", "t1", 1.0, 15_000, 15_000, &mut closed);
        assert_eq!(
            a.emit("temp", "t1", 9.0, 5_000, 15_000, &mut closed),
            Emitted::Late
        );
        a.close_due(20_000, &mut closed);
        assert_eq!(
            a.emit("temp", "t1", 9.0, 19_000, 20_000, &mut closed),
            Emitted::Late
        );
        assert_eq!(a.late, 2);
        assert_eq!(closed[0].count, 1);
    }

    #[test]
    fn series_are_bounded_and_non_finite_values_refused() {
        let mut a = Aggregator::new(AggregateConfig {
            max_series: 2,
            ..AggregateConfig::default()
        });
        let mut closed = Vec::new();
        assert_eq!(a.emit("m", "a", 1.0, 0, 0, &mut closed), Emitted::Merged);
        assert_eq!(a.emit("m", "b", 1.0, 0, 0, &mut closed), Emitted::Merged);
        assert_eq!(
            a.emit("m", "c", 1.0, 0, 0, &mut closed),
            Emitted::TooManySeries
        );
        assert_eq!(
            a.emit("n", "a", 1.0, 0, 0, &mut closed),
            Emitted::TooManySeries
        );
        assert_eq!(
            a.emit("m", "a", f64::NAN, 0, 0, &mut closed),
            Emitted::NotFinite
        );
        assert_eq!(a.emit("m", "a", 2.0, 0, 0, &mut closed), Emitted::Merged);
    }

    #[test]
    fn per_metric_windows_and_negative_times_align_to_the_epoch() {
        let mut cfg = AggregateConfig::default();
        cfg.window_s_by_metric.insert("slow".into(), 60);
        let mut a = Aggregator::new(cfg);
        let mut closed = Vec::new();
        a.emit("slow", "", 1.0, 61_000, 61_000, &mut closed);
        a.emit("fast", "", 1.0, -1, -1, &mut closed);
        a.close_due(i64::MAX, &mut closed);
        closed.sort_by_key(|w| w.window_ms);
        assert_eq!((closed[0].start_ms, closed[0].window_ms), (-10_000, 10_000));
        assert_eq!((closed[1].start_ms, closed[1].window_ms), (60_000, 60_000));
    }

    #[test]
    fn dirty_series_are_reported_once() {
        let mut a = agg();
        let mut closed = Vec::new();
        a.emit("m", "k", 1.0, 0, 0, &mut closed);
        let mut seen = 0;
        a.drain_dirty(|_, _, w, _| {
            assert!(!w.is_empty());
            seen += 1
        });
        a.drain_dirty(|_, _, _, _| seen += 1);
        assert_eq!(seen, 1);
    }

    #[test]
    fn event_time_windows_take_readings_out_of_order_within_the_grace() {
        let mut a = Aggregator::new(AggregateConfig {
            grace_ms: 5_000,
            ..AggregateConfig::default()
        });
        let mut closed = Vec::new();
        // The gateway's clock is at 12 s: readings of [0, 10 s) still count,
        // its grace ends at 15 s.
        for (v, t) in [(1.0, 11_000), (2.0, 9_000), (3.0, 1_000), (4.0, 10_500)] {
            assert_eq!(a.emit("t", "s", v, t, 12_000, &mut closed), Emitted::Merged);
        }
        assert_eq!(a.open_windows(), 2, "two windows open within the grace");
        assert!(closed.is_empty());
        // At 15 s the first window is written; a reading for it is late now.
        a.close_due(15_000, &mut closed);
        assert_eq!(closed.len(), 1);
        assert_eq!(
            (closed[0].start_ms, closed[0].count, closed[0].sum),
            (0, 2, 5.0)
        );
        assert_eq!(
            a.emit("t", "s", 9.0, 9_999, 15_000, &mut closed),
            Emitted::Late
        );
        // A reading whose window's grace passed before it came is late too,
        // without opening a window.
        assert_eq!(
            a.emit("t", "s", 9.0, 30_000, 50_000, &mut closed),
            Emitted::Late
        );
        // The second window: its own readings, exactly.
        a.close_due(25_000, &mut closed);
        assert_eq!(
            (closed[1].start_ms, closed[1].count, closed[1].sum),
            (10_000, 2, 5.0)
        );
        assert_eq!(a.late, 2);
    }

    #[test]
    fn readings_far_ahead_of_the_clock_are_refused_as_ahead() {
        let mut a = agg();
        let mut closed = Vec::new();
        let now = 1_000_000;
        assert_eq!(
            a.emit("t", "s", 1.0, now + 60_000, now, &mut closed),
            Emitted::Merged
        );
        assert_eq!(
            a.emit("t", "s", 1.0, now + 60_001, now, &mut closed),
            Emitted::Ahead
        );
        assert_eq!((a.ahead, a.late), (1, 0));
    }

    #[test]
    fn open_windows_round_trip_through_json_and_read_what_earlier_versions_saved() {
        let w = |start| Window::new("m", "k", start, 10_000, 1.0);
        assert_eq!(open_to_json(&[]), None);
        let one = open_to_json(&[w(0)]).unwrap();
        assert!(one.starts_with('{'), "one window is saved as before: {one}");
        assert_eq!(open_from_json(&one), vec![w(0)]);
        let two = open_to_json(&[w(0), w(10_000)]).unwrap();
        assert_eq!(open_from_json(&two), vec![w(0), w(10_000)]);
        assert!(open_from_json("not json").is_empty());
    }

    #[test]
    fn a_grace_or_lead_over_a_day_is_refused() {
        let mut problems = Vec::new();
        AggregateConfig {
            grace_ms: DAY_MS + 1,
            max_ahead_ms: DAY_MS + 1,
            ..AggregateConfig::default()
        }
        .validate(&mut problems);
        let text = format!("{problems:?}");
        assert!(text.contains("aggregate.grace_ms"), "{text}");
        assert!(text.contains("aggregate.max_ahead_ms"), "{text}");
    }
}
