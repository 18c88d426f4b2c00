//! Prometheus metrics: counters, gauges and fixed-bucket histograms in the text format
//! 0.0.4, encoded by the `prometheus` crate. Names follow Prometheus conventions
//! (`_total` counters, base units: seconds, bytes, joules).
//!
//! Why `prometheus` and not `prometheus-client`: the latter writes OpenMetrics, where a
//! counter family is named without `_total` and its samples with it; `promtool check
//! metrics` (which the tests run) then reports every counter as a family without help
//! text. `prometheus` writes the format promtool lints cleanly.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus::proto::{Bucket, Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::TextEncoder;

/// Latency buckets in seconds: 0.5 ms to 10 s.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A histogram with [`LATENCY_BUCKETS`]; lock-free.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Per bucket (not cumulative), plus one for +Inf.
    counts: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, seconds: f64) {
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns
            .fetch_add((seconds * 1e9).max(0.0) as u64, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    pub fn sum_seconds(&self) -> f64 {
        self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9
    }

    /// Cumulative counts per bucket, ending with +Inf.
    pub fn cumulative(&self) -> Vec<u64> {
        let mut total = 0;
        self.counts
            .iter()
            .map(|c| {
                total += c.load(Ordering::Relaxed);
                total
            })
            .collect()
    }

    /// The `q` quantile (0..1) estimated by linear interpolation inside its bucket, as
    /// Prometheus' histogram_quantile does; None without observations.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        quantile(&LATENCY_BUCKETS, &self.cumulative(), q)
    }
}

/// The `q` quantile of a histogram given as bucket upper bounds and cumulative counts
/// (one more count than bounds: +Inf), interpolating inside the bucket; None when empty.
pub fn quantile(bounds: &[f64], cumulative: &[u64], q: f64) -> Option<f64> {
    let total = *cumulative.last()?;
    if total == 0 || cumulative.len() != bounds.len() + 1 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let i = cumulative.iter().position(|c| *c as f64 >= rank)?;
    if i == bounds.len() {
        return bounds.last().copied();
    }
    let (lower, below) = if i == 0 {
        (0.0, 0)
    } else {
        (bounds[i - 1], cumulative[i - 1])
    };
    let upper = bounds[i];
    let in_bucket = (cumulative[i] - below).max(1) as f64;
    Some(lower + (upper - lower) * (rank - below as f64) / in_bucket)
}

/// A metric family's type, as the exposition declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Builds an exposition from values read at scrape time (the `prometheus` crate's custom
/// collector model: the state lives in the scheduler and worker, and each scrape turns it
/// into metric families); the crate's `TextEncoder` writes the text, escaping included.
/// Each family is declared once with [`Exposition::family`], then its series follow.
#[derive(Default)]
pub struct Exposition {
    families: Vec<MetricFamily>,
}

fn metric(pairs: &[(&str, &str)]) -> Metric {
    let mut metric = Metric::default();
    metric.set_label(
        pairs
            .iter()
            .map(|(name, value)| {
                let mut pair = LabelPair::default();
                pair.set_name(name.to_string());
                pair.set_value(value.to_string());
                pair
            })
            .collect(),
    );
    metric
}

