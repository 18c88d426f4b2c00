//! The leader's job dispatcher: follows `jobs/`, runs each pending job through the
//! dispatcher (as a synchronous request would go), and records its end with a
//! compare-and-swap fenced by the leadership, so a job ends exactly once even when it ran
//! twice (a failover between running and recording).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use localml_proto::inference::infer_parameter::ParameterChoice;
use localml_proto::inference::{InferParameter, ModelInferRequest, ModelInferResponse};
use localml_proto::localml::v1::*;
use localml_proto::time::unix_ms;
use localml_store::{Event, Revision, Store, Txn};
use prost::Message;
use tokio::task::JoinSet;
use tonic::Status;

use super::retention::CLEANUP_EVERY;
use super::{decode_job, is_terminal, job_key, INPUTS, JOBS, RESULTS};
use crate::config::JobsConfig;
use crate::dispatch::Dispatcher;
use crate::leader::Leadership;
use crate::parameters::{
    MIN_BATTERY_PARAMETER, POWER_PARAMETER, PRIORITY_PARAMETER, TENANT_PARAMETER,
};

/// What running a job came to.
pub(super) enum Outcome {
    /// Recorded as ended (or someone else changed the job first).
    Done,
    /// Could not run now; try again after the retry delay.
    Retry,
}

/// The leader's job dispatcher.
pub struct Runner {
    pub store: Arc<dyn Store>,
    pub dispatcher: Arc<Dispatcher>,
    pub config: JobsConfig,
}

struct Known {
    job: Job,
    revision: Revision,
    not_before: tokio::time::Instant,
}

