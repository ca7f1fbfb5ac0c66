//! One app's recent history: per-second request samples and cold starts, in ring buffers.

use std::collections::VecDeque;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use crate::metrics::{AppTotals, LATENCY_BOUNDS_MS, LATENCY_BUCKETS};

/// Samples kept (one per [`TICK`](super::TICK)): five minutes.
const SAMPLES: usize = 300;
/// The window of the rate.
const RATE_SAMPLES: usize = 10;
/// The window of the error ratio and the latency quantiles.
const WINDOW_SAMPLES: usize = 60;
/// Samples per bar of the request series.
const SERIES_BIN: usize = 10;
/// How long cold starts are kept for the histogram.
const COLD_WINDOW: Duration = Duration::from_secs(600);
/// Upper bounds (ms) of the cold-start histogram's bars; the last bar is everything above.
const COLD_BOUNDS_MS: [u64; 7] = [100, 250, 500, 1000, 2500, 5000, 10000];

/// What changed during one tick.
#[derive(Clone, Copy, Debug)]
struct Sample {
    requests: u64,
    errors: u64,
    latency: [u64; LATENCY_BUCKETS],
}

#[derive(Debug, Default)]
pub(super) struct History {
    last: AppTotals,
    samples: VecDeque<Sample>,
    cold_starts: VecDeque<(Instant, Duration)>,
}

impl History {
    /// Adds the change since the last sample (counters only grow; a reset counts from zero).
    pub(super) fn sample(&mut self, now: AppTotals) {
        let mut latency = [0; LATENCY_BUCKETS];
        for (i, slot) in latency.iter_mut().enumerate() {
            *slot = now.latency[i].saturating_sub(self.last.latency[i]);
        }
        let sample = Sample {
            requests: now.requests.saturating_sub(self.last.requests),
            errors: now.errors.saturating_sub(self.last.errors),
            latency,
        };
        self.last = now;
        if self.samples.len() == SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
    }

    pub(super) fn cold_start(&mut self, total: Duration) {
        self.cold_start_at(total, Instant::now());
    }

    fn cold_start_at(&mut self, total: Duration, now: Instant) {
        while self
            .cold_starts
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > COLD_WINDOW)
        {
            self.cold_starts.pop_front();
        }
        self.cold_starts.push_back((now, total));
    }

    fn last(&self, n: usize) -> impl Iterator<Item = &Sample> {
        self.samples
            .iter()
            .skip(self.samples.len().saturating_sub(n))
    }

    pub(super) fn json(&self) -> Value {
        self.json_at(Instant::now())
    }

    fn json_at(&self, now: Instant) -> Value {
        let rate_n = self.samples.len().clamp(1, RATE_SAMPLES);
        let rate = self.last(RATE_SAMPLES).map(|s| s.requests).sum::<u64>() as f64 / rate_n as f64;
        let mut requests = 0;
        let mut errors = 0;
        let mut latency = [0u64; LATENCY_BUCKETS];
        for s in self.last(WINDOW_SAMPLES) {
            requests += s.requests;
            errors += s.errors;
            for (sum, n) in latency.iter_mut().zip(s.latency) {
                *sum += n;
            }
        }
        // Bars of the series, oldest first, ending with the newest sample; missing time is 0.
        let bins = SAMPLES / SERIES_BIN;
        let mut series = vec![0u64; bins];
        let mut error_series = vec![0u64; bins];
        for (age, s) in self.samples.iter().rev().enumerate() {
            let bin = bins - 1 - age / SERIES_BIN;
            series[bin] += s.requests;
            error_series[bin] += s.errors;
        }
        let mut cold = [0u64; COLD_BOUNDS_MS.len() + 1];
        let mut cold_count = 0;
        for (at, total) in &self.cold_starts {
            if now.duration_since(*at) > COLD_WINDOW {
                continue;
            }
            let ms = total.as_millis() as u64;
            let bar = COLD_BOUNDS_MS
                .iter()
                .position(|bound| ms <= *bound)
                .unwrap_or(COLD_BOUNDS_MS.len());
            cold[bar] += 1;
            cold_count += 1;
        }
        json!({
            "requests_total": self.last.requests,
            "errors_total": self.last.errors,
            "rate_per_s": (rate * 100.0).round() / 100.0,
            "window_s": WINDOW_SAMPLES,
            "window_requests": requests,
            "error_ratio": (requests > 0).then(|| errors as f64 / requests as f64),
            "p50_ms": quantile(&latency, 0.5),
            "p99_ms": quantile(&latency, 0.99),
            "series": {"bin_s": SERIES_BIN, "requests": series, "errors": error_series},
            "cold_starts": {
                "window_s": COLD_WINDOW.as_secs(),
                "bounds_ms": COLD_BOUNDS_MS,
                "counts": cold,
                "count": cold_count,
            },
        })
    }
}

/// The upper bound (ms) of the bucket holding quantile `q`; `None` without requests, and the
/// last finite bound (marked by the page as "more than") for the overflow bucket.
fn quantile(buckets: &[u64; LATENCY_BUCKETS], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (q * total as f64).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, n) in buckets.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Some(LATENCY_BOUNDS_MS[i.min(LATENCY_BOUNDS_MS.len() - 1)]);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(requests: u64, errors: u64, bucket: usize) -> AppTotals {
        let mut latency = [0; LATENCY_BUCKETS];
        latency[bucket] = requests;
        AppTotals {
            requests,
            errors,
            latency,
        }
    }

    #[test]
    fn rate_errors_and_quantiles_come_from_the_samples() {
        let mut h = History::default();
        h.sample(totals(10, 0, 0));
        h.sample(totals(30, 2, 0));
        let mut t = totals(30, 2, 0);
        t.latency[5] = 2;
        t.requests = 32;
        h.sample(t);
        let j = h.json();
        assert_eq!(j["requests_total"], 32);
        assert_eq!(j["rate_per_s"], 10.67);
        assert_eq!(j["window_requests"], 32);
        assert_eq!(j["error_ratio"], 2.0 / 32.0);
        assert_eq!(j["p50_ms"], LATENCY_BOUNDS_MS[0]);
        assert_eq!(j["p99_ms"], LATENCY_BOUNDS_MS[5]);
        assert_eq!(j["series"]["requests"][29], 32);
    }

    #[test]
    fn no_requests_means_no_quantiles() {
        let j = History::default().json();
        assert!(j["p50_ms"].is_null());
        assert!(j["error_ratio"].is_null());
    }

    #[test]
    fn cold_starts_leave_the_histogram_after_the_window() {
        let t0 = Instant::now();
        let mut h = History::default();
        h.cold_start_at(Duration::from_millis(80), t0);
        h.cold_start_at(Duration::from_millis(3000), t0);
        let j = h.json_at(t0);
        assert_eq!(j["cold_starts"]["counts"][0], 1);
        assert_eq!(j["cold_starts"]["counts"][5], 1);
        assert_eq!(j["cold_starts"]["count"], 2);
        let later = t0 + COLD_WINDOW + Duration::from_secs(1);
        assert_eq!(h.json_at(later)["cold_starts"]["count"], 0);
        // A cold start after the window pushes the old ones out of the buffer.
        h.cold_start_at(Duration::from_millis(80), later);
        assert_eq!(h.cold_starts.len(), 1);
    }
}
