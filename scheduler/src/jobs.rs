//! Durable async jobs (`localml.v1.Jobs`): every replica accepts and answers; the leader
//! runs them.
//!
//! Keys (see docs/state.md): `jobs/<id>` the job's record (no payloads), `inputs/<id>`
//! the request until the job ends, `results/<id>` the response, and
//! `idempotency/<tenant>/<key>` the id a key was first used for. Every state change is a
//! compare-and-swap on `jobs/<id>`; the leader's also checks its fence, so a job ends
//! exactly once even when it ran twice (a failover between running and recording).

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::{Stream, StreamExt};
use localml_proto::inference::infer_parameter::ParameterChoice;
use localml_proto::inference::{InferParameter, ModelInferRequest, ModelInferResponse};
use localml_proto::localml::v1::jobs_server::Jobs;
use localml_proto::localml::v1::*;
use prost::Message;
use tokio::task::JoinSet;
use tonic::{Code, Request, Response, Status};

use crate::config::JobsConfig;
use crate::dispatch::{
    lookup_error, Dispatcher, POWER_PARAMETER, PRIORITY_PARAMETER, TENANT_PARAMETER,
};
use crate::leader::Leadership;
use crate::registry::Lookup;
use crate::store::{escape_segment, Event, KeyValue, Revision, Store, StoreError, Txn};

pub const JOBS: &str = "jobs/";
pub const INPUTS: &str = "inputs/";
pub const RESULTS: &str = "results/";
pub const IDEMPOTENCY: &str = "idempotency/";