impl Runner {
    /// Runs jobs until leadership is lost or `stop` turns true.
    pub async fn run(
        self: Arc<Self>,
        leadership: &Leadership,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut lost = leadership.lost.clone();
        let retry = Duration::from_millis(self.config.retry_ms);
        let mut running: JoinSet<(String, Outcome)> = JoinSet::new();
        let mut handles: HashMap<String, tokio::task::AbortHandle> = HashMap::new();
        // Task ids, to find the job of a task that panicked.
        let mut tasks: HashMap<tokio::task::Id, String> = HashMap::new();
        let mut cleaned = tokio::time::Instant::now();
        'relist: loop {
            // Waits out a store error unless told to stop; false: stop.
            let pause =
                async |stop: &mut tokio::sync::watch::Receiver<bool>,
                       lost: &mut tokio::sync::watch::Receiver<bool>| {
                    tokio::select! {
                        _ = tokio::time::sleep(retry) => true,
                        _ = stop.wait_for(|s| *s) => false,
                        _ = lost.wait_for(|l| *l) => false,
                    }
                };
            let (kvs, revision) = match self.store.list(JOBS).await {
                Ok(found) => found,
                Err(e) => {
                    tracing::warn!(error = %e, "jobs: cannot list; retrying");
                    if !pause(&mut stop, &mut lost).await {
                        break 'relist;
                    }
                    continue;
                }
            };
            let now = tokio::time::Instant::now();
            let mut known: HashMap<String, Known> = kvs
                .iter()
                .filter_map(|kv| decode_job(kv).map(|job| (job, kv.mod_revision)))
                .filter(|(job, _)| !is_terminal(job.state()))
                .map(|(job, revision)| {
                    (
                        job.id.clone(),
                        Known {
                            job,
                            revision,
                            not_before: now,
                        },
                    )
                })
                .collect();
            tracing::info!(open = known.len(), "jobs: dispatcher (re)listed");
            let mut events = match self.store.watch(JOBS, revision).await {
                Ok(events) => events,
                Err(e) => {
                    tracing::warn!(error = %e, "jobs: cannot watch; retrying");
                    if !pause(&mut stop, &mut lost).await {
                        break 'relist;
                    }
                    continue;
                }
            };
            loop {
                // Start what may start: highest priority, then oldest.
                while running.len() < self.config.concurrency {
                    let now = tokio::time::Instant::now();
                    let next = known
                        .values()
                        .filter(|k| k.not_before <= now && !handles.contains_key(&k.job.id))
                        .max_by(|a, b| {
                            (a.job.priority, std::cmp::Reverse(&a.job.id))
                                .cmp(&(b.job.priority, std::cmp::Reverse(&b.job.id)))
                        })
                        .map(|k| (k.job.clone(), k.revision));
                    let Some((job, revision)) = next else { break };
                    let id = job.id.clone();
                    let runner = Arc::clone(&self);
                    let fence = leadership.fenced();
                    let task_id = id.clone();
                    let handle = running.spawn(async move {
                        let outcome = runner.run_one(job, revision, fence).await;
                        (task_id, outcome)
                    });
                    tasks.insert(handle.id(), id.clone());
                    handles.insert(id, handle);
                }
                if cleaned.elapsed() >= CLEANUP_EVERY {
                    cleaned = tokio::time::Instant::now();
                    self.clean_up(leadership).await;
                }
                // With every slot busy, a finishing task wakes the loop; otherwise the
                // next job whose retry delay ends does.
                let wake = if running.len() >= self.config.concurrency {
                    tokio::time::Instant::now() + retry
                } else {
                    known
                        .values()
                        .filter(|k| !handles.contains_key(&k.job.id))
                        .map(|k| k.not_before)
                        .min()
                        .unwrap_or_else(|| tokio::time::Instant::now() + retry)
                        .max(tokio::time::Instant::now() + Duration::from_millis(10))
                }
                .min(cleaned + CLEANUP_EVERY);
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => break 'relist,
                    _ = lost.wait_for(|l| *l) => break 'relist,
                    Some(done) = running.join_next_with_id(), if !running.is_empty() => {
                        let (id, outcome) = match done {
                            Ok((task, (id, outcome))) => {
                                tasks.remove(&task);
                                (id, outcome)
                            }
                            // Aborted (cancelled job) or panicked: try it again later.
                            Err(e) => {
                                let Some(id) = tasks.remove(&e.id()) else { continue };
                                if e.is_panic() {
                                    tracing::error!(job = %id, "jobs: running the job panicked; retrying later");
                                }
                                (id, Outcome::Retry)
                            }
                        };
                        handles.remove(&id);
                        if let (Outcome::Retry, Some(k)) = (outcome, known.get_mut(&id)) {
                            k.not_before = tokio::time::Instant::now() + retry;
                        }
                    }
                    batch = events.next() => match batch {
                        Some(Ok(batch)) => {
                            for event in batch {
                                self.apply(&mut known, &mut handles, event);
                            }
                        }
                        Some(Err(e)) => {
                            tracing::info!(error = %e, "jobs: watch ended; listing again");
                            continue 'relist;
                        }
                        None => continue 'relist,
                    },
                    _ = tokio::time::sleep_until(wake) => {}
                }
            }
        }
        running.abort_all();
        tracing::info!("jobs: dispatcher stopped");
    }
    fn apply(
        &self,
        known: &mut HashMap<String, Known>,
        handles: &mut HashMap<String, tokio::task::AbortHandle>,
        event: Event,
    ) {
        let Event::Put(kv) = event else { return };
        let Some(job) = decode_job(&kv) else { return };
        if is_terminal(job.state()) {
            known.remove(&job.id);
            // Cancelled while running: stop waiting for it (its result would be refused).
            if let Some(handle) = handles.remove(&job.id) {
                handle.abort();
            }
            return;
        }
        let entry = known.entry(job.id.clone()).or_insert_with(|| Known {
            job: job.clone(),
            revision: kv.mod_revision,
            not_before: tokio::time::Instant::now(),
        });
        entry.job = job;
        entry.revision = kv.mod_revision;
    }

    /// Commits a state change: Done when the store refused it (the job changed, or this
    /// replica no longer leads), Retry when the store failed.
    async fn record(&self, id: &str, txn: Txn) -> Result<Revision, Outcome> {
        match self.store.commit(txn).await {
            Ok(Some(revision)) => Ok(revision),
            Ok(None) => Err(Outcome::Done),
            Err(e) => {
                tracing::warn!(job = %id, error = %e, "jobs: cannot record a state change");
                Err(Outcome::Retry)
            }
        }
    }

    /// Marks the job Running, runs it through the scheduling cycle, records the end.
    async fn run_one(&self, mut job: Job, revision: Revision, fence: Txn) -> Outcome {
        let key = job_key(&job.id);
        let id = job.id.clone();
        let end = |job: &mut Job, revision, result, size| {
            self.ended(fence.clone(), &key, revision, job, result, size)
        };
        if job.deadline_unix_ms != 0 && unix_ms() >= job.deadline_unix_ms {
            let txn = end(
                &mut job,
                revision,
                Err(Status::deadline_exceeded(
                    "the job's deadline passed before it could run",
                )),
                0,
            );
            return self.record(&id, txn).await.err().unwrap_or(Outcome::Done);
        }
        let request = match self.store.get(&format!("{INPUTS}{}", job.id)).await {
            Ok(Some(kv)) => ModelInferRequest::decode(kv.value.as_slice()),
            Ok(None) => Ok(ModelInferRequest::default()),
            Err(_) => return Outcome::Retry,
        };
        let mut request = match request {
            Ok(r) if !r.model_name.is_empty() => r,
            _ => {
                let txn = end(
                    &mut job,
                    revision,
                    Err(Status::data_loss(
                        "the job's inputs are missing or unreadable",
                    )),
                    0,
                );
                return self.record(&id, txn).await.err().unwrap_or(Outcome::Done);
            }
        };
        job.set_state(JobState::Running);
        job.attempts += 1;
        job.started_unix_ms = unix_ms();
        job.message.clear();
        let running = fence
            .clone()
            .when(&key, revision)
            .put(&key, job.encode_to_vec(), 0);
        let revision = match self.record(&id, running).await {
            Ok(revision) => revision,
            Err(outcome) => return outcome,
        };
        set_parameter(
            &mut request,
            PRIORITY_PARAMETER,
            ParameterChoice::Int64Param(job.priority),
        );
        set_parameter(
            &mut request,
            TENANT_PARAMETER,
            ParameterChoice::StringParam(job.tenant.clone()),
        );
        if job.power_policy() == PowerPolicy::MainsOnly {
            set_parameter(
                &mut request,
                POWER_PARAMETER,
                ParameterChoice::StringParam("mains_only".into()),
            );
        }
        if let Some(min) = job.min_battery_percent {
            set_parameter(
                &mut request,
                MIN_BATTERY_PARAMETER,
                ParameterChoice::DoubleParam(f64::from(min)),
            );
        }
        // A deadline too far ahead for the clock to represent is no deadline (stored jobs
        // predate the bound Submit checks).
        let deadline = (job.deadline_unix_ms != 0)
            .then(|| {
                tokio::time::Instant::now().checked_add(Duration::from_millis(
                    job.deadline_unix_ms.saturating_sub(unix_ms()),
                ))
            })
            .flatten();
        let mut tried = 0;
        let result = self
            .dispatcher
            .infer_counting(request, deadline, &mut tried)
            .await;
        if tried == 0 {
            // It never reached a worker (none could take it yet): not an attempt.
            job.attempts -= 1;
        }
        let deadline_passed = job.deadline_unix_ms != 0 && unix_ms() >= job.deadline_unix_ms;
        let result = match result {
            Err(status) if deadline_passed => Err(Status::deadline_exceeded(format!(
                "the job's deadline passed; last error: {}",
                status.message()
            ))),
            Err(status) if retryable(&status) && job.attempts >= self.config.max_attempts => {
                Err(Status::new(
                    status.code(),
                    format!(
                        "gave up after {} attempts (jobs.max_attempts); last error: {}",
                        job.attempts,
                        status.message()
                    ),
                ))
            }
            Err(status) if retryable(&status) => {
                job.set_state(JobState::Pending);
                job.message = format!("waiting: {}", status.message());
                let txn = fence.when(&key, revision).put(&key, job.encode_to_vec(), 0);
                return match self.record(&id, txn).await {
                    Ok(_) | Err(Outcome::Retry) => Outcome::Retry,
                    Err(outcome) => outcome,
                };
            }
            result => result,
        };
        let encoded = result.map(|r| r.encode_to_vec());
        let size = encoded.as_ref().map(Vec::len).unwrap_or(0);
        let txn = end(&mut job, revision, encoded, size);
        self.record(&id, txn).await.err().unwrap_or(Outcome::Done)
    }

    /// The transaction that ends a job: SUCCEEDED with its result (within the size
    /// limit), else FAILED with the status.
    fn ended(
        &self,
        fence: Txn,
        key: &str,
        revision: Revision,
        job: &mut Job,
        result: Result<Vec<u8>, Status>,
        size: usize,
    ) -> Txn {
        job.finished_unix_ms = unix_ms();
        let mut txn = fence
            .when(key, revision)
            .delete(&format!("{INPUTS}{}", job.id));
        let result = result.and_then(|bytes| {
            let store_limit = self.store.max_value_bytes().unwrap_or(usize::MAX);
            if size > self.config.max_result_bytes {
                Err(Status::resource_exhausted(format!(
                    "the result is {size} bytes, over the limit of {} bytes (jobs.max_result_bytes)",
                    self.config.max_result_bytes
                )))
            } else if size > store_limit {
                Err(Status::resource_exhausted(format!(
                    "the result is {size} bytes; the {} store keeps at most {store_limit} bytes per value",
                    self.store.backend()
                )))
            } else {
                Ok(bytes)
            }
        });
        match result {
            Ok(bytes) => {
                if let Ok(response) = ModelInferResponse::decode(bytes.as_slice()) {
                    job.worker =
                        localml_proto::parameters::served_by(&response).unwrap_or_default();
                }
                job.set_state(JobState::Succeeded);
                job.result_bytes = size as u64;
                txn = txn.put(&format!("{RESULTS}{}", job.id), bytes, 0);
            }
            Err(status) => {
                job.set_state(JobState::Failed);
                job.error_code = status.code() as i32;
                job.message = status.message().to_string();
            }
        }
        txn.put(key, job.encode_to_vec(), 0)
    }
}

/// Failures that say "not now" rather than "never" ([`crate::failure::retry_later`]).
fn retryable(status: &Status) -> bool {
    crate::failure::retry_later(status)
}

fn set_parameter(request: &mut ModelInferRequest, key: &str, choice: ParameterChoice) {
    request.parameters.insert(
        key.to_string(),
        InferParameter {
            parameter_choice: Some(choice),
        },
    );
}
