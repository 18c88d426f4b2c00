//! ExecutionProvider: honours `localml.provider` (gpu, cpu, any) and prefers workers that
//! run the model on a GPU execution provider.

use crate::contracts::*;
use crate::registry::{Built, PluginError};

pub const NAME: &str = "ExecutionProvider";

pub struct ExecutionProvider;

impl Plugin for ExecutionProvider {
    fn name(&self) -> &'static str {
        NAME
    }
}

impl Filter for ExecutionProvider {
    fn filter(&self, _: &CycleState, request: &RequestInfo, worker: &WorkerInfo) -> Status {
        match worker.provider_mismatch(request) {
            Some(why) => Status::unresolvable(why),
            None => Status::success(),
        }
    }
}

impl Score for ExecutionProvider {
    fn score(&self, _: &CycleState, request: &RequestInfo, worker: &WorkerInfo) -> i64 {
        if worker.model(request).is_some_and(|m| m.on_gpu) {
            MAX_SCORE
        } else {
            0
        }
    }
}

pub fn build(_: &serde_yaml::Value) -> Result<Built, PluginError> {
    Ok(Built::filter_and_score(ExecutionProvider))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testing::*;

    #[test]
    fn table() {
        let mut gpu = worker(1);
        gpu.models[0].on_gpu = true;
        let wants = |provider| RequestInfo {
            provider,
            ..request()
        };
        check_filter(
            &ExecutionProvider,
            vec![
                (
                    "any on cpu",
                    wants(ProviderChoice::Any),
                    worker(0),
                    Code::Success,
                ),
                (
                    "any on gpu",
                    wants(ProviderChoice::Any),
                    gpu.clone(),
                    Code::Success,
                ),
                (
                    "gpu on cpu",
                    wants(ProviderChoice::Gpu),
                    worker(0),
                    Code::UnschedulableAndUnresolvable,
                ),
                (
                    "gpu on gpu",
                    wants(ProviderChoice::Gpu),
                    gpu.clone(),
                    Code::Success,
                ),
                (
                    "cpu on gpu",
                    wants(ProviderChoice::Cpu),
                    gpu.clone(),
                    Code::UnschedulableAndUnresolvable,
                ),
            ],
        );
        let s = CycleState::default();
        assert!(
            ExecutionProvider.score(&s, &request(), &gpu)
                > ExecutionProvider.score(&s, &request(), &worker(0))
        );
    }
}
