//! ModelAvailable: the worker has the requested model version loaded.
//!
//! Workers load their whole repository at start and report only what is loaded, so a
//! worker that "could load" a model is not known yet; such workers would score lower once
//! workers report their repositories (model deployments, issue #4).

use crate::contracts::*;
use crate::registry::{Built, PluginError};

pub const NAME: &str = "ModelAvailable";

pub struct ModelAvailable;

impl Plugin for ModelAvailable {
    fn name(&self) -> &'static str {
        NAME
    }
}

impl Filter for ModelAvailable {
    fn filter(&self, _: &CycleState, request: &RequestInfo, worker: &WorkerInfo) -> Status {
        if worker.model(request).is_some() {
            Status::success()
        } else {
            Status::unresolvable(format!(
                "model {} version {} is not loaded",
                request.model, request.version
            ))
        }
    }
}

pub fn build(_: &serde_yaml::Value) -> Result<Built, PluginError> {
    Ok(Built::filter(ModelAvailable))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testing::*;

    #[test]
    fn table() {
        let other_version = RequestInfo {
            version: "2".into(),
            ..request()
        };
        let other_model = RequestInfo {
            model: "x".into(),
            ..request()
        };
        check_filter(
            &ModelAvailable,
            vec![
                ("loaded", request(), worker(0), Code::Success),
                (
                    "other version",
                    other_version,
                    worker(0),
                    Code::UnschedulableAndUnresolvable,
                ),
                (
                    "other model",
                    other_model,
                    worker(0),
                    Code::UnschedulableAndUnresolvable,
                ),
            ],
        );
    }
}
