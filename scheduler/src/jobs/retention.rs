//! Retention: the leader deletes ended jobs older than `jobs.retention_ms`, with their
//! results and idempotency keys, so the store does not grow without bound.

use localml_proto::localml::v1::Job;
use localml_proto::time::unix_ms;
use localml_store::escape_segment;
use std::time::Duration;

use super::runner::Runner;
use super::{decode_job, is_terminal, job_key, IDEMPOTENCY, INPUTS, JOBS, RESULTS};
use crate::leader::Leadership;

/// How often the leader deletes jobs past `jobs.retention_ms`.
pub(super) const CLEANUP_EVERY: Duration = Duration::from_secs(60);

impl Runner {
    /// Deletes ended jobs older than the retention, with their results and idempotency
    /// keys (fenced; at most 500 a round).
    pub(super) async fn clean_up(&self, leadership: &Leadership) {
        let Ok((kvs, _)) = self.store.list(JOBS).await else {
            return;
        };
        let cutoff = unix_ms().saturating_sub(self.config.retention_ms);
        let old: Vec<Job> = kvs
            .iter()
            .filter_map(decode_job)
            .filter(|j| {
                is_terminal(j.state()) && j.finished_unix_ms != 0 && j.finished_unix_ms < cutoff
            })
            .take(500)
            .collect();
        if old.is_empty() {
            return;
        }
        for chunk in old.chunks(50) {
            let mut txn = leadership.fenced();
            for job in chunk {
                txn = txn
                    .delete(&job_key(&job.id))
                    .delete(&format!("{RESULTS}{}", job.id))
                    .delete(&format!("{INPUTS}{}", job.id));
                if !job.idempotency_key.is_empty() {
                    txn = txn.delete(&format!(
                        "{IDEMPOTENCY}{}/{}",
                        escape_segment(&job.tenant),
                        escape_segment(&job.idempotency_key)
                    ));
                }
            }
            if !matches!(self.store.commit(txn).await, Ok(Some(_))) {
                return;
            }
        }
        tracing::info!(
            deleted = old.len(),
            "jobs: deleted ended jobs past their retention"
        );
    }
}
