//! `localml.v1.Jobs`: clients submit, get, watch, cancel and list durable async jobs;
//! any replica answers, the leader runs them (`crate::jobs`). Every state change is a
//! compare-and-swap on the job's record.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use localml_proto::inference::{ModelInferRequest, ModelInferResponse};
use localml_proto::localml::v1::jobs_server::Jobs;
use localml_proto::localml::v1::*;
use localml_proto::time::unix_ms;
use localml_store::{escape_segment, Event, Revision, Store, StoreError, Txn};
use prost::Message;
use tonic::{Request, Response, Status};

use crate::dispatch::{DispatchError, Dispatcher};
use crate::jobs::{decode_job, is_terminal, job_key, IDEMPOTENCY, INPUTS, JOBS, RESULTS};
use crate::parameters::{request_info, ParameterError};
use crate::workers::Lookup;

/// How far ahead a job's deadline may be (a year): further is refused at Submit, so no
/// deadline overflows the clock later.
pub const MAX_JOB_DEADLINE_MS: u64 = 365 * 24 * 3600 * 1000;
/// Why a jobs call failed, as the client is told.
#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    /// A submit without the inference to run.
    #[error("'request' is required: the inference to run")]
    NoRequest,
    /// A submit whose request names no model.
    #[error("request.model_name is empty")]
    NoModel,
    /// A power policy that is not one of the enum's values.
    #[error("power_policy {0} is not one of ANY, PREFER_MAINS, MAINS_ONLY")]
    PowerPolicy(i32),
    /// A `min_battery_percent` that is not a percentage.
    #[error("min_battery_percent {0} is not a percentage from 0 to 100")]
    MinBattery(f32),
    /// A deadline that has already passed.
    #[error("deadline_unix_ms {0} is in the past")]
    DeadlinePassed(u64),
    /// A deadline further ahead than [`MAX_JOB_DEADLINE_MS`].
    #[error("deadline_unix_ms {0} is more than a year ahead (0 means no deadline)")]
    DeadlineTooFar(u64),
    /// A malformed scheduling parameter in the request.
    #[error(transparent)]
    Parameter(#[from] ParameterError),
    /// A model or version the cluster does not have.
    #[error(transparent)]
    Dispatch(DispatchError),
    /// A request larger than the store keeps in one value.
    #[error("the job's request is {bytes} bytes; the {backend} store keeps at most {limit} bytes per value (send large inputs as synchronous requests)")]
    TooLarge {
        bytes: usize,
        backend: &'static str,
        limit: usize,
    },
    /// An idempotency key whose first job vanished between two reads.
    #[error("the job could not be stored (a concurrent change); submit again")]
    Conflict,
    /// No job with that id.
    #[error("no job '{0}'")]
    NotFound(String),
    /// A job record that does not decode.
    #[error("job '{0}' has an unreadable record")]
    Unreadable(String),
    /// A succeeded job without its result.
    #[error("job '{0}' succeeded but its result is missing")]
    ResultMissing(String),
    /// A result that does not decode.
    #[error("job '{id}' has an unreadable result: {error}")]
    ResultUnreadable { id: String, error: String },
    /// The cluster state could not be read or written.
    #[error("{0}")]
    Store(#[from] StoreError),
}

impl From<JobsError> for Status {
    fn from(e: JobsError) -> Status {
        let message = e.to_string();
        match e {
            JobsError::NoRequest
            | JobsError::NoModel
            | JobsError::PowerPolicy(_)
            | JobsError::DeadlinePassed(_)
            | JobsError::DeadlineTooFar(_)
            | JobsError::MinBattery(_)
            | JobsError::Parameter(_) => Status::invalid_argument(message),
            JobsError::Dispatch(e) => e.into(),
            JobsError::TooLarge { .. } => Status::resource_exhausted(message),
            JobsError::Conflict => Status::aborted(message),
            JobsError::NotFound(_) => Status::not_found(message),
            JobsError::Unreadable(_)
            | JobsError::ResultMissing(_)
            | JobsError::ResultUnreadable { .. } => Status::data_loss(message),
            JobsError::Store(_) => Status::unavailable(message),
        }
    }
}

async fn load(store: &dyn Store, id: &str) -> Result<(Job, Revision), JobsError> {
    let kv = store
        .get(&job_key(id))
        .await?
        .ok_or_else(|| JobsError::NotFound(id.to_string()))?;
    let job = decode_job(&kv).ok_or_else(|| JobsError::Unreadable(id.to_string()))?;
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
    fn validate(&self, r: &SubmitJobRequest) -> Result<ModelInferRequest, JobsError> {
        let request = r.request.clone().ok_or(JobsError::NoRequest)?;
        if request.model_name.is_empty() {
            return Err(JobsError::NoModel);
        }
        if PowerPolicy::try_from(r.power_policy).is_err() {
            return Err(JobsError::PowerPolicy(r.power_policy));
        }
        if let Some(min) = r.min_battery_percent {
            if !(0.0..=100.0).contains(&min) {
                return Err(JobsError::MinBattery(min));
            }
        }
        if r.deadline_unix_ms != 0 && r.deadline_unix_ms <= unix_ms() {
            return Err(JobsError::DeadlinePassed(r.deadline_unix_ms));
        }
        if r.deadline_unix_ms > unix_ms().saturating_add(MAX_JOB_DEADLINE_MS) {
            return Err(JobsError::DeadlineTooFar(r.deadline_unix_ms));
        }
        // The scheduling parameters are checked now rather than when the job runs.
        request_info(&request, "")?;
        // An unknown model is refused when the cluster can tell (some worker is Ready);
        // a cluster that is starting accepts, and the job waits for the model.
        let workers = &self.dispatcher.workers;
        if workers.any_ready() {
            let lookup = workers.lookup(&request.model_name, &request.model_version);
            if matches!(lookup, Lookup::UnknownModel | Lookup::UnknownVersion { .. }) {
                return Err(JobsError::Dispatch(DispatchError::from_lookup(
                    &request.model_name,
                    &request.model_version,
                    lookup,
                )));
            }
        }
        Ok(request)
    }
    async fn submit(&self, r: SubmitJobRequest) -> Result<Job, JobsError> {
        let request = self.validate(&r)?;
        let created = unix_ms();
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
            min_battery_percent: r.min_battery_percent,
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
                return Err(JobsError::TooLarge {
                    bytes: inputs.len(),
                    backend: self.store.backend(),
                    limit,
                });
            }
        }
        let txn = txn
            .when(&job_key(&id), 0)
            .put(&job_key(&id), job.encode_to_vec(), 0)
            .put(&format!("{INPUTS}{id}"), inputs, 0);
        match self.store.commit(txn).await? {
            Some(_) => {
                tracing::debug!(job = %id, model = %job.model_name, "job accepted");
                Ok(job)
            }
            None => {
                // The key was used before: answer with that job.
                let key = idempotency.unwrap_or_default();
                let first = self.store.get(&key).await?.ok_or(JobsError::Conflict)?;
                let first = String::from_utf8_lossy(&first.value).into_owned();
                Ok(load(self.store.as_ref(), &first).await?.0)
            }
        }
    }

    async fn get(&self, id: String) -> Result<Job, JobsError> {
        let (mut job, _) = load(self.store.as_ref(), &id).await?;
        if job.state == JobState::Succeeded as i32 {
            let Some(kv) = self.store.get(&format!("{RESULTS}{id}")).await? else {
                return Err(JobsError::ResultMissing(id));
            };
            match ModelInferResponse::decode(kv.value.as_slice()) {
                Ok(result) => job.result = Some(result),
                Err(e) => {
                    return Err(JobsError::ResultUnreadable {
                        id,
                        error: e.to_string(),
                    })
                }
            }
        }
        Ok(job)
    }

    async fn watch(
        &self,
        ids: Vec<String>,
        tenant: Option<String>,
    ) -> Result<JobStream, JobsError> {
        let ids: HashSet<String> = ids.into_iter().collect();
        for id in &ids {
            let (job, _) = load(self.store.as_ref(), id).await?;
            own(&job, tenant.as_deref())?;
        }
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let store = Arc::clone(&self.store);
        tokio::spawn(async move {
            if let Err(e) = follow(store.as_ref(), &ids, tenant.as_deref(), &tx).await {
                let _ = tx.send(Err(e.into())).await;
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn cancel(&self, id: String) -> Result<Job, JobsError> {
        loop {
            let (mut job, revision) = load(self.store.as_ref(), &id).await?;
            if is_terminal(job.state()) {
                return Ok(job);
            }
            job.set_state(JobState::Cancelled);
            job.message = "cancelled by a client".into();
            job.finished_unix_ms = unix_ms();
            let txn = Txn::new()
                .when(&job_key(&id), revision)
                .put(&job_key(&id), job.encode_to_vec(), 0)
                .delete(&format!("{INPUTS}{id}"));
            if self.store.commit(txn).await?.is_some() {
                return Ok(job);
            }
        }
    }

    async fn list(&self, r: ListJobsRequest) -> Result<ListJobsResponse, JobsError> {
        Ok(list_jobs(self.store.as_ref(), &r).await?)
    }
}

/// A page of jobs as `r` asks (oldest or newest first, by state and tenant).
pub async fn list_jobs(
    store: &dyn Store,
    r: &ListJobsRequest,
) -> Result<ListJobsResponse, localml_store::StoreError> {
    let size = match r.page_size {
        0 => 100,
        n => n.min(1000) as usize,
    };
    let after = job_key(&r.page_token);
    let wanted = |j: &Job| {
        (r.state == 0 || j.state == r.state) && (r.tenant.is_empty() || j.tenant == r.tenant)
    };
    // One more than the page, to know whether another page follows.
    let mut found: Vec<Job> = Vec::new();
    if r.newest_first {
        // Newest first (job ids sort by time): read backwards a batch at a time, not
        // the whole history (the web page asks for the latest 50 every 2 s). Where the
        // filters leave few jobs (a tenant with none lately), two batches that do not
        // fill the page give way to one listing of the rest: etcd sorts the whole
        // remaining range for every backward batch.
        let mut before = (!r.page_token.is_empty()).then(|| after.clone());
        let mut batch = (size + 1).max(64);
        for round in 0.. {
            if found.len() > size {
                break;
            }
            if round == 2 {
                let (kvs, _) = store.list(JOBS).await?;
                let rest = kvs
                    .iter()
                    .rev()
                    .filter(|kv| before.as_deref().is_none_or(|b| kv.key.as_str() < b))
                    .filter_map(decode_job)
                    .filter(|j| wanted(j))
                    .take(size + 1 - found.len());
                found.extend(rest.collect::<Vec<_>>());
                break;
            }
            let kvs = store.list_last(JOBS, before.as_deref(), batch).await?;
            let Some(last) = kvs.last() else { break };
            before = Some(last.key.clone());
            let more = kvs.len() == batch;
            found.extend(kvs.iter().filter_map(decode_job).filter(|j| wanted(j)));
            if !more {
                break;
            }
            batch *= 4;
        }
    } else {
        let (kvs, _) = store.list(JOBS).await?;
        found = kvs
            .iter()
            .filter(|kv| r.page_token.is_empty() || kv.key.as_str() > after.as_str())
            .filter_map(decode_job)
            .filter(|j| wanted(j))
            .take(size + 1)
            .collect();
    }
    let next_page_token = match found.len() > size {
        true => found[size - 1].id.clone(),
        false => String::new(),
    };
    found.truncate(size);
    Ok(ListJobsResponse {
        jobs: found,
        next_page_token,
    })
}

/// The only tenant a caller may see: its key's, unless the key has the admin scope or
/// the listener is open and no key was sent (`None`: every tenant).
fn tenant_of<T>(r: &Request<T>) -> Option<String> {
    crate::auth::principal(r)
        .filter(|p| !p.has(crate::auth::Scope::Admin))
        .map(|p| p.tenant.clone())
}

/// A job of another tenant is answered as missing: its existence is not the caller's
/// business.
fn own(job: &Job, tenant: Option<&str>) -> Result<(), JobsError> {
    match tenant {
        Some(t) if job.tenant != t => Err(JobsError::NotFound(job.id.clone())),
        _ => Ok(()),
    }
}

#[tonic::async_trait]
impl Jobs for JobsService {
    async fn submit(&self, r: Request<SubmitJobRequest>) -> Answer<Job> {
        let caller = crate::auth::principal(&r).cloned();
        let mut r = r.into_inner();
        if let Some(p) = caller {
            if let Some(request) = &r.request {
                p.check_model(&request.model_name)?;
            }
            r.tenant = p.tenant_for(&r.tenant)?;
        }
        Ok(Response::new(JobsService::submit(self, r).await?))
    }

    async fn get(&self, r: Request<GetJobRequest>) -> Answer<Job> {
        let tenant = tenant_of(&r);
        let job = JobsService::get(self, r.into_inner().id).await?;
        own(&job, tenant.as_deref())?;
        Ok(Response::new(job))
    }

    type WatchStream = JobStream;

    async fn watch(&self, r: Request<WatchJobsRequest>) -> Answer<JobStream> {
        let tenant = tenant_of(&r);
        let key = crate::auth::key_watch(&r);
        let stream = JobsService::watch(self, r.into_inner().ids, tenant).await?;
        // A watch open when its key is revoked ends then.
        Ok(Response::new(crate::auth::end_when_invalid(stream, key)))
    }

    async fn cancel(&self, r: Request<CancelJobRequest>) -> Answer<Job> {
        let tenant = tenant_of(&r);
        let id = r.into_inner().id;
        if tenant.is_some() {
            let (job, _) = load(self.store.as_ref(), &id).await?;
            own(&job, tenant.as_deref())?;
        }
        Ok(Response::new(JobsService::cancel(self, id).await?))
    }

    async fn list(&self, r: Request<ListJobsRequest>) -> Answer<ListJobsResponse> {
        let caller = crate::auth::principal(&r).cloned();
        let tenant = tenant_of(&r);
        let mut r = r.into_inner();
        if let (Some(p), Some(t)) = (caller, tenant) {
            if !r.tenant.is_empty() && r.tenant != t {
                p.tenant_for(&r.tenant)?;
            }
            r.tenant = t;
        }
        Ok(Response::new(JobsService::list(self, r).await?))
    }
}

/// Sends the wanted jobs' states, then their changes; relists after a compaction.
async fn follow(
    store: &dyn Store,
    ids: &HashSet<String>,
    tenant: Option<&str>,
    tx: &tokio::sync::mpsc::Sender<Result<Job, Status>>,
) -> Result<(), JobsError> {
    let wanted = |job: &Job| {
        (ids.is_empty() || ids.contains(&job.id)) && tenant.is_none_or(|t| job.tenant == t)
    };
    let mut ended: HashSet<String> = HashSet::new();
    // Sends a job; false when the client went away or every watched job has ended.
    let deliver = async |job: Job, ended: &mut HashSet<String>| -> bool {
        if is_terminal(job.state()) {
            ended.insert(job.id.clone());
        }
        tx.send(Ok(job)).await.is_ok() && (ids.is_empty() || ended.len() < ids.len())
    };
    loop {
        let (kvs, revision) = store.list(JOBS).await?;
        for job in kvs.iter().filter_map(decode_job).filter(|j| wanted(j)) {
            if !deliver(job, &mut ended).await {
                return Ok(());
            }
        }
        if !ids.is_empty() && ended.len() == ids.len() {
            return Ok(());
        }
        let mut events = store.watch(JOBS, revision).await?;
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
                Err(e) => return Err(e.into()),
            };
            for event in batch {
                let Event::Put(kv) = event else { continue };
                let Some(job) = decode_job(&kv).filter(|j| wanted(j)) else {
                    continue;
                };
                if !deliver(job, &mut ended).await {
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use localml_store::embedded::EmbeddedStore;
    use localml_store::{KeyValue, LeaseId, WatchStream};
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

    /// The embedded store, counting the listings `list_jobs` makes (a test double for
    /// how much it reads, not for what it finds).
    struct Counting {
        inner: EmbeddedStore,
        backward: AtomicUsize,
        whole: AtomicUsize,
    }

    #[tonic::async_trait]
    impl Store for Counting {
        fn backend(&self) -> &'static str {
            self.inner.backend()
        }
        async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
            self.inner.get(key).await
        }
        async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
            self.whole.fetch_add(1, Relaxed);
            self.inner.list(prefix).await
        }
        async fn list_last(
            &self,
            prefix: &str,
            before: Option<&str>,
            limit: usize,
        ) -> Result<Vec<KeyValue>, StoreError> {
            self.backward.fetch_add(1, Relaxed);
            self.inner.list_last(prefix, before, limit).await
        }
        async fn commit(&self, txn: Txn) -> Result<Option<Revision>, StoreError> {
            self.inner.commit(txn).await
        }
        async fn grant(&self, ttl: std::time::Duration) -> Result<LeaseId, StoreError> {
            self.inner.grant(ttl).await
        }
        async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
            self.inner.keep_alive(lease).await
        }
        async fn revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
            self.inner.revoke(lease).await
        }
        async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
            self.inner.watch(prefix, after).await
        }
        async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
            self.inner.compact(revision).await
        }
    }

    /// Every page of `r` (page_size as given), the jobs' ids in order.
    async fn every_page(store: &dyn Store, mut r: ListJobsRequest) -> (Vec<String>, usize) {
        let (mut ids, mut pages) = (Vec::new(), 0);
        loop {
            let page = list_jobs(store, &r).await.expect("list");
            pages += 1;
            ids.extend(page.jobs.into_iter().map(|j| j.id));
            if page.next_page_token.is_empty() {
                return (ids, pages);
            }
            r.page_token = page.next_page_token;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pages_newest_first_read_backwards_through_filters() {
        let dir = std::env::temp_dir().join(format!("localml-list-jobs-{}", fastrand::u64(..)));
        let store = Counting {
            inner: EmbeddedStore::open(&dir).expect("open"),
            backward: AtomicUsize::new(0),
            whole: AtomicUsize::new(0),
        };
        let reads = |store: &Counting| {
            (
                store.backward.swap(0, Relaxed),
                store.whole.swap(0, Relaxed),
            )
        };
        // 600 jobs; tenant "a" owns about every third, so a page of "a"'s jobs needs
        // more than one of the store's backward batches (64 keys, then 256); "rare" owns
        // three, so its page also needs the listing of the rest after two batches.
        let tenant = |i: usize| match i {
            _ if i % 250 == 7 => "rare",
            _ if i.is_multiple_of(3) => "a",
            _ => "b",
        };
        let mut txn = Txn::new();
        for i in 0..600 {
            let job = Job {
                id: format!("{i:04}"),
                tenant: tenant(i).into(),
                state: JobState::Succeeded as i32,
                ..Default::default()
            };
            txn = txn.put(&job_key(&job.id), job.encode_to_vec(), 0);
        }
        store.commit(txn).await.expect("commit").expect("written");
        let a: Vec<String> = (0..600)
            .filter(|i| tenant(*i) == "a")
            .map(|i| format!("{i:04}"))
            .collect();
        let newest = |tenant: &str, page_size: u32| ListJobsRequest {
            tenant: tenant.into(),
            page_size,
            newest_first: true,
            ..Default::default()
        };
        reads(&store);
        let page = list_jobs(&store, &newest("a", 30)).await.expect("list");
        assert_eq!(page.jobs.len(), 30);
        assert_eq!(
            reads(&store),
            (2, 0),
            "two backward batches, no whole listing"
        );
        let (ids, pages) = every_page(&store, newest("a", 30)).await;
        let mut want = a.clone();
        want.reverse();
        assert_eq!(ids, want);
        assert_eq!(pages, a.len().div_ceil(30));
        reads(&store);
        let page = list_jobs(&store, &newest("rare", 2)).await.expect("list");
        assert_eq!(
            reads(&store),
            (2, 1),
            "after two batches that did not fill the page, one listing of the rest"
        );
        assert_eq!(page.next_page_token, "0257");
        let (ids, pages) = every_page(&store, newest("rare", 2)).await;
        assert_eq!(
            (ids, pages),
            (vec!["0507".into(), "0257".into(), "0007".into()], 2)
        );
        let oldest = ListJobsRequest {
            tenant: "a".into(),
            page_size: 30,
            ..Default::default()
        };
        assert_eq!(every_page(&store, oldest).await.0, a);
        let (ids, _) = every_page(&store, newest("", 1000)).await;
        assert_eq!(ids.len(), 600);
        assert_eq!(ids.first().map(String::as_str), Some("0599"));
        let (ids, pages) = every_page(&store, newest("nobody", 10)).await;
        assert!(ids.is_empty() && pages == 1);
        drop(store);
        std::fs::remove_dir_all(&dir).ok();
    }
}
