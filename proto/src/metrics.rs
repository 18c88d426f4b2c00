//! Prometheus text exposition (format 0.0.4), written by hand: counters, gauges and
//! fixed-bucket histograms. Names follow Prometheus conventions (`_total` counters,
//! base units: seconds, bytes, joules).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

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

/// Builds an exposition; each family is declared once, then its samples follow.
#[derive(Default)]
pub struct Exposition {
    out: String,
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn labels(pairs: &[(&str, &str)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

fn number(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else {
        format!("{v}")
    }
}

impl Exposition {
    /// Declares a family: `kind` is counter, gauge or histogram.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) -> &mut Self {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
        self
    }

    pub fn sample(&mut self, name: &str, pairs: &[(&str, &str)], value: f64) -> &mut Self {
        let _ = writeln!(self.out, "{name}{} {}", labels(pairs), number(value));
        self
    }

    /// The samples of one histogram series (`name` without suffixes).
    pub fn histogram(&mut self, name: &str, pairs: &[(&str, &str)], h: &Histogram) -> &mut Self {
        let cumulative = h.cumulative();
        for (i, count) in cumulative.iter().enumerate() {
            let le = LATENCY_BUCKETS
                .get(i)
                .map(|b| number(*b))
                .unwrap_or_else(|| "+Inf".into());
            let mut with_le: Vec<(&str, &str)> = pairs.to_vec();
            with_le.push(("le", &le));
            self.sample(&format!("{name}_bucket"), &with_le, *count as f64);
        }
        self.sample(&format!("{name}_sum"), pairs, h.sum_seconds());
        self.sample(&format!("{name}_count"), pairs, h.count() as f64);
        self
    }

    pub fn finish(self) -> String {
        self.out
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
        e.family("x_requests_total", "counter", "Requests.").sample(
            "x_requests_total",
            &[("model", "a\"b"), ("code", "OK")],
            3.0,
        );
        e.family("x_seconds", "histogram", "Latency.").histogram(
            "x_seconds",
            &[("model", "m")],
            &h,
        );
        let text = e.finish();
        assert!(text.contains("# TYPE x_requests_total counter\n"));
        assert!(
            text.contains("x_requests_total{model=\"a\\\"b\",code=\"OK\"} 3\n"),
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