impl Exposition {
    /// Declares a family; the series added next belong to it.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        let mut family = MetricFamily::default();
        family.set_name(name.to_string());
        family.set_help(help.to_string());
        family.set_field_type(match kind {
            Kind::Counter => MetricType::COUNTER,
            Kind::Gauge => MetricType::GAUGE,
            Kind::Histogram => MetricType::HISTOGRAM,
        });
        self.families.push(family);
        self
    }

    /// A series of the last declared counter or gauge family.
    pub fn sample(&mut self, pairs: &[(&str, &str)], value: f64) -> &mut Self {
        if let Some(family) = self.families.last_mut() {
            let mut m = metric(pairs);
            match family.get_field_type() {
                MetricType::COUNTER => {
                    let mut counter = Counter::default();
                    counter.set_value(value);
                    m.set_counter(counter);
                }
                _ => {
                    let mut gauge = Gauge::default();
                    gauge.set_value(value);
                    m.set_gauge(gauge);
                }
            }
            family.mut_metric().push(m);
        }
        self
    }

    /// A series of the last declared histogram family, with [`LATENCY_BUCKETS`].
    pub fn histogram(&mut self, pairs: &[(&str, &str)], h: &Histogram) -> &mut Self {
        if let Some(family) = self.families.last_mut() {
            let cumulative = h.cumulative();
            let mut histogram = prometheus::proto::Histogram::default();
            // The encoder adds the +Inf bucket from the sample count.
            histogram.set_bucket(
                LATENCY_BUCKETS
                    .iter()
                    .zip(&cumulative)
                    .map(|(bound, count)| {
                        let mut bucket = Bucket::default();
                        bucket.set_upper_bound(*bound);
                        bucket.set_cumulative_count(*count);
                        bucket
                    })
                    .collect(),
            );
            histogram.set_sample_count(cumulative.last().copied().unwrap_or(0));
            histogram.set_sample_sum(h.sum_seconds());
            let mut m = metric(pairs);
            m.set_histogram(histogram);
            family.mut_metric().push(m);
        }
        self
    }

    /// The text exposition. Families without series are left out (the format has no
    /// empty family).
    pub fn finish(mut self) -> String {
        self.families.retain(|f| !f.get_metric().is_empty());
        // Only empty families or names fail to encode, and neither is left here; should
        // it happen anyway, the scrape is empty and the log says why.
        TextEncoder::new()
            .encode_to_string(&self.families)
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "cannot encode /metrics");
                String::new()
            })
    }
}

/// The status code a call ended with (OK for a success).
pub fn result_code<T>(result: &Result<T, tonic::Status>) -> tonic::Code {
    match result {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    }
}

/// The gRPC status code's name in Prometheus label style, e.g. `OK`, `NOT_FOUND`.
pub fn code_label(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_and_quantiles() {
        let h = Histogram::default();
        assert_eq!(h.quantile(0.5), None);
        for _ in 0..90 {
            h.observe(0.002); // (0.001, 0.0025]
        }
        for _ in 0..10 {
            h.observe(0.2); // (0.1, 0.25]
        }
        assert_eq!(h.count(), 100);
        let c = h.cumulative();
        assert_eq!((c[1], c[2], c[8], c[14]), (0, 90, 100, 100));
        let p50 = h.quantile(0.5).expect("p50");
        assert!(p50 > 0.001 && p50 <= 0.0025, "{p50}");
        let p99 = h.quantile(0.99).expect("p99");
        assert!(p99 > 0.1 && p99 <= 0.25, "{p99}");
        assert!((h.sum_seconds() - (90.0 * 0.002 + 10.0 * 0.2)).abs() < 1e-6);
    }

    #[test]
    fn text_format() {
        let h = Histogram::default();
        h.observe(0.003);
        let mut e = Exposition::default();
        e.family("x_requests_total", Kind::Counter, "Requests.")
            .sample(&[("model", "a\"b\nc"), ("code", "OK")], 3.0);
        e.family("x_seconds", Kind::Histogram, "Latency.")
            .histogram(&[("model", "m")], &h);
        e.family("x_empty", Kind::Gauge, "No series.");
        let text = e.finish();
        assert!(!text.contains("x_empty"), "{text}");
        assert!(text.contains("# TYPE x_requests_total counter\n"));
        assert!(
            text.contains("x_requests_total{model=\"a\\\"b\\nc\",code=\"OK\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("x_seconds_bucket{model=\"m\",le=\"0.0025\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("x_seconds_bucket{model=\"m\",le=\"0.005\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("x_seconds_bucket{model=\"m\",le=\"+Inf\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("x_seconds_count{model=\"m\"} 1\n"), "{text}");
    }
}
