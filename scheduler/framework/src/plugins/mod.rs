//! The scheduling plugins, one module each, each with table-driven tests. Plugins depend
//! on the framework's contracts only.

pub mod capacity;
pub mod execution_provider;
pub mod labels;
pub mod least_energy;
pub mod least_expected_latency;
pub mod memory_fit;
pub mod model_available;
pub mod node_unschedulable;
pub mod power_state;

use serde::de::DeserializeOwned;

use crate::registry::{PluginError, Registry};

/// Every built-in plugin, registered once.
pub fn registry() -> Registry {
    let mut r = Registry::default();
    let all: [(&'static str, crate::registry::Factory); 9] = [
        (capacity::NAME, capacity::build),
        (node_unschedulable::NAME, node_unschedulable::build),
        (labels::NAME, labels::build),
        (model_available::NAME, model_available::build),
        (memory_fit::NAME, memory_fit::build),
        (execution_provider::NAME, execution_provider::build),
        (power_state::NAME, power_state::build),
        (least_expected_latency::NAME, least_expected_latency::build),
        (least_energy::NAME, least_energy::build),
    ];
    for (name, factory) in all {
        // Names are distinct constants; a duplicate is a programming error caught by tests.
        let _ = r.register(name, factory);
    }
    r
}

/// Parses a plugin's `args` (absent: defaults), rejecting unknown keys by name.
pub fn args<T: DeserializeOwned + Default>(value: &serde_yaml::Value) -> Result<T, PluginError> {
    if value.is_null() {
        return Ok(T::default());
    }
    serde_yaml::from_value(value.clone()).map_err(|e| PluginError::Args(e.to_string()))
}

#[cfg(test)]
pub mod testing {
    //! A worker builder for plugin tables.
    use crate::contracts::*;

    pub fn worker(index: usize) -> WorkerInfo {
        let model = ModelOnWorker {
            memory_bytes: 1 << 20,
            ..ModelOnWorker::new("m", "1")
        };
        WorkerInfo::new(index, format!("w{index}"), model)
    }

    pub fn request() -> RequestInfo {
        RequestInfo {
            model: "m".into(),
            version: "1".into(),
            ..Default::default()
        }
    }

    /// Runs `filter` over cases and checks the resulting code.
    pub fn check_filter(filter: &dyn Filter, cases: Vec<(&str, RequestInfo, WorkerInfo, Code)>) {
        let state = CycleState::default();
        for (name, request, worker, code) in cases {
            let status = filter.filter(&state, &request, &worker);
            assert_eq!(status.code, code, "{name}: {}", status.reason);
            if code != Code::Success {
                assert!(!status.reason.is_empty(), "{name}: a rejection says why");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_plugin_is_registered_once() {
        let names = super::registry().names();
        assert_eq!(names.len(), 9, "{names:?}");
    }
}
