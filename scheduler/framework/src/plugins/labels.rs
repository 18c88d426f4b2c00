//! Labels: a request's `localml.selector` (e.g. `gpu=nvidia,site=library`) must match
//! every label it names.

use crate::contracts::*;
use crate::registry::{Built, PluginError};

pub const NAME: &str = "Labels";

pub struct Labels;

impl Plugin for Labels {
    fn name(&self) -> &'static str {
        NAME
    }
}

impl Filter for Labels {
    fn filter(&self, _: &CycleState, request: &RequestInfo, worker: &WorkerInfo) -> Status {
        match worker.selector_mismatch(request) {
            Some((key, value)) => {
                Status::unresolvable(format!("label {key}={value} does not match"))
            }
            None => Status::success(),
        }
    }
}

pub fn build(_: &serde_yaml::Value) -> Result<Built, PluginError> {
    Ok(Built::filter(Labels))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testing::*;

    #[test]
    fn table() {
        let mut gpu = worker(0);
        gpu.labels.insert("gpu".into(), "nvidia".into());
        gpu.labels.insert("site".into(), "library".into());
        let select = |pairs: &[(&str, &str)]| RequestInfo {
            selector: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..request()
        };
        check_filter(
            &Labels,
            vec![
                ("no selector", request(), gpu.clone(), Code::Success),
                (
                    "one match",
                    select(&[("gpu", "nvidia")]),
                    gpu.clone(),
                    Code::Success,
                ),
                (
                    "two match",
                    select(&[("gpu", "nvidia"), ("site", "library")]),
                    gpu.clone(),
                    Code::Success,
                ),
                (
                    "value differs",
                    select(&[("gpu", "amd")]),
                    gpu.clone(),
                    Code::UnschedulableAndUnresolvable,
                ),
                (
                    "label missing",
                    select(&[("site", "library")]),
                    worker(1),
                    Code::UnschedulableAndUnresolvable,
                ),
            ],
        );
    }
}
