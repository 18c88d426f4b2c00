//! Durable async jobs (`localml.v1.Jobs`): every replica accepts and answers
//! (`crate::services::jobs`); the leader runs them.
//!
//! Keys (see docs/state.md): `jobs/<id>` the job's record (no payloads), `inputs/<id>`
//! the request until the job ends, `results/<id>` the response, and
//! `idempotency/<tenant>/<key>` the id a key was first used for. Every state change is a
//! compare-and-swap on `jobs/<id>`; the leader's also checks its fence, so a job ends
//! exactly once even when it ran twice (a failover between running and recording).
//!
//! - this file: the key layout and the job record helpers.
//! - [`runner`]: the leader's job dispatcher.
//! - [`retention`]: the leader deletes ended jobs past `jobs.retention_ms`.

pub mod retention;
pub mod runner;

use localml_proto::localml::v1::{Job, JobState};
use localml_store::KeyValue;
use prost::Message;

/// Store prefixes (docs/state.md).
pub const JOBS: &str = "jobs/";
pub const INPUTS: &str = "inputs/";
pub const RESULTS: &str = "results/";
pub const IDEMPOTENCY: &str = "idempotency/";

pub(crate) fn job_key(id: &str) -> String {
    format!("{JOBS}{id}")
}

pub fn is_terminal(state: JobState) -> bool {
    matches!(
        state,
        JobState::Succeeded | JobState::Failed | JobState::Cancelled
    )
}

pub(crate) fn decode_job(kv: &KeyValue) -> Option<Job> {
    match Job::decode(kv.value.as_slice()) {
        Ok(job) => Some(job),
        Err(e) => {
            tracing::warn!(key = %kv.key, error = %e, "skipping an undecodable job record");
            None
        }
    }
}
