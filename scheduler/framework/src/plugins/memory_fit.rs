//! MemoryFit: a worker whose free memory is under the headroom is under MemoryPressure
//! and gets no new work; among the others, more free memory (GPU memory for a model on
//! the GPU) scores higher.

use serde::Deserialize;

use crate::contracts::*;
use crate::registry::{Built, PluginError};

pub const NAME: &str = "MemoryFit";

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Args {
    /// Free RAM under this share of the total is MemoryPressure.
    pub headroom_percent: f64,
}

impl Default for Args {
    fn default() -> Self {
        Args {
            headroom_percent: MEMORY_PRESSURE_PERCENT,
        }
    }
}

pub struct MemoryFit {
    args: Args,
}

impl Plugin for MemoryFit {
    fn name(&self) -> &'static str {
        NAME
    }
}

impl Filter for MemoryFit {
    fn filter(&self, _: &CycleState, _: &RequestInfo, worker: &WorkerInfo) -> Status {
        let free = worker.free_ram_percent();
        if free < self.args.headroom_percent {
            return Status::unschedulable(format!(
                "MemoryPressure: {free:.1}% RAM free, under {}%",
                self.args.headroom_percent
            ));
        }
        Status::success()
    }
}

impl Score for MemoryFit {
    fn score(&self, _: &CycleState, request: &RequestInfo, worker: &WorkerInfo) -> i64 {
        let on_gpu = worker.model(request).is_some_and(|m| m.on_gpu);
        if on_gpu && worker.gpu_free_bytes > 0 {
            // GPU memory in GiB, capped: a bigger card takes more.
            return ((worker.gpu_free_bytes >> 30) as i64 * 4).min(MAX_SCORE);
        }
        worker.free_ram_percent().round() as i64
    }
}

pub fn build(value: &serde_yaml::Value) -> Result<Built, PluginError> {
    let args: Args = crate::plugins::args(value)?;
    if !(0.0..100.0).contains(&args.headroom_percent) {
        return Err(PluginError::Args(format!(
            "headroom_percent must be in [0, 100), got {}",
            args.headroom_percent
        )));
    }
    Ok(Built::filter_and_score(MemoryFit { args }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testing::*;

    #[test]
    fn table() {
        let plugin = MemoryFit {
            args: Args::default(),
        };
        let with_free = |free_gib: u64, total_gib: u64| {
            let mut w = worker(0);
            w.ram_free_bytes = free_gib << 30;
            w.ram_total_bytes = total_gib << 30;
            w
        };
        let mut unknown = worker(0);
        unknown.ram_total_bytes = 0;
        check_filter(
            &plugin,
            vec![
                ("plenty", request(), with_free(4, 8), Code::Success),
                ("pressure", request(), with_free(0, 8), Code::Unschedulable),
                ("not reported", request(), unknown, Code::Success),
            ],
        );
        let s = CycleState::default();
        assert_eq!(plugin.score(&s, &request(), &with_free(6, 8)), 75);
        assert_eq!(plugin.score(&s, &request(), &with_free(2, 8)), 25);
        let mut gpu = with_free(1, 8);
        gpu.models[0].on_gpu = true;
        gpu.gpu_free_bytes = 10 << 30;
        assert_eq!(plugin.score(&s, &request(), &gpu), 40);
    }

    #[test]
    fn bad_args_are_named() {
        let err = build(&serde_yaml::from_str("{headroom: 5}").expect("yaml"))
            .err()
            .expect("unknown key");
        assert!(err.to_string().contains("headroom"), "{err}");
        assert!(build(&serde_yaml::from_str("{headroom_percent: 150}").expect("yaml")).is_err());
    }
}
