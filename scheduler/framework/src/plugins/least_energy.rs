//! LeastEnergy: among the workers that would start the request within a wait budget, the
//! one whose inferences of the model cost the fewest joules scores most. Scores are in
//! proportion to the most efficient worker scored, whether or not it is within the budget
//! (half as efficient, half the score), so an idle but wasteful PC does not win merely
//! because the efficient ones are busy. A worker that would make the request wait longer
//! than the budget scores 0: energy never buys a long queue. A worker that has not
//! measured its energy yet scores 50 within the budget, neither preferred nor avoided. The
//! figures are the workers' own (RAPL, NVML, or configured watts; docs/energy.md).

use serde::Deserialize;

use crate::contracts::*;
use crate::registry::{Built, PluginError};

pub const NAME: &str = "LeastEnergy";

/// Score of a worker within the budget with no energy figure for the model.
const UNKNOWN_SCORE: i64 = MAX_SCORE / 2;
/// Raw score of a worker within the budget with no energy figure.
const UNKNOWN: i64 = 0;
/// Raw score of a worker over the budget with no energy figure (normalised to 0).
const OVER_BUDGET_UNKNOWN: i64 = i64::MIN;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Args {
    /// A worker expected to start the request later than this (its requests ahead times
    /// its latency) is not chosen for its efficiency.
    pub wait_budget_ms: f64,
    /// Latency assumed for a worker with no sample yet, in milliseconds.
    pub default_latency_ms: f64,
}

impl Default for Args {
    fn default() -> Self {
        Args {
            wait_budget_ms: 50.0,
            default_latency_ms: DEFAULT_LATENCY_MS,
        }
    }
}

pub struct LeastEnergy {
    args: Args,
}

impl Plugin for LeastEnergy {
    fn name(&self) -> &'static str {
        NAME
    }
}

impl Score for LeastEnergy {
    /// Microjoules per inference (at least 1), negative when the worker is over the wait
    /// budget, or one of the markers above.
    fn score(&self, _: &CycleState, request: &RequestInfo, worker: &WorkerInfo) -> i64 {
        let wait_ms =
            worker.waves_ahead(request) * worker.latency_ms(request, self.args.default_latency_ms);
        let within = wait_ms <= self.args.wait_budget_ms;
        match worker.model(request).map(|m| m.joules_per_inference) {
            Some(j) if j.is_finite() && j > 0.0 => {
                let uj = (j * 1e6).ceil().clamp(1.0, 1e15) as i64;
                if within {
                    uj
                } else {
                    -uj
                }
            }
            _ if within => UNKNOWN,
            _ => OVER_BUDGET_UNKNOWN,
        }
    }

    fn normalize(&self, _: &CycleState, scores: &mut [i64]) {
        let best = scores
            .iter()
            .filter(|s| **s != UNKNOWN && **s != OVER_BUDGET_UNKNOWN)
            .map(|s| s.abs())
            .min();
        for s in scores {
            *s = match (*s, best) {
                (UNKNOWN, _) => UNKNOWN_SCORE,
                (own, Some(best)) if own > 0 => best * MAX_SCORE / own,
                _ => 0,
            };
        }
    }
}

pub fn build(value: &serde_yaml::Value) -> Result<Built, PluginError> {
    let args: Args = crate::plugins::args(value)?;
    if !(args.wait_budget_ms.is_finite() && args.wait_budget_ms >= 0.0) {
        return Err(PluginError::Args(format!(
            "wait_budget_ms must be a number of milliseconds >= 0, got {}",
            args.wait_budget_ms
        )));
    }
    if args.default_latency_ms.is_nan() || args.default_latency_ms <= 0.0 {
        return Err(PluginError::Args(format!(
            "default_latency_ms must be positive, got {}",
            args.default_latency_ms
        )));
    }
    Ok(Built::score(LeastEnergy { args }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testing::*;

    fn with(joules: f64, latency_ms: f64, dispatched: u32) -> WorkerInfo {
        let mut w = worker(0);
        w.models[0].joules_per_inference = joules;
        w.peak_ewma_ms = latency_ms;
        w.dispatched = dispatched;
        w
    }

    fn scores(workers: &[WorkerInfo]) -> Vec<i64> {
        let p = LeastEnergy {
            args: Args::default(),
        };
        let state = CycleState::default();
        let mut raw: Vec<i64> = workers
            .iter()
            .map(|w| p.score(&state, &request(), w))
            .collect();
        p.normalize(&state, &mut raw);
        raw
    }

    #[test]
    fn cheapest_within_the_budget_wins_in_proportion() {
        // (case, workers, normalised scores)
        let cases = [
            (
                "half as efficient, half the score",
                vec![with(2.0, 5.0, 0), with(4.0, 5.0, 0), with(8.0, 5.0, 0)],
                vec![100, 50, 25],
            ),
            (
                "over the 50 ms budget: 0 however cheap, and still the yardstick",
                vec![with(0.5, 30.0, 2), with(2.0, 5.0, 3)],
                vec![0, 25],
            ),
            (
                "over the budget without a figure: 0",
                vec![with(0.0, 30.0, 2), with(2.0, 5.0, 3)],
                vec![0, 100],
            ),
            (
                "not measured yet: neutral",
                vec![with(0.0, 5.0, 0), with(1.0, 5.0, 0), with(f64::NAN, 5.0, 0)],
                vec![50, 100, 50],
            ),
            (
                "nothing measured: all neutral",
                vec![with(0.0, 5.0, 0), with(0.0, 5.0, 0)],
                vec![50, 50],
            ),
            (
                "tiny figures still rank",
                vec![with(0.000_2, 1.0, 0), with(0.000_8, 1.0, 0)],
                vec![100, 25],
            ),
        ];
        for (name, workers, expected) in cases {
            assert_eq!(scores(&workers), expected, "{name}");
        }
    }

    #[test]
    fn args_are_checked() {
        let bad = |yaml: &str| build(&serde_yaml::from_str(yaml).expect("yaml")).err();
        assert!(bad("{wait_budget_ms: -1}")
            .expect("negative budget")
            .to_string()
            .contains("wait_budget_ms"));
        assert!(bad("{default_latency_ms: 0}").is_some());
        assert!(bad("{wait_budget: 5}").is_some(), "unknown key");
        assert!(bad("{wait_budget_ms: 20}").is_none());
    }
}
