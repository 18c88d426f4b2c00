//! Peak-EWMA latency estimator (as in linkerd's and tower's balancers): a slower sample
//! raises the estimate at once; faster samples pull it down exponentially with time, so a
//! PC that slows down is avoided quickly and trusted again gradually. Without samples the
//! estimate decays towards zero (as tower's does), so a worker that stopped getting work
//! because it looked slow is tried again and measured anew. Pure: time is given.

/// Decay time constant: how fast the estimate forgets a peak.
pub const DECAY_MS: f64 = 5_000.0;
/// A sample older than this no longer describes the worker.
pub const STALE_MS: u64 = 3_000;

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PeakEwma {
    /// Estimate in milliseconds; 0 before the first sample.
    pub value_ms: f64,
    last_ms: u64,
}

impl PeakEwma {
    /// The estimate at `now_ms`: the last value decayed by the time since it was set.
    pub fn estimate(&self, now_ms: u64) -> f64 {
        let elapsed = now_ms.saturating_sub(self.last_ms) as f64;
        self.value_ms * (-elapsed / DECAY_MS).exp()
    }

    /// The estimate, or `None` when the last sample is older than `stale_after_ms`: a
    /// worker idle that long is measured anew rather than judged by an old peak (the
    /// caller falls back to the worker's own figures, so it gets a probe request).
    pub fn fresh_estimate(&self, now_ms: u64, stale_after_ms: u64) -> Option<f64> {
        (now_ms.saturating_sub(self.last_ms) <= stale_after_ms).then(|| self.estimate(now_ms))
    }

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

    #[test]
    fn an_unused_estimate_decays_towards_zero() {
        let mut e = PeakEwma::default();
        e.observe(10.0, 1_000);
        assert_eq!(e.estimate(1_000), 10.0);
        let later = e.estimate(1_000 + DECAY_MS as u64);
        assert!((later - 10.0 / std::f64::consts::E).abs() < 1e-9, "{later}");
    }

    #[test]
    fn old_samples_are_stale() {
        let mut e = PeakEwma::default();
        e.observe(300.0, 1_000);
        assert_eq!(
            e.fresh_estimate(1_000 + STALE_MS, STALE_MS),
            Some(300.0 * (-(STALE_MS as f64) / DECAY_MS).exp())
        );
        assert_eq!(e.fresh_estimate(1_001 + STALE_MS, STALE_MS), None);
    }
}
