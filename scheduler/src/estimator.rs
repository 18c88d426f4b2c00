//! Peak-EWMA latency estimator (as in linkerd's and tower's balancers): a slower sample
//! raises the estimate at once; faster samples pull it down exponentially with time, so a
//! PC that slows down is avoided quickly and trusted again gradually. Pure: time is given.

/// Decay time constant: how fast the estimate forgets a peak.
pub const DECAY_MS: f64 = 10_000.0;

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PeakEwma {
    /// Estimate in milliseconds; 0 before the first sample.
    pub value_ms: f64,
    last_ms: u64,
}

impl PeakEwma {
    pub fn observe(&mut self, sample_ms: f64, now_ms: u64) {
        if self.value_ms == 0.0 || sample_ms > self.value_ms {
            self.value_ms = sample_ms;
        } else {
            let elapsed = now_ms.saturating_sub(self.last_ms) as f64;
            let keep = (-elapsed / DECAY_MS).exp();
            self.value_ms = self.value_ms * keep + sample_ms * (1.0 - keep);
        }
        self.last_ms = now_ms;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peaks_jump_and_decay_with_time() {
        let mut e = PeakEwma::default();
        e.observe(10.0, 0);
        assert_eq!(e.value_ms, 10.0);
        e.observe(50.0, 100);
        assert_eq!(e.value_ms, 50.0, "a slower sample is taken at once");
        e.observe(10.0, 200);
        assert!(
            e.value_ms > 49.0,
            "100 ms later the peak is mostly kept: {}",
            e.value_ms
        );
        for t in 1..=10 {
            e.observe(10.0, 200 + t * 10_000);
        }
        assert!(
            (e.value_ms - 10.0).abs() < 0.5,
            "after 100 s it is back near 10: {}",
            e.value_ms
        );
    }
}
