//! Metric primitives the stages count with: a fixed-bucket duration
//! histogram and a per-function log rate limit, both plain atomics.
//! Recording never locks and never allocates; telemetry reads them at
//! scrape time.

use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds of [`Histogram`]'s buckets, in nanoseconds (the last bucket,
/// +Inf, is implicit). From 10 µs (a trivial function) to 100 ms (a function
/// near a large fuel budget).
pub const DURATION_BOUNDS_NS: [u64; 9] = [
    10_000,
    50_000,
    100_000,
    500_000,
    1_000_000,
    5_000_000,
    10_000_000,
    50_000_000,
    100_000_000,
];

/// A duration histogram: one atomic per bucket plus the sum. Recording is two
/// relaxed atomic adds; the count is the sum of the buckets, read at scrape.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Per bucket, not cumulative; the last one is +Inf.
    buckets: [AtomicU64; DURATION_BOUNDS_NS.len() + 1],
    sum_ns: AtomicU64,
}

impl Histogram {
    /// Records one duration.
    #[inline]
    pub fn observe_ns(&self, ns: u64) {
        let i = DURATION_BOUNDS_NS
            .iter()
            .position(|&b| ns <= b)
            .unwrap_or(DURATION_BOUNDS_NS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Cumulative counts per bound (Prometheus `le`), the last being +Inf
    /// (the total count), and the sum in nanoseconds.
    pub fn snapshot(&self) -> ([u64; DURATION_BOUNDS_NS.len() + 1], u64) {
        let mut out = [0u64; DURATION_BOUNDS_NS.len() + 1];
        let mut total = 0;
        for (o, b) in out.iter_mut().zip(&self.buckets) {
            total += b.load(Ordering::Relaxed);
            *o = total;
        }
        (out, self.sum_ns.load(Ordering::Relaxed))
    }
}

/// Per-function log rate limit: a token bucket of [`LogLimiter::BURST`]
/// lines refilled at [`LogLimiter::PER_SECOND`]. Owned by one function's
/// instances (one thread at a time), shared through an `Arc` so the budget
/// survives an instance being re-created after a trap. Lines over the
/// budget are counted, and the count is logged once when lines flow again.
#[derive(Debug, Default)]
pub struct LogLimiter {
    /// Tokens left, scaled by 1000 so refills need no floats.
    milli_tokens: AtomicU64,
    /// When tokens were last added (ms since the epoch); 0: never used.
    refilled_ms: AtomicU64,
    /// Lines dropped since the gateway started (for metrics).
    pub dropped: AtomicU64,
    /// Lines dropped since the last summary line.
    unreported: AtomicU64,
}

impl LogLimiter {
    /// Lines a function may log in a burst.
    pub const BURST: u64 = 100;
    /// Lines per second a function may log over time.
    pub const PER_SECOND: u64 = 20;

    /// Takes one line's token at `now_ms`. `Some(n)`: log it, and first say
    /// that `n` lines were dropped if `n > 0`. `None`: drop it (counted).
    pub fn take(&self, now_ms: u64) -> Option<u64> {
        let last = self.refilled_ms.load(Ordering::Relaxed);
        let mut tokens = self.milli_tokens.load(Ordering::Relaxed);
        if last == 0 {
            tokens = Self::BURST * 1000;
            self.refilled_ms.store(now_ms, Ordering::Relaxed);
        } else if now_ms > last {
            tokens = (tokens + (now_ms - last) * Self::PER_SECOND).min(Self::BURST * 1000);
            self.refilled_ms.store(now_ms, Ordering::Relaxed);
        }
        if tokens < 1000 {
            self.milli_tokens.store(tokens, Ordering::Relaxed);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            self.unreported.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.milli_tokens.store(tokens - 1000, Ordering::Relaxed);
        Some(self.unreported.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_count_everything() {
        let h = Histogram::default();
        for ns in [5_000, 10_000, 10_001, 2_000_000, 1_000_000_000] {
            h.observe_ns(ns);
        }
        let (cum, sum) = h.snapshot();
        assert_eq!(cum[0], 2, "<= 10 µs: 5 µs and exactly 10 µs");
        assert_eq!(cum[1], 3);
        assert_eq!(cum[4], 3, "<= 1 ms");
        assert_eq!(cum[5], 4, "<= 5 ms");
        assert_eq!(cum[8], 4, "<= 100 ms");
        assert_eq!(cum[9], 5, "+Inf is the count");
        assert_eq!(sum, 5_000 + 10_000 + 10_001 + 2_000_000 + 1_000_000_000);
    }

    #[test]
    fn the_log_limiter_allows_a_burst_then_the_rate_and_reports_drops() {
        let l = LogLimiter::default();
        let t0 = 1_000_000;
        for _ in 0..LogLimiter::BURST {
            assert_eq!(l.take(t0), Some(0));
        }
        assert_eq!(l.take(t0), None);
        assert_eq!(l.take(t0), None);
        assert_eq!(l.dropped.load(Ordering::Relaxed), 2);
        // 20 lines/s: one token every 50 ms.
        assert_eq!(l.take(t0 + 49), None);
        assert_eq!(
            l.take(t0 + 49 + 50),
            Some(3),
            "the next line reports 3 dropped"
        );
        assert_eq!(l.take(t0 + 99), None);
        // A long pause refills the burst, not more.
        for _ in 0..LogLimiter::BURST {
            assert!(l.take(t0 + 60_000).is_some());
        }
        assert_eq!(l.take(t0 + 60_000), None);
        assert_eq!(l.dropped.load(Ordering::Relaxed), 5);
    }
}
