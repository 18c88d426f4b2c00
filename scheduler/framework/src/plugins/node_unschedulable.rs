//! NodeUnschedulable: workers that are NotReady, cordoned or draining get no new work.

use crate::contracts::*;
use crate::registry::{Built, PluginError};

pub const NAME: &str = "NodeUnschedulable";

pub struct NodeUnschedulable;

impl Plugin for NodeUnschedulable {
    fn name(&self) -> &'static str {
        NAME
    }
}

impl Filter for NodeUnschedulable {
    fn filter(&self, _: &CycleState, _: &RequestInfo, worker: &WorkerInfo) -> Status {
        if worker.schedulable {
            Status::success()
        } else {
            Status::unschedulable(worker.unschedulable_reason.clone())
        }
    }
}

pub fn build(_: &serde_yaml::Value) -> Result<Built, PluginError> {
    Ok(Built::filter(NodeUnschedulable))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testing::*;

    #[test]
    fn table() {
        let mut cordoned = worker(1);
        cordoned.schedulable = false;
        cordoned.unschedulable_reason = "cordoned".into();
        check_filter(
            &NodeUnschedulable,
            vec![
                ("ready", request(), worker(0), Code::Success),
                ("cordoned", request(), cordoned, Code::Unschedulable),
            ],
        );
    }
}
