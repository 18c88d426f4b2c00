//! Live counters of a loaded model, read by status reports and `/metrics`.

use super::*;

/// Live counters, read by status reports.
#[derive(Debug, Default)]
pub struct ModelStats {
    pub queue_depth: AtomicU32,
    pub in_flight: AtomicU32,
    /// Successful requests.
    pub inference_count: AtomicU64,
    /// Successful ONNX Runtime runs: fewer than requests when requests are batched.
    pub execution_count: AtomicU64,
    pub failure_count: AtomicU64,
    /// Total time of successful inferences, in nanoseconds, from when a session was free.
    pub success_ns: AtomicU64,
    /// Total time successful inferences waited for a free session, in nanoseconds.
    pub queue_ns: AtomicU64,
    /// Of `success_ns`, the time spent making ONNX Runtime's inputs from the request's
    /// tensors, and the request's outputs from ONNX Runtime's, in nanoseconds.
    pub input_ns: AtomicU64,
    pub output_ns: AtomicU64,
    /// Total time of failed inferences, in nanoseconds.
    pub failure_ns: AtomicU64,
    /// Unix time of the last inference, in milliseconds.
    pub last_inference_ms: AtomicU64,
    /// EWMA of latency in microseconds, stored as f64 bits.
    latency_ewma_us: AtomicU64,
}

/// Weight of the newest sample in the latency EWMA.
pub(super) const EWMA_ALPHA: f64 = 0.2;

impl ModelStats {
    pub(super) fn record_latency(&self, elapsed: Duration) {
        let sample = elapsed.as_secs_f64() * 1e6;
        let _ = self
            .latency_ewma_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                let old = f64::from_bits(bits);
                let new = if old == 0.0 {
                    sample
                } else {
                    old + EWMA_ALPHA * (sample - old)
                };
                Some(new.to_bits())
            });
    }

    pub fn latency_ewma_ms(&self) -> f64 {
        f64::from_bits(self.latency_ewma_us.load(Ordering::Relaxed)) / 1e3
    }
}

/// Counts one request in a gauge for as long as it lives.
pub(super) struct Gauge<'a> {
    gauge: &'a AtomicU32,
    /// The gauge's value before this request entered.
    pub(super) value: u32,
}

impl<'a> Gauge<'a> {
    pub(super) fn enter(gauge: &'a AtomicU32) -> Gauge<'a> {
        let value = gauge.fetch_add(1, Ordering::SeqCst);
        Gauge { gauge, value }
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.gauge.fetch_sub(1, Ordering::SeqCst);
    }
}
