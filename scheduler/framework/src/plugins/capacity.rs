//! Capacity: a worker that already has `max_outstanding_per_session` requests per ONNX
//! Runtime session outstanding is at its concurrency limit. A session that joins
//! requests into batches dynamically takes two batches (one running, one forming), when
//! that is more: fewer would leave its batches small and waiting out their delay. When every feasible worker
//! is, the request waits in the scheduler's queue (ordered by priority, fair between
//! tenants) instead of piling up in one worker's FIFO queue.

use serde::Deserialize;

use crate::contracts::*;
use crate::registry::{Built, PluginError};
use crate::runtime::Rejection;

pub const NAME: &str = "Capacity";

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Args {
    /// Requests outstanding per session before the worker counts as full. A few keep the
    /// sessions busy across network round trips.
    pub max_outstanding_per_session: u32,
}

impl Default for Args {
    fn default() -> Self {
        Args {
            max_outstanding_per_session: 4,
        }
    }
}

pub struct Capacity {
    args: Args,
}

/// The reason Capacity gives.
pub const AT_LIMIT: &str = "at its concurrency limit";

/// Whether a rejection means "the workers that could serve are all busy": Capacity
/// rejected at least one worker. Capacity runs after the other filters (it is last in the
/// shipped profiles), so such a worker passed everything else and will take the request
/// once it frees. Such a request waits in the scheduler's queue.
pub fn all_busy(rejection: &Rejection) -> bool {
    rejection.code == Code::Unschedulable && rejection.rejected_by.contains(&NAME)
}

impl Plugin for Capacity {
    fn name(&self) -> &'static str {
        NAME
    }
}

impl Filter for Capacity {
    fn filter(&self, _: &CycleState, request: &RequestInfo, worker: &WorkerInfo) -> Status {
        let model = worker.model(request);
        let sessions = model.map(|m| m.instances).unwrap_or(1).max(1);
        let batch = model.map(|m| m.batch).unwrap_or(1).max(1);
        let reported = model
            .map(|m| m.queue_depth.saturating_add(m.in_flight))
            .unwrap_or(0);
        let outstanding = worker.dispatched.max(reported);
        let per_session = self
            .args
            .max_outstanding_per_session
            .max(batch.saturating_mul(2));
        let limit = sessions.saturating_mul(per_session);
        if outstanding >= limit {
            Status::unschedulable(AT_LIMIT)
        } else {
            Status::success()
        }
    }
}

pub fn build(value: &serde_yaml::Value) -> Result<Built, PluginError> {
    let args: Args = crate::plugins::args(value)?;
    if args.max_outstanding_per_session == 0 {
        return Err(PluginError::Args(
            "max_outstanding_per_session must be at least 1".into(),
        ));
    }
    Ok(Built::filter(Capacity { args }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testing::*;

    #[test]
    fn table() {
        let plugin = Capacity {
            args: Args {
                max_outstanding_per_session: 2,
            },
        };
        let with = |dispatched: u32, queued: u32, sessions: u32| {
            let mut w = worker(0);
            w.dispatched = dispatched;
            w.models[0].queue_depth = queued;
            w.models[0].instances = sessions;
            w
        };
        let batching = |dispatched: u32, batch: u32| {
            let mut w = with(dispatched, 0, 1);
            w.models[0].batch = batch;
            w
        };
        check_filter(
            &plugin,
            vec![
                ("idle", request(), with(0, 0, 1), Code::Success),
                ("one below", request(), with(1, 0, 1), Code::Success),
                ("at limit", request(), with(2, 0, 1), Code::Unschedulable),
                (
                    "worker's own queue counts",
                    request(),
                    with(0, 2, 1),
                    Code::Unschedulable,
                ),
                ("two sessions", request(), with(3, 0, 2), Code::Success),
                (
                    "a batching session takes two batches",
                    request(),
                    batching(15, 8),
                    Code::Success,
                ),
                (
                    "a batching session at its limit",
                    request(),
                    batching(16, 8),
                    Code::Unschedulable,
                ),
                (
                    "absurd reported numbers saturate, no overflow",
                    request(),
                    {
                        let mut w = with(0, u32::MAX, 1);
                        w.models[0].in_flight = u32::MAX;
                        w
                    },
                    Code::Unschedulable,
                ),
            ],
        );
    }
}