fn job_key(id: &str) -> String {
    format!("{JOBS}{id}")
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn unavailable(e: StoreError) -> Status {
    Status::unavailable(e.to_string())
}

pub fn is_terminal(state: JobState) -> bool {
    matches!(
        state,
        JobState::Succeeded | JobState::Failed | JobState::Cancelled
    )
}

fn decode_job(kv: &KeyValue) -> Option<Job> {
    match Job::decode(kv.value.as_slice()) {
        Ok(job) => Some(job),
        Err(e) => {
            tracing::warn!(key = %kv.key, error = %e, "skipping an undecodable job record");
            None
        }
    }
}

async fn load(store: &dyn Store, id: &str) -> Result<(Job, Revision), Status> {
    let kv = store
        .get(&job_key(id))
        .await
        .map_err(unavailable)?
        .ok_or_else(|| Status::not_found(format!("no job '{id}'")))?;
    let job = decode_job(&kv)
        .ok_or_else(|| Status::data_loss(format!("job '{id}' has an unreadable record")))?;
    Ok((job, kv.mod_revision))
}

/// The client-facing service; any replica serves it.
pub struct JobsService {
    pub store: Arc<dyn Store>,
    pub dispatcher: Arc<Dispatcher>,
}

type Answer<T> = Result<Response<T>, Status>;
pub type JobStream = Pin<Box<dyn Stream<Item = Result<Job, Status>> + Send>>;

impl JobsService {
    fn validate(&self, r: &SubmitJobRequest) -> Result<ModelInferRequest, Status> {
        let request = r.request.clone().ok_or_else(|| {
            Status::invalid_argument("'request' is required: the inference to run")
        })?;
        if request.model_name.is_empty() {
            return Err(Status::invalid_argument("request.model_name is empty"));
        }
        if PowerPolicy::try_from(r.power_policy).is_err() {
            return Err(Status::invalid_argument(format!(
                "power_policy {} is not one of ANY, PREFER_MAINS, MAINS_ONLY",
                r.power_policy
            )));
        }
        if r.deadline_unix_ms != 0 && r.deadline_unix_ms <= now_ms() {
            return Err(Status::invalid_argument(format!(
                "deadline_unix_ms {} is in the past",
                r.deadline_unix_ms
            )));
        }
        // The scheduling parameters are checked now rather than when the job runs.
        crate::dispatch::request_info(&request, "")?;
        // An unknown model is refused when the cluster can tell (some worker is Ready);
        // a cluster that is starting accepts, and the job waits for the model.
        let registry = &self.dispatcher.registry;
        if registry.any_ready() {
            let lookup = registry.lookup(&request.model_name, &request.model_version);
            if matches!(lookup, Lookup::UnknownModel | Lookup::UnknownVersion { .. }) {
                return Err(lookup_error(
                    &request.model_name,
                    &request.model_version,
                    lookup,
                ));
            }
        }
        Ok(request)
    }
}

#[tonic::async_trait]
impl Jobs for JobsService {
    async fn submit(&self, r: Request<SubmitJobRequest>) -> Answer<Job> {
        let r = r.into_inner();
        let request = self.validate(&r)?;
        let created = now_ms();
        let id = format!("{created:013}-{:08x}", fastrand::u32(..));
        let job = Job {
            id: id.clone(),
            state: JobState::Pending as i32,
            model_name: request.model_name.clone(),
            model_version: request.model_version.clone(),
            priority: r.priority,
            tenant: r.tenant.clone(),
            power_policy: r.power_policy,
            deadline_unix_ms: r.deadline_unix_ms,
            idempotency_key: r.idempotency_key.clone(),
            created_unix_ms: created,
            ..Default::default()
        };
        let mut txn = Txn::new();
        let idempotency = (!r.idempotency_key.is_empty()).then(|| {
            format!(
                "{IDEMPOTENCY}{}/{}",
                escape_segment(&r.tenant),
                escape_segment(&r.idempotency_key)
            )
        });
        if let Some(key) = &idempotency {
            txn = txn.when(key, 0).put(key, id.as_bytes().to_vec(), 0);
        }
        let inputs = request.encode_to_vec();
        if let Some(limit) = self.store.max_value_bytes() {
            if inputs.len() > limit {
                return Err(Status::resource_exhausted(format!(
                    "the job's request is {} bytes; the {} store keeps at most {limit} bytes per value (send large inputs as synchronous requests)",
                    inputs.len(),
                    self.store.backend()
                )));
            }
        }
        let txn = txn
            .when(&job_key(&id), 0)
            .put(&job_key(&id), job.encode_to_vec(), 0)
            .put(&format!("{INPUTS}{id}"), inputs, 0);
        match self.store.commit(txn).await.map_err(unavailable)? {
            Some(_) => {
                tracing::debug!(job = %id, model = %job.model_name, "job accepted");
                Ok(Response::new(job))
            }
            None => {
                // The key was used before: answer with that job.
                let key = idempotency.unwrap_or_default();
                let first = self
                    .store
                    .get(&key)
                    .await
                    .map_err(unavailable)?
                    .ok_or_else(|| {
                        Status::aborted(
                            "the job could not be stored (a concurrent change); submit again",
                        )
                    })?;
                let first = String::from_utf8_lossy(&first.value).into_owned();
                Ok(Response::new(load(self.store.as_ref(), &first).await?.0))
            }
        }
    }

    async fn get(&self, r: Request<GetJobRequest>) -> Answer<Job> {
        let id = r.into_inner().id;
        let (mut job, _) = load(self.store.as_ref(), &id).await?;
        if job.state == JobState::Succeeded as i32 {
            let kv = self
                .store
                .get(&format!("{RESULTS}{id}"))
                .await
                .map_err(unavailable)?
                .ok_or_else(|| {
                    Status::data_loss(format!("job '{id}' succeeded but its result is missing"))
                })?;
            job.result = Some(
                ModelInferResponse::decode(kv.value.as_slice()).map_err(|e| {
                    Status::data_loss(format!("job '{id}' has an unreadable result: {e}"))
                })?,
            );
        }
        Ok(Response::new(job))
    }

    type WatchStream = JobStream;

    async fn watch(&self, r: Request<WatchJobsRequest>) -> Answer<JobStream> {
        let ids: HashSet<String> = r.into_inner().ids.into_iter().collect();
        for id in &ids {
            load(self.store.as_ref(), id).await?;
        }
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let store = Arc::clone(&self.store);
        tokio::spawn(async move {
            if let Err(status) = follow(store.as_ref(), &ids, &tx).await {
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn cancel(&self, r: Request<CancelJobRequest>) -> Answer<Job> {
        let id = r.into_inner().id;
        loop {
            let (mut job, revision) = load(self.store.as_ref(), &id).await?;
            if is_terminal(job.state()) {
                return Ok(Response::new(job));
            }
            job.set_state(JobState::Cancelled);
            job.message = "cancelled by a client".into();
            job.finished_unix_ms = now_ms();
            let txn = Txn::new()
                .when(&job_key(&id), revision)
                .put(&job_key(&id), job.encode_to_vec(), 0)
                .delete(&format!("{INPUTS}{id}"));
            if self.store.commit(txn).await.map_err(unavailable)?.is_some() {
                return Ok(Response::new(job));
            }
        }
    }

    async fn list(&self, r: Request<ListJobsRequest>) -> Answer<ListJobsResponse> {
        let r = r.into_inner();
        let size = match r.page_size {
            0 => 100,
            n => n.min(1000) as usize,
        };
        let (kvs, _) = self.store.list(JOBS).await.map_err(unavailable)?;
        let mut jobs = kvs
            .iter()
            .filter(|kv| {
                kv.key.as_str() > job_key(&r.page_token).as_str() || r.page_token.is_empty()
            })
            .filter_map(decode_job)
            .filter(|j| r.state == 0 || j.state == r.state)
            .filter(|j| r.tenant.is_empty() || j.tenant == r.tenant);
        let page: Vec<Job> = jobs.by_ref().take(size).collect();
        let next_page_token = match (jobs.next(), page.last()) {
            (Some(_), Some(last)) => last.id.clone(),
            _ => String::new(),
        };
        Ok(Response::new(ListJobsResponse {
            jobs: page,
            next_page_token,
        }))
    }
}

/// Sends the wanted jobs' states, then their changes; relists after a compaction.
async fn follow(
    store: &dyn Store,
    ids: &HashSet<String>,
    tx: &tokio::sync::mpsc::Sender<Result<Job, Status>>,
) -> Result<(), Status> {
    let wanted = |id: &str| ids.is_empty() || ids.contains(id);
    let mut ended: HashSet<String> = HashSet::new();
    // Sends a job; false when the client went away or every watched job has ended.
    let deliver = async |job: Job, ended: &mut HashSet<String>| -> bool {
        if is_terminal(job.state()) {
            ended.insert(job.id.clone());
        }
        tx.send(Ok(job)).await.is_ok() && (ids.is_empty() || ended.len() < ids.len())
    };
    loop {
        let (kvs, revision) = store.list(JOBS).await.map_err(unavailable)?;
        for job in kvs.iter().filter_map(decode_job).filter(|j| wanted(&j.id)) {
            if !deliver(job, &mut ended).await {
                return Ok(());
            }
        }
        if !ids.is_empty() && ended.len() == ids.len() {
            return Ok(());
        }
        let mut events = store.watch(JOBS, revision).await.map_err(unavailable)?;
        loop {
            let batch = tokio::select! {
                batch = events.next() => batch,
                // The client went away: stop following.
                _ = tx.closed() => return Ok(()),
            };
            let Some(batch) = batch else { break };
            let batch = match batch {
                Ok(batch) => batch,
                Err(StoreError::Compacted(_)) => break,
                Err(e) => return Err(unavailable(e)),
            };
            for event in batch {
                let Event::Put(kv) = event else { continue };
                let Some(job) = decode_job(&kv).filter(|j| wanted(&j.id)) else {
                    continue;
                };
                if !deliver(job, &mut ended).await {
                    return Ok(());
                }
            }
        }
    }
}

/// How often the leader deletes jobs past `jobs.retention_ms`.
const CLEANUP_EVERY: Duration = Duration::from_secs(60);

/// What running a job came to.
enum Outcome {
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

    /// Deletes ended jobs older than the retention, with their results and idempotency
    /// keys (fenced; at most 500 a round).
    async fn clean_up(&self, leadership: &Leadership) {
        let Ok((kvs, _)) = self.store.list(JOBS).await else {
            return;
        };
        let cutoff = now_ms().saturating_sub(self.config.retention_ms);
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
        if job.deadline_unix_ms != 0 && now_ms() >= job.deadline_unix_ms {
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
        job.started_unix_ms = now_ms();
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
        let deadline = (job.deadline_unix_ms != 0).then(|| {
            tokio::time::Instant::now()
                + Duration::from_millis(job.deadline_unix_ms.saturating_sub(now_ms()))
        });
        let mut tried = 0;
        let result = self
            .dispatcher
            .infer_counting(request, deadline, &mut tried)
            .await;
        if tried == 0 {
            // It never reached a worker (none could take it yet): not an attempt.
            job.attempts -= 1;
        }
        let deadline_passed = job.deadline_unix_ms != 0 && now_ms() >= job.deadline_unix_ms;
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
        job.finished_unix_ms = now_ms();
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
                    job.worker = crate::dispatch::served_by(&response).unwrap_or_default();
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

/// Failures that say "not now" rather than "never": no worker (yet), a full queue, a
/// worker lost mid-request. Anything the request itself caused fails the job.
fn retryable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::ResourceExhausted
            | Code::NotFound
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::Cancelled
            | Code::Unknown
    )
}

fn set_parameter(request: &mut ModelInferRequest, key: &str, choice: ParameterChoice) {
    request.parameters.insert(
        key.to_string(),
        InferParameter {
            parameter_choice: Some(choice),
        },
    );
}
