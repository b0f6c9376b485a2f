//! Windowed aggregates of the metrics functions `emit`.
//!
//! Each (metric, key) series has at most one open tumbling window of
//! `window_s` (per metric, or the default), aligned to the Unix epoch so that
//! every gateway cuts the same windows. A window keeps count, min, max, sum
//! and last; when it closes it becomes one aggregate record for the buffer.
//!
//! An event whose timestamp falls before its series' open window, or into a
//! window already closed, is *late*: it is counted and not merged, so a
//! closed aggregate never changes after it was written.
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
}

impl Default for AggregateConfig {
    fn default() -> Self {
        AggregateConfig {
            window_s: 10,
            window_s_by_metric: HashMap::new(),
            stream: "aggregates".to_owned(),
            max_series: 10_000,
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
        if self.max_series == 0 {
            problems.push(Problem::new(
                "aggregate.max_series",
                "must be greater than 0",
            ));
        }
    }
}

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
    /// Its window was already closed (or older than the open one).
    Late,
    /// A new series would exceed `max_series`.
    TooManySeries,
    /// NaN or infinite values are refused: they would poison min/max/mean.
    NotFinite,
}

#[derive(Debug)]
struct Series {
    open: Option<Window>,
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
    pub refused: u64,
    pub closed: u64,
}

impl Default for Series {
    fn default() -> Self {
        Series {
            open: None,
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

    /// Adds one value; a window it closes is pushed to `closed`.
    pub fn emit(
        &mut self,
        metric: &str,
        key: &str,
        value: f64,
        ts_ms: i64,
        closed: &mut Vec<Window>,
    ) -> Emitted {
        if !value.is_finite() {
            self.refused += 1;
            return Emitted::NotFinite;
        }
        let window_ms = self.window_ms(metric);
        let start = ts_ms - ts_ms.rem_euclid(window_ms);
        let full = self.n_series >= self.config.max_series;
        let by_key = match self.series.get_mut(metric) {
            Some(m) => m,
            None if full => {
                self.refused += 1;
                return Emitted::TooManySeries;
            }
            None => self.series.entry(metric.to_owned()).or_default(),
        };
        let series = match by_key.get_mut(key) {
            Some(s) => s,
            None if full => {
                self.refused += 1;
                return Emitted::TooManySeries;
            }
            None => {
                self.n_series += 1;
                by_key.entry(key.to_owned()).or_default()
            }
        };
        if ts_ms < series.closed_until_ms {
            self.late += 1;
            return Emitted::Late;
        }
        series.dirty = true;
        match &mut series.open {
            Some(w) if w.start_ms == start => w.add(value),
            Some(w) if start < w.start_ms => {
                self.late += 1;
                return Emitted::Late;
            }
            open => {
                if let Some(done) = open.take() {
                    series.closed_until_ms = done.end_ms();
                    self.closed += 1;
                    closed.push(done);
                }
                *open = Some(Window::new(metric, key, start, window_ms, value));
            }
        }
        Emitted::Merged
    }

    /// Closes every window whose end is at or before `now_ms`.
    pub fn close_due(&mut self, now_ms: i64, closed: &mut Vec<Window>) {
        for by_key in self.series.values_mut() {
            for series in by_key.values_mut() {
                if series.open.as_ref().is_some_and(|w| w.end_ms() <= now_ms) {
                    let done = series.open.take().expect("checked above");
                    series.closed_until_ms = done.end_ms();
                    series.dirty = true;
                    self.closed += 1;
                    closed.push(done);
                }
            }
        }
    }

    /// Calls `f` for each series changed since the last call, with its open
    /// window (`None`: it has none any more), and marks it clean.
    pub fn drain_dirty(&mut self, mut f: impl FnMut(&str, &str, Option<&Window>, i64)) {
        for (metric, by_key) in &mut self.series {
            for (key, series) in by_key.iter_mut() {
                if series.dirty {
                    f(metric, key, series.open.as_ref(), series.closed_until_ms);
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

    /// Puts back a window saved by the buffer at its last commit.
    pub fn restore(
        &mut self,
        window: Option<Window>,
        metric: &str,
        key: &str,
        closed_until_ms: i64,
    ) {
        let by_key = self.series.entry(metric.to_owned()).or_default();
        if !by_key.contains_key(key) {
            self.n_series += 1;
        }
        by_key.insert(
            key.to_owned(),
            Series {
                open: window,
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
            .filter(|s| s.open.is_some())
            .count()
    }
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
            assert_eq!(a.emit("temp", "t1", v, t, &mut closed), Emitted::Merged);
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
        a.emit("temp", "t1", 1.0, 5_000, &mut closed);
        a.emit("temp", "t1", 2.0, 15_000, &mut closed);
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].start_ms, 0);
        assert_eq!(a.open_windows(), 1);
    }

    #[test]
    fn late_events_are_counted_not_merged() {
        let mut a = agg();
        let mut closed = Vec::new();
        a.emit("temp", "t1", 1.0, 15_000, &mut closed);
        assert_eq!(a.emit("temp", "t1", 9.0, 5_000, &mut closed), Emitted::Late);
        a.close_due(20_000, &mut closed);
        assert_eq!(
            a.emit("temp", "t1", 9.0, 19_000, &mut closed),
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
        assert_eq!(a.emit("m", "a", 1.0, 0, &mut closed), Emitted::Merged);
        assert_eq!(a.emit("m", "b", 1.0, 0, &mut closed), Emitted::Merged);
        assert_eq!(
            a.emit("m", "c", 1.0, 0, &mut closed),
            Emitted::TooManySeries
        );
        assert_eq!(
            a.emit("n", "a", 1.0, 0, &mut closed),
            Emitted::TooManySeries
        );
        assert_eq!(
            a.emit("m", "a", f64::NAN, 0, &mut closed),
            Emitted::NotFinite
        );
        assert_eq!(a.emit("m", "a", 2.0, 0, &mut closed), Emitted::Merged);
    }

    #[test]
    fn per_metric_windows_and_negative_times_align_to_the_epoch() {
        let mut cfg = AggregateConfig::default();
        cfg.window_s_by_metric.insert("slow".into(), 60);
        let mut a = Aggregator::new(cfg);
        let mut closed = Vec::new();
        a.emit("slow", "", 1.0, 61_000, &mut closed);
        a.emit("fast", "", 1.0, -1, &mut closed);
        a.close_due(i64::MAX, &mut closed);
        closed.sort_by_key(|w| w.window_ms);
        assert_eq!((closed[0].start_ms, closed[0].window_ms), (-10_000, 10_000));
        assert_eq!((closed[1].start_ms, closed[1].window_ms), (60_000, 60_000));
    }

    #[test]
    fn dirty_series_are_reported_once() {
        let mut a = agg();
        let mut closed = Vec::new();
        a.emit("m", "k", 1.0, 0, &mut closed);
        let mut seen = 0;
        a.drain_dirty(|_, _, w, _| {
            assert!(w.is_some());
            seen += 1
        });
        a.drain_dirty(|_, _, _, _| seen += 1);
        assert_eq!(seen, 1);
    }
}
