//! LeastExpectedLatency: expected completion time of the request on each worker, from
//! the requests already outstanding there (the scheduler's count and the worker's
//! queue and in-flight), the model's session count, and the worker's peak-EWMA latency for
//! the model. The lowest expectation scores 100, the others in proportion, so a PC four
//! times faster receives about four times the work.

use serde::Deserialize;

use crate::contracts::*;
use crate::registry::{Built, PluginError};

pub const NAME: &str = "LeastExpectedLatency";

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Args {
    /// Latency assumed for a worker with no sample yet, in milliseconds.
    pub default_latency_ms: f64,
}

impl Default for Args {
    fn default() -> Self {
        Args {
            default_latency_ms: DEFAULT_LATENCY_MS,
        }
    }
}

pub struct LeastExpectedLatency {
    args: Args,
}

impl Plugin for LeastExpectedLatency {
    fn name(&self) -> &'static str {
        NAME
    }
}

impl LeastExpectedLatency {
    /// Expected completion of one more request, in microseconds.
    pub fn expected_us(&self, request: &RequestInfo, worker: &WorkerInfo) -> f64 {
        let latency_ms = worker.latency_ms(request, self.args.default_latency_ms);
        // Waves of `instances` requests ahead of this one, plus its own.
        (worker.waves_ahead(request) + 1.0) * latency_ms * 1000.0
    }
}

impl Score for LeastExpectedLatency {
    fn score(&self, _: &CycleState, request: &RequestInfo, worker: &WorkerInfo) -> i64 {
        self.expected_us(request, worker).ceil().max(1.0) as i64
    }

    fn normalize(&self, _: &CycleState, scores: &mut [i64]) {
        let best = scores.iter().copied().min().unwrap_or(1).max(1);
        for s in scores {
            *s = best.saturating_mul(MAX_SCORE) / (*s).max(1);
        }
    }
}

pub fn build(value: &serde_yaml::Value) -> Result<Built, PluginError> {
    let args: Args = crate::plugins::args(value)?;
    if args.default_latency_ms.is_nan() || args.default_latency_ms <= 0.0 {
        return Err(PluginError::Args(format!(
            "default_latency_ms must be positive, got {}",
            args.default_latency_ms
        )));
    }
    Ok(Built::score(LeastExpectedLatency { args }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testing::*;

    fn with(latency: f64, dispatched: u32, instances: u32) -> WorkerInfo {
        let mut w = worker(0);
        w.peak_ewma_ms = latency;
        w.dispatched = dispatched;
        w.models[0].instances = instances;
        w
    }

    #[test]
    fn expected_completion_table() {
        let p = LeastExpectedLatency {
            args: Args::default(),
        };
        // (case, worker, expected microseconds)
        let cases = [
            ("idle fast", with(2.0, 0, 1), 2_000.0),
            ("idle slow", with(8.0, 0, 1), 8_000.0),
            ("busy fast", with(2.0, 3, 1), 8_000.0),
            ("busy, two sessions", with(2.0, 3, 2), 4_000.0),
            ("no sample: default", with(0.0, 0, 1), 1_000.0),
            (
                "busy, batching 4 at a time",
                {
                    let mut w = with(2.0, 7, 1);
                    w.models[0].batch = 4;
                    w
                },
                4_000.0,
            ),
        ];
        for (name, w, expected) in cases {
            assert_eq!(p.expected_us(&request(), &w), expected, "{name}");
        }
        let mut reported = with(0.0, 0, 1);
        reported.models[0].reported_latency_ms = 5.0;
        reported.models[0].queue_depth = 1;
        assert_eq!(
            p.expected_us(&request(), &reported),
            10_000.0,
            "worker's own figures"
        );
    }

    #[test]
    fn normalize_gives_proportional_scores() {
        let p = LeastExpectedLatency {
            args: Args::default(),
        };
        let mut scores = vec![2_000, 8_000, 4_000];
        p.normalize(&CycleState::default(), &mut scores);
        assert_eq!(scores, vec![100, 25, 50]);
    }

    #[test]
    fn four_times_faster_gets_about_four_times_the_work() {
        // Greedy assignment of 100 requests by expected completion, no completions.
        let p = LeastExpectedLatency {
            args: Args::default(),
        };
        let mut workers = [with(1.0, 0, 1), with(4.0, 0, 1)];
        for _ in 0..100 {
            let pick = (0..2)
                .min_by(|&a, &b| {
                    p.expected_us(&request(), &workers[a])
                        .total_cmp(&p.expected_us(&request(), &workers[b]))
                })
                .expect("two workers");
            workers[pick].dispatched += 1;
        }
        let (fast, slow) = (workers[0].dispatched, workers[1].dispatched);
        assert!(
            (78..=82).contains(&fast) && fast + slow == 100,
            "fast {fast}, slow {slow}"
        );
    }
}
