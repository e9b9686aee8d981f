//! A histogram of durations recorded with atomics only.
//!
//! `prometheus-client`'s own `Histogram` takes a mutex per observation;
//! the proxy records one per request on every core, so this one keeps a
//! fixed set of `AtomicU64` buckets (microseconds, compared as integers)
//! and only meets the crate at encoding time, through its
//! [`EncodeMetric`] trait.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Upper bounds of HTTP request durations, in seconds.
pub const REQUEST_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Upper bounds of deploys and builds, in seconds.
pub const DEPLOY_BUCKETS: &[f64] = &[
    1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0,
];

/// Cheap to clone: clones share the same counts.
#[derive(Debug, Clone)]
pub struct AtomicHistogram {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Upper bounds in seconds (for encoding) and in microseconds (for
    /// recording), same order.
    bounds: &'static [f64],
    bounds_us: Box<[u64]>,
    /// One more than `bounds`: the last is `+Inf`. Not cumulative.
    counts: Box<[AtomicU64]>,
    sum_us: AtomicU64,
}

impl AtomicHistogram {
    pub fn new(bounds: &'static [f64]) -> AtomicHistogram {
        AtomicHistogram {
            inner: Arc::new(Inner {
                bounds,
                bounds_us: bounds.iter().map(|b| (b * 1e6) as u64).collect(),
                counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
                sum_us: AtomicU64::new(0),
            }),
        }
    }

    /// Record one duration: two relaxed atomic adds, no lock, no allocation.
    pub fn observe(&self, d: Duration) {
        let us = d.as_micros().min(u128::from(u64::MAX)) as u64;
        let i = self
            .inner
            .bounds_us
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(self.inner.bounds_us.len());
        self.inner.counts[i].fetch_add(1, Ordering::Relaxed);
        self.inner.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.inner
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        // Counts are read one by one while others record, so `count` is
        // their sum (never less than the buckets say), and the sum is read
        // last, as the Go client does.
        let buckets: Vec<(f64, u64)> = self
            .inner
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.inner.counts.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.inner.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_and_sum() {
        let h = AtomicHistogram::new(&[0.001, 0.01]);
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(1));
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_secs(2));
        let counts: Vec<u64> = h
            .inner
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        assert_eq!(counts, [2, 1, 1]);
        assert_eq!(h.count(), 4);
        assert_eq!(
            h.inner.sum_us.load(Ordering::Relaxed),
            500 + 1000 + 5000 + 2_000_000
        );
    }
}
